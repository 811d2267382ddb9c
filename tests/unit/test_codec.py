"""The sans-I/O codec: bytes in, messages out, and back; no sockets."""

import json

import pytest
from hypothesis import given, strategies as st

from qemu.qmp.codec import (
    SYNC_BYTE,
    Codec,
    LineBuffer,
    MessageTooLongError,
    TruncatedMessageError,
)
from qemu.qmp.error import ProtocolError
from qemu.qmp.message import (
    DeserializationError,
    Message,
    SerializationError,
    UnexpectedTypeError,
)


_RAISE = object()


def drain_lines(buf, too_long=_RAISE):
    """Every line available now; an over-long one raises, or is
    ``too_long`` in the list when that is given."""
    lines = []
    while True:
        try:
            line = buf.next_line()
        except MessageTooLongError:
            if too_long is _RAISE:
                raise
            line = too_long
        else:
            if line is None:
                return lines
        lines.append(line)


def drain(codec):
    """Every message available now, as plain dicts."""
    out = []
    while (msg := codec.next_message()) is not None:
        out.append(dict(msg))
    return out


# ---------------------------------------------------------------------
# LineBuffer: framing only
# ---------------------------------------------------------------------

def test_many_lines_in_one_chunk():
    """One chunk with several lines yields each, without its newline."""
    buf = LineBuffer(100)
    buf.feed(b'a\nbb\r\nccc\n')
    assert drain_lines(buf) == [b'a', b'bb\r', b'ccc']


def test_line_across_chunks():
    """A line split over many chunks is joined once complete."""
    buf = LineBuffer(100)
    for piece in (b'{"a"', b': ', b'1', b'}'):
        buf.feed(piece)
        assert buf.next_line() is None
    buf.feed(b'\n{"b"')
    assert drain_lines(buf) == [b'{"a": 1}']
    assert buf.take_tail() == b'{"b"'
    assert buf.take_tail() == b''


def test_line_at_limit_is_accepted():
    """A line of exactly `limit` bytes, newline included, is fine."""
    buf = LineBuffer(10)
    buf.feed(b'x' * 9 + b'\n')
    assert drain_lines(buf) == [b'x' * 9]


def test_over_long_complete_line_is_skipped_in_order():
    """A complete line over the limit raises after earlier lines, then
    the lines after it come out."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n' + b'x' * 10 + b'\nlater\n')
    assert buf.next_line() == b'ok'
    with pytest.raises(MessageTooLongError) as info:
        buf.next_line()
    assert info.value.limit == 10
    assert 'readbuflen (10 bytes)' in str(info.value)
    assert isinstance(info.value, ProtocolError)
    assert drain_lines(buf) == [b'later']


def test_over_long_partial_line_keeps_memory_bounded():
    """An unfinished line growing past the limit is dropped as it
    arrives, keeping only its count and its last bytes; it is reported
    at its newline, once, or as soon as it runs past 16 times the limit
    (an endless line)."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n')
    for _ in range(5):
        buf.feed(b'x' * 4)
    assert buf.next_line() == b'ok'
    assert buf.next_line() is None  # not over yet
    buf.feed(b'x' * 100 + b'\nnext\n')
    with pytest.raises(MessageTooLongError) as err:
        buf.next_line()
    assert err.value.size == 121
    assert buf.next_line() == b'next'
    buf.feed(b'y' * 100_000)
    assert buf._tail_len == 0 and not buf._tail  # white-box: none kept
    assert len(buf._skip_tail) <= 512
    with pytest.raises(MessageTooLongError) as err:
        buf.next_line()
    assert err.value.size is None and not err.value.has_reply_id
    buf.feed(b'yyy\nnext\n')
    assert drain_lines(buf) == [b'next']


def test_over_long_tail_in_big_chunk():
    """A big chunk whose unfinished tail breaks the limit is reported
    when the line ends."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n' + b'z' * 20)
    assert buf.next_line() == b'ok'
    assert buf.next_line() is None
    buf.feed(b'z\n')
    with pytest.raises(MessageTooLongError, match='of 22 bytes'):
        buf.next_line()
    assert buf.next_line() is None


def big_reply(reply_id, size=300):
    return (b'{"return": {"blob": "' + b'x' * size + b'", "id": 5}, "id": '
            + json.dumps(reply_id).encode() + b'}\r\n')


@given(st.one_of(st.text(max_size=20), st.integers(), st.none(),
                 st.lists(st.integers(), max_size=3)),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_over_long_reply_names_its_id(reply_id, cuts):
    """However the stream is split, an over-long reply is reported with
    its size and the id read from its end (where QEMU puts it), and the
    stream goes on after it."""
    reply = big_reply(reply_id)
    stream = b'{"event": "A"}\n' + reply + b'{"event": "B"}\n'
    codec = Codec(limit=64)
    seen = []
    for chunk in split(stream, cuts):
        codec.feed(chunk)
        while True:
            try:
                msg = codec.next_message()
            except MessageTooLongError as err:
                seen.append((err.size, err.has_reply_id, err.reply_id))
                continue
            if msg is None:
                break
            seen.append(msg['event'])
    assert seen == ['A', (len(reply), True, reply_id), 'B']


@pytest.mark.parametrize('line', [
    b'{"event": "X", "data": {"blob": "' + b'x' * 100 + b'", "id": 1}}',
    b'{"return": ["' + b'x' * 100 + b'", {"id": 1}]}',
    b'{"id": 1, "return": "' + b'x' * 100 + b'"}',
    b'x' * 200,
    b'{"return": "' + b'x' * 100 + b'", "id": {"unfinished": }',
])
def test_over_long_line_without_a_reply_id(line):
    """An id that is not the last member of the message, one inside the
    data, or none at all: no id is claimed."""
    codec = Codec(limit=64)
    codec.feed(line + b'\n')
    with pytest.raises(MessageTooLongError) as err:
        codec.next_message()
    assert not err.value.has_reply_id and err.value.reply_id is None


def test_stream_ends_inside_an_over_long_line():
    codec = Codec(limit=10)
    codec.feed(b'x' * 50)
    assert codec.next_message() is None
    codec.feed(b'')
    with pytest.raises(MessageTooLongError):
        codec.next_message()
    with pytest.raises(EOFError):
        codec.next_message()


@given(st.lists(st.binary(max_size=30).map(
           lambda b: b.replace(b'\n', b'')), max_size=20),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_any_split_gives_the_same_lines(lines, cuts):
    """However the stream is split, the same lines come out in order."""
    stream = b''.join(line + b'\n' for line in lines)
    out = []
    buf = LineBuffer(1000)
    for chunk in split(stream, cuts):
        buf.feed(chunk)
        out.extend(drain_lines(buf))
    assert out == lines


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=40),
                          st.integers(min_value=0, max_value=40)),
                max_size=30))
def test_reader_at_its_own_pace_gets_every_line(steps):
    """A reader that takes fewer (or more) lines than each chunk brings
    gets every line once, in order, with and without over-long ones."""
    buf = LineBuffer(8)
    fed = 0
    expected, out = [], []
    for new, wanted in steps:
        chunk = b''
        for _ in range(new):
            line = b'%d' % fed if fed % 7 else b'x' * 20  # over the limit
            expected.append(line if fed % 7 else None)
            chunk += line + b'\n'
            fed += 1
        buf.feed(chunk)
        for _ in range(wanted):
            try:
                line = buf.next_line()
            except MessageTooLongError:
                line = None
            else:
                if line is None:
                    break
            out.append(line)
    out.extend(drain_lines(buf, too_long=None))
    assert out == expected


def test_reader_far_behind_keeps_its_place():
    """A reader thousands of lines behind, taking one line per chunk,
    still gets them all in order (the buffer drops what it took)."""
    buf = LineBuffer(100)
    out = []
    for i in range(5000):
        buf.feed(b'%d\n%d\n' % (2 * i, 2 * i + 1))
        out.append(buf.next_line())
        # What it took does not pile up in front of what it has not.
        assert len(buf._lines) <= (i + 1) + 1024
    out.extend(drain_lines(buf))
    assert out == [b'%d' % i for i in range(10000)]


# ---------------------------------------------------------------------
# Codec: messages
# ---------------------------------------------------------------------

def test_messages_across_chunks():
    """Messages split anywhere come out whole, in order, as Messages."""
    codec = Codec()
    codec.feed(b'{"event": "A"}\r\n{"retu')
    msg = codec.next_message()
    assert isinstance(msg, Message) and msg == {'event': 'A'}
    assert codec.next_message() is None
    codec.feed(b'rn": {}, "id": 1}\r\n')
    assert drain(codec) == [{'return': {}, 'id': 1}]


def test_sync_bytes_and_blank_lines_are_skipped():
    """The guest agent's 0xFF before a reply, and blank lines between
    messages, are not messages."""
    codec = Codec()
    codec.feed(SYNC_BYTE + b'{"return": 7}\n\r\n\n  \n' + SYNC_BYTE * 3
               + b'{"return": 8}\n' + SYNC_BYTE + b'\n')
    assert drain(codec) == [{'return': 7}, {'return': 8}]


def test_end_of_stream_after_whole_messages():
    """At EOF, every message comes out, then EOFError, every time."""
    codec = Codec()
    codec.feed(b'{"a": 1}\r\n')
    codec.feed(b'')
    assert codec.next_message() == {'a': 1}
    for _ in range(2):
        with pytest.raises(EOFError) as info:
            codec.next_message()
        assert not isinstance(info.value, TruncatedMessageError)


def test_last_message_without_newline():
    """A whole message just before EOF needs no newline."""
    codec = Codec()
    codec.feed(b'{"a": 1}\n{"b": 2}')
    assert drain(codec) == [{'a': 1}]
    codec.feed(b'')
    assert codec.next_message() == {'b': 2}
    with pytest.raises(EOFError):
        codec.next_message()


def test_whitespace_tail_is_not_truncation():
    """Whitespace or sync bytes left at EOF are just the end."""
    codec = Codec()
    codec.feed(b'{"a": 1}\n \r' + SYNC_BYTE)
    codec.feed(b'')
    assert drain_until_eof(codec) == [{'a': 1}]


def test_truncated_message_at_eof():
    """An unfinished message at EOF raises TruncatedMessageError (an
    EOFError and a ProtocolError) with the bytes, then EOFError."""
    codec = Codec()
    codec.feed(b'{"a": 1}\n{"b": ')
    codec.feed(b'')
    assert codec.next_message() == {'a': 1}
    with pytest.raises(TruncatedMessageError) as info:
        codec.next_message()
    assert info.value.raw == b'{"b": '
    assert isinstance(info.value, EOFError)
    assert isinstance(info.value, ProtocolError)
    assert '6 bytes' in str(info.value)
    with pytest.raises(EOFError):
        codec.next_message()


@pytest.mark.parametrize('line, error', [
    (b'not json', DeserializationError),
    (b'\xc3\x28', DeserializationError),
    (b'{"a": NaN}', DeserializationError),
    (b'[1, 2]', UnexpectedTypeError),
    (b'"text"', UnexpectedTypeError),
])
def test_bad_line_raises_in_order_and_is_consumed(line, error):
    """A bad line raises its own error after the messages before it; the
    messages after it can still be read."""
    codec = Codec()
    codec.feed(b'{"a": 1}\n' + line + b'\n{"b": 2}\n')
    assert codec.next_message() == {'a': 1}
    with pytest.raises(error):
        codec.next_message()
    assert drain(codec) == [{'b': 2}]


def test_over_long_message_raises_in_order():
    """An over-long message raises MessageTooLongError between its
    neighbours, naming the limit."""
    codec = Codec(limit=32)
    assert codec.limit == 32
    codec.feed(b'{"a": 1}\n{"big": "' + b'x' * 40 + b'"}\n{"b": 2}\n')
    assert codec.next_message() == {'a': 1}
    with pytest.raises(MessageTooLongError, match=r'readbuflen \(32 bytes\)'):
        codec.next_message()
    assert drain(codec) == [{'b': 2}]


def test_encode():
    """A message becomes compact JSON and one newline; any mapping will
    do; values JSON cannot carry raise SerializationError."""
    assert Codec.encode(Message({'execute': 'x', 'arguments': {'a': [1]}})) \
        == b'{"execute":"x","arguments":{"a":[1]}}\n'
    assert Codec.encode({'execute': 'y'}) == b'{"execute":"y"}\n'
    with pytest.raises(SerializationError):
        Codec.encode({'execute': 'z', 'arguments': {'f': object()}})
    with pytest.raises(SerializationError):
        Codec.encode({'execute': 'z', 'arguments': {'f': float('nan')}})


# ---------------------------------------------------------------------
# Properties: any chunking of a valid stream gives the same messages
# ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)
messages = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
separators = st.sampled_from([b'\n', b'\r\n', b'\n\n', b' \r\n'])
prefixes = st.sampled_from([b'', b'', SYNC_BYTE, SYNC_BYTE * 2])


def split(stream, cuts):
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:])]


def drain_until_eof(codec):
    out = []
    while True:
        try:
            msg = codec.next_message()
        except EOFError:
            return out
        assert msg is not None
        out.append(dict(msg))


@given(st.lists(st.tuples(prefixes, messages, separators), max_size=12),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
       st.booleans())
def test_any_chunking_gives_the_same_messages(items, cuts, last_newline):
    """Whatever the chunking, a valid stream (CRLF or LF, sync bytes,
    blank lines, last newline or not) decodes to the same messages."""
    parts = [prefix + json.dumps(msg, ensure_ascii=False).encode() + sep
             for prefix, msg, sep in items]
    stream = b''.join(parts)
    if items and not last_newline:
        stream = stream.rstrip(b'\r\n ')
    codec = Codec()
    out = []
    for chunk in split(stream, cuts):
        codec.feed(chunk)
        out.extend(drain(codec))
    codec.feed(b'')
    out.extend(drain_until_eof(codec))
    assert out == [msg for _, msg, _ in items]


@given(st.lists(messages, min_size=1, max_size=6),
       st.integers(min_value=0, max_value=6),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=12))
def test_over_long_message_in_any_chunking(items, where, cuts):
    """An over-long line raises at its place in the stream, whatever the
    chunking, and the messages around it all come out."""
    limit = 200
    lines = [json.dumps(msg).encode() + b'\n' for msg in items]
    lines = [line for line in lines if len(line) <= limit]
    where = min(where, len(lines))
    big = b'{"big": "' + b'x' * (limit + 50) + b'"}\n'
    stream = b''.join(lines[:where] + [big] + lines[where:])
    codec = Codec(limit)
    out = []
    for chunk in split(stream, cuts):
        codec.feed(chunk)
        while True:
            try:
                msg = codec.next_message()
            except MessageTooLongError:
                out.append('too long')
                continue
            if msg is None:
                break
            out.append(dict(msg))
    expected = [json.loads(line) for line in lines]
    expected.insert(where, 'too long')
    assert out == expected


def test_sync_byte_inside_a_line():
    """The guest agent's reply follows its 0xFF: what precedes it on the
    line is left over and skipped.  A line that is garbage on both sides
    of a 0xFF reports the whole line."""
    codec = Codec()
    codec.feed(b'{"return": {"half' + SYNC_BYTE + b'{"return": 7}\r\n')
    assert codec.next_message() == {'return': 7}
    codec.feed(b'junk' + SYNC_BYTE + b'more junk\n')
    with pytest.raises(DeserializationError) as err:
        codec.next_message()
    assert err.value.raw == b'junk' + SYNC_BYTE + b'more junk'
