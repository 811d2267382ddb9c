"""
An in-process QMP server for your tests.

`QMPTestServer` behaves like QEMU's monitor as far as the protocol goes: it
greets, requires ``qmp_capabilities`` first, answers commands through
handlers you register, emits events when told to, and records everything it
received.  It can also misbehave on request (garbage, id-less errors,
hang-ups, over-long lines, not reading) so you can test how your code copes.

Example:

.. code-block:: python

    from qemu.qmp import QMPClient
    from qemu.qmp.testing import CommandError, QMPTestServer

    async def test_status() -> None:
        async with QMPTestServer() as server:
            server.on('query-status', {'status': 'running'})
            server.on('stop', CommandError('GenericError', 'not now'))
            qmp = QMPClient()
            await qmp.connect(await server.start())
            assert await qmp.execute('query-status') == {'status': 'running'}
            await server.emit_event('STOP')
            assert (await qmp.events.get())['event'] == 'STOP'
            await qmp.disconnect()

A handler is a value (returned as is), a `CommandError` (returned as an
error), or a function of the arguments dict, plain or ``async`` (an async
handler can wait for anything before answering: that is how you make a
command slow).  `QUIT` answers like QEMU's ``quit``.  A handler that
raises anything else is answered with a ``GenericError`` naming the
exception, logged on ``qemu.qmp.testing``, and the server goes on.  A
function may return `NO_REPLY` to leave the command unanswered.
In-band commands are answered in order, one at a time, like QEMU does;
``exec-oob`` commands are answered as soon as their handler finishes.
Input QEMU cannot take (nested too deeply, not UTF-8, not JSON, not an
object, a line over 64 MiB) gets QEMU's error without an id, and the
session goes on.

``QMPTestServer(greeting=None)`` behaves like the guest agent: no greeting
and no negotiation.

For a blocking client (`qemu.qmp.legacy.QEMUMonitorProtocol`) or a test
without an event loop, `ServerThread` runs the server in an event loop of
its own thread:

.. code-block:: python

    from qemu.qmp.legacy import QEMUMonitorProtocol
    from qemu.qmp.testing import QMPTestServer, ServerThread

    def test_blocking() -> None:
        server = QMPTestServer()
        server.on('query-status', {'status': 'running'})
        with ServerThread(server) as thread:
            with QEMUMonitorProtocol(thread.address) as qmp:
                qmp.connect()
                assert qmp.cmd('query-status') == {'status': 'running'}
                thread.run(server.emit_event('STOP'))
                event = qmp.pull_event(wait=5)
                assert event is not None and event['event'] == 'STOP'
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from ssl import SSLContext
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from ._json_stream import JsonSplitter
from ._sockets import READ_SIZE, SocketAddrT, close_writer
from .protocol import CLOSE_GRACE
from .replay import Replay
from .transcript import CLOSED, Transcript
from .util import exception_summary, nests_deeper_than


__all__ = ['QMPTestServer', 'ServerThread', 'CommandError', 'NO_REPLY',
           'QUIT', 'DEFAULT_GREETING', 'Handler', 'demo_server']

_T = TypeVar('_T')

_logger = logging.getLogger(__name__)

#: A greeting like QEMU 7.2's.
DEFAULT_GREETING: Mapping[str, object] = {
    'QMP': {
        'version': {'qemu': {'major': 7, 'minor': 2, 'micro': 0},
                    'package': 'qemu.qmp test server'},
        'capabilities': ['oob'],
    }
}


class CommandError(Exception):
    """
    A handler's error reply: raise it from a handler, or register it.

    :param class_: The QMP error class, e.g. ``'GenericError'``.
    :param desc: The human-readable description.
    """

    def __init__(self, class_: str, desc: str) -> None:
        super().__init__(class_, desc)
        self.class_ = class_
        self.desc = desc


class _NoReply:
    def __repr__(self) -> str:
        return 'NO_REPLY'


#: Returned by a handler: send no reply at all.
NO_REPLY: Any = _NoReply()


class _Quit:
    def __repr__(self) -> str:
        return 'QUIT'


#: A handler that answers like QEMU's ``quit``: an empty reply, then a
#: ``SHUTDOWN`` event, then the connection closes
#: (``server.on('quit', QUIT)``).
QUIT: Any = _Quit()

#: What `QMPTestServer.on` takes for a command: a value returned as the
#: reply, a `CommandError`, `QUIT`, or a function (plain or ``async``) of
#: the arguments dict that returns one of those, or `NO_REPLY`.
Handler = Union[object, Callable[[Dict[str, Any]], Any]]

_encode = json.JSONEncoder(separators=(',', ':')).encode

#: QEMU's limit on one message (its JSON parser's token size limit):
#: a longer line is refused with an error and dropped, as QEMU does.
_MAX_INPUT = 64 << 20


def _line(msg: Mapping[str, Any]) -> bytes:
    """``msg`` as one wire line, CRLF-terminated like QEMU's."""
    return _encode(msg).encode() + b'\r\n'


class QMPTestServer:
    """
    A QMP server for one client at a time, for tests.

    Like QEMU's monitor, it serves a client that connects while another is
    served once that one has gone.

    :param greeting: The greeting to send, or `None` for guest-agent
        behaviour (no greeting, no negotiation).
    """

    def __init__(self, greeting: Optional[Mapping[str, object]]
                 = DEFAULT_GREETING) -> None:
        self.greeting = greeting
        #: Command handlers by command name; see `on`.
        self.handlers: Dict[str, Handler] = {}
        #: Every JSON object received, in order, across connections.
        self.received: List[Dict[str, Any]] = []
        #: Lines received that were not JSON objects (a line over the
        #: 64 MiB limit is dropped, not kept).
        self.garbage: List[bytes] = []
        #: How many 0xFF bytes arrived (the guest agent's resynchronisation
        #: byte: like the agent, the server drops what came before one).
        self.sync_bytes = 0
        #: Whether the current client has negotiated capabilities.
        self.negotiated = False
        #: How many clients have connected so far.
        self.connections = 0
        #: The address `start` listens on.
        self.address: Optional[SocketAddrT] = None

        self._server: Optional[asyncio.AbstractServer] = None
        self._tempdir: Optional[str] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._changed: Optional[asyncio.Condition] = None
        self._inband: Optional[asyncio.Queue[Dict[str, Any]]] = None
        self._replay: Optional[Replay] = None
        # Connections being served or waiting their turn; close() waits
        # for them all to end, which _closing tells them to.
        self._serving = 0
        self._closing = False

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------

    def replay(self, transcript: Union[Transcript, str, os.PathLike[str]],
               *, ordered: bool = False, repeat: bool = False) -> Replay:
        """
        Serve a recorded session (see :doc:`/replay`).

        The server greets with the recorded greeting (none, if the
        transcript has none: the guest agent).  Each command that matches
        a recorded one (same name, same arguments) gets the recorded
        reply, with its own id, then the events that followed it.  A
        command that matches none is answered by a handler added with
        `on`, if there is one, and otherwise with a ``GenericError``
        saying what differs; `Replay.check` then raises
        `~qemu.qmp.replay.ReplayError` describing every such command.

        :param transcript: A `Transcript`, or the path of its file.
        :param ordered: Commands must come in the recorded order.
        :param repeat: A command that comes more often than recorded (a
            poll) gets its last recorded reply again.
        :return: The replay's state: what was played, what mismatched.
        :raise OSError: The file cannot be read.
        :raise TranscriptError: It is not a transcript.
        """
        if not isinstance(transcript, Transcript):
            transcript = Transcript.load(transcript)
        self.greeting = transcript.greeting
        self._replay = Replay(transcript, ordered=ordered, repeat=repeat)
        return self._replay

    def on(self, command: str, handler: Handler) -> None:
        """
        Answer ``command`` with ``handler`` from now on.

        :param command: The command name.
        :param handler: A value, a `CommandError`, or a function of the
            arguments (sync or async) returning the value.
        """
        self.handlers[command] = handler

    async def start(self, address: Optional[SocketAddrT] = None,
                    ssl: Optional[SSLContext] = None) -> SocketAddrT:
        """
        Listen for clients.

        :param address: Where to listen; by default a UNIX socket in a new
            temporary directory.  ``('127.0.0.1', 0)`` picks a free port.
        :param ssl: A server-side SSL context, for TLS.
        :return: The address to connect to (with the real port).
        """
        self._closing = False
        if address is None:
            self._tempdir = tempfile.mkdtemp(prefix='qmp-test-')
            address = os.path.join(self._tempdir, 'qmp.sock')
        if isinstance(address, str):
            self._server = await asyncio.start_unix_server(
                self._serve, address, ssl=ssl, limit=_MAX_INPUT)
        else:
            self._server = await asyncio.start_server(
                self._serve, address[0], address[1], ssl=ssl,
                limit=_MAX_INPUT)
            sockname = self._server.sockets[0].getsockname()
            address = (sockname[0], sockname[1])
        self.address = address
        return address

    async def connect_to(self, address: SocketAddrT,
                         ssl: Optional[SSLContext] = None) -> None:
        """
        Connect to a listening client and serve it (QEMU's client mode).

        Returns once the connection is served (after any client served
        before it has gone); serving goes on in the background, and
        `wait_disconnected` waits for its end.

        :param address: The client's listening address.
        :param ssl: A client-side SSL context, for TLS.
        """
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(
                address, limit=_MAX_INPUT)
        else:
            reader, writer = await asyncio.open_connection(
                address[0], address[1], ssl=ssl, limit=_MAX_INPUT)
        serving = self._spawn(self._serve(reader, writer))
        await self.wait_until(
            lambda: self._writer is writer or serving.done())

    async def socketpair(self) -> socket.socket:
        """
        Serve one end of a new socket pair; return the other end.

        :return: A connected socket to pass to `QMPClient.connect`.
        """
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours,
                                                       limit=_MAX_INPUT)
        self._spawn(self._serve(reader, writer))
        return theirs

    async def close(self) -> None:
        """Stop listening, drop the clients, stop every handler."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.hang_up()
        # Every connection ends by itself, queued ones too: cancelling
        # the tasks asyncio's server made for them makes it log errors.
        await self.wait_until(lambda: self._serving == 0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    async def __aenter__(self) -> 'QMPTestServer':
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """How many clients wait for their turn (see the class doc)."""
        return self._serving - (self._writer is not None)

    # ------------------------------------------------------------------
    # Waiting for the client
    # ------------------------------------------------------------------

    @property
    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """
        Wait until ``predicate()`` is true; it is re-checked on every
        connection, disconnection and message received.

        :param predicate: A function of no arguments.
        """
        async with self._condition:
            await self._condition.wait_for(predicate)

    async def wait_connected(self) -> None:
        """Wait until a client is connected."""
        await self.wait_until(lambda: self._writer is not None)

    async def wait_disconnected(self) -> None:
        """Wait until no client is connected."""
        await self.wait_until(lambda: self._writer is None)

    async def wait_received(self, count: int) -> List[Dict[str, Any]]:
        """
        Wait until at least ``count`` messages were received.

        :return: `received`.
        """
        await self.wait_until(lambda: len(self.received) >= count)
        return self.received

    async def wait_for_command(self, name: str) -> Dict[str, Any]:
        """
        Wait until a command called ``name`` was received.

        :return: The first such command.
        """
        def find() -> Optional[Dict[str, Any]]:
            for msg in self.received:
                if name in (msg.get('execute'), msg.get('exec-oob')):
                    return msg
            return None
        await self.wait_until(lambda: find() is not None)
        found = find()
        assert found is not None
        return found

    # ------------------------------------------------------------------
    # Sending, on purpose or not
    # ------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """
        Send bytes exactly as given.

        :raise ConnectionError: No client is connected.
        """
        writer = self._require_writer()
        writer.write(data)
        await writer.drain()

    async def send_message(self, message: Mapping[str, object]) -> None:
        """Send any JSON object, followed by CRLF like QEMU."""
        await self.send_raw(_line(message))

    async def emit_event(self, name: str,
                         data: Optional[Mapping[str, object]] = None) -> None:
        """Send event ``name`` with ``data`` and the current time."""
        await self.send_raw(self.event_bytes(name, data))

    @staticmethod
    def event_bytes(name: str,
                    data: Optional[Mapping[str, object]] = None) -> bytes:
        """
        Return event ``name`` as wire bytes (to send many in one write).

        :return: The encoded event, CRLF-terminated.
        """
        now = time.time()
        event: Dict[str, object] = {
            'event': name,
            'timestamp': {'seconds': int(now),
                          'microseconds': int(now * 1e6) % 1000000}}
        if data is not None:
            event['data'] = data
        return _line(event)

    async def reply_without_id(self, desc: str = "Invalid JSON") -> None:
        """Send an error without an id, as QEMU does for bad input."""
        await self.send_message(
            {'error': {'class': 'GenericError', 'desc': desc}})

    async def hang_up(self) -> None:
        """Close the client's connection, gracefully."""
        writer = self._writer
        if writer is not None:
            await _close(writer)

    def reset(self) -> None:
        """Abort the client's connection: the client sees ECONNRESET."""
        writer = self._require_writer()
        sock = writer.get_extra_info('socket')
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack('ii', 1, 0))
        writer.transport.abort()

    def half_close(self) -> None:
        """Stop sending (shut down the write side) but keep reading."""
        self._require_writer().write_eof()

    def pause_reading(self) -> None:
        """Stop reading from the client, so its writes back up."""
        self._require_writer().transport.pause_reading()  # type: ignore

    def resume_reading(self) -> None:
        """Read from the client again."""
        self._require_writer().transport.resume_reading()  # type: ignore

    def _require_writer(self) -> asyncio.StreamWriter:
        if self._writer is None:
            raise ConnectionError("no client is connected")
        return self._writer

    # ------------------------------------------------------------------
    # Serving
    # ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self._serving += 1
        try:
            await self._notify()
            # One client at a time, like a QEMU monitor: a client that
            # comes while another is served waits its turn.
            await self.wait_until(
                lambda: self._writer is None or self._closing)
            if self._closing:
                await _close(writer)
            else:
                await self._serve_client(reader, writer)
        finally:
            self._serving -= 1
            await self._notify()

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connections += 1
        self.negotiated = self.greeting is None
        self._inband = asyncio.Queue()
        worker = self._spawn(self._run_inband(self._inband, writer))
        await self._notify()
        try:
            if self.greeting is not None:
                writer.write(_line(self.greeting))
            # A JSON stream, as QEMU reads it: a client may send no
            # newline between messages (the reference library sends none).
            splitter = JsonSplitter(_MAX_INPUT)
            while True:
                data = await reader.read(READ_SIZE)
                texts = splitter.feed(data) if data else [splitter.finish()]
                for text in texts:
                    if text is None:
                        self._send(writer, _error(
                            'GenericError', 'JSON token size limit exceeded'))
                    elif text:
                        await self._on_line(text, writer)
                if not data:
                    break
        except ConnectionError:
            pass
        finally:
            worker.cancel()
            await _close(writer)
            if self._writer is writer:
                self._writer = None
            await self._notify()

    async def _on_line(self, line: bytes,
                       writer: asyncio.StreamWriter) -> None:
        if b'\xff' in line:
            self.sync_bytes += line.count(b'\xff')
            line = line[line.rfind(b'\xff') + 1:]
        if not line.strip(b' \t\r\n'):
            return
        msg, problem = _parse(line)
        if problem is not None:
            self.garbage.append(line)
            self._send(writer, _error('GenericError', problem))
            await self._notify()
            return
        self.received.append(msg)
        await self._notify()
        if 'exec-oob' in msg:
            self._spawn(self._answer(msg, writer))
        else:
            assert self._inband is not None
            self._inband.put_nowait(msg)

    async def _run_inband(self, queue: 'asyncio.Queue[Dict[str, Any]]',
                          writer: asyncio.StreamWriter) -> None:
        while True:
            await self._answer(await queue.get(), writer)

    async def _answer(self, msg: Dict[str, Any],
                      writer: asyncio.StreamWriter) -> None:
        name = msg.get('execute', msg.get('exec-oob'))
        if self._replay is not None and self.negotiated \
                and name != 'qmp_capabilities' and isinstance(name, str) \
                and isinstance(msg.get('arguments', {}), dict):
            if await self._replayed(msg, name, writer):
                return
        reply = await self._reply_to(msg)
        if reply is NO_REPLY:
            return
        if 'id' in msg:
            reply['id'] = msg['id']
        self._send(writer, reply)
        if self._replay is not None and name == 'qmp_capabilities' \
                and 'return' in reply:
            if await self._play(self._replay.opening_events, writer):
                return
        if isinstance(name, str) and self.handlers.get(name) is QUIT \
                and 'return' in reply:
            await self.emit_event('SHUTDOWN', {'guest': False,
                                               'reason': 'host-qmp-quit'})
            await self.hang_up()

    async def _replayed(self, msg: Dict[str, Any], name: str,
                        writer: asyncio.StreamWriter) -> bool:
        """Answer ``msg`` from the transcript; `False` if a handler
        should answer it instead."""
        assert self._replay is not None
        played = self._replay.answer(msg)
        if not isinstance(played, list):
            if name in self.handlers:
                return False
            self._replay.mismatched(played)
            _logger.error("Replay: %s", played)
            reply = _error('GenericError', f"replay: {played}")
            if 'id' in msg:
                reply['id'] = msg['id']
            self._send(writer, reply)
            return True
        closed = await self._play(played, writer)
        if not closed and name == 'quit' \
                and any('return' in item for item in played):
            await self.hang_up()  # (a transcript that does not say so)
        return True

    async def _play(self, messages: List[Dict[str, Any]],
                    writer: asyncio.StreamWriter) -> bool:
        """Send recorded ``messages``; whether one said the server
        closed the connection (it is closed then)."""
        for msg in messages:
            if msg is CLOSED:
                await self.hang_up()
                return True
            self._send(writer, msg)
        return False

    async def _reply_to(self, msg: Dict[str, Any]) -> Any:
        name = msg.get('execute', msg.get('exec-oob'))
        if not isinstance(name, str):
            return _error('GenericError',
                          "QMP input member 'execute' must be a string")
        if not isinstance(msg.get('arguments', {}), dict):
            return _error('GenericError',
                          "QMP input member 'arguments' must be an object")
        if not self.negotiated and name != 'qmp_capabilities':
            return _error('CommandNotFound', "Expecting capabilities "
                          "negotiation with 'qmp_capabilities'")
        handler = self.handlers.get(name)
        if handler is None:
            if name == 'qmp_capabilities' and self.greeting is not None:
                if self.negotiated:
                    return _error('CommandNotFound', "Capabilities "
                                  "negotiation is already complete, "
                                  "command ignored")
                self.negotiated = True
                return {'return': {}}
            return _error('CommandNotFound',
                          f"The command {name} has not been found")
        try:
            value = await self._call(handler, msg.get('arguments', {}))
        except CommandError as err:
            return _error(err.class_, err.desc)
        except Exception as err:  # pylint: disable=broad-except
            # A bug in a test's handler: say so, and keep serving.
            _logger.error("Handler for %s raised %s", name,
                          exception_summary(err), exc_info=True)
            return _error('GenericError',
                          f"test server handler raised {err!r}")
        if value is NO_REPLY:
            return NO_REPLY
        if name == 'qmp_capabilities':
            self.negotiated = True
        return {'return': value}

    @staticmethod
    async def _call(handler: Handler, arguments: Dict[str, Any]) -> Any:
        if isinstance(handler, CommandError):
            raise handler
        if handler is QUIT:
            return {}
        if not callable(handler):
            return handler
        value = handler(arguments)
        if inspect.isawaitable(value):
            value = await value
        return value

    @staticmethod
    def _send(writer: asyncio.StreamWriter, msg: Mapping[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(_line(msg))


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a client's connection, promptly (see `close_writer`)."""
    try:
        await close_writer(writer, CLOSE_GRACE)
    except OSError:
        pass  # the client broke the connection first


def _error(class_: str, desc: str) -> Dict[str, Any]:
    return {'error': {'class': class_, 'desc': desc}}


# QEMU refuses JSON nested deeper than this (MAX_NESTING in its parser).
_QEMU_MAX_DEPTH = 1024


def _parse(line: bytes) -> Tuple[Dict[str, Any], Optional[str]]:
    """
    One line of input as a JSON object, or what QEMU says about it.

    :return: The object and `None`, or ``{}`` and the error description
        QEMU 7.2 sends for such input.
    """
    try:
        msg = json.loads(line)
    except RecursionError:
        # Python's parser gives up near its recursion limit (before
        # 1024 levels on some Pythons): QEMU's words all the same.
        return {}, 'JSON nesting depth limit exceeded'
    except UnicodeDecodeError:
        return {}, 'JSON parse error, invalid UTF-8 sequence'
    except json.JSONDecodeError as err:
        return {}, f'JSON parse error, {err.msg[:1].lower()}{err.msg[1:]}'
    except ValueError as err:   # e.g. an integer of 5,000 digits
        return {}, f'JSON parse error, {err}'
    if not isinstance(msg, dict):
        return {}, 'QMP input must be a JSON object'
    # Counting brackets is C-fast and rarely finds enough to look closer.
    if line.count(b'[') + line.count(b'{') > _QEMU_MAX_DEPTH \
            and nests_deeper_than(msg, _QEMU_MAX_DEPTH):
        return {}, 'JSON nesting depth limit exceeded'
    return msg, None


class ServerThread:
    """
    Run a `QMPTestServer` in an event loop of a thread of its own.

    For blocking clients and tests that have no event loop.  Use it as a
    context manager (it starts the server on entry and stops everything
    on exit), or call `start` and `close`.  The thread is a daemon: a
    forgotten `close` never keeps the interpreter from exiting.

    :param server: The server to run; a new default one if omitted.
    """

    def __init__(self, server: Optional[QMPTestServer] = None) -> None:
        #: The server this thread runs.
        self.server: QMPTestServer = server if server is not None \
            else QMPTestServer()
        #: Where the server listens, once started.
        self.address: Optional[SocketAddrT] = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve_forever, daemon=True,
            name='qmp-test-server')
        self._thread.start()

    def _serve_forever(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever is still scheduled gets to see its cancellation.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(
                asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    def run(self, coro: Coroutine[Any, Any, _T],
            timeout: Optional[float] = 10.0) -> _T:
        """
        Run a coroutine in the server's event loop and return its result.

        For the server's own coroutines, e.g.
        ``thread.run(server.emit_event('STOP'))``.

        :param coro: The coroutine.
        :param timeout: Seconds to wait for it, or `None`.
        :return: What the coroutine returned.
        :raise concurrent.futures.TimeoutError: It took longer.
        """
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def call(self, func: Callable[[], _T],
             timeout: Optional[float] = 10.0) -> _T:
        """
        Call a plain function in the server's thread; return its result.

        For the server's synchronous methods, e.g.
        ``thread.call(server.reset)``.
        """
        async def call_it() -> _T:
            return func()
        return self.run(call_it(), timeout)

    def start(self, address: Optional[SocketAddrT] = None,
              ssl: Optional[SSLContext] = None) -> SocketAddrT:
        """
        Start the server listening (see `QMPTestServer.start`).

        :return: The address to connect to.
        """
        self.address = self.run(self.server.start(address, ssl))
        return self.address

    def close(self) -> None:
        """Close the server, stop the event loop and join the thread."""
        if not self._thread.is_alive():
            return
        try:
            self.run(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> 'ServerThread':
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def demo_server() -> QMPTestServer:
    """
    A test server that plays a small, idle QEMU, for demonstrations.

    It answers ``query-status``, ``stop`` and ``cont`` (which emit ``STOP``
    and ``RESUME``, and change what ``query-status`` says),
    ``query-version`` and ``query-commands``; ``quit`` is refused, so a
    demonstration keeps going.  ``qmp-shell --demo`` uses it when QEMU is
    not installed.

    :return: The server, not started.
    """
    server = QMPTestServer()
    state: Dict[str, object] = {'status': 'running', 'running': True}

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
    server.on('quit', CommandError('GenericError', 'the demo server stays'))
    server.on('query-commands', lambda args: [
        {'name': name} for name in sorted(server.handlers)])
    return server
