"""
The public API of whichever ``qemu.qmp`` is importable, as a list of names.

``python -m tests.api_names`` prints one line per name::

    qemu.qmp.protocol:AsyncProtocol.connect(self, address, ssl)
    qemu.qmp.protocol:Runstate

that is, every public module-level name of the modules below, every public
attribute of the classes they define, the subclass hooks QEMU's code and
the reference library's tests use, and the parameter names of everything
callable.  ``make reference-api`` runs it against the reference library in a
throwaway virtual environment and stores the result in
``tests/reference_api.txt``; ``tests/unit/test_exports.py`` checks that this
package still has every name there, with the same leading parameters.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Dict, List, Optional, TypeVar


MODULES = ['qemu.qmp', 'qemu.qmp.error', 'qemu.qmp.message',
           'qemu.qmp.models', 'qemu.qmp.protocol', 'qemu.qmp.qmp_client',
           'qemu.qmp.events', 'qemu.qmp.legacy', 'qemu.qmp.util',
           'qemu.qmp.qmp_shell']

# Private members that are a contract all the same: the subclass hooks of
# AsyncProtocol, and what QEMU's own code and the reference's tests call.
PRIVATE_CONTRACT = {
    '_do_recv', '_do_send', '_recv', '_send', '_readline', '_on_message',
    '_cb_inbound', '_cb_outbound', '_establish_session', '_do_connect',
    '_do_accept', '_do_start_server', '_set_state', '_schedule_disconnect',
    '_wait_disconnect', '_bh_disconnect', '_bh_loop_forever',
    '_bh_send_message', '_bh_recv_message', '_session_guard', '_execute',
    '_raw', '_asdict',
}


def _parameters(obj: object) -> Optional[List[str]]:
    """Parameter names of a callable, or `None` if it has no signature."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    if not callable(obj) or type(obj).__module__ == 'typing':
        return None  # type aliases are names, not functions
    try:
        return list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _is_public(name: str) -> bool:
    return not name.startswith('_')


def api() -> Dict[str, Optional[List[str]]]:
    """Map ``module:name`` to its parameter names (`None`: not callable)."""
    found: Dict[str, Optional[List[str]]] = {}
    for modname in MODULES:
        module = importlib.import_module(modname)
        exported = set(getattr(module, '__all__', ()))
        for name, obj in vars(module).items():
            if not _is_public(name) or inspect.ismodule(obj) \
                    or isinstance(obj, TypeVar):
                continue
            origin = getattr(obj, '__module__', None)
            if name not in exported and origin is not None \
                    and origin != modname and not inspect.isclass(obj):
                continue  # imported from elsewhere, not this module's API
            if inspect.isclass(obj) and origin != modname \
                    and name not in exported:
                continue
            found[f"{modname}:{name}"] = _parameters(obj) \
                if not inspect.isclass(obj) else None
            if inspect.isclass(obj) and (origin == modname
                                         or name in exported):
                found.update(_members(modname, name, obj))
    return found


def _members(modname: str, name: str,
             cls: type) -> Dict[str, Optional[List[str]]]:
    members: Dict[str, Optional[List[str]]] = {}
    inherited_noise = set(dir(BaseException)) \
        if issubclass(cls, BaseException) else set()
    for attr in dir(cls):
        if attr in inherited_noise:
            continue
        if not _is_public(attr) and attr not in PRIVATE_CONTRACT \
                and attr != '__init__':
            continue
        if attr == '__init__' and cls.__init__ is object.__init__:
            continue
        value = inspect.getattr_static(cls, attr)
        members[f"{modname}:{name}.{attr}"] = _parameters(value)
    return members


def render(names: Dict[str, Optional[List[str]]]) -> List[str]:
    """The lines of the list, sorted."""
    return sorted(key if params is None else f"{key}({', '.join(params)})"
                  for key, params in names.items())


def parse(lines: List[str]) -> Dict[str, Optional[List[str]]]:
    """The inverse of `render`."""
    names: Dict[str, Optional[List[str]]] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if line.endswith(')'):
            key, _, params = line[:-1].partition('(')
            names[key] = [p for p in params.split(', ') if p]
        else:
            names[line] = None
    return names


def main() -> None:
    """Print the list, with a header saying which library it describes."""
    import qemu.qmp  # pylint: disable=import-outside-toplevel
    version = getattr(qemu.qmp, '__version__', None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version('qemu.qmp')
    print(f"# The public API of qemu.qmp {version}: names and parameter "
          f"names only.\n# Made by `make reference-api` "
          f"(tests/api_names.py); do not edit.")
    print('\n'.join(render(api())))


if __name__ == '__main__':
    sys.exit(main())
