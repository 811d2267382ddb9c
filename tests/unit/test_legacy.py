"""The blocking client, against the fake server running in a thread."""

import asyncio
import errno
import gc
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    Runstate,
    StateError,
)
from qemu.qmp._blocking import SIGNAL_CHECK_INTERVAL
from qemu.qmp.codec import MessageTooLongError, TruncatedMessageError
from qemu.qmp.error import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol, QMPBadPortError
from qemu.qmp import handshake
from qemu.qmp.message import (
    NotQMPServerError,
    SerializationError,
)
from qemu.qmp.qmp_client import (
    BadReplyError,
    ExecuteTimeoutError,
    ServerParseError,
)
from qemu.qmp.testing import NO_REPLY, QUIT
from tests.helpers import ThreadedServer, unavailable


@pytest.fixture
def qmp(fake):
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    yield monitor
    monitor.close()


def on_async(fake, name, handler):
    """Register an async handler that runs in the server's loop."""
    fake.server.on(name, handler)


# ---------------------------------------------------------------------
# Connecting
# ---------------------------------------------------------------------

def test_connect_returns_greeting(fake):
    """connect() negotiates and returns the greeting as a dict."""
    monitor = QEMUMonitorProtocol(fake.start())
    greeting = monitor.connect()
    assert greeting['QMP']['capabilities'] == ['oob']
    assert type(greeting) is dict
    assert fake.server.negotiated
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


def test_connect_failure_names_the_address(tmp_path):
    """A missing socket is a ConnectError naming the path and the cause."""
    path = str(tmp_path / 'missing.sock')
    monitor = QEMUMonitorProtocol(path)
    with pytest.raises(ConnectError) as info:
        monitor.connect()
    assert isinstance(info.value.exc, FileNotFoundError)
    assert str(info.value).startswith(
        f"Failed to establish connection ({path}): [Errno 2]")
    monitor.close()


def test_greeting_timeout_says_what_to_check():
    """connect(timeout=...) against a server that never greets (the guest
    agent's socket, say) fails saying so, instead of waiting forever."""
    agent = ThreadedServer(greeting=None)
    try:
        monitor = QEMUMonitorProtocol(agent.start())
        with pytest.raises(ConnectError) as info:
            monitor.connect(timeout=0.05)
        assert 'No greeting within 0.05 seconds' in str(info.value)
        assert 'pass negotiate=False to connect()' in str(info.value)
        monitor.close()
    finally:
        agent.close()


def test_a_late_greeting_is_warned_about(monkeypatch, caplog):
    """Without a timeout, connect() waits for a greeting as long as it
    takes (the reference library's behaviour), but logs a WARNING after a
    few seconds that says what to do."""
    monkeypatch.setattr(handshake, 'GREETING_PATIENCE', 0.05)
    agent = ThreadedServer(greeting=None)
    try:
        monitor = QEMUMonitorProtocol(agent.start())
        with pytest.raises(ConnectError):
            monitor.connect(timeout=0.5)
        warnings = [record for record in caplog.records
                    if record.levelname == 'WARNING']
        assert len(warnings) == 1
        assert 'No greeting after 0.05 seconds' in warnings[0].getMessage()
        assert 'pass negotiate=False to connect()' in warnings[0].getMessage()
        monitor.close()
    finally:
        agent.close()


def test_connect_twice_is_a_state_error(qmp):
    """connect() on a connected client raises StateError."""
    with pytest.raises(StateError, match='already connected'):
        qmp.connect()


def test_reconnect_after_close(fake):
    """After close(), connect() opens a new session."""
    monitor = QEMUMonitorProtocol(fake.start())
    monitor.connect()
    monitor.close()
    monitor.connect()
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()
    assert fake.server.connections == 2


def test_bad_greeting_is_a_connect_error():
    """A greeting that is not QMP fails connect() with ConnectError."""
    bad = ThreadedServer(greeting={'hello': 'world'})
    try:
        monitor = QEMUMonitorProtocol(bad.start())
        with pytest.raises(ConnectError, match='Greeting'):
            monitor.connect()
        monitor.close()
    finally:
        bad.close()


def test_parse_address():
    """host:port and [IPv6]:port become tuples; anything else a path."""
    parse = QEMUMonitorProtocol.parse_address
    assert parse('127.0.0.1:4444') == ('127.0.0.1', 4444)
    assert parse('[::1]:4444') == ('::1', 4444)
    assert parse('[fe80::1%eth0]:5') == ('fe80::1%eth0', 5)
    assert parse('/run/qmp.sock') == '/run/qmp.sock'
    assert parse('/run/a:b:c') == '/run/a:b:c'
    with pytest.raises(QMPBadPortError, match="Bad port: 'x'"):
        parse('host:x')
    with pytest.raises(QMPBadPortError, match="Bad port: 'x'"):
        parse('[::1]:x')


def test_ipv6_tcp(fake):
    """The client connects to an IPv6 loopback address given as
    [::1]:port."""
    try:
        host, port = fake.run(fake.server.start(('::1', 0)))[:2]
    except OSError:
        unavailable('no IPv6 loopback here')
    monitor = QEMUMonitorProtocol(
        QEMUMonitorProtocol.parse_address(f'[{host}]:{port}'))
    monitor.connect()
    assert monitor.cmd('query-status')
    monitor.close()


def test_address_forms_typecheck():
    """A bad address type fails at connect() with ConnectError."""
    monitor = QEMUMonitorProtocol(socket.socket)  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as info:
        monitor.connect()
    assert isinstance(info.value.exc, TypeError)
    monitor.close()


def test_preconnected_socket(fake):
    """The address may be a connected socket, as QEMU's harness passes."""
    sock = fake.run(fake.server.socketpair())
    monitor = QEMUMonitorProtocol(sock)
    monitor.connect()
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()
    assert sock.fileno() == -1  # the client owned it and closed it


def test_sock_keyword_with_server_mode(fake):
    """QEMU's newer harness: QEMUMonitorProtocol(sock=s, server=True),
    then accept() negotiates on that socket."""
    sock = fake.run(fake.server.socketpair())
    monitor = QEMUMonitorProtocol(address=None, sock=sock, server=True,
                                  nickname='harness')
    assert 'QMP' in monitor.accept(5.0)
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_no_address_at_all():
    """Neither address nor sock is a ValueError."""
    with pytest.raises(ValueError):
        QEMUMonitorProtocol()


def test_server_mode_and_accept(fake, tmp_path):
    """server=True listens at construction; accept() takes QEMU's call
    and removes the socket file."""
    path = str(tmp_path / 'harness.sock')
    monitor = QEMUMonitorProtocol(path, server=True)
    assert os.path.exists(path)
    assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    fake.run(fake.server.connect_to(path))
    greeting = monitor.accept(5.0)
    assert 'QMP' in greeting
    assert not os.path.exists(path)
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_accept_timeout_then_retry(fake, tmp_path):
    """accept(timeout) gives up with TimeoutError when nobody calls, keeps
    listening, and a retry accepts QEMU at the same address."""
    path = str(tmp_path / 's')
    monitor = QEMUMonitorProtocol(path, server=True)
    with pytest.raises(asyncio.TimeoutError, match='nobody connected'):
        monitor.accept(0.05)
    with pytest.raises(asyncio.TimeoutError):
        monitor.accept(0)
    assert os.path.exists(path)
    fake.run(fake.server.connect_to(path))
    assert 'QMP' in monitor.accept(5.0)
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


def test_close_while_listening_removes_the_socket(tmp_path):
    """close() before anyone connected stops listening and cleans up."""
    path = str(tmp_path / 's')
    monitor = QEMUMonitorProtocol(path, server=True)
    monitor.close()
    assert not os.path.exists(path)
    with pytest.raises(StateError, match='server=True'):
        monitor.accept(0.05)


def test_accept_without_server_mode(fake):
    """accept() on a client not constructed with server=True."""
    monitor = QEMUMonitorProtocol(fake.start())
    with pytest.raises(StateError, match='server=True'):
        monitor.accept(1)
    monitor.close()


def test_connect_in_server_mode(tmp_path):
    """connect() on a listening client says to call accept()."""
    monitor = QEMUMonitorProtocol(str(tmp_path / 's'), server=True)
    with pytest.raises(StateError, match='accept'):
        monitor.connect()
    monitor.close()


def test_server_mode_bad_address(tmp_path):
    """Listening somewhere impossible fails at construction."""
    with pytest.raises(ConnectError, match=r'connection \(.*/no/dir\)'):
        QEMUMonitorProtocol(str(tmp_path / 'no' / 'dir'), server=True)
    with socket.socket() as sock, pytest.raises(ValueError):
        QEMUMonitorProtocol(sock, server=True)


def test_tcp(fake):
    """The client works over TCP; fd passing is refused."""
    host, port = fake.run(fake.server.start(('127.0.0.1', 0)))
    monitor = QEMUMonitorProtocol(
        QEMUMonitorProtocol.parse_address(f'{host}:{port}'))
    monitor.connect()
    assert monitor.cmd('query-status')
    with pytest.raises(QMPError, match='UNIX socket'):
        monitor.send_fd_scm(0)
    monitor.close()


# ---------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------

def test_cmd(qmp):
    """cmd() returns the value and raises ExecuteError on error."""
    assert qmp.cmd('query-status') == {'status': 'running'}
    assert qmp.cmd('echo', a=1, b='x') == {'a': 1, 'b': 'x'}
    with pytest.raises(ExecuteError, match='it failed') as info:
        qmp.cmd('fail')
    assert info.value.error_class == 'GenericError'
    assert qmp.command('query-status') == {'status': 'running'}


def test_cmd_raw_and_obj(qmp, fake):
    """cmd_raw/cmd_obj return whole replies as dicts, errors included,
    without the id the client added, with the caller's own id."""
    reply = qmp.cmd_raw('fail')
    assert reply == {'error': {'class': 'GenericError',
                               'desc': 'it failed'}}
    assert type(reply) is dict
    assert qmp.cmd_raw('echo', {'x': 1}) == {'return': {'x': 1}}
    assert qmp.cmd_obj({'execute': 'query-status'}) == \
        {'return': {'status': 'running'}}
    assert qmp.cmd_obj({'execute': 'query-status', 'id': 'mine'}) == \
        {'return': {'status': 'running'}, 'id': 'mine'}
    assert fake.server.received[-1]['id'] == 'mine'


@pytest.mark.parametrize('exec_id', [None, 0, 1.5, True, [1, 'a'],
                                     {'k': None}, ''])
def test_any_json_id_routes(qmp, exec_id):
    """Ids of every JSON type, null included, get their reply at once."""
    reply = qmp.cmd_obj({'execute': 'echo', 'arguments': {'v': 1},
                         'id': exec_id})
    assert reply == {'return': {'v': 1}, 'id': exec_id}


def test_duplicate_id_is_refused(qmp, fake):
    """A caller's id already waiting for its reply (in another thread) is
    a ValueError, and nothing is sent."""
    fake.server.on('hang', lambda args: NO_REPLY)
    waiter = threading.Thread(target=lambda: pytest.raises(
        ExecInterruptedError, qmp.cmd_obj, {'execute': 'hang', 'id': 7}))
    waiter.start()
    fake.run(fake.server.wait_for_command('hang'))
    received = len(fake.server.received)
    with pytest.raises(ValueError, match='in use'):
        qmp.cmd_obj({'execute': 'query-status', 'id': 7.0})
    assert len(fake.server.received) == received
    qmp.close()
    waiter.join(10)
    assert not waiter.is_alive()


def test_bad_commands_are_refused_before_sending(qmp, fake):
    """No 'execute', a reserved id, or a value JSON cannot carry: a clear
    error in the caller, nothing sent, the session fine."""
    before = len(fake.server.received)
    with pytest.raises(ValueError, match="'execute'"):
        qmp.cmd_obj({'arguments': {}})
    with pytest.raises(ValueError, match='reserved'):
        qmp.cmd_obj({'execute': 'x', 'id': '__qmp#1'})
    with pytest.raises(SerializationError):
        qmp.cmd('echo', f=object())
    with pytest.raises(SerializationError):
        qmp.cmd('echo', f=float('nan'))
    assert qmp.cmd('query-status') == {'status': 'running'}
    assert len(fake.server.received) == before + 1


def test_bad_reply_fails_its_command_only(qmp, fake):
    """A reply with neither 'return' nor 'error' is a BadReplyError for
    cmd_obj; the session goes on."""
    async def weird(args):
        msg = fake.server.received[-1]
        await fake.server.send_message({'id': msg['id'], 'what': 1})
        return NO_REPLY
    fake.server.on('weird', weird)
    with pytest.raises(BadReplyError, match="neither 'return' nor"):
        qmp.cmd_obj({'execute': 'weird'})
    assert qmp.cmd('query-status') == {'status': 'running'}


def test_exec_oob(qmp, fake):
    """exec-oob commands run, with the client's own id if none given."""
    assert qmp.cmd_obj({'exec-oob': 'query-status'}) == \
        {'return': {'status': 'running'}}


def test_command_timeout_leaves_connection_usable(qmp, fake, caplog):
    """A timed-out command raises asyncio.TimeoutError; its late reply is
    dropped without a warning and the next command gets its own reply."""
    release = fake.call(asyncio.Event)  # made in the server's loop

    async def slow(args):
        await release.wait()
        return {'late': True}
    fake.server.on('slow', slow)
    qmp.settimeout(0.05)
    with pytest.raises(asyncio.TimeoutError):
        qmp.cmd('slow')
    with pytest.raises(ExecuteTimeoutError, match="'slow' within 0.05"):
        qmp.cmd_obj({'execute': 'slow'})
    qmp.settimeout(None)
    with caplog.at_level(logging.DEBUG, logger='qemu.qmp'):
        fake.call(release.set)
        assert qmp.cmd('query-status') == {'status': 'running'}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any('stopped waiting' in r.getMessage() for r in caplog.records)


def test_send_timeout_when_server_stops_reading(qmp, fake):
    """With a timeout, a command the server never reads times out even
    while sending; sent in part, the stream is broken, so the session
    ends (and says so) rather than send half a message."""
    fake.run(fake.server.wait_connected())
    fake.call(fake.server.pause_reading)
    qmp.settimeout(0.2)
    with pytest.raises(asyncio.TimeoutError):
        qmp.cmd('echo', blob='x' * (8 << 20))
    with pytest.raises(StateError, match='half sent'):
        qmp.cmd('query-status')
    qmp.close()


def test_unknown_reply_id_is_dropped_with_a_warning(qmp, fake, caplog):
    """A reply nobody waits for is dropped (QMP spec) with a warning."""
    fake.run(fake.server.send_message({'return': {}, 'id': 'nobody'}))
    with caplog.at_level(logging.WARNING, logger='qemu.qmp'):
        assert qmp.cmd('query-status') == {'status': 'running'}
    assert any("unknown id 'nobody'" in r.getMessage()
               for r in caplog.records)


def test_send_fd_scm(qmp, fake):
    """send_fd_scm() passes a descriptor over the UNIX socket; the
    session goes on."""
    rfd, wfd = os.pipe()
    try:
        qmp.send_fd_scm(rfd)
    finally:
        os.close(rfd)
        os.close(wfd)
    assert qmp.cmd('query-status')


def test_send_fd_scm_refuses_a_closed_descriptor(qmp, fake):
    """A descriptor that is not open raises EBADF and sends nothing, even
    when its number is free to be reused."""
    rfd, wfd = os.pipe()
    os.close(rfd)
    os.close(wfd)
    received = len(fake.server.received)
    with pytest.raises(OSError) as info:
        qmp.send_fd_scm(rfd)
    assert info.value.errno == errno.EBADF
    assert qmp.cmd('query-status')
    assert len(fake.server.received) == received + 1
    assert not fake.server.garbage


def test_commands_before_connecting(fake):
    """Commands, events and fds before connect() raise StateError or
    return nothing."""
    monitor = QEMUMonitorProtocol(fake.start())
    with pytest.raises(StateError, match='Not connected'):
        monitor.cmd('query-status')
    with pytest.raises(StateError):
        monitor.send_fd_scm(0)
    assert monitor.pull_event() is None
    assert monitor.get_events() == []
    with pytest.raises(EOFError):
        monitor.pull_event(wait=True)
    monitor.close()


# ---------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------

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


def test_pull_event_without_waiting_reads_what_arrived(qmp, fake):
    """pull_event(False) sees an event that reached the socket, though
    no command has run since."""
    fake.emit('STOP')
    assert qmp.pull_event(wait=5.0)['event'] == 'STOP'
    fake.emit('RESUME')
    fake.run(fake.server.emit_event('SYNC'))
    events = []
    while len(events) < 2:
        event = qmp.pull_event(wait=False)
        if event is not None:
            events.append(event['event'])
    assert events == ['RESUME', 'SYNC']


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
    with pytest.raises(asyncio.TimeoutError):
        qmp.get_events(wait=0.05)


def test_events_during_a_command_are_kept(qmp, fake):
    """Events that arrive while waiting for a reply stay, in order."""
    async def noisy(args):
        for n in range(3):
            await fake.server.emit_event('TICK', {'n': n})
        return {}
    fake.server.on('noisy', noisy)
    qmp.cmd('noisy')
    assert [e['data']['n'] for e in qmp.get_events()] == [0, 1, 2]


def test_pull_event_on_a_dead_connection(qmp, fake):
    """When the server hangs up: the command waiting gets
    ExecInterruptedError, events already received come first, then
    EOFError at once instead of a hang."""
    async def die(args):
        await fake.server.emit_event('LAST')
        await fake.server.hang_up()
        return NO_REPLY
    fake.server.on('die', die)
    with pytest.raises(ExecInterruptedError) as info:
        qmp.cmd('die')
    assert isinstance(info.value.__cause__, EOFError)
    assert qmp.pull_event(wait=True)['event'] == 'LAST'
    with pytest.raises(EOFError):
        qmp.pull_event(wait=True)
    with pytest.raises(EOFError):
        qmp.pull_event(wait=5.0)
    assert qmp.pull_event(wait=False) is None
    assert qmp.get_events() == []


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


# ---------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------

def test_16_threads_500_commands_and_an_event_thread(qmp, fake):
    """16 threads run 500 commands each and check every reply, while one
    thread blocks in pull_event(wait=True): every reply reaches its
    sender, and the event thread sees every event once, in order."""
    threads_n, per_thread, every = 16, 500, 10
    expected_events = threads_n * (per_thread // every)

    async def tick(args):
        await fake.server.emit_event('TICK', {'t': args['t'],
                                              'i': args['i']})
        return args
    fake.server.on('tick', tick)
    errors, events = [], []

    def worker(t):
        try:
            for i in range(per_thread):
                name = 'tick' if i % every == 0 else 'echo'
                assert qmp.cmd(name, t=t, i=i) == {'t': t, 'i': i}
        except Exception as err:  # reported below
            errors.append(err)

    def event_reader():
        try:
            while len(events) < expected_events:
                event = qmp.pull_event(wait=True)
                events.append((event['data']['t'], event['data']['i']))
        except Exception as err:  # reported below
            errors.append(err)

    reader = threading.Thread(target=event_reader)
    reader.start()
    workers = [threading.Thread(target=worker, args=(t,))
               for t in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers + [reader]:
        thread.join(60)
        assert not thread.is_alive()
    assert not errors
    assert len(events) == len(set(events)) == expected_events
    for t in range(threads_n):
        mine = [i for tt, i in events if tt == t]
        assert mine == list(range(0, per_thread, every))


def test_close_from_another_thread(qmp, fake):
    """close() while other threads wait: they get ExecInterruptedError
    (and EOFError for events); later commands get StateError."""
    fake.server.on('hang', lambda args: NO_REPLY)
    outcomes = []

    def run(func):
        try:
            func()
        except (ExecInterruptedError, EOFError) as err:
            outcomes.append(type(err))

    threads = [threading.Thread(target=run, args=(lambda: qmp.cmd('hang'),)),
               threading.Thread(target=run, args=(
                   lambda: qmp.pull_event(wait=True),))]
    for thread in threads:
        thread.start()
    fake.run(fake.server.wait_for_command('hang'))
    qmp.close()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(outcomes, key=str) == [EOFError, ExecInterruptedError]
    with pytest.raises(StateError, match='closed'):
        qmp.cmd('query-status')
    fake.run(fake.server.wait_disconnected())


def test_close_racing_many_threads(fake):
    """close() while 8 threads run commands and one waits for events, 20
    times, landing at different moments: every call either succeeds or
    raises ExecInterruptedError or StateError (commands), EOFError
    (events); nothing else, and no thread is left waiting."""
    address = fake.start()
    for round_ in range(20):
        monitor = QEMUMonitorProtocol(address)
        monitor.connect()
        started = threading.Barrier(10)
        unexpected = []

        def commands():
            started.wait()
            try:
                while True:
                    monitor.cmd('echo', n=1)
            except (ExecInterruptedError, StateError):
                pass
            except BaseException as err:  # reported below
                unexpected.append(err)

        def events():
            started.wait()
            try:
                monitor.pull_event(wait=True)
            except EOFError:
                pass
            except BaseException as err:  # reported below
                unexpected.append(err)

        threads = [threading.Thread(target=commands) for _ in range(8)]
        threads.append(threading.Thread(target=events))
        for thread in threads:
            thread.start()
        started.wait()
        for _ in range(round_):  # close() a little later each round
            monitor.cmd('query-status')
        monitor.close()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        assert not unexpected, unexpected
        fake.run(fake.server.wait_disconnected())


def test_no_thread_no_event_loop(fake):
    """The blocking client starts no thread and no event loop."""
    before = threading.active_count()
    monitor = QEMUMonitorProtocol(fake.start())
    monitor.connect()
    monitor.cmd('query-status')
    assert threading.active_count() == before
    monitor.close()


async def test_usable_inside_a_running_event_loop(fake):
    """Called from a coroutine (a running loop in this thread), it works."""
    monitor = QEMUMonitorProtocol(fake.start())
    monitor.connect()
    assert monitor.cmd('query-status') == {'status': 'running'}
    monitor.close()


# ---------------------------------------------------------------------
# The end of a session
# ---------------------------------------------------------------------

def test_with_and_quit(fake):
    """with + connect + quit: QEMU answers and hangs up, and leaving the
    block raises nothing (the normal end of a session)."""
    fake.server.on('quit', QUIT)
    address = fake.start()
    for _ in range(5):
        with QEMUMonitorProtocol(address) as monitor:
            monitor.connect()
            assert monitor.cmd('quit') == {}
            assert monitor.pull_event(wait=5)['event'] == 'SHUTDOWN'
        fake.run(fake.server.wait_disconnected())


def test_command_to_a_server_that_left(qmp, fake):
    """A command sent after the server answered quit and left fails with
    ExecInterruptedError, the end is known (runstate), and the event the
    server sent before leaving is kept."""
    fake.server.on('quit', QUIT)
    assert qmp.cmd('quit') == {}
    fake.run(fake.server.wait_disconnected())
    with pytest.raises((ExecInterruptedError, StateError)):
        qmp.cmd('query-status')
    assert qmp.runstate is Runstate.DISCONNECTING
    assert qmp.pull_event()['event'] == 'SHUTDOWN'


def test_close_after_peer_died_raises_nothing(fake):
    """After the server hangs up or resets, close() raises nothing; a
    second close() is harmless."""
    address = fake.start()
    for kill in ('hang_up', 'reset'):
        monitor = QEMUMonitorProtocol(address)
        monitor.connect()
        fake.run(fake.server.wait_connected())
        if kill == 'reset':
            fake.call(fake.server.reset)
        else:
            fake.run(fake.server.hang_up())
        with pytest.raises((ExecInterruptedError, StateError)):
            monitor.cmd('query-status')
        monitor.close()
        monitor.close()
        fake.run(fake.server.wait_disconnected())


def test_garbage_collected_monitor_cleans_up(fake):
    """Dropping a connected monitor closes its socket (no
    ResourceWarning: warnings are errors here)."""
    monitor = QEMUMonitorProtocol(fake.start(), nickname='legacy')
    monitor.connect()
    del monitor
    gc.collect()
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


def hostile(fake, payload):
    """A command whose only answer is ``payload``, raw."""
    async def handler(args):
        await fake.server.send_raw(payload)
        return NO_REPLY
    fake.server.on('hostile', handler)


@pytest.mark.parametrize('payload, cause', [
    (b'{"event": "EARLY"}\r\nnot json\r\n', NotQMPServerError),
    (b'{"event": "EARLY"}\r\n{"error": {"class": "GenericError", '
     b'"desc": "bad"}}\r\n', ServerParseError),
    (b'{"event": "EARLY"}\r\n{"x": "' + b'y' * (11 << 20) + b'"}\r\n',
     MessageTooLongError),
])
def test_bad_input_ends_the_session_cleanly(qmp, fake, payload, cause):
    """Garbage, an id-less error, a huge message: the waiting command
    gets ExecInterruptedError naming the cause, the event before the fault
    is kept, later commands get StateError, close() is quiet."""
    hostile(fake, payload)
    with pytest.raises(ExecInterruptedError) as info:
        qmp.cmd('hostile')
    assert isinstance(info.value.__cause__, cause)
    assert cause.__name__ in str(info.value)
    assert qmp.pull_event()['event'] == 'EARLY'
    with pytest.raises(StateError) as state:
        qmp.cmd('query-status')
    assert isinstance(state.value.__cause__, cause)
    qmp.close()


def test_oversized_reply_fails_only_its_command(qmp, fake):
    """A reply over the limit (10 MiB) whose id can be read fails only
    its command, with MessageTooLongError naming its size; the event
    before it is kept and the session goes on."""
    async def big(args):
        await fake.server.emit_event('EARLY')
        return 'y' * (11 << 20)
    fake.server.on('big', big)
    with pytest.raises(MessageTooLongError, match='exceeds readbuflen') \
            as info:
        qmp.cmd('big')
    assert info.value.size > 11 << 20
    assert qmp.pull_event()['event'] == 'EARLY'
    assert qmp.cmd('query-status') == {'status': 'running'}


def test_hang_up_mid_message(qmp, fake):
    """A hang-up in the middle of a reply: TruncatedMessageError."""
    async def cut(args):
        await fake.server.send_raw(b'{"return": {"a": ')
        await fake.server.hang_up()
        return NO_REPLY
    fake.server.on('cut', cut)
    with pytest.raises(ExecInterruptedError) as info:
        qmp.cmd('cut')
    assert isinstance(info.value.__cause__, TruncatedMessageError)


# ---------------------------------------------------------------------
# Whole processes: exit without close(), Ctrl-C
# ---------------------------------------------------------------------

def client_process(address, body):
    """Start a Python process running ``body`` with QEMUMonitorProtocol
    imported and ``ADDRESS`` set; SIGINT gets its default handling."""
    script = textwrap.dedent('''\
        import sys
        from qemu.qmp import StateError
        from qemu.qmp.legacy import QEMUMonitorProtocol
        ADDRESS = sys.argv[1]
    ''') + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, '-X', 'dev', '-c', script, address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize('ending, status', [
    ('', 0),
    ('raise SystemExit(3)', 3),
    ('raise ValueError("uncaught")', 1),
])
def test_script_that_never_closes_exits_promptly(fake, ending, status):
    """A script that connects, runs a command and never calls close()
    exits at once with its own status (also after an uncaught exception),
    leaving no warning behind."""
    address = fake.start()
    proc = client_process(address, f'''
        q = QEMUMonitorProtocol(ADDRESS)
        q.connect()
        print(q.cmd('query-status'))
        {ending}
    ''')
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == status, err
    assert b"'running'" in out
    if status != 1:
        assert err == b''
    fake.run(fake.server.wait_disconnected())


def test_ctrl_c_during_a_command(fake):
    """Ctrl-C while a command waits raises KeyboardInterrupt once; the
    process exits; the session is closed."""
    fake.server.on('hang', lambda args: NO_REPLY)
    address = fake.start()
    proc = client_process(address, '''
        q = QEMUMonitorProtocol(ADDRESS)
        q.connect()
        q.cmd('hang')
    ''')
    fake.run(fake.server.wait_for_command('hang'))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGINT
    assert err.count(b'KeyboardInterrupt') == 1
    fake.run(fake.server.wait_disconnected())


def test_ctrl_c_caught_leaves_a_closed_session(fake):
    """A script that catches the KeyboardInterrupt finds the session
    closed (StateError), not half-used, and exits normally."""
    fake.server.on('hang', lambda args: NO_REPLY)
    address = fake.start()
    proc = client_process(address, '''
        q = QEMUMonitorProtocol(ADDRESS)
        q.connect()
        try:
            q.cmd('hang')
        except KeyboardInterrupt:
            print('interrupted')
        try:
            q.cmd('query-status')
        except StateError as err:
            print('then:', err)
        q.close()
    ''')
    fake.run(fake.server.wait_for_command('hang'))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == [
        'interrupted', 'then: The connection was closed.']


class _SignalRaceWatch:
    """
    Stands in for a connection's socket and pollers, and checks that no
    call could block past a signal: every poll has a short timeout, a
    ``recv()`` on a socket with nothing waiting has a short receive
    timeout (then gives up as the kernel would), and ``sendall()`` is
    never used.  Each of those waits is a slice; the third raises
    `KeyboardInterrupt`, as a SIGINT handler would when the call returns.
    """

    def __init__(self, conn):
        self.conn = conn
        self.sock = conn._sock
        self.pollers = conn._readable, conn._writable
        self.slices = []  # milliseconds
        conn._sock = conn._readable = conn._writable = self

    def remove(self):
        conn = self.conn
        conn._sock = self.sock
        conn._readable, conn._writable = self.pollers

    def _slice_passed(self, milliseconds):
        self.slices.append(milliseconds)
        if len(self.slices) == 3:
            raise KeyboardInterrupt

    def poll(self, milliseconds):
        self._slice_passed(milliseconds)
        return []  # nothing came in this slice

    def recv(self, size):
        if not select.select([self.sock], [], [], 0)[0]:
            seconds, microseconds = struct.unpack('ll', self.sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
            milliseconds = seconds * 1000 + microseconds / 1000
            assert milliseconds > 0, \
                "recv() would block: a signal could wait forever"
            self._slice_passed(milliseconds)
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily "
                                  "unavailable")
        return self.sock.recv(size)

    def sendall(self, data, flags=0):
        raise AssertionError("sendall() blocks: a signal could wait forever")

    def sendmsg(self, buffers, ancillary, flags=0):
        assert flags & socket.MSG_DONTWAIT, \
            "sendmsg() blocks: a signal could wait forever"
        raise BlockingIOError(errno.EAGAIN, "the server stopped reading")

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _send_to_a_server_that_stopped_reading(qmp, fake):
    fake.call(fake.server.pause_reading)
    qmp.cmd('echo', blob='x' * (8 << 20))


@pytest.mark.parametrize('wait, closes', [
    pytest.param(lambda q, f: q.cmd('hang'), True, id='cmd'),
    pytest.param(lambda q, f: q.settimeout(86400.0) or q.cmd('hang'), True,
                 id='cmd-with-timeout'),
    pytest.param(_send_to_a_server_that_stopped_reading, True, id='sending'),
    # Nothing is left half done: the session goes on.
    pytest.param(lambda q, f: q.pull_event(wait=True), False,
                 id='pull_event'),
    pytest.param(lambda q, f: q.send_fd_scm(sys.__stderr__.fileno()), False,
                 id='send_fd_scm'),
])
def test_waits_never_block_past_a_signal(qmp, fake, wait, closes):
    """
    CPython runs a signal handler between bytecodes: a SIGINT that lands
    just before a blocking ``recv()`` or a long ``poll()`` goes unhandled
    until data comes, so Ctrl-C would hang a script whose server is
    silent.  Every wait polls in short slices and reads only what is
    there; the interrupt propagates, and ends a session it left with a
    command half done.
    """
    fake.server.on('hang', lambda args: NO_REPLY)
    fake.run(fake.server.wait_connected())
    watch = _SignalRaceWatch(qmp._conn)
    with pytest.raises(KeyboardInterrupt):
        wait(qmp, fake)
    watch.remove()
    assert len(watch.slices) == 3
    # (The kernel rounds a receive timeout up to its clock tick.)
    longest = SIGNAL_CHECK_INTERVAL * 1000 + 10
    assert all(0 <= ms <= longest for ms in watch.slices), watch.slices
    if closes:
        with pytest.raises(StateError, match='The connection was closed'):
            qmp.cmd('query-status')
    else:
        assert qmp.cmd('query-status')['status'] == 'running'


class _SignalAsLockIsTaken:
    """
    Stands in for a connection's send lock: ``acquire()`` takes the real
    lock, then raises `KeyboardInterrupt`, as a SIGINT handler run when
    the call returns would.  A with statement has no such window, so
    ``__enter__`` takes the lock quietly.
    """

    def __init__(self, lock):
        self.lock = lock

    def acquire(self, *args, **kwargs):
        self.lock.acquire(*args, **kwargs)
        raise KeyboardInterrupt

    def release(self):
        self.lock.release()

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc_info):
        self.lock.release()


def test_a_signal_as_a_command_takes_the_send_lock_leaves_it_free(qmp):
    """A command without a timeout takes the send lock in a way that a
    signal cannot leave it taken: the command runs, and close() (which
    waits for the lock) returns."""
    conn = qmp._conn
    real = conn._send_lock
    conn._send_lock = _SignalAsLockIsTaken(real)
    outcome = []
    command = threading.Thread(target=lambda: outcome.append(
        _outcome_of(lambda: qmp.cmd('query-status'))))
    command.start()
    command.join(10)
    if command.is_alive():  # in close(), waiting for the lock
        real.release()
        command.join()
        pytest.fail("a signal left the send lock taken")
    conn._send_lock = real
    assert outcome == [{'status': 'running'}]
    assert not real.locked()


def _outcome_of(call):
    try:
        return call()
    except BaseException as exc:  # KeyboardInterrupt too
        return exc


class _SignalAsLockIsReleased:
    """
    Stands in for a connection's lock: releasing it while this thread
    holds the reader role raises `KeyboardInterrupt` (once), as a SIGINT
    handler run when the release returns would.
    """

    def __init__(self, conn):
        self.conn, self.lock = conn, conn._lock
        self.armed = True

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, exc_type, exc, traceback):
        self.lock.release()
        if self.armed and exc_type is None and self.conn._reading:
            self.armed = False
            raise KeyboardInterrupt


class _SignalAsCallBegins(dict):
    """Stands in for the marks of threads inside a call: marking one
    raises `KeyboardInterrupt` (once) after it marked."""

    armed = True

    def __setitem__(self, thread, call):
        super().__setitem__(thread, call)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


class _SignalAsCallEnds(dict):
    """Stands in for the marks of threads inside a call: the first
    removal raises `KeyboardInterrupt` before it removes anything."""

    armed = True

    def pop(self, *args):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return super().pop(*args)


@pytest.mark.parametrize('stand_in, wait', [
    pytest.param(lambda conn: setattr(
        conn, '_lock', _SignalAsLockIsReleased(conn)), True,
        id='reader-role'),
    pytest.param(lambda conn: setattr(
        conn, '_inside', _SignalAsCallBegins()), True, id='call-begins'),
    pytest.param(lambda conn: setattr(
        conn, '_inside', _SignalAsCallEnds()), False, id='call-ends'),
])
def test_a_signal_between_two_steps_leaves_the_session_usable(
        qmp, fake, stand_in, wait):
    """A signal handled between taking a role and the code that gives it
    back (the reader role of a wait, the mark of a thread inside a call,
    as the call begins or ends) leaves neither taken: the next calls
    read, and are not refused as re-entrant."""
    conn = qmp._conn
    lock = conn._lock
    stand_in(conn)
    with pytest.raises(KeyboardInterrupt):
        qmp.pull_event(wait=wait)
    conn._lock = lock
    stuck = conn._reading
    conn._reading = False  # (so that close() cannot wait forever)
    assert not stuck
    qmp.settimeout(5)
    fake.emit('STOP')
    assert qmp.pull_event(wait=5)['event'] == 'STOP'
    assert qmp.cmd('query-status')['status'] == 'running'


def test_close_by_the_thread_that_left_the_reader_role_taken(fake):
    """If a signal left the reader role taken by a thread that is not
    reading (it is closing), close() in that thread does not wait for
    the role to be given back."""
    qmp = QEMUMonitorProtocol(fake.start())
    qmp.connect()
    conn = qmp._conn

    def stale_role_then_close():
        with conn._lock:
            conn._reading, conn._reader = True, threading.get_ident()
        qmp.close()

    closing = threading.Thread(target=stale_role_then_close)
    closing.start()
    closing.join(10)
    if closing.is_alive():
        with conn._lock:
            conn._reading = False
            conn._changed.notify_all()
        closing.join()
        pytest.fail("close() waited for a reader role nobody had")
