"""Resynchronising with the guest agent: QMPClient.guest_sync()."""

import asyncio

import pytest

from qemu.qmp import QMPClient
from qemu.qmp.codec import SYNC_BYTE
from qemu.qmp.error import ProtocolError
from qemu.qmp.replies import ExecuteTimeoutError
from qemu.qmp.testing import NO_REPLY, QMPTestServer

# What qemu-ga 7.2 answers to the 0xFF byte (U+FFFD for the stray byte).
STRAY = ('{"error": {"class": "GenericError", '
         '"desc": "JSON parse error, stray \'\ufffd\'"}}\n').encode()


@pytest.fixture
async def agent():
    """A test server that answers like qemu-ga: no greeting, an id-less
    parse error for the client's 0xFF, and its reply to
    guest-sync-delimited after a 0xFF byte."""
    async with QMPTestServer(greeting=None) as server:
        async def sync(arguments):
            await server.send_raw(STRAY + SYNC_BYTE)
            return arguments['id']
        server.on('guest-sync-delimited', sync)
        server.on('guest-ping', {})
        server.on('guest-info', {'version': '7.2.22'})
        await server.start()
        yield server


@pytest.fixture
async def qga(agent):
    client = QMPClient('agent')
    client.await_greeting = client.negotiate = False
    await client.connect(agent.address)
    yield client
    await client.disconnect()


async def test_guest_sync(agent, qga):
    """The 0xFF goes first, then guest-sync-delimited with a random id,
    whose answer (after the agent's own 0xFF) must be that id."""
    await qga.guest_sync(timeout=5)
    await qga.guest_sync(timeout=5)
    assert agent.sync_bytes == 2
    tokens = [msg['arguments']['id'] for msg in agent.received]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    assert await qga.execute('guest-ping') == {}


async def test_leftovers_before_the_agents_sync_byte(agent, qga):
    """Whatever precedes the agent's 0xFF on its line is left over from
    before the resynchronisation, and skipped."""
    async def sync(arguments):
        await agent.send_raw(b'{"return": {"half of an old repl' + SYNC_BYTE)
        return arguments['id']
    agent.on('guest-sync-delimited', sync)
    await qga.guest_sync(timeout=5)
    assert await qga.execute('guest-info') == {'version': '7.2.22'}


async def test_a_late_reply_is_not_the_next_commands(agent, qga):
    """After a command timed out, guest_sync() makes sure that the next
    reply is the next command's: the late one is dropped by its id."""
    release = asyncio.Event()

    async def slow(arguments):
        await release.wait()
        return {'late': True}
    agent.on('guest-exec-status', slow)
    with pytest.raises(ExecuteTimeoutError):
        await qga.execute('guest-exec-status', {'pid': 1}, timeout=0.01)
    release.set()
    await qga.guest_sync(timeout=5)
    assert await qga.execute('guest-info') == {'version': '7.2.22'}


async def test_guest_sync_failures(agent, qga):
    agent.on('guest-sync-delimited', lambda arguments: 12345)
    with pytest.raises(ProtocolError, match='answered 12345'):
        await qga.guest_sync(timeout=5)
    agent.on('guest-sync-delimited', lambda arguments: NO_REPLY)
    with pytest.raises(ExecuteTimeoutError, match='guest-sync-delimited'):
        await qga.guest_sync(timeout=0.01)
