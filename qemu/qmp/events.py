"""
QMP events and event listeners.

An `EventListener` is a FIFO queue of the events it accepts (by name, by
filter function, or by an overridden `EventListener.accept`).  Every
registered listener gets its own copy of each event, so one consumer never
steals from, nor changes, another's.  A listener whose
filter or ``put()`` raises misses that event (the error is logged); the
others and the session go on.  `Events` is the mix-in that gives
`QMPClient` its built-in all-events listener, ``qmp.events``, and the
`Events.listener` and `Events.listen` context managers.

Memory is bounded where nobody asked to keep everything: every listener's
`EventListener.history` keeps the newest `DEFAULT_HISTORY_SIZE` events, and
the built-in listener keeps at most `DEFAULT_BUILTIN_BACKLOG` unread events,
dropping the oldest (with a logged warning).  A listener you create keeps
all its unread events unless you pass ``max_pending``.

The tutorial is ``docs/events.rst``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import contextmanager
from typing import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Deque,
    Generator,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from .error import QMPError
from .message import Message
from .util import exception_summary, plain_error


__all__ = ['EventListener', 'Events', 'ListenerError', 'EventFilter',
           'DEFAULT_HISTORY_SIZE', 'DEFAULT_BUILTIN_BACKLOG']

logger = logging.getLogger(__name__)

# What an event filter may raise and cost only its own listener the event.
# A filter is called, never awaited: a CancelledError out of one (result()
# of a cancelled future, say) is its bug, not a cancellation of the task.
_FILTER_ERRORS = (Exception, asyncio.CancelledError)

#: A function that decides whether a listener accepts an event.
EventFilter = Callable[[Message], bool]

#: How many events `EventListener.history` keeps, unless told otherwise.
DEFAULT_HISTORY_SIZE = 1000

#: How many unread events the built-in ``qmp.events`` listener keeps.
DEFAULT_BUILTIN_BACKLOG = 10000


# What a listener queues: the event itself for the first listener to take
# it; for every other, the bytes the event was decoded from.  Bytes cost
# nothing to keep (thousands may sit unread in the built-in backlog, and
# thousands of small objects make every garbage collection slower) and
# become an independent Message only when read.
_Entry = Union[Message, bytes]


def _opened(entry: _Entry) -> Message:
    """The queued event as a `Message`."""
    if isinstance(entry, bytes):
        return Message(entry, eager=False)
    return entry


def _copy_of(event: Message) -> bytes:
    """What a listener after the first queues: an independent copy."""
    return event.decoded_from or bytes(event)


class ListenerError(QMPError):
    """Generic error class for `EventListener`-related problems."""


class EventListener:
    """
    Selectively listens for events with runtime configurable filtering.

    When ``names`` and ``event_filter`` are both given, an event must have
    one of the names and pass the filter.

    >>> listener = EventListener(('STOP', 'RESUME'))
    >>> listener.accept(Message({'event': 'STOP'}))
    True
    >>> listener.accept(Message({'event': 'SHUTDOWN'}))
    False

    :param names: One or more names of events to listen for.  When not
        provided, listen for ALL events.
    :param event_filter: An optional event filtering function.  When names
        are also provided, this acts as a secondary filter.
    :param max_pending: How many unread events to keep at most; when full,
        the oldest is dropped and a warning logged.  `None` (the default)
        keeps them all.
    :param history_size: How many events `history` keeps; `None` keeps
        every event ever accepted (memory grows without bound).
    """

    def __init__(self,
                 names: Optional[Union[str, Iterable[str]]] = None,
                 event_filter: Optional[EventFilter] = None,
                 *,
                 max_pending: Optional[int] = None,
                 history_size: Optional[int] = DEFAULT_HISTORY_SIZE) -> None:
        if isinstance(names, str):
            names = (names,)
        #: Primary event filter, based on one or more event names.
        self.names: Set[str] = set(names) if names is not None else set()
        #: Optional, secondary event filter.
        self.event_filter: Optional[EventFilter] = event_filter
        self._max_pending = _checked_max_pending(max_pending)
        #: How many unread events were dropped because of `max_pending`.
        self.dropped: int = 0

        # Unread events, and the newest events accepted.  Both are made
        # at the first event: an empty deque costs 760 bytes, and the
        # listener of each of thousands of idle sessions may never see
        # one.
        self._pending: Optional[Deque[_Entry]] = None
        self._history: Optional[Deque[_Entry]] = None
        self._history_size = _checked_history_size(history_size)
        # Tasks waiting in get(), woken one per event, in order (a list:
        # rarely more than one).
        self._getters: List[asyncio.Future[object]] = []
        self._history_trimmed = False
        # Iteration may skip get() when a subclass did not replace it.
        self._plain_get = type(self).get is EventListener.get
        # The session whose built-in listener this is: what its log lines
        # name, one session among thousands (see QMPClient).
        self._session_name: Optional[str] = None

    def __repr__(self) -> str:
        names = sorted(self.names) if self.names else 'ALL'
        owner = '' if self._session_name is None \
            else f" of session {self._session_name!r}"
        return (f"<{type(self).__name__}{owner} names={names} "
                f"pending={len(self._pending or ())}>")

    @property
    def max_pending(self) -> Optional[int]:
        """
        Upper bound on unread events, or `None` for no bound.

        :raise ListenerError: Set to anything but a positive `int` or
            `None`.
        """
        return self._max_pending

    @max_pending.setter
    def max_pending(self, value: Optional[int]) -> None:
        self._max_pending = _checked_max_pending(value)

    @property
    def history(self) -> Tuple[Message, ...]:
        """
        A read-only record of the events accepted so far, oldest first.

        It includes events not yet read with `get()` and persists across
        `clear()`.  It keeps the newest `history_size` events.  Events
        are as received: when another listener took an event first, this
        listener keeps it as the bytes received, and each read of
        `history` decodes a fresh copy, so changes made to what `get()`
        returned do not show here.
        """
        return tuple(_opened(entry) for entry in self._history or ())

    @property
    def history_size(self) -> Optional[int]:
        """How many events `history` keeps (`None`: all of them)."""
        return self._history_size

    @history_size.setter
    def history_size(self, size: Optional[int]) -> None:
        self._history_size = _checked_history_size(size)
        if self._history is not None:
            self._history = deque(self._history, maxlen=size)

    def accept(self, event: Message) -> bool:
        """
        Determine if this listener accepts this event.

        Override this to change which events appear in the stream.  User
        code does not normally call it.

        :param event: The event under consideration.
        :return: `True`, if this listener accepts this event.
        """
        if self.names and event.get('event') not in self.names:
            return False
        if self.event_filter is not None:
            return self.event_filter(event)
        return True

    async def put(self, event: Message) -> None:
        """
        Put an event into the queue, if `accept()` accepts it.

        `QMPClient` calls this for every event; user code does not need to,
        and subclasses should not need to override it.

        :param event: The new event.
        """
        try:
            accepted = self.accept(event)
        except asyncio.CancelledError as err:
            # The filter's, not this task's cancellation (plain_error).
            raise plain_error(err)  # pylint: disable=raise-missing-from
        if accepted:
            self._deliver(event)

    def _deliver(self, event: _Entry) -> None:
        """Queue an accepted event and wake the oldest waiting reader."""
        history = self._history
        if history is None:
            history = self._history = deque(maxlen=self._history_size)
        if not self._history_trimmed and len(history) == history.maxlen:
            self._history_trimmed = True
            logger.info("%r: history is full; it keeps the newest %d events",
                        self, history.maxlen)
        history.append(event)

        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        max_pending = self._max_pending
        if max_pending is not None and len(pending) >= max_pending:
            self._drop_oldest(pending)
        pending.append(event)

        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break

    def _drop_oldest(self, pending: Deque[_Entry]) -> None:
        pending.popleft()
        self.dropped += 1
        # Say so on the first drop, then every max_pending drops: enough to
        # be noticed, not enough to flood the log.
        if self.dropped == 1 or self.dropped % (self._max_pending or 1) == 0:
            logger.warning(
                "%r: %d unread event(s) dropped so far (max_pending=%s); "
                "read events sooner or raise max_pending",
                self, self.dropped, self.max_pending)

    async def get(self) -> Message:
        """
        Wait for the very next event in this stream.

        If one is already available, return that one.

        :return: The oldest unread event.
        :raise ListenerError: The listener was removed while waiting.
        """
        while not self._pending:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                if await getter is _REMOVED:
                    raise ListenerError(f"{self!r} was removed while get() "
                                        f"waited for an event")
            except asyncio.CancelledError:
                self._give_up(getter)
                raise
        return _opened(self._pending.popleft())

    def empty(self) -> bool:
        """
        Return `True` if there are no pending events.

        :return: `True` when `get()` would wait.
        """
        return not self._pending

    def clear(self) -> List[Message]:
        """
        Discard all pending events and return them.

        `Events.remove_listener` calls this.  Discarded events stay in
        `history`.

        :return: The cleared events, oldest first.
        """
        pending = self._pending
        if not pending:
            return []
        cleared = [_opened(entry) for entry in pending]
        pending.clear()
        return cleared

    def _removed(self) -> None:
        """It was removed: whoever waits in `get()` stops waiting."""
        getters, self._getters = self._getters, []
        for getter in getters:
            if not getter.done():
                getter.set_result(_REMOVED)

    def __aiter__(self) -> 'EventListener':
        return self

    async def __anext__(self) -> Message:
        """The next event; iteration ends when the listener is removed."""
        pending = self._pending
        if self._plain_get and pending:
            return _opened(pending.popleft())
        try:
            return await self.get()
        except ListenerError:
            raise StopAsyncIteration from None

    async def iter_until(self, done: Awaitable[object]
                         ) -> AsyncGenerator[Message, None]:
        """
        Iterate over events until ``done`` completes, then end.

        Events queued by the time ``done`` completes are still yielded:
        nothing already received is lost.  Iteration also ends when the
        listener is removed.  ``done`` is not cancelled when iteration
        ends (a coroutine given as ``done`` runs in a task of its own,
        and that task is).  `QMPClient.session_events` uses this to end
        with the session.

        >>> async def demo():
        ...     listener = EventListener()
        ...     await listener.put(Message({'event': 'STOP'}))
        ...     done = asyncio.get_running_loop().create_future()
        ...     done.set_result(None)
        ...     return [event['event'] async for event in
        ...             listener.iter_until(done)]
        >>> asyncio.run(demo())
        ['STOP']

        :param done: An awaitable; iteration ends once it completes.
        :return: An asynchronous iterator of events.
        """
        end = asyncio.ensure_future(done)
        try:
            while True:
                # (Looked up each time: the first event makes the deque.)
                pending = self._pending
                while pending:
                    yield _opened(pending.popleft())
                if end.done():
                    return
                getter = asyncio.get_running_loop().create_future()
                self._getters.append(getter)
                try:
                    await asyncio.wait((getter, end),
                                       return_when=asyncio.FIRST_COMPLETED)
                except BaseException:
                    self._give_up(getter)
                    raise
                if not getter.done():
                    self._give_up(getter)  # end came first
                elif getter.result() is _REMOVED:
                    return
        finally:
            if end is not done and not end.done():
                end.cancel()
                await asyncio.wait((end,))

    def _give_up(self, getter: 'asyncio.Future[object]') -> None:
        """A reader stops waiting with ``getter``: forget it, and pass a
        wake-up it took on, or an event would sit unread while another
        reader waits."""
        getter.cancel()
        try:
            self._getters.remove(getter)
        except ValueError:
            pass
        if self._pending and self._getters:
            self._getters.pop(0).set_result(None)


# What get()'s waiters are woken with when their listener is removed.
_REMOVED = object()


def _checked_history_size(size: Optional[int]) -> Optional[int]:
    # A bad size raises now, as deque() does, not at the first event (in
    # the reader, which would end the session).
    deque((), maxlen=size)
    return size


def _checked_max_pending(value: Optional[int]) -> Optional[int]:
    if value is None or (type(value) is int and value > 0):
        return value
    raise ListenerError(f"max_pending must be a positive int or None, "
                        f"not {value!r}")


class _Delivery:
    """
    An event's delivery to listeners whose ``put()`` may wait: its
    coroutine is made when it is awaited, so a delivery never awaited (its
    session ended first) leaves no coroutine "never awaited" behind.
    """

    __slots__ = ('_events', '_msg')

    def __init__(self, events: 'Events', msg: Message) -> None:
        self._events = events
        self._msg = msg

    def __await__(self) -> Generator[object, None, None]:
        return self._events._dispatch_awaiting(self._msg).__await__()


class Events:
    """
    Mix-in giving `QMPClient` its event listeners.

    It logs to this module's logger, ``qemu.qmp.events``.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Default, all-events `EventListener`.  It keeps at most
        #: `DEFAULT_BUILTIN_BACKLOG` unread events; set its ``max_pending``
        #: to change that (`None` keeps them all).
        self.events: EventListener = EventListener(
            max_pending=DEFAULT_BUILTIN_BACKLOG)
        self._listeners: List[EventListener] = [self.events]
        # What the reader walks for each event: (listener, fast),
        # where fast means put() is not overridden and can be skipped.
        # The built-in listener comes last: it is the one that queues a
        # copy when another listener takes the event too, and a copy
        # costs nothing until it is read, which it may never be.
        self._dispatch: Tuple[Tuple[EventListener, bool], ...] = ()
        # True when no listener overrides put(): events are then handed
        # out without creating a coroutine per event.
        self._dispatch_is_sync = True
        self._update_dispatch()

    def _update_dispatch(self) -> None:
        listeners = sorted(self._listeners,
                           key=lambda listener: listener is self.events)
        self._dispatch = tuple(
            (listener, type(listener).put is EventListener.put)
            for listener in listeners)
        self._dispatch_is_sync = all(fast for _, fast in self._dispatch)

    def _dispatch_event(self, msg: Message) -> Optional[Awaitable[None]]:
        """
        Give an event to every registered listener (bottom half).

        Without a listener that overrides ``put()``, this is done at once,
        with no coroutine per event, and returns `None`; otherwise it
        returns the awaitable that does it.  (The session core dropped
        any event whose name is not a string.)

        :param msg: The event.
        :return: `None`, or something to await.
        """
        if self._dispatch_is_sync:
            self._dispatch_at_once(msg)
            return None
        return _Delivery(self, msg)

    def _dispatch_at_once(self, msg: Message) -> None:
        """Give an event to every listener; none overrides put()."""
        delivered = False
        for listener, _ in self._dispatch:
            try:
                if not listener.accept(msg):
                    continue
            except _FILTER_ERRORS as err:
                self._listener_failed(listener, msg, err)
                continue
            # The first taker gets the message itself, later ones copies.
            listener._deliver(_copy_of(msg) if delivered else msg)
            delivered = True

    async def _dispatch_awaiting(self, msg: Message) -> None:
        """Give an event to every listener, awaiting overridden put()s."""
        delivered = False
        for listener, fast in self._dispatch:
            if fast:
                try:
                    if not listener.accept(msg):
                        continue
                except _FILTER_ERRORS as err:
                    self._listener_failed(listener, msg, err)
                    continue
                listener._deliver(_copy_of(msg) if delivered else msg)
            else:
                try:
                    await listener.put(msg.clone() if delivered else msg)
                except Exception as err:  # pylint: disable=broad-except
                    # (Awaited: a CancelledError here may be the task's.)
                    self._listener_failed(listener, msg, err)
                    continue
            delivered = True

    def _listener_failed(self, listener: EventListener, msg: Message,
                         err: BaseException) -> None:
        # One listener's bug must not cost every other caller the
        # session: that listener misses this event, and the error shows.
        logger.error("%r failed on event %s and misses it: %s", listener,
                     msg.get('event'), exception_summary(err))

    def register_listener(self, listener: EventListener) -> None:
        """
        Register and activate an `EventListener`.

        :param listener: The listener to activate.
        :raise ListenerError: If the given listener is already registered.
        """
        if listener in self._listeners:
            raise ListenerError(f"{listener!r} is already registered")
        self._listeners.append(listener)
        self._update_dispatch()

    def remove_listener(self, listener: EventListener) -> None:
        """
        Unregister and deactivate an `EventListener`.

        Its pending events are cleared via `EventListener.clear`, and a
        `EventListener.get` waiting on it raises `ListenerError` (so an
        ``async for`` over it ends); it can be registered again later.

        :param listener: The listener to deactivate.
        :raise ListenerError: If the given listener is not registered.
        """
        if listener not in self._listeners:
            raise ListenerError(f"{listener!r} is not registered")
        self._listeners.remove(listener)
        self._update_dispatch()
        listener.clear()
        listener._removed()

    @contextmanager
    def listen(self, *listeners: EventListener) -> Iterator[None]:
        """
        Context manager: listen with existing listeners inside the block.

        They are registered on entry and removed (their pending events
        cleared) on exit.

        :param listeners: One or more EventListeners to activate.
        :raise ListenerError: If the given listener(s) are already active.
        """
        registered: List[EventListener] = []
        try:
            for listener in listeners:
                self.register_listener(listener)
                registered.append(listener)
            yield
        finally:
            for listener in registered:
                self.remove_listener(listener)

    @contextmanager
    def listener(
            self,
            names: Optional[Union[str, Iterable[str]]] = (),
            event_filter: Optional[EventFilter] = None
    ) -> Iterator[EventListener]:
        """
        Context manager: listen with a new `EventListener` inside the block.

        :param names: One or more names of events to listen for.  When not
            provided, listen for ALL events.
        :param event_filter: An optional event filtering function.  When
            names are also provided, this acts as a secondary filter.
        :return: The newly created and active `EventListener`.
        """
        listener = EventListener(names, event_filter)
        with self.listen(listener):
            yield listener
