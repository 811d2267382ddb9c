"""Splitting a JSON byte stream into texts, as QEMU's parser does."""

import json

from hypothesis import given, strategies as st

from qemu.qmp._json_stream import JsonSplitter

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
objects = st.dictionaries(st.text(max_size=5), values, max_size=4)


def split(data, cuts):
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def texts_of(splitter, pieces):
    out = []
    for piece in pieces:
        out.extend(splitter.feed(piece))
    last = splitter.finish()
    return [text for text in out if text is None or text.strip()] \
        + ([last] if last.strip() else [])


@given(st.lists(objects, max_size=6),
       st.lists(st.sampled_from([b'', b' ', b'\n', b'\r\n']), min_size=6,
                max_size=6),
       st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_gives_each_object(items, separators, cuts):
    """Objects with or without newlines between them, split anywhere
    (inside strings and escapes too), come out one text each."""
    stream = b''.join(json.dumps(item).encode() + sep
                      for item, sep in zip(items, separators))
    texts = texts_of(JsonSplitter(1 << 20), split(stream, cuts))
    assert [json.loads(text) for text in texts] == items


def test_lines_that_are_not_objects_come_out_by_line():
    splitter = JsonSplitter(100)
    assert splitter.feed(b'null\n\xc3\x28\n[1, 2]') == [b'null\n',
                                                        b'\xc3\x28\n',
                                                        b'[1, 2]']


def test_too_long_text_is_none_once_and_dropped():
    splitter = JsonSplitter(10)
    texts = splitter.feed(b'{"s": "' + b'a' * 50)
    texts += splitter.feed(b'a' * 50 + b'"}{"ok": 1}')
    assert texts == [None, b'{"ok": 1}']


def test_sync_byte_starts_afresh():
    """0xFF inside an unfinished text drops it (the guest agent's
    resynchronisation); the next text keeps the 0xFF."""
    splitter = JsonSplitter(100)
    texts = splitter.feed(b'{"execute": "half\xff{"execute": "a"}')
    assert texts == [b'\xff{"execute": "a"}']
    assert splitter.feed(b'\xff{"b": 1}') == [b'\xff{"b": 1}']
