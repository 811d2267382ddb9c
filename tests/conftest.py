"""
Shared fixtures: asyncio hygiene, the fake QMP server, real-peer policy.

Every test runs with warnings as errors (see pyproject.toml), and fails if
asyncio logged an error during it: "Task was destroyed but it is pending",
"exception was never retrieved" and unclosed transports all land there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from typing import AsyncIterator, Iterator, List

import pytest
import pytest_asyncio.plugin

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.testing import QMPTestServer
from tests.helpers import ThreadedServer, assert_no_tasks_left


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def asyncio_hygiene(request) -> Iterator[None]:
    """Fail the test if asyncio complained about anything (unless it is
    marked ``asyncio_errors_expected``: it checks them itself)."""
    collector = _Collector()
    asyncio_logger = logging.getLogger('asyncio')
    asyncio_logger.addHandler(collector)
    try:
        yield
        gc.collect()
    finally:
        asyncio_logger.removeHandler(collector)
    if request.node.get_closest_marker('asyncio_errors_expected'):
        return
    messages = [record.getMessage() for record in collector.records]
    assert not messages, f"asyncio logged errors: {messages}"


# The stock event loop, or uvloop's with QMP_TEST_LOOP=uvloop: the library
# must work on both, and ``make check`` runs the unit tests on each.
_UVLOOP = os.environ.get('QMP_TEST_LOOP') == 'uvloop'

if hasattr(pytest_asyncio.plugin, 'PytestAsyncioSpecs'):  # 1.4 and later
    def pytest_asyncio_loop_factories(config, item):
        """The loop each test runs in."""
        if _UVLOOP:
            import uvloop
            return {'uvloop': uvloop.new_event_loop}
        return {'asyncio': asyncio.new_event_loop}
else:
    # Earlier (the newest there is for Python 3.9) choose by policy.
    @pytest.fixture(scope='session')
    def event_loop_policy():
        """The policy whose loops the tests run in."""
        if _UVLOOP:
            import uvloop
            return uvloop.EventLoopPolicy()
        return asyncio.DefaultEventLoopPolicy()

    @pytest.fixture(scope='session', autouse=True)
    def no_implicit_event_loop() -> None:
        """Python 3.9 makes the main thread a loop the first time
        ``asyncio.get_event_loop()`` asks, and this pytest-asyncio asks
        (to restore it after each test); the next test's ``asyncio.run()``
        then drops that loop unclosed, a ResourceWarning.  Say the thread
        has none, so none is made."""
        asyncio.set_event_loop(None)


@pytest.fixture
async def server() -> AsyncIterator[QMPTestServer]:
    """A started fake QMP server on a temporary UNIX socket."""
    srv = QMPTestServer()
    srv.on('query-status', {'status': 'running', 'running': True})
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: QMPTestServer) -> AsyncIterator[QMPClient]:
    """A QMPClient connected to ``server``; checked for leaks afterwards."""
    qmp = QMPClient('test')
    assert server.address is not None
    await qmp.connect(server.address)
    yield qmp
    if qmp.runstate is not Runstate.IDLE:
        try:
            await qmp.disconnect()
        except Exception:  # the test already checked what it cares about
            pass
    await server.close()
    assert_no_tasks_left()


@pytest.fixture
def fake() -> Iterator[ThreadedServer]:
    """A fake QMP server running in a thread, for blocking clients."""
    srv = ThreadedServer()
    yield srv
    srv.close()
