"""QMPClient against the fake server: every protocol path."""

import asyncio
import errno
import gc
import json
import logging
import os
import socket
import threading
import weakref

import pytest

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    Runstate,
    StateError,
)
from qemu.qmp import handshake
from qemu.qmp.message import DeserializationError, SerializationError
from qemu.qmp.models import Greeting
from qemu.qmp.qmp_client import (
    BadReplyError,
    ExecuteTimeoutError,
    GreetingError,
    NegotiationError,
    ServerParseError,
)
from qemu.qmp.error import QMPError
from qemu.qmp.testing import NO_REPLY, CommandError, QMPTestServer
from qemu.qmp.util import LIBRARY_HANDLER
from tests.helpers import (
    assert_no_tasks_left,
    client_tasks,
    wait_for_state,
)


class Gate:
    """An async handler that answers only once opened."""

    def __init__(self, value=None):
        self.value = {} if value is None else value
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, arguments):
        self.entered.set()
        await self.opened.wait()
        return self.value


# -- session set-up --------------------------------------------------

async def test_greeting_and_oob_negotiation(client, server):
    """The greeting is exposed and oob is enabled when offered."""
    assert client.greeting.QMP.capabilities == ['oob']
    assert server.received[0] == {'execute': 'qmp_capabilities',
                                  'arguments': {'enable': ['oob']}}
    assert client.runstate is Runstate.RUNNING


async def test_greeting_kept_whole(client):
    """The greeting is kept as it came (compactly, once the session
    runs): every member reads back, and reads give the same objects."""
    from qemu.qmp.testing import DEFAULT_GREETING
    greeting = client.greeting
    assert isinstance(greeting, Greeting)
    assert greeting._asdict() == DEFAULT_GREETING
    assert greeting.QMP.version == DEFAULT_GREETING['QMP']['version']
    assert greeting.QMP is greeting.QMP
    assert repr(greeting).startswith("Greeting({'QMP': ")
    assert client.greeting is greeting is client._core.greeting


class MyGreeting(Greeting):
    """A subclass's own greeting type, with a member of its own."""

    def __init__(self, raw):
        super().__init__(raw)
        self.seen_by = 'subclass'


class OwnGreetingClient(QMPClient):
    async def _get_greeting(self):
        return MyGreeting((await super()._get_greeting())._raw)


class PatchingClient(QMPClient):
    def _cb_inbound(self, msg):
        if 'QMP' in msg:
            msg['QMP']['capabilities'].append('patched')
        return super()._cb_inbound(msg)


@pytest.mark.parametrize('client_type', [OwnGreetingClient, PatchingClient])
async def test_greeting_from_subclass_hooks_is_kept_as_is(server,
                                                          client_type):
    """A greeting a subclass made or changed is kept as it made it."""
    qmp = client_type()
    await qmp.connect(server.address)
    if client_type is OwnGreetingClient:
        assert type(qmp.greeting) is MyGreeting
        assert qmp.greeting.seen_by == 'subclass'
    else:
        assert qmp.greeting.QMP.capabilities == ['oob', 'patched']
    await qmp.disconnect()


async def one_reply_and_one_event(qmp, server):
    """A command's reply, then an event, through ``qmp``."""
    assert await qmp.execute('query-status') == {'status': 'running',
                                                 'running': True}
    await server.emit_event('STOP')
    assert (await qmp.events.get())['event'] == 'STOP'


class OwnRoutingClient(QMPClient):
    """Sees every message in the reference library's receiving hooks."""

    def __init__(self):
        super().__init__()
        self.received = []
        self.handled = []

    async def _do_recv(self):
        msg = await super()._do_recv()
        self.received.append(msg)
        return msg

    async def _on_message(self, msg):
        self.handled.append(msg)
        await super()._on_message(msg)


async def test_receiving_hooks_of_a_subclass_see_every_message(server):
    """A subclass's `_do_recv` and `_on_message` see every message once
    the session runs, as in the reference library."""
    qmp = OwnRoutingClient()
    await qmp.connect(server.address)
    before = len(qmp.received)
    await one_reply_and_one_event(qmp, server)
    received = qmp.received[before:]
    assert [('return' in msg, msg.get('event')) for msg in received] \
        == [(True, None), (False, 'STOP')]
    assert qmp.handled[-2:] == received
    await qmp.disconnect()


@pytest.mark.parametrize('when', ['before connect', 'after connect'])
@pytest.mark.parametrize('where', ['class', 'object'])
async def test_receiving_hooks_patched_in_see_every_message(server, where,
                                                            when):
    """`_do_recv` and `_on_message` patched onto QMPClient (as
    ``mock.patch.object`` does) see every message from then on, before
    the session or during it, as a subclass's do.  Set on one client,
    they do from its next session on."""
    received, handled = [], []
    do_recv, on_message = QMPClient._do_recv, QMPClient._on_message

    async def spy_recv(self):
        msg = await do_recv(self)
        received.append(msg)
        return msg

    async def spy_on_message(self, msg):
        handled.append(msg)
        await on_message(self, msg)

    qmp = QMPClient()
    if when == 'after connect':
        await qmp.connect(server.address)
    if where == 'class':
        QMPClient._do_recv = spy_recv
        QMPClient._on_message = spy_on_message
    else:
        qmp._do_recv = spy_recv.__get__(qmp)
        qmp._on_message = spy_on_message.__get__(qmp)
    try:
        if when == 'before connect':
            await qmp.connect(server.address)
        elif where == 'object':
            await qmp.disconnect()
            await qmp.connect(server.address)
        before = len(received)
        await one_reply_and_one_event(qmp, server)
        await qmp.disconnect()
    finally:
        if where == 'class':
            QMPClient._do_recv = do_recv
            QMPClient._on_message = on_message
    assert [('return' in msg, msg.get('event'))
            for msg in received[before:]] == [(True, None), (False, 'STOP')]
    assert handled[-2:] == received[before:]


async def test_a_hook_patched_while_an_event_is_delivered_sees_the_rest(
        server):
    """Messages of one read still waiting behind an event whose delivery
    blocked (a listener's slow ``put``) go through a hook patched onto the
    class meanwhile."""
    from qemu.qmp.events import EventListener

    class Slow(EventListener):
        def __init__(self):
            super().__init__()
            self.entered, self.gate = asyncio.Event(), asyncio.Event()

        async def put(self, event):
            if event['event'] == 'E1':
                self.entered.set()
                await self.gate.wait()
            await super().put(event)

    qmp = QMPClient()
    await qmp.connect(server.address)
    slow = Slow()
    qmp.register_listener(slow)
    seen = []
    own = QMPClient._on_message

    async def spy(self, msg):
        seen.append(msg.get('event'))
        await own(self, msg)

    await server.send_raw(b''.join(server.event_bytes(name)
                                   for name in ('E1', 'E2', 'E3')))
    await slow.entered.wait()
    QMPClient._on_message = spy
    try:
        slow.gate.set()
        for _ in range(3):
            await slow.get()
        await server.emit_event('E4')
        await slow.get()
    finally:
        QMPClient._on_message = own
    await qmp.disconnect()
    assert seen == ['E2', 'E3', 'E4']


async def test_an_execute_msg_override_gets_the_callers_timeout(server):
    """An ``execute_msg`` override with a default timeout of its own gets
    the caller's: `None` (no timeout) included."""
    seen = []

    class OwnDefault(QMPClient):
        async def execute_msg(self, msg, *, timeout=0.2):
            seen.append(timeout)
            return await super().execute_msg(msg, timeout=timeout)

    qmp = OwnDefault()
    await qmp.connect(server.address)
    await qmp.execute('query-status')
    await qmp.execute('query-status', timeout=None)
    await qmp.execute('query-status', timeout=3)
    assert seen == [None, None, 3]
    await qmp.disconnect()


class PassThroughWrapper:
    """Wraps a bound method and passes every other attribute lookup
    through to it, as ``wrapt``'s wrappers (used by tracing tools) do: its
    ``__func__`` is the wrapped method's."""

    def __init__(self, wrapped, calls):
        self._wrapped = wrapped
        self._calls = calls

    def __getattr__(self, name):
        return getattr(self._wrapped, name)

    def __call__(self, *args, **kwargs):
        self._calls.append(self._wrapped.__name__)
        return self._wrapped(*args, **kwargs)


async def test_hooks_behind_a_pass_through_wrapper_are_called(server):
    """A hook wrapped by a tracing tool is called, though the wrapper
    answers for the original's ``__func__``."""
    calls = []
    qmp = QMPClient()
    for hook in ('_do_recv', '_on_message', 'execute_msg'):
        setattr(qmp, hook, PassThroughWrapper(getattr(qmp, hook), calls))
    await qmp.connect(server.address)
    calls.clear()
    await one_reply_and_one_event(qmp, server)
    await qmp.disconnect()
    assert sorted(set(calls)) == ['_do_recv', '_on_message', 'execute_msg']
    assert calls.count('_on_message') == 2


def test_a_hook_bound_to_another_client_counts_as_replaced():
    """QMPClient's own ``_on_message`` bound to another client is not
    this client's: the reader must call it (white-box: the check)."""
    qmp, other = QMPClient(), QMPClient()
    assert not qmp._receiving_hooks_replaced()
    qmp._on_message = other._on_message
    assert qmp._receiving_hooks_replaced()
    qmp.execute_msg = other.execute_msg
    assert qmp._hooks_replaced()


async def test_an_execute_msg_with_the_reference_signature_is_used(server):
    """An ``execute_msg`` override written for the reference library
    (``execute_msg(self, msg)``, no ``timeout``) still serves execute()."""
    sent = []

    class ReferenceStyle(QMPClient):
        async def execute_msg(self, msg):
            sent.append(msg['execute'])
            return await super().execute_msg(msg)

    qmp = ReferenceStyle()
    await qmp.connect(server.address)
    assert (await qmp.execute('query-status'))['status'] == 'running'
    assert sent == ['query-status']
    await qmp.disconnect()


@pytest.mark.parametrize('how', ['subclass', 'object', 'class'])
async def test_a_greeting_changed_by_cb_inbound_is_kept(server, how):
    """A `_cb_inbound` that changes the greeting, however it was put in
    place, finds its change in ``qmp.greeting`` after the handshake."""
    own = QMPClient._cb_inbound

    def tag(self, msg):
        msg = own(self, msg)
        if 'QMP' in msg:
            msg['QMP']['capabilities'].append('tagged')
        return msg

    class Tagging(QMPClient):
        _cb_inbound = tag

    qmp = Tagging() if how == 'subclass' else QMPClient()
    if how == 'object':
        qmp._cb_inbound = tag.__get__(qmp)
    elif how == 'class':
        QMPClient._cb_inbound = tag
    try:
        await qmp.connect(server.address)
    finally:
        QMPClient._cb_inbound = own
    assert 'tagged' in qmp.greeting.QMP.capabilities
    await qmp.disconnect()


async def test_a_reader_swapped_in_is_read_from(server):
    """A stream reader set as ``_reader`` mid-session is where the next
    message is read from, as in the reference library."""
    qmp = QMPClient()
    await qmp.connect(server.address)
    stand_in = asyncio.StreamReader()
    original = qmp._reader
    qmp._reader = stand_in
    # Wake the reader with one event through the original stream, then
    # give the stand-in the next one.
    await server.emit_event('STOP')
    assert (await qmp.events.get())['event'] == 'STOP'
    stand_in.feed_data(b'{"event": "RESUME", "data": {}, '
                       b'"timestamp": {"seconds": 1, "microseconds": 2}}\n')
    assert (await qmp.events.get())['event'] == 'RESUME'
    qmp._reader = original
    await qmp.disconnect()


async def test_negotiation_message_is_not_kept(client):
    """Once negotiated, the session keeps no copy of qmp_capabilities."""
    assert client._core._negotiation is None


async def test_no_oob_when_not_offered():
    """Without 'oob' in the greeting, nothing is enabled."""
    greeting = {'QMP': {'version': {}, 'capabilities': []}}
    async with QMPTestServer(greeting) as server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        assert server.received[0]['arguments'] == {'enable': []}
        await qmp.disconnect()


async def test_guest_agent_mode():
    """With both flags False the client neither waits nor negotiates."""
    async with QMPTestServer(greeting=None) as server:
        server.on('guest-ping', {})
        qmp = QMPClient('qga')
        qmp.await_greeting = qmp.negotiate = False
        await qmp.connect(await server.start())
        assert qmp.greeting is None
        assert await qmp.execute('guest-ping') == {}
        assert [m['execute'] for m in server.received] == ['guest-ping']
        await qmp.disconnect()


@pytest.mark.parametrize('greeting, cause', [
    ({'QMP': {'version': {}}}, KeyError),
    ({'QMP': {'version': {}, 'capabilities': 'oob'}}, TypeError),
    ({'hello': 1}, KeyError),
])
async def test_bad_greeting(greeting, cause):
    """An invalid greeting fails connect() with a GreetingError inside."""
    async with QMPTestServer(greeting) as server:
        qmp = QMPClient()
        with pytest.raises(ConnectError) as info:
            await qmp.connect(await server.start())
        assert isinstance(info.value.exc, GreetingError)
        assert isinstance(info.value.exc.exc, cause)
        assert qmp.runstate is Runstate.IDLE
        assert qmp.greeting is None or qmp.greeting
    assert_no_tasks_left()


async def test_garbage_greeting():
    """A greeting that is not JSON is a GreetingError too."""
    async with QMPTestServer(greeting=None) as server:
        address = await server.start()
        qmp = QMPClient()
        connecting = asyncio.create_task(qmp.connect(address))
        await server.wait_connected()
        await server.send_raw(b'\x00garbage\n')
        with pytest.raises(ConnectError) as info:
            await connecting
        assert isinstance(info.value.exc, GreetingError)
        assert isinstance(info.value.exc.exc, DeserializationError)


async def test_hang_up_before_greeting():
    """The server hanging up instead of greeting: ConnectError(EOFError)."""
    async with QMPTestServer(greeting=None) as server:
        address = await server.start()
        qmp = QMPClient()
        connecting = asyncio.create_task(qmp.connect(address))
        await server.wait_connected()
        await server.hang_up()
        with pytest.raises(ConnectError) as info:
            await connecting
        assert isinstance(info.value.exc, EOFError)
        assert qmp.runstate is Runstate.IDLE


@pytest.mark.parametrize('negotiate', [True, False])
async def test_greeting_timeout(negotiate):
    """session_timeout bounds the wait for a greeting, and the error names
    both settings a guest agent's socket needs, even when one is set."""
    async with QMPTestServer(greeting=None) as server:
        qmp = QMPClient()
        qmp.negotiate = negotiate
        qmp.session_timeout = 0.05
        with pytest.raises(ConnectError) as info:
            await qmp.connect(await server.start())
        assert isinstance(info.value.exc, GreetingError)
        text = str(info.value)
        assert 'No greeting within 0.05 seconds' in text
        assert "set the client's await_greeting and negotiate to False" in text
        assert not text.rstrip().endswith(':')
        assert qmp.runstate is Runstate.IDLE


async def test_a_late_greeting_is_warned_about(monkeypatch, caplog):
    """Without session_timeout a socket that never greets (the guest
    agent's) waits as long as it takes, as in the reference library, but
    not silently: a WARNING after a few seconds says what to set."""
    monkeypatch.setattr(handshake, 'GREETING_PATIENCE', 0.05)
    warned = asyncio.Event()
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.set()
    logger = logging.getLogger('qemu.qmp.qmp_client.patient')
    logger.addHandler(handler)
    try:
        async with QMPTestServer(greeting=None) as server:
            qmp = QMPClient('patient')
            connecting = asyncio.create_task(
                qmp.connect(await server.start()))
            await asyncio.wait_for(warned.wait(), 10)
            await qmp.disconnect()
            with pytest.raises(ConnectError):
                await connecting
    finally:
        logger.removeHandler(handler)
    assert 'No greeting after 0.05 seconds' in caplog.text
    assert "set the client's await_greeting and negotiate to False" \
        in caplog.text


async def test_no_warning_when_session_timeout_is_shorter(monkeypatch,
                                                          caplog):
    monkeypatch.setattr(handshake, 'GREETING_PATIENCE', 0.05)
    async with QMPTestServer(greeting=None) as server:
        qmp = QMPClient()
        qmp.session_timeout = 0.05
        with pytest.raises(ConnectError):
            await qmp.connect(await server.start())
        assert 'No greeting after' not in caplog.text


async def test_connect_failure_names_the_address(tmp_path):
    """A failed connect() names the address it tried, for UNIX and TCP,
    keeping the reference's error_message."""
    path = str(tmp_path / 'missing.sock')
    qmp = QMPClient()
    with pytest.raises(ConnectError) as info:
        await qmp.connect(path)
    assert info.value.error_message == 'Failed to establish connection'
    assert info.value.address == path
    assert str(info.value).startswith(
        f"Failed to establish connection ({path}): [Errno 2]")
    with socket.socket() as unused:
        unused.bind(('127.0.0.1', 0))
        port = unused.getsockname()[1]
    with pytest.raises(ConnectError) as info:
        await qmp.connect(('127.0.0.1', port))
    assert f"(127.0.0.1:{port})" in str(info.value)
    with pytest.raises(ConnectError) as info:
        await qmp.start_server(str(tmp_path / 'no' / 'dir.sock'))
    assert f"({tmp_path}/no/dir.sock)" in str(info.value)


async def test_negotiation_timeout():
    """session_timeout bounds the wait for the negotiation reply."""
    async with QMPTestServer() as server:
        server.on('qmp_capabilities', lambda args: NO_REPLY)
        qmp = QMPClient()
        qmp.session_timeout = 0.05
        with pytest.raises(ConnectError) as info:
            await qmp.connect(await server.start())
        assert isinstance(info.value.exc, NegotiationError)
        assert 'No reply to qmp_capabilities within 0.05 seconds' in \
            str(info.value)
        assert not str(info.value).rstrip().endswith(':')
        assert qmp.runstate is Runstate.IDLE


async def test_negotiation_refused():
    """An error reply to qmp_capabilities is a NegotiationError."""
    async with QMPTestServer() as server:
        server.on('qmp_capabilities', CommandError('GenericError', 'no'))
        qmp = QMPClient()
        with pytest.raises(ConnectError) as info:
            await qmp.connect(await server.start())
        assert isinstance(info.value.exc, NegotiationError)
        assert isinstance(info.value.exc.exc, ExecuteError)
        assert str(info.value).endswith('Negotiation failed: no')


async def test_negotiation_bad_reply():
    """A reply without return or error fails negotiation."""
    async with QMPTestServer() as server:
        server.on('qmp_capabilities', lambda args: NO_REPLY)
        address = await server.start()
        qmp = QMPClient()
        connecting = asyncio.create_task(qmp.connect(address))
        await server.wait_for_command('qmp_capabilities')
        await server.send_message({'hello': 'there'})
        with pytest.raises(ConnectError) as info:
            await connecting
        assert isinstance(info.value.exc.exc, BadReplyError)


async def test_event_during_negotiation_is_kept():
    """An event before the negotiation reply reaches the listeners."""
    async with QMPTestServer() as server:
        async def capabilities(args):
            await server.emit_event('EARLY')
            return {}
        server.on('qmp_capabilities', capabilities)
        qmp = QMPClient()
        await qmp.connect(await server.start())
        assert (await qmp.events.get())['event'] == 'EARLY'
        await qmp.disconnect()


# -- executing -------------------------------------------------------

async def test_execute_returns_value(client):
    """execute() returns the 'return' member."""
    assert await client.execute('query-status') == {'status': 'running',
                                                    'running': True}


async def test_execute_with_arguments(client, server):
    """Arguments are sent as given, with an id the client picked."""
    server.on('echo', lambda args: args)
    assert await client.execute('echo', {'a': [1, 'x']}) == {'a': [1, 'x']}
    sent = server.received[-1]
    assert sent['execute'] == 'echo' and sent['arguments'] == {'a': [1, 'x']}
    assert isinstance(sent['id'], str)


async def test_execute_error(client, server):
    """An error reply raises ExecuteError with the server's description."""
    server.on('fail', CommandError('DeviceNotFound', 'no such device'))
    with pytest.raises(ExecuteError) as info:
        await client.execute('fail')
    err = info.value
    assert str(err) == 'no such device'
    assert err.error_class == 'DeviceNotFound'
    assert err.error.error.desc == 'no such device'
    assert err.sent['execute'] == 'fail'
    assert err.received['error']['class'] == 'DeviceNotFound'
    assert await client.execute('query-status')  # still usable


async def test_unknown_command(client):
    """A command the server lacks is a CommandNotFound ExecuteError."""
    with pytest.raises(ExecuteError) as info:
        await client.execute('no-such-thing')
    assert info.value.error_class == 'CommandNotFound'


async def test_execute_msg_does_not_change_the_message(client, server):
    """The client's id never leaks into the caller's Message."""
    msg = QMPClient.make_execute_msg('query-status')
    await client.execute_msg(msg)
    await client.execute_msg(msg)
    assert 'id' not in msg
    ids = [m['id'] for m in server.received[-2:]]
    assert len(set(ids)) == 2


class HookedClient(QMPClient):
    """Overrides the reference library's command hooks, to see them."""

    def __init__(self):
        super().__init__('hooked')
        self.seen = []

    @classmethod
    def make_execute_msg(cls, cmd, arguments=None, oob=False):
        msg = super().make_execute_msg(cmd, arguments, oob)
        msg['arguments'] = {'made-by': 'hook'}
        return msg

    async def execute_msg(self, msg, *, timeout=None):
        self.seen.append(dict(msg))
        return await super().execute_msg(msg, timeout=timeout)


async def test_execute_goes_through_overridden_hooks(server):
    """A subclass that replaces make_execute_msg() or execute_msg() sees
    every execute() go through them, as with the reference library."""
    qmp = HookedClient()
    await qmp.connect(server.address)
    assert await qmp.execute('query-status') == {'status': 'running',
                                                 'running': True}
    assert qmp.seen == [{'execute': 'query-status',
                         'arguments': {'made-by': 'hook'}}]
    assert server.received[-1]['arguments'] == {'made-by': 'hook'}
    await qmp.disconnect()


async def test_execute_goes_through_patched_hooks(client):
    """Hooks patched on the class or the object (mock.patch.object) see
    execute() go through them too."""
    from unittest import mock
    with mock.patch.object(QMPClient, 'make_execute_msg',
                           side_effect=ValueError("patched")):
        with pytest.raises(ValueError, match="patched"):
            await client.execute('query-status')
    seen = []
    original = client.execute_msg

    async def spy(msg, **kwargs):
        seen.append(msg['execute'])
        return await original(msg, **kwargs)

    with mock.patch.object(client, 'execute_msg', spy):
        await client.execute('query-status')
    assert seen == ['query-status']


async def test_execute_in_wrong_state_or_loop():
    """execute() checks the runstate when awaited, as execute_msg() does."""
    qmp = QMPClient()
    pending = qmp.execute('query-status')
    with pytest.raises(StateError, match="disconnected and idle"):
        await pending


async def test_execute_msg_requires_execute(client):
    """A message with neither execute nor exec-oob is a ValueError."""
    with pytest.raises(ValueError):
        await client.execute_msg(Message({'command': 'x'}))


async def test_unserializable_arguments(client):
    """Arguments JSON cannot carry fail in the caller; session goes on."""
    with pytest.raises(SerializationError):
        await client.execute('x', {'a': {1, 2}})
    assert await client.execute('query-status')


async def test_execute_when_not_connected():
    """execute() on an idle client is a StateError."""
    with pytest.raises(StateError,
                       match='QMPClient is disconnected and idle'):
        await QMPClient().execute('query-status')


async def test_thousand_concurrent_executes(client, server):
    """1,000 executes in flight at once each get their own reply."""
    server.on('echo', lambda args: args['n'])
    results = await asyncio.gather(
        *(client.execute('echo', {'n': n}) for n in range(1000)))
    assert results == list(range(1000))


async def test_oob_reply_overtakes(client, server):
    """An out-of-band reply routed before an earlier in-band one."""
    gate = Gate('slow')
    server.on('slow', gate)
    server.on('fast', 'fast')
    slow = asyncio.create_task(client.execute('slow'))
    await gate.entered.wait()
    assert await client.execute('fast', oob=True) == 'fast'
    assert not slow.done()
    gate.opened.set()
    assert await slow == 'slow'
    assert 'exec-oob' in server.received[-1]


async def test_cancelled_execute_only_affects_itself(client, server, caplog):
    """A cancelled execute leaves the session usable; its late reply is
    dropped quietly (at DEBUG), while a stray reply is still a warning."""
    gate = Gate('late')
    server.on('slow', gate)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.execute('slow'), 0.05)
    gate.opened.set()
    with caplog.at_level(logging.DEBUG, logger='qemu.qmp'):
        assert await client.execute('query-status')
        await server.send_message({'return': {}, 'id': 'stray'})
        assert await client.execute('query-status')
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING]
    assert warnings == ["Dropping reply with unknown id 'stray'"]
    assert any('late reply' in r.getMessage() for r in caplog.records)
    assert client.runstate is Runstate.RUNNING


async def test_execute_timeout(client, server, caplog):
    """execute(timeout=) raises ExecuteTimeoutError, an asyncio.TimeoutError
    that names the command and never its arguments; the session goes on
    and the late reply is dropped without a warning."""
    gate = Gate('late')
    server.on('slow', gate)
    with pytest.raises(ExecuteTimeoutError) as caught:
        await client.execute('slow', {'password': 'hunter2'}, timeout=0.05)
    err = caught.value
    assert isinstance(err, asyncio.TimeoutError)
    assert (err.command, err.timeout) == ('slow', 0.05)
    assert "'slow' within 0.05 seconds" in str(err)
    assert 'hunter2' not in str(err) + repr(err)
    with pytest.raises(ExecuteTimeoutError):
        await client.execute_msg(Message({'execute': 'slow'}), timeout=0)
    gate.opened.set()
    with caplog.at_level(logging.WARNING, logger='qemu.qmp'):
        assert await client.execute('query-status', timeout=5)
        assert await client.execute('query-status')
    assert not caplog.records
    assert client.runstate is Runstate.RUNNING


async def test_a_nan_timeout_is_refused(client, server):
    """A NaN timeout would never expire (no comparison with NaN is true):
    every wait of the client refuses it before sending anything, as the
    blocking client does."""
    nan = float('nan')
    sent = len(server.received)
    for waiting in (
            lambda: client.execute('query-status', timeout=nan),
            lambda: client.execute_msg(Message({'execute': 'query-status'}),
                                       timeout=nan),
            lambda: client.execute_and_wait('query-status', event='STOP',
                                            timeout=nan),
            lambda: client.guest_sync(timeout=nan)):
        with pytest.raises(ValueError, match='NaN'):
            await waiting()
    with pytest.raises(ValueError, match='NaN'):
        client.expect('STOP', timeout=nan)
    async with client.expect('STOP') as expected:
        with pytest.raises(ValueError, match='NaN'):
            await expected.wait(nan)
        await server.emit_event('STOP')
    assert len(server.received) == sent
    assert len(client._core) == 0  # white-box: no command left waiting
    assert await client.execute('query-status', timeout=5)


async def test_a_nan_session_timeout_is_refused_where_it_is_set(server):
    """``session_timeout = nan`` is a ValueError at once (set directly or
    through ``session()``), not a puzzling GreetingError at connect()."""
    from qemu.qmp import session
    qmp = QMPClient()
    with pytest.raises(ValueError, match='NaN'):
        qmp.session_timeout = float('nan')
    assert qmp.session_timeout is None
    qmp.session_timeout = 5
    assert qmp.session_timeout == 5
    with pytest.raises(ValueError, match='NaN'):
        async with session(server.address, session_timeout=float('nan')):
            pass
    assert len(server.received) == 0


async def test_abandoned_ids_are_bounded(client, server):
    """Thousands of timed-out commands whose replies never come do not
    grow the client's memory without bound."""
    server.on('never', lambda arguments: NO_REPLY)
    for _ in range(1100):
        with pytest.raises(ExecuteTimeoutError):
            await client.execute('never', timeout=0)
    assert len(client._core._abandoned) == 1000  # white-box: the bound
    assert len(client._core) == 0


async def test_idless_late_reply_is_not_the_next_ones(client, server):
    """Commands sent without an id are answered in order: the late reply
    of one that stopped waiting is its own, not the next command's."""
    gate = Gate({'answer': 'slow'})
    server.on('slow', gate)
    server.on('quick', {'answer': 'quick'})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            client._execute(Message({'execute': 'slow'}), assign_id=False),
            0.05)
    quick = asyncio.ensure_future(
        client._execute(Message({'execute': 'quick'}), assign_id=False))
    await server.wait_for_command('quick')
    gate.opened.set()
    assert (await asyncio.wait_for(quick, 5))['return'] == {'answer': 'quick'}


async def test_disconnect_with_executes_pending(client, server):
    """Our own disconnect() interrupts pending executes; raises nothing."""
    gate = Gate()
    server.on('slow', gate)
    pending = [asyncio.create_task(client.execute('slow')) for _ in range(3)]
    await gate.entered.wait()
    await client.disconnect()
    for task in pending:
        with pytest.raises(ExecInterruptedError):
            await task
    assert client.runstate is Runstate.IDLE


async def test_server_hang_up_interrupts_executes(client, server):
    """A hang-up interrupts pending executes; disconnect() says EOFError."""
    gate = Gate()
    server.on('slow', gate)
    pending = asyncio.create_task(client.execute('slow'))
    await gate.entered.wait()
    await server.hang_up()
    with pytest.raises(ExecInterruptedError, match='EOFError'):
        await pending
    with pytest.raises(EOFError):
        await client.disconnect()
    with pytest.raises(StateError):
        await client.execute('query-status')


async def test_reconnect(server):
    """The same client connects again after a disconnect."""
    qmp = QMPClient()
    for _ in range(3):
        await qmp.connect(server.address)
        assert await qmp.execute('query-status')
        await qmp.disconnect()
        await server.wait_disconnected()
    assert server.connections == 3


async def test_connect_to_preconnected_socket():
    """connect() works over a socket the caller already connected."""
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        sock = await server.socketpair()
        qmp = QMPClient()
        await qmp.connect(sock)
        assert await qmp.execute('query-status') == {'status': 'running'}
        await qmp.disconnect()


async def test_server_connects_to_us(tmp_path):
    """accept() takes a server that dials in, as QEMU's client mode."""
    path = str(tmp_path / 'listen.sock')
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        qmp = QMPClient()
        await qmp.start_server(path)
        await server.connect_to(path)
        await qmp.accept()
        assert await qmp.execute('query-status') == {'status': 'running'}
        await qmp.disconnect()


async def test_tcp(tmp_path):
    """The whole session works over TCP."""
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        address = await server.start(('127.0.0.1', 0))
        qmp = QMPClient()
        await qmp.connect(address)
        assert await qmp.execute('query-status') == {'status': 'running'}
        with pytest.raises(QMPError, match='UNIX socket'):
            qmp.send_fd_scm(0)
        await qmp.disconnect()


# -- routing and bad replies ---------------------------------------------

async def test_unknown_id_is_dropped(client, server, caplog):
    """A reply with an unknown id is logged and dropped."""
    with caplog.at_level(logging.WARNING, logger='qemu.qmp'):
        await server.send_message({'return': {}, 'id': 'nobody'})
        assert await client.execute('query-status')
    assert any("'nobody'" in r.getMessage() for r in caplog.records)


async def test_idless_error_ends_session(client, server):
    """An id-less error with nothing id-less pending: ServerParseError."""
    gate = Gate()
    server.on('slow', gate)
    pending = asyncio.create_task(client.execute('slow'))
    await gate.entered.wait()
    await server.reply_without_id('Invalid JSON')
    with pytest.raises(ExecInterruptedError):
        await pending
    with pytest.raises(ServerParseError) as info:
        await client.disconnect()
    assert info.value.msg['error']['desc'] == 'Invalid JSON'


async def test_idless_error_goes_to_idless_raw(client, server):
    """An id-less error is the reply of a pending id-less execution."""
    server.on('bad', CommandError('GenericError', 'parse'))
    reply = await client._raw({'execute': 'bad'}, assign_id=False)
    assert reply == {'error': {'class': 'GenericError', 'desc': 'parse'}}
    assert client.runstate is Runstate.RUNNING


@pytest.mark.parametrize('reply', [
    {'hello': 1},
    {'error': {'class': 1, 'desc': 'x'}},
    {'error': 'just a string'},
])
async def test_bad_reply_raises_for_that_caller(client, server, reply):
    """A routed reply that is not a reply: BadReplyError, session goes on."""
    server.on('weird', lambda args: NO_REPLY)
    pending = asyncio.create_task(client.execute('weird'))
    sent = await server.wait_for_command('weird')
    await server.send_message({**reply, 'id': sent['id']})
    with pytest.raises(BadReplyError) as info:
        await pending
    assert info.value.sent['execute'] == 'weird'
    assert await client.execute('query-status')


async def test_events_and_replies_interleaved(client, server):
    """Events between replies are delivered in order, replies routed."""
    async def noisy(args):
        await server.emit_event('BEFORE', {'n': args['n']})
        return args['n']
    server.on('noisy', noisy)
    results = [await client.execute('noisy', {'n': n}) for n in range(5)]
    assert results == list(range(5))
    events = [await client.events.get() for _ in range(5)]
    assert [e['data']['n'] for e in events] == list(range(5))


async def test_garbage_keeps_what_came_before(client, server):
    """Garbage ends the session with DeserializationError; what arrived
    before it is still delivered."""
    await server.send_raw(
        QMPTestServer.event_bytes('FIRST') + b'\xff\xfe not json\n')
    await wait_for_state(client, Runstate.DISCONNECTING)
    assert (await client.events.get())['event'] == 'FIRST'
    with pytest.raises(DeserializationError):
        await client.disconnect()
    assert client.runstate is Runstate.IDLE


async def test_guest_agent_delimiter_byte(client, server):
    """A reply preceded by 0xFF (guest-sync-delimited) is understood."""
    server.on('sync', lambda args: NO_REPLY)
    pending = asyncio.create_task(client.execute('sync'))
    sent = await server.wait_for_command('sync')
    await server.send_raw(b'\xff{"return": 42, "id": "%s"}\n'
                          % sent['id'].encode())
    assert await pending == 42


async def test_event_without_name_is_dropped(client, server, caplog):
    """An event whose name is not a string is logged and dropped."""
    with caplog.at_level(logging.WARNING, logger='qemu.qmp'):
        await server.send_message({'event': 5})
        await server.emit_event('GOOD')
        assert (await client.events.get())['event'] == 'GOOD'
    assert any('without a name' in r.getMessage() for r in caplog.records)


# -- the raw path ----------------------------------------------------------

async def test_raw_with_own_id(client, server):
    """_raw() keeps a caller's id and returns the whole reply."""
    reply = await client._raw({'execute': 'query-status', 'id': [1, 'a']},
                              assign_id=False)
    assert reply['id'] == [1, 'a'] and 'return' in reply


async def test_disconnect_while_waiting_for_the_greeting():
    """disconnect() while connect() waits for a greeting that never comes:
    connect() fails at once with ConnectError (ConnectionAbortedError),
    disconnect() raises nothing, and the client can connect again."""
    async with QMPTestServer(greeting=None) as silent:
        qmp = QMPClient()
        connecting = asyncio.create_task(qmp.connect(await silent.start()))
        await silent.wait_connected()
        await asyncio.wait_for(qmp.disconnect(), 5)
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(connecting, 5)
        assert isinstance(info.value.exc, ConnectionAbortedError)
        assert qmp.runstate is Runstate.IDLE and not client_tasks()
    async with QMPTestServer() as server:
        await qmp.connect(await server.start())
        await qmp.disconnect()


async def test_disconnect_just_after_negotiation(server):
    """disconnect() called after negotiation succeeded but before connect()
    starts the session: connect() fails cleanly instead of an illegal
    DISCONNECTING -> RUNNING, no task is left, a later disconnect() raises
    nothing, and the client connects again."""
    class Held(QMPClient):
        async def _negotiate(self):
            await super()._negotiate()
            negotiated.set()
            await release.wait()

    negotiated, release = asyncio.Event(), asyncio.Event()
    qmp = Held()
    connecting = asyncio.create_task(qmp.connect(server.address))
    await negotiated.wait()
    disconnecting = asyncio.create_task(qmp.disconnect())
    while qmp.runstate is not Runstate.DISCONNECTING:
        await qmp.runstate_changed()
    release.set()
    with pytest.raises(ConnectError) as info:
        await asyncio.wait_for(connecting, 5)
    assert isinstance(info.value.exc, ConnectionAbortedError)
    assert 'disconnect() was called' in str(info.value)
    await asyncio.wait_for(disconnecting, 5)
    assert qmp.runstate is Runstate.IDLE and not client_tasks()
    await qmp.disconnect()
    await qmp.connect(server.address)
    assert await qmp.execute('query-status')
    await qmp.disconnect()


async def test_raw_reply_is_returned_as_it_came(client):
    """With assign_id, the reply comes back as the server sent it, with
    the client's id (as the reference library's _raw() does)."""
    reply = await client._raw(Message({'execute': 'query-status'}))
    assert reply['id'].startswith('__qmp#') and 'return' in reply


@pytest.mark.parametrize('exec_id', [None, 0, 1, 1.5, True, False, '',
                                     'text', [1, 'a'], {'k': [None]}])
async def test_any_json_id_routes(client, server, exec_id):
    """Ids of every JSON type route to their caller at once, null
    included (it used to mean "no id" inside the router and hung)."""
    server.on('echo', lambda args: args)
    for call in (client._raw, client._execute):
        msg = Message({'execute': 'echo', 'arguments': {'v': 1},
                       'id': exec_id})
        reply = await asyncio.wait_for(call(msg, assign_id=False), 5)
        assert reply == {'return': {'v': 1}, 'id': exec_id}
        assert msg['id'] == exec_id  # the caller's message is unchanged
    # execute_msg() routes by an id of its own, whatever the caller's.
    msg = Message({'execute': 'echo', 'arguments': {'v': 2},
                   'id': exec_id})
    assert await asyncio.wait_for(client.execute_msg(msg), 5) == {'v': 2}


async def test_ids_are_json_values_not_python_values(client, server):
    """true and 1 are different ids; 1 and 1.0 are the same number."""
    gate = Gate()
    server.on('slow', gate)
    server.on('echo', lambda args: args)
    first = asyncio.create_task(client._raw(
        {'execute': 'slow', 'id': True}, assign_id=False))
    await gate.entered.wait()
    with pytest.raises(ValueError, match='in use'):
        await client._raw({'execute': 'echo', 'id': True}, assign_id=False)
    gate.opened.set()
    assert (await first)['id'] is True
    reply = await client._raw({'execute': 'echo', 'id': 1},
                              assign_id=False)
    assert reply['id'] == 1 and reply['id'] is not True


async def test_execute_returns_the_whole_reply(client, server):
    """_execute() (the reference's name) returns the reply, errors too."""
    server.on('fail', CommandError('GenericError', 'no'))
    reply = await client._execute(Message({'execute': 'fail'}))
    assert reply['error']['desc'] == 'no' and 'id' in reply


async def test_raw_error_is_returned(client, server):
    """_raw() returns error replies instead of raising."""
    server.on('fail', CommandError('GenericError', 'no'))
    reply = await client._raw({'execute': 'fail'})
    assert reply['error']['desc'] == 'no'


@pytest.mark.parametrize('msg, assign', [
    ({'hello': 1}, True),
    ({'exec-oob': 'x'}, False),
    ({'execute': 'x', 'id': '__qmp#1'}, False),
])
async def test_raw_validation(client, msg, assign):
    """_raw() refuses messages it could not route."""
    with pytest.raises(ValueError):
        await client._raw(msg, assign_id=assign)


async def test_raw_duplicate_id_refused(client, server):
    """Two executions waiting on the same id would be ambiguous."""
    server.on('slow', lambda args: NO_REPLY)
    first = asyncio.create_task(
        client._raw({'execute': 'slow', 'id': 7}, assign_id=False))
    await server.wait_for_command('slow')
    with pytest.raises(ValueError, match='in use'):
        await client._raw({'execute': 'x', 'id': 7}, assign_id=False)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


# -- fd passing ------------------------------------------------------------

async def test_send_fd_scm_over_unix(client, server):
    """send_fd_scm() works on a UNIX socket and keeps the fd open."""
    rfd, wfd = socket.socketpair()
    with rfd, wfd:
        client.send_fd_scm(rfd.fileno())
        rfd.send(b'still open')  # the caller's descriptor was not closed
        assert wfd.recv(16) == b'still open'
    assert await client.execute('query-status')


async def hand_shaken_socketpair():
    """A QMPClient connected to one end of a socket pair, and the other
    end, on which this test plays QMP server by hand (so it can see any
    descriptor the client passes)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve():
        await loop.sock_sendall(ours, b'{"QMP": {"version": {}, '
                                b'"capabilities": []}}\n')
        request = json.loads(await loop.sock_recv(ours, 4096))
        await loop.sock_sendall(ours, json.dumps(
            {'return': {}, 'id': request.get('id')}).encode() + b'\n')

    qmp = QMPClient()
    await asyncio.gather(qmp.connect(theirs), serve())
    return qmp, ours


async def test_send_fd_scm_refuses_a_closed_descriptor():
    """A descriptor number that is no longer open raises EBADF and sends
    nothing, even though the number is free for reuse (it used to send a
    duplicate of the client's own QMP socket under that number)."""
    qmp, ours = await hand_shaken_socketpair()
    rfd, wfd = os.pipe()
    os.close(rfd)
    os.close(wfd)
    with pytest.raises(OSError) as info:
        qmp.send_fd_scm(rfd)
    assert info.value.errno == errno.EBADF
    with pytest.raises(BlockingIOError):
        ours.recvmsg(64, socket.CMSG_SPACE(4))
    # A real descriptor still goes through, the same one, and only it.
    with open(os.devnull) as passed:
        qmp.send_fd_scm(passed.fileno())  # sent before it returns
        _, fds, _, _ = socket.recv_fds(ours, 64, 4)
        assert len(fds) == 1
        assert os.path.samestat(os.fstat(fds[0]), os.fstat(passed.fileno()))
        os.close(fds[0])
    await qmp.disconnect()
    ours.close()


def test_send_fd_scm_when_not_connected():
    """send_fd_scm() needs a running session."""
    with pytest.raises(StateError):
        QMPClient().send_fd_scm(0)


async def test_readline_and_do_recv_share_one_buffer():
    """A subclass that reads the greeting with _readline() and the rest
    through the client loses nothing that arrived in the same read: the
    stream has one buffer."""
    class LineGreeting(QMPClient):
        async def _get_greeting(self):
            return Greeting(Message(await self._readline()))

    ours, theirs = socket.socketpair()

    def serve():
        with theirs, theirs.makefile('rb') as incoming:
            # The greeting and an event in one write.
            theirs.sendall(b'{"QMP": {"version": {}, "capabilities": []}}'
                           b'\n{"event": "EARLY", "data": {}}\n')
            incoming.readline()
            theirs.sendall(b'{"return": {}}\n')
            incoming.readline()
    thread = threading.Thread(target=serve)
    thread.start()
    qmp = LineGreeting()
    await qmp.connect(ours)
    event = await asyncio.wait_for(qmp.events.get(), 5)
    assert event['event'] == 'EARLY'
    await qmp.disconnect()
    await asyncio.to_thread(thread.join)


async def test_each_session_is_one_object_dropped_whole(server):
    """Everything of a session (streams, tasks, buffer, session core) is
    one object, made by connect() and released by disconnect(): the next
    session shares nothing with it."""
    qmp = QMPClient()
    await qmp.connect(server.address)
    first = qmp._conn  # white-box: the connection's state
    core = first.protocol_state
    assert first.reader_task is not None and core.phase.name == 'ESTABLISHED'
    await qmp.disconnect()
    assert qmp._conn is not first and qmp._conn.protocol_state is None
    await qmp.connect(server.address)
    assert qmp._conn.protocol_state is not core
    assert qmp._conn.lines is not first.lines
    await qmp.disconnect()
    released = weakref.ref(first)
    del first, core
    gc.collect()
    assert released() is None


async def test_a_late_greeting_is_shown_without_logging_set_up(
        monkeypatch):
    """A script that never set up logging (the library's own handler
    drops everything) still hears of the wait: a RuntimeWarning, which
    Python shows by default.  Where logging is set up, the log has it."""
    monkeypatch.setattr(handshake, 'GREETING_PATIENCE', 0.05)
    package = logging.getLogger('qemu.qmp')
    # As in a fresh process: only the package's own handler, and nothing
    # above it (other tests' shells and TUIs add theirs).
    monkeypatch.setattr(package, 'handlers', [LIBRARY_HANDLER])
    monkeypatch.setattr(package, 'propagate', False)
    async with QMPTestServer(greeting=None) as server:
        qmp = QMPClient('unlogged')
        qmp.session_timeout = 0.5
        with pytest.warns(RuntimeWarning, match='No greeting after 0.05 '
                          'seconds.*await_greeting and negotiate'):
            with pytest.raises(ConnectError):
                await qmp.connect(await server.start())
