"""
Both clients, one transcript: the same scripted server bytes must give
`QMPClient` and the blocking `QEMUMonitorProtocol` the same reply or error,
the same events, the same reason for the end of the session, and the same
log lines at INFO and above.

Each transcript is what a server sends after the handshake, in answer to
the first command (``@ID@`` stands for that command's id); then it hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from typing import Any, List, NamedTuple, Optional, Tuple

import pytest

from qemu.qmp import QMPClient, StateError
from qemu.qmp.codec import DEFAULT_LIMIT
from qemu.qmp.error import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol


GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, '
            b'"major": 7}, "package": ""}, "capabilities": []}}\r\n')

REPLY = b'{"return": {"ok": 1}, "id": @ID@}\r\n'


def event(name: str) -> bytes:
    return (b'{"event": "%s", "data": {}, "timestamp": {"seconds": 1, '
            b'"microseconds": 2}}\r\n' % name.encode())


# Too deep for every Python's decoder (3.13's takes 5,000 levels).
DEEP = b'{"event": "DEEP", "data": ' + b'[' * 20000 + b']' * 20000 + b'}\r\n'
HUGE = b'{"return": "' + b'x' * DEFAULT_LIMIT + b'", "id": @ID@}\r\n'
HUGE_EVENT = b'{"event": "BIG", "data": "' + b'x' * DEFAULT_LIMIT + b'"}\r\n'


class Outcome(NamedTuple):
    reply: Tuple[str, Any]      # ('value', v) or ('error', class name)
    events: List[str]
    end: str                    # the class of why the session ended


class Case(NamedTuple):
    script: bytes
    expected: Outcome


CASES = {
    'normal': Case(REPLY, Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'interleaved events': Case(
        event('A') + REPLY + event('B'),
        Outcome(('value', {'ok': 1}), ['A', 'B'], 'EOFError')),
    'error reply': Case(
        b'{"error": {"class": "GenericError", "desc": "no"}, "id": @ID@}\n',
        Outcome(('error', 'ExecuteError'), [], 'EOFError')),
    'neither return nor error': Case(
        b'{"id": @ID@}\n', Outcome(('error', 'BadReplyError'), [],
                                   'EOFError')),
    'garbage after the reply': Case(
        REPLY + event('A') + b'not json\n' + event('LOST'),
        Outcome(('value', {'ok': 1}), ['A'], 'NotQMPServerError')),
    'garbage before the reply': Case(
        b'{"oops\n' + REPLY,
        Outcome(('error', 'ExecInterruptedError'), [],
                'DeserializationError')),
    'not an object': Case(
        b'[1, 2]\n' + REPLY,
        Outcome(('error', 'ExecInterruptedError'), [],
                'UnexpectedTypeError')),
    'not UTF-8': Case(
        REPLY + b'{"event": "\xff\xfe"}\n',
        Outcome(('value', {'ok': 1}), [], 'DeserializationError')),
    'truncated after the reply': Case(
        REPLY + b'{"event": "CU',
        Outcome(('value', {'ok': 1}), [], 'TruncatedMessageError')),
    'truncated reply': Case(
        b'{"return": {}, "id"',
        Outcome(('error', 'ExecInterruptedError'), [],
                'TruncatedMessageError')),
    'last message without newline': Case(
        REPLY + event('LAST').rstrip(),
        Outcome(('value', {'ok': 1}), ['LAST'], 'EOFError')),
    'hang-up before the reply': Case(
        b'', Outcome(('error', 'ExecInterruptedError'), [], 'EOFError')),
    'id-less error': Case(
        event('A') + b'{"error": {"class": "GenericError", '
        b'"desc": "JSON parse error"}}\n' + REPLY,
        Outcome(('error', 'ExecInterruptedError'), ['A'],
                'ServerParseError')),
    'duplicate ids': Case(
        REPLY + REPLY.replace(b'"ok": 1', b'"ok": 2'),
        Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'foreign-typed ids': Case(
        b'{"return": 1, "id": 1}\n{"return": 2, "id": null}\n'
        b'{"return": 3, "id": [@ID@]}\n' + REPLY,
        Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'unknown id': Case(
        b'{"return": {}, "id": "nobody"}\n' + REPLY,
        Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'event without a name': Case(
        b'{"event": 5}\n' + REPLY,
        Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'unexpected message': Case(
        b'{"hello": "world"}\n' + REPLY,
        Outcome(('value', {'ok': 1}), [], 'EOFError')),
    'deep nesting after the reply': Case(
        REPLY + DEEP,
        Outcome(('value', {'ok': 1}), [], 'DeserializationError')),
    'over-long reply': Case(
        event('A') + HUGE + event('B'),
        Outcome(('error', 'MessageTooLongError'), ['A', 'B'], 'EOFError')),
    'over-long event': Case(
        REPLY + event('A') + HUGE_EVENT + event('LOST'),
        Outcome(('value', {'ok': 1}), ['A'], 'MessageTooLongError')),
}


def serve(sock: socket.socket, script: bytes) -> None:
    """Play a QMP server for one session: greet, accept the negotiation,
    answer the first command with ``script``, hang up."""
    with sock, sock.makefile('rb') as incoming:
        sock.sendall(GREETING)
        incoming.readline()  # qmp_capabilities
        sock.sendall(b'{"return": {}}\r\n')
        command = json.loads(incoming.readline())
        exec_id = json.dumps(command['id']).encode()
        try:
            sock.sendall(script.replace(b'@ID@', exec_id))
        except OSError:
            pass  # the client may hang up first, on an error


def start_server(script: bytes) -> Tuple[socket.socket, threading.Thread]:
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=serve, args=(theirs, script))
    thread.start()
    return ours, thread


def describe(err: BaseException) -> Tuple[str, Any]:
    return ('error', type(err).__name__)


async def run_async(script: bytes) -> Outcome:
    sock, thread = start_server(script)
    qmp = QMPClient()
    await qmp.connect(sock)
    reply: Tuple[str, Any]
    try:
        reply = ('value', await qmp.execute('probe'))
    except QMPError as err:
        reply = describe(err)
    events = []
    end = 'EOFError'
    try:
        async for received in qmp.session_events():
            events.append(received['event'])
    except Exception as err:  # noqa: B902 - the end is what is compared
        end = type(err).__name__
    await asyncio.to_thread(thread.join)
    return Outcome(reply, events, end)


def run_blocking(script: bytes) -> Outcome:
    sock, thread = start_server(script)
    qmp = QEMUMonitorProtocol(sock)
    qmp.connect()
    reply: Tuple[str, Any]
    try:
        reply = ('value', qmp.cmd('probe'))
    except QMPError as err:
        reply = describe(err)
    events = []
    while True:
        try:
            received = qmp.pull_event(wait=True)
        except EOFError:
            break
        assert received is not None
        events.append(received['event'])
    with pytest.raises(StateError) as info:
        qmp.cmd('probe')
    cause: Optional[BaseException] = info.value.__cause__
    qmp.close()
    thread.join()
    return Outcome(reply, events, type(cause).__name__)


def logged(caplog: pytest.LogCaptureFixture) -> List[Tuple[str, str]]:
    """What the library said at INFO and above."""
    lines = [(record.levelname, record.getMessage())
             for record in caplog.records
             if record.name.startswith('qemu.qmp')
             and record.levelno >= logging.INFO]
    caplog.clear()
    return lines


@pytest.mark.parametrize('name', list(CASES))
async def test_both_clients_agree(name, caplog):
    """The transcript gives both clients the expected reply, events and
    end, and makes them log the same lines at the same levels."""
    case = CASES[name]
    caplog.set_level(logging.INFO, logger='qemu.qmp')
    outcome_async = await run_async(case.script)
    logs_async = logged(caplog)
    outcome_blocking = await asyncio.to_thread(run_blocking, case.script)
    logs_blocking = logged(caplog)
    assert outcome_async == case.expected
    assert outcome_blocking == case.expected
    assert logs_async == logs_blocking
