"""LineBuffer: splitting a byte stream into lines, without a socket."""

import pytest
from hypothesis import given, strategies as st

from qemu.qmp.error import ProtocolError
from qemu.qmp.framing import LineBuffer, MessageTooLongError


def drain(buf):
    lines = []
    while (line := buf.next_line()) is not None:
        lines.append(line)
    return lines


def test_many_lines_in_one_chunk():
    """One chunk with several lines yields each, newline included."""
    buf = LineBuffer(100)
    buf.feed(b'a\nbb\r\nccc\n')
    assert drain(buf) == [b'a\n', b'bb\r\n', b'ccc\n']


def test_line_across_chunks():
    """A line split over many chunks is joined once complete."""
    buf = LineBuffer(100)
    for piece in (b'{"a"', b': ', b'1', b'}'):
        buf.feed(piece)
        assert buf.next_line() is None
    buf.feed(b'\n{"b"')
    assert drain(buf) == [b'{"a": 1}\n']
    assert buf.take_tail() == b'{"b"'
    assert buf.take_tail() == b''


def test_line_at_limit_is_accepted():
    """A line of exactly `limit` bytes, newline included, is fine."""
    buf = LineBuffer(10)
    buf.feed(b'x' * 9 + b'\n')
    assert drain(buf) == [b'x' * 9 + b'\n']


def test_over_long_complete_line():
    """A complete line over the limit raises after earlier lines."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n' + b'x' * 10 + b'\nlater\n')
    assert buf.next_line() == b'ok\n'
    with pytest.raises(MessageTooLongError) as info:
        buf.next_line()
    assert info.value.limit == 10
    assert 'readbuflen (10 bytes)' in str(info.value)
    assert isinstance(info.value, ProtocolError)


def test_over_long_partial_line():
    """An unfinished line growing past the limit raises, bounded memory."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n')
    for _ in range(5):
        buf.feed(b'x' * 4)
    assert buf.next_line() == b'ok\n'
    with pytest.raises(MessageTooLongError):
        buf.next_line()
    buf.feed(b'y' * 1000)  # ignored after the overflow
    with pytest.raises(MessageTooLongError):
        buf.next_line()


def test_over_long_tail_in_big_chunk():
    """A big chunk whose unfinished tail breaks the limit raises."""
    buf = LineBuffer(10)
    buf.feed(b'ok\n' + b'z' * 20)
    assert buf.next_line() == b'ok\n'
    with pytest.raises(MessageTooLongError):
        buf.next_line()


@given(st.lists(st.binary(max_size=30).map(
           lambda b: b.replace(b'\n', b'')), max_size=20),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_any_split_gives_the_same_lines(lines, cuts):
    """However the stream is split, the same lines come out in order."""
    stream = b''.join(line + b'\n' for line in lines)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    buf = LineBuffer(1000)
    out = []
    for start, end in zip(points, points[1:]):
        buf.feed(stream[start:end])
        out.extend(drain(buf))
    assert out == [line + b'\n' for line in lines]
