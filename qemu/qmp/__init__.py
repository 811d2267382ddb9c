"""
QEMU Monitor Protocol (QMP) library, for asyncio.

`QMPClient` talks to QEMU, the QEMU Storage Daemon and the QEMU Guest Agent:
it connects (or accepts a connection), negotiates, executes commands and
delivers events through `EventListener` queues.  It is the protocol, not
the vocabulary: there are no command definitions here.

Every error raised on purpose derives from `QMPError`; see
`qemu.qmp.error` for the whole tree.  `qemu.qmp.legacy` has a blocking
wrapper for scripts, and `qemu.qmp.testing` a QMP server for your tests.

Example:

.. code-block:: python

    import asyncio

    from qemu.qmp import QMPClient


    async def main() -> None:
        qmp = QMPClient('my-vm')
        await qmp.connect('qmp.sock')
        status = await qmp.execute('query-status')
        print(f"VM status: {status['status']}")
        await qmp.disconnect()


    asyncio.run(main())
"""

# Python's own logging guidance for libraries: be silent by default.
import logging

from .error import QMPError
from .events import EventListener
from .message import Message
from .expect import EventTimeoutError
from .protocol import (
    ConnectError,
    EventLoopError,
    Runstate,
    SocketAddrT,
    StateError,
)
from .qmp_client import (
    ExecInterruptedError,
    ExecuteError,
    ExecuteTimeoutError,
    QMPClient,
    session,
)
from .util import LIBRARY_HANDLER


logging.getLogger('qemu.qmp').addHandler(LIBRARY_HANDLER)

__version__ = '0.1.0'

__all__ = (
    # Classes, most to least important
    'QMPClient',
    'session',
    'Message',
    'EventListener',
    'Runstate',

    # Exceptions, most generic to most explicit
    'QMPError',
    'StateError',
    'ConnectError',
    'ExecuteError',
    'ExecInterruptedError',
    'ExecuteTimeoutError',
    'EventTimeoutError',
    'EventLoopError',

    # Type aliases
    'SocketAddrT',
)
