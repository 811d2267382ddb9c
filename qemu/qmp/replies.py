"""
What a reply means and which command it answers: the errors a command
can end with, the one place that judges a reply, and the reply router.

`ExecuteError` is a command QEMU refused; `ExecInterruptedError` one whose
reply never came because the session ended; `BadReplyError` and
`ServerParseError` replies that break the protocol.  `check_reply` and
`reply_value` are how both clients (`QMPClient` and the blocking
`qemu.qmp.legacy.QEMUMonitorProtocol`) tell a value from an error.
`PendingReplies` is `QMPClient`'s router: which execution waits for which
reply.  The classes are also importable from `qemu.qmp.qmp_client`, where
the reference library defines them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any, Deque, Dict, Hashable, Optional, Tuple

from ._ids import reply_key
from .error import ProtocolError, QMPError
from .message import Message
from .models import ErrorResponse


__all__ = ['ExecuteError', 'ExecInterruptedError', 'ExecuteTimeoutError',
           'ServerParseError', 'BadReplyError', 'check_reply',
           'reply_value', 'PendingReplies', 'NO_ID']


class ExecuteError(QMPError):
    """
    Exception raised by `QMPClient.execute()` on RPC failure.

    The server received, understood and answered the command, and the
    answer is that the command failed.  For example:

    .. code-block:: python

        import asyncio

        from qemu.qmp import ExecuteError, QMPClient


        async def main() -> None:
            qmp = QMPClient('my-vm')
            await qmp.connect('qmp.sock')
            try:
                await qmp.execute('block-dirty-bitmap-add',
                                  {'node': 'foo', 'name': 'my_bitmap'})
            except ExecuteError as err:
                print(err.error_class, err)
                # GenericError Cannot find device='foo' nor node-name='foo'
            await qmp.disconnect()


        asyncio.run(main())

    :param error_response: The RPC error response object.
    :param sent: The sent RPC message that caused the failure.
    :param received: The raw RPC error reply received.
    """

    def __init__(self, error_response: ErrorResponse,
                 sent: Message, received: Message) -> None:
        super().__init__(error_response, sent, received)
        #: The sent `Message` that caused the failure
        self.sent: Message = sent
        #: The received `Message` that indicated failure
        self.received: Message = received
        #: The parsed error response
        self.error: ErrorResponse = error_response

    @property
    def error_class(self) -> str:
        """The QMP error class, e.g. ``'GenericError'``."""
        return self.error.error.class_

    def __str__(self) -> str:
        return self.error.error.desc


class ExecInterruptedError(QMPError):
    """
    Raised by `QMPClient.execute()` (et al) when an RPC is interrupted.

    The session ended before the reply arrived; `QMPClient.disconnect()`
    raises the reason.  QMP cannot tell whether the command ran, so ask
    the server when it matters.  Here the test server plays a QEMU that
    goes away while a command waits:

    .. code-block:: python

        import asyncio

        from qemu.qmp import ExecInterruptedError, QMPClient
        from qemu.qmp.testing import NO_REPLY, QMPTestServer


        async def main() -> None:
            async with QMPTestServer() as server:
                server.on('query-block', lambda arguments: NO_REPLY)
                qmp = QMPClient()
                await qmp.connect(await server.start())
                waiting = asyncio.create_task(qmp.execute('query-block'))
                await server.wait_for_command('query-block')
                await server.hang_up()
                try:
                    await waiting
                except ExecInterruptedError as err:
                    print(err)
                try:
                    await qmp.disconnect()
                except EOFError:
                    print("The reason: the server closed the connection.")


        asyncio.run(main())
    """


class ExecuteTimeoutError(QMPError, asyncio.TimeoutError):
    """
    No reply came within the time a command was given.

    The session is still usable: the late reply, if it comes, is dropped
    quietly.  QMP cannot tell whether the command ran; ask the server when
    it matters.  It is an `asyncio.TimeoutError` too, so code written for
    ``asyncio.wait_for`` catches it.

    :param command: The command's name (never its arguments, which may
        hold secrets).
    :param timeout: The seconds it was given.
    """

    def __init__(self, command: str, timeout: float) -> None:
        # One argument only: asyncio.TimeoutError is an OSError on Python
        # 3.11+, which would read a second one as an errno.
        super().__init__(f"no reply to {command!r} within {timeout} "
                         f"seconds (the command may still run)")
        #: The command's name.
        self.command: str = command
        #: The seconds it was given.
        self.timeout: float = timeout


class _MsgProtocolError(ProtocolError):
    """
    Abstract: a protocol error caused by a particular `Message`.

    :param error_message: Human-readable string describing the error.
    :param msg: The QMP `Message` that caused the error.
    """

    def __init__(self, error_message: str, msg: Message,
                 *args: object) -> None:
        super().__init__(error_message, msg, *args)
        #: The received `Message` that caused the error.
        self.msg: Message = msg

    def __str__(self) -> str:
        return f"{self.error_message}\n  message was: {dict(self.msg)!r:.200}"


class ServerParseError(_MsgProtocolError):
    """
    The server sent an error without an id: it could not parse our input.

    :param error_message: Human-readable string describing the error.
    :param msg: The QMP `Message` that caused the error.
    """


class BadReplyError(_MsgProtocolError):
    """
    A reply was routed by its id, but is not a valid reply.

    A reply is malformed when it has neither 'return' nor 'error', or when
    its 'error' lacks members or has members of the wrong type.

    :param error_message: Human-readable string describing the error.
    :param msg: The malformed reply that was received.
    :param sent: The message that was sent that prompted the error.
    """

    def __init__(self, error_message: str, msg: Message,
                 sent: Message) -> None:
        super().__init__(error_message, msg, sent)
        #: The sent `Message` that prompted the malformed reply.
        self.sent: Message = sent


def check_reply(reply: Message, sent: Message) -> Optional[ErrorResponse]:
    """
    Check a reply: `None` for a 'return', the parsed 'error' otherwise.

    Both clients judge replies with this, so they agree on what is one.

    :param reply: The reply received.
    :param sent: The command it answers (for the error, if any).
    :return: `None`, or the error reply as an `ErrorResponse`.
    :raise BadReplyError: ``reply`` is neither a 'return' nor a valid
        'error'.
    """
    if 'return' in reply:
        return None
    if 'error' not in reply:
        raise BadReplyError(
            "reply has neither 'return' nor 'error'", reply, sent)
    try:
        return ErrorResponse(reply)
    except (KeyError, TypeError) as err:
        raise BadReplyError(f"malformed error reply: {err}",
                            reply, sent) from err


def reply_value(reply: Message, sent: Message) -> Any:
    """
    Return the 'return' member of a reply; raise its error otherwise.

    :param reply: The reply received.
    :param sent: The command it answers (for the error, if any).
    :return: The command's return value.
    :raise ExecuteError: ``reply`` is an error.
    :raise BadReplyError: ``reply`` is not a valid reply.
    """
    try:
        return reply['return']
    except KeyError:
        pass
    error = check_reply(reply, sent)
    assert error is not None
    raise ExecuteError(error, sent, reply)


class _NoId:
    def __repr__(self) -> str:
        return 'NO_ID'


#: Stands for "sent without an id" (JSON null is an id like any other).
NO_ID: object = _NoId()


# How many abandoned executions (timed out, cancelled) are remembered, so
# that their late replies are dropped quietly; older ones are forgotten,
# and a reply to one of those is logged as unknown.
_ABANDONED_KEPT = 1000


class PendingReplies:
    """
    The reply router: which execution waits for which reply.

    It owns what an id means.  Replies are keyed by ``_ids.reply_key`` of
    their JSON id, so ids of any JSON type route, ``null`` included.
    Executions sent without an id (`NO_ID`, the raw path) wait in a FIFO:
    the server answers in-band commands in order, so an id-less reply
    belongs to the oldest of them, even one that stopped waiting.
    An execution that stops waiting is remembered as abandoned, so that
    its late reply can be told from a stray one.
    """

    def __init__(self) -> None:
        self._by_key: Dict[Hashable, asyncio.Future[Message]] = {}
        self._idless: Deque[asyncio.Future[Message]] = deque()
        self._abandoned: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key) + len(self._idless)

    def add(self, exec_id: object
            ) -> Tuple[Hashable, asyncio.Future[Message]]:
        """
        Make the future that the reply to ``exec_id`` will resolve.

        :return: The key to `discard` it with, and the future.
        :raise ValueError: Another execution waits on the same id.
        """
        future = asyncio.get_running_loop().create_future()
        if exec_id is NO_ID:
            self._idless.append(future)
            return NO_ID, future
        key = reply_key(exec_id)
        if key in self._by_key:
            raise ValueError(f"ID {exec_id!r} is in use by an execution "
                             f"still waiting for its reply")
        self._by_key[key] = future
        return key, future

    def discard(self, key: Hashable,
                future: asyncio.Future[Message]) -> None:
        """
        The execution of ``future`` (added under ``key``) is over.

        If it still waited (it timed out or was cancelled), its id is
        remembered as abandoned.  An id-less one keeps its place in the
        FIFO: the next id-less reply is still its own.
        """
        if key is not NO_ID and self._by_key.get(key) is future:
            del self._by_key[key]
            abandoned = self._abandoned
            abandoned[key] = None
            if len(abandoned) > _ABANDONED_KEPT:
                abandoned.popitem(last=False)

    def resolve(self, exec_id: object, msg: Message) -> bool:
        """Hand ``msg`` to the execution waiting on ``exec_id``, if any."""
        future = self._by_key.pop(reply_key(exec_id), None)
        if future is None:
            return False
        # Done already: cancelled, and its task has not run since.  The
        # reply is that execution's own, and dropped.
        if not future.done():
            future.set_result(msg)
        return True

    def fail(self, exec_id: object, error: Exception) -> bool:
        """Raise ``error`` in the execution waiting on ``exec_id``, if
        any (it is then gone, as if answered)."""
        future = self._by_key.pop(reply_key(exec_id), None)
        if future is None:
            return False
        if not future.done():
            future.set_exception(error)
        return True

    def abandoned(self, exec_id: object) -> bool:
        """Whether ``exec_id`` is that of an abandoned execution; a late
        reply takes it off the list."""
        return self._abandoned.pop(reply_key(exec_id), False) is None

    def resolve_idless(self, msg: Message) -> bool:
        """Hand ``msg`` to the oldest id-less execution, if any (if that
        one was abandoned, the reply is its late one, and dropped)."""
        if not self._idless:
            return False
        future = self._idless.popleft()
        if not future.done():
            future.set_result(msg)
        return True

    def fail_all(self, reason: str) -> None:
        """Raise `ExecInterruptedError` in every waiting execution."""
        futures = [*self._by_key.values(), *self._idless]
        self._by_key.clear()
        self._idless.clear()
        for future in futures:
            if not future.done():
                future.set_exception(ExecInterruptedError(reason))
