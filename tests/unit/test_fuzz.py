"""
Property-based fuzzing of the session core (hypothesis), which both
clients drive: fuzzed once here, and the clients checked against each
other on fixed transcripts (test_differential.py).

A server's stream: the greeting, the negotiation's reply, then a random
interleaving of events and replies to pending commands (some abandoned),
cut into random chunks, optionally corrupted at a random place.  Whatever
happens, every reply and event sent before the corruption is delivered,
in order, each reply to its own waiter and never to an abandoned one;
every other waiter is handed back when the session ends; the session ends
with a ProtocolError exactly when the stream was corrupted, and with a
plain EOFError otherwise.
"""

import json
import logging

from hypothesis import given, settings, strategies as st

from qemu.qmp.core import (
    Negotiated,
    Phase,
    Reply,
    SessionCore,
    SessionEnded,
)
from qemu.qmp.error import ProtocolError
from qemu.qmp.message import Message
from qemu.qmp.models import Greeting

COMMANDS = 6
LOGGER = logging.getLogger('qemu.qmp.test_fuzz')
GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\r\n'

# What can break a stream: each makes the line it lands in invalid.
CORRUPTIONS = [b'\x00', b'\xff\xfe', b'{', b'[1]\n', b'}}}\n', b'"\n',
               b'[' * 3000 + b'\n']


@st.composite
def sessions(draw):
    events = draw(st.integers(min_value=0, max_value=15))
    order = draw(st.permutations(
        [('reply', n) for n in range(COMMANDS)] +
        [('event', n) for n in range(events)]))
    abandoned = draw(st.sets(st.integers(0, COMMANDS - 1)))
    cuts = draw(st.lists(st.integers(min_value=1, max_value=4000),
                         max_size=8))
    corrupt = draw(st.none() | st.tuples(
        st.integers(min_value=0, max_value=len(order)),
        st.sampled_from(CORRUPTIONS)))
    return order, abandoned, cuts, corrupt


@settings(max_examples=400, deadline=None)
@given(sessions())
def test_random_streams(session):
    """Random splits, interleavings, abandons and corruptions keep the
    invariants."""
    order, abandoned, cuts, corrupt = session
    core: SessionCore[int] = SessionCore(LOGGER)

    lines = [GREETING, b'{"return": {}}\r\n']
    ids = {}
    for n in range(COMMANDS):
        exec_id, _ = core.prepare(Message({'execute': 'work'}), True)
        ids[n] = exec_id
    for kind, n in order:
        msg = {'return': n, 'id': ids[n]} if kind == 'reply' \
            else {'event': 'E', 'data': {'n': n}}
        lines.append(json.dumps(msg).encode() + b'\r\n')
    intact = len(order)
    if corrupt is not None:
        where, junk = corrupt
        lines.insert(where + 2, junk + b'\n')
        intact = where
    stream = b''.join(lines)
    points = sorted({c % (len(stream) + 1) for c in cuts}
                    | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:])] + [b'']

    replies, events, ended = {}, [], None
    for chunk in chunks:
        core.receive_data(chunk)
        while ended is None:
            item = core.next_event()
            if item is None:
                break
            if type(item) is Greeting:
                core.negotiation_command()
            elif type(item) is Negotiated:
                # The session runs: the commands are sent now.
                for n in range(COMMANDS):
                    key = core.add_pending(ids[n], n)
                    if n in abandoned:
                        core.abandon(key, n)
            elif type(item) is Reply:
                assert item.waiter not in replies
                replies[item.waiter] = item.msg['return']
            elif type(item) is Message:
                events.append(item['data']['n'])
            else:
                assert type(item) is SessionEnded
                ended = item.reason

    delivered = order[:intact]
    assert replies == {n: n for kind, n in delivered
                       if kind == 'reply' and n not in abandoned}
    assert events == [n for kind, n in delivered if kind == 'event']
    assert sorted(core.take_waiters()) == sorted(
        set(range(COMMANDS)) - abandoned - set(replies))
    assert core.phase is Phase.ENDED
    if corrupt is None:
        assert type(ended) is EOFError
    else:
        assert isinstance(ended, ProtocolError)
