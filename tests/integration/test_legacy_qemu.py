"""The blocking client driving a real QEMU, as QEMU's test harness does."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    StateError,
)
from qemu.qmp.legacy import QEMUMonitorProtocol
from tests.helpers import require_binary
from tests.integration.conftest import QEMU_BASE

pytestmark = pytest.mark.integration


def event_wait(qmp, name, timeout=10.0):
    """QEMUMachine.event_wait's loop: pull events until ``name``."""
    while True:
        event = qmp.pull_event(wait=timeout)
        if event is None or event['event'] == name:
            return event


def exercise(qmp):
    """The harness's usual conversation with a running QEMU."""
    assert qmp.cmd('query-status')['running'] is True
    reply = qmp.cmd_raw('no-such-command')
    assert reply['error']['class'] == 'CommandNotFound'
    assert 'id' not in reply
    with pytest.raises(ExecuteError):
        qmp.cmd('no-such-command')

    qmp.cmd('stop')
    assert event_wait(qmp, 'STOP')['event'] == 'STOP'
    qmp.cmd('cont')
    assert qmp.pull_event(wait=5.0)['event'] == 'RESUME'
    qmp.cmd('stop')
    qmp.cmd('cont')
    assert [e['event'] for e in qmp.get_events(wait=5.0)][:1] == ['STOP']
    qmp.clear_events()

    rfd, wfd = os.pipe()
    try:
        qmp.send_fd_scm(rfd)
        assert qmp.cmd('getfd', fdname='fd0') == {}
        qmp.cmd('closefd', fdname='fd0')
    finally:
        os.close(rfd)
        os.close(wfd)
    with pytest.raises(OSError):
        qmp.send_fd_scm(rfd)  # closed now: refused, nothing sent
    assert qmp.cmd('query-status')['running'] is True
    assert qmp.cmd('quit') == {}
    assert event_wait(qmp, 'SHUTDOWN')['event'] == 'SHUTDOWN'


def test_harness_server_mode(tmp_path):
    """server=True, QEMU dials in with -chardev/-mon, accept(), commands,
    fd passing, events, quit; close() with QEMU gone raises nothing."""
    binary = require_binary('qemu-system-x86_64')
    path = str(tmp_path / 'monitor.sock')
    qmp = QEMUMonitorProtocol(path, server=True, nickname='harness')
    proc = subprocess.Popen([
        binary, *QEMU_BASE, '-chardev', f'socket,id=mon,path={path}',
        '-mon', 'chardev=mon,mode=control'])
    try:
        greeting = qmp.accept(30.0)
        assert greeting['QMP']['version']['qemu']['major'] >= 7
        exercise(qmp)
        assert proc.wait(30) == 0
        qmp.close()
    finally:
        proc.kill()
        proc.wait()


def test_harness_socketpair_mode():
    """QEMU's newer harness: one end of a socketpair goes to QEMU as
    -chardev socket,fd=N, the other to QEMUMonitorProtocol(sock=...,
    server=True), then accept()."""
    binary = require_binary('qemu-system-x86_64')
    ours, theirs = socket.socketpair()
    qmp = QEMUMonitorProtocol(sock=ours, server=True, nickname='pair')
    proc = subprocess.Popen([
        binary, *QEMU_BASE, '-chardev',
        f'socket,id=mon,fd={theirs.fileno()}',
        '-mon', 'chardev=mon,mode=control'], pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        assert 'QMP' in qmp.accept(30.0)
        exercise(qmp)
        assert proc.wait(30) == 0
        qmp.close()
    finally:
        proc.kill()
        proc.wait()


def test_accept_timeout_then_qemu_starts(tmp_path):
    """accept() times out before QEMU exists; a retry on the same address
    accepts the QEMU started afterwards."""
    binary = require_binary('qemu-system-x86_64')
    path = str(tmp_path / 'late.sock')
    qmp = QEMUMonitorProtocol(path, server=True)
    with pytest.raises(asyncio.TimeoutError):
        qmp.accept(0.1)
    proc = subprocess.Popen([
        binary, *QEMU_BASE, '-chardev', f'socket,id=mon,path={path}',
        '-mon', 'chardev=mon,mode=control'])
    try:
        assert 'QMP' in qmp.accept(30.0)
        assert qmp.cmd('query-status')['running'] is True
        qmp.cmd('quit')
        assert proc.wait(30) == 0
        qmp.close()
    finally:
        proc.kill()
        proc.wait()


def test_client_mode(qemu):
    """Client mode against -qmp unix:PATH,server=on,wait=off."""
    qmp = QEMUMonitorProtocol(qemu.address)
    assert 'QMP' in qmp.connect()
    exercise(qmp)
    qmp.close()


def test_with_and_quit(qemu):
    """with + connect + quit: leaving the block raises nothing."""
    with QEMUMonitorProtocol(qemu.address) as qmp:
        qmp.connect()
        assert qmp.cmd('quit') == {}
    with pytest.raises(StateError):
        qmp.cmd('query-status')


def test_killed_qemu(qemu):
    """kill -9 of QEMU with a command in flight: ExecInterruptedError (or
    StateError once the end is known); close() raises nothing."""
    qmp = QEMUMonitorProtocol(qemu.address)
    qmp.connect()
    qmp.settimeout(10)
    qemu.kill()
    with pytest.raises((ExecInterruptedError, StateError)):
        while True:
            qmp.cmd('query-status')
    with pytest.raises(EOFError):
        qmp.pull_event(wait=True)
    qmp.close()


def test_script_that_never_closes(qemu):
    """A script that talks to QEMU and never closes exits at once, with
    its own status."""
    script = textwrap.dedent('''\
        import sys
        from qemu.qmp.legacy import QEMUMonitorProtocol
        q = QEMUMonitorProtocol(sys.argv[1])
        q.connect()
        print(q.cmd('query-status')['status'])
        raise SystemExit(3)
    ''')
    proc = subprocess.run([sys.executable, '-X', 'dev', '-c', script,
                           qemu.address], capture_output=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b'running\n' and proc.stderr == b''


def test_threads_and_an_event_thread(qemu):
    """8 threads run commands while one waits for events: replies reach
    their threads, the event thread sees STOP and RESUME in order."""
    qmp = QEMUMonitorProtocol(qemu.address)
    qmp.connect()
    errors, events = [], []

    def worker():
        try:
            for _ in range(200):
                assert qmp.cmd('query-status')['status'] in ('running',
                                                             'paused')
        except Exception as err:  # reported below
            errors.append(err)

    def watcher():
        try:
            while len(events) < 4:
                events.append(qmp.pull_event(wait=True)['event'])
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    threads.append(threading.Thread(target=watcher))
    for thread in threads:
        thread.start()
    for command in ('stop', 'cont', 'stop', 'cont'):
        qmp.cmd(command)
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert not errors
    assert events == ['STOP', 'RESUME', 'STOP', 'RESUME']
    qmp.close()


async def test_timeout_keeps_real_qemu_usable(qemu):
    """A reply timeout on one command leaves the monitor usable (and this
    runs inside a running event loop)."""
    qmp = QEMUMonitorProtocol(qemu.address)
    qmp.connect()
    qmp.settimeout(0.000001)
    with pytest.raises(asyncio.TimeoutError):
        qmp.cmd('query-qmp-schema')
    qmp.settimeout(10)
    assert qmp.cmd('query-status')['running']
    qmp.close()


def test_connect_timeout_on_a_busy_qemu_monitor(qemu):
    """While one client holds QEMU's monitor, further connect(timeout=)
    calls fail with ConnectError within their timeout, whether the socket
    connection waits in the backlog (no greeting) or cannot be made at
    all; the first client's session is unharmed."""
    holder = QEMUMonitorProtocol(qemu.address)
    holder.connect()
    others = [QEMUMonitorProtocol(qemu.address) for _ in range(3)]
    for other in others:
        with pytest.raises(ConnectError):
            other.connect(timeout=0.5)
    assert holder.cmd('query-status')['running'] is True
    for other in others:
        other.close()
    holder.close()


def test_signal_handler_close_during_pull_event(qemu):
    """A SIGTERM-style handler that closes the client while the main
    thread waits for an event ends that wait at once; QEMU runs on."""
    qmp = QEMUMonitorProtocol(qemu.address)
    qmp.connect()
    main = threading.get_ident()
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda signum, frame: qmp.close())
    timer = threading.Timer(0.2, signal.pthread_kill,
                            (main, signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(EOFError):
            qmp.pull_event(wait=30)
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, previous)
    again = QEMUMonitorProtocol(qemu.address)
    again.connect(timeout=10)
    assert again.cmd('query-status')['running'] is True
    again.close()
