"""QMPClient against a real qemu-ga (no greeting, no negotiation)."""

import asyncio

import pytest

from qemu.qmp import ExecuteError, QMPClient

pytestmark = pytest.mark.integration


@pytest.fixture
async def qga(guest_agent):
    client = QMPClient('qga')
    client.await_greeting = False
    client.negotiate = False
    await client.connect(guest_agent.address)
    yield client
    await client.disconnect()


async def test_guest_ping(qga):
    """guest-ping answers an empty object."""
    assert qga.greeting is None
    assert await qga.execute('guest-ping') == {}


async def test_guest_info(qga):
    """guest-info lists the agent's commands."""
    info = await qga.execute('guest-info')
    names = {cmd['name'] for cmd in info['supported_commands']}
    assert {'guest-ping', 'guest-sync'} <= names


async def test_guest_sync(qga):
    """guest-sync echoes its id; guest-sync-delimited too, after 0xFF."""
    assert await qga.execute('guest-sync', {'id': 123456}) == 123456
    assert await qga.execute('guest-sync-delimited', {'id': 42}) == 42


async def test_guest_error(qga):
    """An unknown command is an ExecuteError."""
    with pytest.raises(ExecuteError) as info:
        await qga.execute('guest-no-such-thing')
    assert info.value.error_class == 'CommandNotFound'


async def test_guest_sync_after_a_timeout(qga):
    """Against real qemu-ga: a command that timed out, then guest_sync(),
    and the next command gets its own reply, not the late one."""
    await qga.guest_sync(timeout=30)
    with pytest.raises(asyncio.TimeoutError):
        await qga.execute('guest-info', timeout=0)
    await qga.guest_sync(timeout=30)
    assert await qga.execute('guest-ping', timeout=30) == {}
    info = await qga.execute('guest-info', timeout=30)
    assert 'version' in info
