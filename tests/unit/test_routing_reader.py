"""
The stream reader that hands what arrives straight to the session
(``_sockets.RoutingReader``), alone and under a client.
"""

import asyncio
import gc
import logging
import warnings

import pytest

from qemu.qmp import (
    EventListener,
    ExecInterruptedError,
    QMPClient,
    Runstate,
)
from qemu.qmp._sockets import RoutingReader
from qemu.qmp.error import ProtocolError
from qemu.qmp.testing import NO_REPLY, QMPTestServer

from tests.helpers import wait_for_state, waiting_on_a_command


class Routed:
    """A router that keeps what it gets and answers ``outcome``."""

    def __init__(self, outcome=None):
        self.chunks = []
        self.outcome = outcome

    def __call__(self, data):
        self.chunks.append(data)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_chunks_go_to_the_router_not_the_buffer():
    reader = RoutingReader(limit=64)
    router = Routed()
    routed = reader.route_to(router)
    reader.feed_data(b'one')
    reader.feed_data(b'two')
    assert router.chunks == [b'one', b'two']
    assert not routed.done() and reader.can_route()
    reader.stop_routing()
    reader.feed_data(b'three')
    assert not reader.can_route()
    assert await reader.read(64) == b'three'


async def test_an_outcome_ends_the_wait_and_later_chunks_are_buffered():
    reader = RoutingReader(limit=64)
    blocked = object()
    routed = reader.route_to(Routed(blocked))
    reader.feed_data(b'first')
    assert await routed is blocked
    assert reader.router is None
    reader.feed_data(b'second')
    assert await reader.read(64) == b'second'


async def test_a_router_error_is_the_waits_error():
    reader = RoutingReader(limit=64)
    routed = reader.route_to(Routed(ValueError('bad bytes')))
    reader.feed_data(b'x')
    with pytest.raises(ValueError, match='bad bytes'):
        await routed
    assert reader.router is None


@pytest.mark.parametrize('end', ['eof', 'error'])
async def test_the_end_of_the_stream_ends_the_wait(end):
    """The wait ends with None, and the reader then says how the stream
    ended, as a read would have."""
    reader = RoutingReader(limit=64)
    routed = reader.route_to(Routed())
    if end == 'eof':
        reader.feed_eof()
        assert await routed is None
        assert await reader.read(64) == b''
    else:
        reader.set_exception(ConnectionResetError('reset'))
        assert await routed is None
        with pytest.raises(ConnectionResetError):
            await reader.read(64)
    assert not reader.can_route()


async def test_the_end_after_a_cancelled_wait_is_quiet():
    """A wait cancelled (its task cancelled by disconnect()) before it
    stopped routing: the end of the stream does not set it again."""
    reader = RoutingReader(limit=64)
    routed = reader.route_to(Routed())
    routed.cancel()
    reader.feed_eof()
    reader.stop_routing()
    assert routed.cancelled()


async def test_an_unawaited_error_is_not_reported_as_never_retrieved():
    """An error that ended the wait just before its waiter was cancelled
    is retrieved by stop_routing(): asyncio would otherwise log "Future
    exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        reader = RoutingReader(limit=64)
        routed = reader.route_to(Routed(ValueError('late')))
        reader.feed_data(b'x')
        reader.stop_routing()
        del routed
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_routing_is_refused_while_bytes_are_buffered():
    reader = RoutingReader(limit=64)
    reader.feed_data(b'unread')
    assert not reader.can_route()
    with pytest.raises(AssertionError):
        reader.route_to(Routed())


# Under a client.

class Gated(EventListener):
    """A listener whose put() waits for its gate, as one that forwards to
    a bounded queue waits for room."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()
        self.order = []

    async def put(self, event):
        await self.gate.wait()
        self.order.append(event['event'])
        await super().put(event)


async def test_a_waiting_delivery_holds_the_rest_back_in_order(client,
                                                               server):
    """An event whose delivery waits holds back every message after it,
    replies too; then routing goes on in the event loop's callback."""
    listener = Gated()
    client.register_listener(listener)
    for name in ('STOP', 'RESUME'):
        await server.emit_event(name)
    replying = asyncio.ensure_future(client.execute('query-status'))
    await server.wait_for_command('query-status')
    await server.emit_event('POWERDOWN')
    listener.gate.set()
    assert (await replying)['status'] == 'running'
    for name in ('STOP', 'RESUME', 'POWERDOWN'):
        assert (await listener.get())['event'] == name
    client.remove_listener(listener)
    await client.execute('query-status')
    assert client._reader.router is not None


async def test_garbage_while_routing_ends_the_session(client, server):
    """Bytes that are not QMP, routed in the callback, end the session
    with the parse error, the reply before them delivered."""
    replying = asyncio.ensure_future(client.execute('query-status'))
    await server.wait_for_command('query-status')
    await server.send_raw(b'{"return": {"status": "running"}, '
                          b'"id": "__qmp#00001"}\n{not json\n')
    assert (await replying)['status'] == 'running'
    await wait_for_state(client, Runstate.DISCONNECTING)
    with pytest.raises(Exception, match='JSON|json'):
        await client.disconnect()


async def test_nothing_is_routed_once_the_wait_is_cancelled():
    """The reader task's cancellation (disconnect()) cancels the wait at
    once; what arrives before the task runs again is buffered, not routed
    against a session being torn down."""
    reader = RoutingReader(limit=64)
    router = Routed()
    routed = reader.route_to(router)
    routed.cancel()
    reader.feed_data(b'late')
    assert router.chunks == []
    reader.stop_routing()
    assert await reader.read(64) == b'late'


async def test_an_empty_chunk_is_nothing():
    """As for StreamReader: feeding b'' is not the end of the stream."""
    reader = RoutingReader(limit=64)
    router = Routed()
    routed = reader.route_to(router)
    reader.feed_data(b'')
    assert router.chunks == [] and not routed.done()
    reader.stop_routing()


async def test_a_reply_arriving_as_disconnect_starts_is_not_routed(
        client, server, caplog):
    """A reply that arrives as disconnect() starts is either routed before
    it (uvloop may run the read first) or left unread, as before; never
    routed once the waiters are taken ("unknown id" warning)."""
    server.on('slow', lambda arguments: NO_REPLY)
    pending = asyncio.ensure_future(client.execute('slow'))
    command = await server.wait_for_command('slow')
    await server.send_raw(b'{"return": {}, "id": "%s"}\n'
                          % command['id'].encode())
    with caplog.at_level(logging.WARNING, logger='qemu.qmp'):
        await client.disconnect()
    [outcome] = await asyncio.gather(pending, return_exceptions=True)
    assert outcome == {} or isinstance(outcome, ExecInterruptedError)
    assert [record.getMessage() for record in caplog.records] == []


class PassingOn(EventListener):
    """A listener with a put() of its own: its deliveries are awaited."""

    async def put(self, event):
        await super().put(event)


async def test_a_delivery_handed_over_to_a_cancelled_task_is_dropped(
        client):
    """An event whose delivery the router handed to the reader task just
    before that task was cancelled: the delivery is dropped with the
    session, with no coroutine left never awaited."""
    client.register_listener(PassingOn())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        client._reader.feed_data(QMPTestServer.event_bytes('SHUTDOWN'))
        client._conn.reader_task.cancel()
        await client.disconnect()
        gc.collect()
    assert [str(warning.message) for warning in caught] == []


async def test_nothing_is_routed_once_the_session_is_ending(client):
    """Once disconnect() has begun (the session is DISCONNECTING), what
    arrives is left unread, even before its task cancels the reader."""
    client._schedule_disconnect()
    client._reader.feed_data(QMPTestServer.event_bytes('STOP'))
    await client.disconnect()
    assert client.events.empty()


class Fatal(BaseException):
    """A user's own, meant to get past ``except Exception``."""


class FailsOnStop:
    """A recorder whose record() raises Fatal for a STOP event."""

    def record(self, who, msg):
        if msg.get('event') == 'STOP':
            raise Fatal('recorder')

    def closed(self, who):
        pass


@pytest.mark.parametrize('failure', ['garbage', 'user BaseException'])
async def test_a_routing_error_meeting_a_cancelled_task_is_raised(
        client, failure):
    """Routing failed, and the reader task was cancelled before it could
    take the error: disconnect() still raises it, as it was logged as the
    end of the session (a user's BaseException too, as everywhere else
    in the bottom half)."""
    if failure == 'garbage':
        client._reader.feed_data(b'not json\n')
    else:
        client.recorder = FailsOnStop()
        client._reader.feed_data(QMPTestServer.event_bytes('STOP'))
    client._conn.reader_task.cancel()
    with pytest.raises(ProtocolError if failure == 'garbage' else Fatal):
        await client.disconnect()


async def test_a_delivery_handed_over_is_no_coroutine_until_awaited(client):
    """A delivery the router hands to the reader task makes its coroutine
    only when awaited: a loop closed before the task runs (the session
    left to the garbage collector) leaves no coroutine never awaited."""
    listener = PassingOn()
    client.register_listener(listener)
    client._reader.feed_data(QMPTestServer.event_bytes('STOP'))
    delivery = client._conn.reader_task._fut_waiter.result()
    assert not asyncio.iscoroutine(delivery)
    assert (await listener.get())['event'] == 'STOP'


async def test_a_stop_iteration_from_the_router_is_an_error():
    """A StopIteration out of user code in the router (``next()`` on an
    exhausted iterator, in a ``_cb_inbound`` override, say) cannot be a
    future's exception before Python 3.13: the wait ends with the
    RuntimeError a coroutine would have raised, caused by it."""
    reader = RoutingReader(limit=64)
    routed = reader.route_to(Routed(StopIteration()))
    reader.feed_data(b'x')
    with pytest.raises(RuntimeError, match='StopIteration') as err:
        await routed
    assert isinstance(err.value.__cause__, StopIteration)


async def test_a_stop_iteration_while_routing_ends_the_session(server):
    """The session ends with it: the command waiting is interrupted and
    disconnect() raises it, as when the reader task routed."""
    class Picky(QMPClient):
        def _cb_inbound(self, msg):
            if 'event' in msg:
                next(name for name in ('STOP',) if name == msg['event'])
            return super()._cb_inbound(msg)

    qmp = Picky('picky')
    waiting = await waiting_on_a_command(server, qmp)
    await server.send_raw(QMPTestServer.event_bytes('RESUME'))
    with pytest.raises(ExecInterruptedError):
        await waiting
    with pytest.raises(RuntimeError, match='StopIteration'):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE
