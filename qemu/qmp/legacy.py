"""
(Legacy) blocking QMP wrapper.

`QEMUMonitorProtocol` gives scripts and QEMU's own test harness the old
synchronous interface on top of `QMPClient`.  New code should use
`QMPClient` directly.

Each instance runs a private asyncio event loop in a thread of its own and
hands it every call.  So the wrapper is safe to use from several threads at
once (one thread may block in `QEMUMonitorProtocol.pull_event` while another
runs commands), and it works even from a thread whose own event loop is
already running.  Replies and events come back as plain `dict`\\ s.

Example::

    from qemu.qmp.legacy import QEMUMonitorProtocol

    with QEMUMonitorProtocol('/tmp/qmp.sock') as qmp:
        qmp.connect()
        print(qmp.cmd('query-status'))
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from types import TracebackType
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    List,
    Optional,
    Type,
    TypeVar,
    Union,
)

from .error import QMPError
from .protocol import Runstate, SocketAddrT
from .qmp_client import QMPClient


__all__ = ['QEMUMonitorProtocol', 'QMPBadPortError', 'QMPMessage',
           'QMPObject', 'QMPReturnValue']

_T = TypeVar('_T')

#: QMPMessage is an entire QMP message of any kind.
QMPMessage = Dict[str, Any]

#: QMPReturnValue is the 'return' value of a command.
QMPReturnValue = object

#: QMPObject is any object in a QMP message.
QMPObject = Dict[str, object]

logger = logging.getLogger(__name__)


class QMPBadPortError(QMPError):
    """Unable to parse socket address: Port was non-numerical."""


class _LoopThread:
    """
    An event loop running in a daemon thread of its own.

    Started on first use and stopped by `stop`; it can start again after.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    def _ensure_running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run, args=(loop,), daemon=True,
                    name=f"qmp-legacy-{self._name}")
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Let whatever is still scheduled see its cancellation.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(
                asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    def run(self, coro: Coroutine[Any, Any, _T],
            timeout: Optional[float]) -> _T:
        """
        Run ``coro`` on the loop thread and block until it is done.

        :raise asyncio.TimeoutError: ``timeout`` seconds passed first; the
            coroutine was cancelled.
        :raise QMPError: Called from the loop thread itself.
        """
        loop = self._ensure_running()
        if threading.current_thread() is self._thread:
            coro.close()  # never to run: no "never awaited" warning
            raise QMPError("QEMUMonitorProtocol cannot be called from its "
                           "own event loop thread (from an event callback?)")

        async def bounded() -> _T:
            return await asyncio.wait_for(coro, timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (e.g. KeyboardInterrupt): stop the coroutine too.
            future.cancel()
            raise

    def call(self, func: Callable[[], _T]) -> _T:
        """Run a plain function on the loop thread and return its result."""
        async def call_it() -> _T:
            return func()
        return self.run(call_it(), None)

    def stop(self) -> None:
        """Stop the loop and join its thread (not from the thread itself)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join()


class QEMUMonitorProtocol:
    """
    Connect to QEMU via QMP, run commands and collect events, blocking.

    :param address: A UNIX socket path, a ``(host, port)`` tuple, or an
        already connected `socket.socket` (such as one end of a
        `socket.socketpair`).
    :param server: Listen at ``address`` now, so the caller can start QEMU
        pointing at it; then call `accept`.
    :param nickname: Optional nickname used for logging.
    :raise ConnectError: ``server`` is true and listening failed.
    """

    def __init__(self, address: Union[SocketAddrT, socket.socket],
                 server: bool = False,
                 nickname: Optional[str] = None) -> None:
        # Every attribute is set before anything can fail: a subclass with
        # a catch-all __getattr__ must never see a missing one.
        self._qmp = QMPClient(nickname)
        # Commands and events through this wrapper lose nothing.
        self._qmp.events.max_pending = None
        self._address = address
        self._timeout: Optional[float] = None
        self._runner = _LoopThread(nickname or 'qmp')
        if server:
            if isinstance(address, socket.socket):
                raise ValueError("server=True needs an address to listen "
                                 "on, not a connected socket")
            self._runner.run(self._qmp.start_server(address), None)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} address={self._address!r} "
                f"runstate={self._qmp.runstate.name}>")

    # ------------------------------------------------------------------
    # Connecting
    # ------------------------------------------------------------------

    @classmethod
    def parse_address(cls, address: str) -> SocketAddrT:
        """
        Parse ``"host:port"`` into a tuple; anything else is a path.

        >>> QEMUMonitorProtocol.parse_address('localhost:4444')
        ('localhost', 4444)
        >>> QEMUMonitorProtocol.parse_address('/tmp/qmp.sock')
        '/tmp/qmp.sock'

        :param address: The address to parse.
        :return: A ``(host, port)`` tuple or a UNIX socket path.
        :raise QMPBadPortError: The port is not a number.
        """
        components = address.split(':')
        if len(components) == 2:
            try:
                port = int(components[1])
            except ValueError:
                msg = f"Bad port: '{components[1]}' in '{address}'."
                raise QMPBadPortError(msg) from None
            return (components[0], port)
        return address

    def _greeting_dict(self) -> Optional[Dict[str, Any]]:
        greeting = self._qmp.greeting
        return greeting._asdict() if greeting is not None else None

    def connect(self, negotiate: bool = True) -> Optional[Dict[str, Any]]:
        """
        Connect to the QMP monitor, and negotiate unless told not to.

        :param negotiate: Await the greeting and negotiate capabilities.
        :return: The greeting as a dict, or `None` without negotiation.
        :raise ConnectError: The connection failed.
        """
        self._qmp.await_greeting = negotiate
        self._qmp.negotiate = negotiate
        self._runner.run(self._qmp.connect(self._address), None)
        return self._greeting_dict()

    def accept(self, timeout: Optional[float] = 15.0) -> Dict[str, Any]:
        """
        Wait for QEMU to connect to us, then negotiate.

        :param timeout: Seconds to wait; `None` waits forever.
        :return: The greeting as a dict.
        :raise ConnectError: Accepting or negotiating failed.
        :raise asyncio.TimeoutError: Nobody connected in time.
        """
        self._qmp.await_greeting = True
        self._qmp.negotiate = True
        self._runner.run(self._qmp.accept(), timeout)
        greeting = self._greeting_dict()
        assert greeting is not None
        return greeting

    # ------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------

    def cmd_obj(self, qmp_cmd: QMPMessage) -> QMPMessage:
        """
        Send a QMP command as given and return the whole reply.

        An error reply is returned, not raised.  A reply never carries an
        id unless ``qmp_cmd`` had one.

        :param qmp_cmd: The command, as a dict.
        :return: The reply, as a dict.
        :raise asyncio.TimeoutError: No reply within `settimeout` seconds;
            the connection stays usable.
        :raise ExecInterruptedError: The connection ended first.
        """
        reply = self._runner.run(
            self._qmp._raw(qmp_cmd, assign_id='id' not in qmp_cmd),
            self._timeout)
        return dict(reply)

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
        :raise asyncio.TimeoutError: No reply within `settimeout` seconds.
        """
        return self._runner.run(self._qmp.execute(cmd, kwds), self._timeout)

    # deprecated in 0.1.0 - 2026-11-22: older releases' name for cmd()
    command = cmd

    def settimeout(self, timeout: Optional[float]) -> None:
        """
        Set the timeout for `cmd`, `cmd_obj` and `cmd_raw`.

        :param timeout: Seconds, or `None` to wait indefinitely.
        """
        self._timeout = timeout

    def send_fd_scm(self, fd: int) -> None:
        """
        Send a file descriptor to QEMU (see `QMPClient.send_fd_scm`).

        :param fd: The descriptor; it is not closed.
        """
        self._runner.call(lambda: self._qmp.send_fd_scm(fd))

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
        return float(wait)

    def pull_event(self,
                   wait: Union[bool, float] = False) -> Optional[QMPMessage]:
        """
        Return the oldest pending event, waiting as told.

        :param wait: `False` or 0: do not wait, return `None` if there is
            no event.  `True`: wait forever.  A number: wait that many
            seconds.
        :return: The event as a dict, or `None`.
        :raise asyncio.TimeoutError: The wait ran out.
        :raise EOFError: No event is pending and the connection is gone,
            so none can come: waiting would never end.
        """
        timeout = self._timeout_of(wait)
        return self._runner.run(self._next_event(timeout), None)

    async def _next_event(self, timeout: Optional[float]
                          ) -> Optional[QMPMessage]:
        """The oldest event; wait up to ``timeout`` while connected."""
        events = self._qmp.events
        if not events.empty():
            return dict(await events.get())
        if timeout == 0.0:
            return None
        if self._qmp.runstate is not Runstate.RUNNING:
            raise EOFError("not connected: no event can arrive")

        getter = asyncio.ensure_future(events.get())
        ended = asyncio.ensure_future(self._session_ended())
        try:
            await asyncio.wait((getter, ended), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A cancelled get() passes its wake-up on: no event is lost.
            for task in (getter, ended):
                task.cancel()
            await asyncio.gather(getter, ended, return_exceptions=True)
        if not getter.cancelled():
            return dict(getter.result())
        if not ended.cancelled():
            raise EOFError("the connection closed while waiting for an event")
        raise asyncio.TimeoutError

    async def _session_ended(self) -> None:
        while self._qmp.runstate is Runstate.RUNNING:
            await self._qmp.runstate_changed()

    def get_events(self, wait: Union[bool, float] = False) -> List[QMPMessage]:
        """
        Return all pending events and clear them.

        :param wait: If nothing is pending, wait as for `pull_event`.
        :return: The events, oldest first (maybe empty).
        :raise asyncio.TimeoutError: The wait ran out.
        """
        events = self._runner.call(self._qmp.events.clear)
        if events:
            return [dict(event) for event in events]
        event = self.pull_event(wait)
        return [event] if event is not None else []

    def clear_events(self) -> None:
        """Discard all pending events."""
        self._runner.call(self._qmp.events.clear)

    # ------------------------------------------------------------------
    # Closing
    # ------------------------------------------------------------------

    def close(self) -> None:
        """
        Disconnect, and stop the background thread.

        :raise EOFError: QEMU had closed the connection (it quit or was
            killed) or the connection broke; callers that expected it
            ignore this.
        """
        try:
            self._runner.run(self._qmp.disconnect(), None)
        except OSError as err:
            raise EOFError(f"connection lost: {err}") from err
        finally:
            self._runner.stop()

    def __enter__(self) -> 'QEMUMonitorProtocol':
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        # Only look at our own attributes: a subclass's __getattr__ would
        # answer for missing ones.
        runner = self.__dict__.get('_runner')
        qmp = self.__dict__.get('_qmp')
        if runner is None:
            return
        try:
            if isinstance(qmp, QMPClient) and \
                    qmp.runstate is not Runstate.IDLE:
                runner.run(qmp.disconnect(), None)
        except Exception:  # pylint: disable=broad-except
            pass  # nobody to report to; the peer is gone or going
        finally:
            runner.stop()
