"""Opt-in automatic reconnection: QMPClient.auto_reconnect."""

import asyncio
import math

import pytest

from qemu.qmp import ExecInterruptedError, QMPClient, Runstate
from qemu.qmp.qmp_client import RECONNECTED
from qemu.qmp.reconnect import Backoff
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


async def test_a_session_lost_before_connect_returns_comes_back(server):
    server.on('qmp_capabilities', QUIT)  # each session ends at once
    qmp = _HeldAtStart('resilient')
    qmp.auto_reconnect = 10.0
    await qmp.connect(server.address)
    await asyncio.wait_for(
        server.wait_until(lambda: server.connections >= 3), 10)
    await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_sessions_that_die_young_are_paced(server, caplog):
    """A server that accepts each session and drops it at once does not
    get a new session as fast as the client can make them: the pause
    before each reconnection doubles, as between failed attempts."""
    server.on('qmp_capabilities', QUIT)
    qmp = QMPClient('resilient')
    qmp.auto_reconnect = 10.0
    await qmp.connect(server.address)
    await asyncio.wait_for(
        server.wait_until(lambda: server.connections >= 5), 10)
    await qmp.disconnect()
    pauses = [record.args[-1] for record in caplog.records
              if record.msg.startswith('The session was lost')]
    assert pauses[:4] == [0.05, 0.1, 0.2, 0.4]
    assert ' in 0.4 s' in caplog.text


def test_backoff_doubles_and_a_settled_session_resets_it():
    backoff = Backoff(first=0.05, longest=0.3, settled=10.0)
    assert [backoff.after_session(0.1) for _ in range(4)] \
        == [0.05, 0.1, 0.2, 0.3]
    assert backoff.after_failure() == 0.3
    assert backoff.after_session(10.0) == 0.0  # it had settled: at once
    assert backoff.after_failure() == 0.05     # and from the start again
    assert backoff.after_session(9.9) == 0.1
