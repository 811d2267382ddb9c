"""Message: conversions, mapping behaviour, and bad input."""

import json

import pytest
from hypothesis import given, strategies as st

from qemu.qmp.error import ProtocolError, QMPError
from qemu.qmp.message import (
    DeserializationError,
    Message,
    SerializationError,
    UnexpectedTypeError,
)


def test_from_bytes_and_mapping_are_equal():
    """A message built from bytes equals one built from the same dict."""
    assert Message(b'{"a": 1, "b": [true, null]}') == {'a': 1,
                                                       'b': [True, None]}


def test_bytes_is_compact_json():
    """bytes() gives compact JSON."""
    assert bytes(Message({'hello': 'world', 'n': [1, 2]})) == \
        b'{"hello":"world","n":[1,2]}'


def test_str_is_pretty_json():
    """str() gives indented JSON."""
    assert str(Message({'a': 1})) == '{\n  "a": 1\n}'


def test_repr_and_dict():
    """repr() shows the contents; dict() copies them."""
    msg = Message({'a': 1})
    assert repr(msg) == "Message({'a': 1})"
    assert dict(msg) == {'a': 1}
    assert dict(msg) is not dict(msg)


def test_mutation_changes_bytes():
    """Setting and deleting keys changes the encoding."""
    msg = Message({'a': 1})
    msg['b'] = 2
    del msg['a']
    assert bytes(msg) == b'{"b":2}'
    assert len(msg) == 1 and list(msg) == ['b']


def test_nested_mutation_is_not_hidden_by_a_cache():
    """bytes() reflects changes made inside nested values."""
    msg = Message({'arguments': {}})
    msg['arguments']['x'] = 1
    assert bytes(msg) == b'{"arguments":{"x":1}}'


def test_lazy_conversion_defers_errors():
    """With eager=False, bad bytes raise only when the message is used."""
    msg = Message(b'not json', eager=False)
    with pytest.raises(DeserializationError):
        msg['a']


def test_lazy_valid_message():
    """A lazy message decodes on first use."""
    msg = Message(b'{"a": 1}', eager=False)
    assert msg.get('a') == 1 and 'a' in msg
    assert bytes(msg) == b'{"a":1}'


@pytest.mark.parametrize('raw', [b'{', b'nope', b'{"a": 1}}', b'',
                                 b'{"a": NaN}', b'{"a": Infinity}',
                                 b'{} {}', b'{"a": 1} x\n'])
def test_invalid_json(raw):
    """Invalid JSON raises DeserializationError, caused by the JSON error."""
    with pytest.raises(DeserializationError) as info:
        Message(raw)
    assert info.value.raw == raw
    assert isinstance(info.value.__cause__, ValueError)
    assert isinstance(info.value, ProtocolError)


def test_surrounding_whitespace_is_fine():
    """Whitespace around the object (CRLF, leading spaces) is accepted."""
    assert Message(b'  {"a": 1}\r\n') == {'a': 1}
    assert Message(b'\t{"a": 1} \n') == {'a': 1}


def test_non_utf8():
    """Bytes that are not UTF-8 raise DeserializationError."""
    with pytest.raises(DeserializationError) as info:
        Message(b'{"a": "\xff\xfe"}')
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    assert 'raw bytes were' in str(info.value)


@pytest.mark.parametrize('raw', [b'[]', b'1', b'"str"', b'null', b'true'])
def test_non_object_json(raw):
    """JSON that is not an object raises UnexpectedTypeError."""
    with pytest.raises(UnexpectedTypeError) as info:
        Message(raw)
    assert info.value.value == json.loads(raw)


@pytest.mark.parametrize('value', [{'a': {1, 2}}, {'a': object()},
                                   {'a': float('nan')}])
def test_unencodable_mapping(value):
    """A mapping JSON cannot carry raises SerializationError, a QMPError."""
    with pytest.raises(SerializationError) as info:
        Message(value)
    assert isinstance(info.value, QMPError)
    assert isinstance(info.value, ValueError)
    assert Message(value, eager=False)  # lazy: no error yet


def test_not_hashable():
    """Messages are mutable, so they are not hashable."""
    with pytest.raises(TypeError):
        hash(Message())


def test_default_is_empty_object():
    """Message() is the empty object."""
    assert Message() == {} and bytes(Message()) == b'{}'


def test_compares_with_non_mappings():
    """Comparing with a non-mapping is simply unequal."""
    assert Message() != 1 and Message() != []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_round_trip(obj):
    """Any JSON object survives bytes -> Message -> bytes -> Message."""
    msg = Message(obj)
    assert Message(bytes(msg)) == obj


def test_clone_is_independent_and_lazy():
    """A clone of a received message shares nothing, and is decoded only
    when first used."""
    msg = Message(b'{"event": "X", "data": {"list": [1, 2]}}')
    clone = msg.clone()
    assert clone._obj is None  # white-box: not decoded yet
    assert bytes(clone) == b'{"event": "X", "data": {"list": [1, 2]}}'
    clone['data']['list'].append(3)
    assert msg['data']['list'] == [1, 2]
    assert clone == {'event': 'X', 'data': {'list': [1, 2, 3]}}
    assert clone.clone()['data']['list'] == [1, 2]  # as received, see doc


def test_decoded_from():
    """The bytes received, until the top level changes; none for a
    message built from a mapping."""
    raw = b'{"event": "X", "data": {"n": 1}}'
    for msg in Message(raw), Message(raw, eager=False):
        assert msg.decoded_from == raw
        msg['data']['n'] = 2  # nested changes are not tracked
        assert msg.decoded_from == raw
        del msg['data']
        assert msg.decoded_from is None
    assert Message({'a': 1}).decoded_from is None
    assert Message(bytearray(b'{}')).decoded_from == b'{}'


def test_clone_after_changes_and_of_built_messages():
    """A message changed at its top level, or built from a mapping, is
    cloned from its current content."""
    msg = Message(b'{"a": 1}')
    msg['b'] = [2]
    assert msg.clone() == {'a': 1, 'b': [2]}
    del msg['a']
    assert msg.clone() == {'b': [2]}
    built = Message({'x': {'y': 1}})
    clone = built.clone()
    clone['x']['y'] = 2
    assert built['x']['y'] == 1
    with pytest.raises(SerializationError):
        Message({'f': object()}, eager=False).clone()


def test_too_deep_nesting_is_a_deserialization_error():
    """A message nested 20,000 levels deep (too deep for the decoder of
    every Python we claim; 3.13's takes 5,000) is a DeserializationError, not
    a RecursionError escaping the parser."""
    raw = b'{"a": ' + b'[' * 20000 + b']' * 20000 + b'}'
    with pytest.raises(DeserializationError, match='nested too deeply'):
        Message(raw)


def test_too_deep_nesting_cannot_be_encoded():
    """Encoding a value nested too deeply raises SerializationError."""
    value: list = []
    for _ in range(20000):
        value = [value]
    with pytest.raises(SerializationError, match='nested too deeply'):
        bytes(Message({'execute': 'x', 'arguments': {'v': value}},
                      eager=False))
