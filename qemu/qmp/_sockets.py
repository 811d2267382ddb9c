"""
Transport plumbing for `AsyncProtocol`: open, listen, accept.

Private.  Every function takes an address in one of the accepted forms (a
UNIX socket path, a ``(host, port)`` tuple, or a `socket.socket` that is
already connected) and hands back asyncio streams.  Only `OSError` and
`ssl.SSLError` (itself an `OSError`) are expected out of here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from ssl import SSLContext
from typing import Optional, Tuple, Union, cast


#: A UNIX socket path or a ``(host, port)`` TCP address.
SocketAddrT = Union[str, Tuple[str, int]]

Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]

# How many bytes one read takes from the stream at most; large enough that a
# burst of messages is split into lines in one pass.
READ_SIZE = 256 * 1024


async def open_stream(address: Union[SocketAddrT, socket.socket],
                      ssl: Optional[SSLContext], limit: int) -> Streams:
    """
    Connect to ``address`` and return its streams.

    :raise OSError: The connection failed.
    :raise TypeError: ``address`` is none of the accepted forms.
    """
    if isinstance(address, socket.socket):
        return await asyncio.open_connection(
            sock=address, ssl=ssl, limit=limit,
            server_hostname='' if ssl else None)
    if isinstance(address, str):
        return await asyncio.open_unix_connection(
            address, ssl=ssl, limit=limit,
            server_hostname='' if ssl else None)
    host, port = _tcp_address(address)
    return await asyncio.open_connection(host, port, ssl=ssl, limit=limit)


def _tcp_address(address: object) -> Tuple[str, int]:
    if (isinstance(address, tuple) and len(address) == 2
            and isinstance(address[0], str) and isinstance(address[1], int)):
        return address[0], address[1]
    raise TypeError(
        "address must be a UNIX socket path (str), a (host, port) tuple "
        f"or a connected socket.socket, not {address!r}")


async def listen(address: SocketAddrT) -> socket.socket:
    """
    Create a non-blocking socket listening on ``address``.

    A UNIX socket is made readable and writable by its owner only, before
    it starts listening, so no other user can ever connect to it.  A stale
    socket file at the same path is replaced.

    :raise OSError: The address could not be bound.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale_socket(address)
            sock.bind(address)
            os.chmod(address, 0o600)
        except BaseException:
            sock.close()
            raise
    else:
        host, port = _tcp_address(address)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    sock.listen(1)
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
        reader = asyncio.StreamReader(limit=limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        # Typeshed declares this on AbstractEventLoop from 3.10 on only;
        # every 3.9 loop has it too.
        transport, _ = await cast(asyncio.BaseEventLoop, loop) \
            .connect_accepted_socket(lambda: protocol, sock=conn, ssl=ssl)
    except BaseException:
        conn.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


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
