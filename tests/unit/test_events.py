"""EventListener and the Events mix-in."""

import asyncio
import logging
import sys

import pytest

from qemu.qmp import (
    EventListener,
    ExecInterruptedError,
    Message,
    QMPClient,
    Runstate,
)
from qemu.qmp.events import (
    DEFAULT_BUILTIN_BACKLOG,
    DEFAULT_HISTORY_SIZE,
    ListenerError,
)
from qemu.qmp.testing import NO_REPLY, QMPTestServer
from tests.helpers import started, wait_for_state, waiting_on_a_command


def event(name, **data):
    return Message({'event': name, 'data': data})


async def feed(listener, *events):
    for evt in events:
        await listener.put(evt)


@pytest.mark.parametrize('names, accepted', [
    (None, ['A', 'B', 'C']),
    ('B', ['B']),
    (('A', 'C'), ['A', 'C']),
    (iter(['C']), ['C']),
])
async def test_names(names, accepted):
    """names may be a str, an iterable, or None for every event."""
    listener = EventListener(names)
    await feed(listener, event('A'), event('B'), event('C'))
    assert [e['event'] for e in listener.clear()] == accepted


async def test_filter_after_names():
    """The filter applies to events whose name matched."""
    listener = EventListener('JOB', lambda e: e['data']['id'] == 'j1')
    await feed(listener, event('JOB', id='j0'), event('JOB', id='j1'),
               event('OTHER', id='j1'))
    assert listener.clear() == [event('JOB', id='j1')]


async def test_fifo_get_and_empty():
    """get() returns events in order; empty() tells if it would wait."""
    listener = EventListener()
    assert listener.empty()
    await feed(listener, event('A'), event('B'))
    assert not listener.empty()
    assert (await listener.get())['event'] == 'A'
    assert (await listener.get())['event'] == 'B'
    assert listener.empty()


async def test_get_waits_for_put():
    """A waiting get() wakes when an event arrives."""
    listener = EventListener()
    getter = asyncio.create_task(listener.get())
    await started()
    assert not getter.done()
    await listener.put(event('A'))
    assert (await getter)['event'] == 'A'


async def test_concurrent_getters_each_get_one():
    """Several waiting readers each receive a distinct event."""
    listener = EventListener()
    getters = [asyncio.create_task(listener.get()) for _ in range(3)]
    await started()
    await feed(listener, event('A'), event('B'), event('C'))
    names = sorted(e['event'] for e in await asyncio.gather(*getters))
    assert names == ['A', 'B', 'C']


async def test_cancelled_getter_loses_nothing():
    """An event handed to a reader that was cancelled goes to the next."""
    listener = EventListener()
    first = asyncio.create_task(listener.get())
    second = asyncio.create_task(listener.get())
    await started()
    await listener.put(event('A'))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second)['event'] == 'A'


async def test_clear_returns_discarded_and_history_persists():
    """clear() returns what it dropped; history keeps everything."""
    listener = EventListener()
    await feed(listener, event('STOP'), event('RESUME'))
    discarded = listener.clear()
    assert [e['event'] for e in discarded] == ['STOP', 'RESUME']
    assert listener.empty()
    assert [e['event'] for e in listener.history] == ['STOP', 'RESUME']
    assert isinstance(listener.history, tuple)


async def test_history_is_bounded():
    """history keeps the newest history_size events."""
    listener = EventListener(history_size=3)
    await feed(listener, *(event('E', n=n) for n in range(5)))
    assert [e['data']['n'] for e in listener.history] == [2, 3, 4]
    assert len(listener.clear()) == 5  # pending is not bounded
    assert EventListener().history_size == DEFAULT_HISTORY_SIZE
    listener.history_size = None
    await feed(listener, *(event('E', n=n) for n in range(5)))
    assert len(listener.history) == 8


async def test_max_pending_drops_oldest_with_warning(caplog):
    """A bounded listener drops the oldest events and says so."""
    listener = EventListener(max_pending=2)
    with caplog.at_level(logging.WARNING, logger='qemu.qmp.events'):
        await feed(listener, *(event('E', n=n) for n in range(5)))
    assert [e['data']['n'] for e in listener.clear()] == [3, 4]
    assert listener.dropped == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and 'dropped' in warnings[0]
    assert len(warnings) < 3  # not one line per drop


async def test_subclass_accept():
    """Overriding accept() changes what the stream holds."""
    class Odd(EventListener):
        def accept(self, event):
            return event['data']['n'] % 2 == 1

    listener = Odd()
    await feed(listener, *(event('E', n=n) for n in range(4)))
    assert [e['data']['n'] for e in listener.clear()] == [1, 3]


async def test_async_iteration():
    """A listener is an async iterator over its events."""
    listener = EventListener()
    await feed(listener, event('A'), event('B'))
    seen = []
    async for evt in listener:
        seen.append(evt['event'])
        if len(seen) == 2:
            break
    assert seen == ['A', 'B']


def test_repr():
    """repr() shows names and pending count."""
    assert repr(EventListener('A')) == "<EventListener names=['A'] pending=0>"


# -- Events mix-in, through a client -----------------------------------

async def test_register_and_remove(client, server):
    """Registered listeners get copies; removal clears them."""
    mine = EventListener()
    client.register_listener(mine)
    with pytest.raises(ListenerError):
        client.register_listener(mine)
    await server.emit_event('STOP')
    assert (await mine.get()) == (await client.events.get())
    await server.emit_event('RESUME')
    await client.events.get()
    client.remove_listener(mine)
    assert mine.empty()  # pending RESUME was cleared
    with pytest.raises(ListenerError):
        client.remove_listener(mine)


async def test_listener_context(client, server):
    """listener() is active only inside its block."""
    with client.listener(('STOP', 'RESUME')) as listener:
        await server.emit_event('STOP')
        await server.emit_event('OTHER')
        await server.emit_event('RESUME')
        assert (await listener.get())['event'] == 'STOP'
        assert (await listener.get())['event'] == 'RESUME'
        await server.emit_event('STOP')
        await client.events.get()
    assert listener.empty()
    await server.emit_event('STOP')
    await client.events.get()
    assert listener.empty() and len(listener.history) == 2  # not taken


async def test_listen_context_many(client, server):
    """listen() activates several listeners and removes them after."""
    a, b = EventListener('A'), EventListener('B')
    with client.listen(a, b):
        await server.emit_event('B')
        await server.emit_event('A')
        assert (await a.get())['event'] == 'A'
        assert (await b.get())['event'] == 'B'
    client.register_listener(a)  # each was removed: ListenerError if not
    client.register_listener(b)


async def test_listen_rolls_back_on_error(client):
    """If one listener is already active, none stays registered."""
    a, b = EventListener(), EventListener()
    client.register_listener(b)
    with pytest.raises(ListenerError):
        with client.listen(a, b):
            pass  # pragma: no cover
    client.register_listener(a)  # a was rolled back: no ListenerError
    with pytest.raises(ListenerError):
        client.register_listener(b)  # b is still registered


async def test_overridden_put_is_awaited(client, server):
    """A listener with its own put() gets every event through it."""
    class Counting(EventListener):
        count = 0

        async def put(self, event):
            Counting.count += 1
            await super().put(event)

    with client.listen(Counting()):
        await server.emit_event('X')
        await client.events.get()
    assert Counting.count == 1


async def test_builtin_backlog_is_bounded_user_listener_is_not():
    """Unread events: the built-in listener keeps a bounded backlog and a
    bounded history; a user's listener keeps every event."""
    flood = DEFAULT_BUILTIN_BACKLOG + 2000
    async with QMPTestServer() as server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        mine = EventListener()
        qmp.register_listener(mine)
        data = b''.join(QMPTestServer.event_bytes('E', {'n': n})
                        for n in range(flood))
        await server.send_raw(data + QMPTestServer.event_bytes('LAST'))
        while True:
            if (await mine.get())['event'] == 'LAST':
                break
        assert len(qmp.events.clear()) == DEFAULT_BUILTIN_BACKLOG
        assert qmp.events.dropped == flood + 1 - DEFAULT_BUILTIN_BACKLOG
        assert len(qmp.events.history) == DEFAULT_HISTORY_SIZE
        assert mine.dropped == 0
        await qmp.disconnect()


# -- defects found by hostile and careless use --------------------------------

@pytest.mark.parametrize('bad', [0, -1, 1.5, '3', True])
def test_max_pending_must_be_a_positive_int(bad):
    """max_pending is validated up front, at construction and when set
    later (0 used to kill the session at the first event)."""
    with pytest.raises(ListenerError, match='max_pending'):
        EventListener(max_pending=bad)
    listener = EventListener(max_pending=5)
    with pytest.raises(ListenerError, match='max_pending'):
        listener.max_pending = bad
    assert listener.max_pending == 5
    listener.max_pending = None
    assert listener.max_pending is None


async def test_builtin_max_pending_zero_is_refused(client):
    """The built-in listener too."""
    with pytest.raises(ListenerError):
        client.events.max_pending = 0


async def test_filter_that_raises_skips_only_that_listener(
        client, server, caplog):
    """A filter that raises is logged with the event name and that
    listener skipped; the others get the event and the session goes on."""
    def broken(event):
        return event['data']['missing'] is None

    with caplog.at_level(logging.ERROR, logger='qemu.qmp'):
        with client.listener('STOP', broken) as bad, \
                client.listener('STOP') as good:
            await server.emit_event('STOP')
            assert (await good.get())['event'] == 'STOP'
            assert bad.empty()
    assert await client.execute('query-status')
    text = '\n'.join(r.getMessage() for r in caplog.records)
    assert 'STOP' in text and 'KeyError' in text


async def test_put_that_raises_skips_only_that_listener(
        client, server, caplog):
    """The same for an overridden put()."""
    class Broken(EventListener):
        async def put(self, event):
            raise RuntimeError('broken put')

    with caplog.at_level(logging.ERROR, logger='qemu.qmp'):
        with client.listen(Broken()), client.listener() as good:
            await server.emit_event('RESUME')
            assert (await good.get())['event'] == 'RESUME'
    assert await client.execute('query-status')
    assert any('broken put' in r.getMessage() for r in caplog.records)


async def test_removed_listener_ends_iteration(client):
    """Removing a listener while a task iterates it ends the iteration,
    and a get() waiting on it raises ListenerError."""
    listener = EventListener()
    client.register_listener(listener)
    seen = []

    async def iterate():
        async for event in listener:
            seen.append(event)

    iterating = asyncio.create_task(iterate())
    getting = asyncio.create_task(listener.get())
    await started()
    client.remove_listener(listener)
    await asyncio.wait_for(iterating, 5)
    with pytest.raises(ListenerError, match='removed'):
        await asyncio.wait_for(getting, 5)
    assert seen == []
    # Registered again, it works as before.
    client.register_listener(listener)
    await listener.put(event('AGAIN'))
    assert (await listener.get())['event'] == 'AGAIN'


async def test_each_listener_gets_its_own_copy(client, server):
    """One consumer changing an event, nested values included, changes
    nothing for another listener (docs/events.rst's promise)."""
    with client.listener('STOP') as first, client.listener('STOP') as second:
        await server.emit_event('STOP', {'nested': {'n': 1}})
        mine = await first.get()
        mine['data']['nested']['n'] = 99
        mine['extra'] = True
        theirs = await second.get()
        assert theirs['data'] == {'nested': {'n': 1}} and 'extra' not in theirs
        theirs['data']['nested']['n'] = 7
        backlog = client.events.clear()[-1]
        assert backlog['data'] == {'nested': {'n': 1}}
        assert first.history[-1] is mine
        # A listener that holds a copy shows the event as received.
        assert second.history[-1]['data'] == {'nested': {'n': 1}}
        assert second.history[-1] is not second.history[-1]


async def test_copies_reach_listeners_that_override_put(client, server):
    """A listener with its own put() gets a Message of its own too, and
    events it queues read back like any other."""
    seen = []

    class Recording(EventListener):
        async def put(self, event):
            seen.append(event)
            await super().put(event)

    recording = Recording('STOP')
    with client.listener('STOP') as plain, client.listen(recording):
        await server.emit_event('STOP', {'n': 1})
        first = await plain.get()
        first['data']['n'] = 2
        assert isinstance(seen[0], Message) and seen[0] is not first
        assert (await recording.get())['data'] == {'n': 1}
        assert (await client.events.get())['data'] == {'n': 1}


@pytest.mark.parametrize('size, error', [(-1, ValueError), ('x', TypeError),
                                         (2.5, TypeError)])
def test_bad_history_size_is_refused_at_once(size, error):
    """A bad history_size raises where it is given, not at the first
    event (in the reader task, which would end the session)."""
    with pytest.raises(error):
        EventListener(history_size=size)
    listener = EventListener()
    with pytest.raises(error):
        listener.history_size = size
    assert listener.history_size == DEFAULT_HISTORY_SIZE


async def test_a_session_names_its_dropped_events(server, caplog):
    """With one session per VM, the warning says whose built-in listener
    dropped events; a listener of the user's own says what it is."""
    qmp = QMPClient('vm7')
    await qmp.connect(server.address)
    qmp.events.max_pending = 3
    mine = EventListener(max_pending=3)
    qmp.register_listener(mine)
    with caplog.at_level(logging.WARNING, logger='qemu.qmp.events'):
        await server.send_raw(b''.join(QMPTestServer.event_bytes('STOP')
                                       for _ in range(4)))
        await qmp.execute('query-status')  # the events came before it
    await qmp.disconnect()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert sum("session 'vm7'" in line for line in warnings) == 1
    assert any(line.startswith('<EventListener names=ALL')
               for line in warnings)


class Awaiting(EventListener):
    """A listener with put() of its own: events are then delivered by
    the reader task, awaiting it."""

    async def put(self, event):
        await super().put(event)


@pytest.mark.timeout(10)
@pytest.mark.parametrize('delivery', ['at once', 'awaiting'])
async def test_a_filter_raising_cancelled_error_skips_only_that_listener(
        client, server, caplog, delivery):
    """A filter is called, not awaited: a CancelledError out of it (say,
    ``result()`` of a cancelled future) is its own bug, not a
    cancellation, and is handled as any other error of a filter."""
    def cancelled(event):
        raise asyncio.CancelledError()

    with caplog.at_level(logging.ERROR, logger='qemu.qmp'), \
            client.listen(Awaiting() if delivery == 'awaiting'
                          else EventListener()):
        with client.listener('STOP', cancelled) as bad, \
                client.listener('STOP') as good:
            await server.emit_event('STOP')
            assert (await good.get())['event'] == 'STOP'
            assert bad.empty()
        assert await client.execute('query-status')
    assert any('CancelledError' in r.getMessage() for r in caplog.records)


class Fatal(BaseException):
    """Not an Exception: meant to get past ``except Exception``."""


def is_query_status(msg):
    return msg.get('execute') == 'query-status'


class FailingRecorder:
    """A recorder that raises ``make_error()`` on the messages ``fails_on``
    picks, or (``closing``) when told that the server hung up."""

    def __init__(self, make_error, fails_on=lambda msg: False,
                 closing=False):
        self.make_error = make_error
        self.fails_on = fails_on
        self.closing = closing

    def record(self, who, msg):
        if self.fails_on(msg):
            raise self.make_error()

    def closed(self, who):
        if self.closing:
            raise self.make_error()


@pytest.mark.timeout(10)
@pytest.mark.parametrize('delivery', ['at once', 'awaiting'])
async def test_a_filter_raising_a_base_exception_ends_the_session(
        server, delivery):
    """Any other BaseException out of a filter is not swallowed: it ends
    the session, the command waiting is interrupted, and disconnect()
    raises it (the reference library does too), instead of the reader
    stopping while the session looks alive."""
    def fatal(event):
        raise Fatal('stop everything')

    qmp = QMPClient('fatal')
    waiting = await waiting_on_a_command(server, qmp)
    qmp.register_listener(Awaiting() if delivery == 'awaiting'
                          else EventListener())
    qmp.register_listener(EventListener('STOP', fatal))
    await server.emit_event('STOP')
    with pytest.raises(ExecInterruptedError):
        await waiting
    with pytest.raises(Fatal, match='stop everything'):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


@pytest.mark.timeout(10)
async def test_a_base_exception_while_writing_ends_the_session(server):
    """The same for one out of user code on the way out (a recorder's
    ``record()``), in the batched write no task makes."""
    qmp = QMPClient('fatal')
    waiting = await waiting_on_a_command(server, qmp)
    qmp.recorder = FailingRecorder(lambda: Fatal('not that one'),
                                   is_query_status)
    batched = asyncio.ensure_future(qmp.execute('query-status'))
    with pytest.raises(ExecInterruptedError):
        await waiting
    with pytest.raises(ExecInterruptedError):
        await batched
    with pytest.raises(Fatal, match='not that one'):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


@pytest.mark.timeout(10)
@pytest.mark.parametrize('where', ['received', 'sent'])
async def test_a_cancelled_error_from_a_hook_outside_any_task(server, where):
    """A recorder runs in the loop's callbacks (routing what arrives, the
    batched write), where no task can be cancelled: a CancelledError out
    of it ends the session as a RuntimeError caused by it, so that
    disconnect() does not raise a CancelledError its caller would take
    for its own cancellation."""
    qmp = QMPClient('cancelled')
    waiting = await waiting_on_a_command(server, qmp)
    qmp.recorder = FailingRecorder(
        asyncio.CancelledError,
        lambda msg: msg.get('event') == 'STOP' or is_query_status(msg))
    if where == 'received':
        await server.emit_event('STOP')
        interrupted = [waiting]
    else:
        interrupted = [waiting,
                       asyncio.ensure_future(qmp.execute('query-status'))]
    for command in interrupted:
        with pytest.raises(ExecInterruptedError):
            await command
    with pytest.raises(RuntimeError, match='CancelledError') as err:
        await qmp.disconnect()
    assert isinstance(err.value.__cause__, asyncio.CancelledError)
    assert qmp.runstate is Runstate.IDLE


def test_the_named_session_follows_the_clients_name():
    """Renaming a client (which moves its logging) renames its listener's
    session too; a client without a name, or named '', names none."""
    qmp = QMPClient('vm1')
    qmp.name = 'vm2'
    assert "of session 'vm2'" in repr(qmp.events)
    unnamed = QMPClient()
    assert repr(unnamed.events).startswith('<EventListener names=ALL')
    unnamed.name = 'vm7'
    assert "of session 'vm7'" in repr(unnamed.events)
    assert repr(QMPClient('').events).startswith('<EventListener names=')


@pytest.mark.timeout(10)
@pytest.mark.parametrize('raised', ['fatal', 'cancelled'])
async def test_a_hook_error_in_the_writer_task_ends_the_session(
        server, raised):
    """The same when the write is the writer task's, draining for a peer
    that reads slowly: the hook is called, not awaited, so even its
    CancelledError is no cancellation of the task."""
    server.on('big', lambda arguments: NO_REPLY)
    qmp = QMPClient('draining')
    await qmp.connect(server.address)
    qmp._writer.transport.set_write_buffer_limits(high=4096)
    qmp.recorder = FailingRecorder(
        lambda: Fatal('no') if raised == 'fatal' else asyncio.CancelledError(),
        is_query_status)
    server.pause_reading()
    blob = 'x' * 65536
    commands = []
    while not qmp._conn.outgoing.paused:
        commands.append(asyncio.ensure_future(
            qmp.execute('big', {'blob': blob})))
        await asyncio.sleep(0)  # one loop iteration: the outbox flushes
        assert len(commands) < 1000, "the transport never filled up"
    commands.append(asyncio.ensure_future(qmp.execute('query-status')))
    server.resume_reading()
    for command in commands:
        with pytest.raises(ExecInterruptedError):
            await command
    expected = Fatal if raised == 'fatal' else RuntimeError
    with pytest.raises(expected):
        await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE


@pytest.mark.timeout(10)
async def test_a_cancelled_error_from_a_filter_under_an_own_put(
        client, server, caplog):
    """A listener whose put() calls the stock one, and so its filter: the
    filter's CancelledError is still a filter error."""
    def cancelled(event):
        raise asyncio.CancelledError()

    with caplog.at_level(logging.ERROR, logger='qemu.qmp'):
        bad = Awaiting('STOP', cancelled)
        with client.listen(bad), client.listener('STOP') as good:
            await server.emit_event('STOP')
            assert (await good.get())['event'] == 'STOP'
            assert bad.empty()
        assert await client.execute('query-status')
    assert any('CancelledError' in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(10)
async def test_a_base_exception_with_auto_reconnect_reconnects(server):
    """With auto_reconnect, a session ended by a filter's BaseException
    is reconnected, as one ended by any other error is."""
    def fatal(event):
        raise Fatal('stop everything')

    qmp = QMPClient('again')
    qmp.auto_reconnect = 5
    await qmp.connect(server.address)
    qmp.register_listener(EventListener('STOP', fatal))
    await server.emit_event('STOP')
    reconnected = await qmp.events.get()
    assert reconnected['event'] == 'QMP_CLIENT_RECONNECTED'
    assert await qmp.execute('query-status')
    await qmp.disconnect()


@pytest.mark.parametrize('raised', [asyncio.CancelledError, StopIteration])
async def test_a_hook_error_in_a_write_at_once_is_no_cancellation(
        client, raised):
    """A command written at once (nothing else queued) calls the hooks in
    the caller's task: their CancelledError reaches the caller as the
    RuntimeError it stands for, not as the caller's own cancellation."""
    client.recorder = FailingRecorder(raised, is_query_status)
    with pytest.raises(RuntimeError) as err:
        await client.execute('query-status')
    assert isinstance(err.value.__cause__, raised)


def test_a_name_set_before_the_client_is_made():
    """A subclass may set its name before QMPClient.__init__ runs."""
    class Early(QMPClient):
        def __init__(self, vm):
            self.name = vm
            super().__init__(vm)

    assert "of session 'vm3'" in repr(Early('vm3').events)


@pytest.mark.timeout(10)
@pytest.mark.parametrize('raised', [ValueError, Fatal,
                                    asyncio.CancelledError])
async def test_a_recorder_failing_to_note_the_hang_up(server, caplog,
                                                      raised):
    """A recorder's closed() that raises, when the server hung up: the
    error is logged, and the session still ends (IDLE, its connection
    closed), disconnect() raising how it ended."""
    qmp = QMPClient('recorded')
    await qmp.connect(server.address)
    qmp.recorder = FailingRecorder(lambda: raised('cannot write'),
                                   closing=True)
    with caplog.at_level(logging.ERROR, logger='qemu.qmp'):
        await server.hang_up()
        await wait_for_state(qmp, Runstate.DISCONNECTING)
        with pytest.raises(EOFError):
            await qmp.disconnect()
    assert qmp.runstate is Runstate.IDLE
    assert any('closed()' in r.getMessage() for r in caplog.records)
    await qmp.connect(server.address)
    await qmp.disconnect()


@pytest.mark.timeout(10)
@pytest.mark.parametrize('how', ['raised', 'awaited'])
async def test_a_cancelled_error_of_a_put_that_is_not_the_readers(
        server, how):
    """A put() of the user's own gets a CancelledError that is not the
    reader task's cancellation (it raises one, or awaits something that
    someone else cancels): the session ends with it, as a RuntimeError,
    instead of the reader stopping while the session looks alive."""
    class Own(EventListener):
        async def put(self, event):
            if how == 'raised':
                raise asyncio.CancelledError()
            waited = asyncio.get_running_loop().create_future()
            waited.get_loop().call_soon(waited.cancel)
            await waited

    qmp = QMPClient('own')
    waiting = await waiting_on_a_command(server, qmp)
    qmp.register_listener(Own('STOP'))
    await server.emit_event('STOP')
    if sys.version_info < (3, 11):
        # Nothing tells it from the reader's own cancellation before
        # Task.cancelling(): the reader stops, as in the reference, and
        # disconnect() still ends everything cleanly.
        await asyncio.wait([qmp._conn.reader_task])
        await qmp.disconnect()
        with pytest.raises(ExecInterruptedError):
            await waiting
        assert qmp.runstate is Runstate.IDLE
        return
    with pytest.raises(ExecInterruptedError):
        await waiting
    with pytest.raises(RuntimeError) as err:
        await qmp.disconnect()
    assert isinstance(err.value.__cause__, asyncio.CancelledError)
    assert qmp.runstate is Runstate.IDLE
