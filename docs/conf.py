"""Sphinx configuration for the qemu.qmp documentation (``make docs``)."""

import os
import sys

# Document the checkout, not an installed copy; _ext holds our extension.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, '_ext'))

from qemu.qmp import __version__  # noqa: E402

project = 'qemu.qmp'
author = 'The qemu.qmp developers'
copyright = '2026, The qemu.qmp developers'  # noqa: A001 (Sphinx's name)
release = version = __version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
    'apicheck',
]

exclude_patterns = ['_build']
templates_path = []

# Docstrings write `Name` for a cross-reference.
default_role = 'py:obj'
# Every reference must resolve: a renamed or removed name is an error, not
# plain text that no longer links anywhere.  Python's own names cannot be
# linked without network access (no intersphinx), so they are exempt.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(asyncio|socket|ssl|logging|typing|collections|json|'
               r'contextlib|concurrent|enum|os|types|abc|readline|'
               r'argparse|subprocess|signal|threading|time|builtins|ast|'
               r'_asyncio)(\..*)?'),
    # Type variables, and private base classes shown by show-inheritance.
    (r'py:.*', r'qemu\.qmp\.\w+\.(_?T|_\w+)'),
    (r'py:.*', r'(bytes|str|dict)\.\w+|repr|len|isinstance'),
    (r'py:.*', r'(None|True|False|NotImplemented|Ellipsis)'),
    (r'py:(class|obj|exc|func|data)',
     r'(bool|bytes|bytearray|dict|float|int|list|object|set|frozenset|'
     r'str|tuple|type|memoryview|callable|range|BaseException|Exception|'
     r'\w+Error|\w+Exception|KeyboardInterrupt|GeneratorExit|'
     r'StopAsyncIteration|StopIteration|Any|Optional|Union|Callable|'
     r'Awaitable|AsyncIterator|Iterator|Iterable|Mapping|MutableMapping|'
     r'Sequence|Dict|List|Tuple|Set|Type|TypeVar|Generic|Hashable|'
     r'Coroutine|Deque|NoReturn|TextIO|IO|Pattern|Match)'),
    # The session core's waiter type variable, as Sphinx prints it.
    (r'py:.*', r'(qemu\.qmp\.core\.)?(W|Reply\[W\]|ReplyFailed\[W\])'),
    # qmp-tui's base classes and types are Textual's and Rich's.
    (r'py:.*', r'(textual|rich)\..*'),
]

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented'
autodoc_default_options = {
    'members': True,
    'show-inheritance': True,
}

html_theme = 'furo'
html_title = f'qemu.qmp {release}'
html_static_path = []
