"""util: exception formatting, decorators and the kept stream helpers."""

import asyncio
import os
import socket
import threading

from qemu.qmp import util
from qemu.qmp.util import Backoff


def test_exception_summary():
    """Summaries name the class, and the message when there is one."""
    assert util.exception_summary(EOFError()) == 'EOFError'
    assert util.exception_summary(OSError(2, 'gone')) == \
        'FileNotFoundError: [Errno 2] gone'


def test_pretty_traceback():
    """The current traceback comes out indented by the prefix."""
    try:
        raise ValueError('inner')
    except ValueError:
        text = util.pretty_traceback(prefix='>> ')
    assert all(line.startswith('>> ') for line in text.splitlines())
    assert 'ValueError: inner' in text


def test_qemu_option_value():
    """Commas are doubled, as QEMU's option syntax wants inside a value;
    nothing else changes."""
    assert util.qemu_option_value('/tmp/a,b,,c/q.sock') == \
        '/tmp/a,,b,,,,c/q.sock'
    assert util.qemu_option_value('plain = text') == 'plain = text'
    assert util.qemu_option_value('') == ''


def test_markers_return_the_function():
    """upper_half and bottom_half change nothing."""
    def func():
        return 1
    assert util.upper_half(func) is func
    assert util.bottom_half(func) is func


async def test_stream_helpers():
    """flush, is_closing, wait_closed and create_task still work."""
    ours, theirs = socket.socketpair()
    with theirs:
        _, writer = await asyncio.open_connection(sock=ours)
        writer.write(b'x' * 1000)
        await util.flush(writer)
        assert writer.transport.get_write_buffer_size() == 0
        assert not util.is_closing(writer)
        writer.close()
        assert util.is_closing(writer)
        await util.wait_closed(writer)
    assert await util.create_task(asyncio.sleep(0, 'done')) == 'done'


def test_asyncio_run():
    """asyncio_run runs a coroutine to completion."""
    async def answer():
        return 42
    # In a thread of its own: on Python 3.9, asyncio.run() in the test's
    # thread would replace (and leak) pytest-asyncio's event loop.
    results = []
    thread = threading.Thread(
        target=lambda: results.append(util.asyncio_run(answer())))
    thread.start()
    thread.join(10)
    assert results == [42]


def test_get_or_create_event_loop_in_a_thread_without_one():
    """A thread without a loop gets a new one, set for it; the next call
    returns the same loop."""
    found = []

    def run():
        loop = util.get_or_create_event_loop()
        found.append((loop, util.get_or_create_event_loop(),
                      asyncio.get_event_loop_policy().get_event_loop()))
        asyncio.set_event_loop(None)
        loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    first, second, current = found[0]
    assert first is second is current


async def test_get_or_create_event_loop_when_running():
    """Inside a running loop, that loop."""
    assert util.get_or_create_event_loop() is asyncio.get_running_loop()


async def test_the_loop_the_suite_asked_for():
    """``QMP_TEST_LOOP=uvloop`` really runs the tests on uvloop (the
    suite's second run in ``make check``)."""
    loop = asyncio.get_running_loop()
    on_uvloop = type(loop).__module__.startswith('uvloop')
    assert on_uvloop == (os.environ.get('QMP_TEST_LOOP') == 'uvloop')


def test_backoff_doubles_and_a_settled_session_resets_it():
    backoff = Backoff(first=0.05, longest=0.3, settled=10.0)
    assert [backoff.after_session(0.1) for _ in range(4)] \
        == [0.05, 0.1, 0.2, 0.3]
    assert backoff.after_failure() == 0.3
    assert backoff.after_session(10.0) == 0.0  # it had settled: at once
    assert backoff.after_failure() == 0.05     # and from the start again
    assert backoff.after_session(9.9) == 0.1
