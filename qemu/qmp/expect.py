"""
Waiting for one event, with no race: `ExpectedEvent`, behind
`QMPClient.expect` and `QMPClient.execute_and_wait`.

A command and the event it causes race each other: QEMU may send the event
before ``execute()`` even returns.  Code that starts listening after the
command can miss it and wait forever.  An `ExpectedEvent` listens from
before the command until the event arrives, bounded by a timeout and by
the session: it never waits on a connection that is gone.

An event is expected by name, and optionally by the content of its
``data``: ``match`` is a partial dict, compared member by member, nested
mappings included (`data_matches`).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Mapping, Optional, Type

from .error import QMPError
from .events import EventListener, Events
from .message import Message
from .replies import ExecInterruptedError
from .util import not_nan


__all__ = ['ExpectedEvent', 'EventTimeoutError', 'data_matches']


def data_matches(data: object, match: Mapping[str, object]) -> bool:
    """
    Whether ``data`` has every member of ``match``, with equal values.

    A member of ``match`` that is itself a mapping is compared the same
    way, so ``{'job': {'id': 'j0'}}`` matches any ``job`` object whose
    ``id`` is ``'j0'``, whatever else it holds.

    >>> data_matches({'device': 'j0', 'len': 5}, {'device': 'j0'})
    True
    >>> data_matches({'job': {'id': 'j0', 'x': 1}}, {'job': {'id': 'j1'}})
    False

    :param data: An event's ``data`` (anything; only a mapping matches).
    :param match: The members it must have.
    :return: `True` if every member matches.
    """
    if not isinstance(data, Mapping):
        return False
    for key, wanted in match.items():
        if key not in data:
            return False
        value = data[key]
        if isinstance(wanted, Mapping):
            if not data_matches(value, wanted):
                return False
        elif value != wanted:
            return False
    return True


class EventTimeoutError(QMPError, asyncio.TimeoutError):
    """
    The expected event did not come in time.

    Any command sent meanwhile did complete.  It is an
    `asyncio.TimeoutError` too.

    :param description: What was expected, e.g. ``"STOP"``.
    :param timeout: The seconds it was given.
    """

    def __init__(self, description: str, timeout: float) -> None:
        # One argument only: see ExecuteTimeoutError.
        super().__init__(f"no {description} event within {timeout} seconds")
        #: What was expected.
        self.description: str = description
        #: The seconds it was given.
        self.timeout: float = timeout


class ExpectedEvent:
    """
    An event expected from now on: an async context manager.

    Made by `QMPClient.expect`.  It starts listening when the ``async
    with`` block is entered; at the end of the block it waits for the
    event (unless the block raised, or already waited), then stops
    listening.  The event is then in `event`.

    :param client: The client to listen on.
    :param name: The event's name.
    :param match: Members the event's ``data`` must have (`data_matches`).
    :param timeout: Seconds the end of the block waits for the event.
    :param session_over: Completes when the client's session ends.
    """

    def __init__(self, client: Events, name: str,
                 match: Optional[Mapping[str, object]],
                 timeout: Optional[float],
                 session_over: Optional[asyncio.Future[Any]]) -> None:
        self._client = client
        self._session_over = session_over
        self._timeout = timeout
        self._description = repr(name) if match is None \
            else f"{name!r} matching {dict(match)!r}"
        # Copied: a caller who changes their dict later changes nothing.
        wanted = None if match is None else dict(match)
        self._listener = EventListener(
            name, None if wanted is None else
            (lambda event: data_matches(event.get('data'), wanted)))
        #: The event, once it arrived.
        self.event: Optional[Message] = None

    def __repr__(self) -> str:
        return f"<ExpectedEvent {self._description}>"

    @property
    def description(self) -> str:
        """What is expected: the name, and the match if any."""
        return self._description

    async def __aenter__(self) -> 'ExpectedEvent':
        self._client.register_listener(self._listener)
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException],
                        traceback: Optional[TracebackType]) -> None:
        try:
            if exc is None and self.event is None:
                await self.wait(self._timeout)
        finally:
            self._client.remove_listener(self._listener)

    async def wait(self, timeout: Optional[float] = None) -> Message:
        """
        Wait for the event (at once if it arrived already).

        :param timeout: Seconds to wait; `None` waits as long as the
            session lasts.
        :return: The event.
        :raise EventTimeoutError: It did not come in time.
        :raise ExecInterruptedError: The session ended first.
        :raise ValueError: ``timeout`` is NaN.
        """
        not_nan(timeout)
        if self.event is None:
            try:
                self.event = await asyncio.wait_for(self._first(), timeout)
            except asyncio.TimeoutError:
                assert timeout is not None
                raise EventTimeoutError(self._description, timeout) from None
        return self.event

    async def _first(self) -> Message:
        over = self._session_over
        if over is None:
            over = asyncio.get_running_loop().create_future()
            over.set_result(None)
        events = self._listener.iter_until(over)
        try:
            async for event in events:
                return event
        finally:
            await events.aclose()
        raise ExecInterruptedError(f"the session ended before the "
                                   f"{self._description} event arrived")
