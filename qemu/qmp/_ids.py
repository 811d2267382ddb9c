"""
Command ids: how a reply finds its command.  Private.

A QMP id is any JSON value the client chose; the server copies it into the
reply.  Two ids are the same id when they are the same JSON value, so
`reply_key` maps an id to a dict key with exactly that meaning: ``1`` and
``1.0`` are one number, but ``true`` is not ``1`` (as it would be for
Python), and ``null`` is an id like any other.

The clients give commands ids of their own, `RESERVED_PREFIX` followed by a
counter; a caller's own ids may not use that prefix.
"""

from __future__ import annotations

import json
from itertools import count
from typing import Hashable


#: Ids the clients assign start with this; callers' ids may not.
RESERVED_PREFIX = '__qmp#'


def reply_key(exec_id: object) -> Hashable:
    """
    A dict key for the JSON id ``exec_id``, equal only for equal JSON.

    >>> reply_key('__qmp#00001')
    '__qmp#00001'
    >>> reply_key(1) == reply_key(1.0), reply_key(1) == reply_key(True)
    (True, False)
    >>> reply_key({'b': 1, 'a': [None]}) == reply_key({'a': [None], 'b': 1})
    True
    """
    if type(exec_id) is str:  # the clients' own ids: the hot path
        return exec_id
    if isinstance(exec_id, bool) or exec_id is None:
        return ('literal', exec_id)
    if isinstance(exec_id, (int, float)):
        return ('number', exec_id)
    return ('json', json.dumps(exec_id, sort_keys=True))


def check_caller_id(exec_id: object) -> None:
    """
    Refuse an id a caller chose if it could collide with the client's own.

    :raise ValueError: ``exec_id`` starts with `RESERVED_PREFIX`.
    """
    if isinstance(exec_id, str) and exec_id.startswith(RESERVED_PREFIX):
        raise ValueError(f"ids starting with {RESERVED_PREFIX!r} are "
                         f"reserved for the client's own use")


class IdMaker:
    """
    Make the client's own ids: `RESERVED_PREFIX` and a counter.

    >>> make_id = IdMaker()
    >>> make_id(), make_id()
    ('__qmp#00001', '__qmp#00002')
    """

    def __init__(self) -> None:
        self._counter = count(1)

    def __call__(self) -> str:
        return f"{RESERVED_PREFIX}{next(self._counter):05d}"
