"""
The scripts in examples/ run against real QEMU, qemu-ga, and exit 0.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from qemu.qmp import QMPClient
from tests.helpers import require_binary
from tests.integration.conftest import QEMU_BASE, running

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / 'examples'


def image(path: Path, size: str = '64M') -> Path:
    subprocess.run([require_binary('qemu-img'), 'create', '-q', '-f',
                    'qcow2', str(path), size], check=True, timeout=60)
    return path


async def example(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(args, proc.returncode,
                                       out.decode(), err.decode())


@pytest.fixture
async def vm_with_disk(tmp_path):
    """QEMU with a 64 MiB qcow2 disk as node ``disk0`` (some data on it),
    and an empty image of the same size for the backup."""
    source = image(tmp_path / 'disk.qcow2')
    subprocess.run([require_binary('qemu-io'), '-f', 'qcow2', '-c',
                    'write -P 0x5a 1M 4M', str(source)],
                   check=True, capture_output=True, timeout=60)
    path, pidfile = tmp_path / 'qmp.sock', tmp_path / 'qemu.pid'
    async with running([
            require_binary('qemu-system-x86_64'), *QEMU_BASE,
            '-daemonize', '-pidfile', str(pidfile),
            '-blockdev', f'driver=qcow2,node-name=disk0,file.driver=file,'
                         f'file.filename={source}',
            '-qmp', f'unix:{path},server=on,wait=off'],
            str(path), pidfile) as peer:
        yield peer, source, image(tmp_path / 'backup.qcow2')


@pytest.mark.parametrize('script', ['backup.py', 'backup_blocking.py'])
async def test_backup(vm_with_disk, script):
    """The backup job completes, and the copy equals the disk."""
    qemu, source, target = vm_with_disk
    result = await example(script, qemu.address, 'disk0', str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"disk0 backed up to {target}\n")
    compare = subprocess.run([require_binary('qemu-img'), 'compare', '-U',
                              str(source), str(target)],
                             capture_output=True, text=True, timeout=60)
    assert compare.returncode == 0, compare.stdout + compare.stderr


async def test_backup_of_a_missing_node(vm_with_disk):
    """QEMU's refusal is reported plainly, with status 1."""
    qemu, _, target = vm_with_disk
    result = await example('backup.py', qemu.address, 'nope', str(target))
    assert result.returncode == 1
    assert result.stderr.startswith('QEMU refused: ')


async def test_watch_events_until_quit(tmp_path):
    """The watcher prints each event as it comes and exits 0 once QEMU
    quits; QEMU is driven through a second monitor."""
    watched, control = tmp_path / 'qmp.sock', tmp_path / 'control.sock'
    pidfile = tmp_path / 'qemu.pid'
    async with running([
            require_binary('qemu-system-x86_64'), *QEMU_BASE,
            '-daemonize', '-pidfile', str(pidfile),
            '-qmp', f'unix:{watched},server=on,wait=off',
            '-qmp', f'unix:{control},server=on,wait=off'],
            str(watched), pidfile):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / 'watch_events.py'), str(watched),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})
        assert proc.stderr is not None and proc.stdout is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert ready.decode() == f"Watching {watched}\n"
        qmp = QMPClient('control')
        await qmp.connect(str(control))
        for command in ('stop', 'cont', 'quit'):
            await qmp.execute(command)
        async for _ in qmp.session_events():
            pass  # until QEMU has closed this connection too
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    names = [line.split('"event": "')[1].split('"')[0]
             for line in out.decode().splitlines()]
    assert names == ['STOP', 'RESUME', 'SHUTDOWN']
    assert err.decode() == "QEMU closed the connection.\n"


async def test_watch_events_without_qemu(tmp_path):
    result = await example('watch_events.py', str(tmp_path / 'none.sock'))
    assert result.returncode == 1
    assert 'none.sock' in result.stderr


async def test_guest_agent(guest_agent):
    result = await example('guest_agent.py', guest_agent.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('qemu-ga ')
