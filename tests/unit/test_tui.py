"""qmp-tui, headless: Textual's run_test() and Pilot, against the test
server."""

import asyncio
import json
import re
import logging
import os
import signal
import stat
import subprocess
import sys

import pytest

from qemu.qmp import handshake
from qemu.qmp.qmp_client import RECONNECTED
from qemu.qmp.qmp_tui import QMPTUI, Entry, EventFilter, history_path, main
from qemu.qmp.testing import CommandError, QMPTestServer, demo_server
from tests.helpers import tui_connected as connected
from tests.helpers import tui_said as said
from tests.helpers import tui_type as type_line
from tests.helpers import tui_until as until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

SCHEMA = [
    {'name': 'query-status', 'meta-type': 'command', 'arg-type': '0'},
    {'name': 'blockdev-del', 'meta-type': 'command', 'arg-type': '1'},
    {'name': '0', 'meta-type': 'object', 'members': []},
    {'name': '1', 'meta-type': 'object',
     'members': [{'name': 'node-name', 'type': 'str'},
                 {'name': 'force', 'type': 'bool'}]},
]


@pytest.fixture(autouse=True)
def private_history(tmp_path, monkeypatch):
    """Each test keeps its input history (and saved files) to itself."""
    monkeypatch.setenv('XDG_STATE_HOME', str(tmp_path / 'state'))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def qemu():
    """The demo server (a small QEMU), with a schema for completion."""
    async with demo_server() as server:
        server.on('query-qmp-schema', SCHEMA)
        server.on('blockdev-del', {})
        await server.start()
        yield server


async def test_command_reply_event_and_run_state(qemu):
    """The greeting shows; a command and its reply; stop gives STOP, and
    the status bar follows the VM's run state."""
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        assert any('QEMU 7.2.0' in e.text for e in app.entries)
        assert app.vm_state == 'running'
        await type_line(pilot, 'query-status')
        await until(app, said(app, 'reply', '"status": "running"'))
        await type_line(pilot, 'stop')
        await until(app, lambda: any(e.name == 'STOP' for e in app.entries))
        assert app.vm_state == 'paused'
        assert 'VM paused' in str(app.query_one('#status').render())
        await type_line(pilot, 'blockdev-del node-name=nope')
        await until(app, said(app, 'command', '"node-name": "nope"'))
        await type_line(pilot, 'frobnicate')
        await until(app, said(app, 'error', 'CommandNotFound'))
        await type_line(pilot, 'cont x="')
        await until(app, said(app, 'error', 'quote'))
        await pilot.press('ctrl+q')
    assert app.return_value == 0


async def test_completion(qemu):
    """Tab completes command names, then argument names from the
    schema; several candidates are listed."""
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        field = app.query_one('#input')
        await pilot.press(*'query-st', 'tab')
        assert field.value == 'query-status '
        field.value = ''
        await pilot.press(*'blockdev-del n', 'tab')
        assert field.value == 'blockdev-del node-name='
        await pilot.press(*'x ', 'tab')
        assert field.value == 'blockdev-del node-name=x force='
        field.value = ''
        await pilot.press(*'que', 'tab')
        assert field.value == 'query-'
        assert 'query-status' in str(app.query_one('#hint').render())


async def test_history_is_kept_between_sessions(qemu):
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        for line in ('query-status', 'stop', 'cont'):
            await type_line(pilot, line)
        await until(app, said(app, 'command', '"cont"'))
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        field = app.query_one('#input')
        await pilot.press('up')
        assert field.value == 'cont'
        await pilot.press('up', 'up')
        assert field.value == 'query-status'
        await pilot.press('down', 'down', 'down')
        assert field.value == ''


async def test_history_is_the_owners_only(qemu):
    """The history holds what was typed, secrets too (``object-add
    qom-type=secret ... data=...``): it is mode 0600 under umask 022, as
    qmp-shell's is, and a history an older qmp-tui left readable to all is
    made private as soon as the app starts."""
    def mode():
        return stat.S_IMODE(os.stat(history_path()).st_mode)

    umask = os.umask(0o022)
    try:
        app = QMPTUI(qemu.address)
        async with app.run_test() as pilot:
            await connected(app)
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply'))
        assert mode() == 0o600
        os.chmod(history_path(), 0o644)
        app = QMPTUI(qemu.address)
        async with app.run_test() as pilot:
            await connected(app)
            assert mode() == 0o600
            os.chmod(history_path(), 0o644)
            await type_line(pilot, 'query-status')
            await until(app, lambda: mode() == 0o600)
    finally:
        os.umask(umask)


async def test_event_filter(qemu):
    """Ctrl+F: the events typed are the ones shown (or, with -, hidden);
    the transcript keeps them all."""
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        for line in ('stop', 'cont'):
            await type_line(pilot, line)
        await until(app, lambda: any(e.name == 'RESUME'
                                     for e in app.entries))
        await pilot.press('ctrl+f', *'-STOP')
        names = [e.name for e in app.shown_entries() if e.kind == 'event']
        assert names == ['RESUME']
        await pilot.press('escape')
        assert app.query_one('#input').has_focus
        assert 'event   STOP' in app.transcript()
    assert EventFilter('JOB_*').shows('JOB_STATUS_CHANGE')
    assert not EventFilter('JOB_*').shows('STOP')


async def test_save_and_log(qemu, tmp_path):
    """Ctrl+S saves the transcript; -l appends JSON lines."""
    log = tmp_path / 'qmp.log'
    app = QMPTUI(qemu.address, logfile=str(log))
    async with app.run_test() as pilot:
        await connected(app)
        await type_line(pilot, 'stop')
        await until(app, lambda: any(e.name == 'STOP' for e in app.entries))
        await pilot.press('ctrl+s')
        await until(app, lambda: 'saved' in str(
            app.query_one('#hint').render()))
    saved = list(tmp_path.glob('qmp-tui-*.txt'))
    assert len(saved) == 1 and 'event   STOP' in saved[0].read_text()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0] == {'command': {'execute': 'stop'}}
    assert {'reply': {'return': {}}} in records
    assert any(r.get('event', {}).get('event') == 'STOP' for r in records)


async def test_waits_for_qemu_and_survives_a_restart(tmp_path):
    """Started before the socket exists, it waits; when QEMU goes away
    and comes back on the same socket, it reconnects and says so."""
    address = str(tmp_path / 'qmp.sock')
    app = QMPTUI(address)
    async with app.run_test() as pilot:
        await until(app, lambda: app.connection_state == 'connecting')
        async with demo_server() as first:
            await first.start(address)
            await connected(app)
        # The server is gone: the app shows it, and keeps trying.
        await until(app, lambda: app.connection_state == 'reconnecting')
        await until(app, said(app, 'info', 'connection was lost'))
        async with demo_server() as second:
            await second.start(address)
            await until(app, said(app, 'info', 'reconnected after'))
            await until(app, lambda: app.connection_state == 'connected')
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply', 'running'))
            await pilot.press('ctrl+q')
    assert not any(e.text == RECONNECTED for e in app.entries)


# What QEMU's HMP says to help and info (abridged).
HMP_TEXTS = {
    'help': 'info [subcommand] -- show various information\r\n'
            'quit|q  -- quit the emulator\r\n',
    'info': 'info block  -- show the block devices\r\n'
            'info status  -- show the current VM status\r\n',
}


async def test_listen_hmp_and_guest_agent(tmp_path):
    """--listen waits for QEMU to connect; -H sends HMP; -N talks to the
    guest agent, completing from guest-info."""
    address = str(tmp_path / 'listen.sock')
    app = QMPTUI(address, listen=True, hmp=True)
    async with demo_server() as qemu:
        qemu.on('human-monitor-command', lambda args: HMP_TEXTS.get(
            args['command-line'], f"you said {args['command-line']}\r\n"))
        async with app.run_test() as pilot:
            await until(app, lambda: app.connection_state
                        == 'waiting for QEMU')
            await qemu.connect_to(address)
            await connected(app)
            await type_line(pilot, 'info status')
            await until(app, said(app, 'reply', 'you said info status'))
            # Completion: HMP's own commands, word by word.
            field = app.query_one('#input')
            await pilot.press('q', 'tab')
            assert field.value == 'quit '
            field.value = ''
            await pilot.press(*'info s', 'tab')
            assert field.value == 'info status '
            field.value = ''
            await pilot.press(*'in', 'tab')
            assert field.value == 'info '

    async with QMPTestServer(greeting=None) as agent:
        agent.on('guest-info', {'version': '7.2', 'supported_commands': [
            {'name': 'guest-ping', 'enabled': True}]})
        agent.on('guest-ping', {})
        app = QMPTUI(await agent.start(), negotiate=False)
        async with app.run_test() as pilot:
            await connected(app)
            await pilot.press(*'guest-p', 'tab', 'enter')
            await until(app, said(app, 'reply', '{}'))


def test_command_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['--version'])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith('qmp-tui (qemu.qmp) ')
    with pytest.raises(SystemExit) as exit_:
        main(['host:notaport'])
    assert exit_.value.code == 2


async def test_a_server_that_cannot_list_its_commands():
    """Completion is a convenience: a server that refuses query-commands
    or query-qmp-schema gets a note in the transcript, and the session
    goes on."""
    async with QMPTestServer() as server:
        server.on('query-commands', CommandError('GenericError', 'no'))
        server.on('query-status', {'status': 'running'})
        app = QMPTUI(await server.start())
        async with app.run_test() as pilot:
            await until(app, said(app, 'info', 'commands will not complete'))
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply', 'running'))
    async with QMPTestServer() as server:
        server.on('query-commands', [{'name': 'query-qmp-schema'}])
        server.on('query-status', ['not', 'a', 'status'])
        server.on('query-qmp-schema', 'not a schema')
        app = QMPTUI(await server.start())
        async with app.run_test():
            await until(app, said(app, 'info',
                                  'arguments will not complete'))
            assert app.commands == ['query-qmp-schema']
            assert said(app, 'info', "the VM's state is unknown")()
            assert app.vm_state == '?'


def test_the_documentation_screenshot(tmp_path):
    """docs/tui_screenshot.py (make tui-screenshot) draws the session."""
    output = tmp_path / 'shot.svg'
    result = subprocess.run(
        [sys.executable, os.path.join('docs', 'tui_screenshot.py'),
         str(output)], cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stderr
    svg = output.read_text()
    assert svg.startswith('<svg') and 'VM\xa0paused' in svg.replace(
        '&#160;', '\xa0')


def run_python(code, *args):
    return subprocess.run([sys.executable, '-c', code, *args],
                          capture_output=True, text=True, timeout=60)


def test_the_library_never_imports_textual():
    """Importing qemu.qmp (and everything but qmp_tui) leaves the TUI
    toolkit alone: the core has no runtime dependencies."""
    result = run_python(
        'import sys, qemu.qmp, qemu.qmp.legacy, qemu.qmp.qmp_shell; '
        'print(sorted(m for m in sys.modules '
        'if m.split(".")[0] in ("textual", "rich")))')
    assert result.returncode == 0, result.stderr
    assert result.stdout == '[]\n'


def test_without_textual_one_line_says_what_to_install():
    """The qmp-tui entry point, without the tui extra: a line, status 2,
    no traceback."""
    result = run_python(
        'import sys; sys.modules["textual"] = None; '
        'from qemu.qmp._shell_cli import qmp_tui; sys.exit(qmp_tui())',
        'qmp.sock')
    assert result.returncode == 2
    assert result.stderr == ("qmp-tui needs Textual (the tui extra), "
                             "which is not installed: pip install "
                             "textual\n")


def test_python_dash_m_without_textual(tmp_path):
    """``python3 -m qemu.qmp.qmp_tui`` without Textual: the one line and
    status 2 the docs promise, no traceback; --help still works."""
    shim = tmp_path / 'shim' / 'textual'
    shim.mkdir(parents=True)
    (shim / '__init__.py').write_text(
        "raise ImportError('No module named textual (blocked by a test)')\n")
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(shim.parent), ROOT]))
    command = [sys.executable, '-m', 'qemu.qmp.qmp_tui']
    result = subprocess.run(command + ['qmp.sock'], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("qmp-tui needs Textual (the tui extra), "
                             "which is not installed: pip install "
                             "textual\n")
    result = subprocess.run(command + ['--help'], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage: qmp-tui ')


def test_the_two_log_options_say_which_is_which(capsys):
    """-l/--logfile (the transcript) and --log-file (the library's log)
    differ by a hyphen: --help tells them apart in its first words."""
    with pytest.raises(SystemExit):
        main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    # (Python 3.13's argparse names the metavar once: -l, --logfile FILE.)
    assert re.search(r'-l( FILE)?, --logfile FILE the transcript:', text)
    assert "--log-file FILE the library's debug log" in text


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, '-m', 'qemu.qmp.qmp_tui', '--version'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('qmp-tui (qemu.qmp) ')


@pytest.fixture
def restored_loggers():
    """main() points the library's loggers at a file: put them back."""
    saved = []
    for name in ('qemu.qmp', 'asyncio'):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level,
                      logger.propagate))
    yield
    for logger, handlers, level, propagate in saved:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def thread_loop():
    """A current event loop for this thread, closed afterwards.  main()
    builds the app outside any loop, as the qmp-tui program does; there,
    on Python 3.9, Textual's widgets take the thread's loop, which the
    program's first ``get_event_loop()`` makes, but the tests unset."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def test_the_reference_command_line(monkeypatch, tmp_path, restored_loggers,
                                    thread_loop):
    """The reference qmp-tui's options work: --num-retries/--retry-delay
    bound (re)connecting, --log-file/--log-level take the library's log,
    --asyncio-debug."""
    apps = []
    monkeypatch.setattr(QMPTUI, 'run', lambda self: apps.append(self))
    log = tmp_path / 'tui.log'
    assert main(['--num-retries', '3', '--retry-delay', '0.5',
                 '--log-file', str(log), '--log-level', 'debug',
                 '--asyncio-debug', 'qmp.sock']) == 0
    assert apps[-1].retry == 1.5 and apps[-1].qmp.auto_reconnect == 1.5
    assert apps[-1].asyncio_debug
    logging.getLogger('qemu.qmp.qmp_client.x').debug('said %s', 'this')
    assert log.read_text().endswith('DEBUG qemu.qmp.qmp_client.x: '
                                    'said this\n')
    assert main(['qmp.sock']) == 0
    assert apps[-1].retry == float('inf') and not apps[-1].asyncio_debug


async def test_gives_up_when_told(tmp_path):
    """With a bound, a socket that never appears ends in an error, and the
    app stays up saying so."""
    app = QMPTUI(str(tmp_path / 'never.sock'), retry=0.2)
    async with app.run_test() as pilot:
        await until(app, said(app, 'error', 'could not connect'))
        assert app.connection_state == 'disconnected'
        await pilot.press('ctrl+q')


async def test_not_connected_says_so_and_ctrl_r_reconnects(tmp_path):
    """After connecting gave up (or a session ended for good), a command
    is not sent and the transcript says "not connected" and how to
    reconnect, not StateError; Ctrl+R connects again, and while the app
    is connected or connecting it only says so."""
    address = str(tmp_path / 'later.sock')
    app = QMPTUI(address, retry=0.2)
    async with app.run_test() as pilot:
        await until(app, said(app, 'error', 'could not connect'))
        await type_line(pilot, 'query-status')
        await until(app, said(app, 'error', 'not connected'))
        assert said(app, 'error', 'Ctrl+R')()
        assert not said(app, 'command')()
        assert not any('StateError' in e.text for e in app.entries)
        async with QMPTestServer() as server:
            server.on('query-status', {'status': 'running'})
            await server.start(address)
            await pilot.press('ctrl+r')
            await until(app, lambda: app.connection_state == 'connected')
            await type_line(pilot, 'query-status')
            await until(app, said(app, 'reply', 'running'))
            await pilot.press('ctrl+r')
            assert 'already connected' in str(
                app.query_one('#hint').render())
        # The server is gone, and re-connecting gives up again.
        await until(app, said(app, 'info', 'the session has ended'))
        entries = len(app.entries)
        await type_line(pilot, 'query-status')
        await until(app, lambda: len(app.entries) > entries)
        assert app.entries[-1].kind == 'error'
        assert 'not connected' in app.entries[-1].text
        await pilot.press('ctrl+q')


# Runs the app headless in a process of its own, sends the process a
# signal once connected, and prints the app's exit status: a signal the
# app does not handle would end the test run, not just fail the test.
_SIGNALLED = '''
import asyncio, os, signal, sys
from qemu.qmp.qmp_tui import QMPTUI
from qemu.qmp.testing import demo_server

async def main():
    async with demo_server() as server:
        app = QMPTUI(await server.start())
        async with app.run_test():
            await asyncio.wait_for(app.wait_until(
                lambda: app.connection_state == 'connected'), 30)
            os.kill(os.getpid(), int(sys.argv[1]))
            await asyncio.wait_for(app.wait_until(
                lambda: app.return_value is not None), 30)
        print(app.return_value, app.qmp.runstate.name)

asyncio.run(main())
'''


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM,
                                    signal.SIGHUP])
def test_a_signal_ends_the_app_cleanly(signum):
    """SIGINT, SIGTERM, SIGHUP: the app ends as by Ctrl+Q (the terminal
    is given back, the session closed), with status 128 + the signal."""
    result = run_python(_SIGNALLED, str(int(signum)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(128 + signum), 'IDLE']


async def test_ctrl_c_quits(qemu):
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        await pilot.press('ctrl+c')
    assert app.return_value == 0


async def test_a_huge_reply_and_a_long_session(qemu):
    """A reply of thousands of lines shows its start and says how much
    more there is (the saved transcript has it all); the transcript keeps
    the latest entries, not all of a session's."""
    qemu.on('query-huge', lambda args: list(range(5000)))
    app = QMPTUI(qemu.address)
    async with app.run_test() as pilot:
        await connected(app)
        await type_line(pilot, 'query-huge')
        await until(app, said(app, 'reply', '4999'))
        shown = app.entries[-1].rich().plain
        assert Entry.SHOWN_LINES == 1000
        assert len(shown.splitlines()) == Entry.SHOWN_LINES + 1
        assert shown.endswith('4,002 more lines: Ctrl+S saves them')
        assert '  4999\n]' in app.transcript()
        for number in range(QMPTUI.ENTRIES_KEPT):
            app.add('info', f"note {number}")
        assert len(app.entries) == QMPTUI.ENTRIES_KEPT
        assert app.entries[0].text == 'note 0'


def test_help_and_version_need_no_textual():
    result = run_python(
        'import sys; sys.modules["textual"] = None; '
        'from qemu.qmp._shell_cli import qmp_tui; sys.exit(qmp_tui())',
        '--help')
    assert result.returncode == 0, result.stderr
    assert '--num-retries N' in result.stdout


def test_the_apps_keys_come_before_the_inputs():
    """Textual's Input has bound Ctrl+F (and other control keys) itself
    in some versions; with the focus on the input line, the app's keys
    must still be the app's (Textual 1.0 swallowed Ctrl+F)."""
    keys = [binding for binding in QMPTUI.BINDINGS
            if binding.key.startswith('ctrl+')]
    assert {b.key for b in keys} == {'ctrl+q', 'ctrl+c', 'ctrl+s', 'ctrl+y',
                                     'ctrl+f', 'ctrl+r'}
    assert all(binding.priority for binding in keys)


def test_history_path(monkeypatch, tmp_path):
    """qmp-tui keeps its history beside qmp-shell's, under its own name."""
    monkeypatch.setenv('XDG_STATE_HOME', str(tmp_path))
    assert history_path() == str(tmp_path / 'qmp-tui' / 'history')
    monkeypatch.delenv('XDG_STATE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path))
    assert history_path() == str(tmp_path / '.qmp-tui_history')


@pytest.mark.parametrize('where', ['missing', 'agent'])
async def test_a_long_connect_says_what_may_be_wrong(where, tmp_path,
                                                     monkeypatch):
    """Still connecting after a few seconds, the app says why it may be:
    no socket at that path yet (a typo, or QEMU not started), or a socket
    that does not greet (the guest agent's: -N)."""
    monkeypatch.setattr(handshake, 'GREETING_PATIENCE', 0.05)
    async with QMPTestServer(greeting=None) as agent:
        address = str(tmp_path / 'nosuch.sock') if where == 'missing' \
            else await agent.start()
        app = QMPTUI(address)
        async with app.run_test() as pilot:
            expected = 'no socket there yet' if where == 'missing' \
                else 'no greeting yet'
            await until(app, said(app, 'info', expected))
            assert app.connection_state == 'connecting'
            await pilot.press('ctrl+q')
