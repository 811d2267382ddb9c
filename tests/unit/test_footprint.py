"""
What an idle session costs: thousands are held in one process (one per VM
of a node), so a regression here is a regression for them.

The server is bench/fleet_server.py in a process of its own, so that only
the client's allocations are counted.
"""

import asyncio
import gc
import os
import sys
import tracemalloc

from qemu.qmp import QMPClient

FLEET_SERVER = os.path.join(os.path.dirname(__file__), '..', '..', 'bench',
                            'fleet_server.py')

SESSIONS = 300

# Bytes per idle session that tracemalloc may count, by Python: older ones
# have larger coroutine frames.  Measured: 10.2 KB on 3.9, 10.8 KB on
# 3.10, 8.2 KB on 3.11, 8.8 KB on 3.12, 9.0 KB on 3.13 (17.7 KB on 3.11
# before issue 22).
LIMIT = 11.5 * 1024 if sys.version_info < (3, 11) else 9.5 * 1024


async def test_idle_session_costs_under_ten_kilobytes(tmp_path):
    """Connected, negotiated and idle, a session holds a few kilobytes:
    no queues, tasks or decoded messages it does not need yet."""
    path = str(tmp_path / 'fleet.sock')
    server = await asyncio.create_subprocess_exec(
        sys.executable, FLEET_SERVER, path, stdout=asyncio.subprocess.PIPE)
    clients = []
    try:
        assert await server.stdout.readline() == b'ready\n'
        # The first sessions pay for what every later one shares (logger,
        # caches, the event loop's own tables).
        for _ in range(5):
            clients.append(QMPClient())
            await clients[-1].connect(path)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            fleet = [QMPClient() for _ in range(SESSIONS)]
            for qmp in fleet:
                await qmp.connect(path)
            gc.collect()
            per_session = \
                (tracemalloc.get_traced_memory()[0] - before) / SESSIONS
        finally:
            tracemalloc.stop()
        clients.extend(fleet)
        assert per_session < LIMIT, \
            f"an idle session holds {per_session:.0f} bytes"
    finally:
        for qmp in clients:
            await qmp.disconnect()
        server.kill()
        await server.wait()
