"""
QMP messages.

`Message` is one QMP message: a JSON object on the wire, a mutable mapping in
Python.  It converts lazily in either direction and caches the result, so a
message that is only routed is never serialized twice.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any, Dict, Iterator, Mapping, Optional, Union

from .error import ProtocolError, QMPError


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity; JSON (and QEMU) does not.
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_decode = _decoder.decode
_raw_decode = _decoder.raw_decode


def _decode_line(text: str) -> object:
    """
    Decode one JSON value followed by nothing but whitespace.

    `json.JSONDecoder.decode` runs two whitespace regexes around
    ``raw_decode``; a server line has none in front, so try without them
    and fall back to ``decode`` for anything unusual (it also gives the
    standard error messages).
    """
    try:
        obj, end = _raw_decode(text)
    except ValueError:
        return _decode(text)
    if end != len(text) and not text[end:].isspace():
        return _decode(text)  # raises "Extra data"
    return obj


_encode_compact = json.JSONEncoder(separators=(',', ':'),
                                   allow_nan=False).encode
_encode_pretty = json.JSONEncoder(indent=2).encode


def _encode(obj: Dict[str, object]) -> bytes:
    """
    Encode a message for the wire.

    :raise SerializationError: ``obj`` holds something JSON cannot carry.
    """
    try:
        return _encode_compact(obj).encode('utf-8')
    except (TypeError, ValueError) as err:
        raise SerializationError(
            f"QMP message cannot be encoded as JSON: {err}", obj) from err
    except RecursionError as err:
        raise SerializationError(
            "QMP message cannot be encoded as JSON: nested too deeply",
            obj) from err


class DeserializationError(ProtocolError):
    """
    A QMP message was not understood as JSON.

    ``__cause__`` is the underlying `json.JSONDecodeError` (or the
    `UnicodeDecodeError` for bytes that are not UTF-8).

    :param error_message: Human-readable string describing the error.
    :param raw: The raw `bytes` that prompted the failure.
    """

    def __init__(self, error_message: str, raw: bytes) -> None:
        super().__init__(error_message, raw)
        #: The raw bytes that were not understood as JSON.
        self.raw: bytes = raw

    def __str__(self) -> str:
        shown = self.raw if len(self.raw) <= 80 else self.raw[:77] + b'...'
        return f"{self.error_message}\n  raw bytes were: {shown!r}"


class NotQMPServerError(DeserializationError):
    """
    The peer sent a line that is not even JSON-like: it speaks another
    protocol (an HMP monitor, an SSH server, an HTTP server answering a
    command), so the address is most likely not a QMP server's.

    :param raw: What the peer sent.
    """

    def __init__(self, raw: bytes) -> None:
        super().__init__("Not a QMP server", raw)

    def __str__(self) -> str:
        sent = self.raw.rstrip(b'\r\n')
        shown = sent if len(sent) <= 60 else sent[:57] + b'...'
        text = f"{self.error_message}: it sent {shown!r}"
        if sent.startswith(b'QEMU ') and b' monitor' in sent:
            text += ("; it is QEMU's human monitor (HMP): connect to a QMP "
                     "socket (-qmp, or -mon mode=control)")
        return text


def not_qmp(err: DeserializationError) -> DeserializationError:
    """
    ``err``, or a `NotQMPServerError` when its line does not even start
    as a JSON object or list does: no QMP server sends such a line.

    >>> str(not_qmp(DeserializationError("bad", b'SSH-2.0-OpenSSH_9.2')))
    "Not a QMP server: it sent b'SSH-2.0-OpenSSH_9.2'"
    """
    if err.raw.lstrip()[:1] in (b'{', b'['):
        return err
    not_json = NotQMPServerError(err.raw)
    not_json.__cause__ = err.__cause__
    return not_json


class UnexpectedTypeError(ProtocolError):
    """
    A QMP message was JSON, but not a JSON object.

    :param error_message: Human-readable string describing the error.
    :param value: The deserialized JSON value that wasn't an object.
    """

    def __init__(self, error_message: str, value: object) -> None:
        super().__init__(error_message, value)
        #: The JSON value that was expected to be an object.
        self.value: object = value

    def __str__(self) -> str:
        return f"{self.error_message}\n  value was: {self.value!r:.80}"


class SerializationError(QMPError, ValueError):
    """
    A message holds a value that cannot be encoded as JSON.

    Raised to the caller, before anything is sent.  ``__cause__`` is the
    error from the JSON encoder.

    :param error_message: Human-readable string describing the error.
    :param value: The message that could not be encoded.
    """

    def __init__(self, error_message: str, value: object) -> None:
        super().__init__(error_message, value)
        self.error_message = error_message
        #: The message that could not be encoded.
        self.value = value

    def __str__(self) -> str:
        return self.error_message


def _deserialize(data: bytes) -> Dict[str, object]:
    """
    Decode JSON-encoded bytes into a dict.

    :raise DeserializationError: Not UTF-8, not JSON, or nested deeper
        than Python's JSON decoder can go (QEMU's own limit is 1024).
    :raise UnexpectedTypeError: JSON, but not an object.
    """
    try:
        obj = _decode_line(data.decode('utf-8'))
    except ValueError as err:
        # UnicodeDecodeError, for bytes that are not UTF-8, is a
        # ValueError like JSONDecodeError.
        raise DeserializationError(
            f"Failed to deserialize QMP message: {err}", data) from err
    except RecursionError as err:
        # The decoder recurses once per level: a hostile peer must not
        # turn that into an error nobody expects from a parser.
        raise DeserializationError(
            "Failed to deserialize QMP message: nested too deeply",
            data) from err
    if type(obj) is not dict:
        raise UnexpectedTypeError("QMP message is not a JSON object.", obj)
    return obj


class Message(MutableMapping[str, Any]):
    """
    Represents a single QMP protocol message.

    A `Message` is built from a mapping or from raw `bytes`, and then behaves
    like any other mutable mapping:

    >>> msg = Message(b'{"hello": "world"}')
    >>> msg['hello']
    'world'
    >>> msg['id'] = 'foobar'
    >>> print(msg)
    {
      "hello": "world",
      "id": "foobar"
    }

    `bytes` gives the compact wire form, `dict` a plain copy:

    >>> bytes(Message({"hello": "world"}))
    b'{"hello":"world"}'
    >>> dict(Message({"hello": "world"}))
    {'hello': 'world'}

    :param value: Initial value: a mapping, or JSON-encoded `bytes`.
    :param eager:
        When `True` (the default), convert the initial value at once, so that
        conversion errors are raised by the constructor.  When `False`, the
        conversion happens on first use.
    :raise DeserializationError: `bytes` that are not UTF-8 encoded JSON.
    :raise UnexpectedTypeError: JSON that is not an object.
    :raise SerializationError: A mapping JSON cannot encode (eager only).
    """

    __slots__ = ('_obj', '_raw', '_src')

    def __init__(self, value: Union[bytes, Mapping[str, object]] = b'{}',
                 *, eager: bool = True) -> None:
        # _raw holds bytes not yet decoded (eager=False), or the wire
        # encoding of a message built by _for_wire().  It is never cached
        # otherwise: nested values can change under us.
        self._raw: Optional[bytes] = None
        # _src holds the bytes a message was decoded from, for clone(),
        # until its top level changes.
        if type(value) is bytes and eager:
            # Every message received comes this way: keep it short.
            self._obj: Optional[Dict[str, object]] = _deserialize(value)
            self._src: Optional[bytes] = value
            return
        self._obj = None
        self._src = None
        if isinstance(value, (bytes, bytearray)):
            if eager:
                self._obj = _deserialize(bytes(value))
            else:
                self._raw = bytes(value)
            self._src = bytes(value)
        else:
            self._obj = dict(value)
            if eager:
                # Raise now for values JSON cannot carry.
                _encode(self._obj)

    @classmethod
    def _for_wire(cls, obj: Dict[str, object]) -> 'Message':
        """
        Make a message from ``obj`` and encode it now, once.

        Used for messages the library sends: encoding errors reach the
        caller, and the flush only copies bytes.

        :raise SerializationError: ``obj`` cannot be encoded.
        """
        msg = cls.__new__(cls)
        msg._obj = obj
        msg._raw = _encode(obj)
        msg._src = None
        return msg

    def clone(self) -> 'Message':
        """
        Return an independent copy: nested values are not shared.

        A message decoded from bytes (every message received is) and not
        changed at its top level since is cloned from those bytes, and
        the clone decodes them only when first used: a clone nobody reads
        costs almost nothing.  Any other message is encoded now.  Changes
        to nested values of a received message are not tracked: its clone
        shows the nested values as received.

        >>> msg = Message(b'{"event": "STOP", "data": {"n": 1}}')
        >>> copy = msg.clone()
        >>> copy['data']['n'] = 2
        >>> msg['data']['n'], copy['data']['n']
        (1, 2)

        :raise SerializationError: This message cannot be encoded.
        """
        src = self._src
        if src is None:
            src = bytes(self)
        msg = type(self).__new__(type(self))
        msg._obj = None
        msg._raw = msg._src = src
        return msg

    @property
    def decoded_from(self) -> Optional[bytes]:
        """
        The JSON `bytes` this message was decoded from, or `None`.

        Every message received has them until its top level changes
        (setting or deleting a member); a message built from a mapping
        has none.  Changes to nested values are not tracked.

        >>> msg = Message(b'{"return": {}}')
        >>> msg.decoded_from
        b'{"return": {}}'
        >>> msg['id'] = 1
        >>> msg.decoded_from is None
        True
        """
        return self._src

    # -- conversion ----------------------------------------------------

    def wire_copy(self, **members: object) -> 'Message':
        """
        Return a copy with ``members`` added, encoded for the wire now.

        The clients send such copies: a value JSON cannot carry raises
        here, in the caller, and sending costs only a copy of the bytes.
        This message itself is not changed.

        >>> msg = Message({'execute': 'query-status'})
        >>> bytes(msg.wire_copy(id=7))
        b'{"execute":"query-status","id":7}'

        :param members: Members to add (or replace) in the copy.
        :return: The encoded copy.
        :raise SerializationError: The copy cannot be encoded.
        """
        return self._for_wire({**self._object, **members})

    @property
    def _object(self) -> Dict[str, object]:
        obj = self._obj
        if obj is None:
            assert self._raw is not None
            obj = self._obj = _deserialize(self._raw)
            self._raw = None
        return obj

    def __bytes__(self) -> bytes:
        raw = self._raw
        if raw is not None:
            return raw
        return _encode(self._object)

    def __str__(self) -> str:
        """The message as pretty-printed JSON."""
        return _encode_pretty(self._object)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._object!r})"

    # -- mapping protocol ---------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._object[key]

    def __setitem__(self, key: str, value: object) -> None:
        self._object[key] = value
        self._raw = self._src = None

    def __delitem__(self, key: str) -> None:
        del self._object[key]
        self._raw = self._src = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._object)

    def __len__(self) -> int:
        return len(self._object)

    # Faster than the generic Mapping versions, which go through
    # __getitem__ and exception handling; routing calls them per message.
    def __contains__(self, key: object) -> bool:
        return key in self._object

    def get(self, key: str, default: Any = None) -> Any:
        """
        The member ``key``, or ``default`` when there is none.

        :param key: The member's name.
        :param default: What to return without such a member.
        """
        return self._object.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self._object == other._object
        if isinstance(other, Mapping):
            return self._object == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
