"""
The QMP wire format, both directions, with no I/O.

A QMP peer sends JSON objects in UTF-8, each ended by a newline.  `Codec`
turns whatever a socket delivered (any split, any number of messages) into
`Message`\\ s, in order, and turns a message into the bytes to send.  Every
decision about what a message on the wire is lives here:

- the longest line accepted (`MessageTooLongError`, for that line only,
  with the id of the reply it was, when its tail shows one);
- the guest agent's 0xFF resynchronisation byte (`SYNC_BYTE`): a message
  after it is read, whatever came before it on the line;
- blank lines between messages, skipped;
- the end of the stream: a last message without its newline is accepted,
  an unfinished one raises `TruncatedMessageError`, then `EOFError`;
- JSON decoding and encoding (through `Message`).

Both clients use it: `QMPClient`'s reader and the blocking
`qemu.qmp.legacy.QEMUMonitorProtocol`.  `LineBuffer` is its framing layer,
also used on its own by `AsyncProtocol._readline`.

>>> codec = Codec()
>>> codec.feed(b'{"event": "STOP"}\\r\\n{"return": {}, "id": 1}\\r\\n{"ret')
>>> codec.next_message()
Message({'event': 'STOP'})
>>> codec.next_message()
Message({'return': {}, 'id': 1})
>>> codec.next_message() is None   # the rest has not arrived yet
True
>>> codec.encode({'execute': 'query-status'})
b'{"execute":"query-status"}\\n'
"""

from __future__ import annotations

import json
from typing import List, Mapping, NamedTuple, Optional, Tuple

from .error import ProtocolError
from .message import Message


__all__ = ['Codec', 'LineBuffer', 'MessageTooLongError',
           'TruncatedMessageError', 'SYNC_BYTE', 'DEFAULT_LIMIT',
           'reply_id_of']

#: The byte the guest agent puts before its reply to
#: ``guest-sync-delimited``, and a client sends to make the agent drop any
#: partial input.  It never occurs in UTF-8 text.
SYNC_BYTE = b'\xff'

#: The longest message `Codec` accepts by default, newline included.
DEFAULT_LIMIT = 10 * 1024 * 1024

# What a line may hold besides a message: whitespace (QEMU ends lines with
# CRLF) and the guest agent's sync bytes.
_FILLER = b' \t\r\n' + SYNC_BYTE

# How much of the end of an over-long line is kept, to find its id in.
_TAIL_KEPT = 512

# An over-long line is skipped up to this many times the limit; a longer
# one is taken for an endless stream, and reported without waiting for
# its end.
_SKIP_FACTOR = 16

# How many lines a reader that falls behind may have taken before they
# are dropped from the front of the buffer.
_COMPACT_AFTER = 1024


class _TooLong(NamedTuple):
    """What is known of a line that was over the limit."""

    size: Optional[int]     # its length with the newline, if it ended
    tail: bytes             # its last bytes, for reply_id_of()


def reply_id_of(tail: bytes) -> Tuple[bool, object]:
    """
    Find the id of a reply from the last bytes of its line.

    QEMU puts ``"id"`` last in a reply: ``{"return": ..., "id": ID}``.
    So an ``"id"`` member followed only by the closing brace of the whole
    message (an id inside the returned value is followed by more closing
    brackets) is the reply's id.

    >>> reply_id_of(b'..., "size": 5}], "id": "__qmp#00001"}\\r')
    (True, '__qmp#00001')
    >>> reply_id_of(b'..., "data": {"id": "not-the-reply-id"}}')
    (False, None)

    :param tail: The last bytes of the line, without its newline.
    :return: Whether an id was found, and the id.
    """
    text = tail.decode('utf-8', errors='ignore')
    end = len(text)
    while True:
        key = text.rfind('"id"', 0, end)
        if key < 0:
            return False, None
        end = key
        if text[:key].rstrip()[-1:] != ',':
            continue  # not a member of an object, or the first one
        rest = text[key + 4:].lstrip()
        if rest[:1] != ':':
            continue
        rest = rest[1:].lstrip()
        try:
            value, stop = _DECODER.raw_decode(rest)
        except ValueError:
            continue
        if rest[stop:].strip() == '}':
            return True, value


_DECODER = json.JSONDecoder()


class MessageTooLongError(ProtocolError):
    """
    The peer sent a line longer than the configured limit.

    The over-long line is discarded; lines after it can still be read.
    When the line was a reply whose id could be read from its end
    (`reply_id_of`), the clients fail only the command it answers, with
    this error; otherwise the session ends with it.

    :param limit: The limit, in bytes, that was exceeded.
    :param size: The line's length, if known.
    :param tail: The last bytes of the line, if kept.
    """

    def __init__(self, limit: int, size: Optional[int] = None,
                 tail: bytes = b'') -> None:
        what = "message" if size is None else f"message of {size} bytes"
        super().__init__(
            f"{what} exceeds readbuflen ({limit} bytes); "
            f"pass a larger readbuflen to the client to accept it",
            limit)
        #: The limit, in bytes.
        self.limit: int = limit
        #: The length of the line (newline included), if known.
        self.size: Optional[int] = size
        found, reply_id = reply_id_of(tail) if tail else (False, None)
        #: Whether the line was a reply whose id was found (`reply_id`).
        self.has_reply_id: bool = found
        #: The id of the reply, when `has_reply_id`.
        self.reply_id: object = reply_id


class TruncatedMessageError(ProtocolError, EOFError):
    """
    The peer closed the connection in the middle of a message.

    It is an `EOFError` too, since the session ended because the peer hung
    up; the unfinished bytes are in `raw`.

    :param raw: The bytes of the unfinished message.
    """

    def __init__(self, raw: bytes) -> None:
        super().__init__(
            f"the server closed the connection in the middle of a "
            f"message ({len(raw)} bytes of it were discarded)", raw)
        #: The bytes received of the unfinished message.
        self.raw: bytes = raw


class LineBuffer:
    """
    Split a byte stream into newline-terminated lines, bounded in length.

    >>> buf = LineBuffer(limit=100)
    >>> buf.feed(b'{"a": 1}\\n{"b"')
    >>> buf.next_line()
    b'{"a": 1}'
    >>> buf.next_line() is None
    True
    >>> buf.feed(b': 2}\\n')
    >>> buf.next_line()
    b'{"b": 2}'

    Strategy: each chunk is split in one pass with `bytes.split`; complete
    lines are moved to the buffer's one list and read from an index (an
    idle stream holds an empty list, not a deque; the split's own list is
    not kept instead, or a busy session would hand the garbage collector
    a new long-lived list per chunk); an unfinished tail is kept
    as a list of pieces, so a long line arriving in many chunks is joined
    once, not re-copied on every chunk.  Lengths are only checked for
    chunks that could break the limit.  A line over the limit is dropped
    as it arrives (memory stays bounded: only its length and last bytes
    are kept) and leaves `None` in its place in the list once it ends, so
    that `next_line` raises in stream order, then goes on with the next
    line.  A line that goes on past 16 times the limit is reported without
    waiting for its end.

    :param limit: The longest line accepted, newline included.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Complete lines; those before index _taken were returned.
        self._lines: List[Optional[bytes]] = []
        self._taken = 0
        # What is known of each over-long line, in the order of the Nones
        # (a list: rare, and a session holds thousands of bytes less).
        self._too_long: List[_TooLong] = []
        self._tail: List[bytes] = []
        self._tail_len = 0
        # Inside an over-long line: drop bytes up to its newline, counting
        # them and keeping the last ones.
        self._skipping = False
        self._skip_size = 0
        self._skip_tail = b''
        self._skip_reported = False

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the peer.

        :param data: The bytes, in any split.
        """
        if self._skipping:
            end = data.find(b'\n')
            if end < 0:
                self._skip(data)
                return
            self._skip(data[:end + 1])
            self._skipping = False
            if not self._skip_reported:
                self._report(self._skip_size, self._skip_tail)
            data = data[end + 1:]
        if b'\n' not in data:
            if data:
                self._tail.append(data)
                self._tail_len += len(data)
                if self._tail_len > self.limit:
                    self._drop_tail()
            return
        if self._tail:
            self._tail.append(data)
            data = b''.join(self._tail)
            self._tail.clear()
        lines = data.split(b'\n')
        rest = lines.pop()
        if len(data) > self.limit:
            limit = self.limit
            # >= because the newline split() removed counts too.
            for line in lines:
                if len(line) >= limit:
                    self._report(len(line) + 1, line[-_TAIL_KEPT:])
                else:
                    self._lines.append(line)
        else:
            self._lines.extend(lines)
        self._tail_len = len(rest)
        if rest:
            self._tail.append(rest)
            if self._tail_len > self.limit:
                self._drop_tail()

    def _drop_tail(self) -> None:
        """The unfinished line went over the limit: skip the rest."""
        self._skip_tail = b''.join(self._tail)[-_TAIL_KEPT:]
        self._skip_size = self._tail_len
        self._skip_reported = False
        self._tail.clear()
        self._tail_len = 0
        self._skipping = True
        self._check_endless()

    def _skip(self, data: bytes) -> None:
        """Drop bytes of an over-long line, keeping count and its end."""
        self._skip_size += len(data)
        self._skip_tail = (self._skip_tail + data[-_TAIL_KEPT:]
                           ).rstrip(b'\r\n')[-_TAIL_KEPT:]
        self._check_endless()

    def _check_endless(self) -> None:
        if not self._skip_reported \
                and self._skip_size > self.limit * _SKIP_FACTOR:
            self._skip_reported = True
            self._report(None, b'')

    def _report(self, size: Optional[int], tail: bytes) -> None:
        self._too_long.append(_TooLong(size, tail))
        self._lines.append(None)

    @property
    def skipping(self) -> bool:
        """Whether the stream is inside an over-long line."""
        return self._skipping

    def too_long(self) -> MessageTooLongError:
        """The error for the over-long line whose `None` was just taken."""
        info = self._too_long.pop(0)
        return MessageTooLongError(self.limit, info.size, info.tail)

    def next_line(self) -> Optional[bytes]:
        """
        Return the next complete line, without its newline.

        :return: The line, or `None` if no complete line is buffered.
        :raise MessageTooLongError: The next line was over the limit; it
            is gone, and the call after this one returns the line after.
        """
        # Invariant: lines not all taken, or the list empty and _taken 0.
        lines = self._lines
        taken = self._taken
        if taken == len(lines):
            return None
        line = lines[taken]
        taken += 1
        if taken == len(lines):
            lines.clear()
            taken = 0
        elif taken >= _COMPACT_AFTER:
            # A reader that keeps falling behind: drop what it took, or
            # the list would only grow.
            del lines[:taken]
            taken = 0
        self._taken = taken
        if line is None:
            raise self.too_long()
        return line

    def take_tail(self) -> bytes:
        """
        Return and forget an unterminated last line (used at end of stream).

        :return: The bytes received after the last newline, maybe empty.
        """
        tail = b''.join(self._tail)
        self._tail.clear()
        self._tail_len = 0
        return tail


class Codec:
    """
    Decode a QMP byte stream into messages; encode messages to send.

    Feed it what the socket delivered with `feed`, ``b''`` at end of
    stream, and take messages with `next_message` until it returns `None`
    (it needs more bytes).  Errors are raised in stream order, after every
    message that came before them.  A bad line is consumed by the error it
    raises, so a caller that wishes to go on may call `next_message`
    again; the clients in this package end the session instead.

    >>> codec = Codec(limit=64)
    >>> codec.feed(b'\\xff{"return": 42}\\n' + b'x' * 100 + b'\\n')
    >>> codec.next_message()   # the guest agent's sync byte is skipped
    Message({'return': 42})
    >>> try:
    ...     codec.next_message()
    ... except MessageTooLongError as err:
    ...     print(err.limit)
    64
    >>> codec.feed(b'{"event": "SHUTDOWN"}')
    >>> codec.feed(b'')   # end of stream: a last message needs no newline
    >>> codec.next_message()
    Message({'event': 'SHUTDOWN'})
    >>> codec.next_message()
    Traceback (most recent call last):
      ...
    EOFError

    :param limit: The longest message accepted, newline included.
    :param framing: The stream's `LineBuffer`, when lines are also read
        from it directly (one buffer per stream, so no byte is read twice
        or lost); by default a new one.  Its limit wins over ``limit``.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT,
                 framing: Optional[LineBuffer] = None) -> None:
        self._framing = LineBuffer(limit) if framing is None else framing
        self._at_eof = False
        self._tail_taken = False

    @property
    def limit(self) -> int:
        """The longest message accepted, newline included."""
        return self._framing.limit

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the peer; ``b''`` means end of stream.

        :param data: The bytes, in any split.
        """
        if data:
            self._framing.feed(data)
        else:
            self._at_eof = True

    def next_message(self) -> Optional[Message]:
        """
        Return the next message, or `None` until more bytes are fed.

        :return: The next `Message`, or `None`.
        :raise MessageTooLongError: The next line is over the limit.
        :raise DeserializationError: The next line is not UTF-8 JSON.
        :raise UnexpectedTypeError: The next line is JSON but not an object.
        :raise TruncatedMessageError: The stream ended inside a message.
        :raise EOFError: The stream ended and every message was returned.
        """
        next_line = self._framing.next_line
        while True:
            line = next_line()
            if line is None:
                break
            if line[:1] == SYNC_BYTE:
                line = line.lstrip(SYNC_BYTE)
            try:
                return Message(line)
            except ProtocolError:
                sync = line.rfind(SYNC_BYTE)
                if sync >= 0 and line[sync + 1:].strip(_FILLER):
                    # The guest agent's reply to guest-sync-delimited
                    # follows its 0xFF; what came before is left over.
                    try:
                        return Message(line[sync + 1:])
                    except ProtocolError:
                        pass
                if line.strip(_FILLER):
                    raise
                # A blank line is only whitespace between messages.
        if self._at_eof:
            return self._end_of_stream()
        return None

    def _end_of_stream(self) -> Optional[Message]:
        """The last message, if one came without its newline, else EOF."""
        if self._tail_taken:
            raise EOFError
        self._tail_taken = True
        if self._framing.skipping:
            # It ended inside an over-long line: that line is the news.
            raise MessageTooLongError(self.limit)
        tail = self._framing.take_tail()
        if not tail.strip(_FILLER):
            raise EOFError
        try:
            return Message(tail.lstrip(SYNC_BYTE))
        except ProtocolError as err:
            raise TruncatedMessageError(tail) from err

    @staticmethod
    def encode(msg: Mapping[str, object]) -> bytes:
        """
        Return the bytes that send ``msg``: compact JSON and a newline.

        QEMU parses a JSON stream and needs no delimiter; the newline makes
        the stream readable line by line, for logs and for other peers.

        :param msg: A `Message`, or any mapping JSON can encode.
        :return: The wire bytes.
        :raise SerializationError: ``msg`` holds a value JSON cannot carry.
        """
        if not isinstance(msg, Message):
            msg = Message(msg, eager=False)
        return bytes(msg) + b'\n'
