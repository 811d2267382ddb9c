"""The blocking wrapper driving a real QEMU, as QEMU's test harness does."""

import asyncio
import os
import subprocess

import pytest

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol
from tests.conftest import require_binary
from tests.integration.conftest import QEMU_BASE

pytestmark = pytest.mark.integration


def exercise(qmp):
    """The harness's usual conversation with a running QEMU."""
    assert qmp.cmd('query-status')['running'] is True
    reply = qmp.cmd_raw('no-such-command')
    assert reply['error']['class'] == 'CommandNotFound'
    assert 'id' not in reply
    with pytest.raises(ExecuteError):
        qmp.cmd('no-such-command')

    qmp.cmd('stop')
    assert qmp.pull_event(wait=5.0)['event'] == 'STOP'
    qmp.cmd('cont')
    assert qmp.pull_event(wait=5.0)['event'] == 'RESUME'
    qmp.cmd('stop')
    qmp.cmd('cont')
    assert [e['event'] for e in qmp.get_events(wait=5.0)][:1] == ['STOP']

    rfd, wfd = os.pipe()
    try:
        qmp.send_fd_scm(rfd)
        assert qmp.cmd('getfd', fdname='fd0') == {}
    finally:
        os.close(rfd)
        os.close(wfd)
    assert qmp.cmd('quit') == {}


def test_harness_server_mode(tmp_path):
    """server=True, QEMU dials in with -chardev/-mon, accept(), commands,
    quit, then close() with QEMU gone raises only EOFError."""
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
        try:
            qmp.close()
        except EOFError:
            pass
    finally:
        proc.kill()
        proc.wait()


def test_client_mode(qemu):
    """Client mode against -qmp unix:PATH,server=on,wait=off."""
    qmp = QEMUMonitorProtocol(qemu.address)
    assert 'QMP' in qmp.connect()
    exercise(qmp)
    try:
        qmp.close()
    except EOFError:
        pass


def test_killed_qemu(qemu):
    """kill -9 of QEMU: the pending command fails, close() says EOFError."""
    qmp = QEMUMonitorProtocol(qemu.address)
    qmp.connect()
    qemu.kill()
    with pytest.raises(Exception):
        qmp.settimeout(10)
        while True:
            qmp.cmd('query-status')
    with pytest.raises(EOFError):
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
