"""
A blocking QMP connection that any number of threads can share.  Private.

`BlockingConnection` owns one connected socket and the `SessionCore` that
holds the session's rules; it only moves bytes and wakes threads.  It has
no thread of its own and no event loop, so nothing of it can outlive the
caller or block interpreter exit.

Strategy, "whoever waits, reads": a thread that needs something from the
server (its reply, an event, the greeting) takes the reader role if nobody
has it, reads once without holding the lock, then feeds the bytes to the
core under the lock, acts on what it says, wakes the other waiters and
gives the role up.  While another thread reads, a waiter sleeps on a
condition and is woken after every read (then takes the role itself if it
still has nothing).  So one thread alone costs one ``send`` and one
``recv`` per command, and a thread blocked in ``pull_event(wait=True)``
reads the replies of every other thread.

No system call made while waiting for the server (to read, or to take
what it has not read yet) blocks for longer than `SIGNAL_CHECK_INTERVAL`:
every wait is cut into slices (a ``recv`` with no deadline by the socket's
receive timeout, the others by ``poll``), so Ctrl-C, or any signal whose
handler raises, always gets through.

Sending has a lock of its own, so a thread stuck writing to a server that
stopped reading never blocks the routing of replies.

A thread that calls in again while it is already inside a call (a signal
handler, run between two bytecodes of the interrupted call) would wait on
itself forever: it gets `ReentrantCallError` at once instead.

`close` first shuts the socket down, which wakes a thread blocked in
``recv`` or ``send``, then waits for it to leave before closing the file
descriptor, so no thread can ever use a descriptor number that was reused.
In a process other than the one that connected (after ``fork()``), it only
closes that process's descriptor: the parent's session goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from types import FrameType
from typing import (
    Callable,
    Deque,
    Dict,
    Hashable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from ._sockets import LONGEST_WAIT, RECV_SIZE
from .codec import Codec
from .core import (
    Phase,
    Reply,
    ReplyFailed,
    SessionCore,
    SessionEnded,
)
from . import handshake
from .error import QMPError
from .message import Message
from .models import Greeting
from .protocol import Runstate, StateError
from .replies import ExecInterruptedError
from .transcript import CLIENT, SERVER, Recorder, record_wire
from .util import exception_summary


__all__ = ['BlockingConnection', 'ReentrantCallError', 'longest_wait']

_T = TypeVar('_T')

# Never let SIGPIPE kill the process (Python ignores it, but an embedding
# application may not); non-blocking sends, which never block past a signal.
_NOSIGNAL = getattr(socket, 'MSG_NOSIGNAL', 0)
_DONTWAIT = getattr(socket, 'MSG_DONTWAIT', 0)

# How many bytes a wait reads at most after its deadline passed, to take
# in what has already arrived (the end of the stream included): more than
# Linux's TCP receive buffer grows to (6 MiB), and a bound on how long a
# server that never stops sending keeps a caller.
_LATE_READ_BYTES = 8 << 20

# The longest a wait blocks in one system call, in seconds.  CPython runs
# a signal handler (Ctrl-C's KeyboardInterrupt) only between bytecodes: a
# signal that lands after the last check but before a blocking recv() or
# poll() is not seen until that call returns, which on a silent server is
# never.  So waits poll in slices this long and recv() only what is there.
SIGNAL_CHECK_INTERVAL = 0.25

#: What a server that never greets (the guest agent) needs, for the hints.
NO_GREETING_FIX = "pass negotiate=False to connect()"


def longest_wait(seconds: float) -> float:
    """
    ``seconds``, cut to what one blocking call can wait (`LONGEST_WAIT`),
    so an infinite or huge timeout never overflows a system call.
    """
    return seconds if seconds < LONGEST_WAIT else LONGEST_WAIT


def _milliseconds(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _slice(remaining: Optional[float]) -> float:
    """How long one blocking call of a wait with ``remaining`` seconds
    left (`None`: no deadline) may block: see `SIGNAL_CHECK_INTERVAL`."""
    if remaining is None or remaining > SIGNAL_CHECK_INTERVAL:
        return SIGNAL_CHECK_INTERVAL
    return remaining if remaining > 0 else 0.0


def _bound_recv(sock: socket.socket) -> bool:
    """Make a blocking ``recv()`` on ``sock`` give up (`BlockingIOError`)
    after `SIGNAL_CHECK_INTERVAL`; `False` if the system refused."""
    microseconds = round(SIGNAL_CHECK_INTERVAL * 1_000_000)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack('ll', *divmod(microseconds, 1_000_000)))
    except (OSError, struct.error):
        return False
    return True


class ReentrantCallError(QMPError):
    """
    A thread called into a blocking client it is already inside.

    This happens when a signal handler (for SIGTERM, SIGALRM, ...) uses the
    client while the code it interrupted was in a call on it: the handler
    would wait for a reply that only the interrupted call can read, so
    forever.  Nothing was sent.  Set a flag in the handler and act on it
    after the call returns, or use another client.
    """


class _Slot:
    """Where the reply to one waiting command lands."""

    __slots__ = ('reply',)

    def __init__(self) -> None:
        self.reply: Optional[Union[Message, Exception]] = None


class BlockingConnection:
    """
    One QMP session over a connected, blocking socket.

    Its ``recorder``, if set, is given every message sent and received.

    :param sock: The connected socket; this object owns and closes it.
    :param limit: The longest message accepted, in bytes.
    :param logger: Where to log.
    :param negotiate: Wait for the greeting and negotiate (`handshake`);
        `False` for the guest agent.
    """

    def __init__(self, sock: socket.socket, limit: int,
                 logger: logging.Logger, negotiate: bool = True) -> None:
        sock.setblocking(True)
        self._sock = sock
        # A recv() with no deadline is bounded by the kernel, not poll():
        # one system call per read where the option is taken.
        self._recv_bounded = _bound_recv(sock)
        self._pid = os.getpid()
        self._logger = logger
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._can_pass_fds = sock.family == socket.AF_UNIX

        # _lock guards the core and everything below it; _changed wakes
        # waiters after each read and when the connection ends.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._core: SessionCore[_Slot] = SessionCore(
            logger, limit=limit, await_greeting=negotiate,
            negotiate=negotiate)
        self._sleepers = 0
        self._reading = False
        self._reader = 0  # the thread that last took the reader role
        self._events: Deque[Message] = deque()
        self._closed = False
        # Threads inside a call, to refuse re-entry (see ReentrantCallError)
        # and a close() asked for by one, done when it leaves.
        self._inside: Dict[int, FrameType] = {}
        #: A `~qemu.qmp.transcript.Recorder` for this session, or `None`.
        self.recorder: Optional[Recorder] = None
        self._close_deferred = False

        self._send_lock = threading.Lock()
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)

    @property
    def ended(self) -> bool:
        """Whether the session is over: no more messages can arrive."""
        return self._core.phase is Phase.ENDED

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # ------------------------------------------------------------------
    # Re-entry from signal handlers
    # ------------------------------------------------------------------

    def _enter(self) -> None:
        if self._inside_a_call():
            raise ReentrantCallError(
                "this thread is already inside a call on this connection "
                "(is this a signal handler?); calling in again would wait "
                "for itself forever")
        # One statement, no call: a signal cannot land halfway through.
        self._inside[threading.get_ident()] = sys._getframe(1)

    def _leave(self) -> None:
        self._inside.pop(threading.get_ident(), None)
        if self._close_deferred and not self._inside:
            self.close()

    def _inside_a_call(self) -> bool:
        """
        Whether this thread is inside a call on this connection (and so
        in a signal handler that interrupted it).

        A call's mark holds the call's frame: a signal handled just as
        the call left can keep the mark from being removed, and a mark
        whose frame is no longer on this thread's stack is such a one.
        """
        thread = threading.get_ident()
        call = self._inside.get(thread)
        if call is None:
            return False
        frame: Optional[FrameType] = sys._getframe(1)
        while frame is not None:
            if frame is call:
                return True
            frame = frame.f_back
        del self._inside[thread]  # the call is over
        return False

    # ------------------------------------------------------------------
    # Handshake, commands
    # ------------------------------------------------------------------

    def handshake(self, deadline: Optional[float]) -> Greeting:
        """
        Wait for the greeting, then negotiate, all by ``deadline``.

        :return: The greeting.
        :raise asyncio.TimeoutError: Not done by ``deadline``; the
            greeting is `greeting` if it came.
        :raise GreetingError, NegotiationError: The server's greeting was
            not one, or it refused the negotiation.
        :raise EOFError, OSError, ProtocolError: The connection ended
            first (the root cause is raised, not wrapped).
        """
        core = self._core
        self._enter()
        try:
            try:
                greeting = self._wait_for_greeting(deadline)
                if greeting is None:
                    raise asyncio.TimeoutError
                if core.phase is Phase.NEGOTIATING:
                    with self._lock:
                        command = core.negotiation_command()
                    self._send(Codec.encode(command), deadline)
                    established = self._wait(
                        lambda: core.phase is Phase.ESTABLISHED or None,
                        deadline)
                    if established is None:
                        raise asyncio.TimeoutError
            except ExecInterruptedError as err:
                assert err.__cause__ is not None
                raise err.__cause__ from None
            return greeting
        finally:
            self._leave()

    def _wait_for_greeting(self, deadline: Optional[float]
                           ) -> Optional[Greeting]:
        """`_wait` for the greeting; say so, once, when it is overdue."""
        core = self._core
        timeout = None if deadline is None else deadline - time.monotonic()
        patience = handshake.greeting_patience(timeout)
        if patience is not None:
            greeting = self._wait(lambda: core.greeting,
                                  time.monotonic() + patience)
            if greeting is not None:
                return greeting
            handshake.warn_greeting_overdue(self._logger, patience,
                                            NO_GREETING_FIX)
        return self._wait(lambda: core.greeting, deadline)

    @property
    def greeting(self) -> Optional[Greeting]:
        """The server's greeting, once it came."""
        return self._core.greeting

    def execute(self, msg: Message, assign_id: bool,
                deadline: Optional[float]) -> Tuple[Message, Message]:
        """
        Send a command and return its reply.

        A `KeyboardInterrupt` (or any `BaseException` that is not an
        `Exception`) while waiting closes the connection before it
        propagates: the session is never left with a reply in limbo.

        :param msg: The command.
        :param assign_id: Give it an id of the client's own (see
            `SessionCore.prepare`).
        :param deadline: `time.monotonic` time to give up at, or `None`.
        :return: The copy that was sent, and the reply.
        :raise asyncio.TimeoutError: No reply by ``deadline``.  The
            connection stays usable; the late reply is dropped.
        :raise ExecInterruptedError: The connection ended first.
        :raise StateError: The connection had ended already.
        :raise ValueError: A bad command (see `SessionCore.prepare`), or
            another command with this id is waiting.
        :raise ReentrantCallError: Called from inside another call.
        """
        core = self._core
        self._enter()
        try:
            exec_id, wire = core.prepare(msg, assign_id)
            slot = _Slot()
            with self._lock:
                if core.phase is Phase.ENDED:
                    raise self._not_connected()
                key = core.add_pending(exec_id, slot)
            reply = self._send_and_wait(bytes(wire) + b'\n', key, slot,
                                        deadline)
            if isinstance(reply, Exception):
                raise reply  # a reply over the limit: this command failed
            return wire, reply
        finally:
            self._leave()

    def _send_and_wait(self, data: bytes, key: Hashable, slot: _Slot,
                       deadline: Optional[float]
                       ) -> Union[Message, Exception]:
        try:
            self._send(data, deadline)
            # (mypy joins Message and Exception into object here.)
            reply = cast(Optional[Union[Message, Exception]],
                         self._wait(lambda: slot.reply, deadline))
        except BaseException as exc:
            with self._lock:
                self._core.abandon(key, slot)
            if not isinstance(exc, Exception):
                self.close()
            raise
        if reply is None:
            with self._lock:
                self._core.abandon(key, slot)
            raise asyncio.TimeoutError
        return reply

    def _not_connected(self) -> StateError:
        reason = self._core.end_reason
        assert reason is not None
        if self._closed:
            text = "The connection was closed."
        else:
            text = (f"The server closed the connection "
                    f"({exception_summary(reason)}).")
        error = StateError(text, Runstate.DISCONNECTING, Runstate.RUNNING)
        error.__cause__ = reason
        return error

    # ------------------------------------------------------------------
    # Events
    # ------------------------------------------------------------------

    def next_event(self, deadline: Optional[float]) -> Optional[Message]:
        """
        Return the oldest event, reading until ``deadline`` if none is
        pending (a deadline in the past still reads what has arrived).

        :return: The event, or `None` if none came by ``deadline``.
        :raise EOFError: No event is pending and the connection ended, so
            none can come.
        :raise ReentrantCallError: Called from inside another call.
        """
        events = self._events
        self._enter()
        try:
            return self._wait(
                lambda: events.popleft() if events else None, deadline)
        except ExecInterruptedError as err:
            raise EOFError(
                "the connection is closed: no event can arrive") from err
        finally:
            self._leave()

    def take_events(self) -> List[Message]:
        """
        Return every pending event, after reading what has arrived.

        Events received before the connection ended are still returned.

        :raise ReentrantCallError: Called from inside another call.
        """
        self._enter()
        try:
            try:
                self._wait(lambda: None, time.monotonic())
            except ExecInterruptedError:
                pass  # the connection ended; what it brought is still here
            with self._lock:
                events = list(self._events)
                self._events.clear()
            return events
        finally:
            self._leave()

    # ------------------------------------------------------------------
    # Reading, and acting on what the core says
    # ------------------------------------------------------------------

    def _wait(self, take: Callable[[], Optional[_T]],
              deadline: Optional[float]) -> Optional[_T]:
        """
        Read until ``take()`` returns something, and return it.

        ``take`` runs under the lock.  Before giving up at ``deadline``,
        what has already arrived is read (up to `_LATE_READ_BYTES`, so a
        server that never stops sending cannot keep a caller here), unless
        another thread is reading.

        :return: What ``take`` returned, or `None` at ``deadline``.
        :raise ExecInterruptedError: The connection ended and ``take`` has
            nothing; ``__cause__`` says why it ended.
        """
        received: Union[bytes, OSError, None] = None
        thread = threading.get_ident()
        late_reads = 0  # reads made once the deadline had passed
        late_bytes = 0  # and the bytes they brought
        read = False
        # Whether this thread has the reader role: set in the statements
        # that take and give it up, so that a signal handled anywhere in
        # between cannot leave the role taken by nobody.
        reading = False
        while True:
            try:
                with self._lock:
                    if read:
                        read = False
                        self._reading = reading = False
                        if received is not None:
                            if late_reads and type(received) is bytes:
                                late_bytes += len(received)
                            self._take_in(received)
                        if self._sleepers:
                            self._changed.notify_all()
                    value = take()
                    if value is not None:
                        return value
                    if self._core.phase is Phase.ENDED:
                        raise self._core.interrupted()
                    remaining = None if deadline is None \
                        else deadline - time.monotonic()
                    out_of_time = remaining is not None and remaining <= 0
                    if self._reading:
                        if out_of_time:
                            return None
                        self._sleepers += 1
                        try:
                            self._changed.wait(_slice(remaining))
                        finally:
                            self._sleepers -= 1
                        continue
                    if out_of_time:
                        # The last read found nothing waiting, or read enough.
                        if (late_reads and received is None) \
                                or late_bytes >= _LATE_READ_BYTES:
                            return None
                        late_reads += 1
                    self._reader = thread
                    self._reading = reading = True
                received = self._read(remaining)
                read = True
            except BaseException:
                if reading:
                    with self._lock:
                        self._reading = False
                        if read and received is not None:
                            self._take_in(received)  # read, not yet taken
                        self._changed.notify_all()
                raise

    def _read(self, timeout: Optional[float]
              ) -> Union[bytes, OSError, None]:
        """
        Read once, unlocked, blocking for one `SIGNAL_CHECK_INTERVAL` at
        most (less if ``timeout`` is shorter; `None`: no deadline).

        :return: The bytes (``b''`` at end of stream), the error that
            reading raised, or `None` if nothing came in time.
        """
        try:
            if timeout is not None or not self._recv_bounded:
                if not self._readable.poll(_milliseconds(_slice(timeout))):
                    return None
            return self._sock.recv(RECV_SIZE)
        except BlockingIOError:  # SO_RCVTIMEO: nothing came in a slice
            return None
        except OSError as err:
            return err

    def _take_in(self, received: Union[bytes, OSError]) -> None:
        """Feed what one read brought to the core, and act on what it
        says; called with the lock held."""
        core = self._core
        recorder = self.recorder
        if recorder is not None and (isinstance(received, OSError)
                                     or not received):
            recorder.closed(SERVER)  # it hung up, or reset the connection
        if isinstance(received, OSError):
            core.connection_lost(received)
            return
        core.receive_data(received)
        debug = self._debug
        while True:
            item = core.next_message()
            if type(item) is Message:
                if debug:
                    self._logger.debug("< %s", item)
                if recorder is not None:
                    recorder.record(SERVER, item)
                event = core.route(item)
                if event is item:
                    self._events.append(item)
                elif type(event) is Reply:
                    event.waiter.reply = event.msg
                elif type(event) is SessionEnded:
                    return
                # The greeting and the negotiation's end: core.phase.
            elif item is None:
                return
            elif type(item) is ReplyFailed:
                item.waiter.reply = item.error
            else:
                return  # SessionEnded

    # ------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------

    def _send(self, data: bytes, deadline: Optional[float]) -> None:
        """
        Send ``data`` whole, by ``deadline``.

        :raise asyncio.TimeoutError: Not sent by ``deadline``.  If part of
            it went out, the stream is broken: the connection ends.
        :raise ExecInterruptedError: The connection failed.
        """
        if self._debug:
            self._logger.debug("> %s", data.rstrip(b'\n').decode())
        if self.recorder is not None:
            record_wire(self.recorder, CLIENT, data)
        try:
            if deadline is None:
                # A with statement: a signal handled just as the lock is
                # taken cannot leave it taken (close() would wait forever).
                with self._send_lock:
                    self._send_all(data, math.inf)
            else:
                self._send_by(data, deadline)
        except asyncio.TimeoutError:
            raise  # an OSError too, from Python 3.11 on
        except OSError as err:
            if self._closed:
                raise self._core.interrupted() from None
            # The peer is gone (EPIPE, ECONNRESET): read what it sent
            # before going, so its last events are kept and the end of
            # the stream is known.
            try:
                self._wait(lambda: None, time.monotonic())
            except ExecInterruptedError:
                pass
            raise ExecInterruptedError(
                f"could not send the command: {exception_summary(err)}"
            ) from err

    def _send_by(self, data: bytes, deadline: float) -> None:
        """`_send_all`, the send lock taken by ``deadline`` too."""
        while not self._send_lock.acquire(
                timeout=_slice(deadline - time.monotonic())):
            if deadline <= time.monotonic():
                raise asyncio.TimeoutError
        try:
            self._send_all(data, deadline)
        finally:
            self._send_lock.release()

    def _send_all(self, data: bytes, deadline: float) -> None:
        """Send all of ``data`` by ``deadline`` (``math.inf``: none),
        blocking for a slice at a time; the send lock is held."""
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += self._sock.send(view[sent:], _NOSIGNAL | _DONTWAIT)
            except BlockingIOError:
                if not self._wait_writable(deadline):
                    if sent:
                        self._break("a command timed out half sent")
                    raise asyncio.TimeoutError from None

    def _wait_writable(self, deadline: float) -> bool:
        """Wait one slice for the socket to take more, unless
        ``deadline`` (``math.inf``: none) has passed.

        :return: `False` if it had.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._writable.poll(_milliseconds(_slice(remaining)))
        return True

    def _break(self, why: str) -> None:
        """End the session because the stream can no longer be trusted."""
        with self._lock:
            self._core.connection_lost(QMPError(why))
            self._changed.notify_all()
        self._shutdown()

    def send_fd(self, fd: int) -> None:
        """
        Pass file descriptor ``fd`` to the server (SCM_RIGHTS).

        It goes with one space byte, which the server's JSON parser skips.

        :raise OSError: ``fd`` is not an open descriptor (``EBADF``):
            nothing is sent.
        :raise QMPError: Not a UNIX socket.
        :raise StateError: The connection has ended.
        :raise ReentrantCallError: Called from inside another call.
        """
        if not self._can_pass_fds:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        self._enter()
        try:
            with self._lock:
                if self._core.phase is Phase.ENDED:
                    raise self._not_connected()
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          struct.pack('@i', fd))]
            with self._send_lock:
                while True:
                    try:
                        self._sock.sendmsg([b' '], ancillary,
                                           _NOSIGNAL | _DONTWAIT)
                        break
                    except BlockingIOError:
                        self._wait_writable(math.inf)
        finally:
            self._leave()

    # ------------------------------------------------------------------
    # Closing
    # ------------------------------------------------------------------

    def close(self) -> None:
        """
        Close the connection; idempotent, and never raises.

        Threads waiting for a reply get `ExecInterruptedError`, those
        waiting for an event `EOFError`.  Called by a thread that is inside
        a call (a signal handler), it wakes that call, which then finishes
        the close.  In a forked child, it closes only the child's copy of
        the socket.
        """
        if os.getpid() != self._pid:
            # The socket is shared with the parent: no shutdown(), which
            # would end the parent's session too.
            self._closed = True
            self._sock.close()
            return
        if self._inside_a_call():
            # The interrupted call may hold the lock: do only what needs
            # none, and let that call finish the close on its way out.
            self._close_deferred = True
            self._core.close()
            self._shutdown()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._core.close()
            self._changed.notify_all()
        self._shutdown()
        # Wait for a sender and a reader to leave the descriptor alone.
        # If the reader role is this thread's, it is not reading (it is
        # here): a signal took it out of a read as it ended.
        thread = threading.get_ident()
        with self._send_lock:
            with self._lock:
                self._sleepers += 1
                try:
                    while self._reading and self._reader != thread:
                        self._changed.wait()
                    self._reading = False
                finally:
                    self._sleepers -= 1
            self._sock.close()

    def _shutdown(self) -> None:
        # Wakes threads blocked in recv() or send() on this socket.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing to wake
