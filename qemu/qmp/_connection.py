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
from typing import Any, Generic, List, Optional, TypeVar

from ._sockets import Streams
from .codec import LineBuffer


T = TypeVar('T')


class Connection(Generic[T]):
    """
    One connection's state.

    :param address: Where it connects or listens (`None` for the blank
        one of an idle object).
    :param readbuflen: The longest line accepted.
    :param outgoing: The writer task's queue; a blank connection has
        none (it is made in the event loop that runs the session).
    """

    __slots__ = ('address', 'connect_note', 'outgoing', 'lines', 'reader',
                 'writer',
                 'listener', 'accept_ssl', 'accepted', 'accept_task',
                 'reader_task', 'writer_task', 'write_batch', 'dc_task',
                 'errors', 'protocol_state', '__weakref__')

    def __init__(self, address: object, readbuflen: int,
                 outgoing: Optional[asyncio.Queue[T]] = None) -> None:
        #: Where the session connects or listens, for error messages.
        self.address = address
        #: How the connection was tried, for the error when it failed.
        self.connect_note = ''
        if outgoing is not None:
            #: Messages waiting for the writer task.
            self.outgoing: asyncio.Queue[T] = outgoing
        #: The stream's one line buffer: every reader of it goes through
        #: it, so no byte is read twice or lost.
        self.lines = LineBuffer(readbuflen)
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        #: While listening (start_server() to accept()).
        self.listener: Optional[socket.socket] = None
        self.accept_ssl: Optional[SSLContext] = None
        #: Set by _do_start_server, cleared by _do_accept: accept() needs
        #: it (the hook contract of the reference library's subclasses).
        self.accepted: Optional[asyncio.Event] = None
        #: _do_accept's wait for the peer, while it waits.
        self.accept_task: Optional[asyncio.Future[Streams]] = None
        self.reader_task: Optional[asyncio.Task[None]] = None
        self.writer_task: Optional[asyncio.Task[None]] = None
        #: While the writer task sends a batch, _write() collects here.
        self.write_batch: Optional[List[bytes]] = None
        #: The teardown, in a task of its own so that one started by the
        #: reader or writer can wait for both to exit.
        self.dc_task: Optional[asyncio.Future[None]] = None
        #: Errors that ended the bottom half, first one first.
        self.errors: List[Exception] = []
        #: The subclass's protocol state for this session, if any.
        self.protocol_state: Any = None
