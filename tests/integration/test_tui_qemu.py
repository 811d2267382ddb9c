"""qmp-tui, headless, against real QEMU and qemu-ga: what a user sees."""

import pytest

from qemu.qmp.qmp_tui import QMPTUI
from tests.helpers import require_binary
from tests.helpers import tui_connected as connected
from tests.helpers import tui_said as said
from tests.helpers import tui_type as type_line
from tests.helpers import tui_until as until

from .conftest import QEMU_BASE, running

pytestmark = pytest.mark.timeout(120)


def qemu_argv(binary, path, pidfile):
    return [binary, *QEMU_BASE, '-daemonize', '-pidfile', str(pidfile),
            '-qmp', f'unix:{path},server=on,wait=off']


async def test_a_session_with_qemu_and_a_restart(tmp_path):
    """Started before QEMU, it waits; then the greeting, query-status,
    stop and its STOP event, completion from QEMU's own commands and
    schema; QEMU killed shows the lost connection, and a new QEMU on the
    same socket is reconnected to."""
    binary = require_binary('qemu-system-x86_64')
    path = tmp_path / 'qmp.sock'
    app = QMPTUI(str(path))
    async with app.run_test() as pilot:
        await until(app, lambda: app.connection_state == 'connecting')
        async with running(qemu_argv(binary, path, tmp_path / 'a.pid'),
                           str(path), tmp_path / 'a.pid') as first:
            await connected(app)
            assert any(e.kind == 'info' and 'connected: QEMU 7.' in e.text
                       for e in app.entries)
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply', '"status": "running"'))
            await type_line(pilot, 'stop')
            await until(app, lambda: any(e.name == 'STOP'
                                         for e in app.entries))
            assert 'VM paused' in str(app.query_one('#status').render())

            field = app.query_one('#input')
            # QEMU 7.2 also has query-stats and query-stats-schemas.
            await pilot.press(*'query-st', 'tab')
            assert field.value == 'query-stat'
            assert 'query-stats-schemas' in str(
                app.query_one('#hint').render())
            await pilot.press('u', 'tab')
            assert field.value == 'query-status '
            field.value = ''
            await pilot.press(*'blockdev-del node', 'tab')
            assert field.value == 'blockdev-del node-name='
            field.value = ''

            first.kill()
            await until(app, said(app, 'info', 'connection was lost'))
            await until(app, lambda: app.connection_state == 'reconnecting')
            assert 'VM' not in str(app.query_one('#status').render())
        async with running(qemu_argv(binary, path, tmp_path / 'b.pid'),
                           str(path), tmp_path / 'b.pid'):
            await until(app, said(app, 'info', 'reconnected after'))
            await until(app, lambda: 'VM running' in str(
                app.query_one('#status').render()))
            await type_line(pilot, '{"execute": "query-name"}')
            await until(app, said(app, 'reply', '{}'))
            # QEMU quitting: its SHUTDOWN event, then the lost connection.
            await type_line(pilot, 'quit')
            await until(app, lambda: any(e.name == 'SHUTDOWN'
                                         for e in app.entries))
            await until(app, lambda: app.connection_state == 'reconnecting')
            assert [e.text for e in app.entries].count(
                'the connection was lost; reconnecting') == 2
            await pilot.press('ctrl+q')
    assert app.return_value == 0


async def test_hmp_mode(qemu):
    """-H: lines go to QEMU's human monitor, and Tab completes HMP's
    commands, not QMP's."""
    app = QMPTUI(qemu.address, hmp=True)
    async with app.run_test() as pilot:
        await connected(app)
        await type_line(pilot, 'info status')
        await until(app, said(app, 'reply', 'VM status: running'))
        field = app.query_one('#input')
        await pilot.press(*'info statu', 'tab')
        assert field.value == 'info status '
        assert 'query-status' not in app.completions('query-st')


async def test_guest_agent(guest_agent):
    """-N against qemu-ga: no greeting, completion from guest-info."""
    app = QMPTUI(guest_agent.address, negotiate=False)
    async with app.run_test() as pilot:
        await connected(app)
        assert 'guest-ping' in app.commands
        field = app.query_one('#input')
        await pilot.press(*'guest-get-ti', 'tab')
        assert field.value.startswith('guest-get-time')
        field.value = ''
        await type_line(pilot, 'guest-ping')
        await until(app, said(app, 'reply', '{}'))


async def test_listen_for_qemu(tmp_path):
    """--listen: qmp-tui waits at the address, and a QEMU started with
    -qmp unix:PATH (a client) connects to it."""
    binary = require_binary('qemu-system-x86_64')
    path, pidfile = tmp_path / 'listen.sock', tmp_path / 'qemu.pid'
    app = QMPTUI(str(path), listen=True)
    async with app.run_test() as pilot:
        await until(app, lambda: app.connection_state == 'waiting for QEMU')
        async with running([binary, *QEMU_BASE, '-daemonize', '-pidfile',
                            str(pidfile), '-qmp', f'unix:{path}'],
                           str(path), pidfile):
            await connected(app)
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply', '"status": "running"'))
