"""
Property-based fuzzing of the client's input path (hypothesis).

A fake server sends a random interleaving of events and replies to
pending executes, cut into random chunks, optionally corrupted at a
random place.  Whatever happens, every reply and event the server sent
before the corruption is delivered, in order; every other execute fails
with ExecInterruptedError; disconnect() raises a ProtocolError only when
the stream was corrupted; the client ends IDLE with no task left.
"""

import asyncio
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from qemu.qmp import ExecInterruptedError, QMPClient, Runstate
from qemu.qmp.error import ProtocolError
from qemu.qmp.testing import NO_REPLY, QMPTestServer

EXECUTES = 6

# What can break a stream: each makes the line it lands in invalid.
CORRUPTIONS = [b'\x00', b'\xff\xfe', b'{', b'[1]\n', b'}}}\n', b'"\n']


@st.composite
def sessions(draw):
    events = draw(st.integers(min_value=0, max_value=15))
    order = draw(st.permutations(
        [('reply', n) for n in range(EXECUTES)] +
        [('event', n) for n in range(events)]))
    cuts = draw(st.lists(st.integers(min_value=1, max_value=4000),
                         max_size=8))
    corrupt = draw(st.none() | st.tuples(
        st.integers(min_value=0, max_value=len(order)),
        st.sampled_from(CORRUPTIONS)))
    return order, cuts, corrupt


async def run_session(order, cuts, corrupt):
    async with QMPTestServer() as server:
        server.on('work', lambda args: NO_REPLY)
        qmp = QMPClient('fuzz')
        await qmp.connect(await server.socketpair())
        tasks = [asyncio.create_task(qmp.execute('work', {'n': n}))
                 for n in range(EXECUTES)]
        received = await server.wait_received(EXECUTES + 1)
        ids = {m['arguments']['n']: m['id'] for m in received[1:]}

        lines = []
        for kind, n in order:
            if kind == 'reply':
                lines.append(json.dumps({'return': n, 'id': ids[n]}))
            else:
                lines.append(json.dumps({'event': 'E', 'data': {'n': n}}))
        encoded = [line.encode() + b'\r\n' for line in lines]
        intact = len(encoded)
        if corrupt is not None:
            where, junk = corrupt
            encoded.insert(where, junk + b'\n')
            intact = where
        stream = b''.join(encoded)
        points = sorted({c % (len(stream) + 1) for c in cuts}
                        | {0, len(stream)})
        for start, end in zip(points, points[1:]):
            await server.send_raw(stream[start:end])
        if corrupt is None:
            await server.hang_up()

        results = await asyncio.gather(*tasks, return_exceptions=True)
        delivered = order[:intact]
        replied = {n for kind, n in delivered if kind == 'reply'}
        for n, result in enumerate(results):
            if n in replied:
                assert result == n
            else:
                assert isinstance(result, ExecInterruptedError), result

        expected_events = [n for kind, n in delivered if kind == 'event']
        seen = [event['data']['n'] for event in qmp.events.clear()]
        assert seen == expected_events

        try:
            await qmp.disconnect()
        except ProtocolError:
            assert corrupt is not None
        except EOFError:
            pass
        assert qmp.runstate is Runstate.IDLE
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_random_streams(session):
    """Random splits, interleavings and corruptions keep the invariants."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_session(*session))
    finally:
        loop.close()
