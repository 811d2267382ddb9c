"""The blocking wrapper, against the fake server running in a thread."""

import asyncio
import gc
import os
import socket
import threading

import pytest

from qemu.qmp import ConnectError, ExecuteError
from qemu.qmp.error import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol, QMPBadPortError
from qemu.qmp.testing import NO_REPLY
from tests.conftest import ThreadedServer


@pytest.fixture
def qmp(fake):
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    yield monitor
    try:
        monitor.close()
    except EOFError:
        pass


def legacy_threads():
    return [t for t in threading.enumerate()
            if t.name == 'qmp-legacy-legacy']


def test_connect_returns_greeting(fake):
    """connect() negotiates and returns the greeting as a dict."""
    monitor = QEMUMonitorProtocol(fake.start())
    greeting = monitor.connect()
    assert greeting['QMP']['capabilities'] == ['oob']
    assert type(greeting) is dict
    monitor.close()


def test_connect_without_negotiation():
    """connect(negotiate=False) talks to a greeting-less agent."""
    agent = ThreadedServer(greeting=None)
    agent.server.on('guest-ping', {})
    try:
        monitor = QEMUMonitorProtocol(agent.start())
        assert monitor.connect(negotiate=False) is None
        assert monitor.cmd('guest-ping') == {}
        monitor.close()
    finally:
        agent.close()


def test_cmd(qmp):
    """cmd() returns the value and raises ExecuteError on error."""
    assert qmp.cmd('query-status') == {'status': 'running'}
    assert qmp.cmd('echo', a=1, b='x') == {'a': 1, 'b': 'x'}
    with pytest.raises(ExecuteError, match='it failed'):
        qmp.cmd('fail')
    assert qmp.command('query-status') == {'status': 'running'}


def test_cmd_raw_and_obj(qmp):
    """cmd_raw/cmd_obj return whole replies as dicts, errors included,
    without the id the client added."""
    reply = qmp.cmd_raw('fail')
    assert reply == {'error': {'class': 'GenericError',
                               'desc': 'it failed'}}
    assert type(reply) is dict
    assert qmp.cmd_raw('echo', {'x': 1}) == {'return': {'x': 1}}
    assert qmp.cmd_obj({'execute': 'query-status'}) == \
        {'return': {'status': 'running'}}
    assert qmp.cmd_obj({'execute': 'query-status', 'id': 'mine'}) == \
        {'return': {'status': 'running'}, 'id': 'mine'}


def test_parse_address():
    """host:port becomes a tuple; anything else a path."""
    assert QEMUMonitorProtocol.parse_address('127.0.0.1:4444') == \
        ('127.0.0.1', 4444)
    assert QEMUMonitorProtocol.parse_address('/run/qmp.sock') == \
        '/run/qmp.sock'
    with pytest.raises(QMPBadPortError, match="Bad port: 'x'"):
        QEMUMonitorProtocol.parse_address('host:x')


def test_server_mode_and_accept(fake, tmp_path):
    """server=True listens at construction; accept() takes QEMU's call."""
    path = str(tmp_path / 'harness.sock')
    monitor = QEMUMonitorProtocol(path, server=True)
    assert os.path.exists(path)
    fake.run(fake.server.connect_to(path))
    greeting = monitor.accept(5.0)
    assert 'QMP' in greeting
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_accept_timeout(tmp_path):
    """accept(timeout) gives up with TimeoutError when nobody calls."""
    monitor = QEMUMonitorProtocol(str(tmp_path / 's'), server=True)
    with pytest.raises(asyncio.TimeoutError):
        monitor.accept(0.05)
    monitor.close()
    assert not os.path.exists(str(tmp_path / 's'))


def test_server_mode_bad_address(tmp_path):
    """Listening somewhere impossible fails at construction."""
    with pytest.raises(ConnectError):
        QEMUMonitorProtocol(str(tmp_path / 'no' / 'dir'), server=True)


def test_preconnected_socket(fake):
    """The address may be a connected socket, as QEMU's harness passes."""
    sock = fake.run(fake.server.socketpair())
    monitor = QEMUMonitorProtocol(sock)
    monitor.connect()
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_pull_event_wait_modes(qmp, fake):
    """False and 0 do not wait; True and numbers do; timeouts raise."""
    assert qmp.pull_event() is None
    assert qmp.pull_event(wait=0) is None
    fake.emit('STOP')
    event = qmp.pull_event(wait=True)
    assert event['event'] == 'STOP' and type(event) is dict
    with pytest.raises(asyncio.TimeoutError):
        qmp.pull_event(wait=0.05)
    with pytest.raises(asyncio.TimeoutError):
        qmp.pull_event(wait=1)  # an int is a timeout too
    fake.emit('RESUME')
    assert qmp.pull_event(wait=5)['event'] == 'RESUME'


def test_pull_event_on_a_dead_connection(qmp, fake):
    """Waiting for an event when the server hangs up: events already
    received come first, then EOFError at once instead of a hang."""
    async def die(args):
        await fake.server.emit_event('LAST')
        await fake.server.hang_up()
        return NO_REPLY
    fake.server.on('die', die)
    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(
        pytest.raises(EOFError, qmp.pull_event, wait=True)))
    with pytest.raises(Exception):
        qmp.cmd('die')
    assert qmp.pull_event(wait=True)['event'] == 'LAST'
    waiter.start()
    waiter.join(10)
    assert waiter_result and not waiter.is_alive()
    with pytest.raises(EOFError):
        qmp.pull_event(wait=5.0)
    assert qmp.pull_event(wait=False) is None


def test_pull_event_wakes_when_connection_dies(qmp, fake):
    """A thread blocked in pull_event(wait=True) gets EOFError when the
    server hangs up meanwhile."""
    errors = []

    def wait_forever():
        try:
            qmp.pull_event(wait=True)
        except EOFError as err:
            errors.append(err)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    fake.run(fake.server.wait_connected())
    fake.run(fake.server.hang_up())
    waiter.join(10)
    assert not waiter.is_alive() and len(errors) == 1


def test_get_and_clear_events(qmp, fake):
    """get_events() returns and clears; clear_events() discards."""
    assert qmp.get_events() == []
    fake.emit('A', 'B')
    qmp.cmd('query-status')  # both events arrived before this reply
    assert [e['event'] for e in qmp.get_events()] == ['A', 'B']
    assert qmp.get_events() == []
    fake.emit('C')
    qmp.cmd('query-status')
    qmp.clear_events()
    assert qmp.pull_event() is None
    fake.emit('D')
    assert [e['event'] for e in qmp.get_events(wait=5.0)] == ['D']


def test_events_during_a_command_are_kept(qmp, fake):
    """Events that arrive while waiting for a reply stay, in order."""
    async def noisy(args):
        for n in range(3):
            await fake.server.emit_event('TICK', {'n': n})
        return {}
    fake.server.on('noisy', noisy)
    qmp.cmd('noisy')
    assert [e['data']['n'] for e in qmp.get_events()] == [0, 1, 2]


def test_command_timeout_leaves_connection_usable(qmp, fake):
    """A timed-out command raises; the next command works."""
    fake.server.on('slow', lambda args: NO_REPLY)
    qmp.settimeout(0.05)
    with pytest.raises(asyncio.TimeoutError):
        qmp.cmd('slow')
    qmp.settimeout(None)
    assert qmp.cmd('query-status') == {'status': 'running'}


def test_threads_share_one_monitor(qmp, fake):
    """Many threads use one monitor at once; one may block on events."""
    results, errors = [], []

    def worker(n):
        try:
            for i in range(30):
                assert qmp.cmd('echo', n=n, i=i) == {'n': n, 'i': i}
            results.append(n)
        except Exception as err:  # reported below
            errors.append(err)

    waiter_got = []
    waiter = threading.Thread(
        target=lambda: waiter_got.append(qmp.pull_event(wait=10)))
    waiter.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    fake.emit('DONE')
    waiter.join(30)
    assert not errors and sorted(results) == list(range(8))
    assert waiter_got[0]['event'] == 'DONE'


def test_close_after_peer_died_raises_only_eof(fake):
    """After the server hangs up, close() raises EOFError and stops."""
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    fake.run(fake.server.hang_up())
    with pytest.raises(EOFError):
        monitor.close()
    assert not legacy_threads()
    monitor.close()  # a second close is harmless


def test_close_after_reset_raises_eof(fake):
    """A connection reset also surfaces as EOFError from close()."""
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    fake.run(fake.server.wait_connected())
    fake.call(fake.server.reset)
    with pytest.raises(EOFError):
        monitor.close()


def test_context_manager(fake):
    """with-blocks close the monitor."""
    with QEMUMonitorProtocol(fake.start(), nickname='legacy') as monitor:
        monitor.connect()
        monitor.cmd('query-status')
    assert not legacy_threads()


def test_garbage_collected_monitor_cleans_up(fake):
    """Dropping a connected monitor disconnects it and stops its thread."""
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    assert legacy_threads()
    del monitor
    gc.collect()
    assert not legacy_threads()
    fake.run(fake.server.wait_disconnected())


def test_catch_all_getattr_subclass(fake):
    """A subclass answering every attribute (QEMU's guest-agent client)
    still works, including cleanup."""
    class Agent(QEMUMonitorProtocol):
        def __getattr__(self, name):
            def wrapper(**kwds):
                return self.cmd(name.replace('_', '-'), **kwds)
            return wrapper

    agent = Agent(fake.start(), nickname='legacy')
    agent.connect()
    assert agent.query_status() == {'status': 'running'}
    agent.close()
    del agent
    gc.collect()


def test_failed_init_subclass_is_safe():
    """__del__ of a half-built object with a catch-all __getattr__."""
    class Agent(QEMUMonitorProtocol):
        def __init__(self):
            pass  # never calls super().__init__

        def __getattr__(self, name):
            return lambda **kwds: None

    agent = Agent()
    del agent
    gc.collect()


async def test_usable_inside_a_running_event_loop(fake):
    """Called from a coroutine (a running loop in this thread), it works."""
    monitor = QEMUMonitorProtocol(fake.start())
    monitor.connect()
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_send_fd_scm(qmp):
    """send_fd_scm() passes a descriptor over the UNIX socket."""
    rfd, wfd = os.pipe()
    try:
        qmp.send_fd_scm(rfd)
    finally:
        os.close(rfd)
        os.close(wfd)
    assert qmp.cmd('query-status')


def test_calls_from_the_loop_thread_are_refused(qmp):
    """Calling back into the wrapper from its own loop is a clear error."""
    async def reenter():
        return qmp.cmd('query-status')
    with pytest.raises(QMPError, match='own event loop thread'):
        qmp._runner.run(reenter(), 5)


def test_tcp(fake):
    """The wrapper works over TCP; fd passing is refused."""
    host, port = fake.run(fake.server.start(('127.0.0.1', 0)))
    monitor = QEMUMonitorProtocol(
        QEMUMonitorProtocol.parse_address(f'{host}:{port}'))
    monitor.connect()
    assert monitor.cmd('query-status')
    with pytest.raises(QMPError, match='UNIX socket'):
        monitor.send_fd_scm(0)
    monitor.close()


def test_address_forms_typecheck():
    """A bad address type fails at connect() with ConnectError."""
    monitor = QEMUMonitorProtocol(socket.socket)  # type: ignore[arg-type]
    with pytest.raises(ConnectError):
        monitor.connect()
    monitor.close()
