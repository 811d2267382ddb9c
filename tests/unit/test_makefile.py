"""The Makefile's targets work from a fresh clone (no .venv yet)."""

import os
import shutil
import subprocess

import pytest

from tests.docs_blocks import ROOT
from tests.helpers import require_binary


# The targets that run the project's Python; each must set it up first.
NEEDS_THE_VENV = ['lint', 'typecheck', 'docs', 'test', 'pythons', 'bench',
                  'tui-screenshot']


def _dry_run(tmp_path, *goals):
    """What ``make -n GOALS`` would run in a fresh clone: no .venv, no
    virtual environment active."""
    make = require_binary('make')
    for name in ('Makefile', 'setup.cfg', 'pyproject.toml'):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {key: value for key, value in os.environ.items()
           if key not in ('VIRTUAL_ENV', 'MAKEFLAGS', 'MFLAGS')}
    result = subprocess.run([make, '-n', *goals], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize('target', NEEDS_THE_VENV)
def test_a_target_sets_up_the_venv_it_uses(tmp_path, target):
    """On a fresh clone, ``make docs`` (and every other target that runs
    .venv/bin/python) makes the venv and installs the project before it
    runs anything from it, as ``make check`` does."""
    lines = _dry_run(tmp_path, target).splitlines()
    python = str(tmp_path / '.venv' / 'bin' / 'python')
    setup = [i for i, line in enumerate(lines) if 'python3 -m venv' in line]
    uses = [i for i, line in enumerate(lines)
            if python in line and 'python3 -m venv' not in line
            and 'pip install' not in line and 'test -x' not in line]
    assert setup and uses, lines
    assert setup[0] < uses[0], lines


def test_check_only_sets_up_nothing(tmp_path):
    """``make check-only`` runs the checks as things are: no venv, no pip
    (``make check`` is the one that sets up)."""
    output = _dry_run(tmp_path, 'check-only')
    assert 'flake8' in output and 'sphinx' in output
    assert '-m tests.pythons' in output  # pytest, on every claimed Python
    assert 'python3 -m venv' not in output
    assert 'pip install' not in output
