"""
Fixtures for testing code that speaks QMP (a pytest plugin).

Installing qemu.qmp makes pytest load this plugin (entry point
``pytest11``); nothing to configure.  Each fixture works in a plain test
function and in an ``async`` one alike: the servers run in threads of
their own, and give an address to connect to.

- ``qmp_server``: a `QMPTestServer` (``.server``) listening on a
  temporary socket (``.address``), in a `ServerThread`.
- ``qmp_replay``: ``qmp_replay('session.jsonl')`` serves a recorded
  transcript (relative paths are relative to the test's file); the test
  fails at its end if a command did not match the transcript.
- ``qemu_monitor``: the QMP socket of a real QEMU
  (``qemu-system-x86_64 -M none``, or the binary named by ``$QEMU``),
  started for the test and killed after it; the test is skipped where
  QEMU is not installed.

.. code-block:: python

    from qemu.qmp.legacy import QEMUMonitorProtocol
    from qemu.qmp.testing import ServerThread


    def test_status(qmp_server: ServerThread) -> None:
        qmp_server.server.on('query-status', {'status': 'running'})
        with QEMUMonitorProtocol(qmp_server.address) as qmp:
            qmp.connect()
            assert qmp.cmd('query-status')['status'] == 'running'

:doc:`/replay` shows ``qmp_replay`` and ``qemu_monitor`` at work.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import (
    Any,
    Callable,
    Generator,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)

import pytest

from .replay import Replay, ReplayError
from .testing import Handler, QMPTestServer, ServerThread
from .transcript import Transcript


__all__ = ['qmp_server', 'qmp_replay', 'qemu_monitor']

#: Starts a replaying server: ``qmp_replay(transcript, ...)`` returns the
#: started `ServerThread`.
ReplayFactory = Callable[..., ServerThread]

# Whether a test's own run (not its set-up or teardown) failed.
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    """Note whether the test failed, for ``qmp_replay``'s check."""
    outcome = yield
    report = outcome.get_result()
    if report.when == 'call':
        item.stash[_CALL_FAILED] = report.failed


@pytest.fixture
def qmp_server() -> Iterator[ServerThread]:
    """
    A `QMPTestServer` listening on a temporary socket, in a thread.

    Add handlers with ``qmp_server.server.on(...)``; emit events with
    ``qmp_server.run(qmp_server.server.emit_event('STOP'))``.
    """
    with ServerThread() as thread:
        yield thread


@pytest.fixture
def qmp_replay(request: pytest.FixtureRequest) -> Iterator[ReplayFactory]:
    """
    Start servers that replay transcripts; check them at the end.

    ``qmp_replay(transcript, *, ordered=False, repeat=False,
    complete=False, handlers=None)``: the transcript is a `Transcript` or
    a path (relative to the test's file); ``ordered`` and ``repeat`` are
    `QMPTestServer.replay`'s; with ``complete``, a recorded command that
    never came fails the test too; ``handlers`` maps command names to
    handlers for commands the transcript does not hold (see
    `QMPTestServer.on`).  Returns the started `ServerThread`; its
    ``.address`` is where to connect.  A test that failed already is not
    failed again by the check.
    """
    started: List[ServerThread] = []
    replays: List[Tuple[Replay, bool]] = []
    test_dir = Path(str(request.node.fspath)).parent

    def start(transcript: Union[Transcript, str, os.PathLike[str]], *,
              ordered: bool = False, repeat: bool = False,
              complete: bool = False,
              handlers: Optional[Mapping[str, Handler]] = None
              ) -> ServerThread:
        if not isinstance(transcript, Transcript):
            transcript = Transcript.load(test_dir / transcript)
        server = QMPTestServer()
        replays.append((server.replay(transcript, ordered=ordered,
                                      repeat=repeat), complete))
        for name, handler in (handlers or {}).items():
            server.on(name, handler)
        thread = ServerThread(server)
        started.append(thread)
        thread.start()
        return thread

    yield start
    for thread in started:
        thread.close()
    if request.node.stash.get(_CALL_FAILED, False):
        return  # the mismatch is why, and the test says so already
    problems = []
    for replay, complete in replays:
        try:
            replay.check(complete)
        except ReplayError as err:
            problems.append(str(err))
    if problems:
        # The mismatches say it all; the fixture's code would not.
        pytest.fail('\n\n'.join(problems), pytrace=False)


@pytest.fixture
def qemu_monitor() -> Iterator[str]:
    """
    The QMP socket (a path) of a real QEMU started for the test.

    ``$QEMU`` names the binary; by default ``qemu-system-x86_64`` from
    ``PATH``.  The test is skipped when there is none.
    """
    named = os.environ.get('QEMU')
    if named and not (os.path.isfile(named) and os.access(named, os.X_OK)):
        pytest.fail(f"$QEMU names {named}, which is not an executable file",
                    pytrace=False)
    binary = named or shutil.which('qemu-system-x86_64')
    if not binary:
        pytest.skip("QEMU is not installed (qemu-system-x86_64, or $QEMU)")
    with tempfile.TemporaryDirectory(prefix='qemu-qmp-') as workdir:
        path = os.path.join(workdir, 'qmp.sock')
        pidfile = os.path.join(workdir, 'qemu.pid')
        # -daemonize: the command returns once the monitor listens, so
        # the test can connect at once.
        started = subprocess.run(
            [binary, '-M', 'none', '-nodefaults', '-display', 'none',
             '-qmp', f'unix:{path},server=on,wait=off',
             '-daemonize', '-pidfile', pidfile],
            timeout=60, stdin=subprocess.DEVNULL, capture_output=True,
            check=False)
        if started.returncode:
            pytest.fail(f"{binary} failed to start ({started.returncode}): "
                        f"{started.stderr.decode(errors='replace')}")
        pid = int(Path(pidfile).read_text(encoding='ascii').strip())
        try:
            yield path
        finally:
            _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
