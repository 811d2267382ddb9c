"""
Transport plumbing for both clients: open, listen, accept.

Private.  Every function takes an address in one of the accepted forms (a
UNIX socket path, a ``(host, port)`` tuple, or a `socket.socket` that is
already connected).  The coroutines hand back asyncio streams, for
`AsyncProtocol`; the ``*_blocking`` functions hand back blocking sockets,
for the legacy client.  Only `OSError` and `ssl.SSLError` (itself an
`OSError`) are expected out of here, plus `TypeError` for an address of
the wrong type.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import time
from ssl import SSLContext
from typing import (
    Any,
    Callable,
    Iterable,
    Optional,
    Sequence,
    SupportsIndex,
    Tuple,
    Union,
    cast,
)

from .util import plain_error


#: A UNIX socket path or a ``(host, port)`` TCP address.
SocketAddrT = Union[str, Tuple[str, int]]

Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: What a `RoutingReader` hands each received chunk to: `None` to go on,
#: anything else to stop routing and end the wait with it.
Router = Callable[[bytes], object]


class RoutingReader(asyncio.StreamReader):
    """
    A stream reader that can hand what arrives straight to a router.

    While a router is set (`route_to`), each chunk the transport delivers
    goes to it, in the event loop's callback, rather than into the
    reader's buffer: the client routes replies and events there and then,
    with no task woken and no read coroutine made per message.  The wait
    `route_to` returns ends, and later chunks are buffered as usual, when
    the router returns something other than `None` (that is the wait's
    result), when it raises (the wait's exception), or at end of stream or
    a transport error (`None`: the reader then holds what to read next).
    """

    # StreamReader's own buffer, which typeshed does not declare.
    _buffer: bytearray

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        #: The router, while one is set.
        self.router: Optional[Router] = None
        self._routed: Optional[asyncio.Future[object]] = None

    def can_route(self) -> bool:
        """Whether nothing is buffered or pending: no byte would be
        passed over by routing what comes next."""
        # (StreamReader has no public test for an empty buffer.)
        return not self._buffer and not self.at_eof() \
            and self.exception() is None

    def route_to(self, router: Router) -> 'asyncio.Future[object]':
        """
        Hand what arrives to ``router`` until it returns something.

        :return: The wait for routing to stop (see the class).
        """
        assert self._routed is None and self.can_route()
        routed = asyncio.get_running_loop().create_future()
        self.router, self._routed = router, routed
        return routed

    def hold(self) -> None:
        """Buffer what arrives from now on, and leave the wait as it is,
        for its waiter to end (the session is ending)."""
        self.router = None

    def stop_routing(self) -> None:
        """Buffer what arrives from now on: the wait `route_to` returned
        ended, or its waiter went away."""
        routed = self._routed
        self.router = self._routed = None
        if routed is not None and routed.done() and not routed.cancelled():
            # Ended just before its waiter was cancelled, maybe with an
            # error nobody would read (asyncio would log it).
            routed.exception()

    def _end_routing(self, outcome: object,
                     error: Optional[BaseException] = None) -> None:
        # (The wait stays known until stop_routing(), for the case above.)
        routed = self._routed
        assert routed is not None
        self.router = None
        if routed.done():
            return  # its waiter was cancelled and has not run since
        if error is None:
            routed.set_result(outcome)
        else:
            routed.set_exception(plain_error(error))

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        router, routed = self.router, self._routed
        # Not once the wait is cancelled (its task is, by disconnect()):
        # what arrives before that task runs again stays unread.
        if router is None or routed is None or routed.done() or not data:
            super().feed_data(data)
            return
        try:
            # (Transports deliver bytes.)
            outcome = router(cast(bytes, data))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:  # pylint: disable=broad-except
            # User code's in the router (_cb_inbound, a recorder): the
            # reader task ends the session with it.
            self._end_routing(None, err)
        else:
            if outcome is not None:
                self._end_routing(outcome)

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.router is not None:
            self._end_routing(None)

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self.router is not None:
            self._end_routing(None)


# One result of getaddrinfo(): family, type, proto, canonname, sockaddr.
AddrInfo = Tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]

#: The longest single blocking wait, in seconds: poll(), settimeout(),
#: Condition.wait() and Lock.acquire() overflow on much longer ones.
LONGEST_WAIT = 24 * 3600.0

# How many bytes one read takes from the stream at most; large enough that a
# burst of messages is split into lines in one pass.
READ_SIZE = 256 * 1024


# How many bytes one recv() asks for, in asyncio's socket transport and in
# the blocking client.  recv() allocates that much before it knows how much
# came: from glibc's mmap threshold (128 KiB) up, that costs an mmap, an
# mremap and a munmap per read, about a tenth of a small command's CPU time
# (asyncio's own default is 256 KiB).  Just below it, large replies still
# come in large pieces.
RECV_SIZE = 127 * 1024

#: What asyncio's transport asks for by default; `QMPClient` switches to it
#: while a large message streams in (fewer, fuller reads), and back.
LARGE_RECV_SIZE = 256 * 1024


def set_recv_size(writer: asyncio.StreamWriter, size: int) -> None:
    """Make ``writer``'s transport ask recv() for ``size`` bytes at most.

    Only asyncio's plain socket transport has this setting (``max_size``);
    TLS's and uvloop's read into buffers of their own and are left alone.
    """
    transport = writer.transport
    if hasattr(transport, 'max_size'):
        transport.max_size = size


def _read_below_mmap_threshold(streams: Streams) -> Streams:
    set_recv_size(streams[1], RECV_SIZE)
    return streams


async def open_stream(address: Union[SocketAddrT, socket.socket],
                      ssl: Optional[SSLContext], limit: int) -> Streams:
    """
    Connect to ``address`` and return its streams.

    :raise OSError: The connection failed.
    :raise TypeError: ``address`` is none of the accepted forms.
    """
    loop = asyncio.get_running_loop()
    reader = RoutingReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    if isinstance(address, socket.socket):
        transport, _ = await loop.create_connection(
            lambda: protocol, sock=address, ssl=ssl,
            server_hostname='' if ssl else None)
    elif isinstance(address, str):
        transport, _ = await loop.create_unix_connection(
            lambda: protocol, address, ssl=ssl,
            server_hostname='' if ssl else None)
    else:
        host, port = _tcp_address(address)
        transport, _ = await loop.create_connection(
            lambda: protocol, host, port, ssl=ssl)
    streams = (reader, asyncio.StreamWriter(transport, protocol, reader, loop))
    return _read_below_mmap_threshold(streams)


def describe(address: object) -> str:
    """
    An address as people write it: a path, ``host:port``, ``[v6]:port``.

    >>> describe('/tmp/qmp.sock'), describe(('::1', 4444))
    ('/tmp/qmp.sock', '[::1]:4444')
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ':' in host \
            else f"{host}:{address[1]}"
    if isinstance(address, socket.socket):
        return f"socket fd={address.fileno()}"
    return str(address)


# host:port or [v6]:port, with nothing of a path about it.
_HOST_PORT = re.compile(r'(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[\w.-]+))'
                        r':(?P<port>[0-9]{1,5})')


def tcp_lookalike(address: object) -> Optional[Tuple[str, int]]:
    """
    The TCP address a UNIX socket path that looks like ``host:port``
    most likely meant, if it does.

    >>> tcp_lookalike('127.0.0.1:4444'), tcp_lookalike('/tmp/qmp.sock')
    (('127.0.0.1', 4444), None)
    """
    if not isinstance(address, str):
        return None
    match = _HOST_PORT.fullmatch(address)
    if match is None or not 0 < int(match['port']) < 65536:
        return None
    return (match['v6'] or match['host'], int(match['port']))


def _tcp_address(address: object) -> Tuple[str, int]:
    if (isinstance(address, tuple) and len(address) == 2
            and isinstance(address[0], str) and isinstance(address[1], int)):
        return address[0], address[1]
    raise TypeError(
        "address must be a UNIX socket path (str), a (host, port) tuple "
        f"or a connected socket.socket, not {address!r}")


def connect_blocking(address: Union[SocketAddrT, socket.socket],
                     timeout: Optional[float] = None) -> socket.socket:
    """
    Connect to ``address`` and return a blocking socket.

    A `socket.socket` given as the address is returned as it is, in
    blocking mode.

    :param timeout: Seconds the connection may take; `None` waits as long
        as it takes (a UNIX socket whose server has a full backlog waits
        until the server accepts someone).
    :raise socket.timeout: Not connected in time.
    :raise OSError: The connection failed.
    :raise TypeError: ``address`` is none of the accepted forms.
    """
    if isinstance(address, socket.socket):
        address.setblocking(True)
        return address
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _connect_unix(sock, address, timeout)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection(_tcp_address(address), timeout)
    sock.setblocking(True)
    return sock


def _connect_unix(sock: socket.socket, path: str,
                  timeout: Optional[float]) -> None:
    """
    Connect ``sock`` to the UNIX socket at ``path`` within ``timeout``.

    A blocking connect() to a server whose listen backlog is full (a QEMU
    monitor busy with another client) waits until the server accepts
    someone, however long; a non-blocking one fails at once with EAGAIN,
    and there is nothing to poll for.  So, with a timeout, it is tried
    again, 10 ms apart and then up to 100 ms apart, until the deadline.

    :raise socket.timeout: Not connected in time.
    """
    if timeout is None:
        sock.connect(path)
        return
    deadline = time.monotonic() + timeout
    pause = 0.01
    sock.setblocking(False)
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out") from None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)


async def listen(address: SocketAddrT) -> socket.socket:
    """
    Create a non-blocking socket listening on ``address``.

    A UNIX socket is made readable and writable by its owner only, before
    it starts listening, so no other user can ever connect to it.  A stale
    socket file at the same path is replaced.

    :raise OSError: The address could not be bound.
    """
    if isinstance(address, str):
        sock = _bind_unix(address)
    else:
        host, port = _tcp_address(address)
        loop = asyncio.get_running_loop()
        sock = _bind_tcp(await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    sock.setblocking(False)
    sock.listen(1)
    return sock


def listen_blocking(address: SocketAddrT) -> socket.socket:
    """
    Create a blocking socket listening on ``address``; see `listen`.

    :raise OSError: The address could not be bound.
    """
    if isinstance(address, str):
        sock = _bind_unix(address)
    else:
        host, port = _tcp_address(address)
        sock = _bind_tcp(socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    sock.listen(1)
    return sock


def _bind_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _remove_stale_socket(path)
        sock.bind(path)
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_tcp(infos: Sequence[AddrInfo]) -> socket.socket:
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


async def accept(listener: socket.socket, ssl: Optional[SSLContext],
                 limit: int) -> Streams:
    """
    Wait for one peer on ``listener`` and return its streams.

    :raise OSError: Accepting or the TLS handshake failed.
    """
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    try:
        reader = RoutingReader(limit=limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        # Typeshed declares this on AbstractEventLoop from 3.10 on only;
        # every 3.9 loop has it too.
        transport, _ = await cast(asyncio.BaseEventLoop, loop) \
            .connect_accepted_socket(lambda: protocol, sock=conn, ssl=ssl)
    except BaseException:
        conn.close()
        raise
    return _read_below_mmap_threshold(
        (reader, asyncio.StreamWriter(transport, protocol, reader, loop)))


def accept_blocking(listener: socket.socket,
                    timeout: Optional[float]) -> socket.socket:
    """
    Wait up to ``timeout`` seconds for one peer; return a blocking socket.

    The listener stays open, whether a peer came or not.

    :raise socket.timeout: Nobody connected in time.
    :raise OSError: Accepting failed.
    """
    # (An infinite or huge timeout would overflow settimeout().)
    listener.settimeout(None if timeout is None or timeout > LONGEST_WAIT
                        else timeout)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:  # a zero timeout: nobody was waiting
        raise socket.timeout("timed out") from None
    conn.setblocking(True)
    return conn


def close_listener(listener: socket.socket) -> None:
    """Close ``listener`` and remove its socket file, if it has one."""
    path = listener.getsockname() if listener.family == socket.AF_UNIX \
        else None
    listener.close()
    if isinstance(path, str) and path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def close_writer(writer: asyncio.StreamWriter, grace: float) -> None:
    """
    Close ``writer``'s connection and wait until it is closed, promptly.

    Unsent data is dropped if the peer stopped reading (a graceful close
    would wait for it forever), and a peer that has not finished closing
    after ``grace`` seconds (a TLS peer that never answers close_notify;
    asyncio alone waits 30 s) has the connection aborted.

    :raise OSError: The connection had failed; callers usually ignore it.
    """
    transport = writer.transport
    if unsent_bytes(writer):
        transport.abort()
    else:
        writer.close()
    # Not wait_for(): its timeout would cancel wait_closed(), and with it
    # the stream's own "closed" future, which later waits then raise.
    closing = asyncio.ensure_future(writer.wait_closed())
    closing.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({closing}, timeout=grace)
    except BaseException:
        transport.abort()
        raise
    if not done:
        transport.abort()
    await closing


def unsent_bytes(writer: asyncio.StreamWriter) -> int:
    """How many bytes ``writer``'s transport holds, not yet sent."""
    try:
        return writer.transport.get_write_buffer_size()
    except AttributeError:
        # Python 3.9's TLS transport, once its connection is lost: there
        # is nothing left to send.
        return 0


def _retrieve(task: 'asyncio.Future[None]') -> None:
    # Mark the outcome seen: nobody may await it if the caller was
    # cancelled, and asyncio would log "exception was never retrieved".
    if not task.cancelled():
        task.exception()
