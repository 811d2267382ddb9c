"""
The code blocks of the documentation, for the tests that run and check them.

Every block is written ``.. code-block:: LANG``: ``python`` blocks are
whole programs (or, with ``def test_...``, pytest modules) that the tests
type-check with ``mypy --strict`` and run against real QEMU; ``console``
and ``text`` blocks show commands and output.  A bare ``::`` literal block
is refused, so no Python can hide from the tests.  The documentation is
README.rst, docs/*.rst, and the docstrings of qemu/qmp/*.py.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List


ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = {'python', 'console', 'text', 'json', 'ini', 'make', 'shell'}

_DIRECTIVE = re.compile(r'^(\s*)\.\. code-block::\s*(\S+)\s*$')
_OPTION = re.compile(r'^\s+:[\w-]+:')
_OTHER_DIRECTIVE = re.compile(r'^\s*\.\. ')


@dataclass
class Block:
    """One code block: where it is, its language and its text."""

    path: Path
    line: int
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def ident(self) -> str:
        """A name usable as a file name and a test id."""
        stem = re.sub(r'\W', '_', str(self.path.relative_to(ROOT)))
        return f"{stem}_{self.line}"


def documents() -> List[Path]:
    """Every file whose code blocks are documentation."""
    return [ROOT / 'README.rst', *sorted((ROOT / 'docs').glob('*.rst')),
            *sorted((ROOT / 'qemu' / 'qmp').glob('*.py'))]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def blocks(path: Path) -> Iterator[Block]:
    """The ``code-block`` blocks of one file, in order."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, language = len(match.group(1)), match.group(2)
        start = i + 1
        i += 1
        while i < len(lines) and (_OPTION.match(lines[i])
                                  and _indent(lines[i]) > indent):
            i += 1
        body: List[str] = []
        while i < len(lines) and (not lines[i].strip()
                                  or _indent(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        yield Block(path, start, language,
                    textwrap.dedent('\n'.join(body)).strip('\n') + '\n')


def bare_literal_blocks(path: Path) -> Iterator[int]:
    """Line numbers of ``::`` literal blocks (they have no language)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.rstrip()
        if text.endswith('::') and not _OTHER_DIRECTIVE.match(text) \
                and not text.lstrip().startswith('#'):
            yield number


def all_blocks(language: str = 'python') -> List[Block]:
    """Every block of ``language`` in the documentation."""
    return [block for path in documents() for block in blocks(path)
            if block.language == language]


@dataclass
class ConsoleCommand:
    """One ``$`` command of a ``console`` block, and what follows it."""

    #: The command's words, continuation lines joined, a final ``&`` off.
    argv: List[str]
    #: Whether it ends in ``&`` (runs in the background).
    background: bool
    #: Lines typed at the program's prompt (``(QEMU) query-status``).
    typed: List[str]
    #: The other lines: what the program prints.
    output: List[str]


#: The prompts of the programs the documentation shows a session of.
PROMPTS = ('(QEMU) ',)


def console_commands(block: Block) -> List[ConsoleCommand]:
    """The commands of a ``console`` block, as a reader would type them."""
    commands: List[ConsoleCommand] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith('$ '):
            text = line[2:]
            while text.endswith('\\') and i < len(lines):
                text = text[:-1] + ' ' + lines[i].strip()
                i += 1
            words = shlex.split(text)
            background = bool(words) and words[-1] == '&'
            commands.append(ConsoleCommand(
                words[:-1] if background else words, background, [], []))
        elif commands and line.startswith(PROMPTS):
            commands[-1].typed.append(line.split(' ', 1)[1])
        elif commands and line.strip():
            commands[-1].output.append(line)
    return commands
