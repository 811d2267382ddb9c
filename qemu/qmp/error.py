"""
The root of every exception this package raises.

Every error raised on purpose by ``qemu.qmp`` derives from `QMPError`, so
``except QMPError`` catches all of them.  Each class is defined in the module
that raises it; this map shows the whole tree in one place:

.. code-block:: text

    QMPError                                  error.py
    ├── ProtocolError                         error.py
    │   ├── DeserializationError              message.py
    │   │   └── NotQMPServerError             message.py
    │   ├── UnexpectedTypeError               message.py
    │   ├── MessageTooLongError               codec.py
    │   ├── TruncatedMessageError             codec.py
    │   ├── GreetingError                     handshake.py
    │   ├── NegotiationError                  handshake.py
    │   ├── ServerParseError                  replies.py
    │   └── BadReplyError                     replies.py
    ├── SerializationError                    message.py
    ├── StateError                            protocol.py
    ├── EventLoopError                        protocol.py
    ├── ConnectError                          protocol.py
    ├── ExecuteError                          replies.py
    ├── ExecInterruptedError                  replies.py
    ├── ExecuteTimeoutError                   replies.py
    ├── ListenerError                         events.py
    ├── EventTimeoutError                     expect.py
    ├── QMPBadPortError                       legacy.py
    ├── ReentrantCallError                    _blocking.py
    ├── QMPShellError                         qmp_shell.py
    ├── TranscriptError                       transcript.py
    └── ReplayError                           replay.py

`ReplayError <qemu.qmp.replay.ReplayError>` is an `AssertionError` too:
a test that replays a transcript fails with it.

``tests/unit/test_errors.py`` walks ``QMPError.__subclasses__()`` and fails
when this map and the code disagree.
"""

from __future__ import annotations


class QMPError(Exception):
    """
    Abstract error class for all errors originating from this package.

    Its `repr` shows what `str` says, never the arguments it was made
    with: those may hold the command that was sent, whose arguments may be
    secrets, and asyncio logs the repr of an exception nobody retrieved.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class ProtocolError(QMPError):
    """
    Abstract error class for protocol failures.

    These are, in general, the fault of the peer (it sent something that
    is not QMP) or a bug in this library.

    :param error_message: Human-readable string describing the error.
    """

    def __init__(self, error_message: str, *args: object) -> None:
        super().__init__(error_message, *args)
        #: Human-readable string describing the error.
        self.error_message: str = error_message

    def __str__(self) -> str:
        return self.error_message
