"""
Fault injection: every way a server can break, and what users see.

Each fault arrives in the same write as an event and a reply that came
before it.  For each one the test checks that the event and the reply are
still delivered, that the other pending execute fails with
ExecInterruptedError, that disconnect() raises the root cause, that the
client is IDLE and connects again, and (through the conftest hygiene
fixture) that nothing leaked.
"""

import asyncio
import gc
import json
import logging

import pytest

from qemu.qmp import ExecInterruptedError, QMPClient, Runstate
from qemu.qmp.codec import MessageTooLongError, TruncatedMessageError
from qemu.qmp.message import DeserializationError, UnexpectedTypeError
from qemu.qmp.qmp_client import BadReplyError, ServerParseError
from qemu.qmp.testing import NO_REPLY, CommandError, QMPTestServer
from tests.helpers import assert_no_tasks_left, wait_for_state

READBUFLEN = 4096


async def garbage(server, before):
    await server.send_raw(before + b'\x00\x01 not json at all\n')


async def invalid_utf8(server, before):
    await server.send_raw(before + b'{"event": "\xc3\x28"}\n')


async def not_an_object(server, before):
    await server.send_raw(before + b'[1, 2, 3]\n')


async def truncated_then_eof(server, before):
    await server.send_raw(before + b'{"event": "STO')
    await server.hang_up()


async def idless_error(server, before):
    await server.send_raw(before + b'{"error": {"class": "GenericError", '
                                   b'"desc": "Invalid JSON"}}\n')


async def oversized_line(server, before):
    await server.send_raw(before + b'"' + b'x' * READBUFLEN + b'"\n')


async def hang_up(server, before):
    await server.send_raw(before)
    await server.hang_up()


async def half_close(server, before):
    await server.send_raw(before)
    server.half_close()


FAULTS = {
    'garbage': (garbage, DeserializationError),
    'invalid-utf8': (invalid_utf8, DeserializationError),
    'not-an-object': (not_an_object, UnexpectedTypeError),
    'truncated-then-eof': (truncated_then_eof, TruncatedMessageError),
    'idless-error': (idless_error, ServerParseError),
    'oversized-line': (oversized_line, MessageTooLongError),
    'hang-up': (hang_up, EOFError),
    'half-close': (half_close, EOFError),
}


async def connected_with_two_pending(server, address):
    """A client with two executes waiting; returns them and the id of
    the first one."""
    server.on('slow', lambda args: NO_REPLY)
    qmp = QMPClient('faults', readbuflen=READBUFLEN)
    await qmp.connect(address)
    answered = asyncio.create_task(qmp.execute('slow', {'n': 1}))
    orphan = asyncio.create_task(qmp.execute('slow', {'n': 2}))
    received = await server.wait_received(3)
    first = next(m for m in received
                 if m.get('arguments') == {'n': 1})
    return qmp, answered, orphan, first['id']


def before_fault(reply_id):
    return (QMPTestServer.event_bytes('BEFORE') +
            json.dumps({'return': 'ok', 'id': reply_id}).encode() + b'\n')


async def reconnects(qmp, server, address):
    await server.wait_disconnected()
    server.on('slow', 'fine')
    await qmp.connect(address)
    assert await qmp.execute('slow') == 'fine'
    await qmp.disconnect()


@pytest.mark.parametrize('fault', list(FAULTS))
async def test_fault(fault):
    """The fault ends the session cleanly and loses nothing before it."""
    inject, expected = FAULTS[fault]
    async with QMPTestServer() as server:
        address = await server.start()
        qmp, answered, orphan, first_id = await connected_with_two_pending(
            server, address)
        await inject(server, before_fault(first_id))

        assert await answered == 'ok'
        with pytest.raises(ExecInterruptedError):
            await orphan
        assert (await qmp.events.get())['event'] == 'BEFORE'
        with pytest.raises(expected):
            await qmp.disconnect()
        assert qmp.runstate is Runstate.IDLE
        await server.hang_up()
        await reconnects(qmp, server, address)
    assert_no_tasks_left()


def test_truncation_is_an_eof_error():
    """TruncatedMessageError is an EOFError, as harnesses expect."""
    assert issubclass(TruncatedMessageError, EOFError)
    assert '3 bytes' in str(TruncatedMessageError(b'{"a'))


async def test_whole_message_without_newline_before_eof():
    """A complete message cut only of its newline is still delivered."""
    async with QMPTestServer() as server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        await server.send_raw(b'{"event": "LAST"}')
        await server.hang_up()
        assert (await qmp.events.get())['event'] == 'LAST'
        with pytest.raises(EOFError) as info:
            await qmp.disconnect()
        assert not isinstance(info.value, TruncatedMessageError)


async def test_reset_during_burst():
    """A connection reset in a burst of concurrent executes: answered ones
    return, the rest get ExecInterruptedError, disconnect() says why."""
    async with QMPTestServer() as server:
        gate = asyncio.Event()
        answered = 0

        async def slowish(args):
            nonlocal answered
            if args['n'] >= 100:
                await gate.wait()
            answered += 1
            return args['n']

        server.on('work', slowish)
        address = await server.start(('127.0.0.1', 0))
        qmp = QMPClient()
        await qmp.connect(address)
        tasks = [asyncio.create_task(qmp.execute('work', {'n': n}))
                 for n in range(300)]
        done = await asyncio.gather(*tasks[:100])
        assert done == list(range(100))
        await server.wait_received(201)
        server.reset()
        results = await asyncio.gather(*tasks[100:], return_exceptions=True)
        assert all(isinstance(r, ExecInterruptedError) for r in results)
        with pytest.raises((ConnectionResetError, EOFError)):
            await qmp.disconnect()
        assert qmp.runstate is Runstate.IDLE


async def test_server_stops_reading():
    """A server that stops reading: writes back up, a per-command timeout
    still works, and disconnect() does not hang."""
    async with QMPTestServer() as server:
        server.on('big', lambda args: NO_REPLY)
        qmp = QMPClient()
        await qmp.connect(await server.start())
        await server.wait_connected()
        server.pause_reading()
        blob = 'x' * 65536
        tasks = [asyncio.create_task(qmp.execute('big', {'blob': blob}))
                 for _ in range(200)]  # ~13 MB, far beyond socket buffers
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(qmp.execute('big', {'blob': 'y'}), 0.1)
        # white-box: the commands really are stuck in our buffer
        assert qmp._writer.transport.get_write_buffer_size() > 0
        await asyncio.wait_for(qmp.disconnect(), 10)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, ExecInterruptedError) for r in results)
        assert qmp.runstate is Runstate.IDLE


async def test_connect_cancelled_by_timeout_without_greeting():
    """wait_for() around connect() to a server that never greets leaves
    the client IDLE, with nothing leaked."""
    async with QMPTestServer(greeting=None) as server:
        qmp = QMPClient()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(qmp.connect(await server.start()), 0.05)
        assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()


async def test_per_command_timeout_pattern(client, server):
    """The documented pattern: wait_for() around execute() leaves the
    session usable."""
    server.on('hang', lambda args: NO_REPLY)
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.execute('hang'), 0.02)
    assert await client.execute('query-status')
    assert len(client._core) == 0  # white-box: no reply slot leaked


async def test_secrets_are_not_logged_above_debug(server, caplog):
    """Command arguments (which may hold secrets) appear in no log record
    above DEBUG, whatever goes wrong."""
    secret = 'hunter2-secret-password'
    server.on('object-add', lambda args: NO_REPLY)
    with caplog.at_level(logging.INFO, logger='qemu.qmp'):
        qmp = QMPClient('secrets')
        await qmp.connect(server.address)
        pending = asyncio.create_task(qmp.execute(
            'object-add', {'qom-type': 'secret', 'id': 's0',
                           'data': secret}))
        sent = await server.wait_for_command('object-add')
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(qmp.execute(
                'object-add', {'data': secret}), 0.01)
        await server.send_message({'return': {}, 'id': 'unknown'})
        await server.send_message({'hello': 1, 'id': sent['id']})
        with pytest.raises(BadReplyError):
            await pending
        await server.reply_without_id('Invalid JSON')
        await wait_for_state(qmp, Runstate.DISCONNECTING)
        with pytest.raises(ServerParseError):
            await qmp.disconnect()
    texts = [record.getMessage() for record in caplog.records
             if record.levelno > logging.DEBUG]
    assert texts  # something was logged
    assert not any(secret in text for text in texts)


@pytest.mark.asyncio_errors_expected
async def test_secrets_stay_out_of_asyncio_logs(server, caplog):
    """Commands whose tasks fail and are never awaited make asyncio log
    "Task exception was never retrieved" with the exception's repr; no
    argument value may appear there (nor in any record above DEBUG)."""
    secret = 'hunter2-secret-password'
    server.on('object-add', CommandError('GenericError', 'no secrets'))
    server.on('weird', lambda args: NO_REPLY)
    qmp = QMPClient('secrets')
    await qmp.connect(server.address)
    arguments = {'qom-type': 'secret', 'id': 's0', 'data': secret}
    failing = [
        qmp.execute('object-add', arguments),            # ExecuteError
        qmp.execute('object-add', {**arguments,          # SerializationError
                                   'bad': object()}),
        qmp.execute('weird', arguments),                 # BadReplyError
        qmp.execute('never-answered', {'data': secret}),  # interrupted
    ]
    server.on('never-answered', lambda args: NO_REPLY)
    with caplog.at_level(logging.DEBUG):
        tasks = [asyncio.ensure_future(coro) for coro in failing]
        sent = await server.wait_for_command('weird')
        await server.send_message({'hello': 1, 'id': sent['id']})
        await server.wait_for_command('never-answered')
        await server.hang_up()
        await asyncio.wait(tasks)
        del tasks, failing
        gc.collect()
        with pytest.raises(EOFError):
            await qmp.disconnect()
    formatter = logging.Formatter()
    texts = [formatter.format(record) for record in caplog.records
             if record.levelno > logging.DEBUG]
    never_retrieved = [text for text in texts if 'never retrieved' in text]
    assert len(never_retrieved) == 4, texts
    assert not [text for text in texts if secret in text]


# -- a reply over readbuflen fails only its own command ----------------------

async def test_oversized_reply_fails_only_its_command(caplog):
    """A reply over readbuflen whose id can be read from its end fails
    that command with MessageTooLongError naming the size and the limit;
    the command beside it, the events around it and the session go on."""
    async with QMPTestServer() as server:
        async def big(arguments):
            await server.emit_event('BEFORE')
            return {'blob': 'x' * (2 * READBUFLEN)}

        server.on('big', big)
        server.on('small', {'small': True})
        qmp = QMPClient('faults', readbuflen=READBUFLEN)
        await qmp.connect(await server.start())
        with qmp.listener() as events:
            results = await asyncio.gather(
                qmp.execute('big'), qmp.execute('small'),
                return_exceptions=True)
            err, small_value = results
            assert isinstance(err, MessageTooLongError)
            assert err.limit == READBUFLEN
            assert err.size is not None and err.size > 2 * READBUFLEN
            assert f"of {err.size} bytes exceeds readbuflen " \
                   f"({READBUFLEN} bytes)" in str(err)
            assert small_value == {'small': True}
            await server.emit_event('AFTER')
            assert [(await events.get())['event'] for _ in range(2)] == \
                ['BEFORE', 'AFTER']
        assert qmp.runstate is Runstate.RUNNING
        assert await qmp.execute('small') == {'small': True}
        await qmp.disconnect()
    assert 'failed its command' in caplog.text


async def test_oversized_late_reply_is_dropped():
    """An over-long reply to a command that already timed out is dropped
    like any late reply."""
    async with QMPTestServer() as server:
        gate = asyncio.Event()

        async def big(arguments):
            await gate.wait()
            return 'x' * (2 * READBUFLEN)
        server.on('big', big)
        server.on('query-status', {'status': 'running'})
        qmp = QMPClient('faults', readbuflen=READBUFLEN)
        await qmp.connect(await server.start())
        with pytest.raises(asyncio.TimeoutError):
            await qmp.execute('big', timeout=0.01)
        gate.set()
        assert await qmp.execute('query-status') == {'status': 'running'}
        await qmp.disconnect()
