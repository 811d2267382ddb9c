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
import shutil
from typing import AsyncIterator, Iterator, List

import pytest

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.testing import CommandError, QMPTestServer, ServerThread


IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


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


def unavailable(what: str) -> None:
    """
    Something a test needs is missing: skip the test locally, fail it in
    CI, where everything must be there.
    """
    if IN_CI:
        pytest.fail(f"{what} (required in CI)")
    pytest.skip(reason=what)


def require_binary(name: str) -> str:
    """Return the path of ``name``, or skip (fail in CI) without it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    assert path is not None
    return path


def assert_no_tasks_left() -> None:
    """Only the current task may still exist."""
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current]
    assert not leftover, f"tasks leaked: {leftover}"


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


class ThreadedServer(ServerThread):
    """A QMPTestServer in an event loop of its own thread, like QEMU,
    answering query-status, echo (its arguments) and fail (an error)."""

    def __init__(self, greeting='default'):
        super().__init__(QMPTestServer() if greeting == 'default'
                         else QMPTestServer(greeting))
        self.server.on('query-status', {'status': 'running'})
        self.server.on('echo', lambda args: args)
        self.server.on('fail', CommandError('GenericError', 'it failed'))

    def emit(self, *names):
        for name in names:
            self.run(self.server.emit_event(name))


@pytest.fixture
def fake() -> Iterator[ThreadedServer]:
    """A fake QMP server running in a thread, for blocking clients."""
    srv = ThreadedServer()
    yield srv
    srv.close()
