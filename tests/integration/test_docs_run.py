"""
Every Python block of the documentation runs, against real peers.

Each block (see tests/docs_blocks.py) runs as a program of its own, in a
fresh directory holding what the docs say is there: ``qmp.sock`` (QEMU),
``qsd.sock`` (qemu-storage-daemon), ``qga.sock`` (qemu-ga), ``disk.qcow2``
(made with qemu-img), and for TLS, a QMP server on ``localhost:4444`` with
the certificates in ``tls/``.  A block that defines ``test_`` functions
runs under pytest.  Each must exit with status 0 within the timeout.

The first pages a newcomer reads are also followed in reading order, in
one directory, against one QEMU: an example must leave the VM as the next
one expects it (`test_the_first_pages_in_reading_order`).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from qemu.qmp.testing import ServerThread, demo_server
from tests.docs_blocks import ROOT, Block, all_blocks, blocks, console_commands
from tests.helpers import port_lock, port_lock_path, require_binary
from tests.integration.conftest import (
    QEMU_BASE,
    Daemon,
    running,
    socket_activated,
)


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

    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA must say
    # what its key may sign.
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
        '-subj', '/CN=qemu.qmp docs CA', '-keyout', 'ca-key.pem',
        '-addext', 'basicConstraints=critical,CA:TRUE',
        '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
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
        await stack.enter_async_context(port_lock(TLS_PORT))
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


#: The pages a newcomer reads first, in the order they are read.
FIRST_PAGES = ('README.rst', 'docs/quickstart.rst', 'docs/blocking.rst',
               'docs/guest-agent.rst', 'docs/tui.rst')


@pytest.mark.timeout(300)
async def test_the_first_pages_in_reading_order(tmp_path):
    """A newcomer follows the first pages literally, in one directory:
    QEMU is started as their console blocks say, and kept while it runs
    (started again only where a page says so after it quit); every Python
    example runs against it, in order, and exits 0 within 30 s; the
    qmp-shell sessions print what the page shows.  An example that leaves
    the VM paused, or quits QEMU, breaks the next one here.  qemu-ga is
    started on the socket and state directory its page names (socket
    activated: see `socket_activated`).  pip, mkdir and qmp-tui
    (interactive) are not run, nor are command lines with ``...`` in
    them: sketches."""
    qemu: Optional[Daemon] = None
    started = 0
    agent: Optional[Daemon] = None
    async with AsyncExitStack() as stack:
        for page in FIRST_PAGES:
            for block in blocks(ROOT / page):
                if block.language == 'python':
                    _run_in_order(block, [sys.executable, 'example.py'],
                                  tmp_path, code=block.code)
                if block.language != 'console':
                    continue
                for command in console_commands(block):
                    program = command.argv[0]
                    if '...' in command.argv:
                        continue  # a sketch, to be completed by the reader
                    if program == 'qemu-system-x86_64' \
                            and (qemu is None or not qemu.alive()):
                        started += 1
                        pidfile = tmp_path / f'qemu-{started}.pid'
                        qemu = await stack.enter_async_context(running(
                            [require_binary(program), *command.argv[1:],
                             '-daemonize', '-pidfile', str(pidfile)],
                            str(tmp_path / 'qmp.sock'), pidfile,
                            cwd=tmp_path))
                    elif program == 'qemu-ga' and agent is None:
                        words = command.argv
                        agent = await stack.enter_async_context(
                            socket_activated(
                                tmp_path / words[words.index('-p') + 1],
                                tmp_path / words[words.index('-t') + 1]))
                    elif program == 'qmp-shell':
                        output = _run_in_order(
                            block, [sys.executable, '-m',
                                    'qemu.qmp.qmp_shell',
                                    *command.argv[1:]],
                            tmp_path, stdin=''.join(
                                line + '\n' for line in command.typed))
                        assert output.splitlines() == command.output, \
                            f"{block.where}: qmp-shell printed {output!r}"
    assert started >= 2  # README's QEMU, and qmp-tui's after blocking's quit
    assert agent is not None


def _run_in_order(block: Block, argv: List[str], cwd: Path,
                  code: str = '', stdin: str = '') -> str:
    """Run one step of the reading-order test; return what it printed."""
    if code:
        (cwd / 'example.py').write_text(code)
    try:
        result = subprocess.run(
            argv, cwd=cwd, env=_environment(), input=stdin,
            capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{block.where} (in reading order) did not end within "
                    f"{err.timeout} s")
    assert result.returncode == 0, (
        f"{block.where} (in reading order) exited with "
        f"{result.returncode}\n--- stdout\n{result.stdout}"
        f"--- stderr\n{result.stderr}")
    return result.stdout


@pytest.mark.timeout(90)
async def test_the_tls_port_is_held_while_its_peer_runs(tmp_path):
    """docs/tls.rst names a fixed port, and `make pythons` runs the docs
    tests on two Pythons at once: the TLS peer holds an exclusive lock
    named after the port, so another run waits for it instead of failing
    to bind."""
    block = next(b for b in BLOCKS if 'tls/' in b.code)
    probe = ('import fcntl, sys\n'
             'with open(sys.argv[1], "a") as lock:\n'
             '    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n')
    async with AsyncExitStack() as stack:
        await start_peers(block, tmp_path, stack)
        taken = subprocess.run(
            [sys.executable, '-c', probe, str(port_lock_path(TLS_PORT))],
            capture_output=True, timeout=30, check=False)
        assert taken.returncode != 0, "another run could bind the port"
    free = subprocess.run(
        [sys.executable, '-c', probe, str(port_lock_path(TLS_PORT))],
        capture_output=True, timeout=30, check=False)
    assert free.returncode == 0, free.stderr
