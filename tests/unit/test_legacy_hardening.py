"""The blocking client where the reference held and earlier releases did
not: a busy monitor, signal handlers, huge timeouts, fork()."""

import asyncio
import json
import math
import os
import select
import signal
import socket
import threading
import warnings

import pytest

from qemu.qmp import _shell_cli, qmp_shell
from qemu.qmp import ConnectError, ExecInterruptedError, StateError
from qemu.qmp.legacy import QEMUMonitorProtocol, ReentrantCallError
from qemu.qmp.testing import NO_REPLY


@pytest.fixture
def qmp(fake):
    monitor = QEMUMonitorProtocol(fake.start())
    monitor.connect()
    yield monitor
    monitor.close()


@pytest.fixture
def busy_monitor(tmp_path):
    """A UNIX socket whose listen backlog is full: a QEMU monitor that
    serves another client and has one more waiting."""
    path = str(tmp_path / 'busy.sock')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    waiting = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:  # EAGAIN: the backlog is full
            sock.close()
            break
        waiting.append(sock)
    yield path
    for sock in waiting:
        sock.close()
    listener.close()


# ---------------------------------------------------------------------
# connect(timeout=) bounds the whole connection
# ---------------------------------------------------------------------

def test_connect_timeout_covers_the_socket_connect(busy_monitor):
    """connect(timeout=) to a monitor that cannot take the connection yet
    raises ConnectError (a TimeoutError inside) instead of blocking in
    socket.connect() forever."""
    monitor = QEMUMonitorProtocol(busy_monitor)
    with pytest.raises(ConnectError) as info:
        monitor.connect(timeout=0.2)
    assert isinstance(info.value.exc, TimeoutError)
    assert 'within 0.2 seconds' in str(info.value)
    monitor.close()


def test_qmp_shell_gives_up_on_a_busy_monitor(busy_monitor, monkeypatch,
                                              capsys):
    """qmp-shell on a busy monitor says it could not connect and exits 1,
    within its connection timeout (shortened here from 10 s)."""
    monkeypatch.setattr(_shell_cli, 'GREETING_TIMEOUT', 0.2)
    with pytest.raises(SystemExit) as info:
        qmp_shell.main([busy_monitor])
    assert info.value.code == 1
    assert 'could not connect' in capsys.readouterr().err


# ---------------------------------------------------------------------
# Signal handlers
# ---------------------------------------------------------------------

def interrupt_inside(qmp, action):
    """
    Run ``action`` in a SIGUSR1 handler while the main thread is inside a
    call on ``qmp``; return a list that gets what it returned or raised.

    (A timer thread sends the signal, so pytest-timeout's SIGALRM still
    ends a test that deadlocks.)
    """
    record = []
    main = threading.get_ident()

    def send():
        threading.Timer(0.01, signal.pthread_kill,
                        (main, signal.SIGUSR1)).start()

    def handler(signum, frame):
        inside = getattr(qmp._conn, '_inside', {main})  # white-box
        if main not in inside:
            send()  # not inside the call yet: again, a little later
            return
        try:
            record.append(action())
        except Exception as err:  # noqa: B902 - recorded for the test
            record.append(err)
    signal.signal(signal.SIGUSR1, handler)
    send()
    return record


@pytest.fixture
def usr1():
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_signal_handler_command_during_pull_event(fake, qmp, usr1):
    """cmd() from a signal handler that interrupted pull_event(wait=)
    raises ReentrantCallError at once instead of deadlocking; the session
    goes on."""
    def action():
        try:
            return qmp.cmd('query-status')
        finally:
            fake.emit('WAKE')  # what the interrupted pull_event gets
    record = interrupt_inside(qmp, action)
    assert qmp.pull_event(wait=30)['event'] == 'WAKE'
    assert len(record) == 1 and isinstance(record[0], ReentrantCallError)
    assert 'signal handler' in str(record[0])
    assert qmp.cmd('query-status') == {'status': 'running'}


def test_signal_handler_command_during_command(fake, qmp, usr1):
    """cmd() from a signal handler that interrupted cmd() raises
    ReentrantCallError; the interrupted command still gets its reply."""
    release = fake.call(asyncio.Event)

    async def slow(arguments):
        await release.wait()
        return {'slow': True}
    fake.server.on('slow', slow)

    def action():
        try:
            return qmp.cmd('query-status')
        finally:
            fake.call(release.set)
    record = interrupt_inside(qmp, action)
    assert qmp.cmd('slow') == {'slow': True}
    assert len(record) == 1 and isinstance(record[0], ReentrantCallError)


def test_signal_handler_close_during_pull_event(qmp, usr1):
    """close() from a signal handler (a SIGTERM handler's way out) ends a
    pull_event(wait=True) at once with EOFError, and closes the socket."""
    interrupt_inside(qmp, qmp.close)
    with pytest.raises(EOFError):
        qmp.pull_event(wait=True)
    assert qmp._conn.closed  # white-box: the close was finished
    with pytest.raises(StateError):
        qmp.cmd('query-status')


# ---------------------------------------------------------------------
# Timeouts too large for poll()
# ---------------------------------------------------------------------

@pytest.mark.parametrize('timeout', [math.inf, 30 * 86400.0, 1e300])
def test_huge_command_timeouts_are_accepted(qmp, timeout):
    """settimeout(inf) or 30 days: commands run, no OverflowError."""
    qmp.settimeout(timeout)
    assert qmp.cmd('query-status') == {'status': 'running'}
    assert qmp.cmd_obj({'execute': 'query-status'})['return']


@pytest.mark.parametrize('wait', [math.inf, 30 * 86400.0])
def test_huge_event_waits_are_accepted(fake, qmp, wait):
    """pull_event(wait=inf) waits for the event, no OverflowError."""
    fake.emit('STOP')
    assert qmp.pull_event(wait=wait)['event'] == 'STOP'


def test_infinite_connect_and_accept_timeouts(fake, tmp_path):
    """connect(timeout=inf) and accept(timeout=inf) work like None."""
    monitor = QEMUMonitorProtocol(fake.start())
    assert monitor.connect(timeout=math.inf)
    monitor.close()
    path = str(tmp_path / 'listen.sock')
    server = QEMUMonitorProtocol(path, server=True)
    fake.run(fake.server.connect_to(path))
    assert server.accept(timeout=math.inf)
    server.close()


@pytest.mark.parametrize('use', [
    pytest.param(lambda q, path: q.settimeout(math.nan), id='settimeout'),
    pytest.param(lambda q, path: q.pull_event(wait=math.nan),
                 id='pull_event'),
    pytest.param(lambda q, path: q.get_events(wait=math.nan),
                 id='get_events'),
    pytest.param(lambda q, path: QEMUMonitorProtocol(path).connect(
        timeout=math.nan), id='connect'),
    pytest.param(lambda q, path: QEMUMonitorProtocol(
        path + '.listen', server=True).accept(timeout=math.nan),
        id='accept'),
])
def test_a_nan_timeout_is_refused(fake, qmp, use):
    """A NaN timeout is a ValueError where it is given: no comparison
    with it is true, so a wait with it would spin and never end."""
    with pytest.raises(ValueError, match='NaN'):
        use(qmp, qmp._address)


# ---------------------------------------------------------------------
# fork()
# ---------------------------------------------------------------------

def fork_and_exit(action):
    """Run ``action`` in a forked child that then exits; wait for it."""
    with warnings.catch_warnings():
        # Python 3.12 warns about fork() with threads running (the fake
        # server's): the child only closes a socket and exits.
        warnings.simplefilter('ignore', DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0


def test_forked_child_closing_leaves_the_parent_session(qmp):
    """A forked child's close() (or its garbage collection) closes only
    its own descriptor: the parent's session goes on."""
    fork_and_exit(qmp.close)
    assert qmp.cmd('query-status') == {'status': 'running'}
    fork_and_exit(qmp.__del__)
    assert qmp.cmd('query-status') == {'status': 'running'}


def test_forked_child_leaves_waiting_commands_alone(fake, qmp):
    """The parent's pending state survives a child's close: a command
    the server never answers still times out normally, not interrupted."""
    fake.server.on('never', lambda arguments: NO_REPLY)
    fork_and_exit(qmp.close)
    qmp.settimeout(0.05)
    with pytest.raises(asyncio.TimeoutError):
        qmp.cmd('never')
    qmp.settimeout(None)
    try:
        assert qmp.cmd('query-status') == {'status': 'running'}
    except ExecInterruptedError:  # pragma: no cover - the defect
        pytest.fail("the child's close ended the parent's session")


# ---------------------------------------------------------------------
# What has arrived before a deadline is read, however it is cut
# ---------------------------------------------------------------------

class _Arrived:
    """Stands in for a connection's socket and poller: ``data`` has all
    arrived (the kernel holds it), and each ``recv()`` takes a piece."""

    def __init__(self, conn, data):
        self.sock, self.poller = conn._sock, conn._readable
        self.data = memoryview(data)
        conn._sock = conn._readable = self

    def poll(self, milliseconds):
        return [(self.sock.fileno(), select.POLLIN)] if self.data else []

    def recv(self, size):
        piece, self.data = self.data[:size], self.data[size:]
        return bytes(piece)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_events_that_arrived_are_all_taken_in(qmp):
    """get_events() reads everything that arrived before it was called,
    several MiB too (a TCP receive buffer holds that much), not a fixed
    number of reads of it."""
    event = json.dumps({
        'event': 'BLOCK_JOB_PENDING', 'data': {'pad': 'x' * 10_000},
        'timestamp': {'seconds': 0, 'microseconds': 0}}).encode() + b'\n'
    _Arrived(qmp._conn, event * 300)  # 3 MiB
    assert len(qmp.get_events()) == 300


def test_a_server_that_never_stops_sending_cannot_keep_a_caller(qmp):
    """Reading what has arrived stops after a bound (8 MiB), even if the
    server has always sent more by then."""
    event = json.dumps({
        'event': 'BLOCK_JOB_PENDING', 'data': {'pad': 'x' * 10_000},
        'timestamp': {'seconds': 0, 'microseconds': 0}}).encode() + b'\n'
    arrived = _Arrived(qmp._conn, b'')
    arrived.poll = lambda milliseconds: [(0, select.POLLIN)]
    arrived.recv = lambda size: event  # forever
    events = qmp.get_events()
    assert 8 << 20 <= len(events) * len(event) < (8 << 20) + len(event)
