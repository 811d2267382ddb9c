"""
The scripts in examples/ against replays of their sessions with real QEMU
(recorded by ``make transcripts``): no QEMU needed, and none can be used.
Each runs as a program of its own with an empty PATH, so QEMU's binaries
are out of its reach, here and in CI alike.
"""

import asyncio
import sys
from pathlib import Path

import pytest

from qemu.qmp.testing import QMPTestServer

ROOT = Path(__file__).resolve().parents[2]
# The newest QEMU recorded.
RECORDED = sorted((ROOT / 'tests' / 'transcripts').glob('qemu-*'),
                  key=lambda path: [int(part) for part in
                                    path.name[len('qemu-'):].split('.')])[-1]


async def run_on_replay(tmp_path, script, *args):
    """Run examples/``script`` on a replay of its recorded session; the
    replay must have matched every command."""
    server = QMPTestServer()
    replay = server.replay(RECORDED / 'examples' / script.replace(
        '.py', '.jsonl'), repeat=True)
    empty = tmp_path / 'no-binaries'
    empty.mkdir()
    async with server:
        address = await server.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / 'examples' / script), str(address),
            *args, cwd=tmp_path,
            env={'PYTHONPATH': str(ROOT), 'PATH': str(empty)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    replay.check()
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


@pytest.mark.parametrize('script', ['backup.py', 'backup_blocking.py'])
async def test_backup_on_a_replay(tmp_path, script):
    """The backup job's events and replies, as QEMU sent them."""
    out, _ = await run_on_replay(tmp_path, script, 'disk0', 'backup.qcow2')
    assert out.endswith("disk0 backed up to backup.qcow2\n")


async def test_watch_events_on_a_replay(tmp_path):
    """The events QEMU sent, then its hang-up: status 0."""
    out, err = await run_on_replay(tmp_path, 'watch_events.py')
    names = [line.split('"event": "')[1].split('"')[0]
             for line in out.splitlines()]
    assert names == ['STOP', 'RESUME', 'SHUTDOWN']
    assert err.endswith("QEMU closed the connection.\n")


async def test_guest_agent_on_a_replay(tmp_path):
    """The agent's answers, its random resynchronisation id echoed."""
    out, _ = await run_on_replay(tmp_path, 'guest_agent.py')
    assert out.startswith('qemu-ga ')
    assert '\nguest: ' in out
