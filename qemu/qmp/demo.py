"""
Demonstrations: a scripted tour, and a fake QEMU for ``qmp-shell --demo``.

``python3 -m qemu.qmp.demo`` starts ``qemu-system-x86_64`` (no guest, no
display) when it is installed, or the library's own test server otherwise,
then connects, queries, stops and resumes the machine and prints what it
sees.  `FakeQEMU` runs that test server in a thread of its own, for the
blocking shell.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from types import TracebackType
from typing import List, Optional, Type

from . import QMPClient, QMPError
from ._sockets import SocketAddrT
from .testing import CommandError, QMPTestServer, ServerThread


def _fake_server() -> QMPTestServer:
    server = QMPTestServer()
    state = {'status': 'running', 'running': True}

    async def set_running(running: bool) -> object:
        state.update(status='running' if running else 'paused',
                     running=running)
        await server.emit_event('RESUME' if running else 'STOP')
        return {}

    server.on('query-status', lambda args: dict(state))
    server.on('stop', lambda args: set_running(False))
    server.on('cont', lambda args: set_running(True))
    server.on('query-version', {'qemu': {'major': 7, 'minor': 2,
                                         'micro': 0}, 'package': 'demo'})
    server.on('quit', CommandError('GenericError', 'demo server stays'))
    server.on('query-commands', lambda args: [
        {'name': name} for name in sorted(server.handlers)])
    return server


class FakeQEMU:
    """
    The demo test server in a background thread; a context manager.

    ``with FakeQEMU() as address:`` gives the address to connect to.
    """

    def __init__(self) -> None:
        self._thread = ServerThread(_fake_server())

    def __enter__(self) -> SocketAddrT:
        return self._thread.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> None:
        self._thread.close()


async def _session(qmp: QMPClient, lines: List[str]) -> None:
    greeting = qmp.greeting
    version = greeting.QMP.version if greeting else {}
    lines.append(f"connected; server version {version.get('qemu')}")
    lines.append(f"query-status -> {await qmp.execute('query-status')}")
    with qmp.listener(('STOP', 'RESUME')) as listener:
        await qmp.execute('stop')
        lines.append(f"event: {(await listener.get())['event']}")
        lines.append(f"query-status -> {await qmp.execute('query-status')}")
        await qmp.execute('cont')
        lines.append(f"event: {(await listener.get())['event']}")
    try:
        await qmp.execute('no-such-command')
    except QMPError as err:
        lines.append(f"no-such-command -> {type(err).__name__}: {err}")


async def main() -> int:
    """Run the demo; return the exit status."""
    lines: List[str] = []
    qemu = shutil.which('qemu-system-x86_64')
    qmp = QMPClient('demo')
    if qemu:
        tmp = tempfile.mkdtemp(prefix='qmp-demo-')
        path = os.path.join(tmp, 'qmp.sock')
        await qmp.start_server(path)
        proc = await asyncio.create_subprocess_exec(
            qemu, '-M', 'none', '-nodefaults', '-display', 'none',
            '-chardev', f'socket,id=mon,path={path}',
            '-mon', 'chardev=mon,mode=control')
        try:
            await asyncio.wait_for(qmp.accept(), 30)
            lines.append(f"started {qemu} (pid {proc.pid})")
            await _session(qmp, lines)
            await qmp.execute('quit')
        finally:
            await qmp.disconnect()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        lines.append("qemu-system-x86_64 not found: using the built-in "
                     "test server")
        async with _fake_server() as server:
            await qmp.connect(await server.start())
            await _session(qmp, lines)
            await qmp.disconnect()
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(asyncio.run(main()))
