"""
The transcripts ``make transcripts`` recorded from real QEMU (one
directory per version, in tests/transcripts) replay: the same sessions,
without QEMU, command by command in the recorded order.
"""

from pathlib import Path

import pytest

from qemu.qmp import QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.testing import QMPTestServer, ServerThread
from qemu.qmp.transcript import Transcript
from tests.transcripts.sessions import SESSIONS

HERE = Path(__file__).resolve().parents[1] / 'transcripts'
RECORDED = sorted(HERE.glob('qemu-*/*.jsonl'))


def recorded_replies(path):
    """The recorded value of each command after negotiation, in order."""
    return [next(msg for msg in exchange.answer if 'event' not in msg)
            for exchange in Transcript.load(path).exchanges()]


def test_transcripts_are_there():
    """At least the installed QEMU's (7.2) were recorded."""
    assert {path.stem for path in RECORDED} >= set(SESSIONS)


@pytest.mark.parametrize('path', RECORDED,
                         ids=[f'{p.parent.name}/{p.stem}' for p in RECORDED])
async def test_recorded_session_replays(path):
    """The session that was recorded runs again on the replay, in the
    recorded order, and sees what QEMU answered."""
    server = QMPTestServer()
    replay = server.replay(path, ordered=True)
    async with server:
        qmp = QMPClient('replay')
        await qmp.connect(await server.start())
        seen = await SESSIONS[path.stem](qmp)
        await qmp.disconnect()
    replay.check()
    assert replay.unplayed == []
    replies = recorded_replies(path)
    if path.stem == 'probe':
        assert seen == [reply['return'] for reply in replies]
        assert len(seen[2]) > 1000  # query-qmp-schema, whole
    else:
        events = seen[-1]
        statuses = [event['data']['status'] for event in events
                    if event['event'] == 'JOB_STATUS_CHANGE']
        # ... to the end, and past it once dismissed.
        assert statuses[0] == 'created'
        assert statuses[-2:] == ['concluded', 'null']
        assert seen[2] == ['concluded']


@pytest.mark.parametrize('path', [p for p in RECORDED if p.stem == 'probe'],
                         ids=lambda p: p.parent.name)
def test_blocking_client_replays_the_probe(path):
    """The blocking client gets the same recorded replies."""
    server = QMPTestServer()
    replay = server.replay(path, ordered=True)
    with ServerThread(server) as thread:
        with QEMUMonitorProtocol(thread.address) as qmp:
            qmp.connect()
            seen = [qmp.cmd('query-version'), qmp.cmd('query-commands'),
                    qmp.cmd('query-qmp-schema')]
    replay.check()
    assert seen == [reply['return'] for reply in recorded_replies(path)]
