"""The public test server's own promises: ServerThread."""

import threading

import pytest

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.testing import QMPTestServer, ServerThread
from tests.helpers import stop_and_cont


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
    serving = thread.call(threading.current_thread)
    assert serving is not threading.current_thread() and serving.daemon
    address = thread.start()
    assert thread.address == address
    thread.close()
    assert not serving.is_alive()
    thread.close()


async def test_handler_that_raises_answers_an_error(caplog):
    """A handler that raises gets its command a GenericError reply with
    the exception's text, is logged, and the server keeps serving."""
    import logging

    import pytest

    from qemu.qmp import ExecuteError, QMPClient

    def broken(args):
        raise ValueError('handler bug')

    async def broken_async(args):
        raise KeyError('async bug')

    async with QMPTestServer() as server:
        server.on('broken', broken)
        server.on('broken-async', broken_async)
        server.on('query-status', {'status': 'running'})
        qmp = QMPClient()
        await qmp.connect(await server.start())
        with caplog.at_level(logging.ERROR, logger='qemu.qmp.testing'):
            for name, text in (('broken', 'handler bug'),
                               ('broken-async', 'async bug')):
                with pytest.raises(ExecuteError, match=text) as info:
                    await qmp.execute(name)
                assert info.value.error_class == 'GenericError'
            assert await qmp.execute('query-status') == {'status': 'running'}
            with pytest.raises(ExecuteError, match='handler bug'):
                await qmp.execute('broken', oob=True)
        assert any('handler bug' in r.getMessage() for r in caplog.records)
        await qmp.disconnect()


async def test_second_client_waits_its_turn_and_close_ends_both():
    """Like QEMU's monitor, a second client is served once the first has
    gone; close() ends a client still waiting its turn too, cleanly."""
    import asyncio

    from qemu.qmp import QMPClient

    async with QMPTestServer() as server:
        address = await server.start()
        first, second = QMPClient('first'), QMPClient('second')
        await first.connect(address)
        waiting = asyncio.create_task(second.connect(address))
        await server.wait_until(lambda: server.queued == 1)
        assert not waiting.done()
        await first.disconnect()
        await asyncio.wait_for(waiting, 5)
        assert server.connections == 2
        third = asyncio.create_task(QMPClient('third').connect(address))
        await server.wait_until(lambda: server.queued == 1)
    # close() ended the second client's session and the waiting third.
    with pytest.raises(EOFError):
        await second.disconnect()
    with pytest.raises(ConnectError):
        await asyncio.wait_for(third, 5)


async def test_demo_server():
    """demo_server() plays a small QEMU: stop and cont change the status
    and emit events; quit is refused; query-commands lists all."""
    from qemu.qmp import ExecuteError, QMPClient
    from qemu.qmp.testing import demo_server

    async with demo_server() as server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        await stop_and_cont(qmp)
        with pytest.raises(ExecuteError):
            await qmp.execute('quit')
        names = {c['name'] for c in await qmp.execute('query-commands')}
        assert {'query-status', 'stop', 'cont', 'quit'} <= names
        await qmp.disconnect()
