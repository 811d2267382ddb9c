"""AsyncProtocol on its own, through a tiny line-based protocol."""

import asyncio
import functools
import inspect
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys

import pytest

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.codec import MessageTooLongError
from qemu.qmp.protocol import (
    AsyncProtocol,
    ConnectError,
    EventLoopError,
    Runstate,
    StateError,
    require,
)
from qemu.qmp.util import Backoff
from qemu.qmp.testing import ServerThread
from tests.helpers import (
    assert_no_tasks_left,
    client_tasks,
    free_port,
    started,
    wait_for_state,
)


class LineProtocol(AsyncProtocol[bytes]):
    """Messages are lines; received ones go to a queue."""

    def __init__(self, name=None, readbuflen=1024):
        super().__init__(name, readbuflen)

    @functools.cached_property
    def inbox(self) -> asyncio.Queue:
        """Made at first use, in a running loop: on Python 3.9, a queue
        takes the thread's loop when made, and the tests set none."""
        return asyncio.Queue()

    async def _do_recv(self):
        return await self._readline()

    def _do_send(self, msg):
        self._write(msg)

    async def _on_message(self, msg):
        await self.inbox.put(msg)

    def send(self, msg):
        self._outgoing.put_nowait(msg)


class FailingSession(LineProtocol):
    """A protocol whose handshake fails."""

    async def _establish_session(self):
        raise OSError("handshake failed")


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / 'proto.sock')


async def pair(address, client_type=None):
    """A listening and a connecting LineProtocol (or ``client_type``),
    connected."""
    server = LineProtocol('server')
    client = (client_type or LineProtocol)('client')
    if isinstance(address, tuple) and address[1] == 0:
        address = (address[0], free_port())
    await server.start_server(address)
    accepting = asyncio.create_task(server.accept())
    await client.connect(address)
    await accepting
    return server, client


async def sees_hang_up(proto):
    """The peer of ``proto`` hung up: ``disconnect()`` reports it as
    EOFError."""
    await wait_for_state(proto, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await proto.disconnect()


async def close_both(first, second):
    """``first`` hangs up; ``second`` reports that as EOFError."""
    await first.disconnect()
    await sees_hang_up(second)
    assert first.runstate is second.runstate is Runstate.IDLE


@pytest.mark.parametrize('family', ['unix', 'tcp'])
async def test_session_both_ways(family, sock_path):
    """Messages flow both ways over UNIX and TCP; the peer's hang-up is
    reported by disconnect() as EOFError; both end IDLE."""
    address = sock_path if family == 'unix' else ('127.0.0.1', 0)
    server, client = await pair(address)
    assert server.runstate is client.runstate is Runstate.RUNNING
    client.send(b'ping\n')
    server.send(b'pong\n')
    assert await server.inbox.get() == b'ping\n'
    assert await client.inbox.get() == b'pong\n'

    await server.disconnect()
    assert server.runstate is Runstate.IDLE
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await client.disconnect()
    assert client.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_unix_socket_is_private_and_removed(sock_path):
    """start_server() makes an owner-only socket and removes it after."""
    server = LineProtocol()
    await server.start_server(sock_path)
    mode = stat.S_IMODE(os.stat(sock_path).st_mode)
    assert mode & 0o077 == 0
    assert server.runstate is Runstate.CONNECTING
    client = LineProtocol()
    accepting = asyncio.create_task(server.accept())
    await client.connect(sock_path)
    await accepting
    assert not os.path.exists(sock_path)
    await client.disconnect()
    await wait_for_state(server, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await server.disconnect()


async def test_stale_socket_file_is_replaced(sock_path):
    """A socket file left behind by a dead process does not block us."""
    old = socket.socket(socket.AF_UNIX)
    old.bind(sock_path)
    old.close()
    server, client = await pair(sock_path)
    await close_both(client, server)


async def test_preconnected_socket():
    """connect() accepts an already-connected socket.socket."""
    ours, theirs = socket.socketpair()
    proto, peer = LineProtocol(), LineProtocol()
    await proto.connect(ours)
    await peer.connect(theirs)
    proto.send(b'hi\n')
    assert await peer.inbox.get() == b'hi\n'
    await close_both(proto, peer)


async def test_connect_failure_returns_to_idle(sock_path):
    """A failed connect() wraps the root cause and leaves the object IDLE."""
    proto = LineProtocol()
    with pytest.raises(ConnectError) as info:
        await proto.connect(sock_path)
    assert isinstance(info.value.exc, FileNotFoundError)
    assert str(info.value).startswith(
        f'Failed to establish connection ({sock_path}): ')
    assert proto.runstate is Runstate.IDLE
    # And it can try again.
    with pytest.raises(ConnectError):
        await proto.connect(('127.0.0.1', 1))
    assert proto.runstate is Runstate.IDLE


async def test_bad_address_type():
    """An address of the wrong type is a ConnectError around TypeError."""
    proto = LineProtocol()
    with pytest.raises(ConnectError) as info:
        await proto.connect(42)
    assert isinstance(info.value.exc, TypeError)
    assert proto.runstate is Runstate.IDLE


async def test_failed_session_returns_to_idle(sock_path):
    """A failing _establish_session() rolls back and closes the stream."""
    server = LineProtocol()
    await server.start_server(sock_path)
    accepting = asyncio.create_task(server.accept())
    client = FailingSession()
    with pytest.raises(ConnectError) as info:
        await client.connect(sock_path)
    assert str(info.value) == \
        f'Failed to establish session ({sock_path}): handshake failed'
    assert client.runstate is Runstate.IDLE
    await accepting
    await wait_for_state(server, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await server.disconnect()
    assert_no_tasks_left()


async def test_cancel_during_accept(sock_path):
    """Cancelling accept() is not wrapped, and leaves the object IDLE with
    its socket file removed."""
    server = LineProtocol()
    await server.start_server(sock_path)
    accepting = asyncio.create_task(server.accept())
    await started()
    accepting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await accepting
    assert server.runstate is Runstate.IDLE
    assert not os.path.exists(sock_path)


async def test_cancel_during_connect_handshake(sock_path):
    """Cancelling connect() mid-handshake rolls back to IDLE."""
    gate = asyncio.Event()

    class SlowSession(LineProtocol):
        async def _establish_session(self):
            gate.set()
            await asyncio.Event().wait()

    server = LineProtocol()
    await server.start_server(sock_path)
    accepting = asyncio.create_task(server.accept())
    client = SlowSession()
    connecting = asyncio.create_task(client.connect(sock_path))
    await gate.wait()
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert client.runstate is Runstate.IDLE
    await accepting
    await wait_for_state(server, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await server.disconnect()


async def test_start_server_failure(tmp_path):
    """start_server() on an unusable path is a ConnectError; IDLE after."""
    proto = LineProtocol()
    with pytest.raises(ConnectError) as info:
        await proto.start_server(str(tmp_path / 'missing' / 'dir' / 's'))
    assert isinstance(info.value.exc, OSError)
    assert proto.runstate is Runstate.IDLE


async def test_start_server_and_accept(sock_path):
    """start_server_and_accept() is start_server() then accept()."""
    server = LineProtocol()
    serving = asyncio.create_task(server.start_server_and_accept(sock_path))
    await wait_for_state(server, Runstate.CONNECTING)  # it listens now
    client = LineProtocol()
    await client.connect(sock_path)
    await serving
    assert server.runstate is Runstate.RUNNING
    await close_both(client, server)


async def test_reconnect_after_disconnect(sock_path):
    """The same object connects again after disconnect()."""
    for _ in range(3):
        server, client = await pair(sock_path)
        client.send(b'x\n')
        assert await server.inbox.get() == b'x\n'
        await close_both(client, server)


async def test_state_errors(sock_path):
    """Calls in the wrong state raise StateError with the states, in the
    reference library's words, naming the class."""
    proto = LineProtocol()
    with pytest.raises(StateError) as info:
        await proto.accept()
    assert info.value.state is Runstate.IDLE
    assert info.value.required is Runstate.CONNECTING
    assert str(info.value) == 'LineProtocol is disconnected and idle.'

    server, client = await pair(sock_path)
    with pytest.raises(StateError) as info:
        await client.connect(sock_path)
    assert str(info.value) == \
        'LineProtocol is already connected and running.'
    with pytest.raises(StateError):
        await client.start_server(sock_path)
    await client.disconnect()
    await wait_for_state(server, Runstate.DISCONNECTING)
    with pytest.raises(StateError) as info:
        await server.connect(sock_path)
    assert str(info.value) == ('LineProtocol is disconnecting. '
                               'Call disconnect() to return to IDLE state.')
    with pytest.raises(EOFError):
        await server.disconnect()


async def test_state_is_checked_when_awaited(sock_path):
    """Guarded coroutine methods stay coroutine functions and check the
    runstate when awaited: a call made while connected and awaited after
    disconnect() raises StateError at once instead of hanging."""
    assert inspect.iscoroutinefunction(AsyncProtocol.connect)
    assert inspect.iscoroutinefunction(AsyncProtocol.accept)
    assert inspect.iscoroutinefunction(AsyncProtocol.start_server)
    server, client = await pair(sock_path)
    early = client.connect(sock_path)  # made while RUNNING...
    await client.disconnect()
    with pytest.raises(EOFError):
        await server.disconnect()
    late = server.accept()  # ...and one made while IDLE
    await server.start_server(sock_path)
    await asyncio.wait_for(early, 5)  # awaited while IDLE: it connects
    await asyncio.wait_for(late, 5)  # awaited while CONNECTING: accepts
    assert client.runstate is server.runstate is Runstate.RUNNING
    await close_both(client, server)


async def test_disconnect_when_idle():
    """disconnect() on an IDLE object goes DISCONNECTING -> IDLE, as the
    reference library's does, and raises nothing."""
    proto = LineProtocol()
    seen = []

    async def watch():
        for _ in range(2):
            seen.append(await proto.runstate_changed())

    watcher = asyncio.create_task(watch())
    await started()
    await proto.disconnect()
    await watcher
    assert seen == [Runstate.DISCONNECTING, Runstate.IDLE]
    assert proto.runstate is Runstate.IDLE


async def test_runstate_changed_never_loses_a_change(tmp_path):
    """A connect() that fails at once goes through three states without
    yielding to the watcher; the watcher still sees each, in order."""
    proto = LineProtocol()
    seen = []

    async def watch():
        for _ in range(3):
            seen.append(await proto.runstate_changed())

    watcher = asyncio.create_task(watch())
    await started()
    with pytest.raises(ConnectError):
        await proto.connect(str(tmp_path / 'absent.sock'))
    await asyncio.wait_for(watcher, 5)
    assert seen == [Runstate.CONNECTING, Runstate.DISCONNECTING,
                    Runstate.IDLE]


async def test_runstate_changed_per_task_positions():
    """Each task has its own position: a first call waits for the next
    change; a task far behind skips to the oldest change kept."""
    proto = LineProtocol()
    for _ in range(20):  # 40 changes, more than are kept
        await proto.disconnect()

    async def next_change():
        return await proto.runstate_changed()

    first = asyncio.create_task(next_change())
    await started()
    assert not first.done()
    await proto.disconnect()
    assert await first is Runstate.DISCONNECTING

    behind = []

    async def fall_behind():
        behind.append(await proto.runstate_changed())
        await gate.wait()
        for _ in range(3):
            behind.append(await proto.runstate_changed())

    gate = asyncio.Event()
    task = asyncio.create_task(fall_behind())
    await started()
    for _ in range(20):
        await proto.disconnect()
    gate.set()
    await task
    # It saw change k (DISCONNECTING), then 39 more happened: k+1 (IDLE)
    # to k+39.  The 32 kept are k+8 .. k+39, and k+8 is a DISCONNECTING.
    assert behind == [Runstate.DISCONNECTING] + \
        [Runstate.DISCONNECTING, Runstate.IDLE, Runstate.DISCONNECTING]


async def test_runstate_changed_reports_each_state(sock_path):
    """runstate_changed() wakes on every transition with the new state."""
    server = LineProtocol()
    seen = []

    async def watch():
        while True:
            seen.append(await server.runstate_changed())
            if seen[-1] is Runstate.IDLE:
                return

    watcher = asyncio.create_task(watch())
    await started()
    await server.start_server(sock_path)
    client = LineProtocol()
    accepting = asyncio.create_task(server.accept())
    await client.connect(sock_path)
    await accepting
    await server.disconnect()
    await watcher
    assert seen == [Runstate.CONNECTING, Runstate.RUNNING,
                    Runstate.DISCONNECTING, Runstate.IDLE]
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await client.disconnect()


async def test_line_too_long_ends_session(sock_path):
    """A line over readbuflen ends the session with MessageTooLongError,
    after the lines before it were delivered."""
    server, client = await pair(sock_path)
    server.send(b'short\n' + b'x' * 2000 + b'\n')
    assert await client.inbox.get() == b'short\n'
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(MessageTooLongError, match='readbuflen'):
        await client.disconnect()
    await wait_for_state(server, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await server.disconnect()


async def test_unterminated_last_line_is_delivered(sock_path):
    """Bytes after the last newline arrive as a final line before EOF."""
    server, client = await pair(sock_path)
    await server._send(b'partial')  # written now, not queued
    await server.disconnect()
    assert await client.inbox.get() == b'partial'
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await client.disconnect()


async def test_ssl_errors_are_connect_errors(tmp_path):
    """A TLS handshake against a plain server fails as ConnectError."""
    listener = socket.create_server(('127.0.0.1', 0))
    port = listener.getsockname()[1]

    async def plain_server():
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        conn, _ = await loop.sock_accept(listener)
        await loop.sock_sendall(conn, b'not tls at all\n' * 10)
        conn.close()

    serving = asyncio.create_task(plain_server())
    context = ssl.create_default_context()
    proto = LineProtocol()
    with pytest.raises(ConnectError) as info:
        await proto.connect(('127.0.0.1', port), ssl=context)
    assert isinstance(info.value.exc, (ssl.SSLError, OSError))
    assert proto.runstate is Runstate.IDLE
    await serving
    listener.close()


async def test_repr_and_name():
    """repr() shows name and runstate; the name picks the logger."""
    proto = LineProtocol()
    assert repr(proto) == '<LineProtocol runstate=IDLE>'
    assert proto.logger.name == 'qemu.qmp.protocol'
    proto.name = 'vm1'
    assert repr(proto) == "<LineProtocol name='vm1' runstate=IDLE>"
    assert proto.logger.name == 'qemu.qmp.protocol.vm1'


def test_illegal_transition_is_a_bug():
    """_set_state() refuses a transition that is not in the table."""
    proto = LineProtocol()
    with pytest.raises(RuntimeError, match='IDLE -> RUNNING'):
        proto._set_state(Runstate.RUNNING)


def test_require_decorator():
    """require() raises StateError outside the required state."""
    class Thing(LineProtocol):
        @require(Runstate.RUNNING)
        def act(self):
            return 'acted'

    with pytest.raises(StateError, match='Thing is disconnected and idle'):
        Thing().act()


async def test_accept_without_start_server_on_connecting_object():
    """accept() in CONNECTING without a listener is a QMPError."""
    proto = LineProtocol()
    proto._set_state(Runstate.CONNECTING)
    with pytest.raises(QMPError, match='start_server'):
        await proto.accept()


async def test_no_message_formatting_without_debug(sock_path, caplog):
    """With DEBUG off, messages are never turned into strings for logs."""
    class Tracked(bytes):
        formatted = 0

        def __str__(self):
            Tracked.formatted += 1
            return bytes.__str__(self)

    server, client = await pair(sock_path)
    with caplog.at_level(logging.INFO, logger='qemu.qmp'):
        client.send(Tracked(b'hello\n'))
        assert await server.inbox.get() == b'hello\n'
    assert Tracked.formatted == 0
    await close_both(client, server)


async def test_disconnect_while_accepting(sock_path):
    """disconnect() while accept() waits for a peer: accept() fails with
    ConnectError (ConnectionAbortedError), the socket file is gone, and
    the object can listen again."""
    class Watched(LineProtocol):
        async def _do_accept(self):
            waiting.set()
            await super()._do_accept()

    waiting = asyncio.Event()
    proto = Watched()
    await proto.start_server(sock_path)
    accepting = asyncio.create_task(proto.accept())
    await waiting.wait()
    await asyncio.wait_for(proto.disconnect(), 5)
    with pytest.raises(ConnectError) as info:
        await asyncio.wait_for(accepting, 5)
    assert isinstance(info.value.exc, ConnectionAbortedError)
    assert proto.runstate is Runstate.IDLE
    assert not os.path.exists(sock_path)
    server, client = await pair(sock_path)
    await close_both(client, server)


def test_a_script_that_never_disconnects_exits_quietly():
    """asyncio.run() cancels the reader and writer of a client nobody
    disconnected: the connection is closed then, with no ResourceWarning
    ("unclosed StreamWriter") and no error from asyncio."""
    script = (
        "import asyncio\n"
        "from qemu.qmp import QMPClient\n"
        "from qemu.qmp.testing import ServerThread\n"
        "with ServerThread() as thread:\n"
        "    async def main():\n"
        "        qmp = QMPClient('careless')\n"
        "        await qmp.connect(thread.address)\n"
        "    asyncio.run(main())\n"
        "print('done')\n")
    result = subprocess.run([sys.executable, '-X', 'dev', '-c', script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'done\n'
    assert result.stderr == ''


def test_a_client_outliving_its_event_loop_says_so_and_recovers():
    """asyncio.run(connect()), then asyncio.run(execute()): the session
    died with the first loop.  The second call says so at once instead of
    waiting for ever, and disconnect() brings the client back to IDLE,
    ready to connect in the new loop."""
    with ServerThread() as thread:
        thread.server.on('query-status', {'status': 'running'})
        qmp = QMPClient('moved')
        asyncio.run(qmp.connect(thread.address))

        async def ping():
            return await asyncio.wait_for(qmp.execute('query-status'), 10)

        with pytest.raises(EventLoopError, match='event loop that has ended'
                           '.*disconnect()'):
            asyncio.run(ping())
        with pytest.raises(EventLoopError):
            asyncio.run(qmp.connect(thread.address))
        with pytest.raises(EventLoopError):
            asyncio.run(qmp.runstate_changed())
        with pytest.raises(EventLoopError):
            asyncio.run(qmp.session_events().__anext__())
        asyncio.run(qmp.disconnect())
        assert qmp.runstate is Runstate.IDLE

        async def again():
            await qmp.connect(thread.address)
            try:
                return await ping()
            finally:
                await qmp.disconnect()

        assert asyncio.run(again()) == {'status': 'running'}
        assert qmp.runstate is Runstate.IDLE


def test_a_client_used_from_another_running_loop_says_so():
    """Connected in a loop that still runs (in another thread), used from
    this one: an error at once, and the session is left alone."""
    with ServerThread() as thread:
        thread.server.on('query-status', {'status': 'running'})
        qmp = QMPClient('elsewhere')
        qmp.auto_reconnect = 10.0
        thread.run(qmp.connect(thread.address))
        try:
            for call in (qmp.execute('query-status'), qmp.disconnect(),
                         qmp.runstate_changed()):
                with pytest.raises(EventLoopError, match='another event'):
                    asyncio.run(asyncio.wait_for(call, 10))
            assert qmp.runstate is Runstate.RUNNING
            assert thread.run(qmp.execute('query-status')) \
                == {'status': 'running'}
        finally:
            thread.run(qmp.disconnect())


def test_a_loop_that_ended_while_reconnecting_is_told_too():
    """The loop ends while auto_reconnect pauses between sessions (the
    client is IDLE then): the next loop is told, and takes over."""
    with ServerThread() as thread:
        thread.server.on('query-status', {'status': 'running'})
        qmp = QMPClient('resilient')
        qmp.auto_reconnect = 60.0

        async def lose_the_session():
            await qmp.connect(thread.address)
            qmp._backoff = Backoff(60.0, 60.0)
            watching = asyncio.ensure_future(
                wait_for_state(qmp, Runstate.IDLE))
            await asyncio.sleep(0)  # (the watcher sees from here on)
            thread.run(thread.server.hang_up())
            await watching

        asyncio.run(lose_the_session())
        with pytest.raises(EventLoopError, match='ended'):
            asyncio.run(qmp.execute('query-status'))
        asyncio.run(qmp.disconnect())

        async def again():
            async with qmp:
                await qmp.connect(thread.address)
                return await qmp.execute('query-status')

        assert asyncio.run(again()) == {'status': 'running'}


def test_a_loop_closed_without_asyncio_run():
    """run_until_complete(connect()), then loop.close() with the session's
    tasks still pending: disconnect() in another loop returns to IDLE."""
    script = (
        "import asyncio\n"
        "from qemu.qmp import QMPClient\n"
        "from qemu.qmp.testing import ServerThread\n"
        "with ServerThread() as thread:\n"
        "    qmp = QMPClient('closed')\n"
        "    qmp.auto_reconnect = 10\n"
        "    loop = asyncio.new_event_loop()\n"
        "    loop.run_until_complete(qmp.connect(thread.address))\n"
        "    loop.close()\n"
        "    asyncio.run(qmp.disconnect())\n"
        "    print(qmp.runstate.name)\n")
    result = subprocess.run([sys.executable, '-c', script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'IDLE\n'


class FailingSend(LineProtocol):
    """Sending b'boom\\n' fails, as an unencodable message would."""

    def _do_send(self, msg):
        if msg == b'boom\n':
            raise ValueError("cannot send this")
        super()._do_send(msg)


async def test_idle_session_runs_no_writer_task(sock_path):
    """An idle session has one task, its reader: nothing waits to write
    until there is something to write (many sessions in one process)."""
    server, client = await pair(sock_path)
    tasks = client_tasks()
    assert len(tasks) == 2, tasks  # one reader each
    client.send(b'ping\n')
    assert await server.inbox.get() == b'ping\n'
    assert len(client_tasks()) == 2
    await close_both(client, server)


async def test_messages_sent_before_disconnect_go_out(sock_path):
    """What was sent before disconnect() is written before the close."""
    server, client = await pair(sock_path)
    for i in range(3):
        client.send(b'bye %d\n' % i)
    await client.disconnect()
    for i in range(3):
        assert await server.inbox.get() == b'bye %d\n' % i
    await sees_hang_up(server)
    assert_no_tasks_left()


async def test_failed_send_ends_session(sock_path):
    """A message that cannot be sent ends the session; disconnect()
    raises why, and what was queued before it went out."""
    server, client = await pair(sock_path, FailingSend)
    client.send(b'first\n')
    client.send(b'boom\n')
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(ValueError, match="cannot send this"):
        await client.disconnect()
    assert await server.inbox.get() == b'first\n'
    await sees_hang_up(server)
    assert_no_tasks_left()


async def test_peer_that_stops_reading_holds_messages_back(sock_path):
    """When the peer stops reading, messages wait in the outbox, not in
    an ever-growing transport buffer; once it reads again, everything
    arrives, in order, and no task is left waiting."""
    server, client = await pair(sock_path)
    server.readbuflen = 4096
    transport = client._writer.transport
    transport.set_write_buffer_limits(high=4096)
    server._writer.transport.pause_reading()
    line = b'x' * 1000 + b'\n'
    sent = 0
    while not client._outgoing.paused:
        client.send(b'%06d' % sent + line)
        sent += 1
        await asyncio.sleep(0)  # let the outbox flush
        assert sent < 100_000, "the transport never filled up"
    buffered = transport.get_write_buffer_size()
    for _ in range(100):
        client.send(b'%06d' % sent + line)
        sent += 1
    await asyncio.sleep(0)
    assert client._outgoing.qsize() == 100
    assert transport.get_write_buffer_size() == buffered

    server._writer.transport.resume_reading()
    for i in range(sent):
        assert await server.inbox.get() == b'%06d' % i + line
    draining = client._conn.writer_task
    if draining is not None:
        await draining
    assert not client._outgoing.paused
    assert len(client_tasks()) == 2
    await close_both(client, server)


class SendsDuringHandshake(LineProtocol):
    """Queues a message, then handshakes: the handshake goes first."""

    async def _establish_session(self):
        self._outgoing.put_nowait(b'after-handshake\n')
        await asyncio.sleep(0)  # a flush, if one were due, would run now
        await self._send(b'handshake\n')
        await super()._establish_session()


async def test_messages_queued_during_handshake_wait_for_it(sock_path):
    """What is queued before the session runs is written after the
    handshakes, as with the reference library's writer task."""
    server, client = await pair(sock_path, SendsDuringHandshake)
    assert await server.inbox.get() == b'handshake\n'
    assert await server.inbox.get() == b'after-handshake\n'
    await close_both(client, server)
