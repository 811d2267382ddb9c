"""qmp-shell: the input syntax, the options, pipes, a pty, one-shot mode."""

import io
import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest

from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_shell import (
    CommandParser,
    QMPShell,
    QMPShellError,
    history_path,
    main,
)


# -- the input syntax ------------------------------------------------------

@pytest.mark.parametrize('line, command', [
    ('query-status', {'execute': 'query-status'}),
    ('  query-status  ', {'execute': 'query-status'}),
    ('cmd n=1 f=1.5 t=true f2=false z=null',
     {'execute': 'cmd', 'arguments': {'n': 1, 'f': 1.5, 't': True,
                                      'f2': False, 'z': None}}),
    ('cmd s=abc q="a b" sq=\'x y\' e=""',
     {'execute': 'cmd', 'arguments': {'s': 'abc', 'q': 'a b',
                                      'sq': 'x y', 'e': ''}}),
    ('cmd l=[1,"a",true] o={"k":[]}',
     {'execute': 'cmd', 'arguments': {'l': [1, 'a', True],
                                      'o': {'k': []}}}),
    ('cmd a.b=1 a.c.d=x',
     {'execute': 'cmd', 'arguments': {'a': {'b': 1, 'c': {'d': 'x'}}}}),
    ('cmd path=/tmp/a=b', {'execute': 'cmd',
                           'arguments': {'path': '/tmp/a=b'}}),
    ('{"execute": "x", "id": 5}', {'execute': 'x', 'id': 5}),
    ('transaction( a x=1 )', {'execute': 'transaction', 'arguments': {
        'actions': [{'type': 'a', 'data': {'x': 1}}]}}),
])
def test_syntax(line, command):
    """Each input form becomes the QMP command shown."""
    assert CommandParser().parse(line) == command


def test_empty_line():
    """An empty line is no command."""
    assert CommandParser().parse('   ') is None


def test_multi_line_transaction():
    """transaction( ... ) across lines groups the actions."""
    parser = CommandParser()
    assert parser.parse('transaction(') is None
    assert parser.in_transaction
    assert parser.parse('block-dirty-bitmap-add node=n0 name=b0') is None
    assert parser.parse('block-dirty-bitmap-clear node=n0 name=b0') is None
    assert parser.parse(')') == {'execute': 'transaction', 'arguments': {
        'actions': [
            {'type': 'block-dirty-bitmap-add',
             'data': {'node': 'n0', 'name': 'b0'}},
            {'type': 'block-dirty-bitmap-clear',
             'data': {'node': 'n0', 'name': 'b0'}}]}}
    assert not parser.in_transaction


@pytest.mark.parametrize('line, message', [
    ('cmd novalue', 'expected key=value'),
    ('cmd =1', 'expected key=value'),
    ('cmd a=1 a.b=2', "'a' is already a value"),
    ('cmd a=1 a=2', "'a' is given twice"),
    ('cmd a..b=1', 'empty key component'),
    ('cmd l=[1,', 'invalid JSON value'),
    ('cmd o={"a":}', 'invalid JSON value'),
    ('{"execute": ', 'invalid JSON'),
    ('[1, 2]', "expected key=value"),
    (')', "')' outside a transaction"),
])
def test_bad_syntax(line, message):
    """Bad lines raise QMPShellError with a clear message."""
    with pytest.raises(QMPShellError, match=re.escape(message)):
        CommandParser().parse(line)


def test_raw_json_must_be_object():
    """Raw JSON that is not an object is refused."""
    with pytest.raises(QMPShellError, match='must be an object'):
        CommandParser()._raw_json('[1]')


def test_nested_transaction_refused():
    """transaction( inside a transaction is an error."""
    parser = CommandParser()
    parser.parse('transaction(')
    with pytest.raises(QMPShellError):
        parser.parse('transaction(')


# -- the shell over the fake server -----------------------------------------

@pytest.fixture
def address(fake):
    fake.server.on('human-monitor-command', lambda args: (
        'VM status: running\n' if args['command-line'] == 'info status'
        else 'help\ninfo\nquit|q  -- quit\n'))
    fake.server.on('query-commands', [{'name': 'query-status'},
                                      {'name': 'query-version'},
                                      {'name': 'stop'}])
    return fake.start()


@pytest.fixture
def shell_out(address):
    monitor = QEMUMonitorProtocol(address)
    monitor.connect()
    out = io.StringIO()
    yield monitor, out
    monitor.close()


def test_run_line_prints_return(shell_out):
    """A command prints its return value as JSON."""
    monitor, out = shell_out
    shell = QMPShell(monitor, out=out)
    assert shell.run_line('query-status')
    assert json.loads(out.getvalue()) == {'status': 'running'}


def test_error_reply_is_printed_not_fatal(shell_out):
    """An error prints class and description; the shell goes on."""
    monitor, out = shell_out
    shell = QMPShell(monitor, out=out)
    assert not shell.run_line('fail')
    assert not shell.run_line('bad syntax')
    assert shell.run_line('query-status')
    lines = out.getvalue().splitlines()
    assert lines[0] == 'Error: GenericError: it failed'
    assert lines[1].startswith('Error: expected key=value')


def test_verbose_pretty_and_json(shell_out):
    """-v echoes the command, -p indents, --json prints compact lines."""
    monitor, out = shell_out
    QMPShell(monitor, verbose=True, out=out).run_line('echo a=1')
    assert out.getvalue().splitlines()[0] == \
        '{"execute": "echo", "arguments": {"a": 1}}'
    out.seek(0)
    out.truncate()
    QMPShell(monitor, pretty=True, out=out).run_line('echo a=1')
    assert '\n    "return": {\n' in out.getvalue()
    out.seek(0)
    out.truncate()
    QMPShell(monitor, json_output=True, out=out).run_line('echo a=1')
    assert out.getvalue() == '{"return":{"a":1}}\n'


def test_logfile(shell_out, fake, tmp_path):
    """-l writes commands, replies and events as JSON lines."""
    monitor, out = shell_out
    log = tmp_path / 'log'
    with open(log, 'w') as logfile:
        shell = QMPShell(monitor, logfile=logfile, out=out)
        shell.run_line('echo a=1')
        fake.emit('STOP')
        monitor.cmd('query-status')
        shell.print_events()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0] == {'command': {'execute': 'echo',
                                      'arguments': {'a': 1}}}
    assert entries[1] == {'reply': {'return': {'a': 1}}}
    assert entries[2]['event']['event'] == 'STOP'


def test_hmp_mode(shell_out):
    """-H sends lines through human-monitor-command, prints the text."""
    monitor, out = shell_out
    shell = QMPShell(monitor, hmp=True, out=out)
    assert shell.run_line('info status')
    assert out.getvalue() == 'VM status: running\n'


def test_completion(shell_out):
    """Completion offers command names from query-commands, or HMP help."""
    monitor, out = shell_out
    shell = QMPShell(monitor, out=out)
    shell.load_completions()
    assert [shell.complete('query-', n) for n in range(3)] == \
        ['query-status', 'query-version', None]
    hmp = QMPShell(monitor, hmp=True, out=out)
    hmp.load_completions()
    assert hmp.completions == ['help', 'info', 'quit']


def test_completion_survives_failure(shell_out, fake):
    """If the server cannot list commands, completion is just empty."""
    monitor, out = shell_out
    del fake.server.handlers['query-commands']
    shell = QMPShell(monitor, out=out)
    shell.load_completions()
    assert shell.completions == []


def test_one_shot(address, capsys):
    """-c prints the reply and exits 0, or 1 on an error reply."""
    path = address
    assert main([path, '-c', 'query-status']) == 0
    assert json.loads(capsys.readouterr().out) == {'status': 'running'}
    assert main([path, '-c', 'fail']) == 1
    assert 'it failed' in capsys.readouterr().out
    assert main([path, '--json', '-c', 'echo x=[1]']) == 0
    assert capsys.readouterr().out == '{"return":{"x":[1]}}\n'
    assert main([path, '-c', 'transaction(']) == 1


def test_bad_address_and_port(capsys, tmp_path):
    """Connection failures and bad ports exit 2 with a message."""
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / 'nothing'), '-c', 'query-status'])
    assert info.value.code == 2
    assert 'could not connect' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(['localhost:http', '-c', 'x'])
    assert "Bad port" in capsys.readouterr().err


def run_shell_process(args, stdin, env=None):
    return subprocess.run(
        [sys.executable, '-m', 'qemu.qmp.qmp_shell', *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env=env)


def test_piped_input(address, fake):
    """From a pipe: no prompts, events printed, status 1 if a line failed."""
    async def stop(args):
        await fake.server.emit_event('STOP')
        return {}
    fake.server.on('stop', stop)
    result = run_shell_process(
        [address], 'stop\nquery-status\n\nfail\necho a.b=2\n')
    assert '(QEMU)' not in result.stdout
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {}
    assert json.loads(lines[1])['event'] == 'STOP'
    assert json.loads(lines[2]) == {'status': 'running'}
    assert lines[3] == 'Error: GenericError: it failed'
    assert json.loads(lines[4]) == {'a': {'b': 2}}
    assert result.returncode == 1


def test_skip_negotiation(fake):
    """-N works against a greeting-less (guest agent) server."""
    from tests.conftest import ThreadedServer
    agent = ThreadedServer(greeting=None)
    agent.server.on('guest-ping', {})
    try:
        result = run_shell_process(['-N', agent.start()], 'guest-ping\n')
        assert result.stdout == '{}\n' and result.returncode == 0
    finally:
        agent.close()


def pty_session(args, keys, env):
    """Run the shell on a pseudo-terminal, type ``keys``, return output."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execve(sys.executable,
                  [sys.executable, '-m', 'qemu.qmp.qmp_shell', *args], env)
    output = b''
    try:
        for chunk in keys:
            while b'(QEMU) ' not in output.rsplit(b'\n', 1)[-1]:
                ready, _, _ = select.select([fd], [], [], 30)
                assert ready, f"no prompt; output so far: {output!r}"
                output += os.read(fd, 65536)
            os.write(fd, chunk)
            output = output + b'\n' if chunk != b'\x04' else output
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            output += data
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return output.decode(errors='replace'), os.waitstatus_to_exitcode(status)


def test_interactive_history_and_eof(address, tmp_path):
    """On a terminal: prompts, Ctrl-D exits 0, history is kept."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session([address], [b'query-status\r', b'\x04'], env)
    assert code == 0
    assert 'Welcome to the QMP shell' in output
    assert '"status": "running"' in output
    history = tmp_path / 'qmp-shell' / 'history'
    assert 'query-status' in history.read_text()


def test_history_path(monkeypatch, tmp_path):
    """History lives in $XDG_STATE_HOME, or the home directory."""
    monkeypatch.setenv('XDG_STATE_HOME', str(tmp_path))
    assert history_path() == str(tmp_path / 'qmp-shell' / 'history')
    monkeypatch.delenv('XDG_STATE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path))
    assert history_path() == str(tmp_path / '.qmp-shell_history')


def test_demo_without_qemu(tmp_path):
    """--demo works on a machine without QEMU (the test server)."""
    env = dict(os.environ, PATH=str(tmp_path))
    result = run_shell_process(['--demo'], 'query-status\nstop\n'
                               'query-status\n', env=env)
    assert result.returncode == 0, result.stderr
    assert 'built-in QMP test server' in result.stdout
    assert '"paused"' in result.stdout
    assert '"event": "STOP"' in result.stdout
