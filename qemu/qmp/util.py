"""
Small helpers: method markers, exception formatting, backoff, QEMU
options, stream helpers.

`upper_half` and `bottom_half` mark which side of the library a method runs
on (see `qemu.qmp.protocol`); `exception_summary` and `pretty_traceback`
format errors for logs; `Backoff` paces retries; `qemu_option_value`
writes a value (a socket path) into a QEMU command-line option.  The
stream helpers at the end exist for callers of older releases, which
needed them on Python 3.6.
"""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
import warnings
from typing import Any, Coroutine, Iterable, Optional, TypeVar


T = TypeVar('T')


def not_nan(timeout: Optional[float]) -> Optional[float]:
    """
    ``timeout``, checked: no comparison with NaN is true, so a wait with a
    NaN timeout misbehaves (asyncio times it out at once, as if the peer
    were mute; a loop polling for a deadline never ends).

    :raise ValueError: ``timeout`` is NaN.
    """
    if timeout is not None and math.isnan(timeout):
        raise ValueError("a timeout cannot be NaN")
    return timeout


def upper_half(func: T) -> T:
    """
    Do-nothing decorator marking a method as "upper half".

    Upper-half methods run in the caller's task.  They may schedule
    bottom-half work but never call bottom-half methods directly.
    """
    return func


def bottom_half(func: T) -> T:
    """
    Do-nothing decorator marking a method as "bottom half".

    Bottom-half methods run in the reader or disconnect tasks, or in the
    event loop's flush of outgoing messages.  They handle their own errors
    where they can (an unhandled one ends the session), report to callers
    only through futures and task results, and never call upper-half
    methods directly.
    """
    return func


def exception_summary(exc: BaseException) -> str:
    """
    Return ``"ExceptionType: message"``, or just ``"ExceptionType"``.

    >>> exception_summary(ValueError("bad value"))
    'ValueError: bad value'
    >>> exception_summary(EOFError())
    'EOFError'

    :param exc: The exception to summarise.
    :return: A one-line summary.
    """
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ('__main__', 'builtins'):
        name = f"{module}.{name}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def plain_error(exc: BaseException) -> BaseException:
    """
    What ``exc``, raised by user code in a plain call (a hook, a filter:
    called, never awaited, so no cancellation can come out of it), is
    passed on as.

    A `StopIteration` cannot be a future's exception before Python 3.13,
    and an `asyncio.CancelledError` raised again in a task (by
    ``disconnect()``, say) would pass for that task's cancellation: each
    becomes the `RuntimeError` a coroutine raising a `StopIteration`
    raises, caused by it.  Anything else is itself.
    """
    if isinstance(exc, (StopIteration, asyncio.CancelledError)):
        wrapped = RuntimeError(f"user code raised {exc!r}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def pretty_traceback(prefix: str = "  | ") -> str:
    """
    Format the exception being handled, each line indented by ``prefix``.

    Useful for logging an inner traceback inside another one.

    :param prefix: The prefix to put before each line.
    :return: The formatted traceback, one string.
    """
    lines = traceback.format_exc().rstrip('\n').split('\n')
    return '\n'.join(prefix + line for line in lines)


class Backoff:
    """
    Pauses that double, between attempts and between sessions: times in
    seconds, no I/O.

    Each pause is twice the one before, from ``first`` up to ``longest``;
    a session that lived ``settled`` seconds or more starts again from
    none.

    >>> backoff = Backoff(0.01, 0.03)
    >>> [backoff.after_failure() for _ in range(4)]
    [0.01, 0.02, 0.03, 0.03]

    :param first: The first pause.
    :param longest: The longest pause.
    :param settled: How long a session lives to reset the pauses.
    """

    def __init__(self, first: float, longest: float,
                 settled: float = math.inf) -> None:
        self.first = first
        self.longest = longest
        self.settled = settled
        self._next = first

    def after_session(self, lived: float) -> float:
        """
        The pause before reconnecting a session that ended after
        ``lived`` seconds: none for a settled one, else the next pause.
        """
        if lived >= self.settled:
            self._next = self.first
            return 0.0
        return self.after_failure()

    def after_failure(self) -> float:
        """The pause after a failed attempt: the next one in line."""
        pause = self._next
        self._next = min(pause * 2, self.longest)
        return pause


#: The handler the package puts on its ``qemu.qmp`` logger, so that it is
#: silent until the application sets up logging (Python's advice for
#: libraries).
LIBRARY_HANDLER = logging.NullHandler()


def logging_configured(logger: logging.Logger) -> bool:
    """
    Whether ``logger``'s records reach a handler the application set up:
    any but the package's own `LIBRARY_HANDLER` (a `logging.NullHandler`
    of the application's counts: it chose silence).

    :param logger: A logger of the package.
    """
    current: Optional[logging.Logger] = logger
    while current is not None:
        if any(handler is not LIBRARY_HANDLER
               for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def nests_deeper_than(value: object, limit: int) -> bool:
    """
    Whether ``value`` nests objects and lists more than ``limit`` levels
    deep (the outermost one is level 1).

    Iterative, so any depth is safe to ask about: a value built in code
    can be deeper than any JSON parser would have let through.

    >>> nests_deeper_than({'a': [[1]]}, 3), nests_deeper_than([[[]]], 2)
    (False, True)
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def qemu_option_value(value: str) -> str:
    """
    Write ``value`` for a QEMU option string, such as ``-chardev``'s.

    QEMU splits ``socket,id=mon,path=PATH`` at commas and reads ``,,`` as
    one comma inside a value, so commas are doubled; nothing else needs
    escaping.  A comma is legal in a path (a ``$TMPDIR`` may have one).

    >>> f"socket,id=mon,path={qemu_option_value('/tmp/a,b/qmp.sock')}"
    'socket,id=mon,path=/tmp/a,,b/qmp.sock'

    :param value: The value, as it should reach QEMU.
    :return: The value to put after ``key=`` in the option string.
    """
    return value.replace(',', ',,')


def get_or_create_event_loop() -> asyncio.AbstractEventLoop:
    """
    Return this thread's event loop, making and setting one if it has none.

    The running loop if there is one; else the loop set for this thread;
    else a new loop, which is then set for this thread.  This is what
    `asyncio.get_event_loop` did before Python 3.12 deprecated (and 3.14
    removed) making one.  For synchronous code that needs a loop; asyncio
    code should use `asyncio.get_running_loop`.

    :return: The event loop.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        with warnings.catch_warnings():
            # Pythons that still make a loop here warn that they do.
            warnings.simplefilter('ignore', DeprecationWarning)
            return asyncio.get_event_loop()
    except RuntimeError:  # no loop set, and this Python makes none
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop


async def flush(writer: asyncio.StreamWriter) -> None:
    """
    Wait until ``writer`` has sent everything it buffered.

    `asyncio.StreamWriter.drain` only waits until the buffer falls below
    the high-water mark; this lowers the mark to zero for the wait, then
    restores it.

    :param writer: The stream to flush.
    """
    transport = writer.transport
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(0, 0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high, low)


# ---------------------------------------------------------------------
# Deprecated aliases (kept for callers of older releases)
#
# Python >= 3.9 has all of these built in; use the asyncio names.
# ---------------------------------------------------------------------

# deprecated in 0.1.0 - 2026-11-22: use asyncio.create_task
def create_task(coro: Coroutine[Any, Any, T],
                loop: Optional[asyncio.AbstractEventLoop] = None
                ) -> 'asyncio.Future[T]':
    """
    Run ``coro`` in a new task, in ``loop`` when given.

    :param coro: The coroutine to run.
    :param loop: The loop to create the task in, if not the running one.
    :return: The new task.
    """
    if loop is not None:
        return loop.create_task(coro)
    return asyncio.create_task(coro)


# deprecated in 0.1.0 - 2026-11-22: use StreamWriter.is_closing
def is_closing(writer: asyncio.StreamWriter) -> bool:
    """
    Return `True` if ``writer`` is closing or closed.

    :param writer: The stream to ask.
    """
    return writer.is_closing()


# deprecated in 0.1.0 - 2026-11-22: use StreamWriter.wait_closed
async def wait_closed(writer: asyncio.StreamWriter) -> None:
    """
    Wait until ``writer`` is closed.

    :param writer: The stream to wait on.
    """
    await writer.wait_closed()


# deprecated in 0.1.0 - 2026-11-22: use asyncio.run
def asyncio_run(coro: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """
    Run ``coro`` in a new event loop and return its result.

    :param coro: The coroutine to run.
    :param debug: Run the loop in debug mode.
    :return: What the coroutine returned.
    """
    return asyncio.run(coro, debug=debug)
