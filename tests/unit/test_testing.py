"""The public test server's own promises: ServerThread."""

import asyncio
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


# -- input QEMU answers with an error and goes on with -----------------------

async def _raw_session(server):
    """A negotiated raw connection to ``server``: (reader, writer)."""
    import asyncio
    import json

    reader, writer = await asyncio.open_unix_connection(
        await server.start(), limit=1 << 20)
    assert 'QMP' in json.loads(await reader.readline())
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    assert json.loads(await reader.readline()) == {'return': {}}
    return reader, writer


def _nested(depth: int) -> bytes:
    """A command whose arguments nest ``depth`` levels in all."""
    inner = depth - 2   # the command object and its arguments object
    return (b'{"execute": "x", "arguments": {"a": ' + b'[' * inner
            + b']' * inner + b'}}\n')


@pytest.mark.parametrize('line, desc', [
    # As QEMU 7.2 answers (checked against qemu-system-x86_64).
    (_nested(5000), 'JSON nesting depth limit exceeded'),
    (_nested(1025), 'JSON nesting depth limit exceeded'),
    (b'\xc3\x28\n', 'JSON parse error'),
    (b'{"execute": "query-status", "id": "\xc3\x28"}\n', 'JSON parse error'),
    (b'{bad json}\n', 'JSON parse error'),
    (b'[1, 2]\n', 'QMP input must be a JSON object'),
    (b'null\n', 'QMP input must be a JSON object'),
])
async def test_bad_input_is_answered_and_the_session_goes_on(line, desc):
    """Input QEMU cannot take (too deeply nested, not UTF-8, not JSON, not
    an object) gets an id-less GenericError, as QEMU answers it, and the
    connection goes on serving."""
    import asyncio
    import json

    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        reader, writer = await _raw_session(server)
        writer.write(line)
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply['error']['class'] == 'GenericError'
        assert reply['error']['desc'].startswith(desc)
        assert 'id' not in reply
        writer.write(b'{"execute": "query-status", "id": 1}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 5)) \
            == {'return': {'status': 'running'}, 'id': 1}
        assert server.garbage[-1].strip() == line.strip()
        writer.close()
        await writer.wait_closed()


async def test_line_over_the_size_limit_is_answered(monkeypatch):
    """A message longer than QEMU's 64 MiB limit gets QEMU's id-less
    "JSON token size limit exceeded" error, the rest of the line is
    dropped, and the session goes on."""
    import asyncio
    import json

    from qemu.qmp import testing

    # The limit, made small so the test moves kilobytes, not 64 MiB.
    monkeypatch.setattr(testing, '_MAX_INPUT', 4096)
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        reader, writer = await _raw_session(server)
        for size in (5000, 100_000):     # in one read, and in many
            writer.write(b'{"execute": "x", "arguments": {"s": "'
                         + b'a' * size + b'"}}\n'
                         + b'{"execute": "query-status", "id": 1}\n')
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
            assert reply == {'error': {
                'class': 'GenericError',
                'desc': 'JSON token size limit exceeded'}}
            assert json.loads(await asyncio.wait_for(reader.readline(), 5)) \
                == {'return': {'status': 'running'}, 'id': 1}
        writer.close()
        await writer.wait_closed()


async def test_arguments_that_are_not_an_object_are_refused():
    """Like QEMU, a command whose arguments are not an object is refused
    (with its id) before any handler sees it."""
    import asyncio
    import json

    seen = []
    async with QMPTestServer() as server:
        server.on('x', lambda args: seen.append(args) or {})
        reader, writer = await _raw_session(server)
        writer.write(b'{"execute": "x", "arguments": [1], "id": 7}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 5)) \
            == {'error': {'class': 'GenericError', 'desc': "QMP input "
                          "member 'arguments' must be an object"}, 'id': 7}
        assert not seen
        writer.close()
        await writer.wait_closed()


async def test_connect_to_returns_once_serving(tmp_path):
    """connect_to() (QEMU's client mode) returns once the connection is
    served: a wait_disconnected() right after it waits for that client,
    instead of returning at once because serving had not started yet
    (qmp-shell-wrap's stand-in QEMU exited at once, under load)."""
    path = str(tmp_path / 'listen.sock')
    accepted = asyncio.get_running_loop().create_future()

    async def on_connect(reader, writer):
        accepted.set_result(writer)

    listener = await asyncio.start_unix_server(on_connect, path)
    async with QMPTestServer() as server:
        await server.connect_to(path)
        assert server.connections == 1
        ending = asyncio.ensure_future(server.wait_disconnected())
        await asyncio.sleep(0)
        assert not ending.done()
        client = await accepted
        client.close()
        await asyncio.wait_for(ending, 10)
    listener.close()
    await listener.wait_closed()
