"""
The documentation's code blocks are complete, typed programs.

They are run against real QEMU by tests/integration/test_docs_run.py; here
they are only read and type-checked, so a broken example fails even where
QEMU is not installed.
"""

import ast
import os
import subprocess
import sys

import pytest

from tests.docs_blocks import (
    LANGUAGES,
    ROOT,
    all_blocks,
    bare_literal_blocks,
    blocks,
    documents,
)


def test_every_block_says_its_language():
    """No ``::`` literal block (it could hide untested Python), and only
    known languages."""
    bare = [f"{path.relative_to(ROOT)}:{line}" for path in documents()
            for line in bare_literal_blocks(path)]
    assert not bare, f"use '.. code-block:: LANG' instead of '::': {bare}"
    unknown = [f"{block.where} ({block.language})" for path in documents()
               for block in blocks(path) if block.language not in LANGUAGES]
    assert not unknown, f"unknown languages: {unknown}"


def test_python_blocks_are_programs():
    """Each Python block runs on its own: it parses, and it either does
    something at the top level (``asyncio.run(main())``) or is a pytest
    module."""
    python = all_blocks()
    assert len(python) > 20  # the collector found the docs
    idle = []
    for block in python:
        tree = ast.parse(block.code, block.where)
        acts = any(isinstance(node, (ast.Expr, ast.With, ast.If, ast.For))
                   for node in tree.body)
        tests = any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.name.startswith('test_') for node in tree.body)
        if not (acts or tests):
            idle.append(block.where)
    assert not idle, f"blocks that would run nothing: {idle}"


@pytest.mark.timeout(300)
def test_python_blocks_pass_mypy_strict(tmp_path):
    """A user who copies an example into a typed project gets no error
    from ``mypy --strict``."""
    config = tmp_path / 'mypy.ini'
    config.write_text('[mypy]\n')
    files = []
    for block in all_blocks():
        path = tmp_path / f"{block.ident}.py"
        path.write_text(block.code)
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, '-m', 'mypy', '--strict', '--no-error-summary',
         '--cache-dir', str(ROOT / '.mypy_cache'),
         '--config-file', str(config), *files],
        cwd=tmp_path, capture_output=True, text=True, timeout=280,
        env={'MYPYPATH': str(ROOT), 'PATH': '/usr/bin:/bin'}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_build_fails_without_a_public_name(tmp_path):
    """The guard behind ``make docs``: a site that documents only
    qemu.qmp.message warns about every other public name, hooks
    included, and about none of Message's."""
    pytest.importorskip('sphinx')
    (tmp_path / 'conf.py').write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'docs' / '_ext')!r}]\n"
        "extensions = ['sphinx.ext.autodoc', 'apicheck']\n")
    (tmp_path / 'index.rst').write_text(
        "Only messages\n=============\n\n"
        ".. automodule:: qemu.qmp.message\n   :members:\n")
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-q', '-E', '-b', 'html',
         str(tmp_path), str(tmp_path / 'out')],
        capture_output=True, text=True, timeout=120, check=False)
    missing = {line.rsplit(': ', 1)[1].split()[0]
               for line in result.stderr.splitlines()
               if 'public name missing' in line}
    assert {'qemu.qmp.qmp_client.QMPClient.session_events',
            'qemu.qmp.protocol.AsyncProtocol._do_recv',
            'qemu.qmp.protocol.SocketAddrT',
            'qemu.qmp.testing.Handler'} <= missing
    assert not {name for name in missing
                if name.startswith('qemu.qmp.message.')}


def test_console_commands_read_as_typed():
    """A console block's commands: continuation lines joined, ``&`` noted,
    a session's typed lines told from the output."""
    from tests.docs_blocks import Block, console_commands

    block = Block(ROOT / 'README.rst', 1, 'console', (
        "$ qemu-system-x86_64 -M none \\\n"
        "      -qmp unix:qmp.sock,server=on,wait=off &\n"
        "$ qmp-shell 'qmp.sock'\n"
        "(QEMU) query-status\n"
        '{"status": "running"}\n'))
    first, second = console_commands(block)
    assert first.argv == ['qemu-system-x86_64', '-M', 'none', '-qmp',
                          'unix:qmp.sock,server=on,wait=off']
    assert first.background and not first.typed and not first.output
    assert second.argv == ['qmp-shell', 'qmp.sock']
    assert not second.background
    assert second.typed == ['query-status']
    assert second.output == ['{"status": "running"}']


# The blocking page's first example: a command, then an event awaited for
# a few seconds, with a message when none comes.
_WAITS_FOR_AN_EVENT = 'pull_event(wait=5.0)'


@pytest.mark.timeout(60)
def test_the_blocking_example_says_when_no_event_comes(tmp_path):
    """The fallback of docs/blocking.rst's first example is reachable:
    against a monitor whose ``stop`` sends no event (QEMU's, when the VM
    is already paused), it prints its message and exits 0, instead of a
    traceback."""
    from qemu.qmp.testing import QMPTestServer, ServerThread

    [block] = [block for block in blocks(ROOT / 'docs' / 'blocking.rst')
               if _WAITS_FOR_AN_EVENT in block.code]
    server = QMPTestServer()
    server.on('query-status', {'status': 'paused', 'running': False})
    server.on('stop', {})
    server.on('cont', {})
    script = tmp_path / 'example.py'
    script.write_text(block.code)
    thread = ServerThread(server)
    try:
        thread.start(str(tmp_path / 'qmp.sock'))
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=50, check=False)
    finally:
        thread.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == 'no event within 5 s'
