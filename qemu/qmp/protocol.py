"""
Generic asynchronous message protocol: the runstate machine and the tasks.

`AsyncProtocol` runs one session at a time over a byte stream.  Its caller
facing half (the *upper half*) connects, listens and disconnects; its *bottom
half* is a reader task, a flush of the outgoing messages that the event
loop calls (with a task only while the peer is slow to read), and a
disconnect task that tears a session down.  A subclass says what a message
is by implementing `_do_recv` and `_do_send`, and reacts to messages in
`_on_message`.

Every session walks the same states:

.. code-block:: text

    IDLE -> CONNECTING -> RUNNING -> DISCONNECTING -> IDLE
                 \\__________________________/

A failure anywhere in the bottom half schedules a disconnect; the session
stays in DISCONNECTING until the caller's `disconnect()` reports the first
error and returns the object to IDLE, ready to connect again.
"""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop
import inspect
import logging
import socket
from contextlib import asynccontextmanager
from enum import Enum
from functools import wraps
from ssl import SSLContext
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    FrozenSet,
    Generic,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)
from weakref import WeakKeyDictionary

from . import _sockets
from ._sockets import SocketAddrT as _SocketAddrT
from .error import QMPError
from ._connection import Connection, Outbox
from .util import (
    Backoff,
    bottom_half,
    exception_summary,
    plain_error,
    upper_half,
)


__all__ = ['Runstate', 'ConnectError', 'StateError', 'EventLoopError',
           'require', 'AsyncProtocol', 'SocketAddrT']

#: An address to connect to or listen at: a UNIX socket path, or a
#: ``(host, port)`` tuple for TCP.
SocketAddrT = _SocketAddrT

T = TypeVar('T')
F = TypeVar('F', bound=Callable[..., Any])


class Runstate(Enum):
    """Protocol session runstate."""

    #: Fully quiesced and disconnected.
    IDLE = 0
    #: In the process of connecting or establishing a session.
    CONNECTING = 1
    #: Fully connected and active session.
    RUNNING = 2
    #: In the process of disconnecting.
    #: Runstate may be returned to `IDLE` by calling `disconnect()`.
    DISCONNECTING = 3


# Every legal change of state.  _set_state() refuses anything else, so a
# wrong transition is caught where it happens, not three steps later.
# (IDLE -> DISCONNECTING: disconnect() when idle still goes through the
# motions, as the reference library's does.)
_NEXT_STATES: Dict[Runstate, FrozenSet[Runstate]] = {
    Runstate.IDLE: frozenset({Runstate.CONNECTING, Runstate.DISCONNECTING}),
    Runstate.CONNECTING: frozenset({Runstate.RUNNING,
                                    Runstate.DISCONNECTING}),
    Runstate.RUNNING: frozenset({Runstate.DISCONNECTING}),
    Runstate.DISCONNECTING: frozenset({Runstate.IDLE}),
}


class ConnectError(QMPError):
    """
    Raised when the initial connection process has failed.

    It always wraps a root cause, available as `exc`, and names the
    address it was about when it knows it.  For example, when connecting
    to a socket that does not exist:

    .. code-block:: python

        import asyncio

        from qemu.qmp import ConnectError, QMPClient


        async def main() -> None:
            try:
                await QMPClient().connect('not_found.sock')
            except ConnectError as err:
                print(err)
                # Failed to establish connection (not_found.sock):
                #   [Errno 2] No such file or directory


        asyncio.run(main())

    A UNIX socket path that does not exist but reads like ``host:port``
    gets the TCP address it most likely meant, in the message.

    :param error_message: Human-readable string describing the error.
    :param exc: The root-cause exception.
    :param address: The address connected to or listened on, if known.
    :param note: Said last, in parentheses (how long it was tried, say).
    """

    def __init__(self, error_message: str, exc: Exception,
                 address: object = None, *, note: str = '') -> None:
        super().__init__(error_message, exc)
        #: Human-readable error string
        self.error_message: str = error_message
        #: Wrapped root cause exception
        self.exc: Exception = exc
        #: The address connected to or listened on, or `None`.
        self.address: object = address
        self.note = note

    def __str__(self) -> str:
        where = '' if self.address is None \
            else f" ({_sockets.describe(self.address)})"
        cause = exception_summary(self.exc) \
            if not str(self.exc) else str(self.exc)
        text = f"{self.error_message}{where}: {cause}"
        if self.note:
            text += f" ({self.note})"
        meant = _sockets.tcp_lookalike(self.address)
        if meant is not None and isinstance(self.exc, FileNotFoundError):
            text += f"; for TCP, pass the address as a tuple: {meant!r}"
        return text


class StateError(QMPError):
    """
    An API command (connect, execute, etc) was issued at an inappropriate time.

    For example, `connect()` on a client that is already connected.

    :param error_message: Human-readable string describing the state error.
    :param state: The actual `Runstate` seen at the time of the call.
    :param required: The `Runstate` required to process this command.
    """

    def __init__(self, error_message: str,
                 state: Runstate, required: Runstate) -> None:
        super().__init__(error_message, state, required)
        self.error_message = error_message
        self.state = state
        self.required = required

    def __str__(self) -> str:
        return self.error_message


class EventLoopError(QMPError):
    """
    The session belongs to an event loop other than the running one.

    A session lives in the event loop that connected it: its tasks,
    futures and stream are that loop's.  Typically a script connected in
    one ``asyncio.run()`` and calls again in another: the first loop has
    ended, and the session with it.  `AsyncProtocol.disconnect`, called
    in the new loop, brings the client back to `IDLE`, ready to connect
    again.  A loop that still runs (in another thread) keeps its session:
    call the client from that loop, e.g. with
    `asyncio.run_coroutine_threadsafe`.

    :param error_message: Human-readable string describing the error.
    """

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return self.error_message


def _check_loop(proto: 'AsyncProtocol[Any]') -> None:
    """
    Check that the caller runs in the event loop of ``proto``'s session.

    :raise EventLoopError: It does not; the message says what to do.
    """
    session_loop = proto._session_loop
    if session_loop is None or session_loop is asyncio.get_running_loop():
        return
    name = type(proto).__name__
    if session_loop.is_closed():
        raise EventLoopError(
            f"{name}'s session belonged to an event loop that has ended "
            f"(each asyncio.run() has a loop of its own): call "
            f"disconnect() to return to IDLE, then connect() again")
    if not session_loop.is_running():
        raise EventLoopError(
            f"{name}'s session belongs to another event loop, which is "
            f"not running: run the call in that loop "
            f"(loop.run_until_complete())")
    raise EventLoopError(
        f"{name}'s session belongs to another event loop: call it from "
        f"that loop (from another thread, with "
        f"asyncio.run_coroutine_threadsafe())")


# What a call in the wrong state is told, by the actual state; the
# reference library's wording, which its users match on.
_STATE_ERRORS = {
    Runstate.IDLE: "{name} is disconnected and idle.",
    Runstate.CONNECTING: "{name} is currently connecting.",
    Runstate.RUNNING: "{name} is already connected and running.",
    Runstate.DISCONNECTING: ("{name} is disconnecting. "
                             "Call disconnect() to return to IDLE state."),
}


def _check_state(proto: 'AsyncProtocol[Any]', required: Runstate) -> None:
    state = proto.runstate
    if state is not required:
        emsg = _STATE_ERRORS[state].format(name=type(proto).__name__)
        raise StateError(emsg, state, required)


def _check_call(proto: 'AsyncProtocol[Any]', required_state: Runstate) -> None:
    """
    What `require` checks, for a method on a hot path that checks itself.

    :raise StateError: ``proto`` is not in ``required_state``.
    :raise EventLoopError: The session belongs to another event loop.
    """
    if proto._runstate is not required_state \
            or proto._session_loop is not get_running_loop():
        _check_loop(proto)
        _check_state(proto, required_state)


def require(required_state: Runstate) -> Callable[[F], F]:
    """
    Decorator: allow a method only in a certain `Runstate`.

    A coroutine function stays a coroutine function, and checks the
    runstate when it is awaited (not when the coroutine is created), so a
    call prepared earlier sees the state it actually runs in; it also
    checks that it runs in the session's event loop.

    :param required_state: The `Runstate` required to invoke this method.
    :raise StateError: When the required `Runstate` is not met.
    :raise EventLoopError: The session belongs to another event loop.
    """
    def _decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            @wraps(func)
            async def _async_wrapper(proto: 'AsyncProtocol[Any]',
                                     *args: Any, **kwargs: Any) -> Any:
                _check_call(proto, required_state)
                return await func(proto, *args, **kwargs)
            return cast(F, _async_wrapper)

        @wraps(func)
        def _wrapper(proto: 'AsyncProtocol[Any]',
                     *args: Any, **kwargs: Any) -> Any:
            _check_state(proto, required_state)
            return func(proto, *args, **kwargs)
        return cast(F, _wrapper)
    return _decorator


# connect(retry=): the first pause between attempts, and the longest.
_RETRY_FIRST = 0.01
_RETRY_MAX = 0.5


def _aborted() -> ConnectionAbortedError:
    return ConnectionAbortedError(
        "disconnect() was called while connecting")


#: Seconds `AsyncProtocol.disconnect` gives the peer to finish closing the
#: connection (a TLS peer answers close_notify) before aborting it.
CLOSE_GRACE = 1.0

# How many runstate changes are remembered for runstate_changed(): enough
# for a task to fall a few whole sessions behind without missing any.
_RUNSTATE_HISTORY = 32


class AsyncProtocol(Generic[T]):
    """
    AsyncProtocol implements a generic async message-based protocol.

    Messages flow both ways at any time, uncorrelated.  Subclasses provide:

    - `_do_recv` and `_do_send`: read one message, write one message;
    - `_on_message`: what to do with each message received;
    - `_establish_session` (optional): handshakes before the session runs;
      call ``super()._establish_session()`` last, it starts the tasks;
    - `_cb_inbound` and `_cb_outbound` (optional): filters that see every
      message, for logging or rewriting.

    :param name:
        Name used for logging messages, if any.  A connection logs to its
        class's `logger` ('qemu.qmp.protocol' here, 'qemu.qmp.qmp_client'
        for `QMPClient`); given a name, it logs to a child of that logger
        instead ('qemu.qmp.qmp_client.${name}').
    :param readbuflen:
        The longest message accepted from the peer, in bytes.  A longer
        one ends the session with `MessageTooLongError`.
    """

    #: Logger object for debugging messages from this connection.
    logger = logging.getLogger(__name__)

    # Default maximum length of one received line, in bytes.
    _limit = 64 * 1024

    def __init__(self, name: Optional[str] = None,
                 readbuflen: int = _limit) -> None:
        super().__init__()  # a mix-in (QMPClient's Events) comes next
        self._name: Optional[str] = None
        self.name = name
        #: The longest message accepted from the peer, in bytes; read
        #: when a session starts.
        self.readbuflen = readbuflen

        self._runstate = Runstate.IDLE
        # Every change, numbered, for runstate_changed(): the newest
        # ones, each task's position in them, and who waits for the next.
        self._runstate_count = 0
        # (A list and a dictionary made when first needed: thousands of
        # sessions in one process each hold about a kilobyte less.)
        self._runstate_history: List[Tuple[int, Runstate]] = []
        self._runstate_seen: Optional[WeakKeyDictionary[
            'asyncio.Task[Any]', int]] = None
        self._runstate_waiters: List[asyncio.Future[None]] = []

        # Everything of the current session, made anew by each
        # connection attempt (see _connection.Connection).
        self._conn: Connection[T] = self._blank_connection()
        # The event loop the session runs in, from the first connection
        # attempt until it is over for good (past any reconnection): its
        # tasks and futures are that loop's, and die with it.
        self._session_loop: Optional[asyncio.AbstractEventLoop] = None
        # Resolved when the session starts to end (enters DISCONNECTING),
        # for whoever reads until then (QMPClient.session_events); a
        # reconnection goes on with the same one.
        self._session_over: Optional[asyncio.Future[None]] = None

    # The parts of a session the reference library's subclasses and tests
    # use by these names: views of the current connection.

    @property
    def _reader(self) -> Optional[asyncio.StreamReader]:
        return self._conn.reader

    @_reader.setter
    def _reader(self, reader: Optional[asyncio.StreamReader]) -> None:
        self._conn.reader = reader

    @property
    def _writer(self) -> Optional[asyncio.StreamWriter]:
        return self._conn.writer

    @_writer.setter
    def _writer(self, writer: Optional[asyncio.StreamWriter]) -> None:
        self._conn.writer = writer

    @property
    def _outgoing(self) -> Outbox[T]:
        return self._conn.outgoing

    @property
    def _accepted(self) -> Optional[asyncio.Event]:
        return self._conn.accepted

    @_accepted.setter
    def _accepted(self, accepted: Optional[asyncio.Event]) -> None:
        self._conn.accepted = accepted

    @property
    def _bh_errors(self) -> List[BaseException]:
        """Errors that ended the bottom half, first one first."""
        return self._conn.errors

    @property
    def _dc_task(self) -> Optional['asyncio.Future[None]']:
        """The disconnect task, once one was scheduled."""
        return self._conn.dc_task

    def __repr__(self) -> str:
        name = f" name={self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{name} runstate={self.runstate.name}>"

    # ------------------------------------------------------------------
    # Upper half: public interface
    # ------------------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        """
        The nickname for this connection, if any.

        Setting it moves logging to a child logger of that name.
        """
        return self._name

    @name.setter
    def name(self, name: Optional[str]) -> None:
        self._name = name
        base = type(self).logger
        self.logger = base.getChild(name) if name else base

    @property
    def runstate(self) -> Runstate:
        """The current `Runstate` of the connection."""
        return self._runstate

    @upper_half
    async def runstate_changed(self) -> Runstate:
        """
        Wait for the `runstate` to change, then return the new one.

        No change is ever lost: each task sees every change, in order.  A
        task's first call returns the next change from then on; each later
        call returns the change after the one its previous call returned,
        at once if that change already happened.  So a watcher like this
        prints ``CONNECTING``, ``DISCONNECTING``, ``IDLE`` for a connection
        that fails at once:

        .. code-block:: python

            import asyncio

            from qemu.qmp import ConnectError, QMPClient, Runstate


            async def watch(qmp: QMPClient) -> None:
                while True:
                    state = await qmp.runstate_changed()
                    print(state.name)
                    if state is Runstate.IDLE:
                        break


            async def main() -> None:
                qmp = QMPClient()
                watcher = asyncio.create_task(watch(qmp))
                try:
                    await qmp.connect('not_found.sock')
                except ConnectError:
                    pass
                await watcher


            asyncio.run(main())

        The newest 32 changes are kept; a task further behind than that
        skips to the oldest one kept.

        :return: The new runstate.
        :raise EventLoopError: The session belongs to another event loop.
        """
        _check_loop(self)
        task = asyncio.current_task()
        seen_by_task = self._runstate_seen
        if seen_by_task is None:
            seen_by_task = self._runstate_seen = WeakKeyDictionary()
        seen = seen_by_task.get(task, self._runstate_count) \
            if task is not None else self._runstate_count
        while seen >= self._runstate_count:
            waiter = asyncio.get_running_loop().create_future()
            self._runstate_waiters.append(waiter)
            await waiter
        history = self._runstate_history
        # history[0] is change number history[0][0]; the next one after
        # `seen`, or the oldest kept.
        number, state = history[max(0, seen + 1 - history[0][0])]
        if task is not None:
            seen_by_task[task] = number
        return state

    @upper_half
    @require(Runstate.IDLE)
    async def start_server_and_accept(
            self, address: SocketAddrT,
            ssl: Optional[SSLContext] = None) -> None:
        """
        Listen on ``address``, accept one peer and start a session.

        Equivalent to `start_server()` followed by `accept()`.  If this
        call fails, `runstate` is guaranteed to be set back to `IDLE`.

        :param address: Address to listen on; UNIX socket path or TCP
            ``(host, port)``.
        :param ssl: SSL context to use, if any.
        :raise StateError: When the `Runstate` is not `IDLE`.
        :raise ConnectError: When a connection or session cannot be
            established; it wraps the root cause.
        """
        await self.start_server(address, ssl)
        await self.accept()

    @upper_half
    @require(Runstate.IDLE)
    async def start_server(self, address: SocketAddrT,
                           ssl: Optional[SSLContext] = None) -> None:
        """
        Start listening for a peer, without waiting for one.

        Returns as soon as the socket listens; call `accept()` to wait for
        the peer and start the session.  A UNIX socket is created with
        owner-only permissions.

        :param address: Address to listen on; UNIX socket path or TCP
            ``(host, port)``.
        :param ssl: SSL context to use, if any.
        :raise StateError: When the `Runstate` is not `IDLE`.
        :raise ConnectError: When the server could not start listening on
            this address; it wraps the root cause, usually an `OSError`.
        """
        self._begin_session(address)
        async with self._session_guard("Failed to establish connection"):
            await self._do_start_server(address, ssl)

    @upper_half
    @require(Runstate.CONNECTING)
    async def accept(self) -> None:
        """
        Accept the peer of an earlier `start_server()` and start a session.

        If this call fails, `runstate` is guaranteed to be set back to
        `IDLE`.

        :raise StateError: When the `Runstate` is not `CONNECTING`.
        :raise QMPError: When `start_server()` was not called first.
        :raise ConnectError: When a connection or session cannot be
            established; it wraps the root cause (an `OSError`, `EOFError`
            or, for a protocol-level failure, a `QMPError`).
        """
        if self._accepted is None:
            raise QMPError("Cannot call accept() before start_server().")
        async with self._session_guard("Failed to establish connection"):
            await self._do_accept()
        async with self._session_guard("Failed to establish session"):
            await self._establish_session()

    @upper_half
    @require(Runstate.IDLE)
    async def connect(self, address: Union[SocketAddrT, socket.socket],
                      ssl: Optional[SSLContext] = None, *,
                      retry: Optional[float] = None) -> None:
        """
        Connect to the server and start a session.

        If this call fails, `runstate` is guaranteed to be set back to
        `IDLE`.

        With ``retry``, a socket that does not exist yet or refuses the
        connection (a server still starting) is tried again, after 10 ms,
        then twice as long each time up to half a second, until ``retry``
        seconds have passed: no polling loop of your own.  Other failures
        are not retried.

        :param address: Address to connect to: a UNIX socket path, a TCP
            ``(host, port)``, or an already connected `socket.socket`.
        :param ssl: SSL context to use, if any.
        :param retry: Seconds to keep trying a missing or refusing socket.
        :raise StateError: When the `Runstate` is not `IDLE`.
        :raise ConnectError: When a connection or session cannot be
            established; it wraps the root cause (an `OSError`, `EOFError`
            or, for a protocol-level failure, a `QMPError`).
        """
        self._begin_session(address)
        async with self._session_guard("Failed to establish connection"):
            await self._connect_retrying(address, ssl, retry)
        async with self._session_guard("Failed to establish session"):
            await self._establish_session()

    @upper_half
    async def disconnect(self) -> None:
        """
        End the session and wait for all tasks to stop.

        Afterwards the `runstate` is `IDLE` and the object can connect
        again.  Called when already `IDLE`, it still goes through
        `DISCONNECTING` back to `IDLE`, and raises nothing.

        A session whose event loop has ended (see `EventLoopError`) is
        dropped: what asyncio left of it is released, and the object is
        `IDLE` again.

        :raise Exception:
            The error that ended the session early, if one did: `EOFError`
            when the peer hung up, `OSError` for connection problems,
            `ProtocolError` when the peer broke the protocol.
        :raise EventLoopError: The session belongs to another event loop,
            which has not ended.
        """
        if self._session_loop_ended():
            self._drop_ended_session()
            return
        self._schedule_disconnect()
        await self._wait_disconnect()

    # ------------------------------------------------------------------
    # Upper half: session set-up and tear-down
    # ------------------------------------------------------------------

    def _blank_connection(self) -> Connection[T]:
        """What stands for the connection while there is none."""
        return Connection(None, self.readbuflen, self._bh_flush)

    def _begin_session(self, address: object) -> None:
        """Make the connection's state anew and enter `CONNECTING`."""
        loop = self._session_loop = asyncio.get_running_loop()
        self._conn = Connection(address, self.readbuflen, self._bh_flush)
        self._set_state(Runstate.CONNECTING)
        over = self._session_over
        if over is None or over.done() or over.get_loop() is not loop:
            # (A reconnection goes on with the session it re-establishes.)
            self._session_over = loop.create_future()

    @upper_half
    @asynccontextmanager
    async def _session_guard(self, emsg: str) -> AsyncIterator[None]:
        """
        Context: one phase of session set-up; roll back to `IDLE` if the
        block fails.

        Exceptions are wrapped in `ConnectError`; `BaseException`\\ s such
        as `asyncio.CancelledError` are re-raised as they are, after the
        rollback.

        :param emsg: What failed, for the `ConnectError` message.
        :raise ConnectError: When the block raises an `Exception`.
        """
        try:
            yield
        except BaseException as err:
            self.logger.debug("%s: %s", emsg, exception_summary(err))
            # A disconnect already under way was asked for meanwhile:
            # that, not the failure it caused, is why set-up stopped.
            aborted = self._conn.dc_task is not None
            address, note = self._conn.address, self._conn.connect_note
            await self._rollback()
            if aborted and isinstance(err, Exception):
                raise ConnectError(emsg, _aborted(), address) from err
            if isinstance(err, Exception) \
                    and not isinstance(err, ConnectError):
                raise ConnectError(emsg, err, address, note=note) from err
            raise

    async def _rollback(self) -> None:
        # The error that made us roll back is the one the caller sees;
        # anything the teardown itself raises is only logged.
        self._schedule_disconnect()
        try:
            await self._wait_disconnect()
        except Exception as err:  # pylint: disable=broad-except
            self.logger.debug("Error during rollback: %s",
                              exception_summary(err))

    def _set_state(self, state: Runstate) -> None:
        """
        Change the `Runstate` and wake whoever waits in `runstate_changed`.

        :raise RuntimeError: The transition is not a legal one (a bug).
        """
        if state is self._runstate:
            return
        if state not in _NEXT_STATES[self._runstate]:
            raise RuntimeError(f"illegal runstate transition "
                               f"{self._runstate.name} -> {state.name}")
        self.logger.debug("= runstate %s", state.name)
        self._runstate = state
        self._runstate_count += 1
        history = self._runstate_history
        history.append((self._runstate_count, state))
        if len(history) > _RUNSTATE_HISTORY:
            del history[0]
        waiters, self._runstate_waiters = self._runstate_waiters, []
        for waiter in waiters:
            if not waiter.done():  # a waiter may have been cancelled
                waiter.set_result(None)

    def _schedule_disconnect(self) -> None:
        """
        Start tearing down the session; idempotent.

        Called by `disconnect()` and by the bottom half when it fails.
        Usable in any runstate.
        """
        conn = self._conn
        if conn.dc_task is None:
            over_for_good = not self._will_reconnect()
            self._set_state(Runstate.DISCONNECTING)
            conn.dc_task = asyncio.ensure_future(self._bh_disconnect())
            if over_for_good:
                self._end_of_session()

    def _will_reconnect(self) -> bool:
        """
        Whether the session being torn down will be re-established.

        A subclass that reconnects by itself says so; the session is then
        not over for those who wait for its end (`QMPClient.session_events`).
        """
        return False

    def _end_of_session(self) -> None:
        """Tell whoever waits for the end of the session that it came."""
        over = self._session_over
        if over is not None and not over.done():
            over.set_result(None)

    @upper_half
    async def _wait_disconnect(self) -> None:
        """
        Wait for the scheduled disconnect, then return to `IDLE`.

        :raise Exception: The first error that ended the bottom half, the
            root cause of any that followed it.
        """
        conn = self._conn
        dc_task = conn.dc_task
        assert dc_task is not None
        # Shielded: cancelling the caller must not cancel the teardown.
        await asyncio.shield(dc_task)
        if self._conn is not conn:
            return  # another caller finished this disconnect first
        # The connection is dropped whole; a blank one stands in.
        self._conn = self._blank_connection()
        if not self._will_reconnect():
            self._session_loop = None
        self._set_state(Runstate.IDLE)
        if conn.errors:
            raise conn.errors[0]

    def _session_loop_ended(self) -> bool:
        """
        Whether the session belongs to an event loop that has ended (not
        the running one): `disconnect` then drops it.

        :raise EventLoopError: It belongs to another loop, not ended.
        """
        session_loop = self._session_loop
        if session_loop is None or session_loop is get_running_loop():
            return False
        if not session_loop.is_closed():
            _check_loop(self)
        return True

    def _drop_ended_session(self) -> None:
        """
        Forget a session whose event loop has ended, and return to `IDLE`.

        Nothing of it can run any more, and whoever waited in that loop is
        gone.  ``asyncio.run()`` cancelled its tasks, which closed the
        stream as they ended (`_bh_loop_forever`); a loop closed with them
        still pending (``loop.close()`` without ``asyncio.run()``) leaves
        the stream to the garbage collector, and asyncio's own warnings.
        """
        ended = self._session_loop
        self._session_loop = None
        self.logger.debug("Dropping the session of an ended event loop")
        self._close_listener()
        self._runstate_waiters = [waiter for waiter in self._runstate_waiters
                                  if waiter.get_loop() is not ended]
        over = self._session_over
        if over is not None and over.get_loop() is ended:
            self._session_over = None
        self._set_state(Runstate.DISCONNECTING)
        self._conn = self._blank_connection()
        self._set_state(Runstate.IDLE)

    # ------------------------------------------------------------------
    # Transport hooks
    # ------------------------------------------------------------------

    @upper_half
    async def _do_connect(self, address: Union[SocketAddrT, socket.socket],
                          ssl: Optional[SSLContext] = None) -> None:
        """
        Open a connection to a server, as the transport client.

        :raise OSError: For stream-related errors.
        """
        self.logger.debug("Connecting to %s ...", address)
        conn = self._conn
        conn.reader, conn.writer = await _sockets.open_stream(
            address, ssl, self.readbuflen)
        self.logger.debug("Connected.")

    @upper_half
    async def _connect_retrying(self, address: Union[SocketAddrT,
                                                     socket.socket],
                                ssl: Optional[SSLContext],
                                retry: Optional[float]) -> None:
        """`_do_connect`, tried again while the socket is missing or
        refuses, for up to ``retry`` seconds (see `connect`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (retry or 0.0)
        backoff = Backoff(_RETRY_FIRST, _RETRY_MAX)
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._do_connect(address, ssl)
                return
            except (FileNotFoundError, ConnectionRefusedError) as err:
                remaining = deadline - loop.time()
                if isinstance(address, socket.socket):
                    raise
                if remaining <= 0:
                    if attempts > 1:
                        self._conn.connect_note = (
                            f"tried {attempts} times in "
                            f"{loop.time() - started:.3g} s")
                    raise
                delay = backoff.after_failure()
                self.logger.debug("%s; trying again in %.2f s",
                                  exception_summary(err), delay)
            over = self._session_over
            assert over is not None
            # A disconnect() meanwhile ends the wait, and the attempts.
            await asyncio.wait((over,), timeout=min(delay, remaining))
            if over.done():
                raise _aborted()

    @upper_half
    async def _do_start_server(self, address: SocketAddrT,
                               ssl: Optional[SSLContext] = None) -> None:
        """
        Listen on ``address``; `_do_accept` waits for the peer.

        :raise OSError: For stream-related errors.
        """
        self.logger.debug("Listening on %s ...", address)
        conn = self._conn
        conn.listener = await _sockets.listen(address)
        conn.accept_ssl = ssl
        conn.accepted = asyncio.Event()

    @upper_half
    async def _do_accept(self) -> None:
        """
        Wait for the peer on the listening socket, then stop listening.

        The wait is a task of its own, `_accept_task`, so that a
        `disconnect()` meanwhile can stop it before closing the listener.

        :raise OSError: For stream-related errors.
        :raise ConnectionAbortedError: `disconnect()` was called.
        """
        conn = self._conn
        assert conn.listener is not None
        accepting = conn.accept_task = asyncio.ensure_future(
            _sockets.accept(conn.listener, conn.accept_ssl,
                            self.readbuflen))
        try:
            await asyncio.wait((accepting,))
        except BaseException:  # our caller was cancelled
            accepting.cancel()
            raise
        finally:
            conn.accept_task = None
        if accepting.cancelled():
            raise _aborted()
        conn.reader, conn.writer = accepting.result()
        self._close_listener()
        self.logger.debug("Connection accepted.")

    def _close_listener(self) -> None:
        conn = self._conn
        conn.accepted = None
        if conn.listener is not None:
            _sockets.close_listener(conn.listener)
            conn.listener = None

    @upper_half
    async def _establish_session(self) -> None:
        """
        Start the reader task; the session is then `RUNNING`.

        Subclasses do their own handshakes first, then call this.

        :raise ConnectionAbortedError: `disconnect()` was called during
            the handshakes.
        """
        if self._runstate is not Runstate.CONNECTING:
            raise _aborted()
        conn = self._conn
        conn.reader_task = asyncio.create_task(self._bh_reader())
        conn.outgoing.release()
        self._set_state(Runstate.RUNNING)
        # Let the task start: once connect() returns, the reader is
        # already waiting for input.
        await asyncio.sleep(0)

    # ------------------------------------------------------------------
    # Bottom half
    # ------------------------------------------------------------------

    @bottom_half
    def _bh_reader(self) -> Coroutine[Any, Any, None]:
        """
        The reader task's work: `_bh_recv_message` again and again, until
        the session ends.

        A subclass may receive in one coroutine of its own instead (see
        `QMPClient`): one that waits for every message, rather than a new
        one per message, is what thousands of idle sessions can afford.
        """
        return self._bh_loop_forever(self._bh_recv_message, 'Reader')

    @bottom_half
    async def _bh_loop_forever(self, async_fn: Callable[[], Awaitable[None]],
                               name: str) -> None:
        """
        Run ``async_fn`` until it fails or the task is cancelled.

        A failure is recorded for `disconnect()` to raise and schedules a
        disconnect; the task itself always ends without an exception, so
        nothing is ever left unretrieved.
        """
        try:
            while True:
                await async_fn()
        except asyncio.CancelledError as err:
            if _not_cancelled(asyncio.current_task()):
                # User code's, awaited by this task (a listener's own
                # put()): the session ends with it (see plain_error).
                self._bh_failed(plain_error(err), name)
                return
            self.logger.debug("Task.%s: cancelled.", name)
            conn = self._conn
            if conn.dc_task is None and conn.writer is not None:
                # Cancelled by someone else than disconnect(): typically
                # asyncio.run() ending while the session is open.  No task
                # may start now, but the connection can still be closed.
                conn.writer.close()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:  # pylint: disable=broad-except
            # Any other BaseException too (user code's, from an event
            # filter, say): the session ends with it, rather than the
            # reader stopping while the session looks alive.
            self._bh_failed(err, name)

    def _bh_failed(self, err: BaseException, name: str) -> None:
        """
        Record ``err``, which ended the bottom half's ``name`` part, for
        `disconnect()` to raise, and start the disconnect.
        """
        if self._bh_logged_already(err):
            pass
        elif isinstance(err, EOFError):
            self.logger.info("Task.%s: the peer closed the connection.",
                             name)
        else:
            self.logger.error("Task.%s: %s", name, exception_summary(err))
        self._conn.errors.append(err)
        self._schedule_disconnect()

    def _bh_logged_already(self, err: BaseException) -> bool:
        """
        Whether ``err``, which ended a bottom-half task, was logged where
        it was found (a subclass's protocol rules may log the end of a
        session themselves).
        """
        return False

    @bottom_half
    async def _bh_recv_message(self) -> None:
        """Wait for one message and hand it to `_on_message`."""
        # What _recv() does, without a coroutine of its own per message.
        msg = self._cb_inbound(await self._do_recv())
        await self._on_message(msg)

    @bottom_half
    def _bh_flush(self, outbox: Outbox[T]) -> None:
        """
        Write everything in ``outbox`` in one write (called by the event
        loop, soon after the first message arrived in it).

        Everything queued meanwhile goes out in the same batch: one system
        call for many messages, and no task while nothing is sent.  When
        the transport's buffer is full afterwards (the peer reads slowly),
        a task waits until it drains, and the outbox waits with it.
        """
        outbox.flush_scheduled = False
        conn = self._conn
        if outbox is not conn.outgoing:
            return  # the connection it was for is gone
        if not self._bh_write_all(outbox):
            return
        # (No drain task once the session ends: nothing would stop it.)
        if conn.writer is not None and conn.dc_task is None \
                and _transport_full(conn.writer):
            outbox.paused = True
            conn.writer_task = asyncio.create_task(self._bh_drain_task())

    def _bh_write_all(self, outbox: Outbox[T]) -> bool:
        """
        Write everything in ``outbox``; return whether that went well.

        A failure ends the session, whatever it is: an `OSError`, or user
        code's in `_cb_outbound` or a recorder, called and not awaited,
        so that even its `asyncio.CancelledError` is no cancellation.
        """
        try:
            self._bh_write(outbox.take())
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:  # pylint: disable=broad-except
            self._bh_failed(plain_error(err), 'Writer')
            return False
        return True

    def _bh_write(self, messages: List[T]) -> None:
        """Send ``messages`` in one write."""
        conn = self._conn
        batch: List[bytes] = []
        conn.write_batch = batch
        # What _send() does, without a coroutine (or a drain) per message.
        cb_outbound, do_send = self._cb_outbound, self._do_send
        try:
            for msg in messages:
                do_send(cb_outbound(msg))
        finally:
            conn.write_batch = None
            if batch:
                assert conn.writer is not None
                conn.writer.write(b''.join(batch))

    @bottom_half
    async def _bh_drain_task(self) -> None:
        """`_bh_send_message`, with a failure ending the session."""
        try:
            await self._bh_send_message()
        except Exception as err:  # pylint: disable=broad-except
            self._bh_failed(err, 'Writer')

    @bottom_half
    async def _bh_send_message(self) -> None:
        """
        Wait until the transport takes more, then write what waits, until
        its buffer is below its limit again.
        """
        conn = self._conn
        writer, outbox = conn.writer, conn.outgoing
        assert writer is not None
        try:
            while True:
                await writer.drain()
                if not self._bh_write_all(outbox) \
                        or not _transport_full(writer):
                    break
        finally:
            outbox.paused = False
            conn.writer_task = None

    @bottom_half
    async def _bh_disconnect(self) -> None:
        """
        Stop the reader (and a writer waiting for the transport), close
        the stream and the listener.

        Runs in `_dc_task`, so it may wait on the other tasks.
        """
        conn = self._conn
        current = asyncio.current_task()
        tasks: List['asyncio.Future[Any]'] = [
            task for task in (conn.reader_task, conn.writer_task)
            if task is not None and task is not current]
        accepting = conn.accept_task
        if accepting is not None:
            # Stopped before its socket closes: a wait on a closed socket
            # would never end.
            tasks.append(accepting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_listener()
        await self._close_stream()
        self.logger.debug("Disconnected.")

    async def _close_stream(self) -> None:
        writer = self._conn.writer
        if writer is None:
            return
        try:
            await _sockets.close_writer(writer, CLOSE_GRACE)
        except Exception as err:  # pylint: disable=broad-except
            # The connection was already broken; why is known or moot.
            self.logger.debug("While closing: %s", exception_summary(err))

    # ------------------------------------------------------------------
    # Message hooks (subclasses implement _do_recv, _do_send)
    # ------------------------------------------------------------------

    def _cb_outbound(self, msg: T) -> T:
        """
        Callback: see or rewrite every outbound message.

        The base implementation logs it at DEBUG level.

        :param msg: raw outbound message
        :return: final outbound message
        """
        self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: T) -> T:
        """
        Callback: see or rewrite every inbound message.

        It runs before `_on_message()`, which handles the message.  The base
        implementation logs it at DEBUG level.

        :param msg: raw inbound message
        :return: processed inbound message
        """
        self.logger.debug("<-- %s", msg)
        return msg

    def _write(self, data: bytes) -> None:
        """
        Write bytes to the stream (for `_do_send` implementations).

        During a flush the bytes join the current batch.
        """
        conn = self._conn
        batch = conn.write_batch
        if batch is not None:
            batch.append(data)
        else:
            assert conn.writer is not None
            conn.writer.write(data)

    async def _readline(self) -> bytes:
        """
        Wait for one line from the peer.

        At end of stream, an unterminated last line is returned as it is
        (without newline); the next call raises `EOFError`.

        :raise EOFError: The peer closed the connection.
        :raise MessageTooLongError: The line is longer than ``readbuflen``.
        """
        conn = self._conn
        lines = conn.lines
        line = lines.next_line()
        while line is None:
            assert conn.reader is not None
            data = await conn.reader.read(_sockets.READ_SIZE)
            if not data:
                tail = lines.take_tail()
                if tail:
                    return tail
                raise EOFError
            lines.feed(data)
            line = lines.next_line()
        return line + b'\n'

    async def _do_recv(self) -> T:
        """Abstract: read one message from the stream and return it."""
        raise NotImplementedError

    async def _recv(self) -> T:
        """
        Read one message, passed through `_cb_inbound`.

        Only the reader task should call this once the session runs;
        anyone else would steal messages from routing.  It is safe to use
        in `_establish_session` before the tasks start.
        """
        msg = await self._do_recv()
        return self._cb_inbound(msg)

    def _do_send(self, msg: T) -> None:
        """Abstract: write one message to the stream (see ``_write``)."""
        raise NotImplementedError

    async def _send(self, msg: T) -> None:
        """
        Send one message now, passed through `_cb_outbound`, and wait
        until the transport has taken it.

        For handshakes in `_establish_session`; once the session runs,
        use ``_submit``, which keeps messages in order.

        :raise OSError: For problems with the underlying stream.
        """
        self._do_send(self._cb_outbound(msg))
        writer = self._conn.writer
        if writer is not None:
            await writer.drain()

    @upper_half
    def _submit(self, msg: T, alone: bool = False) -> None:
        """
        Send a message during the session, in order.

        It goes through the outbox, which sends everything queued in one
        event loop iteration in one write.  A caller that knows no
        other message is on its way (``alone``) has it written at once
        instead, if nothing is queued ahead of it: one task switch less.

        :param msg: The message.
        :param alone: Nothing else is being sent, so batching cannot help.
        :raise OSError: For problems with the underlying stream (only
            when written at once).
        """
        outgoing = self._conn.outgoing
        if alone and outgoing.empty() and not (outgoing.paused
                                               or outgoing.held):
            try:
                msg = self._cb_outbound(msg)
            except asyncio.CancelledError as err:
                # The hook's, not the caller's cancellation (plain_error).
                raise plain_error(err)  # pylint: disable=raise-missing-from
            self._do_send(msg)
        else:
            outgoing.put_nowait(msg)

    async def _on_message(self, msg: T) -> None:
        """
        Handle one received message (in the reader task).

        Do not wait on the reader or writer here: that deadlocks.  An
        exception raised here ends the session.

        :param msg: The incoming message, already logged/filtered.
        """


def _not_cancelled(task: Optional['asyncio.Task[Any]']) -> bool:
    """
    Whether ``task`` was never asked to stop, though a CancelledError came
    out of what it awaited: someone else's.  Told from Python 3.11 on
    (`asyncio.Task.cancelling`); before, every one counts as the task's.
    """
    cancelling = getattr(task, 'cancelling', None)
    return cancelling is not None and cancelling() == 0


def _transport_full(writer: asyncio.StreamWriter) -> bool:
    """Whether ``writer``'s buffer is past its limit: writing more only
    makes it grow, until the peer reads."""
    return _sockets.unsent_bytes(writer) \
        > writer.transport.get_write_buffer_limits()[1]
