"""
QMP client: greeting, negotiation, commands routed by id, events.

What a reply means, and the errors a command ends with, are in
`qemu.qmp.replies`; they are importable from here too.

`QMPClient` connects to (or accepts a connection from) a QMP server such as
QEMU, the QEMU Storage Daemon or the QEMU Guest Agent, and always acts as
the QMP client.  Many commands may be in flight at once, from many tasks;
each reply is routed to its caller by id as it arrives.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import socket
import time
from contextlib import asynccontextmanager
from ssl import SSLContext
from types import MethodType, TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    Mapping,
    Optional,
    Tuple,
    Type,
    Union,
    cast,
)

from . import _sockets
from ._sockets import RoutingReader
from .codec import DEFAULT_LIMIT, SYNC_BYTE, Codec, TruncatedMessageError
from .core import (
    Negotiated,
    Phase,
    Reply,
    ReplyFailed,
    SessionCore,
    SessionEnded,
)
from .error import ProtocolError, QMPError
from .events import EventListener, Events, ListenerError
from . import handshake
from .expect import EventTimeoutError, ExpectedEvent
from .handshake import (
    GreetingError,
    NegotiationError,
    greeting_timeout,
    negotiation_error,
    warn_greeting_overdue,
)
from .message import Message
from .models import Greeting
from .protocol import (
    AsyncProtocol,
    Runstate,
    SocketAddrT,
    StateError,
    _check_call,
    _check_loop,
    require,
)
from .reconnect import ReconnectingProtocol
from .replies import (
    BadReplyError,
    ExecInterruptedError,
    ExecuteError,
    ExecuteTimeoutError,
    ServerParseError,
    check_reply,
    reply_value,
)
from .transcript import CLIENT, SERVER, Recorder
from .util import bottom_half, exception_summary, not_nan, upper_half


__all__ = ['QMPClient', 'session', 'RECONNECTED', 'ExecuteError',
           'ExecInterruptedError',
           'ExecuteTimeoutError', 'GreetingError', 'NegotiationError',
           'ServerParseError', 'BadReplyError', 'TruncatedMessageError']


#: The name of the event every listener that takes all events (or this
#: name) receives when `QMPClient.auto_reconnect` re-established a lost
#: session: events may have been missed in the gap.  Its ``data`` holds
#: ``reason`` (why the session was lost), ``attempts`` and ``gap``
#: (seconds).  QEMU has no event of this name.
RECONNECTED = 'QMP_CLIENT_RECONNECTED'

# What the router in place (`QMPClient._bh_route_received`) returns for
# the reader task to look again at the receiving hooks and the reader.
_STOP_ROUTING = object()

# What a server that never greets (the guest agent) needs, for the hints.
_NO_GREETING = "set the client's await_greeting and negotiate to False"


def _timestamp() -> Dict[str, int]:
    """Now, as QEMU stamps its events."""
    now = time.time()
    return {'seconds': int(now), 'microseconds': int(now % 1 * 1e6)}


class QMPClient(ReconnectingProtocol[Message], Events):
    """
    Implements a QMP client connection.

    `QMPClient` can either connect to a QMP server or listen for one, but
    always acts as the QMP client.

    :param name: Optional nickname for the connection, used to tell
        instances apart in logs.
    :param readbuflen: The longest message accepted from the server, in
        bytes (10 MiB by default).  A longer one ends the session.

    Basic script-style usage, with events watched by a task of their own
    until QEMU quits:

    .. code-block:: python

        import asyncio

        from qemu.qmp import QMPClient


        async def watch_events(qmp: QMPClient) -> None:
            async for event in qmp.session_events():
                print(f"Event: {event['event']}")


        async def main() -> None:
            qmp = QMPClient('my_virtual_machine_name')
            await qmp.connect('qmp.sock')
            watcher = asyncio.create_task(watch_events(qmp))
            res = await qmp.execute('query-status')
            print(res['status'])
            await qmp.execute('quit')
            await watcher


        asyncio.run(main())

    The documentation's "Events" page has more patterns.
    """

    #: Logger object used for debugging messages.
    logger = logging.getLogger(__name__)

    # Read buffer limit; 10 MiB like QEMU's own Python tooling.
    _limit = DEFAULT_LIMIT

    #: A `~qemu.qmp.transcript.Recorder` given every message sent and
    #: received, greeting and negotiation included; `None` (the default)
    #: records nothing.  See :doc:`/replay`.
    recorder: Optional[Recorder] = None

    def __init__(self, name: Optional[str] = None,
                 readbuflen: int = _limit) -> None:
        super().__init__(name, readbuflen)

        #: Whether or not to await a greeting after establishing a
        #: connection.  Defaults to True; QGA servers expect this to be
        #: False.
        self.await_greeting: bool = True

        #: Whether or not to perform capabilities negotiation upon
        #: connection.  Implies `await_greeting`.  Defaults to True; QGA
        #: servers expect this to be False.
        self.negotiate: bool = True

        self._session_timeout: Optional[float] = None

        # The last session's greeting, kept after it ended.
        self._greeting: Optional[Greeting] = None
        # What fixes a wait for a greeting that never comes, in the
        # caller's terms (session() has a setting of its own).
        self._no_greeting_hint = _NO_GREETING

    @property
    def name(self) -> Optional[str]:
        """
        The nickname for this connection, if any.

        Setting it moves logging to a child logger of that name, and the
        built-in listener's log lines name it (``<EventListener of
        session 'vm17' ...>``).
        """
        return self._name

    @name.setter
    def name(self, name: Optional[str]) -> None:
        AsyncProtocol.name.fset(self, name)  # type: ignore[attr-defined]
        # (A subclass may set a name before Events.__init__ made it.)
        events: Optional[EventListener] = getattr(self, 'events', None)
        if events is not None:
            events._session_name = name or None

    @property
    def _core(self) -> SessionCore['asyncio.Future[Message]']:
        """
        The session's rules, with its wire format and the commands that
        wait for replies: part of the connection, made anew by each.
        """
        core: SessionCore[asyncio.Future[Message]] = \
            self._conn.protocol_state
        return core

    def _begin_session(self, address: object) -> None:
        super()._begin_session(address)
        self._greeting = None
        conn = self._conn
        core = conn.protocol_state = SessionCore(
            self.logger, limit=self.readbuflen,
            await_greeting=self.await_greeting, negotiate=self.negotiate,
            framing=conn.lines)
        # A hook that sees the greeting first may have changed it.
        core.compact_greeting = not (
            _hook_replaced(self._cb_inbound, _CB_INBOUND, self)
            or _hook_replaced(self._get_greeting, _GET_GREETING, self))

    async def _reconnected(self, reason: str, attempts: int,
                           gap: float) -> None:
        """Tell every listener that takes it: events may have been lost."""
        marker = Message({
            'event': RECONNECTED,
            'data': {'reason': reason, 'attempts': attempts, 'gap': gap},
            'timestamp': _timestamp()})
        dispatching = self._dispatch_event(marker)
        if dispatching is not None:
            await dispatching

    async def __aenter__(self) -> 'QMPClient':
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException],
                        traceback: Optional[TracebackType]) -> None:
        """
        Leave ``async with QMPClient(...) as qmp:``: end the session.

        The server having closed the connection (after ``quit``, say) is
        the normal end of a session, not an error.  Any other error that
        ended the session is raised, unless the block itself raised: that
        exception goes on, and this one is logged.
        """
        await self._end_session(block_failed=exc is not None)

    async def _end_session(self, block_failed: bool) -> None:
        try:
            await self.disconnect()
        except EOFError as err:
            if isinstance(err, ProtocolError):  # cut off mid-message
                if not block_failed:
                    raise
                self.logger.error("The session had ended with: %s",
                                  exception_summary(err))
        except Exception as err:
            if not block_failed:
                raise
            self.logger.error("The session had ended with: %s",
                              exception_summary(err))

    @property
    def greeting(self) -> Optional[Greeting]:
        """
        The `Greeting` from the QMP server, if any.

        `None` until a greeting arrives; reset at each connection attempt.
        """
        return self._greeting

    # ------------------------------------------------------------------
    # Upper half: session set-up
    # ------------------------------------------------------------------

    @upper_half
    async def _establish_session(self) -> None:
        """
        Await the greeting and negotiate, then start the reader.

        :raise GreetingError: The greeting did not arrive or was not valid.
        :raise NegotiationError: The server refused ``qmp_capabilities``.
        :raise EOFError, OSError: The connection failed meanwhile.
        """
        core = self._core
        if core.phase is Phase.GREETING:
            # (A subclass's _get_greeting may read it by its own means.)
            self._greeting = await self._get_greeting()
            core.greeted(self._greeting)
        if core.phase is Phase.NEGOTIATING:
            await self._negotiate()
        if self._greeting is not None:
            # The same greeting, in the compact form the core keeps.
            self._greeting = core.greeting
        await super()._establish_session()

    @property
    def session_timeout(self) -> Optional[float]:
        """
        Seconds to wait for the greeting and for the negotiation reply,
        each; `None` (the default) waits as long as it takes.  When it
        runs out, `connect()` fails with `ConnectError` wrapping
        `GreetingError` or `NegotiationError`.

        :raise ValueError: When set to NaN: no wait lasts NaN seconds
            (asyncio would time out at once, as if the server were mute).
        """
        return self._session_timeout

    @session_timeout.setter
    def session_timeout(self, timeout: Optional[float]) -> None:
        self._session_timeout = not_nan(timeout)

    @upper_half
    async def _get_greeting(self) -> Greeting:
        """
        Wait for the server's greeting.

        :raise GreetingError: It is not one, or did not come in time.
        """
        self.logger.debug("Awaiting greeting ...")
        timeout = self.session_timeout
        patience = handshake.greeting_patience(timeout)
        overdue = None
        if patience is not None:
            overdue = asyncio.get_running_loop().call_later(
                patience, warn_greeting_overdue, self.logger, patience,
                self._no_greeting_hint)
        try:
            await asyncio.wait_for(self._handshake_step(Greeting), timeout)
        except asyncio.TimeoutError as err:
            raise greeting_timeout(timeout, err,
                                   self._no_greeting_hint) from err
        finally:
            if overdue is not None:
                overdue.cancel()
        greeting = self._core.greeting
        assert greeting is not None
        return greeting

    @upper_half
    async def _negotiate(self) -> None:
        """
        Send ``qmp_capabilities`` and wait for the server to accept it.

        :raise NegotiationError: It refused, or did not answer in time.
        """
        self.logger.debug("Negotiating capabilities ...")
        try:
            await self._send(self._core.negotiation_command())
            await asyncio.wait_for(self._handshake_step(Negotiated),
                                   self.session_timeout)
        except asyncio.TimeoutError as err:
            raise negotiation_error(err, self.session_timeout) from err

    @upper_half
    async def _handshake_step(self, until: type) -> None:
        """
        Read until the session core reports ``until``; events that come
        meanwhile are dispatched.

        :raise GreetingError, NegotiationError: The step failed.
        :raise EOFError, OSError: The connection failed meanwhile.
        """
        core = self._core
        while True:
            msg = await self._recv()
            event = core.route(msg)
            if event is msg:
                dispatching = self._dispatch_event(msg)
                if dispatching is not None:
                    await dispatching
            elif type(event) is until:
                return
            elif type(event) is SessionEnded:
                raise event.reason

    # ------------------------------------------------------------------
    # Upper half: events until the session ends
    # ------------------------------------------------------------------

    @upper_half
    async def session_events(self, listener: Optional[EventListener] = None
                             ) -> AsyncIterator[Message]:
        """
        Iterate over events until the session ends.

        ``async for event in qmp.events`` waits for the next event even
        after the connection is gone (a listener may outlive a session,
        as in the reference library).  This loop ends with the session:
        every event received by then is still yielded, then the session
        is torn down as by `disconnect()`, leaving the client `IDLE`.

        The loop finishes normally when the server hung up (``quit``, or
        QEMU exiting for any other reason: a ``SHUTDOWN`` event before the
        end tells a clean exit from a crash) or when `disconnect()` was
        called, and raises the error that ended the session otherwise.
        Leaving the loop early (``break``), or removing the listener,
        leaves the session as it is.

        .. code-block:: python

            import asyncio

            from qemu.qmp import QMPClient


            async def main() -> None:
                qmp = QMPClient('my-vm')
                await qmp.connect('qmp.sock')
                await qmp.execute('quit')
                async for event in qmp.session_events():
                    print(event['event'])  # SHUTDOWN


            asyncio.run(main())

        :param listener: The registered listener to read; by default the
            built-in `events`.  Started while `CONNECTING`, the loop
            waits for that session.
        :return: An asynchronous iterator of events.
        :raise StateError: The client is `IDLE`.
        :raise EventLoopError: The session belongs to another event loop.
        :raise ListenerError: ``listener`` is not registered.
        :raise Exception: The error that ended the session, as
            `disconnect()` raises it (except `EOFError` for a hang-up).
        """
        _check_loop(self)
        listener = self.events if listener is None else listener
        if listener not in self._listeners:
            raise ListenerError(f"{listener!r} is not registered")
        over = self._session_over
        if self.runstate is Runstate.IDLE or over is None:
            raise StateError(f"{type(self).__name__} is disconnected and "
                             f"idle.", self.runstate, Runstate.RUNNING)
        async for event in listener.iter_until(over):
            yield event
        if not over.done():
            return  # the listener was removed; the session goes on
        await self._end_session(block_failed=False)

    # ------------------------------------------------------------------
    # Upper half: executing commands
    # ------------------------------------------------------------------

    def _hooks_replaced(self) -> bool:
        """
        Whether make_execute_msg() or execute_msg() (the reference
        library's hooks) were replaced: by a subclass, on the class, or on
        this object (as ``mock.patch.object`` does); execute() then goes
        through them.
        """
        return (_hook_replaced(self.execute_msg, _EXECUTE_MSG, self)
                or _hook_replaced(self.make_execute_msg, _MAKE_EXECUTE_MSG,
                                  type(self)))

    @classmethod
    def make_execute_msg(cls, cmd: str,
                         arguments: Optional[Mapping[str, object]] = None,
                         oob: bool = False) -> Message:
        """
        Create an executable message to be sent by `execute_msg` later.

        >>> QMPClient.make_execute_msg('block-job-cancel', {'device': 'j0'})
        Message({'execute': 'block-job-cancel', 'arguments': {'device': 'j0'}})

        :param cmd: QMP command name.
        :param arguments: Arguments (if any).  Must be JSON-serializable.
        :param oob: If `True`, execute "out of band".
        :return: A QMP `Message` that can be executed with `execute_msg()`.
        """
        obj: Dict[str, object] = {'exec-oob' if oob else 'execute': cmd}
        if arguments is not None:
            obj['arguments'] = arguments
        return Message(obj, eager=False)

    @upper_half
    async def execute(self, cmd: str,
                      arguments: Optional[Mapping[str, object]] = None,
                      oob: bool = False, *,
                      timeout: Optional[float] = None) -> Any:
        """
        Execute a QMP command on the server and return its value.

        The value is JSON as `json` decodes it, typed `Any` as `json.loads`
        is, so ``(await qmp.execute('query-status'))['status']`` passes
        ``mypy --strict``.  Give it a type of your own where that helps:
        ``status: Dict[str, Any] = await qmp.execute('query-status')``.

        :param cmd: QMP command name.
        :param arguments: Arguments (if any).  Must be JSON-serializable.
        :param oob: If `True`, execute "out of band".
        :param timeout: Seconds to wait for the reply; `None` waits as
            long as it takes.  The session outlives a timeout: the late
            reply is dropped quietly.
        :return: The command's return value from the server; its type
            depends on the command, most QEMU commands return a `dict`.
        :raise ExecuteError: When the server returns an error response.
        :raise ExecuteTimeoutError: No reply within ``timeout`` seconds
            (an `asyncio.TimeoutError` too).
        :raise ExecInterruptedError: If the connection was disrupted before
            receiving a reply from the server.
        :raise SerializationError: ``arguments`` cannot be encoded as JSON.
        :raise StateError: The client is not connected.
        :raise ValueError: ``timeout`` is NaN.
        """
        if self._hooks_replaced():
            msg = self.make_execute_msg(cmd, arguments, oob=oob)
            execute_msg = self.execute_msg
            if timeout is None and not _takes_timeout(execute_msg):
                # An override written for the reference library, which
                # calls it with the message alone.
                return await execute_msg(msg)
            return await execute_msg(msg, timeout=timeout)
        # What those two do, in this one coroutine and with one message:
        # thousands of commands in flight at once (one per VM) each hold
        # two coroutines and two messages less for the garbage collector.
        # The message is not even kept while waiting (see _exchange).
        _check_call(self, Runstate.RUNNING)
        core = self._core
        reply = await self._exchange(
            *core.prepare_execute(cmd, arguments, oob), timeout)
        try:
            return reply['return']
        except KeyError:
            # An error: the command as it was sent, made again for it.
            sent = core.command_message(cmd, arguments, oob, reply.get('id'))
            return reply_value(reply, sent)

    @upper_half
    @require(Runstate.RUNNING)
    async def execute_msg(self, msg: Message, *,
                          timeout: Optional[float] = None) -> Any:
        """
        Execute a QMP command on the server and return its value.

        The client gives the command an id of its own for routing; ``msg``
        itself is not changed.

        :param msg: The QMP `Message` to execute.
        :param timeout: Seconds to wait for the reply (see `execute`).
        :return: The command's return value from the server.
        :raise ValueError: If the QMP `Message` does not have either the
            'execute' or 'exec-oob' fields set.
        :raise ExecuteError: When the server returns an error response.
        :raise ExecuteTimeoutError: No reply within ``timeout`` seconds.
        :raise ExecInterruptedError: If the connection was disrupted before
            receiving a reply from the server.
        :raise SerializationError: ``msg`` cannot be encoded as JSON.
        """
        exec_id, wire = self._core.prepare(msg, assign_id=True)
        reply = await self._exchange(exec_id, wire, timeout)
        return reply_value(reply, wire)

    def expect(self, event: str, match: Optional[Mapping[str, object]] = None,
               *, timeout: Optional[float] = None) -> ExpectedEvent:
        """
        Expect an event caused by what the ``async with`` block does.

        Listening starts when the block is entered, so the event cannot
        be missed however early QEMU sends it; at the end of the block the
        event is waited for (not if the block raised), and kept in
        ``.event``.  ``await expected.wait()`` inside the block waits
        earlier.  The documentation's "Events" page has examples.

        :param event: The event's name.
        :param match: Members its ``data`` must have, compared member by
            member (nested mappings too): ``{'device': 'j0'}``.
        :param timeout: Seconds the end of the block waits for it.
        :return: An `ExpectedEvent`, to use with ``async with``.
        :raise EventTimeoutError: (leaving the block) It did not come in
            time.
        :raise ExecInterruptedError: (leaving the block) The session ended
            before it came.
        """
        return ExpectedEvent(self, event, match, not_nan(timeout),
                             self._session_over)

    @upper_half
    async def execute_and_wait(
            self, cmd: str,
            arguments: Optional[Mapping[str, object]] = None, *,
            event: str, match: Optional[Mapping[str, object]] = None,
            timeout: Optional[float] = None) -> Tuple[Any, Message]:
        """
        Execute a command and wait for the event it causes, with no race.

        The event is listened for before the command is sent.  An error
        reply raises `ExecuteError` at once, without waiting.  The
        documentation's "Events" page has an example.

        :param cmd: The command's name.
        :param arguments: Its arguments, if any.
        :param event: The name of the event to wait for.
        :param match: Members the event's ``data`` must have (see
            `expect`).
        :param timeout: Seconds for the reply and the event together.
        :return: The command's return value, and the event.
        :raise ExecuteError: The command failed.
        :raise ExecuteTimeoutError: No reply in time.
        :raise EventTimeoutError: The reply came, the event not in time.
        :raise ExecInterruptedError: The session ended first.
        """
        loop = asyncio.get_running_loop()
        timeout = not_nan(timeout)
        deadline = None if timeout is None else loop.time() + timeout
        async with self.expect(event, match) as expected:
            value = await self.execute(cmd, arguments, timeout=timeout)
            remaining = None if deadline is None \
                else max(0.0, deadline - loop.time())
            try:
                received = await expected.wait(remaining)
            except EventTimeoutError:
                assert timeout is not None
                raise EventTimeoutError(expected.description, timeout) \
                    from None
        return value, received

    @upper_half
    @require(Runstate.RUNNING)
    async def _execute(self, msg: Message, assign_id: bool = True) -> Message:
        """
        Send a command and return the server's whole reply, as it came.

        Error replies are returned, not raised.  ``msg`` itself is not
        changed: the id goes into the copy that is sent.

        :param msg: The command to send.
        :param assign_id: Give the command an id of the client's own.
            Without, it keeps its own id, or has none: id-less replies are
            matched to id-less commands in order.
        :return: The reply.
        :raise ValueError: See `SessionCore.prepare`.
        :raise ExecInterruptedError: The session ended before the reply.
        """
        exec_id, wire = self._core.prepare(msg, assign_id)
        return await self._exchange(exec_id, wire)

    @upper_half
    @require(Runstate.RUNNING)
    async def _raw(self, msg: Union[Message, Mapping[str, object], bytes],
                   assign_id: bool = True) -> Message:
        """
        Execute a message given as a mapping or bytes; return the reply.

        Like `_execute`, and the reply must be a valid one.

        :param msg: The command to send.
        :param assign_id: Give the message an id of the client's own.
        :return: The server's reply, as it came (error replies too).
        :raise ValueError: See `SessionCore.prepare`.
        :raise BadReplyError: The reply is neither 'return' nor a valid
            'error'.
        :raise ExecInterruptedError: The session ended before the reply.
        """
        if not isinstance(msg, Message):
            msg = Message(msg)
        exec_id, wire = self._core.prepare(msg, assign_id)
        reply = await self._exchange(exec_id, wire)
        check_reply(reply, wire)
        return reply

    async def _exchange(self, exec_id: object, wire: Message,
                        timeout: Optional[float] = None) -> Message:
        """
        Send ``wire`` and wait for the reply routed to ``exec_id``.

        :raise ExecuteTimeoutError: No reply within ``timeout`` seconds.
        """
        not_nan(timeout)
        core = self._core
        future: asyncio.Future[Message] = \
            asyncio.get_running_loop().create_future()
        key = core.add_pending(exec_id, future)
        try:
            # Alone: no other execution waits, so none can share a write.
            self._submit(wire, alone=len(core) == 1)
            # Not kept while waiting: with a command in flight on
            # thousands of sessions, every object a command holds is one
            # the garbage collector sweeps again and again.
            if timeout is None:
                del wire
                return await future
            command = str(wire.get('execute', wire.get('exec-oob')))
            del wire
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise ExecuteTimeoutError(command, timeout) from None
        finally:
            # Timed out or cancelled: the late reply is dropped quietly.
            core.abandon(key, future)

    @upper_half
    @require(Runstate.RUNNING)
    async def guest_sync(self, *, timeout: float = 10.0) -> None:
        """
        Resynchronise with the guest agent, as libvirt does.

        Call it before the first command of a session with the guest
        agent, and after a command timed out.  It sends the 0xFF byte,
        which makes the agent drop any half-received input (left by an
        earlier client, say), then ``guest-sync-delimited`` with a random
        id; the agent answers after a 0xFF of its own, and everything
        before that is skipped.  Late replies to commands that timed out
        are told apart by their ids and dropped, and the id-less parse
        errors the agent sends for the 0xFF (qemu-ga does) are ignored.
        When this returns, the next reply is the next command's.  The
        documentation's "The guest agent" page has an example.

        :param timeout: Seconds to wait for the agent's answer: a guest
            without a running agent never answers.
        :raise ExecuteTimeoutError: No answer in time.
        :raise ProtocolError: The agent answered with another id.
        """
        token = random.randrange(1 << 31)
        core = self._core
        core.resyncing += 1
        try:
            self._write(SYNC_BYTE)
            answer = await self.execute('guest-sync-delimited',
                                        {'id': token}, timeout=timeout)
        finally:
            core.resyncing -= 1
        if answer != token:
            raise ProtocolError(f"guest-sync-delimited sent {token}, but "
                                f"the agent answered {answer!r}")

    @upper_half
    @require(Runstate.RUNNING)
    def send_fd_scm(self, fd: int) -> None:
        """
        Send a file descriptor to the server via SCM_RIGHTS.

        QEMU keeps it for a later ``getfd`` or ``add-fd`` command.  The
        descriptor is not closed here.  Only possible over a UNIX socket.

        :param fd: The file descriptor to send to QEMU.
        :raise OSError: ``fd`` is not an open descriptor (``EBADF``);
            nothing was sent.
        :raise QMPError: The connection is not a UNIX socket, or uses TLS,
            or has unsent bytes buffered (so the descriptor's carrier byte
            would land inside another message).
        """
        assert self._writer is not None
        transport = self._writer.transport
        sock = transport.get_extra_info('socket')
        if sock is None or sock.family != socket.AF_UNIX:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        if transport.get_extra_info('sslcontext') is not None:
            raise QMPError("Cannot send file descriptors over TLS.")
        if transport.get_write_buffer_size():
            raise QMPError("Cannot send a file descriptor while outgoing "
                           "data is still buffered; try again once the "
                           "server has read it.")
        # The transport's socket wrapper hides sendmsg(), so a socket
        # object of our own borrows its descriptor.  Not a dup(): a new
        # descriptor could take the number of a stale ``fd`` and be sent
        # in its place, handing QEMU our own connection.
        borrowed = socket.socket(fileno=sock.fileno())
        try:
            socket.send_fds(borrowed, [b' '], [fd])
        finally:
            borrowed.detach()  # the transport still owns the descriptor

    # ------------------------------------------------------------------
    # Bottom half
    # ------------------------------------------------------------------

    async def _do_recv(self) -> Message:
        """
        Read one message from the server, through the session core.

        A reply over ``readbuflen`` whose id could be read fails only its
        own command, and reading goes on.

        :raise EOFError: The server hung up.
        :raise MessageTooLongError: A line is longer than ``readbuflen``
            and is not such a reply.
        :raise DeserializationError: The line is not UTF-8 JSON.
        :raise UnexpectedTypeError: The line is JSON, but not an object.
        :raise TruncatedMessageError: The server hung up mid-message.
        :raise OSError: Reading the socket failed.
        """
        msg = await self._bh_receive(route=False)
        assert msg is not None
        return msg

    @bottom_half
    def _bh_reader(self) -> Coroutine[Any, Any, None]:
        return self._bh_loop_forever(self._bh_route_forever, 'Reader')

    def _receiving_hooks_replaced(self) -> bool:
        """
        Whether `_do_recv`, `_on_message` or `_bh_recv_message` were
        replaced: by a subclass, on the class, or on this object.  The
        reader then calls them for every message, as the reference
        library's does.
        """
        return (_hook_replaced(self._do_recv, _DO_RECV, self)
                or _hook_replaced(self._on_message, _ON_MESSAGE, self)
                or _hook_replaced(self._bh_recv_message, _BH_RECV_MESSAGE,
                                  self))

    def _receiving_hooks_patched_on_class(self) -> bool:
        """
        Whether a receiving hook was patched onto the client's class
        (``mock.patch.object(QMPClient, '_on_message', ...)``), checked
        after every read of a session that started without one.

        Only the class: the reader would have to build a bound method per
        hook and per read to see one set on this client (about 2% of a
        command's instructions); such a hook is called from the next
        session on.
        """
        cls = type(self)
        return (cls._do_recv is not _DO_RECV
                or cls._on_message is not _ON_MESSAGE
                or cls._bh_recv_message is not _BH_RECV_MESSAGE)

    @bottom_half
    async def _bh_route_forever(self) -> None:
        """
        `_do_recv` and `_on_message` for every message, in one coroutine,
        until the receiving hooks are replaced; then one message through
        them (`AsyncProtocol._bh_recv_message`) per call.

        A coroutine per message waits as long as the session is idle: with
        thousands of sessions, the garbage collector then sees new
        long-lived objects for every message, and full collections come
        often and take long.  One coroutine for all messages makes none.
        """
        if self._receiving_hooks_replaced():
            await self._bh_recv_message()
        else:
            await self._bh_receive(route=True)

    @bottom_half
    async def _bh_receive(self, route: bool) -> Optional[Message]:
        """
        Read until a whole message is in; return it, or with ``route``
        pass it through `_cb_inbound` and route it, and go on until a read
        finds the receiving hooks replaced (`None`: the caller then calls
        them for the messages that read brought, and the next ones).

        Routing, once the buffers are empty, is done as data arrives
        (`_bh_route_in_place`), without waking this task.

        (No local variable holds a message, data or a bound method while
        waiting: an idle session keeps nothing alive it does not need.)
        """
        conn = self._conn
        while True:
            msg = self._bh_next_message()
            if msg is None:
                # (Looked up on every read: a stream reader set as
                # ``_reader`` mid-session is read from next.)
                reader = conn.reader
                assert reader is not None
                if route and type(reader) is RoutingReader \
                        and reader.can_route():
                    if await self._bh_route_in_place(reader):
                        return None
                    continue
                try:
                    self._bh_received(await reader.read(_sockets.READ_SIZE))
                except OSError as err:
                    raise self._bh_read_failed(err) from None
                if route and self._receiving_hooks_patched_on_class():
                    return None
            elif not route:
                return msg
            else:
                dispatching = self._bh_route(self._cb_inbound(msg))
                msg = None
                if dispatching is not None:
                    await dispatching
                    dispatching = None
                    # (Other code ran meanwhile; the messages of this read
                    # not yet routed are left to a hook patched in.)
                    if self._receiving_hooks_patched_on_class():
                        return None

    @bottom_half
    async def _bh_route_in_place(self, reader: RoutingReader) -> bool:
        """
        Route what ``reader`` receives as it arrives, in the event loop's
        callback, until something needs this task: an event delivery that
        waits (a listener's own ``put()``), the end of the stream, a
        failure, a receiving hook patched onto the class, or another
        reader set as ``_reader``.

        The reader task then sleeps through a whole idle period and every
        message in one wait: no wakeup, read coroutine or future per
        message.

        :return: Whether the receiving hooks were patched onto the class
            (the caller then calls them for the messages still in).
        :raise: What routing raised.
        """
        routed = reader.route_to(self._bh_route_received)
        try:
            blocked = await routed
        except asyncio.CancelledError:
            # Routing ended just before this task was cancelled.
            # (An event delivery it handed over goes with the session.)
            if routed.done() and not routed.cancelled():
                error = routed.exception()
                if error is not None:
                    # Logged as the end of the session: disconnect()
                    # raises it, as if this task had.
                    self._bh_failed(error, 'Reader')
            raise
        finally:
            reader.stop_routing()
        del routed
        if blocked is not _STOP_ROUTING and blocked is not None:
            # Wait here, as delivery in this task does; what arrives
            # meanwhile is buffered, and routed once it is done.
            await cast(Awaitable[None], blocked)
        return self._receiving_hooks_patched_on_class()

    def _bh_route_received(self, data: bytes) -> object:
        """
        `RoutingReader`'s router: take ``data`` and route every message it
        completes.

        :return: `None` to go on; `_STOP_ROUTING` for the reader task to
            look again at the hooks and the reader; or an event delivery
            that must wait, the messages after it left in the core.
        """
        self._bh_received(data)
        conn = self._conn
        reader = conn.reader
        if self._receiving_hooks_patched_on_class() \
                or type(reader) is not RoutingReader \
                or reader.router is None:
            return _STOP_ROUTING
        while True:
            msg = self._bh_next_message()
            if msg is None:
                return None
            dispatching = self._bh_route(self._cb_inbound(msg))
            if dispatching is not None:
                return dispatching

    def _bh_next_message(self) -> Optional[Message]:
        """
        The next whole message received, or `None` if more data is needed.

        Fails the commands whose replies could not be read.

        :raise: Why the session ended, when it has.
        """
        conn = self._conn
        core = conn.protocol_state
        while True:
            item = core.next_message()
            if type(item) is Message:
                if conn.large_reads:  # the large message is in
                    self._set_large_reads(False)
                return item
            if item is None:
                return None
            if type(item) is ReplyFailed:
                future = item.waiter
                if not future.done():
                    future.set_exception(item.error)
            else:
                assert type(item) is SessionEnded
                raise item.reason

    def _bh_received(self, data: bytes) -> None:
        """Hand ``data`` read from the server to the session core."""
        conn = self._conn
        conn.protocol_state.receive_data(data)
        if len(data) >= _sockets.RECV_SIZE and not conn.large_reads:
            self._set_large_reads(True)

    def _bh_read_failed(self, err: OSError) -> BaseException:
        """What ends the session when reading failed with ``err``."""
        ended: SessionEnded = self._conn.protocol_state.connection_lost(err)
        return ended.reason

    def _set_large_reads(self, large: bool) -> None:
        """Read in asyncio's large pieces while a large message streams
        in (a full read says one does): it comes in fewer wakeups of the
        reader.  Small pieces otherwise (see `_sockets.RECV_SIZE`)."""
        conn = self._conn
        conn.large_reads = large
        assert conn.writer is not None
        _sockets.set_recv_size(conn.writer, _sockets.LARGE_RECV_SIZE if large
                               else _sockets.RECV_SIZE)

    def _do_send(self, msg: Message) -> None:
        self._write(Codec.encode(msg))

    @bottom_half
    async def _on_message(self, msg: Message) -> None:
        """
        Route one message: events to listeners, replies to their callers.

        :raise ServerParseError: An error reply without an id arrived and
            no id-less execution waits for one.
        """
        dispatching = self._bh_route(msg)
        if dispatching is not None:
            await dispatching

    def _bh_route(self, msg: Message) -> Optional[Awaitable[None]]:
        """
        `_on_message`'s work, up to waiting: an event's delivery, when a
        listener's queue is full, is returned to be awaited.
        """
        event = self._conn.protocol_state.route(msg)
        if event is msg:
            return self._dispatch_event(msg)
        if type(event) is Reply:
            future = event.waiter
            # Done already: cancelled, and its task has not run since.
            # The reply is that execution's own, and dropped.
            if not future.done():
                future.set_result(event.msg)
        elif type(event) is SessionEnded:
            raise event.reason
        return None

    # What AsyncProtocol's hooks do (log), and record: on every message,
    # so without a call to super() and the object it makes.

    def _cb_inbound(self, msg: Message) -> Message:
        recorder = self.recorder
        if recorder is not None:
            recorder.record(SERVER, msg)
        self.logger.debug("<-- %s", msg)
        return msg

    def _cb_outbound(self, msg: Message) -> Message:
        recorder = self.recorder
        if recorder is not None:
            recorder.record(CLIENT, msg)
        self.logger.debug("--> %s", msg)
        return msg

    def _schedule_disconnect(self) -> None:
        # Nothing more is routed once the session is ending: what arrives
        # before the reader task is cancelled stays unread.
        reader = self._conn.reader
        if type(reader) is RoutingReader:
            reader.hold()
        super()._schedule_disconnect()

    def _bh_logged_already(self, err: BaseException) -> bool:
        # The session core logged why the session ended.
        core = self._conn.protocol_state
        return core is not None and err is core.end_reason

    @bottom_half
    async def _bh_disconnect(self) -> None:
        conn = self._conn
        recorder = self.recorder
        if recorder is not None and conn.errors \
                and type(conn.errors[0]) is EOFError:
            try:
                recorder.closed(SERVER)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as err:  # pylint: disable=broad-except
                # The session ends all the same; disconnect() raises how
                # it ended, and this is told here.
                self.logger.error("The recorder's closed() failed: %s",
                                  exception_summary(err))
        core = conn.protocol_state
        if core is not None:  # (None: disconnect() while IDLE)
            cause = conn.errors[0] if conn.errors else None
            for future in core.take_waiters():
                if not future.done():
                    future.set_exception(core.interrupted(
                        cause, "; disconnect() reports why"))
        await super()._bh_disconnect()


def _hook_replaced(bound: Any, own: object, owner: object) -> bool:
    """
    Whether ``bound``, a hook looked up on a client, is anything but
    QMPClient's own function ``own`` bound to ``owner`` (the client, or
    its class for a classmethod): a subclass's, one patched onto the class
    or set on the client, or a wrapper around it (tracing tools' wrappers
    answer for the wrapped method's ``__func__``: only a plain bound
    method is taken at its word).

    (Looked up, not read from the client's ``__dict__``: on Python 3.11
    and 3.12, reading ``__dict__`` moves the attributes out of the object
    into a dict for good, and every attribute lookup on it slows down.)
    """
    return (type(bound) is not MethodType or bound.__func__ is not own
            or bound.__self__ is not owner)


def _takes_timeout(execute_msg: Callable[..., object]) -> bool:
    """
    Whether an ``execute_msg`` override takes ``timeout=``: read once per
    function (reading a signature costs about 10 us, a command 70).
    """
    function = getattr(execute_msg, '__func__', execute_msg)
    try:
        return _function_takes_timeout(function)
    except TypeError:  # unhashable, so not kept: read it each time
        return _function_takes_timeout.__wrapped__(function)


@functools.lru_cache(maxsize=64)
def _function_takes_timeout(function: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: try it
        return True
    return any(parameter.name == 'timeout'
               or parameter.kind is parameter.VAR_KEYWORD
               for parameter in parameters)


_EXECUTE_MSG = QMPClient.execute_msg
_MAKE_EXECUTE_MSG = getattr(QMPClient.make_execute_msg, '__func__')
_DO_RECV = QMPClient._do_recv
_CB_INBOUND = QMPClient._cb_inbound
_GET_GREETING = QMPClient._get_greeting
_ON_MESSAGE = QMPClient._on_message
_BH_RECV_MESSAGE = QMPClient._bh_recv_message


@asynccontextmanager
async def session(address: Union[SocketAddrT, socket.socket], *,
                  name: Optional[str] = None,
                  ssl: Optional[SSLContext] = None,
                  negotiate: bool = True,
                  retry: Optional[float] = None,
                  session_timeout: Optional[float] = None,
                  ) -> AsyncIterator[QMPClient]:
    """
    Connect, yield the connected client, and always disconnect.

    .. code-block:: python

        import asyncio

        from qemu.qmp import session


        async def main() -> None:
            async with session('qmp.sock', name='my-vm') as qmp:
                print(await qmp.execute('query-status'))


        asyncio.run(main())

    Leaving the block disconnects, as ``async with QMPClient()`` does:
    the server having closed the connection is no error.

    :param address: A UNIX socket path, a TCP ``(host, port)``, or a
        connected `socket.socket`.
    :param name: The client's name, for its logs.
    :param ssl: SSL context to use, if any.
    :param negotiate: `False` for the guest agent: no greeting, no
        negotiation.
    :param retry: Seconds to keep trying a socket that is missing or
        refuses, for a server still starting (see `QMPClient.connect`).
    :param session_timeout: Seconds to wait for the greeting and the
        negotiation, each (`QMPClient.session_timeout`).
    :return: An async context manager that gives the connected
        `QMPClient`.
    :raise ConnectError: The connection or the session could not be
        established.
    """
    qmp = QMPClient(name)
    qmp.await_greeting = qmp.negotiate = negotiate
    qmp._no_greeting_hint = "pass negotiate=False to session()"
    qmp.session_timeout = session_timeout
    await qmp.connect(address, ssl, retry=retry)
    async with qmp:
        yield qmp
