"""
QEMU Monitor Protocol (QMP) library, for asyncio.

This release holds the foundation: `Message`, the data models and
`qemu.qmp.protocol.AsyncProtocol`, the generic session machinery the QMP
client is built on.  It is the protocol, not the vocabulary: there are no
command definitions here.

Every error raised on purpose derives from `QMPError`; see
`qemu.qmp.error` for the whole tree.
"""

# Python's own logging guidance for libraries: be silent by default.
import logging

from .error import QMPError
from .message import Message
from .protocol import ConnectError, Runstate, SocketAddrT, StateError


logging.getLogger('qemu.qmp').addHandler(logging.NullHandler())

__version__ = '0.1.0'

__all__ = (
    # Classes, most to least important
    'Message',
    'Runstate',

    # Exceptions, most generic to most explicit
    'QMPError',
    'StateError',
    'ConnectError',

    # Type aliases
    'SocketAddrT',
)
