"""qmp-shell: the input syntax, the options, pipes, a pty, one-shot mode."""

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from qemu.qmp import StateError, _shell_cli
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_shell import (
    CommandParser,
    HMPShell,
    QMPShell,
    QMPShellError,
    common_parser,
    die,
    history_path,
    main,
    nearest_names,
)
from qemu.qmp.testing import NO_REPLY, QUIT, CommandError
from tests.helpers import (
    FAKE_QEMU,
    ThreadedServer,
    make_demo_env,
    pty_session,
    run_shell,
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


def test_nested_transaction_refused():
    """transaction( inside a transaction is an error."""
    parser = CommandParser()
    parser.parse('transaction(')
    with pytest.raises(QMPShellError):
        parser.parse('transaction(')


# -- the shell over the fake server -----------------------------------------

#: What QEMU 7.2's monitor prints for its own errors (it has no error
#: replies): the line, and its output.
HMP_ERRORS = {
    'foo': "unknown command: 'foo'\r\n",
    'info foo': "unknown command: 'info foo'\r\n",
    'device_add nosuch':
        "Error: 'nosuch' is not a valid device model name\r\n",
    'stop x': 'stop|s: extraneous characters at the end of line\r\n'
              'Try "help stop" for more information\r\n',
}


@pytest.fixture
def address(fake):
    help_text = 'help|?  -- show help\ninfo  -- show the system state\n' \
        'quit|q  -- quit the emulator\n[and more]\n'
    info_text = 'info status  -- show VM status\ninfo version  -- show ' \
        'the version\n'

    def hmp(args):
        line = args['command-line']
        if 'cpu-index' in args and args['cpu-index'] != 0:
            raise CommandError('GenericError', 'Invalid CPU index')
        return {'info status': 'VM status: running\n', 'help': help_text,
                'info': info_text, **HMP_ERRORS}.get(line, f'ran {line}\n')
    fake.server.on('human-monitor-command', hmp)
    fake.server.on('query-commands', [{'name': 'query-status'},
                                      {'name': 'query-version'},
                                      {'name': 'stop'}])
    return fake.start()


@pytest.fixture
def shells(address):
    """Make connected shells printing to one StringIO; closed after."""
    out = io.StringIO()
    made = []

    def make(shell_class=QMPShell, **kwargs):
        shell = shell_class(address, out=out, **kwargs)
        shell.connect()
        made.append(shell)
        return shell
    make.out = out
    yield make
    for shell in made:
        shell.close()


def test_shell_is_a_monitor(address):
    """QMPShell and HMPShell are QEMUMonitorProtocols, constructed as in
    the reference library (address, pretty, verbose, server, logfile)."""
    for shell_class in (QMPShell, HMPShell):
        assert issubclass(shell_class, QEMUMonitorProtocol)
        with shell_class(address, True, True, False, None) as shell:
            assert shell.connect() is None
            assert shell.pretty and shell.verbose
            assert shell.cmd('query-status') == {'status': 'running'}
            assert shell.cmd_raw('query-status')['return']


def test_run_line_prints_return(shells):
    """A command prints its return value as JSON."""
    shell = shells()
    assert shell.run_line('query-status')
    assert json.loads(shells.out.getvalue()) == {'status': 'running'}


def test_error_reply_is_printed_not_fatal(shells):
    """An error prints class and description; the shell goes on."""
    shell = shells()
    assert not shell.run_line('fail')
    assert not shell.run_line('bad syntax')
    assert shell.run_line('query-status')
    lines = shells.out.getvalue().splitlines()
    assert lines[0] == 'Error: GenericError: it failed'
    assert lines[1].startswith('Error: expected key=value')


def test_verbose_pretty_and_json(shells):
    """Each option does one thing: -v shows the traffic (the command sent,
    the whole reply received), -p only indents, --json prints whole replies
    as compact lines."""
    out = shells.out

    def output_of(shell_class=QMPShell, line='echo a=1', **options):
        out.seek(0)
        out.truncate()
        shell = shells(shell_class, **options)
        shell.run_line(line)
        shell.close()  # the server takes one client at a time, as QEMU
        return out.getvalue()

    command = {'execute': 'echo', 'arguments': {'a': 1}}
    assert output_of() == '{"a": 1}\n'
    assert output_of(pretty=True) == json.dumps({'a': 1}, indent=4) + '\n'
    assert output_of(verbose=True) == \
        json.dumps(command) + '\n' + '{"return": {"a": 1}}\n'
    assert output_of(verbose=True, pretty=True) == \
        json.dumps(command, indent=4) + '\n' + \
        json.dumps({'return': {'a': 1}}, indent=4) + '\n'
    assert output_of(json_output=True) == '{"return":{"a":1}}\n'
    assert output_of(json_output=True, pretty=True) == \
        '{"return":{"a":1}}\n'
    # HMP: the text, whatever the options; -v shows the command sent too.
    assert output_of(HMPShell, 'info status', pretty=True) == \
        'VM status: running\n'
    assert output_of(HMPShell, 'info status', verbose=True) == \
        '{"execute": "human-monitor-command", "arguments": ' \
        '{"command-line": "info status"}}\nVM status: running\n'


def test_help_says_what_each_option_prints(capsys):
    """--help says what -v and -p print, and that -c may be repeated."""
    with pytest.raises(SystemExit):
        main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'print each command before sending it, and whole replies' in text
    assert 'indent JSON output; what is printed stays the same' in text
    assert 'repeat -c to run several lines in order' in text


@pytest.mark.parametrize('as_path', [True, False])
def test_logfile(shells, fake, tmp_path, as_path):
    """-l writes commands, replies and events as JSON lines; the log is a
    path (appended to) or an open file."""
    log = tmp_path / 'log'
    log.write_text('{"earlier": 1}\n')
    with open(log, 'a') as logfile:
        shell = shells(logfile=str(log) if as_path else logfile)
        shell.run_line('echo a=1')
        fake.emit('STOP')
        shell.cmd('query-status')
        shell.print_events()
        shell.close()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0] == {'earlier': 1}
    assert entries[1] == {'command': {'execute': 'echo',
                                      'arguments': {'a': 1}}}
    assert entries[2] == {'reply': {'return': {'a': 1}}}
    assert entries[3]['event']['event'] == 'STOP'


def test_hmp_mode(shells, fake):
    """HMPShell sends lines through human-monitor-command, prints the
    text, and "cpu N" picks the CPU of later commands."""
    shell = shells(HMPShell)
    assert shell.run_line('info status')
    assert shells.out.getvalue() == 'VM status: running\n'
    sent = fake.server.received[-1]
    assert sent['arguments'] == {'command-line': 'info status'}
    assert not shell.run_line('cpu 3')
    assert not shell.run_line('cpu x')
    assert shell.run_line('cpu 0')
    assert shell.run_line('info version')
    assert fake.server.received[-1]['arguments'] == {
        'command-line': 'info version', 'cpu-index': 0}
    assert 'no CPU with index 3' in shells.out.getvalue()
    assert shell.prompt == '(QEMU) '


@pytest.mark.parametrize('line', sorted(HMP_ERRORS))
def test_hmp_errors_fail(shells, address, line):
    """HMP has no error replies: output in the form of the monitor's own
    errors (unknown command, "Error: ...", a usage message) counts as a
    failed line, printed as is; so -H from a pipe or -c exits 1, as QMP
    mode does after a failed command."""
    shell = shells(HMPShell)
    assert not shell.run_line(line)
    assert shell.run_line('info status')
    text = HMP_ERRORS[line].replace('\r\n', '\n')
    assert shells.out.getvalue() == text + 'VM status: running\n'
    shell.close()
    result = run_shell(['-H', address], f'{line}\ninfo status\n')
    assert result.stdout == text + 'VM status: running\n'
    assert result.returncode == 1
    assert main(['-H', address, '-c', line]) == 1


def test_hmp_output_that_is_no_error(shells):
    """Ordinary output, even mentioning errors, is success."""
    shell = shells(HMPShell)
    for line in ('info status', 'say Error: inside', 'say unknown command'):
        assert shell.run_line(line)


def sent(fake, name):
    """How many times the shell sent command ``name``."""
    return sum(1 for msg in fake.server.received
               if msg.get('execute') == name)


def test_unknown_command_suggestion(shells, fake):
    """An unknown command gets the nearest known names, from
    query-commands, asked once per session and only then: known commands
    cost nothing."""
    shell = shells()
    assert shell.run_line('query-status')
    assert shell.run_line('{"execute": "query-status"}')
    assert sent(fake, 'query-commands') == 0
    assert not shell.run_line('quer-status')
    assert not shell.run_line('{"execute": "stpo"}')
    assert not shell.run_line('query-vers')
    assert not shell.run_line('frobnicate')
    assert sent(fake, 'query-commands') == 1
    lines = shells.out.getvalue().splitlines()[2:]
    assert lines == [
        'Error: CommandNotFound: The command quer-status has not been '
        'found; did you mean query-status?',
        'Error: CommandNotFound: The command stpo has not been found; '
        'did you mean stop?',
        'Error: CommandNotFound: The command query-vers has not been '
        'found; did you mean query-version or query-status?',
        'Error: CommandNotFound: The command frobnicate has not been '
        'found']


def test_unknown_command_suggestion_quietly_absent(shells, fake):
    """With --json, no suggestion (machine-readable output); where
    query-commands fails, none either; the completions, when loaded, serve
    without asking again."""
    shell = shells(json_output=True)
    assert not shell.run_line('quer-status')
    assert 'did you mean' not in shells.out.getvalue()
    assert sent(fake, 'query-commands') == 0
    shell.close()
    shell = shells()
    shell.load_completions()
    assert not shell.run_line('quer-status')
    assert sent(fake, 'query-commands') == 1
    assert 'did you mean query-status?' in shells.out.getvalue()
    shell.close()
    del fake.server.handlers['query-commands']
    shell = shells()
    assert not shell.run_line('quer-status')
    assert not shell.run_line('quer-status')
    assert shells.out.getvalue().endswith('has not been found\n')
    assert sent(fake, 'query-commands') == 2  # one more, in that session


def test_completion(shells):
    """Completion offers command names from query-commands, or HMP's
    command names, "help NAME" and "info SUBCOMMAND"."""
    shell = shells()
    shell.load_completions()
    assert [shell.complete('query-', n) for n in range(3)] == \
        ['query-status', 'query-version', None]
    shell.close()
    hmp = shells(HMPShell)
    hmp.load_completions()
    assert hmp.completions == [
        'help', 'help help', 'help info', 'help quit', 'info status',
        'info version', 'quit']


def test_completion_survives_failure(shells, fake):
    """If the server cannot list commands, completion is just empty."""
    del fake.server.handlers['query-commands']
    shell = shells()
    shell.load_completions()
    assert shell.completions == []


def test_repl_and_banner(address, fake):
    """repl() yields once per line, prints events before each line, and
    closes the connection at the end, as the reference library's does;
    show_banner() names the QEMU version."""
    out = io.StringIO()
    shell = QMPShell(address, stdin=io.StringIO('query-status\nfail\n'),
                     out=out)
    shell.connect()
    shell.show_banner()
    fake.emit('STOP')
    assert sum(1 for _ in shell.repl()) == 2
    assert shell.failures == 1
    lines = out.getvalue().splitlines()
    assert lines[:2] == ['Welcome to the QMP low-level shell!',
                         'Connected to QEMU 7.2.0']
    assert json.loads(lines[3])['event'] == 'STOP'
    assert json.loads(lines[4]) == {'status': 'running'}
    with pytest.raises(StateError):
        shell.cmd('query-status')
    fake.run(fake.server.wait_disconnected())


def test_prompt_in_a_transaction(shells):
    """The prompt says when a transaction is being entered."""
    shell = shells()
    assert shell.prompt == '(QEMU) '
    shell.run_line('transaction(')
    assert shell.prompt == 'TRANS> '


def test_fuzzy_values():
    """Compound values may be Python literals, as in the reference."""
    parse = CommandParser().parse
    assert parse("cmd a={'k':[None,True,'x']} b=TRUE") == {
        'execute': 'cmd', 'arguments': {'a': {'k': [None, True, 'x']},
                                        'b': True}}
    with pytest.raises(QMPShellError, match='invalid JSON value'):
        parse('cmd a=[1,')


def test_common_parser_and_die(capsys):
    """common_parser() has the reference's options; die() prints ERROR:
    and exits 1."""
    args = common_parser().parse_args(['-H', '-v', '-p', '-l', 'f'])
    assert (args.hmp, args.verbose, args.pretty, args.logfile) == \
        (True, True, True, 'f')
    with pytest.raises(SystemExit) as info:
        die('it broke')
    assert info.value.code == 1
    assert capsys.readouterr().err == 'ERROR: it broke\n'


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


def test_one_shot_repeated(address, capsys):
    """-c A -c B runs A, then B (it used to run only B): every line runs,
    as from a pipe; status 1 if any failed.  A transaction may span
    several -c."""
    assert main([address, '-c', 'echo a=1', '-c', 'echo b=2']) == 0
    assert capsys.readouterr().out == '{"a": 1}\n{"b": 2}\n'
    assert main([address, '-c', 'fail', '-c', 'echo b=2']) == 1
    assert capsys.readouterr().out == \
        'Error: GenericError: it failed\n{"b": 2}\n'
    assert main([address, '-c', 'echo a=1', '-c', 'fail']) == 1
    capsys.readouterr()
    assert main([address, '-c', 'transaction(', '-c', 'echo a=1',
                 '-c', ')']) == 1  # the test server has no transaction
    assert "transaction" in capsys.readouterr().out


def test_bad_address_and_port(capsys, tmp_path):
    """A connection failure exits 1 naming the address; a bad port is a
    usage error (2)."""
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / 'nothing'), '-c', 'query-status'])
    assert info.value.code == 1
    assert f'could not connect to {tmp_path}/nothing' in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(['localhost:http', '-c', 'x'])
    assert "Bad port" in capsys.readouterr().err


def test_piped_input(address, fake):
    """From a pipe: no prompts, events printed, status 1 if a line failed."""
    async def stop(args):
        await fake.server.emit_event('STOP')
        return {}
    fake.server.on('stop', stop)
    result = run_shell(
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
    agent = ThreadedServer(greeting=None)
    agent.server.on('guest-ping', {})
    try:
        result = run_shell(['-N', agent.start()], 'guest-ping\n')
        assert result.stdout == '{}\n' and result.returncode == 0
    finally:
        agent.close()


def test_interactive_history_and_eof(address, tmp_path):
    """On a terminal: prompts, Ctrl-D exits 0, history is kept."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session([address], [b'query-status\r', b'\x04'], env)
    assert code == 0
    assert 'Welcome to the QMP low-level shell!' in output
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
    result = run_shell(['--demo'], 'query-status\nstop\nquery-status\n',
                       env=env)
    assert result.returncode == 0, result.stderr
    assert 'built-in QMP test server' in result.stdout
    assert '"paused"' in result.stdout
    assert '"event": "STOP"' in result.stdout


def test_guest_agent_socket_without_n_says_so(monkeypatch, capsys):
    """Pointed at a socket that never greets (the guest agent's) without
    -N, the shell gives up after a while and says to use -N, instead of
    waiting forever."""
    monkeypatch.setattr(_shell_cli, 'GREETING_TIMEOUT', 0.05)
    agent = ThreadedServer(greeting=None)
    try:
        address = agent.start()
        with pytest.raises(SystemExit) as info:
            main([address, '-c', 'guest-ping'])
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert 'no greeting' in err and '-N' in err
    finally:
        agent.close()


# -- defects found by hostile and careless use --------------------------------

@pytest.mark.parametrize('lines', [['"'], ["'"], ['cmd a="b'],
                                   ['transaction(', '"'],
                                   ['transaction(', "x a='"]])
def test_unbalanced_quotes_are_an_error(lines):
    """A lone or unbalanced quote is a QMPShellError, never IndexError."""
    parser = CommandParser()
    for line in lines[:-1]:
        parser.parse(line)
    with pytest.raises(QMPShellError, match='quote'):
        parser.parse(lines[-1])


def test_bad_lines_in_one_shot_and_raw_json(address, capsys):
    """-c with a lone quote, and raw JSON with an id in the client's own
    reserved form, print a message and fail; no traceback."""
    assert main([address, '-c', '"']) == 1
    assert 'quote' in capsys.readouterr().out
    assert main([address, '-c',
                 '{"execute": "query-status", "id": "__qmp#1"}']) == 1
    assert 'reserved' in capsys.readouterr().out


def test_piped_bad_lines_go_on(address):
    """From a pipe, bad lines are reported and the next lines still run."""
    result = run_shell(
        [address], '"\n{"execute": "x", "id": "__qmp#7"}\nquery-status\n')
    assert 'Traceback' not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('Error:') and 'quote' in lines[0]
    assert lines[1].startswith('Error:') and 'reserved' in lines[1]
    assert json.loads(lines[2]) == {'status': 'running'}
    assert result.returncode == 1


DEEP = 5000


def nested(depth, inner='1'):
    """A list ``depth`` levels deep, as text."""
    return '[' * depth + inner + ']' * depth


@pytest.mark.parametrize('line', [
    '{"execute": "x", "arguments": {"a": %s}}' % nested(DEEP),
    'x a=' + nested(DEEP),
    'x a=' + '{"b":' * DEEP + '1' + '}' * DEEP,
    'x a=' + nested(300),          # parses, but too deep to print or send
    'x ' + '.'.join(['a'] * DEEP) + '=1',      # dotted keys nest too
    'transaction( t a=%s )' % nested(DEEP),
])
def test_deeply_nested_line_is_an_error(line):
    """A line nested thousands of levels deep (raw JSON, a value, dotted
    keys) is a QMPShellError with a short message, never RecursionError."""
    with pytest.raises(QMPShellError, match='nested too deeply') as info:
        CommandParser().parse(line)
    assert len(str(info.value)) < 200


def test_deeply_nested_lines_go_on(address, tmp_path):
    """From a pipe, with -c and on a terminal, a deeply nested line prints
    an error and the next line runs: status 1 from a pipe and with -c, as
    for any failed line; 0 on a terminal."""
    raw = '{"execute": "x", "arguments": {"a": %s}}' % nested(DEEP)
    lines = [raw, 'x a=' + nested(DEEP), 'query-status']
    result = run_shell([address], '\n'.join(lines) + '\n')
    assert 'Traceback' not in result.stderr, result.stderr[-500:]
    out = result.stdout.splitlines()
    assert [line.startswith('Error:') and 'nested too deeply' in line
            for line in out[:2]] == [True, True]
    assert json.loads(out[2]) == {'status': 'running'}
    assert result.returncode == 1
    result = run_shell([address, '-c', raw])
    assert 'nested too deeply' in result.stdout
    assert 'Traceback' not in result.stderr and result.returncode == 1
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    deep = 'x a=' + nested(DEEP)
    output, code = pty_session(
        [address], [deep.encode() + b'\r', b'query-status\r', b'\x04'], env)
    assert 'Traceback' not in output
    assert 'nested too deeply' in output
    assert '"status": "running"' in output
    assert code == 0


def test_stdout_closed_early(address):
    """qmp-shell ... | head -1: the shell stops quietly when its output
    is closed, with no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, '-m', 'qemu.qmp.qmp_shell', address],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    proc.stdin.write(b'query-status\n')
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == {'status': 'running'}
    proc.stdout.close()
    proc.stdin.write(b'query-status\n' * 2000)
    proc.stdin.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(30) == 1
    assert b'Traceback' not in err and b'BrokenPipe' not in err, err


def test_server_gone_says_so_once(address, fake):
    """When QEMU goes away, the shell says so once and stops: status 1
    when it died, 0 after a quit that was answered."""
    async def die(args):
        await fake.server.hang_up()
        return NO_REPLY

    fake.server.on('die', die)
    fake.server.on('quit', QUIT)
    result = run_shell(
        [address], 'query-status\ndie\nquery-status\nquery-status\n')
    assert result.stdout.count('closed the connection') == 1, result.stdout
    assert 'StateError' not in result.stdout + result.stderr
    assert result.returncode == 1
    result = run_shell([address], 'quit\nquery-status\n')
    assert result.stdout.count('closed the connection') == 1, result.stdout
    assert result.returncode == 0


def wrap_process(args, env=None):
    """Run qmp-shell-wrap in a process of its own."""
    return subprocess.Popen(
        [sys.executable, '-c', 'import sys; from qemu.qmp.qmp_shell import '
         'main_wrap; sys.exit(main_wrap())', *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)


def test_wrap_notices_qemu_dying_at_once():
    """qmp-shell-wrap with a QEMU that exits at once says so at once,
    with the exit status; QEMU's own message shows too."""
    proc = wrap_process(['--', sys.executable, FAKE_QEMU, '-M',
                         'doesnotexist'])
    out, err = proc.communicate('query-status\n', timeout=20)
    assert proc.returncode == 1
    assert 'unsupported machine type' in err
    assert 'exited with status 1 before connecting' in err, err


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f'/proc/{pid}/status') as status:
        return 'State:\tZ' in status.read()


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP])
def test_wrap_cleans_up_on_signals(tmp_path, signum):
    """SIGTERM or SIGHUP to qmp-shell-wrap stops its QEMU and removes the
    socket's temporary directory."""
    pidfile = tmp_path / 'qemu.pid'
    env = dict(os.environ, FAKE_QEMU_PIDFILE=str(pidfile),
               TMPDIR=str(tmp_path))
    proc = wrap_process(['--', sys.executable, FAKE_QEMU], env=env)
    proc.stdin.write('query-status\n')
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())['status'] == 'running'
    qemu_pid = int(pidfile.read_text())
    proc.send_signal(signum)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signum
    assert gone(qemu_pid)
    assert not list(tmp_path.glob('qmp-shell-wrap-*'))


def test_wrap_comma_in_tmpdir(tmp_path):
    """A comma in TMPDIR reaches QEMU's -chardev option doubled, as QEMU
    reads it (tests/fake_qemu.py parses options as QEMU does)."""
    tmpdir = tmp_path / 'a,b'
    tmpdir.mkdir()
    proc = wrap_process(['--', sys.executable, FAKE_QEMU],
                        env=dict(os.environ, TMPDIR=str(tmpdir)))
    out, err = proc.communicate('query-status\n', timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)['status'] == 'running'
    assert list(tmpdir.iterdir()) == []


def test_ctrl_c(address, fake, tmp_path):
    """On a terminal, Ctrl-C at the prompt cancels the line (the shell
    goes on), Ctrl-D leaves with 0; Ctrl-C during a command ends the
    shell with status 130."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session(
        [address], [b'query-sta', b'\x03', b'query-status\r', b'\x04'], env,
        # Ctrl-C on the half-typed line, once readline echoed it (so is
        # reading: a Ctrl-C typed as readline starts up can get lost).
        waits={1: b'query-sta'})
    assert code == 0, output
    assert '"status": "running"' in output
    fake.server.on('hang', lambda args: NO_REPLY)
    output, code = pty_session(
        [address], [b'hang\r', b'\x03'], env,
        waits={1: lambda: fake.run(fake.server.wait_for_command('hang'))})
    assert code == 130, output
    assert 'Traceback' not in output


def test_make_demo_ctrl_c(tmp_path):
    """make demo: Ctrl-C at the prompt cancels the line, and reaches the
    shell only: an otherwise clean session ends with status 0, without
    make's "Interrupt" (make, in the terminal's foreground process group,
    used to get the SIGINT too, and die of it once the shell ended).
    Ctrl-Z does nothing there (stopping the shell alone would hang the
    terminal)."""
    output, code = pty_session(
        ['-s', 'demo'],
        [b'query-sta', b'\x03', b'query-status\r', b'\x1a',
         b'query-status\r', b'\x04'],
        make_demo_env(tmp_path, with_qemu=False), program='make',
        waits={1: b'query-sta',  # see test_ctrl_c
               4: lambda: None})  # no new prompt after Ctrl-Z
    assert 'built-in QMP test server' in output
    assert output.count('"status": "running"') == 2, output
    assert 'Interrupt' not in output and '***' not in output, output
    assert code == 0, output


def test_wrap_ctrl_c_does_not_reach_qemu(tmp_path):
    """qmp-shell-wrap runs QEMU in a process group of its own: Ctrl-C at
    the prompt reaches the shell only, and QEMU goes on."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session(
        ['--', sys.executable, FAKE_QEMU],
        [b'query-sta', b'\x03', b'query-status\r', b'\x04'], env,
        program='wrap', waits={1: b'query-sta'})  # see test_ctrl_c
    assert code == 0, output
    assert '"status": "running"' in output


@pytest.mark.parametrize('program', ['qmp-shell', 'qmp-shell-wrap'])
def test_version(program):
    """Both programs say which library, and which version, they are."""
    import qemu.qmp
    code = ('import sys; from qemu.qmp.qmp_shell import main, main_wrap; '
            f'sys.exit({"main" if program == "qmp-shell" else "main_wrap"}'
            '())')
    result = subprocess.run([sys.executable, '-c', code, '--version'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{program} (qemu.qmp) {qemu.qmp.__version__}\n"


@pytest.mark.parametrize('typed, first', [
    ('query-stauts', 'query-status'),   # two letters swapped
    ('query-cpu', 'query-cpus-fast'),   # typed short
    ('quer-status', 'query-status'),
    ('qmp-capabilities', 'qmp_capabilities'),
])
def test_nearest_names_put_the_likeliest_first(typed, first):
    """The suggestions' order, among QEMU 7.2's own names that look alike."""
    known = ['query-stats', 'query-status', 'query-pci', 'query-vnc',
             'query-tpm', 'query-cpus-fast', 'query-cpu-definitions',
             'qmp_capabilities', 'query-kvm', 'stop', 'cont']
    assert nearest_names(typed, known)[0] == first


def test_wrap_waits_for_a_slow_greeting(tmp_path, monkeypatch):
    """QEMU connects at once but greets late (a loaded machine): the
    short waits that watch for QEMU exiting must not cut the handshake
    short.  They did: the connection was dropped, and QEMU never came
    back ('did not connect', or its stand-in 'exited with status 0')."""
    monkeypatch.setattr(_shell_cli, 'WRAP_CONNECT_TIMEOUT', 5.0)
    path = str(tmp_path / 'qmp.sock')
    shell = QMPShell(path, server=True)

    def slow_qemu(sock):
        with sock:
            sock.connect(path)
            time.sleep(0.5)  # stands for QEMU busy before greeting
            sock.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            sock.makefile('rb').readline()  # qmp_capabilities
            sock.sendall(b'{"return": {}}\n')
            sock.recv(1)  # until the shell hangs up

    class Running:
        def poll(self):
            return None

    qemu = threading.Thread(target=slow_qemu, args=(socket.socket(
        socket.AF_UNIX),))
    qemu.start()
    try:
        _shell_cli._await_qemu(shell, Running(), 'qemu')
    finally:
        shell.close()
        qemu.join(10)


def test_wrap_default_qemu_has_no_window(monkeypatch):
    """qmp-shell-wrap alone starts a QEMU without a display: no window,
    no VNC server, no messages about missing display modules."""
    started = []
    monkeypatch.setattr(_shell_cli, 'wrap',
                        lambda qemu, args: started.append(qemu) or 0)
    assert _shell_cli.qmp_shell_wrap([]) == 0
    assert started == [['qemu-system-x86_64', '-display', 'none']]
    assert _shell_cli.qmp_shell_wrap(['--', 'qemu-x', '-M', 'q35']) == 0
    assert started[-1] == ['qemu-x', '-M', 'q35']


def test_quit_on_a_terminal_ends_the_shell(address, fake, tmp_path):
    """After quit, the shell says QEMU closed the connection and ends by
    itself, as the docs say: not only at the next Enter.  Like QEMU, the
    server takes a moment to go after answering."""
    server = fake.server
    shutting_down = []

    def quit_(args):
        async def shut_down():
            await asyncio.sleep(0.3)  # stands for QEMU tearing down
            await server.emit_event('SHUTDOWN', {'guest': False})
            await server.hang_up()
        shutting_down.append(asyncio.ensure_future(shut_down()))
        return {}

    server.on('quit', quit_)
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session([address], [b'quit\r'], env)
    assert 'SHUTDOWN' in output
    assert 'QEMU closed the connection (after quit).' in output
    assert code == 0


def test_help_and_exit_say_how(shells):
    """What a newcomer types first gets the shell's own way to do it."""
    shell = shells()
    for line in ('help', 'exit', '?'):
        assert not shell.run_line(line)
    lines = shells.out.getvalue().splitlines()[-3:]
    assert all(line.endswith('; Tab lists the commands, Ctrl-D leaves')
               for line in lines), lines


def test_timeout_bounds_each_command(address, fake):
    """--timeout: a command without a reply in time is a failed line (a
    guest agent that is not running never answers), and the shell goes on
    with the next; the late reply is dropped."""
    fake.server.on('hang', lambda args: NO_REPLY)
    result = run_shell([address, '--timeout', '0.2'],
                       'hang\nquery-status\n')
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "Error: no reply to 'hang' within 0.2 seconds")
    assert json.loads(lines[1])['status'] == 'running'
    assert result.returncode == 1
