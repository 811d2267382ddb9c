"""
(Legacy) blocking QMP client.

`QEMUMonitorProtocol` gives scripts and QEMU's own test harness the old
synchronous interface.  It runs no event loop and no thread: it talks over
a blocking socket through the same `Codec` as `QMPClient`.  So:

- a script that never calls `QEMUMonitorProtocol.close` still exits at
  once, with its own exit status;
- Ctrl-C during a command raises `KeyboardInterrupt` at once, and closes
  the connection (a reply can no longer be matched with certainty);
- any number of threads may share one instance: each gets the replies to
  its own commands, and one may block in `QEMUMonitorProtocol.pull_event`
  while others run commands;
- it works from any thread, including one whose event loop is running
  (it blocks that loop while it waits, like any blocking call).

Replies and events are plain `dict`\\ s.  New code can also use `QMPClient`
with asyncio.

Example:

.. code-block:: python

    from qemu.qmp.legacy import QEMUMonitorProtocol

    with QEMUMonitorProtocol('qmp.sock') as qmp:
        qmp.connect()
        print(qmp.cmd('query-status'))

When the session ends (QEMU quit, or died), a command waiting for its reply
raises `ExecInterruptedError`, a later command raises `StateError`, and
waiting for an event raises `EOFError` once the events that arrived before
the end were returned.  `QEMUMonitorProtocol.close` never raises.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from types import TracebackType
from typing import (
    Any,
    Dict,
    List,
    Literal,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
    overload,
)

from . import _sockets
from ._blocking import (
    NO_GREETING_FIX,
    BlockingConnection,
    ReentrantCallError,
    longest_wait,
)
from .codec import DEFAULT_LIMIT
from .error import QMPError
from .message import Message
from .models import Greeting
from .protocol import ConnectError, Runstate, SocketAddrT, StateError
from .handshake import greeting_timeout, negotiation_error
from .replies import ExecuteTimeoutError, check_reply, reply_value
from .transcript import Recorder
from .util import exception_summary, not_nan


__all__ = ['QEMUMonitorProtocol', 'QMPBadPortError', 'QMPMessage',
           'QMPObject', 'QMPReturnValue', 'ReentrantCallError']

#: QMPMessage is an entire QMP message of any kind.
QMPMessage = Dict[str, Any]

#: QMPReturnValue is the 'return' value of a command.
QMPReturnValue = Any

#: QMPObject is any object in a QMP message.
QMPObject = Dict[str, object]

_Self = TypeVar('_Self', bound='QEMUMonitorProtocol')

_logger = logging.getLogger(__name__)


class QMPBadPortError(QMPError):
    """Unable to parse socket address: Port was non-numerical."""


class QEMUMonitorProtocol:
    """
    Connect to QEMU via QMP, run commands and collect events, blocking.

    :param address: A UNIX socket path, a ``(host, port)`` tuple, or an
        already connected `socket.socket` (such as one end of a
        `socket.socketpair`), which this object then owns and closes.
    :param server: Listen at ``address`` now, so the caller can start QEMU
        pointing at it; then call `accept`.  With ``sock``, `accept` uses
        that connected socket instead.
    :param nickname: Optional nickname used for logging: messages go to
        the ``qemu.qmp.legacy.NICKNAME`` logger.
    :param sock: A connected socket to use instead of ``address`` (the
        form QEMU's newer test harness uses, with ``server=True``).
    :raise ConnectError: ``server`` is true and listening failed.
    :raise ValueError: Neither ``address`` nor ``sock`` was given, or
        ``server`` with a socket as ``address``.
    """

    def __init__(self,
                 address: Optional[Union[SocketAddrT, socket.socket]] = None,
                 server: bool = False,
                 nickname: Optional[str] = None,
                 *,
                 sock: Optional[socket.socket] = None) -> None:
        # Every attribute is set before anything can fail: a subclass with
        # a catch-all __getattr__ must never see a missing one, in
        # __del__ above all.
        self.logger = _logger.getChild(nickname) if nickname else _logger
        #: A `~qemu.qmp.transcript.Recorder` given every message of the
        #: sessions that start from now on; `None` records nothing.  See
        #: :doc:`/replay`.
        self.recorder: Optional[Recorder] = None
        self._address: Optional[Union[SocketAddrT, socket.socket]] = \
            address if sock is None else sock
        self._given_socket = sock is not None or \
            isinstance(address, socket.socket)
        self._server = server
        self._timeout: Optional[float] = None
        self._listener: Optional[socket.socket] = None
        self._conn: Optional[BlockingConnection] = None
        if self._address is None:
            raise ValueError("give an address (or a connected sock)")
        if server and isinstance(address, socket.socket):
            raise ValueError("server=True needs an address to listen "
                             "on, not a connected socket")
        if server and not self._given_socket:
            assert not isinstance(self._address, socket.socket)
            try:
                self._listener = _sockets.listen_blocking(self._address)
            except (OSError, TypeError) as err:
                raise ConnectError("Failed to establish connection", err,
                                   self._address) from err

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} address={self._address!r} "
                f"runstate={self.runstate.name}>")

    @property
    def runstate(self) -> Runstate:
        """
        Where the connection is, as a `Runstate` (as `QMPClient` has it).

        `RUNNING` while connected; `DISCONNECTING` once the connection
        ended (QEMU went away, or `close` was called: commands then raise
        `StateError`); `CONNECTING` while listening for QEMU; `IDLE`
        before connecting.  The end of a connection is noticed when the
        socket is next read, by any call that waits or reads events.
        """
        conn = self._conn
        if conn is not None and not conn.ended:
            return Runstate.RUNNING
        if conn is not None:
            return Runstate.DISCONNECTING
        return Runstate.CONNECTING if self._listener else Runstate.IDLE

    # ------------------------------------------------------------------
    # Connecting
    # ------------------------------------------------------------------

    @classmethod
    def parse_address(cls, address: str) -> SocketAddrT:
        """
        Parse ``"host:port"`` or ``"[IPv6]:port"`` into a tuple; anything
        else is a path.

        >>> QEMUMonitorProtocol.parse_address('localhost:4444')
        ('localhost', 4444)
        >>> QEMUMonitorProtocol.parse_address('[::1]:4444')
        ('::1', 4444)
        >>> QEMUMonitorProtocol.parse_address('/tmp/qmp.sock')
        '/tmp/qmp.sock'

        :param address: The address to parse.
        :return: A ``(host, port)`` tuple or a UNIX socket path.
        :raise QMPBadPortError: The port is not a number.
        """
        if address.startswith('['):
            host, bracket, port = address[1:].partition(']:')
            if bracket and host:
                return (host, cls._port(port, address))
        components = address.split(':')
        if len(components) == 2:
            return (components[0], cls._port(components[1], address))
        return address

    @staticmethod
    def _port(text: str, address: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise QMPBadPortError(
                f"Bad port: '{text}' in '{address}'.") from None

    @overload
    def connect(self, negotiate: Literal[True] = True, *,
                timeout: Optional[float] = None) -> Dict[str, Any]: ...

    @overload
    def connect(self, negotiate: bool, *,
                timeout: Optional[float] = None
                ) -> Optional[Dict[str, Any]]: ...

    def connect(self, negotiate: bool = True, *,
                timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """
        Connect to the QMP monitor, and negotiate unless told not to.

        :param negotiate: Await the greeting and negotiate capabilities
            (the guest agent does neither: pass `False`).
        :param timeout: Seconds for the whole connection: the socket's
            (a monitor busy with another client leaves it waiting), the
            greeting and the negotiation; `None` (the reference library's
            behaviour) waits forever.  A socket that never greets is most
            likely the guest agent's, and the error says so.
        :return: The greeting as a dict, or `None` without negotiation.
        :raise StateError: Already connected, or listening (`accept`).
        :raise ConnectError: The connection or the negotiation failed (or
            timed out); it wraps the root cause.
        :raise ValueError: ``timeout`` is NaN.
        """
        not_nan(timeout)
        self._require_idle("connect")
        if self._listener is not None:
            raise StateError("Listening for QEMU: call accept(), not "
                             "connect().", Runstate.CONNECTING,
                             Runstate.IDLE)
        assert self._address is not None
        deadline = None if timeout is None \
            else time.monotonic() + timeout
        try:
            sock = _sockets.connect_blocking(
                self._address, None if timeout is None
                else longest_wait(timeout))
        except socket.timeout as err:
            raise ConnectError(
                "Failed to establish connection", TimeoutError(
                    f"the socket did not accept the connection within "
                    f"{timeout} seconds (is another client connected?)"),
                self._address) from err
        except (OSError, TypeError) as err:
            raise ConnectError("Failed to establish connection", err,
                               self._address) from err
        return self._start_session(sock, negotiate, timeout, deadline)

    def accept(self, timeout: Optional[float] = 15.0) -> Dict[str, Any]:
        """
        Wait for QEMU to connect to us, then negotiate.

        On a timeout the listening socket stays open, so calling `accept`
        again goes on waiting at the same address.

        :param timeout: Seconds to wait for QEMU to connect, greet and
            negotiate; `None` waits forever.
        :return: The greeting as a dict.
        :raise StateError: Not constructed with ``server=True``, or
            already connected.
        :raise asyncio.TimeoutError: Nobody connected, greeted and
            negotiated in time.
        :raise ConnectError: Accepting or negotiating failed.
        :raise ValueError: ``timeout`` is NaN.
        """
        not_nan(timeout)
        self._require_idle("accept")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._server and self._given_socket:
            sock = self._address
            assert isinstance(sock, socket.socket)
        elif self._listener is None:
            raise StateError("accept() needs a listening socket: construct "
                             "with server=True.", Runstate.IDLE,
                             Runstate.CONNECTING)
        else:
            sock = self._accept(self._listener, timeout)
        try:
            greeting = self._start_session(sock, True, timeout, deadline)
        except ConnectError as err:
            if isinstance(err.exc.__cause__, asyncio.TimeoutError):
                # The reference library's accept() times out this way.
                raise asyncio.TimeoutError(str(err.exc)) from err
            raise
        assert greeting is not None
        if self._listener is not None:
            _sockets.close_listener(self._listener)
            self._listener = None
        return greeting

    def _accept(self, listener: socket.socket,
                timeout: Optional[float]) -> socket.socket:
        try:
            return _sockets.accept_blocking(listener, timeout)
        except socket.timeout:
            raise asyncio.TimeoutError(
                f"nobody connected to {_sockets.describe(self._address)} "
                f"within {timeout} seconds") from None
        except OSError as err:
            raise ConnectError("Failed to establish connection", err,
                               self._address) from err

    def _require_idle(self, what: str) -> None:
        conn = self._conn
        if conn is not None and not conn.ended:
            raise StateError(f"{what}(): the client is already connected.",
                             Runstate.RUNNING, Runstate.IDLE)

    def _start_session(self, sock: socket.socket, negotiate: bool,
                       timeout: Optional[float],
                       deadline: Optional[float] = None
                       ) -> Optional[QMPMessage]:
        """
        Greet and negotiate on ``sock``, by ``deadline`` (or ``timeout``
        seconds from now); the session then runs.

        :raise ConnectError: It failed or timed out (wrapping a
            `GreetingError` or `NegotiationError` caused by
            `asyncio.TimeoutError`).
        """
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        conn = BlockingConnection(sock, DEFAULT_LIMIT, self.logger,
                                  negotiate)
        conn.recorder = self.recorder
        try:
            greeting = None
            if negotiate:
                greeting = self._handshake(conn, deadline,
                                           timeout)._asdict()
        except BaseException as err:
            conn.close()
            if isinstance(err, Exception):
                raise ConnectError("Failed to establish session", err,
                                   self._address) from err
            raise
        previous, self._conn = self._conn, conn
        if previous is not None:
            previous.close()
        return greeting

    @staticmethod
    def _handshake(conn: BlockingConnection, deadline: Optional[float],
                   timeout: Optional[float]) -> Greeting:
        try:
            return conn.handshake(deadline)
        except asyncio.TimeoutError as err:
            if conn.greeting is None:
                raise greeting_timeout(timeout, err,
                                       NO_GREETING_FIX) from err
            raise negotiation_error(err, timeout) from err

    # ------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------

    def _connection(self) -> BlockingConnection:
        conn = self._conn
        if conn is None:
            raise StateError("Not connected: call connect() or accept() "
                             "first.", self.runstate, Runstate.RUNNING)
        return conn

    def _deadline(self) -> Optional[float]:
        timeout = self._timeout
        return None if timeout is None else time.monotonic() + timeout

    def _exchange(self, msg: Message,
                  assign_id: bool) -> Tuple[Message, Message]:
        """
        Send ``msg``; return the copy sent and the reply.

        :raise ExecuteTimeoutError: No reply within `settimeout` seconds.
        """
        conn = self._connection()
        try:
            return conn.execute(msg, assign_id, self._deadline())
        except asyncio.TimeoutError:
            name = str(msg.get('execute', msg.get('exec-oob')))
            assert self._timeout is not None
            raise ExecuteTimeoutError(name, self._timeout) from None

    def cmd_obj(self, qmp_cmd: QMPMessage) -> QMPMessage:
        """
        Send a QMP command as given and return the whole reply.

        An error reply is returned, not raised.  A command without an id
        gets one of the client's own for routing, removed from the reply.

        :param qmp_cmd: The command, as a dict.
        :return: The reply, as a dict.
        :raise ValueError: ``qmp_cmd`` has neither 'execute' nor
            'exec-oob', or an id the client reserves for itself.
        :raise SerializationError: ``qmp_cmd`` cannot be encoded as JSON.
        :raise ExecuteTimeoutError: No reply within `settimeout` seconds;
            the connection stays usable.
        :raise ExecInterruptedError: The connection ended first.
        :raise StateError: Not connected.
        :raise ReentrantCallError: Called from a signal handler while the
            code it interrupted was inside a call on this client.
        """
        ours = 'id' not in qmp_cmd
        wire, reply = self._exchange(Message(qmp_cmd, eager=False), ours)
        check_reply(reply, wire)
        result = dict(reply)
        if ours:
            del result['id']
        return result

    def cmd_raw(self, name: str,
                args: Optional[Dict[str, object]] = None) -> QMPMessage:
        """
        Build a command from ``name`` and ``args``, return the whole reply.

        :param name: The command name.
        :param args: The arguments, if any.
        :return: The reply, as a dict (errors included).
        """
        qmp_cmd: QMPMessage = {'execute': name}
        if args:
            qmp_cmd['arguments'] = args
        return self.cmd_obj(qmp_cmd)

    def cmd(self, cmd: str, **kwds: object) -> QMPReturnValue:
        """
        Run command ``cmd`` with ``kwds`` as arguments; return its value.

        :param cmd: The command name.
        :return: The 'return' member of the reply.
        :raise ExecuteError: The server replied with an error.
        :raise ExecuteTimeoutError: No reply within `settimeout` seconds.
        :raise ExecInterruptedError: The connection ended first.
        :raise StateError: Not connected.
        """
        wire, reply = self._exchange(
            Message({'execute': cmd, 'arguments': kwds}, eager=False), True)
        if 'return' in reply:
            return reply['return']
        return reply_value(reply, wire)

    # deprecated in 0.1.0 - 2026-11-22: older releases' name for cmd()
    command = cmd

    def settimeout(self, timeout: Optional[float]) -> None:
        """
        Set the timeout for `cmd`, `cmd_obj` and `cmd_raw`.

        A command that times out raises `ExecuteTimeoutError` (an
        `asyncio.TimeoutError` too); the connection stays usable, and the
        reply, if it comes later, is dropped.  Only if the server stopped
        reading and the command was sent in part is the connection closed,
        since the stream is broken.

        :param timeout: Seconds, or `None` to wait indefinitely.
        :raise ValueError: ``timeout`` is NaN.
        """
        self._timeout = not_nan(timeout)

    def send_fd_scm(self, fd: int) -> None:
        """
        Send a file descriptor to QEMU (SCM_RIGHTS), for ``getfd`` or
        ``add-fd``.  The descriptor is not closed here.

        :param fd: The descriptor.
        :raise OSError: ``fd`` is not an open descriptor (EBADF); nothing
            was sent.
        :raise QMPError: Not a UNIX socket.
        :raise StateError: Not connected.
        """
        self._connection().send_fd(fd)

    # ------------------------------------------------------------------
    # Events
    # ------------------------------------------------------------------

    @staticmethod
    def _timeout_of(wait: Union[bool, float]) -> Optional[float]:
        """`True` waits forever, `False`/0 not at all, a number that long."""
        if wait is True:
            return None
        if wait is False:
            return 0.0
        seconds = not_nan(float(wait))
        assert seconds is not None
        return max(0.0, seconds)

    def pull_event(self,
                   wait: Union[bool, float] = False) -> Optional[QMPMessage]:
        """
        Return the oldest pending event, waiting as told.

        :param wait: `False` or 0: do not wait, return `None` if there is
            no event.  `True`: wait forever.  A number: wait that many
            seconds.
        :return: The event as a dict, or `None`.
        :raise asyncio.TimeoutError: The wait ran out.
        :raise ValueError: ``wait`` is NaN.
        :raise EOFError: No event is pending and the connection is gone,
            so none can come: waiting would never end.
        """
        timeout = self._timeout_of(wait)
        conn = self._conn
        if conn is None:
            if timeout == 0.0:
                return None
            raise EOFError("not connected: no event can arrive")
        if timeout == 0.0:
            try:
                event = conn.next_event(time.monotonic())
            except EOFError:
                return None
            return dict(event) if event is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        event = conn.next_event(deadline)
        if event is None:
            raise asyncio.TimeoutError(f"no event within {timeout} seconds")
        return dict(event)

    def get_events(self, wait: Union[bool, float] = False) -> List[QMPMessage]:
        """
        Return all pending events and clear them.

        :param wait: If nothing is pending, wait as for `pull_event`.
        :return: The events, oldest first (maybe empty).
        :raise asyncio.TimeoutError: The wait ran out.
        :raise EOFError: Nothing is pending, ``wait`` asked to wait, and
            the connection is gone.
        :raise ValueError: ``wait`` is NaN.
        """
        self._timeout_of(wait)
        conn = self._conn
        events = conn.take_events() if conn is not None else []
        if events:
            return [dict(event) for event in events]
        event = self.pull_event(wait)
        return [event] if event is not None else []

    def clear_events(self) -> None:
        """Discard all pending events (every event received so far)."""
        conn = self._conn
        if conn is not None:
            conn.take_events()

    # ------------------------------------------------------------------
    # Closing
    # ------------------------------------------------------------------

    def close(self) -> None:
        """
        Close the connection and stop listening; never raises.

        Closing after QEMU quit or died is the normal end of a session, not
        an error.  Commands other threads still wait on raise
        `ExecInterruptedError`.  Events received before closing can still
        be read.  `connect` may be called again afterwards.
        """
        conn = self._conn
        if conn is not None:
            conn.close()
        listener = self._listener
        if listener is not None:
            self._listener = None
            _sockets.close_listener(listener)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        # Only our own attributes: a subclass's __getattr__ would answer
        # for missing ones.  Runs at interpreter exit too, so it only
        # closes sockets; it never waits on anything.
        state = self.__dict__
        conn = state.get('_conn')
        listener = state.get('_listener')
        try:
            if isinstance(conn, BlockingConnection) and not conn.closed:
                state['logger'].warning(
                    "QEMUMonitorProtocol garbage collected without a prior "
                    "call to close(); closing it now")
                conn.close()
            if isinstance(listener, socket.socket):
                _sockets.close_listener(listener)
        except Exception as err:  # pylint: disable=broad-except
            # Nobody to report to at this point; say it at DEBUG at most.
            _logger.debug("While closing in __del__: %s",
                          exception_summary(err))
