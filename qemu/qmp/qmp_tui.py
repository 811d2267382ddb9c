"""
qmp-tui: a full-screen QMP client, on Textual.

.. code-block:: text

    qmp-tui [-H] [-N] [--listen] [-l FILE] ADDRESS

A transcript of every command, reply and event (timestamped, coloured by
kind, pretty JSON) above an input line that takes qmp-shell's
``command arg=value`` form or raw JSON, with history kept between sessions
and Tab completion of command names and argument names.  A status bar
shows the connection and the VM's run state, kept current from events.
The client waits for a socket that does not exist yet, and reconnects when
QEMU restarts.

Keys: Enter sends; Up/Down walk the history; Tab completes; Ctrl+F types
an event filter (``STOP RESUME`` shows only those, ``-JOB_STATUS_CHANGE``
hides one); Ctrl+S saves the transcript to a file, Ctrl+Y copies it;
Ctrl+R connects again once the session has ended or connecting gave up;
Ctrl+Q or Ctrl+C quits.

It needs Textual, the ``tui`` extra (``pip install '.[tui]'``): Textual runs
on asyncio, so `QMPClient` runs in the app's own event loop.  Importing
``qemu.qmp`` never imports this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import deque
from typing import (
    Any, Callable, Deque, Dict, List, Optional, Sequence, TypeVar)


if __name__ == '__main__':
    # python3 -m qemu.qmp.qmp_tui: the command line comes first, as with
    # the qmp-tui program, so that --help works and a missing Textual is
    # one line and status 2 (below, it would be a traceback).  It imports
    # this module again, as qemu.qmp.qmp_tui, for the app.
    from ._shell_cli import qmp_tui as _command_line
    sys.exit(_command_line())

try:
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.widgets import Footer, Input, RichLog, Static
except ImportError as err:  # pragma: no cover (the tui extra is missing)
    raise ImportError("qmp-tui needs Textual (the tui extra), which is "
                      "not installed: pip install textual") from err

from . import handshake
from .error import QMPError
from .message import Message
from .protocol import Runstate, SocketAddrT, StateError
from .qmp_client import RECONNECTED, QMPClient
from .qmp_shell import CommandParser, QMPShellError, hmp_words
from .qmp_shell import history_path as qmp_shell_history_path
from .replies import ExecuteError
from .util import exception_summary


__all__ = ['QMPTUI', 'Entry', 'EventFilter', 'history_path', 'main']

#: How the kinds of transcript entries look.
STYLES = {
    'command': 'bold cyan',
    'reply': 'green',
    'error': 'bold red',
    'event': 'yellow',
    'info': 'dim',
}

_T = TypeVar('_T')

# What the transcript keeps of history for the input line.
_HISTORY_KEPT = 1000


def history_path() -> str:
    """Where the input history is kept: the XDG state dir, else home
    (as qmp-shell's, under qmp-tui's name)."""
    return qmp_shell_history_path('qmp-tui')


class Entry:
    """
    One line of the transcript.

    :param kind: ``command``, ``reply``, ``error``, ``event`` or ``info``.
    :param text: What it says.
    :param name: For an event, its name (the filter looks at it).
    """

    def __init__(self, kind: str, text: str, name: str = '') -> None:
        #: ``command``, ``reply``, ``error``, ``event`` or ``info``.
        self.kind = kind
        #: What it says.
        self.text = text
        #: For an event, its name.
        self.name = name
        #: When it was added, as `time.time`.
        self.when = time.time()

    def plain(self) -> str:
        """The entry as saved: time, kind, text."""
        stamp = time.strftime('%H:%M:%S', time.localtime(self.when))
        return f"{stamp} {self.kind:<7} {self.text}"

    #: The most lines of one entry shown: drawing a reply of tens of
    #: thousands of lines (``query-qmp-schema``) would take seconds, and
    #: nobody reads it on screen.
    SHOWN_LINES = 1000

    def rich(self) -> Text:
        """The entry as shown: the same, coloured by kind, and cut after
        `SHOWN_LINES` lines."""
        stamp = time.strftime('%H:%M:%S', time.localtime(self.when))
        line = Text(f"{stamp} ", style='dim')
        text = self.text
        cut = _nth_newline(text, self.SHOWN_LINES)
        if cut < 0:
            line.append(text, style=STYLES[self.kind])
            return line
        line.append(text[:cut + 1], style=STYLES[self.kind])
        more = text.count('\n', cut)
        line.append(f"... {more:,} more lines: Ctrl+S saves them",
                    style='dim')
        return line


def _nth_newline(text: str, n: int) -> int:
    """Where the ``n``-th newline of ``text`` is, or -1."""
    position = -1
    for _ in range(n):
        position = text.find('\n', position + 1)
        if position < 0:
            break
    return position


class EventFilter:
    """
    Which events the transcript shows, from what the user typed.

    Words are event names (or name prefixes ending in ``*``); a word
    starting with ``-`` hides those events.  With no plain word, every
    event not hidden is shown.

    >>> f = EventFilter('STOP RESUME')
    >>> f.shows('STOP'), f.shows('SHUTDOWN')
    (True, False)
    >>> EventFilter('-JOB_* -STOP').shows('JOB_STATUS_CHANGE')
    False

    :param text: The filter, as typed.
    """

    def __init__(self, text: str = '') -> None:
        words = text.split()
        self._shown = [w for w in words if not w.startswith('-')]
        self._hidden = [w[1:] for w in words if w.startswith('-') and w[1:]]

    @staticmethod
    def _matches(name: str, pattern: str) -> bool:
        if pattern.endswith('*'):
            return name.startswith(pattern[:-1])
        return name == pattern

    def shows(self, name: str) -> bool:
        """Whether an event of this name is shown."""
        if any(self._matches(name, p) for p in self._hidden):
            return False
        return not self._shown or any(self._matches(name, p)
                                      for p in self._shown)


class CommandInput(Input):
    """The input line: history on Up/Down, completion on Tab."""

    BINDINGS = [
        Binding('up', 'history(-1)', 'Previous', show=False),
        Binding('down', 'history(1)', 'Next', show=False),
        Binding('tab', 'complete', 'Complete', show=False, priority=True),
    ]

    def __init__(self, history: List[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self._position = len(history)

    def remember(self, line: str) -> None:
        """Add a line to the history (not twice in a row)."""
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[:-_HISTORY_KEPT]
        self._position = len(self.history)

    def action_history(self, step: int) -> None:
        """Show the previous (-1) or next (1) line of the history."""
        position = max(0, min(len(self.history), self._position + step))
        self._position = position
        self.value = self.history[position] \
            if position < len(self.history) else ''
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        """Complete the word at the cursor (see `QMPTUI.completions`)."""
        app = self.app
        assert isinstance(app, QMPTUI)
        before = self.value[:self.cursor_position]
        word = before.split(' ')[-1]
        choices = app.completions(before)
        if not choices:
            return
        completion = os.path.commonprefix(choices)
        if len(choices) == 1:
            # A command is followed by its arguments, an argument by '='
            # (HMP takes plain words).
            completion += '=' if ' ' in before and not app.hmp else ' '
        else:
            app.hint(' '.join(choices[:30]) +
                     (' ...' if len(choices) > 30 else ''))
        if len(completion) > len(word):
            self.insert_text_at_cursor(completion[len(word):])


class QMPTUI(App[int]):
    """
    The qmp-tui application.

    :param address: Where QEMU's monitor is (or where to listen for it).
    :param hmp: Lines are HMP commands (``human-monitor-command``).
    :param negotiate: `False` for the guest agent.
    :param listen: Listen at ``address`` for QEMU to connect.
    :param logfile: Append commands, replies and events to this file, as
        JSON lines.
    :param retry: Seconds to keep trying to connect (a socket that does
        not exist yet, or refuses), and to re-establish a lost session;
        then the session ends.  Without end by default.
    :param asyncio_debug: Run the event loop in asyncio's debug mode.
    """

    #: The terminal's title.
    TITLE = 'qmp-tui'
    #: How many entries the transcript keeps (the ``-l`` log has them
    #: all), so that a session left open for days has bounded memory.
    ENTRIES_KEPT = 10_000
    #: How many lines the transcript's view keeps.
    LINES_SHOWN = 50_000
    CSS = """
    #status { height: 1; background: $primary; color: $text; padding: 0 1; }
    #transcript { height: 1fr; }
    #hint { height: auto; max-height: 3; color: $text-muted; padding: 0 1; }
    #filter { display: none; }
    #filter.open { display: block; }
    """
    BINDINGS = [
        # Before the focused input's own keys (Textual's Input has used
        # Ctrl+F and Ctrl+C for editing): these always mean the same.
        Binding('ctrl+q', 'quit', 'Quit', priority=True),
        Binding('ctrl+c', 'quit', 'Quit', show=False, priority=True),
        Binding('ctrl+s', 'save', 'Save transcript', priority=True),
        Binding('ctrl+y', 'copy', 'Copy transcript', priority=True),
        Binding('ctrl+f', 'filter', 'Filter events', priority=True),
        Binding('ctrl+r', 'reconnect', 'Reconnect', priority=True),
        Binding('escape', 'focus_input', 'Input', show=False),
    ]

    def __init__(self, address: SocketAddrT, *, hmp: bool = False,
                 negotiate: bool = True, listen: bool = False,
                 logfile: Optional[str] = None,
                 retry: float = float('inf'),
                 asyncio_debug: bool = False) -> None:
        super().__init__()
        self.address = address
        self.hmp = hmp
        self.listen = listen
        self.logfile = logfile
        #: The client, in this app's event loop.
        self.qmp = QMPClient('qmp-tui')
        self.qmp.await_greeting = self.qmp.negotiate = negotiate
        self.qmp.auto_reconnect = retry
        #: Seconds to keep trying to connect, and to reconnect.
        self.retry = retry
        #: The event loop runs in asyncio's debug mode.
        self.asyncio_debug = asyncio_debug
        #: What was said, shown or not: the latest `ENTRIES_KEPT`.
        self.entries: Deque[Entry] = deque(maxlen=self.ENTRIES_KEPT)
        #: Which events are shown.
        self.event_filter = EventFilter()
        #: The server's command names, for completion.
        self.commands: List[str] = []
        #: Argument names by command, from the schema, for completion.
        self.arguments: Dict[str, List[str]] = {}
        #: In HMP mode, what lines can start with (`hmp_words`).
        self.hmp_words: List[str] = []
        #: The VM's run state, as last heard.
        self.vm_state = '?'
        #: What the status bar says of the connection.
        self.connection_state = ''
        self._parser = CommandParser()
        self._waiters: List[asyncio.Future[None]] = []
        self._closing = False
        # The widgets the session's tasks write to, held here because
        # those tasks may still say something while the app is being
        # taken down and its widgets can no longer be looked up.
        self._status_bar = Static(id='status')
        self._transcript_view = RichLog(id='transcript', wrap=True,
                                        markup=False, highlight=False,
                                        max_lines=self.LINES_SHOWN)
        self._hint_line = Static(id='hint')
        # The session was lost, and is being re-established.
        self._lost = False
        # A session worker runs: connecting, connected or reconnecting.
        self._in_session = False

    # -- layout ------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """The widgets: status bar, transcript, hints, filter, input,
        keys."""
        yield self._status_bar
        yield self._transcript_view
        yield self._hint_line
        yield Input(placeholder='event filter: STOP RESUME, -JOB_*',
                    id='filter')
        yield CommandInput(_load_history(), id='input',
                           placeholder='command arg=value, or JSON')
        yield Footer()

    def on_mount(self) -> None:
        """Start the session and the status bar's watcher."""
        if self.asyncio_debug:
            asyncio.get_running_loop().set_debug(True)
        self._show_status()
        self.query_one('#input').focus()
        self._handle_signals(True)
        # The watcher first, so that it sees the session's first change.
        self.run_worker(self._watch_runstate())
        self.run_worker(self._session())

    def _handle_signals(self, on: bool) -> None:
        # Ctrl-C is a key here (the terminal is in raw mode), but SIGINT,
        # SIGTERM and SIGHUP from elsewhere must still end the app the
        # way Ctrl+Q does: the terminal restored, the session closed.
        try:
            loop = asyncio.get_running_loop()
            for signum in _ENDING_SIGNALS:
                if on:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                else:
                    loop.remove_signal_handler(signum)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread, or not a POSIX loop: no handlers

    def _on_signal(self, signum: int) -> None:
        self.exit(128 + signum)
        self._notify()

    # -- the transcript ----------------------------------------------------

    def add(self, kind: str, text: str, name: str = '') -> Entry:
        """Add an entry to the transcript (and show it, unless it is a
        filtered event)."""
        entry = Entry(kind, text, name)
        self.entries.append(entry)
        if self._closing:
            return entry
        if kind != 'event' or self.event_filter.shows(name):
            self._transcript_view.write(entry.rich())
        self._notify()
        return entry

    def shown_entries(self) -> List[Entry]:
        """The entries the transcript shows (the filter hides events)."""
        return [entry for entry in self.entries
                if entry.kind != 'event'
                or self.event_filter.shows(entry.name)]

    def _redraw(self) -> None:
        log = self._transcript_view
        log.clear()
        for entry in self.shown_entries():
            log.write(entry.rich())

    def transcript(self) -> str:
        """The whole transcript as text, filtered events included."""
        return ''.join(entry.plain() + '\n' for entry in self.entries)

    def hint(self, text: str) -> None:
        """Show a hint (completions, key help) under the transcript."""
        self._hint_line.update(text)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """
        Wait until ``predicate()`` is true; it is checked after each
        change to the transcript or the status bar.  For tests.

        :param predicate: The condition.
        """
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    # -- the status bar ----------------------------------------------------

    def _show_status(self) -> None:
        runstate = self.qmp.runstate
        if runstate is Runstate.RUNNING:
            state = 'connected'
        elif self._lost:
            state = 'reconnecting'
        elif runstate is Runstate.CONNECTING:
            state = 'waiting for QEMU' if self.listen else 'connecting'
        else:
            state = 'disconnected'
        text = f"{_describe(self.address)}: {state}"
        if runstate is Runstate.RUNNING and self.qmp.negotiate:
            text += f" | VM {self.vm_state}"
        self.connection_state = state
        if self._closing:
            return
        self._status_bar.update(text)
        self._notify()

    async def _watch_runstate(self) -> None:
        previous = self.qmp.runstate
        while True:
            state = await self.qmp.runstate_changed()
            if (previous is Runstate.RUNNING
                    and state is Runstate.DISCONNECTING
                    and not self._closing):
                self.add('info', "the connection was lost"
                         + ("; reconnecting" if self.retry > 0 else ""))
                self.vm_state = '?'  # a new QEMU may be in any state
                self._lost = self.retry > 0
            elif state is Runstate.RUNNING:
                self._lost = False
            previous = state
            self._show_status()

    # -- the session -------------------------------------------------------

    async def _session(self) -> None:
        self._in_session = True
        try:
            await self._one_session()
        finally:
            self._in_session = False

    async def _one_session(self) -> None:
        try:
            if self.listen:
                await self.qmp.start_server(self.address)
                self._show_status()
                await self.qmp.accept()
            else:
                hint = asyncio.get_running_loop().call_later(
                    handshake.GREETING_PATIENCE, self._still_connecting)
                try:
                    await self.qmp.connect(self.address, retry=self.retry)
                finally:
                    hint.cancel()
        except QMPError as err:
            self.add('error', f"could not connect: {err} "
                              f"(Ctrl+R tries again)")
            return
        await self._learn_the_server()
        async for event in self.qmp.session_events():
            await self._on_event(event)
        self._lost = False
        self.add('info', "the session has ended (Ctrl+R reconnects)")
        self._show_status()

    def _still_connecting(self) -> None:
        """A connection that takes long: say what may be wrong."""
        if self.qmp.runstate is not Runstate.CONNECTING:
            return
        if isinstance(self.address, str) \
                and not os.path.exists(self.address):
            why = ("no socket there yet: waiting for QEMU to create it "
                   "(is the path right?)")
        elif self.qmp.await_greeting:
            why = ("no greeting yet: for the guest agent's socket, which "
                   "never greets, start qmp-tui with -N")
        else:
            why = "no answer yet"
        self.add('info', f"still connecting to {_describe(self.address)}: "
                         f"{why}")

    async def _learn_the_server(self) -> None:
        """Greeting, command names, argument names, run state."""
        greeting = self.qmp.greeting
        if greeting is not None:
            version = greeting.QMP.version.get('qemu', {})
            self.add('info', f"connected: QEMU {version.get('major')}."
                             f"{version.get('minor')}."
                             f"{version.get('micro')} "
                             f"{greeting.QMP.version.get('package', '')}"
                             f" {list(greeting.QMP.capabilities)}")
        else:
            self.add('info', "connected (no greeting: the guest agent?)")
        if self.qmp.negotiate:
            commands = await self._ask(
                'query-commands', "commands will not complete",
                lambda names: sorted(c['name'] for c in names))
            status = await self._ask(
                'query-status', "the VM's state is unknown",
                lambda reply: str(reply['status']))
            self.vm_state = status or '?'
            self._show_status()  # now, not after the schema
        else:
            commands = await self._ask(
                'guest-info', "commands will not complete",
                lambda info: sorted(c['name']
                                    for c in info['supported_commands']))
        self.commands = commands or []
        if 'query-qmp-schema' in self.commands:
            self.arguments = await self._ask(
                'query-qmp-schema', "arguments will not complete",
                _arguments_from) or {}
        if self.hmp:
            texts = [await self._ask(
                'human-monitor-command', "HMP commands will not complete",
                str, {'command-line': line}) for line in ('help', 'info')]
            self.hmp_words = hmp_words(*texts) if None not in texts else []
        self._show_status()

    async def _ask(self, command: str, otherwise: str,
                   read: Callable[[Any], _T],
                   arguments: Optional[Dict[str, Any]] = None
                   ) -> Optional[_T]:
        """
        ``read(command's value)``; or, if the server refuses, does not
        answer, or answers in another shape than QEMU's, `None` and a
        note that says what ``otherwise`` happens.
        """
        try:
            return read(await self.qmp.execute(command, arguments,
                                               timeout=10))
        except _ODD_ANSWER as err:
            self.add('info', f"({otherwise}: {exception_summary(err)})")
            return None

    async def _on_event(self, event: Message) -> None:
        name = str(event.get('event'))
        if name == RECONNECTED:
            self.add('info', f"reconnected after "
                             f"{event['data']['gap']:.1f} s: events may "
                             f"have been missed")
            await self._learn_the_server()
            return
        self._log_json({'event': dict(event)})
        state = _RUN_STATES.get(name)
        if state is not None:
            self.vm_state = state
            self._show_status()
        data = event.get('data')
        text = name if data is None else \
            f"{name} {json.dumps(data, indent=2)}"
        self.add('event', text, name)

    # -- input ---------------------------------------------------------------

    async def on_input_submitted(self, message: Input.Submitted) -> None:
        """Enter: run the input line; in the filter, back to the input."""
        if message.input.id == 'filter':
            self.action_focus_input()
            return
        line = message.value
        field = self.query_one('#input', CommandInput)
        field.remember(line.strip())
        field.value = ''
        _save_history(field.history)
        if line.strip():
            self.run_worker(self.run_line(line))

    def on_input_changed(self, message: Input.Changed) -> None:
        """The event filter applies as it is typed."""
        if message.input.id == 'filter':
            self.event_filter = EventFilter(message.value)
            self._redraw()

    async def run_line(self, line: str) -> None:
        """Send one line, as typed, and show what comes back."""
        try:
            if self.hmp:
                command: Optional[Dict[str, Any]] = {
                    'execute': 'human-monitor-command',
                    'arguments': {'command-line': line.strip()}}
            else:
                command = self._parser.parse(line)
        except QMPShellError as err:
            self.add('error', str(err))
            return
        if command is None:
            return  # more to come: inside transaction( ... )
        if self.qmp.runstate is not Runstate.RUNNING:
            self.add('error', self._not_connected())
            return
        self.add('command', line.strip() if self.hmp
                 else json.dumps(command))
        self._log_json({'command': command})
        try:
            value = await self.qmp.execute_msg(Message(command))
        except ExecuteError as err:
            self._log_json({'reply': dict(err.received)})
            self.add('error', f"{err.error_class}: {err}")
            return
        except StateError:
            # The session ended between the check above and the send.
            self.add('error', self._not_connected())
            return
        except (QMPError, ValueError) as err:
            self.add('error', exception_summary(err))
            return
        self._log_json({'reply': {'return': value}})
        if self.hmp and isinstance(value, str):
            self.add('reply', value.rstrip('\n') or '(nothing)')
        else:
            self.add('reply', json.dumps(value, indent=2))

    def _not_connected(self) -> str:
        """Why a command was not sent, and what to do about it."""
        if self._in_session:
            return ("not connected: the command was not sent; qmp-tui is "
                    "still trying to (re)connect")
        return "not connected: the command was not sent; Ctrl+R reconnects"

    def completions(self, before: str) -> List[str]:
        """
        What can complete the word before the cursor: a command name, or
        an argument name of the line's command; in HMP mode, the next word
        of an HMP command (``info st`` -> ``status``).

        :param before: The input line up to the cursor.
        :return: The candidates, sorted.
        """
        words = before.split(' ')
        word = words[-1]
        if self.hmp:
            start = len(before) - len(word)
            return sorted({line[start:].split(' ')[0]
                           for line in self.hmp_words
                           if line.startswith(before)})
        if len(words) == 1:
            return [name for name in self.commands if name.startswith(word)]
        if '=' in word:
            return []
        given = {w.split('=', 1)[0] for w in words[1:-1]}
        return [name for name in self.arguments.get(words[0], [])
                if name.startswith(word) and name not in given]

    def _log_json(self, record: Dict[str, Any]) -> None:
        if self.logfile is None:
            return
        try:
            with open(self.logfile, 'a', encoding='utf-8') as log:
                log.write(json.dumps(record) + '\n')
        except OSError as err:
            self.add('error', f"cannot write {self.logfile}: {err}")
            self.logfile = None

    # -- actions -------------------------------------------------------------

    def action_focus_input(self) -> None:
        """Escape: back to the input line."""
        self.query_one('#input').focus()

    def action_filter(self) -> None:
        """Ctrl+F: open the event filter."""
        field = self.query_one('#filter', Input)
        field.add_class('open')
        field.focus()

    def action_save(self) -> None:
        """Ctrl+S: save the transcript in the current directory."""
        path = time.strftime('qmp-tui-%Y%m%d-%H%M%S.txt')
        try:
            with open(path, 'w', encoding='utf-8') as out:
                out.write(self.transcript())
        except OSError as err:
            self.hint(f"could not save the transcript: {err}")
            return
        self.hint(f"transcript saved to {os.path.abspath(path)}")

    def action_copy(self) -> None:
        """Ctrl+Y: copy the transcript to the clipboard (OSC 52)."""
        self.copy_to_clipboard(self.transcript())
        self.hint("transcript copied (where the terminal allows it)")

    def action_reconnect(self) -> None:
        """Ctrl+R: connect again (or listen again, with ``--listen``)
        once the session has ended or connecting gave up."""
        if self._in_session:
            self.hint("already connected" if self.qmp.runstate
                      is Runstate.RUNNING else "already (re)connecting")
            return
        self.hint('')
        self.add('info', f"connecting to {_describe(self.address)} again")
        self.run_worker(self._session())

    async def action_quit(self) -> None:
        """Ctrl+Q: leave, with exit status 0."""
        self.exit(0)

    async def on_unmount(self) -> None:
        """However the app ends, the session ends with it."""
        # The widgets are gone: what the session says from now on (its
        # runstate changes, a command cut short) has nowhere to go.
        self._closing = True
        self.workers.cancel_all()
        self._handle_signals(False)
        try:
            await self.qmp.disconnect()
        except (QMPError, OSError, EOFError):
            pass  # leaving anyway


# What asking the server for its commands can raise: an error reply, no
# reply, or an answer of another shape than QEMU's (reading it raises).
_ODD_ANSWER = (QMPError, asyncio.TimeoutError, LookupError, TypeError,
               AttributeError)

# Signals that end the app as Ctrl+Q does.
_ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Run states the events tell of.
_RUN_STATES = {'STOP': 'paused', 'RESUME': 'running',
               'SHUTDOWN': 'shutting down', 'RESET': 'reset',
               'SUSPEND': 'suspended', 'WAKEUP': 'running',
               'GUEST_PANICKED': 'panicked'}


def _arguments_from(schema: Sequence[Dict[str, Any]]) -> Dict[str, List[str]]:
    """Argument names by command, from ``query-qmp-schema``."""
    members: Dict[str, List[str]] = {}
    for entry in schema:
        if entry.get('meta-type') == 'object':
            members[entry['name']] = [m['name']
                                      for m in entry.get('members', [])]
    return {entry['name']: members.get(entry.get('arg-type', ''), [])
            for entry in schema if entry.get('meta-type') == 'command'}


def _describe(address: SocketAddrT) -> str:
    return address if isinstance(address, str) else \
        f"{address[0]}:{address[1]}"


# The history holds whatever was typed, secrets included (``object-add
# qom-type=secret ... data=...``): it is its owner's only, as GNU
# readline makes qmp-shell's.
_HISTORY_MODE = 0o600


def _load_history() -> List[str]:
    path = history_path()
    try:
        # A history an older qmp-tui wrote under umask 022 is readable to
        # all: make it private now, not only at the next line typed.
        os.chmod(path, _HISTORY_MODE)
        with open(path, encoding='utf-8') as lines:
            return [line.rstrip('\n') for line in lines][-_HISTORY_KEPT:]
    except OSError:
        return []


def _save_history(history: List[str]) -> None:
    path = history_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Created private, and made private before anything is written
        # when it already existed with another mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     _HISTORY_MODE)
        with open(fd, 'w', encoding='utf-8') as out:
            os.fchmod(fd, _HISTORY_MODE)
            out.writelines(line + '\n' for line in history)
    except OSError:
        pass  # the history is a convenience


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``qmp-tui`` (and ``python -m qemu.qmp.qmp_tui``); the
    program's options live in ``_shell_cli``, with qmp-shell's.

    :param argv: The arguments, without the program name; the process's
        when `None`.
    :return: The exit status.
    """
    from . import _shell_cli  # pylint: disable=import-outside-toplevel
    return _shell_cli.qmp_tui(argv)
