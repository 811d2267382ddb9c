"""
qmp-shell: an interactive (or scripted) QMP shell.

Usage::

    qmp-shell [-H] [-N] [-v] [-p] [-l LOG] [--json] [-c CMD] ADDRESS
    qmp-shell-wrap [shell options] -- qemu-system-x86_64 [QEMU options]
    qmp-shell --demo

ADDRESS is a UNIX socket path or ``host:port``.  Input lines look like::

    query-status
    block-job-cancel device=job0 force=true
    blockdev-add driver=null-co node-name=n0 size=1048576
    object-add qom-type=memory-backend-ram id=m0 size=1048576
    set-numa-node type=node cpus.0=1 cpus.1=2       (dotted keys nest)
    {"execute": "query-status"}                     (raw JSON as is)
    transaction(
      block-dirty-bitmap-add node=n0 name=b0
      block-dirty-bitmap-clear node=n0 name=b0
    )

Values are JSON where they parse as JSON (numbers, true/false/null, lists,
objects, "quoted strings") and plain strings otherwise.  With ``-H`` each
line is an HMP command instead.  Events are printed before each prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import (
    Any,
    Dict,
    Iterator,
    List,
    NoReturn,
    Optional,
    Sequence,
    TextIO,
)

from .error import QMPError
from .legacy import QEMUMonitorProtocol, QMPBadPortError
from .protocol import SocketAddrT


__all__ = ['QMPShellError', 'CommandParser', 'QMPShell', 'main',
           'main_wrap']

# A word: runs of non-space characters and quoted strings (which may hold
# spaces); quotes stay in the word, the value parser removes them.
_WORD = re.compile(r'''(?:[^\s"']|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')+''')


class QMPShellError(QMPError):
    """A line the shell cannot turn into a command."""


class CommandParser:
    """
    Turn shell input lines into QMP commands.

    It keeps state for ``transaction(`` ... ``)`` blocks spanning lines.

    >>> parser = CommandParser()
    >>> parser.parse('blockdev-add driver=null-co node-name=n0 size=4096')
    {'execute': 'blockdev-add', 'arguments': {'driver': 'null-co', \
'node-name': 'n0', 'size': 4096}}
    >>> parser.parse('x a.b=1 a.c=[1,2]')
    {'execute': 'x', 'arguments': {'a': {'b': 1, 'c': [1, 2]}}}
    """

    def __init__(self) -> None:
        #: Actions of the transaction being entered, or `None`.
        self.actions: Optional[List[Dict[str, object]]] = None

    @property
    def in_transaction(self) -> bool:
        """Whether a ``transaction(`` block is open."""
        return self.actions is not None

    def parse(self, line: str) -> Optional[Dict[str, Any]]:
        """
        Parse one line.

        :return: A command to send, or `None` (empty line, or a line inside
            a transaction block).
        :raise QMPShellError: The line is not valid.
        """
        line = line.strip()
        if not line:
            return None
        if line.startswith('{') and not self.in_transaction:
            return self._raw_json(line)
        words = _WORD.findall(line)

        if words[0] == 'transaction(':
            if self.in_transaction:
                raise QMPShellError("transaction( inside a transaction")
            self.actions = []
            words.pop(0)
            if not words:
                return None
        if not self.in_transaction:
            if words[-1] == ')':
                raise QMPShellError("')' outside a transaction")
            return self._command(words)

        assert self.actions is not None
        finish = words[-1] == ')'
        if finish:
            words.pop()
        if words:
            if words[0] == ')':
                raise QMPShellError("unexpected input after ')'")
            self.actions.append({'type': words[0],
                                 'data': self._arguments(words[1:])})
        if not finish:
            return None
        actions, self.actions = self.actions, None
        return {'execute': 'transaction', 'arguments': {'actions': actions}}

    @staticmethod
    def _raw_json(line: str) -> Dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError as err:
            raise QMPShellError(f"invalid JSON: {err}") from err
        if not isinstance(value, dict):
            raise QMPShellError("a raw JSON command must be an object")
        return value

    def _command(self, words: List[str]) -> Dict[str, Any]:
        cmd: Dict[str, Any] = {'execute': words[0]}
        arguments = self._arguments(words[1:])
        if arguments:
            cmd['arguments'] = arguments
        return cmd

    @classmethod
    def _arguments(cls, words: Sequence[str]) -> Dict[str, object]:
        arguments: Dict[str, object] = {}
        for word in words:
            key, sep, text = word.partition('=')
            if not sep or not key:
                raise QMPShellError(
                    f"expected key=value, got {word!r}")
            cls._store(arguments, key, cls.parse_value(text))
        return arguments

    @staticmethod
    def _store(arguments: Dict[str, object], key: str,
               value: object) -> None:
        """Store ``value`` at a dotted ``key``, making nested objects."""
        *parents, last = key.split('.')
        where = arguments
        path = ''
        for part in parents:
            path = f"{path}.{part}" if path else part
            child = where.setdefault(part, {})
            if not isinstance(child, dict):
                raise QMPShellError(f"'{path}' is already a value, "
                                    f"so '{key}' cannot go inside it")
            where = child
        if not last or any(not part for part in parents):
            raise QMPShellError(f"empty key component in '{key}'")
        if last in where:
            raise QMPShellError(f"'{key}' is given twice")
        where[last] = value

    @staticmethod
    def parse_value(text: str) -> object:
        """
        JSON if it parses as JSON, else the text itself.

        >>> [CommandParser.parse_value(v) for v in
        ...  ('1', '1.5', 'true', 'null', '[1]', '"a b"', 'abc', "'x'")]
        [1, 1.5, True, None, [1], 'a b', 'abc', 'x']

        :raise QMPShellError: Text that looks like a JSON list or object
            but is not valid JSON.
        """
        try:
            return json.loads(text)
        except ValueError as err:
            if len(text) > 1 and text[0] == text[-1] == "'":
                return text[1:-1]
            if text.startswith(('{', '[')):
                raise QMPShellError(
                    f"invalid JSON value {text!r}: {err}") from err
            return text


class QMPShell:
    """
    The shell itself, over a connected `QEMUMonitorProtocol`.

    :param qmp: The monitor connection (connected already).
    :param hmp: Send lines as HMP commands.
    :param verbose: Echo each QMP command sent.
    :param pretty: Indent JSON output.
    :param json_output: Print replies and events as one JSON line each.
    :param logfile: Append each command and reply here, as JSON lines.
    :param out: Where to print (standard output by default).
    """

    def __init__(self, qmp: QEMUMonitorProtocol, *, hmp: bool = False,
                 verbose: bool = False, pretty: bool = False,
                 json_output: bool = False,
                 logfile: Optional[TextIO] = None,
                 out: Optional[TextIO] = None) -> None:
        self.qmp = qmp
        self.hmp = hmp
        self.verbose = verbose
        self.pretty = pretty
        self.json_output = json_output
        self.logfile = logfile
        self.out = out or sys.stdout
        self.parser = CommandParser()
        #: Words offered by tab completion.
        self.completions: List[str] = []

    # -- output ------------------------------------------------------

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _format(self, value: object) -> str:
        if self.json_output:
            return json.dumps(value, separators=(',', ':'))
        return json.dumps(value, indent=4 if self.pretty else None)

    def _log(self, direction: str, value: object) -> None:
        if self.logfile is not None:
            self.logfile.write(json.dumps({direction: value}) + '\n')
            self.logfile.flush()

    def print_events(self) -> None:
        """Print (and log) the events that arrived so far."""
        for event in self.qmp.get_events():
            self._log('event', event)
            self._print(self._format(event))

    # -- completion --------------------------------------------------

    def load_completions(self) -> None:
        """Fetch command names for tab completion; never fails."""
        try:
            if self.hmp:
                text = self.qmp.cmd('human-monitor-command',
                                    **{'command-line': 'help'})
                names = [line.split()[0].split('|')[0]
                         for line in str(text).splitlines()
                         if line and not line[0].isspace()]
            else:
                commands = self.qmp.cmd('query-commands')
                names = [cmd['name'] for cmd in commands  # type: ignore
                         if isinstance(cmd, dict) and 'name' in cmd]
        except Exception:  # pylint: disable=broad-except
            names = []  # completion is a convenience; carry on without
        self.completions = sorted(set(names))

    def complete(self, text: str, state: int) -> Optional[str]:
        """A readline completer over `completions`."""
        matches = [name for name in self.completions
                   if name.startswith(text)]
        return matches[state] if state < len(matches) else None

    # -- running commands ------------------------------------------------

    def run_line(self, line: str) -> bool:
        """
        Run one input line and print the result.

        :return: `False` if the line failed (bad syntax or error reply).
        """
        try:
            if self.hmp:
                if not line.strip():
                    return True
                cmd: Optional[Dict[str, Any]] = {
                    'execute': 'human-monitor-command',
                    'arguments': {'command-line': line.strip()}}
            else:
                cmd = self.parser.parse(line)
            if cmd is None:
                return True
            return self.run_command(cmd)
        except QMPShellError as err:
            self._print(f"Error: {err}")
            return False

    def run_command(self, cmd: Dict[str, Any]) -> bool:
        """
        Send one command, print and log the reply.

        :return: `False` for an error reply or a failure to get one.
        """
        if self.verbose:
            self._print(self._format(cmd))
        self._log('command', cmd)
        try:
            reply = self.qmp.cmd_obj(cmd)
        except QMPError as err:
            self._print(f"Error: {type(err).__name__}: {err}")
            return False
        self._log('reply', reply)
        if 'error' in reply:
            error = reply['error']
            if self.json_output:
                self._print(self._format(reply))
            else:
                self._print(f"Error: {error.get('class')}: "
                            f"{error.get('desc')}")
            return False
        value = reply.get('return')
        if self.hmp and isinstance(value, str) and not self.json_output:
            if value:
                self._print(value.rstrip('\n'))
        elif self.json_output or self.verbose or self.pretty:
            self._print(self._format(reply))
        else:
            self._print(self._format(value))
        return True

    # -- the loop ------------------------------------------------------

    def prompt(self) -> str:
        """The prompt for the next line."""
        if self.hmp:
            return '(QEMU) '
        return '... ' if self.parser.in_transaction else '(QEMU) '

    def lines(self, stream: TextIO, interactive: bool) -> Iterator[str]:
        """Input lines until EOF; prompts only when interactive."""
        while True:
            self.print_events()
            try:
                if interactive:
                    yield input(self.prompt())
                else:
                    line = stream.readline()
                    if not line:
                        return
                    yield line
            except EOFError:
                if interactive:
                    self._print('')
                return

    def repl(self, stream: Optional[TextIO] = None) -> int:
        """
        Run lines until EOF.

        :return: 0, or 1 if any line failed and input was not a terminal.
        """
        stream = stream or sys.stdin
        interactive = stream.isatty()
        failed = False
        if interactive:
            _setup_readline(self)
        try:
            for line in self.lines(stream, interactive):
                if not self.run_line(line):
                    failed = True
        except KeyboardInterrupt:
            self._print('')
        finally:
            if interactive:
                _save_history()
        return 1 if failed and not interactive else 0


def history_path() -> str:
    """Where the history is kept: the XDG state dir, else the home dir."""
    state = os.environ.get('XDG_STATE_HOME')
    if state:
        return os.path.join(state, 'qmp-shell', 'history')
    return os.path.join(os.path.expanduser('~'), '.qmp-shell_history')


def _setup_readline(shell: QMPShell) -> None:
    try:
        import readline  # pylint: disable=import-outside-toplevel
    except ImportError:
        return
    readline.set_completer(shell.complete)
    readline.parse_and_bind('tab: complete')
    readline.set_completer_delims(' \t\n')
    try:
        readline.read_history_file(history_path())
    except OSError:
        pass


def _save_history() -> None:
    try:
        import readline  # pylint: disable=import-outside-toplevel
    except ImportError:
        return
    path = history_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        readline.set_history_length(1000)
        readline.write_history_file(path)
    except OSError:
        pass


# ---------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------

def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-H', '--hmp', action='store_true',
                        help='HMP mode: lines are HMP commands')
    parser.add_argument('-N', '--skip-negotiation', action='store_true',
                        help='do not wait for a greeting nor negotiate '
                             '(for the guest agent)')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='echo each QMP command sent')
    parser.add_argument('-p', '--pretty', action='store_true',
                        help='pretty-print JSON')
    parser.add_argument('-l', '--logfile', metavar='FILE',
                        help='append commands, replies and events to FILE '
                             'as JSON lines')
    parser.add_argument('--json', action='store_true', dest='json_output',
                        help='machine-readable output: one JSON line per '
                             'reply or event')
    parser.add_argument('-c', '--command', metavar='LINE',
                        help='run LINE, print the reply and exit '
                             '(status 1 on an error reply)')


def _fail(message: str) -> NoReturn:
    print(f"qmp-shell: {message}", file=sys.stderr)
    sys.exit(2)


def run_shell(qmp: QEMUMonitorProtocol, args: argparse.Namespace,
              connect: bool = True, quit_after: bool = False,
              greeting: Optional[Dict[str, Any]] = None) -> int:
    """
    Connect (unless told not to), then run the command or the REPL.

    With ``quit_after``, ask the server to quit when done (for a QEMU
    the shell started itself).  ``greeting`` is the server's greeting when
    the caller connected already.
    """
    if connect:
        try:
            greeting = qmp.connect(negotiate=not args.skip_negotiation)
        except QMPError as err:
            _fail(f"could not connect: {err}")
    logfile = open(args.logfile, 'a') if args.logfile else None
    try:
        shell = QMPShell(qmp, hmp=args.hmp, verbose=args.verbose,
                         pretty=args.pretty, json_output=args.json_output,
                         logfile=logfile)
        if args.command is not None:
            ok = shell.run_line(args.command)
            if ok and shell.parser.in_transaction:
                ok = False
                print("Error: transaction( was not closed", file=sys.stderr)
            shell.print_events()
            return 0 if ok else 1
        if sys.stdin.isatty():
            shell.load_completions()
            if not args.json_output:
                version = greeting['QMP']['version'].get('qemu') \
                    if greeting else None
                print(f"Welcome to the QMP shell (QEMU {version}); "
                      "Ctrl-D to leave.")
        return shell.repl()
    finally:
        if logfile is not None:
            logfile.close()
        if quit_after:
            try:
                qmp.cmd('quit')
            except Exception:  # pylint: disable=broad-except
                pass  # already gone; the caller stops it anyway
        qmp.close()


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``qmp-shell``."""
    parser = argparse.ArgumentParser(
        prog='qmp-shell', description='An interactive QMP shell.')
    _options(parser)
    parser.add_argument('--demo', action='store_true',
                        help='start a QEMU (or, without one, the built-in '
                             'test server) and open a shell on it')
    parser.add_argument('address', nargs='?',
                        help='UNIX socket path or host:port')
    args = parser.parse_args(argv)
    if args.demo:
        return _demo(args)
    if args.address is None:
        parser.error('the address is required')
    try:
        address: SocketAddrT = QEMUMonitorProtocol.parse_address(
            args.address)
    except QMPBadPortError as err:
        _fail(str(err))
    return run_shell(QEMUMonitorProtocol(address), args)


def main_wrap(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``qmp-shell-wrap``: start QEMU, attach a shell."""
    parser = argparse.ArgumentParser(
        prog='qmp-shell-wrap',
        description='Start QEMU with a private QMP socket and attach a '
                    'shell to it: qmp-shell-wrap [options] -- QEMU ARGS...')
    _options(parser)
    parser.add_argument('qemu', nargs=argparse.REMAINDER,
                        help='the QEMU command line, after --')
    args = parser.parse_args(argv)
    qemu = args.qemu[1:] if args.qemu[:1] == ['--'] else args.qemu
    if not qemu:
        parser.error('give the QEMU command line after --')
    return wrap(qemu, args)


def wrap(qemu: List[str], args: argparse.Namespace) -> int:
    """Run ``qemu`` with a QMP socket in a private directory, attach."""
    tmpdir = tempfile.mkdtemp(prefix='qmp-shell-wrap-')
    path = os.path.join(tmpdir, 'qmp.sock')
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        qmp = QEMUMonitorProtocol(path, server=True)
        try:
            proc = subprocess.Popen(
                [*qemu, '-chardev', f'socket,id=qmp-shell,path={path}',
                 '-mon', 'chardev=qmp-shell,mode=control'])
        except OSError as err:
            qmp.close()
            _fail(f"could not start {qemu[0]}: {err}")
        try:
            greeting = qmp.accept(30.0)
        except Exception as err:  # pylint: disable=broad-except
            qmp.close()
            _fail(f"{qemu[0]} did not connect: {err}")
        return run_shell(qmp, args, connect=False, quit_after=True,
                         greeting=greeting)
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _demo(args: argparse.Namespace) -> int:
    qemu = shutil.which('qemu-system-x86_64')
    if qemu:
        print(f"Starting {qemu} (no guest) with a QMP shell attached.",
              flush=True)
        return wrap([qemu, '-M', 'none', '-nodefaults', '-display', 'none'],
                    args)
    from .demo import FakeQEMU  # pylint: disable=import-outside-toplevel
    print("qemu-system-x86_64 is not installed: using the built-in QMP "
          "test server, with a few commands (query-status, stop, cont, "
          "query-version, query-commands).", flush=True)
    with FakeQEMU() as address:
        return run_shell(QEMUMonitorProtocol(address), args)


if __name__ == '__main__':
    sys.exit(main())
