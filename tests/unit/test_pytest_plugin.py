"""
The pytest plugin, as a user's project meets it: a test file of theirs,
run by pytest in a process of its own, with no ``-p`` option and no
conftest (the entry point loads the fixtures), and no asyncio plugin.
"""

import json
import subprocess
import sys
import textwrap

TRANSCRIPT = [
    {'qmp-transcript': 1},
    {'t': 0.0, 'from': 'server', 'msg': {'QMP': {
        'version': {'qemu': {'major': 7, 'minor': 2, 'micro': 0},
                    'package': ''}, 'capabilities': ['oob']}}},
    {'t': 0.1, 'from': 'client', 'msg': {'execute': 'qmp_capabilities',
                                         'arguments': {'enable': ['oob']}}},
    {'t': 0.1, 'from': 'server', 'msg': {'return': {}}},
    {'t': 0.2, 'from': 'client', 'msg': {'execute': 'stop', 'id': 7}},
    {'t': 0.2, 'from': 'server', 'msg': {'return': {}, 'id': 7}},
    {'t': 0.2, 'from': 'server', 'msg': {
        'event': 'STOP', 'data': {},
        'timestamp': {'seconds': 1, 'microseconds': 2}}},
    {'t': 0.3, 'from': 'client', 'msg': {'execute': 'query-status',
                                         'id': 8}},
    {'t': 0.3, 'from': 'server', 'msg': {'return': {
        'status': 'paused', 'running': False}, 'id': 8}},
]

USER_TESTS = '''
import asyncio

from qemu.qmp import QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol


def test_blocking_replay(qmp_replay):
    server = qmp_replay('stop.jsonl')
    with QEMUMonitorProtocol(server.address) as qmp:
        qmp.connect()
        assert qmp.cmd('stop') == {}
        assert qmp.pull_event(wait=5)['event'] == 'STOP'
        assert qmp.cmd('query-status')['status'] == 'paused'


def test_async_replay(qmp_replay):
    server = qmp_replay('stop.jsonl', ordered=True)

    async def main():
        async with QMPClient() as qmp:
            await qmp.connect(server.address)
            await qmp.execute('stop')
            assert (await qmp.events.get())['event'] == 'STOP'
            return await qmp.execute('query-status')
    assert asyncio.run(main())['running'] is False


def test_unrecorded_command_from_a_handler(qmp_replay):
    server = qmp_replay('stop.jsonl', handlers={'cont': {}})
    with QEMUMonitorProtocol(server.address) as qmp:
        qmp.connect()
        assert qmp.cmd('cont') == {}


def test_server_fixture(qmp_server):
    qmp_server.server.on('query-status', {'status': 'running'})
    with QEMUMonitorProtocol(qmp_server.address) as qmp:
        qmp.connect()
        assert qmp.cmd('query-status') == {'status': 'running'}


def test_changed_argument_caught(qmp_replay):
    """Fails once: the test itself, not again at teardown."""
    server = qmp_replay('stop.jsonl')
    with QEMUMonitorProtocol(server.address) as qmp:
        qmp.connect()
        qmp.cmd('stop', force=True)


def test_complete(qmp_replay):
    server = qmp_replay('stop.jsonl', complete=True)
    with QEMUMonitorProtocol(server.address) as qmp:
        qmp.connect()
        qmp.cmd('stop')


def test_changed_argument(qmp_replay):
    server = qmp_replay('stop.jsonl')
    with QEMUMonitorProtocol(server.address) as qmp:
        qmp.connect()
        qmp.cmd_obj({'execute': 'query-status',
                     'arguments': {'verbose': True}})
'''


def run_user_tests(tmp_path, *args):
    (tmp_path / 'stop.jsonl').write_text(
        ''.join(json.dumps(line) + '\n' for line in TRANSCRIPT))
    (tmp_path / 'test_user.py').write_text(textwrap.dedent(USER_TESTS))
    return subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
         '-p', 'no:asyncio', '-q', *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False)


def test_fixtures_load_from_the_entry_point(tmp_path):
    """The fixtures need nothing but the installed package; a command
    that does not match the transcript fails its test with the diff."""
    result = run_user_tests(tmp_path)
    assert '1 failed, 6 passed, 2 errors' in result.stdout, \
        result.stdout + result.stderr
    assert "'query-status' (" in result.stdout \
        and "was recorded, and never came" in result.stdout
    assert 'def qmp_replay' not in result.stdout  # no fixture code shown
    assert "'query-status' does not match the recorded 'query-status' " \
        "(" in result.stdout
    assert 'arguments.verbose: not recorded, received true' \
        in result.stdout


def test_qemu_named_by_environment_must_exist(tmp_path):
    """$QEMU naming a file that is not there fails the test plainly."""
    (tmp_path / 'test_user.py').write_text(
        'def test_it(qemu_monitor):\n    pass\n')
    import os
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider',
         '-p', 'no:asyncio', '-q'], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
        env={**os.environ, 'QEMU': str(tmp_path / 'nowhere')})
    assert 'which is not an executable file' in result.stdout
    assert 'Traceback' not in result.stdout


def test_fixtures_in_a_fresh_venv(tmp_path):
    """In a venv holding only the package and pytest, the fixtures load
    (entry point) and replay."""
    import os
    import shutil
    from pathlib import Path

    from tests.helpers import unavailable
    uv = shutil.which('uv') or str(Path(sys.executable).parent / 'uv')
    if not os.path.exists(uv):
        unavailable("uv is not installed (a devel extra)")
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / 'venv'
    subprocess.run([uv, 'venv', '-q', '--python', sys.executable,
                    str(venv)], check=True, timeout=120)
    python = str(venv / 'bin' / 'python')
    subprocess.run([uv, 'pip', 'install', '-q', '--python', python,
                    str(root), 'pytest'], check=True, timeout=300,
                   cwd=tmp_path)
    (tmp_path / 'stop.jsonl').write_text(
        ''.join(json.dumps(line) + '\n' for line in TRANSCRIPT))
    (tmp_path / 'test_user.py').write_text(textwrap.dedent(USER_TESTS))
    result = subprocess.run(
        [python, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
         '-k', 'replay or server_fixture'], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False)
    assert '3 passed' in result.stdout, result.stdout + result.stderr
