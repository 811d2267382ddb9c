"""Race-free command-then-event: expect() and execute_and_wait()."""

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu.qmp import ExecInterruptedError, ExecuteError
from qemu.qmp.expect import EventTimeoutError, data_matches
from qemu.qmp.replies import ExecuteTimeoutError
from qemu.qmp.testing import NO_REPLY, CommandError
from tests.helpers import started

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.text(max_size=5))
json_objects = st.recursive(
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=4),
    lambda children: st.dictionaries(
        st.text(max_size=5), st.one_of(json_scalars, children,
                                       st.lists(children, max_size=2)),
        max_size=4),
    max_leaves=12)


@given(json_objects, st.data())
def test_any_part_of_the_data_matches(data, draw):
    """The data matches itself and any subset of its members."""
    assert data_matches(data, data)
    keys = draw.draw(st.lists(st.sampled_from(sorted(data)), unique=True)
                     if data else st.just([]))
    assert data_matches(data, {key: data[key] for key in keys})


def test_what_does_not_match():
    data = {'device': 'j0', 'job': {'id': 'j0', 'len': 5}, 'n': 1}
    assert not data_matches(data, {'device': 'j1'})
    assert not data_matches(data, {'missing': None})
    assert not data_matches(data, {'job': {'id': 'j1'}})
    assert not data_matches(data, {'n': {'deeper': 1}})
    assert not data_matches(None, {})
    assert data_matches(data, {'job': {'len': 5}})


def emitting(server, name, data=None, before_reply=True, value=None):
    """A handler that emits an event before (or after) it replies."""
    async def handler(arguments):
        if before_reply:
            await server.emit_event(name, data)
        else:
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(server.emit_event(name, data)))
        return {} if value is None else value
    return handler


@pytest.mark.parametrize('before_reply', [True, False])
async def test_execute_and_wait(client, server, before_reply):
    """The event is caught whether QEMU sends it before or after the
    reply; the listener is gone afterwards."""
    server.on('block-job-cancel',
              emitting(server, 'BLOCK_JOB_CANCELLED', {'device': 'j0'},
                       before_reply))
    value, event = await client.execute_and_wait(
        'block-job-cancel', {'device': 'j0'}, event='BLOCK_JOB_CANCELLED',
        match={'device': 'j0'}, timeout=10)
    assert value == {}
    assert event['data'] == {'device': 'j0'}
    assert client._listeners == [client.events]  # white-box: removed


async def test_other_events_do_not_count(client, server):
    async def cancel(arguments):
        await server.emit_event('BLOCK_JOB_CANCELLED', {'device': 'other'})
        await server.emit_event('STOP')
        await server.emit_event('BLOCK_JOB_CANCELLED',
                                {'device': 'j0', 'job': {'type': 'backup'}})
        return {}
    server.on('block-job-cancel', cancel)
    _, event = await client.execute_and_wait(
        'block-job-cancel', event='BLOCK_JOB_CANCELLED',
        match={'device': 'j0', 'job': {'type': 'backup'}})
    assert event['data']['device'] == 'j0'


async def test_an_error_reply_does_not_wait(client, server):
    server.on('stop', CommandError('GenericError', 'not now'))
    with pytest.raises(ExecuteError, match='not now'):
        await client.execute_and_wait('stop', event='STOP')
    assert client._listeners == [client.events]


async def test_timeouts(client, server):
    """No event: EventTimeoutError with the whole timeout; no reply:
    ExecuteTimeoutError.  Both are asyncio.TimeoutErrors."""
    server.on('stop', {})
    with pytest.raises(EventTimeoutError,
                       match=r"no 'STOP' event within 0.05 seconds") as err:
        await client.execute_and_wait('stop', event='STOP', timeout=0.05)
    assert isinstance(err.value, asyncio.TimeoutError)
    server.on('slow', lambda arguments: NO_REPLY)
    with pytest.raises(ExecuteTimeoutError):
        await client.execute_and_wait('slow', event='STOP', timeout=0.05)
    assert client._listeners == [client.events]
    assert await client.execute('query-status')


async def test_the_session_ending_ends_the_wait(client, server):
    """The reply came, the event never will: the session's end ends the
    wait, promptly, instead of a wait on a dead connection."""
    server.on('stop', {})
    with pytest.raises(ExecInterruptedError, match="'STOP' event"):
        async with client.expect('STOP'):
            await client.execute('stop')
            await server.hang_up()


async def test_expect_several_commands(client, server):
    """The event may come during any command of the block; the block's
    end waits for it; inside, wait() can wait earlier."""
    server.on('stop', emitting(server, 'STOP'))
    server.on('cont', emitting(server, 'RESUME', before_reply=False))
    async with client.expect('RESUME', timeout=10) as resumed:
        await client.execute('stop')
        await client.execute('cont')
    assert resumed.event is not None and resumed.event['event'] == 'RESUME'

    async with client.expect('STOP', timeout=10) as stopped:
        await client.execute('stop')
        event = await stopped.wait()
        assert event is stopped.event
    assert client._listeners == [client.events]


async def test_expect_block_that_raises_does_not_wait(client, server):
    with pytest.raises(KeyError):
        async with client.expect('NEVER') as never:
            raise KeyError('the block failed')
    assert never.event is None
    assert client._listeners == [client.events]


async def test_expect_before_connecting(client, server):
    """Expecting on a client whose session is over: what arrived is
    still found, then the wait ends instead of hanging."""
    expected = client.expect('STOP')
    await expected.__aenter__()
    await server.emit_event('STOP')
    await client.execute('query-status')  # the event is in
    await client.disconnect()
    await expected.__aexit__(None, None, None)
    assert expected.event is not None
    with pytest.raises(ExecInterruptedError):
        async with client.expect('STOP'):
            await started()
