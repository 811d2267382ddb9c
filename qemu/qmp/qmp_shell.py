"""
qmp-shell: an interactive (or scripted) QMP shell.

Usage:

.. code-block:: text

    qmp-shell [-H] [-N] [-v] [-p] [-l LOG] [--json] [--timeout S]
              [-c LINE]... ADDRESS
    qmp-shell-wrap [shell options] [--] [qemu-system-x86_64 [QEMU options]]
    qmp-shell --demo

ADDRESS is a UNIX socket path or ``host:port`` (``$QMP_SOCKET`` when
omitted).  Input lines look like:

.. code-block:: text

    query-status
    block-job-cancel device=job0 force=true
    blockdev-add driver=null-co node-name=n0 size=1048576
    set-numa-node type=node cpus.0=1 cpus.1=2       (dotted keys nest)
    {"execute": "query-status"}                     (raw JSON as is)
    transaction(
      block-dirty-bitmap-add node=n0 name=b0
      block-dirty-bitmap-clear node=n0 name=b0
    )

Values are JSON where they parse as JSON (numbers, true/false/null, lists,
objects, "quoted strings") and plain strings otherwise.  With ``-H`` each
line is an HMP command instead.  Events are printed before each prompt.

`QMPShell` and `HMPShell` are `QEMUMonitorProtocol`\\ s that read commands,
as in the reference library: construct one with an address, `connect`,
then run `QMPShell.repl` (or `QMPShell.run_line` for a single line).
"""

from __future__ import annotations

import argparse
import asyncio
import ast
import difflib
import json
import os
import re
import sys
import time
from typing import (
    IO,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    NoReturn,
    Optional,
    Sequence,
    Union,
)

from .error import QMPError
from .legacy import QEMUMonitorProtocol, QMPMessage
from .protocol import Runstate, SocketAddrT, StateError
from .replies import ExecInterruptedError, ExecuteTimeoutError
from .util import nests_deeper_than


__all__ = ['QMPShellError', 'QMPCompleter', 'FuzzyJSON', 'CommandParser',
           'QMPShell', 'HMPShell', 'hmp_words', 'common_parser', 'die',
           'main', 'main_wrap']

# A word: runs of non-space characters and quoted strings (which may hold
# spaces); quotes stay in the word, the value parser removes them.
_WORD = re.compile(r'''(?:[^\s"']|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')+''')

#: How deeply a command may nest objects and lists (the command itself is
#: the first level).  Real commands need a handful; the bound keeps every
#: JSON encoder and printer the shell uses far from Python's recursion
#: limit, whatever the call stack, so a hostile line is an error message.
MAX_DEPTH = 256

_TOO_DEEP = f"nested too deeply (at most {MAX_DEPTH} levels of objects " \
    "and lists)"


# What newcomers type to a shell, which QMP does not know.
_SHELL_WORDS = frozenset({'help', '?', 'exit', 'bye', 'logout'})

#: Seconds the shell waits, after an answered ``quit``, for QEMU to close
#: the connection before it shows a prompt again.
QUIT_GRACE = 5.0


class QMPShellError(QMPError):
    """A line the shell cannot turn into a command."""


class QMPCompleter:
    """
    Tab completion for readline: the words that start with what was typed.

    >>> completer = QMPCompleter()
    >>> for word in ('query-status', 'query-version', 'stop'):
    ...     completer.append(word)
    >>> [completer.complete('query-', n) for n in range(3)]
    ['query-status', 'query-version', None]
    """

    def __init__(self) -> None:
        self._words: List[str] = []

    def append(self, value: str) -> None:
        """Offer ``value`` as a completion."""
        self._words.append(value)

    @property
    def words(self) -> List[str]:
        """The completions offered, in the order they were added."""
        return list(self._words)

    def complete(self, text: str, state: int) -> Optional[str]:
        """
        The readline completer: the ``state``-th match of ``text``.

        :return: The match, or `None` when there are no more.
        """
        matches = [word for word in self._words if word.startswith(text)]
        return matches[state] if state < len(matches) else None


class FuzzyJSON(ast.NodeTransformer):
    """
    Read JSON's literals in a Python expression: an AST transformer that
    turns the names ``true``, ``false`` and ``null`` into constants, so
    `ast.literal_eval` accepts JSON and Python literals mixed.

    >>> tree = FuzzyJSON().visit(ast.parse('[true, null, {"a": false}]',
    ...                                    mode='eval'))
    >>> ast.literal_eval(tree)
    [True, None, {'a': False}]
    """

    _CONSTANTS = {'true': True, 'false': False, 'null': None}

    @classmethod
    def visit_Name(cls,  # pylint: disable=invalid-name
                   node: ast.Name) -> ast.AST:
        """Replace ``true``, ``false`` and ``null``; keep other names."""
        if node.id in cls._CONSTANTS:
            return ast.copy_location(
                ast.Constant(value=cls._CONSTANTS[node.id]), node)
        return node


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
        cmd = self._parse(line.strip())
        if cmd is not None:
            _check_depth(cmd)
        return cmd

    def _parse(self, line: str) -> Optional[Dict[str, Any]]:
        if not line:
            return None
        if line.startswith('{') and not self.in_transaction:
            return self._raw_json(line)
        words = self._words(line)

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
    def _words(line: str) -> List[str]:
        """
        The words of a line; quotes must come in pairs.

        :raise QMPShellError: A quote is not closed.
        """
        words = []
        end = 0
        for match in _WORD.finditer(line):
            if line[end:match.start()].strip():
                break  # something between words: an unclosed quote
            words.append(match.group())
            end = match.end()
        else:
            if not line[end:].strip():
                return words
        raise QMPShellError("unbalanced quote: every \" or ' needs its pair")

    @staticmethod
    def _raw_json(line: str) -> Dict[str, Any]:
        # The line starts with "{": valid JSON is an object.
        try:
            value: Dict[str, Any] = json.loads(line)
        except ValueError as err:
            raise QMPShellError(f"invalid JSON: {err}") from err
        except RecursionError:
            raise QMPShellError(f"invalid JSON: {_TOO_DEEP}") from None
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
        A value: JSON if it parses as JSON, else the text itself.

        Lists and objects may also be written as Python literals, with
        single quotes and ``None``/``True``/``False`` (or JSON's
        ``null``/``true``/``false``); ``True``/``FALSE`` and the like are
        booleans too, as in the reference library's shell.

        >>> [CommandParser.parse_value(v) for v in
        ...  ('1', '1.5', 'true', 'null', '[1]', '"a b"', 'abc', "'x'")]
        [1, 1.5, True, None, [1], 'a b', 'abc', 'x']
        >>> CommandParser.parse_value("{'a':[True,null,'b']}")
        {'a': [True, None, 'b']}

        :raise QMPShellError: Text that looks like a list or an object but
            is neither valid JSON nor a valid literal, or one nested too
            deeply for the JSON parser.
        """
        try:
            return json.loads(text)
        except ValueError as err:
            json_error = err
        except RecursionError:
            raise QMPShellError(
                f"invalid JSON value {_excerpt(text)}: {_TOO_DEEP}") from None
        if text.lower() in ('true', 'false'):
            return text.lower() == 'true'
        if len(text) > 1 and text[0] == text[-1] == "'":
            return text[1:-1]
        if not text.startswith(('{', '[')):
            return text
        try:
            tree = FuzzyJSON().visit(ast.parse(text, mode='eval'))
            return ast.literal_eval(tree)
        except (SyntaxError, ValueError, TypeError, MemoryError,
                RecursionError):
            raise QMPShellError(
                f"invalid JSON value {_excerpt(text)}: {json_error}") from None


def nearest_names(name: str, known: Iterable[str],
                  count: int = 3) -> List[str]:
    """
    The names in ``known`` a mistyped ``name`` most likely meant, the
    likeliest first: names it begins (a command typed short), then the
    fewest typing mistakes (a swap of two letters is one), then a length
    kept.

    >>> nearest_names('query-stauts', ['query-stats', 'query-status'])
    ['query-status', 'query-stats']
    >>> nearest_names('query-cpu', ['query-pci', 'query-cpus-fast'])
    ['query-cpus-fast', 'query-pci']

    :param name: The unknown name.
    :param known: The known names.
    :param count: How many to return at most.
    :return: The names; empty if none is near.
    """
    known = [candidate for candidate in known if candidate != name]
    near = set(difflib.get_close_matches(name, known, n=10))
    near.update(candidate for candidate in known
                if candidate.startswith(name))
    return sorted(near, key=lambda candidate: (
        not candidate.startswith(name), _typos(name, candidate),
        abs(len(candidate) - len(name)), candidate))[:count]


def _typos(first: str, second: str) -> int:
    """How many letters to insert, delete, change or swap with the next
    one to turn ``first`` into ``second`` (optimal string alignment)."""
    before: List[int] = []
    previous = list(range(len(second) + 1))
    for i, letter in enumerate(first, 1):
        current = [i] + [0] * len(second)
        for j, other in enumerate(second, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1,
                             previous[j - 1] + (letter != other))
            if i > 1 and j > 1 and letter == second[j - 2] \
                    and first[i - 2] == other:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return previous[-1]


def _excerpt(text: str, length: int = 40) -> str:
    """``text`` quoted for a message, cut short if it is long."""
    if len(text) <= length:
        return repr(text)
    return repr(text[:length]) + '...'


def _check_depth(value: object) -> None:
    """
    Refuse a value nested more than `MAX_DEPTH` levels deep.

    Iterative: a value built from dotted keys can be arbitrarily deep
    without the JSON parser ever seeing it.

    :raise QMPShellError: Too deep.
    """
    if nests_deeper_than(value, MAX_DEPTH):
        raise QMPShellError(f"the command is {_TOO_DEEP}")


class QMPShell(QEMUMonitorProtocol):
    """
    A QMP shell: a `QEMUMonitorProtocol` that runs the commands it reads.

    Used as in the reference library (it reads standard input):

    .. code-block:: python

        from qemu.qmp.qmp_shell import QMPShell

        with QMPShell('qmp.sock') as shell:
            shell.connect()
            for _ in shell.repl():
                pass

    :param address: QMP server address: a UNIX socket path or a
        ``(host, port)`` tuple.
    :param pretty: Indent JSON output (not with ``json_output``).
    :param verbose: Print each command before sending it, and successful
        replies whole (``{"return": ...}``) instead of their value.
    :param server: Listen at ``address`` for QEMU to connect; then call
        `accept` instead of `connect`.
    :param logfile: A path (appended to) or an open text file: every
        command, reply and event is written to it, one JSON object per
        line (``{"command": ...}``, ``{"reply": ...}``, ``{"event": ...}``).
    :param json_output: Print each reply and event as one compact JSON
        line, for other programs.
    :param stdin: Where lines come from (standard input by default).
    :param out: Where output goes (standard output by default).
    """

    def __init__(self, address: SocketAddrT, pretty: bool = False,
                 verbose: bool = False, server: bool = False,
                 logfile: Optional[Union[str, IO[str]]] = None, *,
                 json_output: bool = False,
                 stdin: Optional[IO[str]] = None,
                 out: Optional[IO[str]] = None) -> None:
        # pylint: disable=too-many-arguments
        self.logfile: Optional[IO[str]] = None
        self._owns_logfile = isinstance(logfile, str)
        super().__init__(address, server=server)
        self.pretty = pretty
        self.verbose = verbose
        self.json_output = json_output
        self.stdin = stdin
        self.out = out
        #: The input syntax, with any transaction being entered.
        self.parser = CommandParser()
        #: How many lines failed (bad syntax, error reply, no reply).
        self.failures = 0
        #: Send ``quit`` before closing (for a QEMU the shell started).
        self.quit_on_close = False
        #: Whether the server closed the connection (the shell then stops).
        self.connection_lost = False
        #: Whether the last command was a ``quit`` the server answered.
        self.quit_answered = False
        self._completer = QMPCompleter()
        # The server's command names: asked for when first needed.
        self._commands: Optional[List[str]] = None
        self._greeting: Optional[QMPMessage] = None
        self._readline_used = False
        if isinstance(logfile, str):
            self.logfile = open(logfile, 'a', encoding='utf-8')
        else:
            self.logfile = logfile

    # -- connecting and closing --------------------------------------------

    # Returns None, as the reference's QMPShell.connect does.
    def connect(self, negotiate: bool = True, *,  # type: ignore[override]
                timeout: Optional[float] = None) -> None:
        """
        Connect to the QMP monitor (see `QEMUMonitorProtocol.connect`).

        The greeting is kept for `show_banner`; nothing is returned.
        """
        self._greeting = super().connect(negotiate, timeout=timeout)

    def accept(self, timeout: Optional[float] = 15.0) -> QMPMessage:
        """Accept QEMU's connection (see `QEMUMonitorProtocol.accept`)."""
        self._greeting = super().accept(timeout)
        return self._greeting

    def close(self) -> None:
        """Save the history, close the log and the connection."""
        if self.quit_on_close:
            self.quit_on_close = False
            try:
                self.cmd('quit')
            except QMPError:
                pass  # already gone: that is what quit asks for anyway
        if self._readline_used:
            self._readline_used = False
            _save_history()
        logfile, self.logfile = self.logfile, None
        if logfile is not None and self._owns_logfile:
            logfile.close()
        super().close()

    # -- output ----------------------------------------------------------

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

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
        for event in self.get_events():
            self._log('event', event)
            self._print(self._format(event))

    def show_banner(self,
                    msg: str = 'Welcome to the QMP low-level shell!') -> None:
        """
        Print ``msg``, then the server's QEMU version if it greeted us.

        :param msg: The welcome line.
        """
        self._print(msg)
        version = (self._greeting or {}).get('QMP', {}).get('version', {})
        qemu = version.get('qemu') if isinstance(version, dict) else None
        if isinstance(qemu, dict):
            self._print("Connected to QEMU {major}.{minor}.{micro}\n"
                        .format_map(qemu))
        else:
            self._print('Connected')

    # -- completion ------------------------------------------------------

    @property
    def completions(self) -> List[str]:
        """The words Tab completes, as loaded by `load_completions`."""
        return self._completer.words

    def load_completions(self) -> None:
        """Fetch what Tab completes (command names); never fails."""
        completer = QMPCompleter()
        try:
            for word in sorted(set(self._completion_words())):
                completer.append(word)
        except QMPError:
            pass  # completion is a convenience: carry on without
        self._completer = completer

    def _completion_words(self) -> List[str]:
        return self.known_commands()

    def known_commands(self) -> List[str]:
        """
        The server's command names, from ``query-commands``: asked for on
        the first call only (Tab completion, or an unknown command), then
        remembered.

        :return: The names; empty if the server cannot tell (the guest
            agent).
        """
        if self._commands is None:
            try:
                commands = self.cmd('query-commands')
            except QMPError:
                commands = []
            self._commands = [
                cmd['name'] for cmd in commands
                if isinstance(cmd, dict) and isinstance(cmd.get('name'), str)]
        return list(self._commands)

    def suggest(self, name: str) -> List[str]:
        """
        The known command names nearest to ``name`` (at most three, the
        nearest first), for an unknown command.

        :param name: The command name the server did not know.
        :return: The names; empty if none is near.
        """
        return nearest_names(name, self.known_commands())

    def complete(self, text: str, state: int) -> Optional[str]:
        """The readline completer (see `QMPCompleter.complete`)."""
        return self._completer.complete(text, state)

    # -- running lines ---------------------------------------------------

    def command_for(self, line: str) -> Optional[QMPMessage]:
        """
        The command a line stands for, or `None` for no command yet.

        :raise QMPShellError: The line is not valid.
        """
        return self.parser.parse(line)

    def run_line(self, line: str) -> bool:
        """
        Run one input line and print the result.

        :return: `False` if the line failed (bad syntax or error reply).
        """
        try:
            cmd = self.command_for(line)
        except QMPShellError as err:
            self._print(f"Error: {err}")
            return False
        if cmd is None:
            return True
        return self.run_command(cmd)

    def run_command(self, cmd: QMPMessage) -> bool:
        """
        Send one command, print and log the reply.

        :return: `False` for an error reply or a failure to get one.
        """
        if self.verbose:
            self._print(self._format(cmd))
        self._log('command', cmd)
        try:
            reply = self.cmd_obj(cmd)
        except (ExecInterruptedError, StateError) as err:
            if self.runstate is not Runstate.RUNNING:
                self._connection_gone()
            else:
                self._print(f"Error: {type(err).__name__}: {err}")
            return False
        except ExecuteTimeoutError as err:
            self._print(f"Error: {err}")
            return False
        except (QMPError, ValueError) as err:
            self._print(f"Error: {type(err).__name__}: {err}")
            return False
        self._log('reply', reply)
        self.quit_answered = cmd.get('execute') == 'quit' \
            and 'return' in reply
        if 'error' in reply:
            error = reply['error']
            if self.json_output:
                self._print(self._format(reply))
            else:
                self._print(f"Error: {error.get('class')}: "
                            f"{error.get('desc')}"
                            f"{self._did_you_mean(cmd, error)}")
            return False
        self.show_return(reply)
        return not self._failed(reply)

    def _did_you_mean(self, cmd: QMPMessage, error: Dict[str, Any]) -> str:
        """``"; did you mean NAME?"`` for an unknown command, or ``""``."""
        # Only here, after a CommandNotFound: known commands cost nothing.
        name = cmd.get('execute', cmd.get('exec-oob'))
        if error.get('class') != 'CommandNotFound' \
                or not isinstance(name, str):
            return ''
        if name in _SHELL_WORDS:
            return "; Tab lists the commands, Ctrl-D leaves"
        names = self.suggest(name)
        if not names:
            return ''
        if len(names) > 1:
            names = [', '.join(names[:-1]), names[-1]]
        return f"; did you mean {' or '.join(names)}?"

    def _failed(self, reply: QMPMessage) -> bool:
        """Whether a successful reply still stands for a failure."""
        # pylint: disable=unused-argument
        return False

    def show_return(self, reply: QMPMessage) -> None:
        """Print a successful reply: its value, or all of it with
        ``verbose`` or ``json_output``."""
        if self.json_output or self.verbose:
            self._print(self._format(reply))
        else:
            self._print(self._format(reply.get('return')))

    # -- the loop ----------------------------------------------------------

    @property
    def prompt(self) -> str:
        """The prompt for the next line, with its trailing space."""
        return 'TRANS> ' if self.parser.in_transaction else '(QEMU) '

    @property
    def interactive(self) -> bool:
        """Whether lines come from a terminal (prompts, history, Tab)."""
        stream = self.stdin or sys.stdin
        return stream is sys.stdin and stream.isatty()

    def _read_line(self) -> Optional[str]:
        """The next input line; `None` at end of input."""
        if self.interactive:
            try:
                return input(self.prompt)
            except EOFError:
                self._print('')
                return None
        line = (self.stdin or sys.stdin).readline()
        return line or None

    def _connection_gone(self) -> None:
        if not self.connection_lost:
            self.connection_lost = True
            self._print("QEMU closed the connection" +
                        (" (after quit)." if self.quit_answered else "."))

    def _await_the_end(self) -> None:
        """
        After an answered ``quit``: print events until QEMU closes the
        connection, for up to `QUIT_GRACE` seconds, rather than show a
        prompt it will not answer.
        """
        deadline = time.monotonic() + QUIT_GRACE
        while self.runstate is Runstate.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                event = self.pull_event(wait=remaining)
            except (asyncio.TimeoutError, EOFError):
                return
            if event is not None:
                self._log('event', event)
                self._print(self._format(event))

    def read_exec_command(self) -> bool:
        """
        Print pending events, then read one line and run it.

        Ctrl-C at the prompt cancels the line (and a transaction being
        entered), as in a command shell.

        :return: `False` at end of input, or once the server closed the
            connection; `True` otherwise.
        """
        self.print_events()
        if self.quit_answered:
            self._await_the_end()
        if self.runstate is not Runstate.RUNNING:
            self._connection_gone()
            return False
        try:
            line = self._read_line()
        except KeyboardInterrupt:
            self._print('')
            self.parser = CommandParser()
            return True
        if line is None:
            return False
        if not self.run_line(line):
            self.failures += 1
        return not self.connection_lost

    def repl(self) -> Iterator[None]:
        """
        Read and run lines until end of input; yields after each line.

        On a terminal: a banner, Tab completion and history first.  The
        connection is closed at the end, as in the reference library.
        """
        try:
            if self.interactive:
                self._setup_readline()
                if not self.json_output:
                    self.show_banner()
            while self.read_exec_command():
                yield
        finally:
            self.close()

    def _setup_readline(self) -> None:
        try:
            import readline  # pylint: disable=import-outside-toplevel
        except ImportError:
            return
        self.load_completions()
        readline.set_completer(self.complete)
        readline.parse_and_bind('tab: complete')
        readline.set_completer_delims(self._completer_delims)
        try:
            readline.read_history_file(history_path())
        except OSError:
            pass
        self._readline_used = True

    # Characters that end the word Tab completes.
    _completer_delims = ' \t\n'


def hmp_words(help_text: object, info_text: object) -> List[str]:
    """
    What HMP lines can start with, from the monitor's own ``help`` and
    ``info`` texts: each command (``help NAME`` too) and each ``info``
    subcommand, as whole words.

    >>> hmp_words('quit|q  -- quit the emulator',
    ...           'info status  -- show the VM status')
    ['help info', 'quit', 'help quit', 'info status']

    :param help_text: What ``help`` printed.
    :param info_text: What ``info`` printed.
    :return: The words, as typed after the prompt.
    """
    words = ['help info']
    for line in str(help_text).splitlines():
        if not line or line[0].isspace() or line[0] == '[':
            continue
        # "quit|q  -- quit the emulator": the full name of the command
        name = max(line.split()[0].split('|'), key=len)
        if name != 'info':
            words += [name, f'help {name}']
    for line in str(info_text).splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] == 'info':
            words.append(f'info {parts[1]}')
    return words


def _hmp_error(output: object) -> bool:
    """
    Whether HMP output is one of the monitor's own error messages.

    ``human-monitor-command`` succeeds whatever the HMP command did; QEMU's
    monitor reports its errors as text, in three forms: an unknown command,
    ``Error: ...`` (most commands' errors), and a usage message ending
    ``Try "help NAME" for more information``.  Other messages (``Device
    'x' not found``) cannot be told from output.

    >>> _hmp_error("unknown command: 'foo'\\r\\n")
    True
    >>> _hmp_error('VM status: running\\r\\n')
    False
    """
    if not isinstance(output, str) or not output.strip():
        return False
    lines = output.splitlines()
    return lines[0].startswith(('unknown command: ', 'Error: ')) or (
        lines[-1].startswith('Try "help ')
        and lines[-1].endswith('" for more information'))


class HMPShell(QMPShell):
    """
    An HMP shell over QMP: each line is a human monitor command, sent
    through ``human-monitor-command``.

    ``cpu N`` picks the CPU later commands act on, as in QEMU's monitor.
    Constructed and used like `QMPShell`.
    """

    def __init__(self, address: SocketAddrT, pretty: bool = False,
                 verbose: bool = False, server: bool = False,
                 logfile: Optional[Union[str, IO[str]]] = None,
                 **kwargs: Any) -> None:
        # pylint: disable=too-many-arguments
        super().__init__(address, pretty, verbose, server, logfile,
                         **kwargs)
        # None until "cpu N": QEMU without CPUs refuses any cpu-index.
        self._cpu_index: Optional[int] = None

    def show_banner(self, msg: str = 'Welcome to the HMP shell!') -> None:
        """Print ``msg`` and the QEMU version (see `QMPShell`)."""
        super().show_banner(msg)

    @property
    def prompt(self) -> str:
        """The prompt for the next line."""
        return '(QEMU) '

    def _hmp(self, command_line: str,
             cpu_index: Optional[int]) -> QMPMessage:
        arguments: Dict[str, object] = {'command-line': command_line}
        if cpu_index is not None:
            arguments['cpu-index'] = cpu_index
        return {'execute': 'human-monitor-command', 'arguments': arguments}

    def command_for(self, line: str) -> Optional[QMPMessage]:
        """
        The ``human-monitor-command`` for an HMP line (`None` if blank).

        :raise QMPShellError: ``cpu`` without a valid CPU index.
        """
        words = line.split()
        if not words:
            return None
        if words[0] == 'cpu':
            self._select_cpu(words[1:])
            return None
        return self._hmp(line.strip(), self._cpu_index)

    def _select_cpu(self, words: List[str]) -> None:
        try:
            (index,) = [int(word) for word in words]
        except ValueError:
            raise QMPShellError("cpu takes one CPU index, a number") from None
        if 'return' not in self.cmd_obj(self._hmp('info version', index)):
            raise QMPShellError(f"no CPU with index {index}")
        self._cpu_index = index

    def show_return(self, reply: QMPMessage) -> None:
        """Print the command's text output as it is."""
        value = reply.get('return')
        if self.json_output or not isinstance(value, str):
            super().show_return(reply)
        elif value:
            # QEMU's monitor ends lines with CRLF.
            self._print(value.replace('\r\n', '\n').rstrip('\n'))

    def _failed(self, reply: QMPMessage) -> bool:
        return _hmp_error(reply.get('return'))

    def _completion_words(self) -> List[str]:
        return hmp_words(
            self.cmd('human-monitor-command', **{'command-line': 'help'}),
            self.cmd('human-monitor-command', **{'command-line': 'info'}))

    # Lines like "info block" complete as a whole.
    _completer_delims = '\t\n'


def history_path(program: str = 'qmp-shell') -> str:
    """
    Where a program's input history is kept: the XDG state dir, else the
    home dir.

    :param program: ``qmp-shell`` or ``qmp-tui``.
    """
    state = os.environ.get('XDG_STATE_HOME')
    if state:
        return os.path.join(state, program, 'history')
    return os.path.join(os.path.expanduser('~'), f'.{program}_history')


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

def common_parser() -> argparse.ArgumentParser:
    """
    The options qmp-shell and qmp-shell-wrap share with the reference
    library's: -H, -v, -p and -l.  Each program adds its own.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument('-H', '--hmp', action='store_true',
                        help='HMP mode: lines are HMP commands')
    # What each prints, in the reference's spirit ("echo commands sent
    # and received", "pretty-print JSON"): -v the traffic, -p the layout.
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='print each command before sending it, and '
                             'whole replies ({"return": ...}) instead of '
                             'their value')
    parser.add_argument('-p', '--pretty', action='store_true',
                        help='indent JSON output; what is printed stays '
                             'the same (no effect with --json)')
    parser.add_argument('-l', '--logfile', metavar='FILE',
                        help='append commands, replies and events to FILE '
                             'as JSON lines')
    return parser


def die(msg: str) -> NoReturn:
    """Print ``ERROR: msg`` on standard error and exit with status 1."""
    sys.stderr.write(f"ERROR: {msg}\n")
    sys.exit(1)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``qmp-shell`` (the program lives in ``_shell_cli``).

    :param argv: The arguments, without the program name; the process's
        when `None`.
    :return: The exit status.
    """
    from . import _shell_cli  # pylint: disable=import-outside-toplevel
    return _shell_cli.qmp_shell(argv)


def main_wrap(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``qmp-shell-wrap``: start QEMU, attach a shell.

    :param argv: The arguments, without the program name; the process's
        when `None`.
    :return: The exit status.
    """
    from . import _shell_cli  # pylint: disable=import-outside-toplevel
    return _shell_cli.qmp_shell_wrap(argv)


if __name__ == '__main__':
    sys.exit(main())
