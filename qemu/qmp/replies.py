"""
What a reply means and which command it answers: the errors a command
can end with, the one place that judges a reply, and the reply router.

`ExecuteError` is a command QEMU refused; `ExecInterruptedError` one whose
reply never came because the session ended; `BadReplyError` and
`ServerParseError` replies that break the protocol.  `check_reply` and
`reply_value` are how both clients (`QMPClient` and the blocking
`qemu.qmp.legacy.QEMUMonitorProtocol`) tell a value from an error; which
command a reply answers is `qemu.qmp.core`'s business.  The classes are
also importable from `qemu.qmp.qmp_client`, where the reference library
defines them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from .error import ProtocolError, QMPError
from .message import Message
from .models import ErrorResponse


__all__ = ['ExecuteError', 'ExecInterruptedError', 'ExecuteTimeoutError',
           'ServerParseError', 'BadReplyError', 'check_reply',
           'reply_value']


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
