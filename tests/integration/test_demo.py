"""python3 -m qemu.qmp.demo, the scripted tour, against real QEMU."""

import asyncio
import os

import pytest

from qemu.qmp import QMPClient, Runstate, demo
from tests.helpers import require_binary

pytestmark = pytest.mark.integration


async def test_quit_then_hang_up(monkeypatch, capsys):
    """QEMU answers quit and closes the connection: the tour ends with
    status 0 even when the hang-up is seen before it disconnects (it
    raised EOFError then, about every other run in debug mode)."""
    require_binary('qemu-system-x86_64')
    execute = QMPClient.execute

    async def execute_then_see_hang_up(self, cmd, *args, **kwargs):
        value = await execute(self, cmd, *args, **kwargs)
        if cmd == 'quit':  # the slow case, every time
            while self.runstate is Runstate.RUNNING:
                await self.runstate_changed()
        return value

    monkeypatch.setattr(QMPClient, 'execute', execute_then_see_hang_up)
    assert await demo.main() == 0
    out = capsys.readouterr().out
    assert 'event: STOP' in out and 'event: RESUME' in out


async def test_qemu_that_exits_before_connecting(monkeypatch, tmp_path,
                                                 capsys):
    """A QEMU that fails at once (a broken install, say) is reported at
    once, with its status, instead of a traceback 30 s later."""
    fake = tmp_path / 'qemu-system-x86_64'
    fake.write_text('#!/bin/sh\necho "qemu: broken" >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f"{tmp_path}:{os.environ['PATH']}")
    assert await asyncio.wait_for(demo.main(), 20) == 1
    err = capsys.readouterr().err
    assert 'exited with status 3 before connecting' in err
