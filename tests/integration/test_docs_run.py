"""
Every Python block of the documentation runs, against real peers.

Each block (see tests/docs_blocks.py) runs as a program of its own, in a
fresh directory holding what the docs say is there: ``qmp.sock`` (QEMU),
``qsd.sock`` (qemu-storage-daemon), ``qga.sock`` (qemu-ga), ``disk.qcow2``
(made with qemu-img), and for TLS, a QMP server on ``localhost:4444`` with
the certificates in ``tls/``.  A block that defines ``test_`` functions
runs under pytest.  Each must exit with status 0 within the timeout.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Dict, List

import pytest

from qemu.qmp.testing import ServerThread, demo_server
from tests.docs_blocks import ROOT, Block, all_blocks
from tests.helpers import require_binary
from tests.integration.conftest import QEMU_BASE, running, socket_activated


TLS_PORT = 4444
BLOCKS = all_blocks()


def _environment() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT)
    env.pop('PYTHONASYNCIODEBUG', None)  # as users run them
    return env


def make_tls_dir(path: Path) -> None:
    """A CA and a server certificate for localhost, the layout QEMU's
    ``tls-creds-x509`` reads (ca-cert.pem, server-cert.pem,
    server-key.pem)."""
    openssl = require_binary('openssl')
    path.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=path, check=True,
                       capture_output=True, timeout=60)

    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
        '-subj', '/CN=qemu.qmp docs CA', '-keyout', 'ca-key.pem',
        '-out', 'ca-cert.pem')
    run('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
        '-keyout', 'server-key.pem', '-out', 'server.csr')
    (path / 'server.ext').write_text(
        'basicConstraints=CA:FALSE\n'
        'keyUsage=digitalSignature,keyEncipherment\n'
        'extendedKeyUsage=serverAuth\n'
        'subjectAltName=DNS:localhost,IP:127.0.0.1\n')
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca-cert.pem',
        '-CAkey', 'ca-key.pem', '-CAcreateserial', '-days', '2',
        '-extfile', 'server.ext', '-out', 'server-cert.pem')


async def start_peers(block: Block, workdir: Path,
                      stack: AsyncExitStack) -> None:
    """Start what ``block`` talks to, in ``workdir``."""
    code = block.code
    if 'disk.qcow2' in code:
        subprocess.run([require_binary('qemu-img'), 'create', '-q', '-f',
                        'qcow2', str(workdir / 'disk.qcow2'), '64M'],
                       check=True, timeout=60)
    if 'qmp.sock' in code:
        await stack.enter_async_context(running([
            require_binary('qemu-system-x86_64'), *QEMU_BASE,
            '-daemonize', '-pidfile', str(workdir / 'qemu.pid'),
            '-chardev', f'socket,id=m0,path={workdir / "qmp.sock"},'
                        f'server=on,wait=off',
            '-mon', 'chardev=m0,mode=control'],
            str(workdir / 'qmp.sock'), workdir / 'qemu.pid'))
    if 'tls/' in code:
        # QEMU 7.2 stops answering a TLS monitor after its first command
        # (openssl s_client shows it too): the TLS peer here is the test
        # server, with the certificates docs/tls.rst describes.
        make_tls_dir(workdir / 'tls')
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(workdir / 'tls' / 'server-cert.pem',
                                workdir / 'tls' / 'server-key.pem')
        thread = ServerThread(demo_server())
        stack.callback(thread.close)
        thread.start(('localhost', TLS_PORT), context)
    if 'qsd.sock' in code:
        path, pidfile = workdir / 'qsd.sock', workdir / 'qsd.pid'
        await stack.enter_async_context(running([
            require_binary('qemu-storage-daemon'), '--daemonize',
            '--pidfile', str(pidfile), '--chardev',
            f'socket,path={path},server=on,wait=off,id=c0',
            '--monitor', 'chardev=c0'], str(path), pidfile))
    if 'qga.sock' in code:
        await stack.enter_async_context(
            socket_activated(workdir / 'qga.sock', workdir / 'qga-state'))


def _command(block: Block, script: Path) -> List[str]:
    if 'def test_' in block.code:
        return [sys.executable, '-m', 'pytest', '-q', '-p',
                'no:cacheprovider', '--timeout', '30', '-o',
                'asyncio_mode=auto', str(script)]
    return [sys.executable, str(script)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize('block', BLOCKS, ids=[b.ident for b in BLOCKS])
async def test_block_runs(block: Block, tmp_path):
    script = tmp_path / 'example.py'
    script.write_text(block.code)
    async with AsyncExitStack() as stack:
        await start_peers(block, tmp_path, stack)
        result = subprocess.run(
            _command(block, script), cwd=tmp_path, env=_environment(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60, check=False)
    assert result.returncode == 0, (
        f"{block.where} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}")
