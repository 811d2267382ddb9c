"""
Sessions that come back: `ReconnectingProtocol`, the opt-in automatic
reconnection behind `QMPClient.auto_reconnect`.

A session the server ends or breaks (QEMU restarted by a supervisor, a
migration's destination taking over the socket) is re-established to the
same address, for up to `ReconnectingProtocol.auto_reconnect` seconds,
without the caller's help.  Sessions that `AsyncProtocol.disconnect`
ended, or that `AsyncProtocol.accept` opened, do not come back.

Meanwhile the client goes through the usual states (`DISCONNECTING`,
`IDLE`, `CONNECTING`, `RUNNING`), so `runstate_changed` shows the gap, and
a subclass hears of each success through ``_reconnected`` (QMPClient
tells its event listeners).  What waits for the end of the session
(`QMPClient.session_events`) waits across reconnections: the session ends
when reconnecting is given up, or by `disconnect`.
"""

from __future__ import annotations

import asyncio
import socket
from ssl import SSLContext
from typing import Optional, Tuple, TypeVar, Union

from .protocol import (
    AsyncProtocol,
    ConnectError,
    Runstate,
    SocketAddrT,
)
from .util import exception_summary


__all__ = ['ReconnectingProtocol']

T = TypeVar('T')

# Between attempts that fail other than by a missing or refusing socket
# (which connect(retry=) paces): the first pause, and the longest.
_RECONNECT_FIRST = 0.05
_RECONNECT_MAX = 2.0


class ReconnectingProtocol(AsyncProtocol[T]):
    """
    An `AsyncProtocol` that can re-establish a lost session by itself.

    Off by default: set `auto_reconnect` to turn it on.

    :param name: Name used for logging messages, if any.
    :param readbuflen: The longest message accepted from the peer.
    """

    def __init__(self, name: Optional[str] = None,
                 readbuflen: int = AsyncProtocol._limit) -> None:
        super().__init__(name, readbuflen)
        #: Seconds to keep trying to re-establish a session the server
        #: ended or broke (not one `disconnect` ended): `None` (the
        #: default) never reconnects, as the reference library does;
        #: ``math.inf`` tries forever.  Only sessions opened by `connect`
        #: with an address reconnect.
        self.auto_reconnect: Optional[float] = None
        # What connect() was given, for reconnecting; None after accept().
        self._target: Optional[Tuple[SocketAddrT, Optional[SSLContext]]] \
            = None
        self._reconnect_task: Optional[asyncio.Task[None]] = None
        # The reconnect task is trying: a failed attempt is not the end.
        self._reconnecting = False
        # disconnect() is under way: nothing reconnects.
        self._stopping = False

    # ------------------------------------------------------------------
    # Upper half: what a reconnection needs to know
    # ------------------------------------------------------------------

    async def connect(self, address: Union[SocketAddrT, socket.socket],
                      ssl: Optional[SSLContext] = None, *,
                      retry: Optional[float] = None) -> None:
        # (The docstring is AsyncProtocol.connect's.)
        await super().connect(address, ssl, retry=retry)
        self._target = None if isinstance(address, socket.socket) \
            else (address, ssl)

    connect.__doc__ = AsyncProtocol.connect.__doc__

    async def start_server(self, address: SocketAddrT,
                           ssl: Optional[SSLContext] = None) -> None:
        # (The docstring is AsyncProtocol.start_server's.)
        self._target = None
        await super().start_server(address, ssl)

    start_server.__doc__ = AsyncProtocol.start_server.__doc__

    async def disconnect(self) -> None:
        # (The docstring is AsyncProtocol.disconnect's.)
        self._stopping = True
        try:
            reconnecting = self._reconnect_task
            if reconnecting is not None and not reconnecting.done():
                reconnecting.cancel()
                await asyncio.gather(reconnecting, return_exceptions=True)
            await super().disconnect()
        finally:
            self._stopping = False
            self._reconnect_task = None

    disconnect.__doc__ = AsyncProtocol.disconnect.__doc__

    # ------------------------------------------------------------------
    # Reconnecting
    # ------------------------------------------------------------------

    def _will_reconnect(self) -> bool:
        if self.auto_reconnect is None or self._stopping:
            return False
        if self._reconnecting:
            return True  # an attempt failed; the next one follows
        return (self._target is not None and bool(self._conn.errors)
                and self.runstate is Runstate.RUNNING)

    def _schedule_disconnect(self) -> None:
        reconnect = self._conn.dc_task is None and not self._reconnecting \
            and self._will_reconnect()
        super()._schedule_disconnect()
        if reconnect:
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Finish tearing down the lost session, then connect again until
        it works or `auto_reconnect` seconds have passed."""
        reason = exception_summary(self._conn.errors[0])
        self._reconnecting = True
        try:
            await self._reconnect_attempts(reason)
        finally:
            self._reconnecting = False

    async def _reconnect_attempts(self, reason: str) -> None:
        try:
            await self._wait_disconnect()
        except Exception:  # pylint: disable=broad-except
            pass  # the reason, logged just below
        assert self._target is not None and self.auto_reconnect is not None
        address, ssl = self._target
        self.logger.warning("The session was lost (%s); reconnecting to %s",
                            reason, address)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.auto_reconnect
        delay, attempts = _RECONNECT_FIRST, 0
        while True:
            attempts += 1
            try:
                await self.connect(address, ssl,
                                   retry=max(0.0, deadline - loop.time()))
                break
            except ConnectError as err:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.logger.error("Gave up reconnecting after %d "
                                      "attempt(s): %s", attempts, err)
                    self._end_of_session()
                    return
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _RECONNECT_MAX)
        gap = loop.time() - started
        self.logger.info("Reconnected to %s after %.3f s", address, gap)
        await self._reconnected(reason, attempts, gap)

    async def _reconnected(self, reason: str, attempts: int,
                           gap: float) -> None:
        """
        Hook: a lost session is back (reader and writer running).

        :param reason: Why it was lost.
        :param attempts: How many connections it took.
        :param gap: Seconds between the loss and now.
        """
