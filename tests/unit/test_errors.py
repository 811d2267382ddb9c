"""The error hierarchy map in error.py matches the code."""

import importlib
import re

import qemu.qmp.error as error_module
from qemu.qmp.error import ProtocolError, QMPError


def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def public_tree():
    """(name, parent name, module file) for every public QMPError class."""
    tree = set()
    for cls in subclasses(QMPError):
        if cls.__name__.startswith('_'):
            continue
        parent = next(base for base in cls.__mro__[1:]
                      if issubclass(base, QMPError)
                      and not base.__name__.startswith('_'))
        module = cls.__module__.rsplit('.', 1)[-1] + '.py'
        tree.add((cls.__name__, parent.__name__, module))
    return tree


def documented_tree():
    """(name, parent name, module file) for every row of the map."""
    tree = set()
    stack = []  # (column, name) of the rows above, outermost first
    for line in error_module.__doc__.splitlines():
        match = re.search(r'(\w+Error)\s+(\w+\.py)$', line)
        if not match:
            continue
        column = match.start(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            tree.add((match.group(1), stack[-1][1], match.group(2)))
        stack.append((column, match.group(1)))
    return tree


def test_map_lists_every_error_class():
    """Every public QMPError subclass is in the map, at the right place."""
    documented = documented_tree()
    # Import every module the map names, so every class is defined.
    for module in {row[2] for row in documented}:
        importlib.import_module('qemu.qmp.' + module[:-3])
    assert public_tree() == documented


def test_protocol_error_message():
    """ProtocolError shows its message."""
    assert str(ProtocolError('broken')) == 'broken'
    assert ProtocolError('broken').error_message == 'broken'
