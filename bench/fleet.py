"""
Many idle sessions in one process, as a node agent holds one per VM:
``python fleet.py N SOCKET [gc-tuned]`` (with fleet_server.py listening
there).  With ``gc-tuned``, full garbage collections are held back once
the sessions are connected, as docs/performance.rst ("Many VMs")
advises a process holding thousands of sessions.

Through the public API only, so the same file measures the reference
library and this checkout.  Prints one JSON line:

- ``rss_per_session``: RSS growth per connected, idle session (bytes);
- ``connect``: seconds to connect them all, 200 at a time;
- ``cmd_cpu_us``, ``cmds_per_s``: one ``query-status`` on every session
  at once (``asyncio.gather``), five rounds: client CPU per command, and
  commands per wall-clock second;
- ``event_cpu_us``, ``events_per_s``: one event to every session (each
  waiting in ``qmp.events.get()``), five rounds.
"""

import asyncio
import gc
import json
import resource
import sys
import time

from qemu.qmp import QMPClient
from workload import rss

ROUNDS = 5
AT_ONCE = 200


def timed(results, key_cpu, key_rate, count, started):
    wall, cpu = started
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results[key_cpu] = cpu / count * 1e6
    results[key_rate] = count / wall


def hold_back_full_collections():
    """At most one full collection per 100 middle ones, not 10: what it
    costs grows with every object the sessions hold."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)


async def fleet(size, address, gc_tuned=False):
    results = {'sessions': size}
    gc.collect()
    before = rss()
    started = time.perf_counter()
    clients = [QMPClient(f'vm{number}') for number in range(size)]
    for first in range(0, size, AT_ONCE):
        await asyncio.gather(*(qmp.connect(address)
                               for qmp in clients[first:first + AT_ONCE]))
    results['connect'] = time.perf_counter() - started
    gc.collect()
    results['rss_per_session'] = (rss() - before) / size
    if gc_tuned:
        hold_back_full_collections()

    started = time.perf_counter(), time.process_time()
    for _ in range(ROUNDS):
        replies = await asyncio.gather(
            *(qmp.execute('query-status') for qmp in clients))
        assert all(reply['status'] == 'running' for reply in replies)
    timed(results, 'cmd_cpu_us', 'cmds_per_s', ROUNDS * size, started)

    started = time.perf_counter(), time.process_time()
    for _ in range(ROUNDS):
        waiting = [asyncio.ensure_future(qmp.events.get())
                   for qmp in clients]
        await clients[0].execute('broadcast')
        events = await asyncio.gather(*waiting)
        assert all(event['event'] == 'BLOCK_JOB_PENDING' for event in events)
    timed(results, 'event_cpu_us', 'events_per_s', ROUNDS * size, started)

    for first in range(0, size, AT_ONCE):
        await asyncio.gather(*(qmp.disconnect()
                               for qmp in clients[first:first + AT_ONCE]))
    return results


def main():
    size, address = int(sys.argv[1]), sys.argv[2]
    gc_tuned = sys.argv[3:] == ['gc-tuned']
    # A file descriptor per session: raise the soft limit as far as the
    # hard one allows (docs/performance.rst, "Many VMs").
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(fleet(size, address, gc_tuned))))


if __name__ == '__main__':
    main()
