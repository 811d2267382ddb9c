"""Connecting to a server still starting (retry=), and sessions that
always end: ``async with QMPClient()`` and ``qemu.qmp.session()``."""

import asyncio
import logging
import math
import re

import pytest

from qemu.qmp import ConnectError, QMPClient, Runstate, _sockets, session
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.message import DeserializationError
from qemu.qmp.testing import QUIT, QMPTestServer
from tests.helpers import assert_no_tasks_left, free_port, wait_for_state


class _Seen(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text):
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record):
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
async def retried():
    """An event set once a client has failed an attempt and will retry.
    (Made in the test's loop: Python 3.9 binds an Event to a loop when it
    is made.)"""
    seen = _Seen('trying again')
    logger = logging.getLogger('qemu.qmp')
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(seen)
    yield seen.event
    logger.removeHandler(seen)
    logger.setLevel(level)


@pytest.mark.parametrize('where', ['unix', 'tcp'])
async def test_retry_until_the_server_listens(tmp_path, retried, where):
    """A socket that does not exist yet (UNIX) or refuses (TCP) is tried
    again until the server listens there."""
    address = str(tmp_path / 'qmp.sock') if where == 'unix' \
        else ('127.0.0.1', free_port())
    qmp = QMPClient('patient')
    connecting = asyncio.ensure_future(qmp.connect(address, retry=30))
    await asyncio.wait_for(retried.wait(), 10)
    assert qmp.runstate is Runstate.CONNECTING
    async with QMPTestServer() as server:
        await server.start(address)
        await asyncio.wait_for(connecting, 10)
        assert qmp.runstate is Runstate.RUNNING
        await qmp.disconnect()


async def test_retry_gives_up_at_the_deadline(tmp_path):
    """The message reads as one sentence: what failed, where, why, and
    for how long it was tried."""
    qmp = QMPClient()
    path = str(tmp_path / 'never.sock')
    with pytest.raises(ConnectError) as err:
        await qmp.connect(path, retry=0.2)
    assert re.fullmatch(
        rf"Failed to establish connection \({re.escape(path)}\): \[Errno 2\] "
        rf"No such file or directory \(tried \d+ times in 0\.2\d* s\)",
        str(err.value)), str(err.value)
    assert isinstance(err.value.exc, FileNotFoundError)
    assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_no_retry_note_for_what_was_not_retried(tmp_path, retried):
    """An error that is not retried, and a disconnect() during the
    retries, say nothing of tries."""
    qmp = QMPClient()
    (tmp_path / 'file').touch()
    with pytest.raises(ConnectError) as err:
        await qmp.connect(str(tmp_path / 'file' / 'qmp.sock'), retry=30)
    assert 'tried' not in str(err.value)
    connecting = asyncio.ensure_future(
        qmp.connect(str(tmp_path / 'never.sock'), retry=math.inf))
    await asyncio.wait_for(retried.wait(), 10)
    await qmp.disconnect()
    with pytest.raises(ConnectError) as err:
        await connecting
    assert 'tried' not in str(err.value)


async def test_retry_is_only_for_a_missing_or_refusing_socket():
    """A server that answers with garbage is not tried again."""
    async with QMPTestServer(greeting=None) as server:
        address = await server.start()
        qmp = QMPClient()
        connecting = asyncio.ensure_future(qmp.connect(address, retry=30))
        await server.wait_connected()
        await server.send_raw(b'not json\n')
        with pytest.raises(ConnectError, match='establish session'):
            await asyncio.wait_for(connecting, 10)
        assert qmp.runstate is Runstate.IDLE


async def test_disconnect_ends_the_retries(tmp_path, retried):
    qmp = QMPClient()
    connecting = asyncio.ensure_future(
        qmp.connect(str(tmp_path / 'never.sock'), retry=600))
    await asyncio.wait_for(retried.wait(), 10)
    await qmp.disconnect()
    with pytest.raises(ConnectError) as err:
        await asyncio.wait_for(connecting, 10)
    assert isinstance(err.value.exc, ConnectionAbortedError)
    assert qmp.runstate is Runstate.IDLE


async def test_session_connects_and_always_disconnects(server):
    async with session(server.address, name='vm') as qmp:
        assert qmp.name == 'vm' and qmp.runstate is Runstate.RUNNING
        assert await qmp.execute('query-status')
    assert qmp.runstate is Runstate.IDLE
    with pytest.raises(KeyError):
        async with session(server.address) as qmp:
            raise KeyError('the block failed')
    assert qmp.runstate is Runstate.IDLE


async def test_quit_inside_a_session_is_no_error(server):
    """The server closing the connection is the normal end of a
    session: leaving the block raises nothing."""
    server.on('quit', QUIT)
    async with session(server.address) as qmp:
        with qmp.listener('SHUTDOWN') as shutdown:
            await qmp.execute('quit')
            await shutdown.get()
    assert qmp.runstate is Runstate.IDLE


async def test_a_broken_session_is_raised_at_the_end(server, caplog):
    """Garbage from the server is raised when the block ends, unless the
    block raised: then the block's error goes on, and this one is
    logged."""
    with pytest.raises(DeserializationError):
        async with QMPClient() as qmp:
            await qmp.connect(server.address)
            await server.send_raw(b'garbage\n')
            await wait_for_state(qmp, Runstate.DISCONNECTING)
    assert qmp.runstate is Runstate.IDLE
    with pytest.raises(RuntimeError, match='mine'):
        async with QMPClient() as qmp:
            await qmp.connect(server.address)
            await server.send_raw(b'garbage\n')
            await wait_for_state(qmp, Runstate.DISCONNECTING)
            raise RuntimeError('mine')
    assert 'The session had ended with: ' in caplog.text


async def test_session_for_the_guest_agent():
    async with QMPTestServer(greeting=None) as server:
        server.on('guest-ping', {})
        async with session(await server.start(), negotiate=False) as qga:
            assert qga.greeting is None
            assert await qga.execute('guest-ping') == {}


@pytest.mark.parametrize('address, suggestion', [
    ('127.0.0.1:4444', "('127.0.0.1', 4444)"),
    ('localhost:4444', "('localhost', 4444)"),
    ('[::1]:4444', "('::1', 4444)"),
])
async def test_a_host_and_port_string_is_told_to_be_a_tuple(address,
                                                            suggestion):
    """A string is a UNIX socket path; one that looks like host:port gets
    the tuple it most likely meant, from both clients."""
    qmp = QMPClient()
    with pytest.raises(ConnectError) as err:
        await qmp.connect(address)
    assert f"for TCP, pass the address as a tuple: {suggestion}" \
        in str(err.value)
    monitor = QEMUMonitorProtocol(address)
    with pytest.raises(ConnectError) as err:
        monitor.connect()
    assert suggestion in str(err.value)
    monitor.close()


@pytest.mark.parametrize('name', ['qmp.sock', 'vm1:0', 'host:99999'])
async def test_a_missing_socket_path_gets_no_tcp_hint(tmp_path, name):
    qmp = QMPClient()
    with pytest.raises(ConnectError) as err:
        await qmp.connect(str(tmp_path / name))
    assert 'TCP' not in str(err.value)
    with pytest.raises(ConnectError) as err:
        await qmp.connect(name)
    assert 'TCP' not in str(err.value)


async def test_session_names_its_own_setting_for_the_guest_agent():
    """session() has one setting for the guest agent: its hint names it,
    not the client's two attributes."""
    async with QMPTestServer(greeting=None) as server:
        with pytest.raises(ConnectError,
                           match=r'pass negotiate=False to session\(\)'):
            async with session(await server.start(), session_timeout=0.05):
                pass


async def test_transports_read_below_the_mmap_threshold(tmp_path):
    """asyncio's socket transport asks recv() for 256 KiB by default,
    which costs an mmap, an mremap and a munmap per read: streams opened
    by connecting and by accepting ask for less (uvloop's transports
    have no such setting)."""
    path = str(tmp_path / 'qmp.sock')
    listener = await _sockets.listen(path)
    accepting = asyncio.ensure_future(_sockets.accept(listener, None, 1024))
    connected = await _sockets.open_stream(path, None, 1024)
    accepted = await accepting
    _sockets.close_listener(listener)
    for _, writer in (connected, accepted):
        assert getattr(writer.transport, 'max_size', 0) \
            <= _sockets.RECV_SIZE
        writer.close()
        await writer.wait_closed()


async def test_a_large_reply_is_read_in_large_pieces(monkeypatch):
    """While a large reply streams in, the transport reads in asyncio's
    large pieces (fewer wakeups of the reader), and in pieces below the
    mmap threshold again after it."""
    sizes = []
    set_recv_size = _sockets.set_recv_size
    monkeypatch.setattr(_sockets, 'set_recv_size', lambda writer, size: (
        sizes.append(size), set_recv_size(writer, size)))
    async with QMPTestServer() as server:
        server.on('big', lambda args: 'x' * (4 << 20))
        server.on('small', lambda args: {})
        qmp = QMPClient()
        await qmp.connect(await server.start())
        assert sizes == [_sockets.RECV_SIZE]
        assert len(await qmp.execute('big')) == 4 << 20
        await qmp.execute('small')
        assert sizes == [_sockets.RECV_SIZE, _sockets.LARGE_RECV_SIZE,
                         _sockets.RECV_SIZE]
        await qmp.disconnect()
