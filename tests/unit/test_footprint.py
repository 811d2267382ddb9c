"""
What an idle session costs: thousands are held in one process (one per VM
of a node), so a regression here is a regression for them.

The server is bench/fleet_server.py in a process of its own, so that only
the client's allocations are counted.
"""

import asyncio
import gc
import os
import sys
import tracemalloc

import pytest

from qemu.qmp import ExecuteError, Message, QMPClient
from qemu.qmp.testing import CommandError

FLEET_SERVER = os.path.join(os.path.dirname(__file__), '..', '..', 'bench',
                            'fleet_server.py')

SESSIONS = 300

# Bytes per idle session that tracemalloc may count, by Python: older ones
# have larger coroutine frames.  Measured: 10.2 KB on 3.9, 10.8 KB on
# 3.10, 8.2 KB on 3.11, 8.8 KB on 3.12, 9.0 KB on 3.13 (17.7 KB on 3.11
# before issue 22).
LIMIT = 11.5 * 1024 if sys.version_info < (3, 11) else 9.5 * 1024


async def test_idle_session_costs_under_ten_kilobytes(tmp_path):
    """Connected, negotiated and idle, a session holds a few kilobytes:
    no queues, tasks or decoded messages it does not need yet."""
    path = str(tmp_path / 'fleet.sock')
    server = await asyncio.create_subprocess_exec(
        sys.executable, FLEET_SERVER, path, stdout=asyncio.subprocess.PIPE)
    clients = []
    try:
        assert await server.stdout.readline() == b'ready\n'
        # The first sessions pay for what every later one shares (logger,
        # caches, the event loop's own tables).
        for _ in range(5):
            clients.append(QMPClient())
            await clients[-1].connect(path)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            fleet = [QMPClient() for _ in range(SESSIONS)]
            for qmp in fleet:
                await qmp.connect(path)
            gc.collect()
            per_session = \
                (tracemalloc.get_traced_memory()[0] - before) / SESSIONS
        finally:
            tracemalloc.stop()
        clients.extend(fleet)
        assert per_session < LIMIT, \
            f"an idle session holds {per_session:.0f} bytes"
    finally:
        for qmp in clients:
            await qmp.disconnect()
        server.kill()
        await server.wait()


def _reader_wait(qmp):
    """What the reader task waits in: its coroutines, outermost first, then
    what the innermost one awaits."""
    task = qmp._conn.reader_task
    found = []
    coro = task.get_coro()
    while asyncio.iscoroutine(coro):
        found.append(coro)
        coro = coro.cr_await
    found.append(task._fut_waiter)  # (asyncio's own: the future awaited)
    return found


async def test_messages_make_no_new_long_lived_objects(client, server):
    """The reader waits for every message in the same wait (coroutines and
    future): new ones per message would outlive it, as long as the
    session stays idle, and with thousands of sessions the garbage
    collector would sweep them all again and again (docs/performance.rst,
    "Many VMs")."""
    await client.execute('query-status')
    waiting = _reader_wait(client)
    assert len(waiting) > 1 and isinstance(waiting[-1], asyncio.Future)
    await client.execute('query-status')
    await server.emit_event('STOP')
    await client.events.get()
    await client.execute('query-status')
    assert _reader_wait(client) == waiting


async def test_the_line_buffer_keeps_its_list(client, server):
    """Lines are split into the buffer's own list, not into a new list
    per chunk that the session then keeps: with a command on every one of
    10,000 sessions, a new list each would be 10,000 more objects promoted
    to the oldest generation, and more full collections (33 instead of 36
    in 400,000 commands, measured)."""
    await client.execute('query-status')
    lines = client._conn.lines._lines
    await client.execute('query-status')
    await server.emit_event('STOP')
    await client.events.get()
    assert client._conn.lines._lines is lines


async def test_a_command_in_flight_does_not_hold_its_message(client, server):
    """Once written, the command's message is not kept while its reply is
    awaited (one command in flight per session, on thousands of sessions,
    is that many messages more for the garbage collector); an error still
    names the command as it was sent."""
    replies = asyncio.Queue()
    server.on('slow', lambda arguments: replies.get())

    def messages_of(command):
        gc.collect()
        return [obj for obj in gc.get_objects()
                if isinstance(obj, Message) and obj.get('execute') == command]

    for timeout in (None, 30):
        running = asyncio.ensure_future(
            client.execute('slow', {'n': 1}, timeout=timeout))
        await server.wait_for_command('slow')
        assert messages_of('slow') == []
        await replies.put({'n': 2})
        assert await running == {'n': 2}
        server.received.clear()
    server.on('bad', CommandError('GenericError', 'no'))
    with pytest.raises(ExecuteError) as caught:
        await client.execute('bad', {'n': 3})
    sent = caught.value.sent
    assert (sent['execute'], sent['arguments']) == ('bad', {'n': 3})
    assert sent['id'] == caught.value.received['id']


_INSTANCE_DICT = next(vars(cls)['__dict__'] for cls in QMPClient.__mro__
                      if '__dict__' in vars(cls))


class DictReadsCounted(QMPClient):
    """Counts reads of its ``__dict__``."""

    dict_reads = 0

    @property  # type: ignore[misc]
    def __dict__(self):
        DictReadsCounted.dict_reads += 1
        return _INSTANCE_DICT.__get__(self)


async def test_a_session_never_reads_the_clients_dict(server):
    """Nothing in a session reads the client's ``__dict__``: on Python
    3.11 and 3.12 that moves its attributes out of the object into a dict
    of their own for good, and every attribute lookup after it takes
    about 2.5 times as long."""
    qmp = DictReadsCounted('vm1')
    await qmp.connect(server.address)
    await qmp.execute('query-status')
    await qmp.execute('query-status', timeout=30)
    await qmp.execute_msg(qmp.make_execute_msg('query-status'))
    await server.emit_event('STOP')
    await qmp.events.get()
    await qmp.disconnect()
    assert DictReadsCounted.dict_reads == 0
