"""
The ``qmp-shell``, ``qmp-shell-wrap`` and ``qmp-tui`` programs.  Private.

`qemu.qmp.qmp_shell` has the shell itself (`QMPShell`, `HMPShell`) and the
entry points (``main``, ``main_wrap``), which call `qmp_shell` and
`qmp_shell_wrap` here: options, connecting, exit statuses, and for the
wrapper, QEMU's process (its own process group, noticed when it dies
early, stopped on SIGTERM and SIGHUP) and its private socket directory.
`qmp_tui` is ``qmp-tui``'s command line; the app is `qemu.qmp.qmp_tui`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Type

from . import __version__
from .error import QMPError
from .legacy import QEMUMonitorProtocol, QMPBadPortError
from .protocol import ConnectError, SocketAddrT
from .handshake import GreetingError
from .qmp_shell import HMPShell, QMPShell, common_parser, die
from .transcript import Recorder
from .util import qemu_option_value


def _shell_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--version', action='version',
                        version=f'%(prog)s (qemu.qmp) {__version__}')
    parser.add_argument('--json', action='store_true', dest='json_output',
                        help='machine-readable output: one JSON line per '
                             'reply or event')
    parser.add_argument('--timeout', metavar='SECONDS', type=float,
                        help='wait that long for each reply, then go on '
                             '(default: as long as it takes; a guest '
                             'agent that is not running never answers)')
    parser.add_argument('-c', '--command', metavar='LINE', action='append',
                        help='run LINE, print the reply and exit (status 1 '
                             'on an error reply); repeat -c to run several '
                             'lines in order, as from a pipe')
    parser.add_argument('--record', metavar='FILE',
                        help='write the session to FILE as a transcript '
                             '(secrets masked), to replay in tests')
    parser.add_argument('--record-secrets', action='store_true',
                        help='with --record: keep secrets (object-add '
                             'secret data, passwords) as they are')


def _address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('address', nargs='?',
                        default=os.environ.get('QMP_SOCKET'),
                        help='UNIX socket path or host:port '
                             '(default: $QMP_SOCKET)')


def _address_of(parser: argparse.ArgumentParser,
                args: argparse.Namespace) -> SocketAddrT:
    """The ``address`` argument, parsed; a usage error if it is missing or
    malformed."""
    if args.address is None:
        parser.error('the address is required (or set QMP_SOCKET)')
    try:
        return QEMUMonitorProtocol.parse_address(args.address)
    except QMPBadPortError as err:
        parser.error(str(err))


#: Seconds ``qmp-shell`` waits for the server's greeting (and for the
#: negotiation): a socket that never greets is most likely the guest agent's.
GREETING_TIMEOUT = 10.0


def _make_shell(address: SocketAddrT, args: argparse.Namespace,
                server: bool = False) -> QMPShell:
    shell_class: Type[QMPShell] = HMPShell if args.hmp else QMPShell
    shell = shell_class(address, args.pretty, args.verbose, server,
                        logfile=args.logfile, json_output=args.json_output)
    shell.settimeout(args.timeout)
    if args.record:
        try:
            shell.recorder = Recorder(args.record,
                                      secrets=args.record_secrets)
        except OSError as err:
            shell.close()
            die(f"cannot record to {args.record}: {err.strerror}")
    return shell


def _run(shell: QMPShell, args: argparse.Namespace) -> int:
    """
    Run the one-shot command or the REPL; close; the exit status.

    0; 1 if a line failed when input was not a terminal, or the server
    closed the connection without being told to quit; 130 after Ctrl-C
    during a command (which closes the connection).
    """
    try:
        if args.command is not None:
            return _run_commands(shell, args.command)
        interactive = shell.interactive
        for _ in shell.repl():
            pass
        if shell.connection_lost:
            return 0 if shell.quit_answered else 1
        return 1 if shell.failures and not interactive else 0
    except KeyboardInterrupt:
        print('\ninterrupted: the connection is closed', flush=True)
        return 130
    except BrokenPipeError:
        # Our output was closed (qmp-shell ... | head -1): stop quietly,
        # and keep Python from failing to flush it again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    finally:
        shell.close()
        if shell.recorder is not None:
            shell.recorder.close()


def _run_commands(shell: QMPShell, lines: List[str]) -> int:
    """
    Run the ``-c`` lines in order; the exit status.

    As from a pipe, a failed line does not stop the others (they may not
    depend on it), and the status is 1 if any failed; once the connection
    is gone, the rest cannot run.
    """
    ok = True
    for line in lines:
        ok = shell.run_line(line) and ok
        shell.print_events()
        if shell.connection_lost:
            break
    if ok and shell.parser.in_transaction:
        ok = False
        print("Error: transaction( was not closed", file=sys.stderr)
    return 0 if ok else 1


_SHELL_LOG = logging.NullHandler()


def _shell_speaks_for_the_library() -> None:
    """
    The shell tells the user what matters in its own terms (``-N``, not
    ``negotiate=False``): the library's warnings, which it would show when
    nobody set up logging, stay quiet.
    """
    logging.getLogger('qemu.qmp').addHandler(_SHELL_LOG)  # (once)


def qmp_shell(argv: Optional[List[str]] = None) -> int:
    """The ``qmp-shell`` program; returns its exit status."""
    _shell_speaks_for_the_library()
    parser = common_parser()
    parser.prog = 'qmp-shell'
    parser.description = 'An interactive QMP shell.'
    parser.add_argument('-N', '--skip-negotiation', action='store_true',
                        help='do not wait for a greeting nor negotiate '
                             '(for the guest agent)')
    _shell_options(parser)
    parser.add_argument('--demo', action='store_true',
                        help='start a QEMU (or, without one, the built-in '
                             'test server) and open a shell on it')
    _address_argument(parser)
    args = parser.parse_args(argv)
    if args.demo:
        return _demo(args)
    address = _address_of(parser, args)
    shell = _make_shell(address, args)
    try:
        shell.connect(negotiate=not args.skip_negotiation,
                      timeout=GREETING_TIMEOUT)
    except QMPError as err:
        shell.close()
        if isinstance(err, ConnectError) \
                and isinstance(err.exc, GreetingError) \
                and isinstance(err.exc.exc, asyncio.TimeoutError):
            die(f"could not connect to {args.address}: no greeting within "
                f"{GREETING_TIMEOUT} seconds; for the guest agent's socket "
                f"(which never greets), use -N")
        die(f"could not connect to {args.address}: {err}")
    return _run(shell, args)


def qmp_shell_wrap(argv: Optional[List[str]] = None) -> int:
    """The ``qmp-shell-wrap`` program; returns its exit status."""
    _shell_speaks_for_the_library()
    parser = common_parser()
    parser.prog = 'qmp-shell-wrap'
    parser.description = ('Start QEMU with a private QMP socket and attach '
                          'a shell to it: qmp-shell-wrap [options] -- '
                          'QEMU ARGS... (qemu-system-x86_64 -display none '
                          'by default)')
    _shell_options(parser)
    parser.add_argument('qemu', nargs=argparse.REMAINDER,
                        help='the QEMU command line, after --')
    args = parser.parse_args(argv)
    qemu = args.qemu[1:] if args.qemu[:1] == ['--'] else args.qemu
    # Alone, a machine without a window (nor a VNC server, nor messages
    # about display modules that are not installed).
    return wrap(qemu or ['qemu-system-x86_64', '-display', 'none'], args)


#: Seconds ``qmp-shell-wrap`` waits for its QEMU to connect.
WRAP_CONNECT_TIMEOUT = 30.0


def wrap(qemu: List[str], args: argparse.Namespace) -> int:
    """
    Run ``qemu`` with a QMP socket in a private directory, attach.

    QEMU runs in a process group of its own, so Ctrl-C at the shell never
    reaches it; SIGTERM and SIGHUP to the shell stop QEMU and remove the
    directory before the shell exits (status 128 + the signal).
    """
    tmpdir = tempfile.mkdtemp(prefix='qmp-shell-wrap-')
    path = os.path.join(tmpdir, 'qmp.sock')
    proc: Optional[subprocess.Popen[bytes]] = None
    handlers = {signum: signal.signal(signum, _exit_on_signal)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        shell = _make_shell(path, args, server=True)
        try:
            proc = subprocess.Popen(
                [*qemu, '-chardev',
                 f'socket,id=qmp-shell,path={qemu_option_value(path)}',
                 '-mon', 'chardev=qmp-shell,mode=control'],
                **_own_process_group())
        except OSError as err:
            shell.close()
            die(f"could not start {qemu[0]}: {err}")
        _await_qemu(shell, proc, qemu[0])
        shell.quit_on_close = True
        return _run(shell, args)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _await_qemu(shell: QMPShell, proc: 'subprocess.Popen[bytes]',
                name: str) -> None:
    """Accept QEMU's connection; die at once if QEMU exits first."""
    deadline = time.monotonic() + WRAP_CONNECT_TIMEOUT
    listener = shell._listener  # pylint: disable=protected-access
    assert listener is not None
    while True:
        try:
            # Short waits for the connection, to notice a QEMU that exits
            # instead; the handshake gets the time that is left (a busy
            # QEMU may greet late, and a connection dropped for that
            # would never come back).
            if select.select([listener], [], [], 0.1)[0]:
                shell.accept(max(deadline - time.monotonic(), 1.0))
                return
        except asyncio.TimeoutError:
            pass
        except QMPError as err:
            shell.close()
            die(f"{name} did not connect: {err}")
        status = proc.poll()
        if status is not None:
            shell.close()
            die(f"{name} exited with status {status} before connecting "
                f"(its own messages are above)")
        if time.monotonic() > deadline:
            shell.close()
            die(f"{name} did not connect within {WRAP_CONNECT_TIMEOUT} "
                f"seconds")


def _own_process_group() -> Dict[str, Any]:
    # Popen's process_group is new in Python 3.11.
    if sys.version_info >= (3, 11):
        return {'process_group': 0}
    return {'preexec_fn': os.setpgrp}  # nothing runs threads here yet


def _exit_on_signal(signum: int, frame: object) -> NoReturn:
    # Unwinds through the finally clauses that stop QEMU and clean up.
    raise SystemExit(128 + signum)


def _demo(args: argparse.Namespace) -> int:
    with _foreground_of_our_own():
        return _run_demo(args)


@contextlib.contextmanager
def _foreground_of_our_own() -> Iterator[None]:
    """
    When started by another program on a terminal (``make demo``), take
    the terminal for a process group of our own while the demo runs.

    The terminal sends Ctrl-C's SIGINT to its whole foreground process
    group.  Started by make, we share make's group: the shell cancels the
    line, but make dies of the signal as soon as we end (``*** [demo]
    Interrupt``, status 130), however cleanly we exit.  In a group of our
    own that is the terminal's foreground one, only we get it, as when a
    job-control shell starts us.  Ctrl-Z is ignored meanwhile: it would
    stop us alone, and nothing would take the terminal back.
    """
    try:
        fd = sys.stdin.fileno()
        foreground = os.tcgetpgrp(fd)
    except (AttributeError, OSError, ValueError):
        foreground = None  # not a terminal: nobody sends it signals
    if foreground != os.getpgrp() or os.getpgrp() == os.getpid():
        yield  # no terminal, or already a group of our own
        return
    os.setpgid(0, 0)
    _set_foreground(fd, os.getpgrp())
    stop = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, stop)
        _set_foreground(fd, foreground)


def _set_foreground(fd: int, group: int) -> None:
    # A process outside the foreground group that calls tcsetpgrp() gets
    # SIGTTOU, which stops it, unless the signal is blocked.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, group)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run_demo(args: argparse.Namespace) -> int:
    qemu = shutil.which('qemu-system-x86_64')
    if qemu:
        print(f"Starting {qemu} (no guest) with a QMP shell attached.",
              flush=True)
        return wrap([qemu, '-M', 'none', '-nodefaults', '-display', 'none'],
                    args)
    # Imported only here: the test server is not the shell's business.
    from .testing import (  # pylint: disable=import-outside-toplevel
        ServerThread,
        demo_server,
    )
    print("qemu-system-x86_64 is not installed: using the built-in QMP "
          "test server, with a few commands (query-status, stop, cont, "
          "query-version, query-commands).", flush=True)
    with ServerThread(demo_server()) as thread:
        assert thread.address is not None
        shell = _make_shell(thread.address, args)
        shell.connect()
        return _run(shell, args)


def qmp_tui(argv: Optional[List[str]] = None) -> int:
    """
    ``qmp-tui``: the options (the reference qmp-tui's among them), then the
    app.  ``--help`` and ``--version`` work without Textual; otherwise its
    absence is one line and status 2, not a traceback.
    """
    parser = argparse.ArgumentParser(
        prog='qmp-tui', description='A full-screen QMP client.')
    parser.add_argument('--version', action='version',
                        version=f'%(prog)s (qemu.qmp) {__version__}')
    parser.add_argument('-H', '--hmp', action='store_true',
                        help='HMP mode: lines are HMP commands')
    parser.add_argument('-N', '--skip-negotiation', action='store_true',
                        help='no greeting, no negotiation (guest agent)')
    parser.add_argument('--listen', action='store_true',
                        help='listen at ADDRESS for QEMU to connect')
    parser.add_argument('-l', '--logfile', metavar='FILE',
                        help='the transcript: append commands, replies '
                             'and events to FILE as JSON lines')
    _address_argument(parser)
    # The reference qmp-tui's options, so that its command lines work.
    parser.add_argument('--num-retries', type=int, metavar='N',
                        help='give up (re)connecting after about N '
                             'retries RETRY_DELAY apart (default: never)')
    parser.add_argument('--retry-delay', type=float, default=2.0,
                        metavar='SECONDS',
                        help='with --num-retries: the time a retry '
                             'stands for (default: 2)')
    parser.add_argument('--log-file', metavar='FILE',
                        help="the library's debug log: write its log "
                             "messages to FILE (not the transcript: "
                             "that is -l)")
    parser.add_argument('--log-level', default='WARNING',
                        type=str.upper, choices=['CRITICAL', 'ERROR',
                                                 'WARNING', 'INFO', 'DEBUG'],
                        help='with --log-file: the least important '
                             'messages written (default: WARNING)')
    parser.add_argument('--asyncio-debug', action='store_true',
                        help="asyncio's debug mode (with --log-file)")
    args = parser.parse_args(argv)
    address = _address_of(parser, args)
    try:
        from .qmp_tui import QMPTUI  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        print(err, file=sys.stderr)
        return 2
    _log_to(args.log_file, args.log_level, args.asyncio_debug)
    retry = float('inf')
    if args.num_retries is not None:
        retry = max(args.num_retries, 0) * args.retry_delay
    app = QMPTUI(address, hmp=args.hmp, negotiate=not args.skip_negotiation,
                 listen=args.listen, logfile=args.logfile, retry=retry,
                 asyncio_debug=args.asyncio_debug)
    status = app.run()
    return 0 if status is None else status


def _log_to(path: Optional[str], level: str, asyncio_debug: bool) -> None:
    """
    qmp-tui's log: the library's messages (and asyncio's, in its debug
    mode) go to the file ``path``, or nowhere -- the terminal is the app's,
    and the transcript says what matters.
    """
    names = ['qemu.qmp'] + (['asyncio'] if asyncio_debug else [])
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        handler = logging.FileHandler(path, encoding='utf-8')
        handler.setFormatter(logging.Formatter(
            '%(asctime)s %(levelname)s %(name)s: %(message)s'))
    for name in names:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
