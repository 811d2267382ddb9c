"""
What lives for one connection of an `AsyncProtocol`.  Private.

`Connection` holds everything a session owns, from the connection attempt
to the end of its teardown: the streams, the line buffer, the listening
socket while accepting, the reader, writer and disconnect tasks, the
errors that ended it, and the subclass's protocol state (`QMPClient`'s
`SessionCore`).  `AsyncProtocol` makes one when a connection attempt
starts and replaces it with a blank one when it is back to IDLE: nothing
of a session is reset field by field, so nothing can be forgotten.
"""

from __future__ import annotations

import asyncio
import socket
from ssl import SSLContext
from typing import Any, Callable, Generic, List, Optional, TypeVar

from ._sockets import Streams
from .codec import LineBuffer


T = TypeVar('T')


class Outbox(Generic[T]):
    """
    Messages waiting to be written, in order, and the flush that writes
    them.

    The first message put in an empty outbox schedules ``flush(outbox)``
    for the next event loop iteration; everything put meanwhile goes out
    in the same write.  An idle session so costs a list, not a queue and a
    writer task waiting on it (thousands of sessions in one process).

    It answers the part of `asyncio.Queue` that the reference library's
    subclasses use on ``_outgoing``: `put`, `put_nowait`, `empty`,
    `qsize`.

    :param flush: Called with this outbox, soon after a message arrives.
    """

    __slots__ = ('_messages', '_flush', 'flush_scheduled', 'paused',
                 'held')

    def __init__(self, flush: Callable[['Outbox[T]'], None]) -> None:
        self._messages: List[T] = []
        self._flush = flush
        #: A flush is due in the event loop.
        self.flush_scheduled = False
        #: The transport takes no more for now; a task waits until it
        #: does, then flushes (`AsyncProtocol._bh_send_message`).
        self.paused = False
        #: The session is not running yet: messages wait for `release`,
        #: after the handshakes (which use ``_send``).
        self.held = True

    def put_nowait(self, msg: T) -> None:
        """Queue ``msg``; it is written in the next loop iteration."""
        self._messages.append(msg)
        if not (self.flush_scheduled or self.paused or self.held):
            self._schedule()

    def release(self) -> None:
        """The session runs: write what waits, and from now on."""
        self.held = False
        if self._messages and not self.flush_scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self.flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush, self)

    async def put(self, msg: T) -> None:
        """Queue ``msg`` (an outbox is never full)."""
        self.put_nowait(msg)

    def empty(self) -> bool:
        """Whether nothing waits to be written."""
        return not self._messages

    def qsize(self) -> int:
        """How many messages wait to be written."""
        return len(self._messages)

    def take(self) -> List[T]:
        """Everything waiting, oldest first; the outbox is then empty."""
        messages, self._messages = self._messages, []
        return messages


class Connection(Generic[T]):
    """
    One connection's state.

    :param address: Where it connects or listens (`None` for the blank
        one of an idle object).
    :param readbuflen: The longest line accepted.
    :param flush: What writes the outbox (see `Outbox`).
    """

    __slots__ = ('address', 'connect_note', 'outgoing', 'lines', 'reader',
                 'writer',
                 'listener', 'accept_ssl', 'accepted', 'accept_task',
                 'reader_task', 'writer_task', 'write_batch', 'dc_task',
                 'errors', 'protocol_state', 'large_reads', '__weakref__')

    def __init__(self, address: object, readbuflen: int,
                 flush: Callable[[Outbox[T]], None]) -> None:
        #: Where the session connects or listens, for error messages.
        self.address = address
        #: How the connection was tried, for the error when it failed.
        self.connect_note = ''
        #: Messages waiting to be written.
        self.outgoing: Outbox[T] = Outbox(flush)
        #: The stream's one line buffer: every reader of it goes through
        #: it, so no byte is read twice or lost.
        self.lines = LineBuffer(readbuflen)
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        #: Whether the transport reads in large pieces, for a large
        #: message (see _sockets.LARGE_RECV_SIZE).
        self.large_reads = False
        #: While listening (start_server() to accept()).
        self.listener: Optional[socket.socket] = None
        self.accept_ssl: Optional[SSLContext] = None
        #: Set by _do_start_server, cleared by _do_accept: accept() needs
        #: it (the hook contract of the reference library's subclasses).
        self.accepted: Optional[asyncio.Event] = None
        #: _do_accept's wait for the peer, while it waits.
        self.accept_task: Optional[asyncio.Future[Streams]] = None
        self.reader_task: Optional[asyncio.Task[None]] = None
        #: Only while the transport takes no more: the wait until it does.
        self.writer_task: Optional[asyncio.Task[None]] = None
        #: While a flush sends a batch, _write() collects here.
        self.write_batch: Optional[List[bytes]] = None
        #: The teardown, in a task of its own so that one started by the
        #: reader or writer can wait for both to exit.
        self.dc_task: Optional[asyncio.Future[None]] = None
        #: Errors that ended the bottom half, first one first.
        self.errors: List[BaseException] = []
        #: The subclass's protocol state for this session, if any.
        self.protocol_state: Any = None
