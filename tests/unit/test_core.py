"""SessionCore: the session's rules, fed plain bytes, with no I/O."""

import ast
import inspect
import logging

import pytest

from qemu.qmp import core as core_module
from qemu.qmp.codec import MessageTooLongError, TruncatedMessageError
from qemu.qmp.core import (
    ABANDONED_KEPT,
    NO_ID,
    Negotiated,
    Phase,
    Reply,
    ReplyFailed,
    SessionCore,
    SessionEnded,
)
from qemu.qmp.handshake import GreetingError, NegotiationError
from qemu.qmp.message import (
    DeserializationError,
    Message,
    NotQMPServerError,
)
from qemu.qmp.models import Greeting
from qemu.qmp.qmp_client import ExecuteError, ServerParseError

LOGGER = logging.getLogger('qemu.qmp.test_core')
GREETING = b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n'


def running(**kwargs):
    return SessionCore(LOGGER, await_greeting=False, negotiate=False,
                       **kwargs)


def command(core, name='work', waiter='caller'):
    """Prepare and register a command; return its id and key."""
    exec_id, _ = core.prepare(Message({'execute': name}), True)
    return exec_id, core.add_pending(exec_id, waiter)


def feed(core, data):
    """Feed ``data``; return every session event it brings."""
    core.receive_data(data)
    out = []
    while True:
        item = core.next_event()
        if item is None or type(item) is SessionEnded:
            return out + ([item] if item is not None else [])
        out.append(item)


def reply(exec_id, value=None):
    return Message({'return': {} if value is None else value,
                    'id': exec_id}).__bytes__() + b'\n'


def test_core_does_no_io():
    """core.py imports no asyncio, socket, threading or select."""
    tree = ast.parse(inspect.getsource(core_module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
    assert not imported & {'asyncio', 'socket', 'threading', 'select'}


# ---------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------

def test_prepare_assigns_ids_and_leaves_the_message_alone():
    """prepare() gives each command an id of its own, in a copy."""
    core = running()
    msg = Message({'execute': 'stop'})
    first, wire = core.prepare(msg, True)
    second, _ = core.prepare(msg, True)
    assert first != second and wire['id'] == first and 'id' not in msg


@pytest.mark.parametrize('msg, assign, match', [
    ({'exec': 'x'}, True, "'execute' or 'exec-oob'"),
    ({'exec-oob': 'x'}, False, "requires an 'id'"),
    ({'execute': 'x', 'id': '__qmp#1'}, False, 'reserved'),
])
def test_prepare_refuses_bad_commands(msg, assign, match):
    """A command that is none, an exec-oob without id, or a caller's id
    in the client's own range raise ValueError."""
    with pytest.raises(ValueError, match=match):
        running().prepare(Message(msg), assign)


def test_prepare_keeps_caller_ids_and_idless_commands():
    """Without assign_id, a command keeps its id, or goes without one."""
    core = running()
    assert core.prepare(Message({'execute': 'x', 'id': 7}), False)[0] == 7
    assert core.prepare(Message({'execute': 'x'}), False)[0] is NO_ID


def test_duplicate_pending_id_is_refused():
    """Two commands waiting on the same id: the second is refused."""
    core = running()
    core.add_pending(1, 'first')
    with pytest.raises(ValueError, match='in use'):
        core.add_pending(1.0, 'second')  # the same JSON number


def test_ids_of_any_json_type_route():
    """Replies route by JSON value: null, lists and objects are ids."""
    core = running()
    for exec_id in (None, [1, 'a'], {'b': 2}, 5):
        core.add_pending(exec_id, exec_id)
    events = feed(core, b''.join(reply(i) for i in
                                 (None, [1, 'a'], {'b': 2}, 5.0)))
    assert [event.waiter for event in events] == [None, [1, 'a'],
                                                  {'b': 2}, 5]


def test_first_of_two_replies_with_one_id_wins(caplog):
    """The first reply with an id goes to its command; the second is a
    reply with an unknown id, logged at WARNING."""
    core = running()
    exec_id, _ = command(core)
    events = feed(core, reply(exec_id, 1) + reply(exec_id, 2))
    assert [event.msg['return'] for event in events] == [1]
    assert caplog.records[-1].levelname == 'WARNING'


def test_abandoned_replies_drop_quietly_and_are_bounded(caplog):
    """A late reply to an abandoned command is dropped at DEBUG; only
    the newest ABANDONED_KEPT are remembered."""
    caplog.set_level(logging.DEBUG, logger=LOGGER.name)
    core = running()
    ids = []
    for _ in range(ABANDONED_KEPT + 1):
        exec_id, key = command(core)
        core.abandon(key, 'caller')
        ids.append(exec_id)
    assert len(core) == 0
    assert feed(core, reply(ids[-1]) + reply(ids[0])) == []
    levels = [(r.levelname, 'stopped waiting' in r.getMessage())
              for r in caplog.records]
    assert levels == [('DEBUG', True), ('WARNING', False)]


def test_abandon_after_the_reply_changes_nothing():
    """abandon() after the reply came (the normal finally: path) does not
    mark the id abandoned."""
    core = running()
    exec_id, key = command(core)
    feed(core, reply(exec_id))
    core.abandon(key, 'caller')
    assert not core._abandoned  # white-box


def test_idless_replies_go_in_order_even_to_abandoned_commands():
    """Id-less replies answer id-less commands in order; one whose caller
    stopped waiting keeps its place, and its reply is dropped."""
    core = running()
    for waiter in ('a', 'b', 'c'):
        core.add_pending(NO_ID, waiter)
    core.abandon(NO_ID, 'b')
    events = feed(core, b'{"return": 1}\n{"return": 2}\n{"return": 3}\n')
    assert [(e.waiter, e.msg['return']) for e in events] == [('a', 1),
                                                             ('c', 3)]


def test_idless_error_ends_the_session_unless_resyncing():
    """An id-less error with no id-less command waiting ends the session
    with ServerParseError, except while resynchronising."""
    core = running()
    core.resyncing = 1
    assert feed(core, b'{"error": {"class": "x", "desc": "y"}}\n') == []
    core.resyncing = 0
    ended, = feed(core, b'{"error": {"class": "x", "desc": "y"}}\n')
    assert isinstance(ended.reason, ServerParseError)
    assert core.phase is Phase.ENDED


def test_take_waiters_and_interrupted():
    """When the session ends, every waiter is handed back once, and
    interrupted() says why."""
    core = running()
    command(core, waiter='x')
    core.add_pending(NO_ID, 'y')
    ended, = feed(core, b'')
    assert sorted(core.take_waiters()) == ['x', 'y']
    assert core.take_waiters() == []
    error = core.interrupted()
    assert error.__cause__ is ended.reason
    assert 'ended before the reply' in str(error)


# ---------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------

def test_greeting_then_negotiation():
    """Greeting, then qmp_capabilities enabling oob; events during the
    negotiation are delivered; the reply makes the session run."""
    core = SessionCore(LOGGER)
    greeting, = feed(core, GREETING)
    assert type(greeting) is Greeting and core.phase is Phase.NEGOTIATING
    sent = core.negotiation_command()
    assert sent == {'execute': 'qmp_capabilities',
                    'arguments': {'enable': ['oob']}}
    event, done = feed(core, b'{"event": "E"}\n{"return": {}}\n')
    assert event['event'] == 'E' and type(done) is Negotiated
    assert core.phase is Phase.ESTABLISHED


@pytest.mark.parametrize('first, cause', [
    (b'{"hello": 1}\n', KeyError), (b'garbage\n', DeserializationError),
    (b'{"QMP": {"vers', TruncatedMessageError)])
def test_bad_greeting(first, cause):
    """A first message that is no greeting ends the session with
    GreetingError, whatever was wrong."""
    core = SessionCore(LOGGER)
    ended, = feed(core, first) or feed(core, b'')
    assert isinstance(ended.reason, GreetingError)
    assert isinstance(ended.reason.exc, cause)


@pytest.mark.parametrize('await_greeting', [True, False])
def test_a_peer_that_is_not_qmp_is_told_as_such(await_greeting):
    """A line that does not even start as JSON (an HMP monitor's banner,
    an HTTP server's answer) is a NotQMPServerError showing what the peer
    sent (a DeserializationError); instead of a greeting, it is what the
    GreetingError wraps, as any bad greeting."""
    core = SessionCore(LOGGER, await_greeting=await_greeting,
                       negotiate=await_greeting)
    ended, = feed(core, b'HTTP/1.1 400 Bad Request\r\n\r\n')
    reason = ended.reason.exc if await_greeting else ended.reason
    assert isinstance(reason, NotQMPServerError)
    assert isinstance(reason, DeserializationError)
    assert str(reason) == \
        "Not a QMP server: it sent b'HTTP/1.1 400 Bad Request'"


def test_qemus_human_monitor_is_named():
    """QEMU's human monitor is the likeliest wrong socket: the error says
    what it is, and where QMP is."""
    core = SessionCore(LOGGER)
    ended, = feed(core, b"QEMU 7.2.22 monitor - type 'help' for more "
                        b"information\r\n(qemu) ")
    assert "it is QEMU's human monitor (HMP): connect to a QMP socket " \
        "(-qmp, or -mon mode=control)" in str(ended.reason)


def test_broken_json_is_no_stranger():
    """A line that starts as JSON and breaks is a DeserializationError."""
    core = running()
    ended, = feed(core, b'{"return": \n')
    assert type(ended.reason) is DeserializationError


@pytest.mark.parametrize('answer, cause', [
    (b'{"error": {"class": "GenericError", "desc": "no"}}\n', ExecuteError),
    (b'[]\n', Exception)])
def test_refused_negotiation(answer, cause):
    """A refused or garbled negotiation ends with NegotiationError."""
    core = SessionCore(LOGGER)
    feed(core, GREETING)
    core.negotiation_command()
    ended, = feed(core, answer)
    assert isinstance(ended.reason, NegotiationError)
    assert isinstance(ended.reason.exc, cause)


def test_reply_before_negotiation_was_sent():
    """A non-event between greeting and our qmp_capabilities is a broken
    server: NegotiationError."""
    core = SessionCore(LOGGER)
    feed(core, GREETING)
    ended, = feed(core, b'{"return": {}}\n')
    assert isinstance(ended.reason, NegotiationError)


# ---------------------------------------------------------------------
# Limits and the end of the session
# ---------------------------------------------------------------------

def test_over_long_reply_fails_only_its_command():
    """A reply over the limit whose id shows fails its waiter; the
    session goes on."""
    core = running(limit=64)
    exec_id, _ = command(core)
    huge = Message({'return': 'x' * 100, 'id': exec_id}).__bytes__()
    failed, event = feed(core, huge + b'\n{"event": "E"}\n')
    assert type(failed) is ReplyFailed and failed.waiter == 'caller'
    assert isinstance(failed.error, MessageTooLongError)
    assert event['event'] == 'E' and core.phase is Phase.ESTABLISHED


def test_end_is_logged_once_and_repeated(caplog):
    """The end is logged once (INFO for a hang-up); later calls return
    the same SessionEnded again, logging nothing."""
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    core = running()
    first, = feed(core, b'')
    again = core.next_message()
    assert type(again) is SessionEnded and again.reason is first.reason
    assert [r.levelname for r in caplog.records] == ['INFO']


def test_close_logs_nothing(caplog):
    """The client's own close() ends the session silently."""
    core = running()
    core.close()
    feed(core, b'')
    assert core.phase is Phase.ENDED and not caplog.records


def test_messages_before_a_break_are_all_delivered():
    """Everything before a broken line is delivered, then the end."""
    core = running()
    exec_id, _ = command(core)
    events = feed(core, b'{"event": "A"}\n' + reply(exec_id) + b'nope\n'
                  + b'{"event": "LOST"}\n')
    assert [type(e) for e in events] == [Message, Reply, SessionEnded]
    assert isinstance(events[-1].reason, DeserializationError)
