"""The public test server's own promises: ServerThread."""

import threading

from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.testing import QMPTestServer, ServerThread


def test_server_thread_example():
    """The example in qemu.qmp.testing's docstring, as written."""
    server = QMPTestServer()
    server.on('query-status', {'status': 'running'})
    with ServerThread(server) as thread:
        with QEMUMonitorProtocol(thread.address) as qmp:
            qmp.connect()
            assert qmp.cmd('query-status') == {'status': 'running'}
            thread.run(server.emit_event('STOP'))
            assert qmp.pull_event(wait=5)['event'] == 'STOP'


def test_server_thread_lifecycle():
    """The thread is a daemon, call() runs in it, close() joins it and
    may be called twice."""
    thread = ServerThread()
    assert thread._thread.daemon
    assert thread.call(threading.current_thread) is thread._thread
    address = thread.start()
    assert thread.address == address
    thread.close()
    assert not thread._thread.is_alive()
    thread.close()
