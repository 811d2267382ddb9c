"""QMPClient against a real qemu-system-x86_64."""

import asyncio
import os

import pytest

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    Runstate,
)
from qemu.qmp.codec import MessageTooLongError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.message import NotQMPServerError
from qemu.qmp.qmp_client import RECONNECTED, ExecuteTimeoutError
from tests.helpers import (
    require_binary,
    started,
    stop_and_cont,
    wait_for_state,
)
from tests.integration.conftest import QEMU_BASE, running

pytestmark = pytest.mark.integration


@pytest.fixture
async def qmp(qemu):
    client = QMPClient('qemu')
    await client.connect(qemu.address)
    yield client
    if client.runstate is not Runstate.IDLE:
        try:
            await client.disconnect()
        except EOFError:
            pass


async def test_greeting(qmp):
    """QEMU's greeting names its version and offers oob."""
    assert qmp.greeting.QMP.version['qemu']['major'] >= 7
    assert 'oob' in qmp.greeting.QMP.capabilities


async def test_query_status(qmp):
    """query-status reports a running machine."""
    status = await qmp.execute('query-status')
    assert status['status'] == 'running' and status['running'] is True


async def test_stop_cont_events(qmp):
    """stop and cont produce STOP and RESUME events."""
    await stop_and_cont(qmp)
    assert [e['event'] for e in qmp.events.history] == ['STOP', 'RESUME']


async def test_error_command(qmp):
    """An unknown command is CommandNotFound; a bad argument GenericError."""
    with pytest.raises(ExecuteError) as info:
        await qmp.execute('no-such-command')
    assert info.value.error_class == 'CommandNotFound'
    with pytest.raises(ExecuteError) as info:
        await qmp.execute('query-status', {'bogus': 1})
    assert info.value.error_class == 'GenericError'
    assert 'bogus' in str(info.value)


async def test_human_monitor_command(qmp):
    """HMP passthrough returns the text HMP prints."""
    text = await qmp.execute('human-monitor-command',
                             {'command-line': 'info status'})
    assert 'VM status: running' in text


async def test_concurrent_and_large(qmp):
    """Many executes at once, and a large reply (the QAPI schema)."""
    results = await asyncio.gather(
        *(qmp.execute('query-status') for _ in range(100)))
    assert all(r['running'] for r in results)
    schema = await qmp.execute('query-qmp-schema')
    assert len(schema) > 100


async def test_getfd_via_send_fd_scm(qmp):
    """A descriptor passed with send_fd_scm() is usable by getfd."""
    rfd, wfd = os.pipe()
    try:
        qmp.send_fd_scm(rfd)
        assert await qmp.execute('getfd', {'fdname': 'pipe0'}) == {}
        assert await qmp.execute('closefd', {'fdname': 'pipe0'}) == {}
    finally:
        os.close(rfd)
        os.close(wfd)
    with pytest.raises(ExecuteError):
        await qmp.execute('getfd', {'fdname': 'nofd'})


async def test_quit_then_disconnect(qmp, qemu):
    """quit answers, SHUTDOWN arrives, then QEMU hangs up (EOFError)."""
    with qmp.listener('SHUTDOWN') as listener:
        assert await qmp.execute('quit') == {}
        assert (await listener.get())['event'] == 'SHUTDOWN'
    await wait_for_state(qmp, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


async def test_reconnect(qemu):
    """After a disconnect, the same client reconnects to the same QEMU."""
    qmp = QMPClient()
    for _ in range(3):
        await qmp.connect(qemu.address)
        assert await qmp.execute('query-status')
        await qmp.disconnect()


async def test_over_tcp(qemu_tcp):
    """The same session over TCP; fd passing is refused clearly."""
    qmp = QMPClient()
    await qmp.connect(qemu_tcp.address)
    assert (await qmp.execute('query-status'))['running']
    with pytest.raises(Exception, match='UNIX socket'):
        qmp.send_fd_scm(0)
    await qmp.disconnect()


async def test_qemu_connects_to_us(tmp_path):
    """QEMU dials into our start_server(), as QEMU's test harness does."""
    binary = require_binary('qemu-system-x86_64')
    path = str(tmp_path / 'listen.sock')
    qmp = QMPClient('harness')
    await qmp.start_server(path)
    proc = await asyncio.create_subprocess_exec(
        binary, *QEMU_BASE, '-chardev', f'socket,id=m0,path={path}',
        '-mon', 'chardev=m0,mode=control')
    try:
        await asyncio.wait_for(qmp.accept(), 30)
        assert (await qmp.execute('query-status'))['running']
        await qmp.execute('quit')
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        try:
            await qmp.disconnect()
        except EOFError:
            pass


async def test_kill_mid_command(qemu):
    """kill -9 of QEMU interrupts the pending command; disconnect reports
    the cause; the client is IDLE and reusable."""
    qmp = QMPClient()
    await qmp.connect(qemu.address)
    stop = asyncio.ensure_future(asyncio.gather(
        *(qmp.execute('query-qmp-schema') for _ in range(20))))
    await started()  # the commands are sent
    qemu.kill()
    with pytest.raises(ExecInterruptedError):
        await stop
    with pytest.raises((EOFError, OSError)):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


async def test_quit_with_commands_pending(qemu):
    """quit while other commands wait: each either got its reply or
    ExecInterruptedError; disconnect() reports why; IDLE after."""
    qmp = QMPClient()
    await qmp.connect(qemu.address)
    # quit goes out first; QEMU may or may not answer what follows it
    # before it exits.
    quit_reply = asyncio.ensure_future(qmp.execute('quit'))
    pending = [asyncio.ensure_future(qmp.execute('query-qmp-schema'))
               for _ in range(30)]
    results = await asyncio.gather(quit_reply, *pending,
                                   return_exceptions=True)
    for result in results:
        assert not isinstance(result, BaseException) or \
            isinstance(result, ExecInterruptedError), result
    # EOF; or a reset when QEMU exits with our commands still unread, or
    # a broken pipe when they are written after it closed its end.
    with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


async def test_execute_and_wait_for_a_job(qmp, tmp_path):
    """A job's status change is caught however fast the job runs; a
    partial match on the event's data picks the right one."""
    value, event = await qmp.execute_and_wait('stop', event='STOP',
                                              timeout=30)
    assert value == {} and event['event'] == 'STOP'
    target = tmp_path / 'created.raw'
    _, concluded = await qmp.execute_and_wait(
        'blockdev-create',
        {'job-id': 'create', 'options': {
            'driver': 'file', 'filename': str(target), 'size': 1 << 20}},
        event='JOB_STATUS_CHANGE',
        match={'id': 'create', 'status': 'concluded'}, timeout=30)
    assert concluded['data'] == {'id': 'create', 'status': 'concluded'}
    await qmp.execute('job-dismiss', {'id': 'create'})
    assert target.stat().st_size == 1 << 20
    async with qmp.expect('RESUME', timeout=30) as resumed:
        await qmp.execute('cont')
    assert resumed.event is not None


async def test_reply_over_readbuflen_fails_only_that_command(qemu):
    """QEMU puts the id last in a reply, so a reply over readbuflen
    (query-qmp-schema is over 100 KB) fails only its command."""
    qmp = QMPClient('small-buffer', readbuflen=64 * 1024)
    await qmp.connect(qemu.address)
    with pytest.raises(MessageTooLongError) as err:
        await qmp.execute('query-qmp-schema')
    assert err.value.size > 64 * 1024
    assert (await qmp.execute('query-status'))['status'] == 'running'
    await qmp.disconnect()


async def test_auto_reconnect_to_a_restarted_qemu(tmp_path):
    """QEMU dies and a new one comes up on the same socket: the client
    reconnects by itself, listeners get RECONNECTED, commands work."""
    binary = require_binary('qemu-system-x86_64')
    path = tmp_path / 'qmp.sock'

    def argv(pidfile):
        return [binary, *QEMU_BASE, '-daemonize', '-pidfile', str(pidfile),
                '-qmp', f'unix:{path},server=on,wait=off']

    qmp = QMPClient('resilient')
    qmp.auto_reconnect = 30
    async with running(argv(tmp_path / 'a.pid'), str(path),
                       tmp_path / 'a.pid') as first:
        await qmp.connect(str(path))
        with qmp.listener() as events:
            first.kill()
            async with running(argv(tmp_path / 'b.pid'), str(path),
                               tmp_path / 'b.pid'):
                marker = await asyncio.wait_for(events.get(), 30)
                assert marker['event'] == RECONNECTED
                status = await qmp.execute('query-status')
                assert status['status'] == 'running'
                await qmp.disconnect()


async def test_connect_retry_while_qemu_starts(tmp_path):
    """connect(retry=) started before QEMU exists gets its session once
    QEMU has created its socket: no polling loop of the caller's."""
    binary = require_binary('qemu-system-x86_64')
    path, pidfile = tmp_path / 'qmp.sock', tmp_path / 'qemu.pid'
    qmp = QMPClient('early')
    connecting = asyncio.ensure_future(qmp.connect(str(path), retry=30))
    await started()
    assert not connecting.done()
    async with running([binary, *QEMU_BASE, '-daemonize', '-pidfile',
                        str(pidfile), '-qmp',
                        f'unix:{path},server=on,wait=off'],
                       str(path), pidfile):
        await asyncio.wait_for(connecting, 30)
        assert (await qmp.execute('query-status'))['status'] == 'running'
        await qmp.disconnect()


async def test_execute_timeout_keeps_the_session(qmp):
    """A command given no time at all times out; QEMU's late reply is
    dropped, and the next command gets its own."""
    with pytest.raises(ExecuteTimeoutError):
        await qmp.execute('query-version', timeout=0)
    assert (await qmp.execute('query-status', timeout=30))['status'] \
        == 'running'
    assert 'qemu' in await qmp.execute('query-version', timeout=30)


async def test_an_hmp_monitor_is_not_a_qmp_server(tmp_path):
    """Pointed at QEMU's human monitor by mistake, both clients say the
    peer is no QMP server, and show what it sent."""
    binary = require_binary('qemu-system-x86_64')
    path, pidfile = tmp_path / 'hmp.sock', tmp_path / 'qemu.pid'
    async with running([
            binary, *QEMU_BASE, '-daemonize', '-pidfile', str(pidfile),
            '-chardev', f'socket,id=m0,path={path},server=on,wait=off',
            '-mon', 'chardev=m0,mode=readline'], str(path), pidfile):
        qmp = QMPClient('confused')
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(qmp.connect(str(path)), 30)
        assert isinstance(info.value.exc.exc, NotQMPServerError)
        assert 'Not a QMP server: it sent b"QEMU ' in str(info.value)
        assert qmp.runstate is Runstate.IDLE

        def blocking():
            monitor = QEMUMonitorProtocol(str(path))
            try:
                monitor.connect(timeout=30)
            finally:
                monitor.close()

        with pytest.raises(ConnectError, match='Not a QMP server'):
            await asyncio.get_running_loop().run_in_executor(None, blocking)
