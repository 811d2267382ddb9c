"""
Line framing: bytes in, complete lines out, no I/O.

QMP servers end every message with a newline.  `LineBuffer` takes whatever
the socket delivered (any split, any number of messages) and hands back
complete lines one at a time, in order.  It enforces a length limit so a
peer cannot make the client buffer without bound.

Strategy: each chunk is split in one pass with `bytes.split`; complete lines
wait in a deque, and an unfinished tail is kept as a list of pieces so that
a long message arriving in many chunks is joined once, not re-copied on
every chunk.  Lengths are only checked for chunks that could break the limit.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional

from .error import ProtocolError


class MessageTooLongError(ProtocolError):
    """
    The peer sent a line longer than the configured limit.

    :param limit: The limit, in bytes, that was exceeded.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"message exceeds readbuflen ({limit} bytes); "
            f"pass a larger readbuflen to the client to accept it",
            limit)
        #: The limit, in bytes.
        self.limit: int = limit


class LineBuffer:
    """
    Split a byte stream into newline-terminated lines.

    >>> buf = LineBuffer(limit=100)
    >>> buf.feed(b'{"a": 1}\\n{"b"')
    >>> buf.next_line()
    b'{"a": 1}\\n'
    >>> buf.next_line() is None
    True
    >>> buf.feed(b': 2}\\n')
    >>> buf.next_line()
    b'{"b": 2}\\n'

    :param limit: The longest line accepted, newline included.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lines: Deque[bytes] = deque()
        self._tail: List[bytes] = []
        self._tail_len = 0
        # Set when a line broke the limit: lines before it are still
        # handed out, then next_line() raises.
        self._overflow = False

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the peer.

        :param data: The bytes, in any split.
        """
        if self._overflow:
            return
        if b'\n' not in data:
            self._tail.append(data)
            self._tail_len += len(data)
            if self._tail_len > self.limit:
                self._set_overflow()
            return
        if self._tail:
            self._tail.append(data)
            data = b''.join(self._tail)
            self._tail.clear()
        lines = data.split(b'\n')
        rest = lines.pop()
        if len(data) > self.limit:
            for index, line in enumerate(lines):
                if len(line) >= self.limit:  # + 1 for its newline
                    del lines[index:]
                    self._add_lines(lines)
                    self._set_overflow()
                    return
            if len(rest) > self.limit:
                self._add_lines(lines)
                self._set_overflow()
                return
        self._add_lines(lines)
        if rest:
            self._tail.append(rest)
        self._tail_len = len(rest)

    def _add_lines(self, lines: List[bytes]) -> None:
        # split() removed the newlines; callers get them back so that a
        # line read at EOF (no newline) can be told apart.
        self._lines.extend([line + b'\n' for line in lines])

    def _set_overflow(self) -> None:
        self._overflow = True
        self._tail.clear()
        self._tail_len = 0

    def next_line(self) -> Optional[bytes]:
        """
        Return the next complete line, or `None` if there is none yet.

        :raise MessageTooLongError:
            Once every line before an over-long one was returned.
        """
        if self._lines:
            return self._lines.popleft()
        if self._overflow:
            raise MessageTooLongError(self.limit)
        return None

    def take_tail(self) -> bytes:
        """
        Return and forget an unterminated last line (used at end of stream).

        :return: The bytes received after the last newline, maybe empty.
        """
        tail = b''.join(self._tail)
        self._tail.clear()
        self._tail_len = 0
        return tail
