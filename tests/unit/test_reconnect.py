"""Opt-in automatic reconnection: QMPClient.auto_reconnect."""

import asyncio
import math

import pytest

from qemu.qmp import ExecInterruptedError, QMPClient, Runstate, StateError
from qemu.qmp.qmp_client import RECONNECTED
from qemu.qmp.util import Backoff
from qemu.qmp.testing import NO_REPLY, QUIT, QMPTestServer
from tests.helpers import assert_no_tasks_left, wait_for_state


@pytest.fixture
async def server():
    async with QMPTestServer() as srv:
        srv.on('query-status', {'status': 'running'})
        srv.on('slow', lambda arguments: NO_REPLY)
        await srv.start()
        yield srv


async def connected(server, seconds=10.0):
    qmp = QMPClient('resilient')
    qmp.auto_reconnect = seconds
    await qmp.connect(server.address)
    return qmp


async def test_reconnects_after_the_server_hangs_up(server):
    """Commands in flight fail with ExecInterruptedError; listeners stay
    registered and get the RECONNECTED marker; the session goes on."""
    qmp = await connected(server)
    with qmp.listener() as everything, qmp.listener('STOP') as stops:
        waiting = asyncio.ensure_future(qmp.execute('slow'))
        await server.wait_for_command('slow')
        await server.hang_up()
        with pytest.raises(ExecInterruptedError):
            await asyncio.wait_for(waiting, 10)
        marker = await asyncio.wait_for(everything.get(), 10)
        assert marker['event'] == RECONNECTED
        assert marker['data']['attempts'] >= 1
        assert 'EOFError' in marker['data']['reason']
        assert qmp.runstate is Runstate.RUNNING
        assert server.connections == 2
        assert await qmp.execute('query-status') == {'status': 'running'}
        await server.emit_event('STOP')
        assert (await stops.get())['event'] == 'STOP'  # no marker here
    await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


async def test_session_events_go_on_across_a_reconnection(server):
    qmp = await connected(server)
    seen = []

    async def watch():
        async for event in qmp.session_events():
            seen.append(event['event'])
            if event['event'] == 'AFTER':
                await qmp.disconnect()

    watcher = asyncio.ensure_future(watch())
    await server.emit_event('BEFORE')
    await server.hang_up()
    await server.wait_until(lambda: server.connections == 2)
    await wait_for_state(qmp, Runstate.RUNNING)
    await server.emit_event('AFTER')
    await asyncio.wait_for(watcher, 10)
    assert seen == ['BEFORE', RECONNECTED, 'AFTER']


async def test_gives_up_at_the_deadline(server, caplog):
    """The server is gone for good: after auto_reconnect seconds the
    client gives up, idle, and session_events() ends."""
    qmp = await connected(server, seconds=0.2)
    watching = asyncio.ensure_future(
        asyncio.wait_for(
            asyncio.ensure_future(_drain(qmp.session_events())), 10))
    await server.close()
    await asyncio.wait_for(watching, 10)
    assert qmp.runstate is Runstate.IDLE
    assert 'Gave up reconnecting' in caplog.text
    await qmp.disconnect()


async def _drain(events):
    async for _ in events:
        pass


async def test_disconnect_stops_the_attempts(server):
    qmp = await connected(server, seconds=math.inf)
    await server.close()
    await wait_for_state(qmp, Runstate.CONNECTING)
    await asyncio.wait_for(qmp.disconnect(), 10)
    assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_our_own_disconnect_does_not_reconnect(server):
    qmp = await connected(server)
    await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE
    assert server.connections == 1


async def test_off_by_default(server):
    """Without auto_reconnect, a lost session waits for disconnect(), as
    in the reference library."""
    qmp = QMPClient()
    await qmp.connect(server.address)
    await server.hang_up()
    await wait_for_state(qmp, Runstate.DISCONNECTING)
    with pytest.raises(EOFError):
        await qmp.disconnect()
    assert server.connections == 1


class _HeldAtStart(QMPClient):
    """Its first connect() returns only once the session has already been
    lost: the server hangs up during the few steps between the session
    starting and connect() returning."""

    held = True

    async def _establish_session(self):
        await super()._establish_session()
        if self.held:
            self.held = False
            await wait_for_state(self, Runstate.DISCONNECTING)


async def sessions_dropped_at_once(server, qmp, seconds=10.0, count=3):
    """Connect ``qmp`` to a server that drops every session at once, and
    disconnect once ``count`` more sessions were made."""
    server.on('qmp_capabilities', QUIT)
    qmp.auto_reconnect = seconds
    before = server.connections
    await qmp.connect(server.address)
    await asyncio.wait_for(server.wait_until(
        lambda: server.connections >= before + count), 10)
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the last session was already lost, or not


def _pauses(caplog):
    """The pauses before reconnecting, from the WARNING for each loss."""
    return [record.args[-1] for record in caplog.records
            if record.msg.startswith('The session was lost')]


async def test_a_session_lost_before_connect_returns_comes_back(server):
    qmp = _HeldAtStart('resilient')
    await sessions_dropped_at_once(server, qmp)
    assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_sessions_that_die_young_are_paced(server, caplog):
    """A server that accepts each session and drops it at once does not
    get a new session as fast as the client can make them: the pause
    before each reconnection doubles, as between failed attempts."""
    await sessions_dropped_at_once(server, QMPClient('resilient'), count=5)
    assert _pauses(caplog)[:4] == [0.05, 0.1, 0.2, 0.4]
    assert ' in 0.4 s' in caplog.text


async def test_a_short_auto_reconnect_still_paces(server, caplog):
    """The pause is not taken out of auto_reconnect: a short one must not
    turn the pacing off."""
    await sessions_dropped_at_once(server, QMPClient('resilient'),
                                   seconds=0.01, count=4)
    assert _pauses(caplog)[:3] == [0.05, 0.1, 0.2]


async def test_disconnect_resets_the_pacing(server, caplog):
    """A session the caller opens afresh after disconnect() owes nothing
    to the sessions before it."""
    qmp = QMPClient('resilient')
    await sessions_dropped_at_once(server, qmp)
    caplog.clear()
    await sessions_dropped_at_once(server, qmp, count=2)
    assert _pauses(caplog)[0] == 0.05


async def test_a_failed_connect_leaves_the_target_alone(server):
    """connect() refused (already connected) does not change where a lost
    session is re-established."""
    qmp = await connected(server)
    with pytest.raises(StateError):
        await qmp.connect('/nonexistent/typo.sock')
    await server.hang_up()
    await asyncio.wait_for(
        server.wait_until(lambda: server.connections == 2), 10)
    await wait_for_state(qmp, Runstate.RUNNING)
    assert await qmp.execute('query-status') == {'status': 'running'}
    await qmp.disconnect()


async def test_connecting_by_hand_between_attempts_takes_over(server):
    """The caller connects while the reconnection pauses: the reconnect
    task stops quietly, and the caller's session is the one that runs."""
    qmp = await connected(server)
    qmp._backoff = Backoff(60.0, 60.0)  # a pause that outlasts the test
    await server.hang_up()
    await wait_for_state(qmp, Runstate.IDLE)
    await qmp.connect(server.address)
    assert qmp.runstate is Runstate.RUNNING
    assert await qmp.execute('query-status') == {'status': 'running'}
    await qmp.disconnect()
    await server.close()
    assert_no_tasks_left()  # the reconnect task too


@pytest.mark.parametrize('steps', [0, 1, 2, 3])
async def test_disconnect_while_the_lost_session_ends(server, steps):
    """disconnect() just after the session was lost, while the reconnect
    task still waits for its end: the task is cancelled there and then,
    not taken for an error of the session that goes on to reconnect."""
    qmp = await connected(server)
    await server.hang_up()
    await wait_for_state(qmp, Runstate.DISCONNECTING)
    for _ in range(steps):
        await asyncio.sleep(0)  # one loop iteration each, not a wait
    reconnecting = qmp._reconnect_task
    with pytest.raises(EOFError):  # how the session ended
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE
    assert reconnecting is None or reconnecting.cancelled()
    assert server.connections == 1
    assert_no_tasks_left()
