"""
A scripted tour: ``python3 -m qemu.qmp.demo``.

It starts ``qemu-system-x86_64`` (no guest, no display) when it is
installed, or the library's demonstration server
(`qemu.qmp.testing.demo_server`) otherwise, then connects, queries, stops
and resumes the machine and prints what it sees.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from typing import List

from . import QMPClient, QMPError
from .testing import demo_server
from .util import qemu_option_value


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


async def _accepted(qmp: QMPClient,
                    proc: asyncio.subprocess.Process) -> bool:
    """
    Wait for QEMU to connect; `False` if it exits first.

    :raise ConnectError: The session could not be established.
    :raise asyncio.TimeoutError: QEMU neither connected nor exited.
    """
    accepting = asyncio.ensure_future(qmp.accept())
    exiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait((accepting, exiting), timeout=30,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        exiting.cancel()
    if not accepting.done():
        accepting.cancel()  # (a disconnect() follows, and ends it)
        await asyncio.gather(accepting, return_exceptions=True)
        if proc.returncode is None:
            raise asyncio.TimeoutError
        return False
    accepting.result()
    return True


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
            '-chardev', f'socket,id=mon,path={qemu_option_value(path)}',
            '-mon', 'chardev=mon,mode=control')
        try:
            if not await _accepted(qmp, proc):
                print(f"{qemu} exited with status {proc.returncode} "
                      f"before connecting", file=sys.stderr)
                return 1
            lines.append(f"started {qemu} (pid {proc.pid})")
            await _session(qmp, lines)
            await qmp.execute('quit')
        finally:
            try:
                await qmp.disconnect()
            except EOFError:
                pass  # QEMU closed the connection: it quit, as asked
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        lines.append("qemu-system-x86_64 not found: using the built-in "
                     "test server")
        async with demo_server() as server:
            await qmp.connect(await server.start())
            await _session(qmp, lines)
            await qmp.disconnect()
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(asyncio.run(main()))
