"""
The opening of a QMP session, for both clients: the greeting, and the
capability negotiation that follows it.

The server greets first (`read_greeting` checks the greeting); the client
answers with ``qmp_capabilities`` (`capabilities_command`), enabling
out-of-band execution whenever the server offers it; the server's reply
ends the handshake.  The guest agent does neither.  A failure in either
step is a `GreetingError` or a `NegotiationError`, with the root cause in
``exc``; the clients wrap it in `ConnectError`.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any, Dict, Mapping, Optional

from .error import ProtocolError
from .models import Greeting
from .util import logging_configured


__all__ = ['GreetingError', 'NegotiationError', 'read_greeting',
           'GREETING_PATIENCE', 'greeting_patience', 'warn_greeting_overdue',
           'greeting_timeout',
           'capabilities_command', 'negotiation_error']

#: Seconds without a greeting after which both clients log a WARNING (and
#: go on waiting, as the reference library does): by then the socket is
#: most likely the guest agent's, which never greets.
GREETING_PATIENCE = 5.0


class _WrappedProtocolError(ProtocolError):
    """
    Abstract: a protocol error that wraps a root cause.

    :param error_message: Human-readable string describing the error.
    :param exc: The root-cause exception.
    """

    def __init__(self, error_message: str, exc: Exception) -> None:
        super().__init__(error_message, exc)
        self.exc = exc

    def __str__(self) -> str:
        cause = str(self.exc)
        return f"{self.error_message}: {cause}" if cause \
            else self.error_message


class GreetingError(_WrappedProtocolError):
    """
    An exception occurred during the Greeting phase.

    :param error_message: Human-readable string describing the error.
    :param exc: The root-cause exception.
    """


class NegotiationError(_WrappedProtocolError):
    """
    An exception occurred during the Negotiation phase.

    :param error_message: Human-readable string describing the error.
    :param exc: The root-cause exception.
    """


def read_greeting(msg: Mapping[str, Any]) -> Greeting:
    """
    Check the first message of a session: it must be a QMP greeting.

    >>> read_greeting({'QMP': {'version': {}, 'capabilities': ['oob']}})
    Greeting({'QMP': {'version': {}, 'capabilities': ['oob']}})

    :param msg: The message received.
    :return: The greeting.
    :raise GreetingError: It is not one.
    """
    try:
        return Greeting(msg)
    except (KeyError, TypeError) as err:
        raise GreetingError("Did not understand Greeting", err) from err


def greeting_patience(timeout: Optional[float]) -> Optional[float]:
    """
    When to warn that the greeting is overdue, in a wait of ``timeout``
    seconds: `GREETING_PATIENCE`, or `None` for a wait that ends sooner.
    """
    patience = GREETING_PATIENCE
    return patience if timeout is None or timeout > patience else None


def warn_greeting_overdue(logger: logging.Logger, seconds: float,
                          fix: str) -> None:
    """
    Log that no greeting came in ``seconds``, what it most likely means,
    and what to do.

    :param logger: The client's logger.
    :param seconds: How long the client has waited.
    :param fix: What to do about it, in the client's own terms, such as
        ``"pass negotiate=False to connect()"``.
    """
    message = (f"No greeting after {seconds} seconds, still waiting; if "
               f"this is the guest agent's socket, which never greets, "
               f"{fix}")
    logger.warning("%s", message)
    if not logging_configured(logger):
        # Nobody reads the log: a silent wait looks like a hang.
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def greeting_timeout(seconds: Optional[float], cause: Exception,
                     fix: str) -> GreetingError:
    """
    The error for a greeting that did not come: what it most likely
    means, and what to do.

    :param seconds: How long the client waited.
    :param cause: The timeout.
    :param fix: What to do about it (see `warn_greeting_overdue`).
    """
    return GreetingError(
        f"No greeting within {seconds} seconds; if this is the guest "
        f"agent's socket, which never greets, {fix}", cause)


def capabilities_command(greeting: Greeting) -> Dict[str, Any]:
    """
    The ``qmp_capabilities`` command that answers ``greeting``.

    >>> greeting = read_greeting(
    ...     {'QMP': {'version': {}, 'capabilities': ['oob']}})
    >>> capabilities_command(greeting)
    {'execute': 'qmp_capabilities', 'arguments': {'enable': ['oob']}}

    :param greeting: The server's greeting.
    :return: The command, as a dict.
    """
    enable = ['oob'] if 'oob' in greeting.QMP.capabilities else []
    return {'execute': 'qmp_capabilities', 'arguments': {'enable': enable}}


def negotiation_error(err: Exception,
                      timeout: Optional[float]) -> NegotiationError:
    """
    The error for a negotiation that failed with ``err``.

    :param err: What went wrong: a timeout, a refusal, a protocol error.
    :param timeout: How long the client waited for the reply.
    """
    if isinstance(err, asyncio.TimeoutError):
        return NegotiationError(
            f"No reply to qmp_capabilities within {timeout} seconds", err)
    return NegotiationError("Negotiation failed", err)
