"""
Helpers shared by the test modules: the real-peer policy, waiting on
conditions instead of sleeping, a test server in a thread, the shell in a
process or on a terminal.  (conftest.py holds only fixtures.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import AsyncIterator, List, Optional

import pytest

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.protocol import AsyncProtocol
from qemu.qmp.testing import (
    NO_REPLY,
    CommandError,
    QMPTestServer,
    ServerThread,
)


IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')

#: tests/fake_qemu.py: a stand-in for QEMU in qmp-shell-wrap's tests.
FAKE_QEMU = os.path.join(os.path.dirname(__file__), 'fake_qemu.py')

#: The checkout: where the Makefile is.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- what a test needs from the machine -------------------------------------

def unavailable(what: str) -> None:
    """
    Something a test needs is missing: skip the test locally, fail it in
    CI, where everything must be there.
    """
    if IN_CI:
        pytest.fail(f"{what} (required in CI)")
    pytest.skip(reason=what)


def require_binary(name: str) -> str:
    """Return the path of ``name``, or skip (fail in CI) without it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    assert path is not None
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
        return port


def port_lock_path(port: int) -> str:
    """The lock file that test runs hold while they listen on ``port``."""
    return os.path.join(tempfile.gettempdir(),
                        f'qemu.qmp-tests-port-{port}.lock')


@contextlib.asynccontextmanager
async def port_lock(port: int) -> AsyncIterator[None]:
    """
    Hold ``port`` against other test runs on this machine (``make
    pythons`` runs two at once) for as long as the context lasts: for a
    fixed port the docs name, where `free_port` cannot help.  The lock is
    released when its holder exits, however it exits.
    """
    with open(port_lock_path(port), 'a', encoding='ascii') as lock:
        # Another holder is bounded by its own test's timeout.
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- asyncio -----------------------------------------------------------------

def assert_no_tasks_left() -> None:
    """Only the current task may still exist."""
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current]
    assert not leftover, f"tasks leaked: {leftover}"


def client_tasks() -> List['asyncio.Task[object]']:
    """The pending tasks that belong to a client (AsyncProtocol's)."""
    names = {name for name in vars(AsyncProtocol) if name.startswith('_')}
    return [task for task in asyncio.all_tasks() if not task.done()
            and task.get_coro().__name__ in names]


async def started() -> None:
    """
    Let the tasks just created run until each first waits.

    One event loop iteration does exactly that: a new task's first step
    is already scheduled, and runs until the task awaits something not
    ready.  (Not a sleep: nothing here depends on time.)
    """
    await asyncio.sleep(0)


async def waiting_on_a_command(server: QMPTestServer,
                               qmp: QMPClient) -> 'asyncio.Future[object]':
    """
    Connect ``qmp`` to ``server`` and leave a command waiting, one the
    server never answers: what the end of the session interrupts.

    :return: The command's task, once the server has it.
    """
    server.on('slow', lambda arguments: NO_REPLY)
    assert server.address is not None
    await qmp.connect(server.address)
    waiting = asyncio.ensure_future(qmp.execute('slow'))
    await server.wait_for_command('slow')
    return waiting


async def stop_and_cont(qmp) -> None:
    """``stop`` then ``cont``, as QEMU does them: each gives its event,
    and query-status follows.  Real QEMU and ``demo_server()`` both pass."""
    with qmp.listener(('STOP', 'RESUME')) as listener:
        await qmp.execute('stop')
        assert (await listener.get())['event'] == 'STOP'
        assert (await qmp.execute('query-status'))['status'] == 'paused'
        await qmp.execute('cont')
        assert (await listener.get())['event'] == 'RESUME'


async def wait_for_state(proto: AsyncProtocol, state: Runstate) -> None:
    """Wait until ``proto`` is in ``state`` (awaiting, never sleeping)."""
    while proto.runstate is not state:
        await proto.runstate_changed()


# -- a test server in a thread ----------------------------------------------

class ThreadedServer(ServerThread):
    """A QMPTestServer in an event loop of its own thread, like QEMU,
    answering query-status, echo (its arguments) and fail (an error)."""

    def __init__(self, greeting='default'):
        super().__init__(QMPTestServer() if greeting == 'default'
                         else QMPTestServer(greeting))
        self.server.on('query-status', {'status': 'running'})
        self.server.on('echo', lambda args: args)
        self.server.on('fail', CommandError('GenericError', 'it failed'))

    def emit(self, *names):
        for name in names:
            self.run(self.server.emit_event(name))


# -- the shell ---------------------------------------------------------------

def run_shell(args: List[str], stdin: str = '',
              env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run qmp-shell with ``args`` in a process, ``stdin`` piped in."""
    return subprocess.run(
        [sys.executable, '-m', 'qemu.qmp.qmp_shell', *args], input=stdin,
        capture_output=True, text=True, timeout=60, env=env)


def make_demo_env(tmp_path, with_qemu: bool) -> dict:
    """
    The environment for ``make demo`` in a test: ``python3`` is this
    interpreter; without QEMU, ``PATH`` holds only make and python3, so the
    demo uses the built-in test server.
    """
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    python3 = bin_dir / 'python3'
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    make = shutil.which('make')
    if make is None:
        unavailable("make is not installed")
    (bin_dir / 'make').symlink_to(make)
    path = str(bin_dir)
    if with_qemu:
        path += os.pathsep + os.environ.get('PATH', '')
    return dict(os.environ, PATH=path, XDG_STATE_HOME=str(tmp_path),
                TERM='dumb')


def pty_session(args, keys, env, program='shell', waits=None):
    """
    Run the shell (or ``program='wrap'``, qmp-shell-wrap; or
    ``program='make'``, make in the checkout) on a pseudo-terminal, type
    each of ``keys`` at a prompt, return the output and the exit status.
    For a key whose index is in ``waits``, instead of waiting for a
    prompt: wait for that text to show (bytes), or call that function (to
    type into a running command, or not to wait at all).

    A Ctrl-C at a prompt is pressed again if no new prompt answers it
    within a second, as a person would: CPython's readline loses a SIGINT
    that lands in the instant between handling a key and waiting for the
    next one (it notices only at the next key), and a test, unlike a
    person, can type into exactly that instant.
    """
    pid, fd = pty.fork()
    if pid == 0:  # child
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if program == 'make':
            os.chdir(CHECKOUT)
            os.execvpe('make', ['make', *args], env)
        main = 'main_wrap' if program == 'wrap' else 'main'
        os.execve(sys.executable,
                  [sys.executable, '-c', 'import sys; from qemu.qmp.'
                   f'qmp_shell import {main}; sys.exit({main}())', *args],
                  env)
    output = b''
    try:
        for index, chunk in enumerate(keys):
            wait = (waits or {}).get(index, b'(QEMU) ')
            if callable(wait):
                wait()
            while not callable(wait) and \
                    wait not in output.rsplit(b'\n', 1)[-1]:
                ready, _, _ = select.select([fd], [], [], 30)
                assert ready, f"no {wait!r}; output so far: {output!r}"
                output += os.read(fd, 65536)
            os.write(fd, chunk)
            output = output + b'\n' if chunk != b'\x04' else output
            if chunk == b'\x03':
                output = _until_prompt(fd, output)
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return output.decode(errors='replace'), os.waitstatus_to_exitcode(status)


def _until_prompt(fd: int, output: bytes) -> bytes:
    """After a Ctrl-C: read until a prompt or the end; Ctrl-C again if
    nothing answers (see pty_session)."""
    for _ in range(10):
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            os.write(fd, b'\x03')
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            return output  # the program ended (Ctrl-C during a command)
        output += data
        if not data or b'(QEMU) ' in output.rsplit(b'\n', 1)[-1] \
                or b'interrupted' in data:
            return output
    raise AssertionError(f"nothing answers Ctrl-C; output: {output!r}")


# -- qmp-tui, driven by Textual's Pilot --------------------------------------

def tui_until(app, predicate, timeout=30):
    """Wait (at most ``timeout`` seconds) until ``predicate()`` holds: the
    app checks it after each change to its transcript or status bar."""
    return asyncio.wait_for(app.wait_until(predicate), timeout)


def tui_said(app, kind, text=''):
    """A predicate: the transcript has a ``kind`` entry containing
    ``text``."""
    return lambda: any(e.kind == kind and text in e.text
                       for e in app.entries)


async def tui_connected(app):
    """Wait until the app is connected and has learnt the commands."""
    await tui_until(app, lambda: app.connection_state == 'connected'
                    and bool(app.commands))


async def tui_type(pilot, line):
    """Type ``line`` and Enter."""
    await pilot.press(*line)
    await pilot.press('enter')
