"""Sessions recorded against a real QEMU, replayed without it."""

import asyncio
import subprocess
import sys
import textwrap

import pytest

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.testing import QMPTestServer, ServerThread
from qemu.qmp.transcript import Recorder
from tests.helpers import require_binary

pytestmark = pytest.mark.integration


async def script(qmp):
    """Only the public API: what it saw, replies and events."""
    seen = [await qmp.execute('query-status')]
    async with qmp.expect('STOP'):
        seen.append(await qmp.execute('stop'))
    seen.append(await qmp.execute('query-status'))
    async with qmp.expect('RESUME'):
        seen.append(await qmp.execute('cont'))
    seen.append(await qmp.execute('query-version'))
    try:
        await qmp.execute('blockdev-del', {'node-name': 'missing'})
    except ExecuteError as err:
        seen.append((err.error_class, str(err)))
    seen.extend(dict(event) for event in qmp.events.history)
    return seen


def blocking_script(qmp):
    """The same, through the blocking client."""
    seen = [qmp.cmd('query-status'), qmp.cmd('stop')]
    seen.append(qmp.cmd('query-status'))
    seen.append(qmp.cmd('cont'))
    seen.append(qmp.cmd('query-version'))
    reply = qmp.cmd_obj({'execute': 'blockdev-del',
                         'arguments': {'node-name': 'missing'}})
    seen.append((reply['error']['class'], reply['error']['desc']))
    seen.extend(qmp.get_events(wait=False))
    return seen


async def test_recorded_qemu_session_replays_identically(qemu, tmp_path):
    """Recorded against QEMU, replayed by QMPTestServer: the same replies
    and events, for QMPClient and for the blocking client."""
    path = tmp_path / 'qemu.jsonl'
    qmp = QMPClient('recorded')
    with Recorder(path) as qmp.recorder:
        await qmp.connect(qemu.address)
        recorded = await script(qmp)
        await qmp.disconnect()

    server = QMPTestServer()
    replay = server.replay(path, ordered=True)
    async with server:
        qmp = QMPClient('replayed')
        await qmp.connect(await server.start())
        assert await script(qmp) == recorded
        await qmp.disconnect()
    replay.check()

    server = QMPTestServer()
    replay = server.replay(path)

    def blocking():
        with ServerThread(server) as thread:
            with QEMUMonitorProtocol(thread.address) as legacy:
                legacy.connect()
                return blocking_script(legacy)
    seen = await asyncio.get_running_loop().run_in_executor(None, blocking)
    events = [event for event in recorded if isinstance(event, dict)
              and 'event' in event]
    assert seen[:5] == recorded[:5]
    assert seen[5] == recorded[5]
    assert seen[6:] == events
    replay.check()


def test_qemu_monitor_fixture(tmp_path):
    """The plugin's qemu_monitor fixture starts a real QEMU for a test."""
    require_binary('qemu-system-x86_64')
    (tmp_path / 'test_user.py').write_text(textwrap.dedent('''
        import asyncio
        from qemu.qmp import QMPClient

        def test_status(qemu_monitor):
            async def main():
                async with QMPClient() as qmp:
                    await qmp.connect(qemu_monitor)
                    return await qmp.execute('query-status')
            assert asyncio.run(main())['status'] == 'running'
    '''))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
         '-p', 'no:asyncio', '-q'], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False)
    assert '1 passed' in result.stdout, result.stdout + result.stderr
