"""
Real peers: qemu-system-x86_64, qemu-storage-daemon and qemu-ga.

Each one is started with its daemonize option and a pid file: the starting
process exits only once the monitor socket exists, so a test awaits that
exit instead of polling for the socket.  Teardown kills the daemon by pid.
A missing binary skips the test locally and fails it in CI.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, List, Optional

import pytest

from tests.helpers import free_port, require_binary


class Daemon:
    """A running peer: its socket address and its pid."""

    def __init__(self, address, pid: int) -> None:
        self.address = address
        self.pid = pid

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return Path(f'/proc/{self.pid}/status').read_text().find(
            'State:\tZ') < 0

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@asynccontextmanager
async def running(argv: List[str], address, pidfile: Path,
                  cwd: Optional[Path] = None) -> AsyncIterator[Daemon]:
    """Run ``argv`` (in ``cwd``) and wait until it has daemonized; kill it
    on exit."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): "
                           f"{err.decode(errors='replace')}")
    peer = Daemon(address, int(pidfile.read_text().strip()))
    try:
        yield peer
    finally:
        peer.kill()


QEMU_BASE = ['-M', 'none', '-nodefaults', '-display', 'none']


@pytest.fixture
async def qemu(tmp_path) -> AsyncIterator[Daemon]:
    """QEMU with an OOB-capable monitor on a UNIX socket."""
    binary = require_binary('qemu-system-x86_64')
    path, pidfile = tmp_path / 'qmp.sock', tmp_path / 'qemu.pid'
    async with running([
            binary, *QEMU_BASE, '-daemonize', '-pidfile', str(pidfile),
            '-chardev', f'socket,id=m0,path={path},server=on,wait=off',
            '-mon', 'chardev=m0,mode=control'], str(path), pidfile) as peer:
        yield peer


@pytest.fixture
async def qemu_tcp(tmp_path) -> AsyncIterator[Daemon]:
    """QEMU with its monitor on a loopback TCP port."""
    binary = require_binary('qemu-system-x86_64')
    port, pidfile = free_port(), tmp_path / 'qemu.pid'
    async with running([
            binary, *QEMU_BASE, '-daemonize', '-pidfile', str(pidfile),
            '-qmp', f'tcp:127.0.0.1:{port},server=on,wait=off'],
            ('127.0.0.1', port), pidfile) as peer:
        yield peer


@pytest.fixture
async def storage_daemon(tmp_path) -> AsyncIterator[Daemon]:
    """qemu-storage-daemon with a QMP monitor."""
    binary = require_binary('qemu-storage-daemon')
    path, pidfile = tmp_path / 'qsd.sock', tmp_path / 'qsd.pid'
    async with running([
            binary, '--daemonize', '--pidfile', str(pidfile),
            '--chardev', f'socket,path={path},server=on,wait=off,id=c0',
            '--monitor', 'chardev=c0'], str(path), pidfile) as peer:
        yield peer


# Run argv[2:] with the socket argv[1] as its fd 3, the way systemd's
# socket activation hands one over.
_SOCKET_ACTIVATION = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


@asynccontextmanager
async def socket_activated(path: Path, state: Path) -> AsyncIterator[Daemon]:
    """
    qemu-ga listening on the UNIX socket ``path`` on the host.

    qemu-ga daemonizes before it creates its socket, so instead we listen
    first and hand the socket over (systemd socket activation: fd 3,
    LISTEN_FDS=1, LISTEN_PID its own pid): it exists before qemu-ga
    starts, and connecting can never race it.
    """
    binary = require_binary('qemu-ga')
    state.mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        fd = listener.fileno()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c', _SOCKET_ACTIVATION, str(fd), binary,
            '-m', 'unix-listen', '-p', str(path), '-t', str(state),
            pass_fds=[fd])
    try:
        yield Daemon(str(path), proc.pid)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.fixture
async def guest_agent(tmp_path) -> AsyncIterator[Daemon]:
    """qemu-ga on ``qga.sock`` (see `socket_activated`)."""
    async with socket_activated(tmp_path / 'qga.sock',
                                tmp_path / 'qga-state') as peer:
        yield peer
