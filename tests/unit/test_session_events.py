"""Event streams that end: QMPClient.session_events and
EventListener.iter_until."""

import asyncio

import pytest

from qemu.qmp import (
    EventListener,
    Message,
    QMPClient,
    Runstate,
    StateError,
)
from qemu.qmp.events import ListenerError
from qemu.qmp.message import DeserializationError
from qemu.qmp.qmp_client import TruncatedMessageError
from qemu.qmp.testing import QMPTestServer
from tests.helpers import assert_no_tasks_left, started, wait_for_state


async def names(stream):
    return [event['event'] async for event in stream]


async def test_ends_cleanly_when_the_server_hangs_up(client, server):
    """Events received before the hang-up are all yielded, even those not
    read until after it; then the loop ends and the client is IDLE."""
    await server.send_raw(b''.join(QMPTestServer.event_bytes(name)
                                   for name in ('STOP', 'RESUME', 'SHUTDOWN')))
    await server.hang_up()
    await wait_for_state(client, Runstate.DISCONNECTING)
    assert await names(client.session_events()) == ['STOP', 'RESUME',
                                                    'SHUTDOWN']
    assert client.runstate is Runstate.IDLE
    await client.disconnect()  # harmless afterwards


async def test_reading_while_events_arrive(client, server):
    """The loop waits for events as they come, then ends with the
    session."""
    reading = asyncio.ensure_future(names(client.session_events()))
    await started()
    for name in ('A', 'B', 'C'):
        await server.emit_event(name)
    await server.send_raw(QMPTestServer.event_bytes('SHUTDOWN'))
    await server.hang_up()
    assert await asyncio.wait_for(reading, 5) == ['A', 'B', 'C', 'SHUTDOWN']
    assert client.runstate is Runstate.IDLE


async def test_disconnect_ends_the_loop(client, server):
    """Our own disconnect() from another task ends the loop normally."""
    with client.listener('STOP') as listener:
        reading = asyncio.ensure_future(
            names(client.session_events(listener)))
        await server.emit_event('STOP')
        await server.emit_event('OTHER')
        await client.execute('query-status')  # both events are in
        await client.disconnect()
        assert await asyncio.wait_for(reading, 5) == ['STOP']


@pytest.mark.parametrize('garbage, error', [
    (b'{"event": \n', DeserializationError),
    (b'{"event": "CUT"', TruncatedMessageError),
])
async def test_the_session_error_is_raised(client, server, garbage, error):
    """An error that ends the session is raised by the loop, after the
    events received before it; the client is left IDLE."""
    await server.emit_event('BEFORE')
    await server.send_raw(garbage)
    await server.hang_up()
    seen = []
    with pytest.raises(error):
        async for event in client.session_events():
            seen.append(event['event'])
    assert seen == ['BEFORE']
    assert client.runstate is Runstate.IDLE


async def test_misuse_is_refused(server):
    """Not connected, or a listener that is not registered: a clear
    error at the first iteration, not a loop that never ends."""
    qmp = QMPClient()
    with pytest.raises(StateError, match='disconnected and idle'):
        await names(qmp.session_events())
    await qmp.connect(server.address)
    with pytest.raises(ListenerError, match='not registered'):
        await names(qmp.session_events(EventListener()))
    await qmp.disconnect()


async def test_started_while_connecting(server):
    """A watcher started before connect() finishes sees that session."""
    qmp = QMPClient()
    connecting = asyncio.ensure_future(qmp.connect(server.address))
    await wait_for_state(qmp, Runstate.CONNECTING)
    reading = asyncio.ensure_future(names(qmp.session_events()))
    await connecting
    await server.emit_event('HELLO')
    await server.hang_up()
    assert await asyncio.wait_for(reading, 5) == ['HELLO']


async def test_break_leaves_the_session_alone(client, server):
    """Leaving the loop early neither disconnects nor loses later
    events."""
    await server.emit_event('FIRST')
    await server.emit_event('SECOND')
    stream = client.session_events()
    async for event in stream:
        assert event['event'] == 'FIRST'
        break
    await stream.aclose()
    assert client.runstate is Runstate.RUNNING
    assert (await client.events.get())['event'] == 'SECOND'
    assert await client.execute('query-status')


async def test_removing_the_listener_ends_the_loop(client, server):
    listener = EventListener()
    client.register_listener(listener)
    reading = asyncio.ensure_future(names(client.session_events(listener)))
    await started()
    client.remove_listener(listener)
    assert await asyncio.wait_for(reading, 5) == []
    assert client.runstate is Runstate.RUNNING


async def test_a_cancelled_reader_passes_its_wake_up_on():
    """Two readers wait on one listener; the one woken for the event is
    cancelled before it runs: the other still gets the event."""
    listener = EventListener()
    never = asyncio.get_running_loop().create_future()
    first = asyncio.ensure_future(names(listener.iter_until(never)))
    await started()
    second = asyncio.ensure_future(listener.get())
    await started()
    await listener.put(Message({'event': 'ONLY'}))
    first.cancel()
    assert (await asyncio.wait_for(second, 5))['event'] == 'ONLY'
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not never.cancelled()


async def test_iter_until_a_coroutine():
    """A coroutine given as ``done`` runs in a task that ends with the
    iteration; events queued before it completes are yielded."""
    listener = EventListener()
    await listener.put(Message({'event': 'QUEUED'}))
    gate = asyncio.Event()

    async def done():
        await gate.wait()

    stream = listener.iter_until(done())
    assert (await stream.__anext__())['event'] == 'QUEUED'
    waiting = asyncio.ensure_future(stream.__anext__())
    await started()
    await listener.put(Message({'event': 'LATER'}))
    assert (await asyncio.wait_for(waiting, 5))['event'] == 'LATER'
    gate.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stream.__anext__(), 5)
    stream_never_done = listener.iter_until(asyncio.Event().wait())
    await listener.put(Message({'event': 'X'}))
    assert (await stream_never_done.__anext__())['event'] == 'X'
    await stream_never_done.aclose()
    assert_no_tasks_left()
