"""
Splitting a JSON byte stream into its texts, as QEMU's parser does.  Private.

QEMU reads its monitor as a stream of JSON values, with or without
newlines between them (the reference library sends none): a value ends
where its outermost bracket closes.  `JsonSplitter` finds those ends
without parsing, by counting brackets outside strings, so what is inside
each text (bad UTF-8, bad JSON, deep nesting) is for the caller to judge.
A newline outside any bracket ends a text too, so that input which is not
an object or an array (``null``, garbage) still comes out, line by line.
A 0xFF byte (never in UTF-8) starts afresh, as the guest agent does: what
came before it in an unfinished text is dropped, and the text it starts
keeps it, for the caller to see.
"""

from __future__ import annotations

import re
from typing import List, Optional

# Outside strings: brackets, the start of a string, a newline, 0xFF.
_OUTSIDE = re.compile(rb'[\[\]{}"\n\xff]')
# Inside a string: its end, an escape (whose next byte is skipped), 0xFF.
_INSIDE = re.compile(rb'["\\\xff]')


class JsonSplitter:
    """
    Split bytes, fed in any pieces, into JSON texts.

    :param limit: The longest text kept; a longer one comes out as `None`
        (once), and its bytes are dropped to its end.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._text = bytearray()
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the last piece ended inside an escape
        self._too_long = False

    def feed(self, data: bytes) -> List[Optional[bytes]]:
        """
        Take the next bytes.

        :return: The texts they complete, in order (`None` for one over
            the limit).
        """
        texts: List[Optional[bytes]] = []
        start = 0       # where the current text's bytes begin in ``data``
        index = 0
        end = len(data)
        if self._escaped:
            self._escaped = False
            index = 1
        while index < end:
            if self._in_string:
                match = _INSIDE.search(data, index)
                if match is None:
                    break
                if match.group() == b'\xff':
                    start = index = self._restart(match.start())
                    continue
                if match.group() == b'\\':
                    index = match.end() + 1
                    if index > end:
                        self._escaped = True
                    continue
                self._in_string = False
                index = match.end()
                continue
            match = _OUTSIDE.search(data, index)
            if match is None:
                break
            char = match.group()
            index = match.end()
            if char == b'\xff':
                start = self._restart(match.start()) if self._depth \
                    else start
                continue
            if char == b'"':
                self._in_string = True
            elif char in b'[{':
                self._depth += 1
            elif char in b']}':
                self._depth = max(self._depth - 1, 0)
                if self._depth == 0:
                    texts.append(self._take(data[start:index]))
                    start = index
            elif self._depth == 0:  # a newline outside any bracket
                texts.append(self._take(data[start:index]))
                start = index
        self._keep(data[start:])
        return texts

    def _restart(self, position: int) -> int:
        """A 0xFF at ``position`` inside a text: drop the text so far; the
        new one starts there."""
        self._text.clear()
        self._too_long = False
        self._depth = 0
        self._in_string = False
        return position

    def _keep(self, piece: bytes) -> None:
        if self._too_long:
            return
        self._text += piece
        if len(self._text) > self.limit:
            self._too_long = True
            self._text.clear()

    def _take(self, piece: bytes) -> Optional[bytes]:
        """The text that ``piece`` ends; `None` if it was too long."""
        self._keep(piece)
        too_long, self._too_long = self._too_long, False
        text = bytes(self._text)
        self._text.clear()
        return None if too_long else text

    def finish(self) -> bytes:
        """The end of the stream: what is left of an unfinished text."""
        text = b'' if self._too_long else bytes(self._text)
        self._text.clear()
        return text
