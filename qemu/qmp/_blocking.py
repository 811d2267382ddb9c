"""
A blocking QMP connection that any number of threads can share.  Private.

`BlockingConnection` owns one connected socket and the `Codec` that reads
it.  It sends commands, hands each reply to the thread that waits for it
(by id), and keeps events in a FIFO.  It has no thread of its own and no
event loop, so nothing of it can outlive the caller or block interpreter
exit.

Strategy, "whoever waits, reads": a thread that needs something from the
server (its reply, an event) takes the reader role if nobody has it, reads
once without holding the lock, then routes everything that arrived under
the lock, wakes the other waiters and gives the role up.  While another
thread reads, a waiter sleeps on a condition and is woken after every read
(then takes the role itself if it still has nothing).  So one thread alone
costs one ``send`` and one ``recv`` per command, and a thread blocked in
``pull_event(wait=True)`` reads the replies of every other thread.

Sending has a lock of its own, so a thread stuck writing to a server that
stopped reading never blocks the routing of replies.

`close` first shuts the socket down, which wakes a thread blocked in
``recv`` or ``send``, then waits for it to leave before closing the file
descriptor, so no thread can ever use a descriptor number that was reused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import select
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from typing import (
    Callable,
    Deque,
    Dict,
    Hashable,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from ._ids import reply_key
from ._sockets import READ_SIZE
from .codec import Codec, MessageTooLongError
from .error import ProtocolError, QMPError
from .message import Message
from .protocol import Runstate, StateError
from .replies import ExecInterruptedError, ServerParseError
from .util import exception_summary


_T = TypeVar('_T')

# Never let SIGPIPE kill the process (Python ignores it, but an embedding
# application may not); non-blocking single sends for timed commands.
_NOSIGNAL = getattr(socket, 'MSG_NOSIGNAL', 0)
_DONTWAIT = getattr(socket, 'MSG_DONTWAIT', 0)

# How many timed-out command ids to remember, so their late replies are
# dropped quietly; older ones are dropped with a warning like unknown ids.
_ABANDONED_KEPT = 1000

# How many reads a wait makes after its deadline passed, to take in what
# has already arrived (the end of the stream included).
_LATE_READS = 16

# Marks a member missing from a message (None is a valid JSON id).
_ABSENT = object()

# A read's result: the messages decoded (or, for a reply over the limit
# whose id is known, the error that replaces it), and why the stream
# ended, if it did.
_Batch = Tuple[List[Union[Message, MessageTooLongError]], Optional[Exception]]


def _milliseconds(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class BlockingConnection:
    """
    One QMP session over a connected, blocking socket.

    :param sock: The connected socket; this object owns and closes it.
    :param limit: The longest message accepted, in bytes.
    :param logger: Where to log.
    """

    def __init__(self, sock: socket.socket, limit: int,
                 logger: logging.Logger) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._codec = Codec(limit)
        self._logger = logger
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._can_pass_fds = sock.family == socket.AF_UNIX

        # _lock guards everything below it; _changed wakes waiters after
        # each read and when the connection ends.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sleepers = 0
        self._reading = False
        self._greeting_pending = False
        self._greeting: Optional[Message] = None
        # Ids whose callers wait; replies that came for them.
        self._waiting: Set[Hashable] = set()
        self._replies: Dict[Hashable, Union[Message, Exception]] = {}
        # Ids whose callers gave up; their late replies drop quietly.
        self._abandoned: OrderedDict[Hashable, None] = OrderedDict()
        self._events: Deque[Message] = deque()
        # Why no more messages can arrive; set once.
        self._ended: Optional[BaseException] = None
        self._closed = False

        self._send_lock = threading.Lock()
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)

    @property
    def ended(self) -> bool:
        """Whether the session is over: no more messages can arrive."""
        return self._ended is not None

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # ------------------------------------------------------------------
    # Commands and greeting
    # ------------------------------------------------------------------

    def execute(self, data: bytes, exec_id: object,
                deadline: Optional[float]) -> Message:
        """
        Send an encoded command whose id is ``exec_id``; return its reply.

        A `KeyboardInterrupt` (or any `BaseException` that is not an
        `Exception`) while waiting closes the connection before it
        propagates: the session is never left with a reply in limbo.

        :param data: The command, encoded (`Codec.encode`).
        :param exec_id: Its id, as in ``data``.
        :param deadline: `time.monotonic` time to give up at, or `None`.
        :raise asyncio.TimeoutError: No reply by ``deadline``.  The
            connection stays usable; the late reply is dropped.
        :raise ExecInterruptedError: The connection ended first.
        :raise StateError: The connection had ended already.
        :raise ValueError: Another command with this id is waiting.
        """
        key = reply_key(exec_id)
        with self._lock:
            if self._ended is not None:
                raise self._not_connected()
            if key in self._waiting:
                raise ValueError(f"ID {exec_id!r} is in use by a command "
                                 f"still waiting for its reply")
            self._waiting.add(key)
        try:
            sent = False
            self._send(data, deadline)
            sent = True
            replies = self._replies

            def take() -> Optional[Union[Message, Exception]]:
                return replies.pop(key, None)
            # (mypy joins Message and Exception into object here.)
            reply = cast(Optional[Union[Message, Exception]],
                         self._wait(take, deadline))
        except BaseException as exc:
            with self._lock:
                self._waiting.discard(key)
                self._replies.pop(key, None)
                if sent:
                    self._abandon(key)
            if not isinstance(exc, Exception):
                self.close()
            raise
        with self._lock:
            self._waiting.discard(key)
            if reply is None:
                self._abandon(key)
        if reply is None:
            raise asyncio.TimeoutError
        if isinstance(reply, Exception):
            raise reply  # a reply over the limit: this command failed
        return reply

    def _abandon(self, key: Hashable) -> None:
        abandoned = self._abandoned
        abandoned[key] = None
        if len(abandoned) > _ABANDONED_KEPT:
            abandoned.popitem(last=False)

    def greeting(self, deadline: Optional[float]) -> Message:
        """
        Wait for the first message of the session, the server's greeting.

        Call it before anything else is read.

        :raise asyncio.TimeoutError: Nothing by ``deadline``.
        :raise EOFError, OSError, ProtocolError: The connection ended
            first (the root cause is raised, not wrapped).
        """
        with self._lock:
            self._greeting_pending = True
        try:
            greeting = self._wait(lambda: self._greeting, deadline)
        except ExecInterruptedError as err:
            assert err.__cause__ is not None
            raise err.__cause__ from None
        if greeting is None:
            raise asyncio.TimeoutError
        return greeting

    def _not_connected(self) -> StateError:
        if self._closed:
            reason = "The connection was closed."
        else:
            reason = (f"The server closed the connection "
                      f"({exception_summary(self._ended)})."
                      if self._ended is not None else "Not connected.")
        error = StateError(reason, Runstate.DISCONNECTING, Runstate.RUNNING)
        error.__cause__ = self._ended
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
        """
        events = self._events
        try:
            return self._wait(
                lambda: events.popleft() if events else None, deadline)
        except ExecInterruptedError as err:
            raise EOFError(
                "the connection is closed: no event can arrive") from err

    def take_events(self) -> List[Message]:
        """
        Return every pending event, after reading what has arrived.

        Events received before the connection ended are still returned.
        """
        try:
            self._wait(lambda: None, time.monotonic())
        except ExecInterruptedError:
            pass  # the connection ended; what it brought is still here
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    # ------------------------------------------------------------------
    # Reading and routing
    # ------------------------------------------------------------------

    def _wait(self, take: Callable[[], Optional[_T]],
              deadline: Optional[float]) -> Optional[_T]:
        """
        Read and route until ``take()`` returns something, and return it.

        ``take`` runs under the lock.  Before giving up at ``deadline``,
        what has already arrived is read (up to `_LATE_READS` reads, so a
        server that never stops sending cannot keep a caller here), unless
        another thread is reading.

        :return: What ``take`` returned, or `None` at ``deadline``.
        :raise ExecInterruptedError: The connection ended and ``take`` has
            nothing; ``__cause__`` says why it ended.
        """
        batch: Optional[_Batch] = None
        late_reads = 0  # reads made once the deadline had passed
        drained = False  # the last read found nothing waiting
        read = False
        while True:
            with self._lock:
                if read:
                    read = False
                    self._reading = False
                    if batch is not None:
                        self._route(batch)
                    if self._sleepers:
                        self._changed.notify_all()
                value = take()
                if value is not None:
                    return value
                if self._ended is not None:
                    raise self._interrupted()
                remaining = None if deadline is None \
                    else deadline - time.monotonic()
                out_of_time = remaining is not None and remaining <= 0
                if self._reading:
                    if out_of_time:
                        return None
                    self._sleepers += 1
                    try:
                        self._changed.wait(remaining)
                    finally:
                        self._sleepers -= 1
                    continue
                if out_of_time:
                    if drained or late_reads == _LATE_READS:
                        return None
                    late_reads += 1
                self._reading = True
            try:
                batch = self._read(remaining)
                drained = batch is None
                read = True
            except BaseException:
                with self._lock:
                    self._reading = False
                    self._changed.notify_all()
                raise

    def _interrupted(self) -> ExecInterruptedError:
        if self._closed or self._ended is None:
            text = "the connection was closed before the reply arrived"
        else:
            text = (f"the connection ended before the reply arrived: "
                    f"{exception_summary(self._ended)}")
        error = ExecInterruptedError(text)
        error.__cause__ = self._ended
        return error

    def _read(self, timeout: Optional[float]) -> Optional[_Batch]:
        """
        Read once (up to ``timeout`` seconds) and decode, unlocked.

        :return: What was read, or `None` if nothing came in time.
        """
        try:
            if timeout is not None and \
                    not self._readable.poll(_milliseconds(timeout)):
                return None
            data = self._sock.recv(READ_SIZE)
        except OSError as err:
            return [], err
        codec = self._codec
        codec.feed(data)
        messages: List[Union[Message, MessageTooLongError]] = []
        while True:
            try:
                msg = codec.next_message()
            except MessageTooLongError as err:
                if not err.has_reply_id:
                    return messages, err
                messages.append(err)  # fails only its own command
                continue
            except (ProtocolError, EOFError) as err:
                return messages, err
            if msg is None:
                return messages, None
            messages.append(msg)

    def _route(self, batch: _Batch) -> None:
        """Hand out what one read brought; called with the lock held."""
        messages, end = batch
        for msg in messages:
            if isinstance(msg, MessageTooLongError):
                self._logger.warning("A reply over the size limit (id %r): "
                                     "%s", msg.reply_id, msg)
                self._route_reply(msg.reply_id, msg)
                continue
            if self._debug:
                self._logger.debug("< %s", msg)
            if self._greeting_pending:
                self._greeting_pending = False
                self._greeting = msg
                continue
            exec_id = msg.get('id', _ABSENT)
            if exec_id is not _ABSENT:
                self._route_reply(exec_id, msg)
            elif 'event' in msg:
                if type(msg['event']) is str:
                    self._events.append(msg)
                else:
                    self._logger.warning("Dropping event without a name: "
                                         "%s", msg)
            elif 'error' in msg:
                # The server could not parse what we sent, so which
                # command failed is unknown: nothing more can be trusted.
                end = ServerParseError(
                    "Server sent an error response without an ID: it "
                    "could not parse a command.", msg)
                break
            else:
                self._logger.warning("Dropping unexpected message: %s", msg)
        if end is not None:
            self._end(end)

    def _route_reply(self, exec_id: object,
                     msg: Union[Message, Exception]) -> None:
        key = reply_key(exec_id)
        if key in self._waiting:
            self._replies[key] = msg
        elif key in self._abandoned:
            del self._abandoned[key]
            self._logger.debug("Dropping the late reply to id %r, whose "
                               "caller stopped waiting", exec_id)
        else:
            # The QMP spec: clients drop replies with an unknown id.
            self._logger.warning("Dropping reply with unknown id %r",
                                 exec_id)

    def _end(self, why: BaseException) -> None:
        """Record why the stream ended (the first reason only)."""
        if self._ended is not None:
            return
        self._ended = why
        if self._closed:
            return
        if isinstance(why, EOFError) and not isinstance(why, ProtocolError):
            self._logger.info("The server closed the connection.")
        else:
            self._logger.error("The connection ended: %s",
                               exception_summary(why))

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
        try:
            if deadline is None:
                with self._send_lock:
                    self._sock.sendall(data, _NOSIGNAL)
            else:
                self._send_by(data, deadline)
        except asyncio.TimeoutError:
            raise  # an OSError too, from Python 3.11 on
        except OSError as err:
            if self._closed:
                raise self._interrupted() from None
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
        if not self._send_lock.acquire(
                timeout=max(0.0, deadline - time.monotonic())):
            raise asyncio.TimeoutError
        try:
            view = memoryview(data)
            sent = 0
            while sent < len(data):
                try:
                    sent += self._sock.send(view[sent:],
                                            _NOSIGNAL | _DONTWAIT)
                    continue
                except BlockingIOError:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or \
                        not self._writable.poll(_milliseconds(remaining)):
                    if sent:
                        self._break("a command timed out half sent")
                    raise asyncio.TimeoutError
        finally:
            self._send_lock.release()

    def _break(self, why: str) -> None:
        """End the session because the stream can no longer be trusted."""
        with self._lock:
            self._end(QMPError(why))
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
        """
        if not self._can_pass_fds:
            raise QMPError("Sending file descriptors requires a UNIX socket.")
        with self._lock:
            if self._ended is not None:
                raise self._not_connected()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                      struct.pack('@i', fd))]
        with self._send_lock:
            self._sock.sendmsg([b' '], ancillary, _NOSIGNAL)

    # ------------------------------------------------------------------
    # Closing
    # ------------------------------------------------------------------

    def close(self) -> None:
        """
        Close the connection; idempotent, and never raises.

        Threads waiting for a reply get `ExecInterruptedError`, those
        waiting for an event `EOFError`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._ended is None:
                self._ended = EOFError("the connection was closed")
            self._changed.notify_all()
        self._shutdown()
        # Wait for a sender and a reader to leave the descriptor alone.
        with self._send_lock:
            with self._lock:
                self._sleepers += 1
                try:
                    while self._reading:
                        self._changed.wait()
                finally:
                    self._sleepers -= 1
            self._sock.close()

    def _shutdown(self) -> None:
        # Wakes threads blocked in recv() or send() on this socket.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing to wake
