"""
Sphinx extension: every public name must appear in the API reference, and
short references in docstrings resolve.

After reading all pages, compare the Python objects the pages document
with the public names of the modules in `MODULES`, and warn about each
one missing (``make docs`` builds with ``-W``, so a warning fails it).

A module's public names are its ``__all__`` (or, without one, the classes
and functions it defines); a class's are the public attributes it defines
itself, plus the subclass hooks in `HOOKS`.  A name is checked where it is
defined: ``qemu.qmp.QMPClient`` is documented as
``qemu.qmp.qmp_client.QMPClient``.

Docstrings write `Message`, `IDLE` or `disconnect()` for names defined in
another module or class.  Sphinx looks those up only in the current module
and class; `resolve_short_name` then finds the one documented object whose
qualified name ends with it (preferring the current module and class), so
a name that matches nothing, or several equally, still fails the build.
"""

import importlib
import inspect
from typing import Any, Dict, Iterator, List, Optional, Set

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.nodes import make_refnode


logger = logging.getLogger(__name__)

MODULES = [
    'qemu.qmp', 'qemu.qmp.qmp_client', 'qemu.qmp.protocol',
    'qemu.qmp.reconnect', 'qemu.qmp.handshake',
    'qemu.qmp.replies', 'qemu.qmp.events', 'qemu.qmp.expect',
    'qemu.qmp.message',
    'qemu.qmp.models',
    'qemu.qmp.error', 'qemu.qmp.legacy', 'qemu.qmp.testing',
    'qemu.qmp.codec', 'qemu.qmp.util', 'qemu.qmp.qmp_shell',
    'qemu.qmp.qmp_tui',
]

# Private methods that are a contract: what a subclass of AsyncProtocol
# implements or calls.
HOOKS_CLASS = 'qemu.qmp.protocol.AsyncProtocol'
HOOKS = {
    '_do_recv', '_do_send', '_on_message', '_establish_session',
    '_cb_inbound', '_cb_outbound', '_recv', '_send', '_readline',
}


def _module_names(modname: str) -> Iterator[str]:
    """Qualified names of a module's public API, where each is defined."""
    module = importlib.import_module(modname)
    exported = getattr(module, '__all__', None)
    if exported is None:
        exported = [name for name, obj in vars(module).items()
                    if not name.startswith('_')
                    and (inspect.isclass(obj) or inspect.isfunction(obj))
                    and obj.__module__ == modname]
    for name in exported:
        obj = getattr(module, name)
        home = getattr(obj, '__module__', None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) \
                or home is None or not home.startswith('qemu.'):
            if modname == 'qemu.qmp':
                continue  # data the package re-exports from its modules
            home = modname  # data: documented where it is exported
        yield f"{home}.{name}"
        if inspect.isclass(obj) and home == modname:
            yield from _class_members(f"{home}.{name}", obj)


def _class_members(qualname: str, cls: type) -> Iterator[str]:
    hooks = HOOKS if qualname == HOOKS_CLASS else set()
    for attr, value in vars(cls).items():
        if attr.startswith('__') or (attr.startswith('_')
                                     and attr not in hooks):
            continue
        if isinstance(value, type(cls)) and issubclass(cls, Exception):
            continue
        yield f"{qualname}.{attr}"


def expected_names() -> Set[str]:
    names: Set[str] = set()
    for modname in MODULES:
        names.update(_module_names(modname))
    return names


def check(app: Sphinx, env: Any) -> None:
    documented: Dict[str, Any] = env.get_domain('py').objects
    missing = sorted(name for name in expected_names()
                     if name not in documented)
    for name in missing:
        logger.warning("public name missing from the API reference: %s",
                       name, type='apicheck')


def resolve_short_name(app: Sphinx, env: Any, node: pending_xref,
                       contnode: nodes.Element) -> Optional[nodes.Element]:
    """Resolve `Name`, `Class.method` or `method()` by unique suffix."""
    if node.get('refdomain') != 'py':
        return None
    target = node['reftarget'].lstrip('~.')
    if target.endswith('()'):
        target = target[:-2]
    objects: Dict[str, Any] = env.get_domain('py').objects
    found = _inherited(objects, target, node.get('py:module'),
                       node.get('py:class'))
    if not found:
        found = [name for name in objects
                 if name == target or name.endswith('.' + target)]
    if len(found) > 1:
        found = _closest(found, node.get('py:module'), node.get('py:class'))
    if len(found) != 1:
        return None
    entry = objects[found[0]]
    return make_refnode(app.builder, node['refdoc'], entry.docname,
                        entry.node_id, contnode, found[0])


def _inherited(objects: Dict[str, Any], target: str, module: Optional[str],
               cls: Optional[str]) -> List[str]:
    """
    A method or attribute a class inherits, where it is documented:
    `QMPClient.connect` is `AsyncProtocol.connect`, and `connect()` in
    QMPClient's docstrings too.
    """
    owner, _, attr = target.rpartition('.')
    if owner:
        classes = [name for name in objects
                   if objects[name].objtype in ('class', 'exception')
                   and (name == owner or name.endswith('.' + owner))]
    elif module and cls:
        classes = [f"{module}.{cls}"]
    else:
        return []
    if len(classes) != 1:
        return []
    modname, _, clsname = classes[0].rpartition('.')
    try:
        klass = getattr(importlib.import_module(modname), clsname)
    except (ImportError, AttributeError):
        return []
    for base in getattr(klass, '__mro__', ()):
        name = f"{base.__module__}.{base.__qualname__}.{attr}"
        if name in objects:
            return [name]
    return []


def _closest(found: List[str], module: Optional[str],
             cls: Optional[str]) -> List[str]:
    """The candidates in the current class, else in the current module."""
    for scope in (f"{module}.{cls}" if module and cls else None, module):
        if scope:
            near = [name for name in found if name.startswith(scope + '.')]
            if near:
                return near
    return found


def setup(app: Sphinx) -> Dict[str, Any]:
    app.connect('env-check-consistency', check)
    app.connect('missing-reference', resolve_short_name)
    return {'version': '1', 'parallel_read_safe': True}
