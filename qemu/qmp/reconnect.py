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
    require,
)
from .util import Backoff, exception_summary


__all__ = ['ReconnectingProtocol']

T = TypeVar('T')

# Between attempts that fail other than by a missing or refusing socket
# (which connect(retry=) paces), and before re-establishing a session that
# died young: the first pause, and the longest.
_RECONNECT_FIRST = 0.05
_RECONNECT_MAX = 2.0

# A session that lived this many seconds was a working one: the next loss
# is reconnected at once.  One that died sooner (a server that accepts
# each session and drops it) makes the next reconnection wait longer.
_SESSION_SETTLED = 10.0


def _backoff() -> Backoff:
    return Backoff(_RECONNECT_FIRST, _RECONNECT_MAX, _SESSION_SETTLED)


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
        self._backoff = _backoff()
        # When the current session started running (loop time).
        self._running_since = 0.0
        # The reconnect task is trying: a failed attempt is not the end.
        self._reconnecting = False
        # disconnect() is under way: nothing reconnects.
        self._stopping = False

    # ------------------------------------------------------------------
    # Upper half: what a reconnection needs to know
    # ------------------------------------------------------------------

    @require(Runstate.IDLE)
    async def connect(self, address: Union[SocketAddrT, socket.socket],
                      ssl: Optional[SSLContext] = None, *,
                      retry: Optional[float] = None) -> None:
        # (The docstring is AsyncProtocol.connect's.)
        reconnecting = self._reconnect_task
        if reconnecting is not None and not reconnecting.done() \
                and reconnecting is not asyncio.current_task():
            # The caller connects by itself, between two attempts: the
            # reconnection stops, and the session it meant to restore is
            # this one.
            reconnecting.cancel()
            await asyncio.gather(reconnecting, return_exceptions=True)
        # Known before the session starts: it may be lost before this
        # call returns, and must come back all the same.
        self._target = None if isinstance(address, socket.socket) \
            else (address, ssl)
        await super().connect(address, ssl, retry=retry)

    connect.__doc__ = AsyncProtocol.connect.__doc__

    async def start_server(self, address: SocketAddrT,
                           ssl: Optional[SSLContext] = None) -> None:
        # (The docstring is AsyncProtocol.start_server's.)
        self._target = None
        await super().start_server(address, ssl)

    start_server.__doc__ = AsyncProtocol.start_server.__doc__

    async def _establish_session(self) -> None:
        # Before the tasks start: the session may end in their first step.
        self._running_since = asyncio.get_running_loop().time()
        await super()._establish_session()

    async def disconnect(self) -> None:
        # (The docstring is AsyncProtocol.disconnect's.)
        if self._session_loop_ended():
            # Its reconnect task, if any, died with it: only forgotten.
            self._reconnect_task = None
            self._backoff = _backoff()
            await super().disconnect()
            return
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
            # What sessions to come earn starts afresh.
            self._backoff = _backoff()

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
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_reason = None
        self._reconnecting = True
        try:
            attempts = 0
            while True:
                reason = exception_summary(self._conn.errors[0])
                first_reason = first_reason or reason
                tried = await self._reconnect_attempts(reason)
                if tried is None:
                    return  # given up
                attempts += tried
                if self._conn.dc_task is None:
                    break
                # Lost again before connect() returned: that loss is this
                # task's too (nothing else reconnects while it runs).
        finally:
            self._reconnecting = False
        gap = loop.time() - started
        self.logger.info("Reconnected to %s after %.3f s",
                         self._conn.address, gap)
        await self._reconnected(first_reason, attempts, gap)

    async def _reconnect_attempts(self, reason: str) -> Optional[int]:
        """
        Re-establish the session just lost, after the pause it earned.

        :param reason: Why it was lost.
        :return: How many attempts it took, or `None` after giving up.
        """
        loop = asyncio.get_running_loop()
        lived = loop.time() - self._running_since
        try:
            await self._wait_disconnect()
        except (asyncio.CancelledError, SystemExit, KeyboardInterrupt):
            # (Hooks' CancelledErrors end a session as RuntimeErrors: this
            # one is disconnect() cancelling this task.)
            raise
        except BaseException:  # pylint: disable=broad-except
            pass  # the reason, logged just below (a user's own too)
        assert self._target is not None and self.auto_reconnect is not None
        address, ssl = self._target
        # The pause is not taken from auto_reconnect: a short one must
        # not make a server that drops every session flooded again.
        pause = self._backoff.after_session(lived)
        self.logger.warning("The session was lost after %.3g s (%s); "
                            "reconnecting to %s in %.3g s",
                            lived, reason, address, pause)
        await self._pause(pause)
        deadline = loop.time() + self.auto_reconnect
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.connect(address, ssl,
                                   retry=max(0.0, deadline - loop.time()))
                return attempts
            except ConnectError as err:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.logger.error("Gave up reconnecting after %d "
                                      "attempt(s): %s", attempts, err)
                    self._session_loop = None  # nothing of it is left
                    self._end_of_session()
                    return None
                await self._pause(
                    min(self._backoff.after_failure(), remaining))

    async def _pause(self, seconds: float) -> None:
        """Wait between sessions or attempts; `disconnect` cancels it."""
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _reconnected(self, reason: str, attempts: int,
                           gap: float) -> None:
        """
        Hook: a lost session is back (its reader running).

        :param reason: Why it was lost.
        :param attempts: How many connections it took.
        :param gap: Seconds between the loss and now.
        """
