"""qmp-shell and qmp-shell-wrap against real QEMU and qemu-ga."""

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.helpers import (
    make_demo_env,
    pty_session,
    require_binary,
    run_shell,
)
from tests.integration.conftest import QEMU_BASE, running

pytestmark = pytest.mark.integration


def test_commands_and_errors(qemu):
    """Plain mode: values printed, errors printed, status 1 after one."""
    result = run_shell([qemu.address], 'query-status\nno-such-cmd\n'
                       'human-monitor-command command-line="info status"\n')
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])['status'] == 'running'
    assert lines[1].startswith('Error: CommandNotFound:')
    assert 'VM status: running' in lines[2]
    assert result.returncode == 1


def test_unknown_command_suggestion(qemu):
    """A misspelt command gets QEMU's nearest command names."""
    result = run_shell([qemu.address], 'blockdev-ad\nquery-stauts\n')
    lines = result.stdout.splitlines()
    assert lines[0].startswith('Error: CommandNotFound: ')
    assert lines[0].endswith('; did you mean blockdev-add, blockdev-del or '
                             'blockdev-backup?')
    assert '; did you mean query-status, query-stats or ' in lines[1]
    assert result.returncode == 1


def test_transaction_and_nested_keys(storage_daemon):
    """Nested keys and a transaction reach a real qemu-storage-daemon."""
    result = run_shell(
        [storage_daemon.address],
        'blockdev-add driver=null-co node-name=n0 size=1048576\n'
        'transaction(\n'
        'block-dirty-bitmap-add node=n0 name=b0\n'
        'block-dirty-bitmap-add node=n0 name=b1 granularity=65536\n'
        ')\n'
        'query-named-block-nodes flat=true\n')
    assert result.returncode == 0, result.stdout
    nodes = json.loads(result.stdout.splitlines()[-1])
    bitmaps = {b['name'] for n in nodes for b in n.get('dirty-bitmaps', [])}
    assert bitmaps == {'b0', 'b1'}


def test_verbose_pretty_json_and_log(qemu, tmp_path):
    """-v, -p, --json and -l together."""
    log = tmp_path / 'session.log'
    result = run_shell(['-v', '-p', '-l', str(log), qemu.address],
                       'query-status\n')
    assert result.stdout.startswith('{\n    "execute": "query-status"\n}')
    assert '"return": {' in result.stdout
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0] == {'command': {'execute': 'query-status'}}
    assert entries[1]['reply']['return']['running'] is True
    result = run_shell(['--json', qemu.address], 'stop\ncont\n')
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert {'return': {}} in objects
    assert 'STOP' in [o.get('event') for o in objects]


def test_one_shot_exit_codes(qemu):
    """-c: status 0 on success, 1 on an error reply."""
    ok = run_shell([qemu.address, '-c', 'query-status'])
    assert ok.returncode == 0 and json.loads(ok.stdout)['running']
    bad = run_shell([qemu.address, '-c', 'query-status bogus=1'])
    assert bad.returncode == 1 and 'GenericError' in bad.stdout


def test_hmp_mode(qemu):
    """-H: HMP commands in, text out; starting it does not crash."""
    result = run_shell(['-H', qemu.address], 'info status\nhelp info\n')
    assert result.returncode == 0, result.stderr
    assert 'VM status: running' in result.stdout


def test_hmp_mode_error_status(qemu):
    """-H from a pipe: an unknown command (or another error of QEMU's
    monitor) makes the status 1, as a failed command does in QMP mode;
    the next lines still run."""
    result = run_shell(['-H', qemu.address],
                       'no-such-command\ndevice_add nosuch\ninfo status\n')
    assert result.stdout.startswith("unknown command: 'no-such-command'\n")
    assert "Error: 'nosuch' is not a valid device model name" in \
        result.stdout
    assert 'VM status: running' in result.stdout
    assert result.returncode == 1


def test_hmp_mode_interactive(qemu, tmp_path):
    """-H on a terminal loads HMP completion from QEMU without crashing."""
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), TERM='dumb')
    output, code = pty_session(['-H', qemu.address],
                               [b'info status\r', b'\x04'], env)
    assert code == 0 and 'VM status: running' in output


def test_guest_agent(guest_agent):
    """-N talks to qemu-ga."""
    result = run_shell(['-N', guest_agent.address, '-c', 'guest-sync id=7'])
    assert result.returncode == 0 and result.stdout.strip() == '7'


def qemu_processes(tag):
    """Pids of live QEMU processes (not the shell) started with ``tag``."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as cmdline:
                argv = cmdline.read().split(b'\0')
            with open(f'/proc/{pid}/status') as status:
                zombie = 'State:\tZ' in status.read()
        except OSError:
            continue
        if tag.encode() in argv and b'qemu-system' in argv[0] \
                and not zombie:
            found.append(int(pid))
    return found


def test_shell_wrap_cleans_up():
    """qmp-shell-wrap starts QEMU, runs the shell, leaves nothing behind."""
    binary = require_binary('qemu-system-x86_64')
    tag = f'qmp-shell-wrap-test-{uuid.uuid4()}'
    result = subprocess.run(
        [sys.executable, '-c',
         'import sys; from qemu.qmp.qmp_shell import main_wrap; '
         'sys.exit(main_wrap())',
         '--', binary, *QEMU_BASE, '-name', tag],
        input='query-status\nquery-name\n', capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])['running'] is True
    assert json.loads(lines[1]) == {'name': tag}
    assert qemu_processes(tag) == []
    assert 'terminating on signal' not in result.stderr  # quit, not killed


def wrap(*qemu_args, **popen):
    return subprocess.Popen(
        [sys.executable, '-c',
         'import sys; from qemu.qmp.qmp_shell import main_wrap; '
         'sys.exit(main_wrap())', '--', *qemu_args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **popen)


def test_shell_wrap_qemu_that_dies_at_once():
    """qmp-shell-wrap -- qemu -M doesnotexist: says so at once, with
    QEMU's exit status and its message (it used to wait 30 s)."""
    binary = require_binary('qemu-system-x86_64')
    proc = wrap(binary, '-M', 'doesnotexist', '-display', 'none')
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert 'exited with status 1 before connecting' in err
    assert 'unsupported machine type' in err  # QEMU's own message


def test_shell_wrap_sigterm_stops_qemu(tmp_path):
    """SIGTERM to qmp-shell-wrap stops its QEMU and removes its temporary
    directory (QEMU used to be left running)."""
    binary = require_binary('qemu-system-x86_64')
    tag = f'qmp-shell-wrap-test-{uuid.uuid4()}'
    proc = wrap(binary, *QEMU_BASE, '-name', tag,
                env=dict(os.environ, TMPDIR=str(tmp_path)))
    proc.stdin.write('query-name\n')
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) == {'name': tag}
    assert len(qemu_processes(tag)) == 1
    proc.terminate()
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + 15
    assert qemu_processes(tag) == []
    assert not list(tmp_path.glob('qmp-shell-wrap-*'))


def test_demo_with_qemu():
    """--demo attaches to a real QEMU when installed."""
    require_binary('qemu-system-x86_64')
    result = run_shell(['--demo'], 'query-status\n')
    assert result.returncode == 0, result.stderr
    assert 'Starting' in result.stdout and '"running"' in result.stdout


def test_make_demo_ctrl_c_with_qemu(tmp_path):
    """make demo with QEMU: Ctrl-C at the prompt cancels the line; the
    session then ends with status 0 and no "Interrupt" from make."""
    require_binary('qemu-system-x86_64')
    output, code = pty_session(
        ['-s', 'demo'], [b'query-sta', b'\x03', b'query-status\r', b'\x04'],
        make_demo_env(tmp_path, with_qemu=True), program='make',
        waits={1: b'query-sta'})
    assert 'Starting ' in output and '"running": true' in output
    assert 'Interrupt' not in output and '***' not in output, output
    assert code == 0, output


def test_shell_objects_against_qemu(qemu):
    """QMPShell and HMPShell used as objects, as the reference library's
    users do: construct, connect, run lines, use the inherited legacy
    methods, repl() over a script of lines."""
    import io

    from qemu.qmp.qmp_shell import HMPShell, QMPShell

    out = io.StringIO()
    with QMPShell(qemu.address, False, False, out=out,
                  stdin=io.StringIO('stop\nquery-status\n')) as shell:
        shell.connect()
        shell.show_banner()
        assert 'Connected to QEMU ' in out.getvalue()
        assert sum(1 for _ in shell.repl()) == 2
    lines = out.getvalue().splitlines()
    assert json.loads(lines[-2])['event'] == 'STOP'
    assert json.loads(lines[-1])['status'] == 'paused'

    out = io.StringIO()
    with HMPShell(qemu.address, out=out) as hmp:
        hmp.connect()
        assert hmp.cmd('query-status')['status'] == 'paused'
        assert hmp.run_line('info status')
        assert out.getvalue() == 'VM status: paused\n'
        hmp.load_completions()
        assert 'info status' in hmp.completions
        assert 'help quit' in hmp.completions
        assert hmp.run_line('cont')
        assert hmp.pull_event(wait=10)['event'] == 'RESUME'


@pytest.mark.parametrize('program', ['qmp-shell-wrap', 'qmp-shell --demo',
                                     'qemu.qmp.demo'])
def test_comma_in_tmpdir(tmp_path, program):
    """A comma in TMPDIR (legal in a path) reaches QEMU doubled, as its
    option syntax needs: qmp-shell-wrap, qmp-shell --demo and the scripted
    tour all start QEMU with their socket in it."""
    binary = require_binary('qemu-system-x86_64')
    tmpdir = tmp_path / 'a,b'
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    if program == 'qmp-shell-wrap':
        args = ['-c', 'import sys; from qemu.qmp.qmp_shell import '
                'main_wrap; sys.exit(main_wrap())', '--', binary, *QEMU_BASE]
    elif program == 'qmp-shell --demo':
        args = ['-m', 'qemu.qmp.qmp_shell', '--demo']
    else:
        args = ['-m', 'qemu.qmp.demo']
    result = subprocess.run([sys.executable, *args], input='query-status\n',
                            capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert 'running' in result.stdout
    assert list(tmpdir.iterdir()) == []  # and cleaned up after


async def test_timeout_with_no_agent_in_the_guest(tmp_path):
    """A guest with the agent's port but no agent running (here: no guest
    at all): qmp-shell -N --timeout says so instead of waiting for ever."""
    binary = require_binary('qemu-system-x86_64')
    path, pidfile = tmp_path / 'qga.sock', tmp_path / 'qemu.pid'
    async with running([
            binary, '-M', 'pc', '-nodefaults', '-display', 'none',
            '-daemonize', '-pidfile', str(pidfile),
            '-device', 'virtio-serial',
            '-chardev', f'socket,path={path},server=on,wait=off,id=qga0',
            '-device', 'virtserialport,chardev=qga0,'
                       'name=org.qemu.guest_agent.0'], str(path), pidfile):
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_shell(
                ['-N', '--timeout', '1', '-c', 'guest-ping', str(path)]))
    assert result.stdout.startswith(
        "Error: no reply to 'guest-ping' within 1.0 seconds")
    assert result.returncode == 1
