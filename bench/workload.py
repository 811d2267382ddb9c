"""
One benchmark scenario, through the public API of whichever qemu.qmp is
importable: ``python workload.py SCENARIO SOCKET``.

Prints one JSON line: ops, wall seconds, client CPU seconds, and for the
flood scenario the RSS growth in bytes.  Only public API is used, so the
same file measures the reference library and this checkout.  With
``QMP_BENCH_LOOP=uvloop`` the asyncio scenarios run on uvloop.
"""

import asyncio
import gc
import json
import os
import sys
import time

from qemu.qmp import QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

SEQUENTIAL = 20000
PIPELINED = 64000
WIDTH = 64
EVENTS = 200000
FLOOD = 300000
BIG = 8 * 1024 * 1024
BIG_COUNT = 20
CYCLES = 300
QEMU_SEQUENTIAL = 5000
QEMU_CONCURRENT = 5000
LEGACY = 20000
QEMU_LEGACY = 5000


def rss():
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


async def connected(address):
    qmp = QMPClient('bench')
    await qmp.connect(address)
    return qmp


async def sequential(address, count=SEQUENTIAL):
    qmp = await connected(address)
    for _ in range(count):
        await qmp.execute('query-status')
    await qmp.disconnect()
    return count


async def pipelined(address, total=PIPELINED, width=WIDTH):
    qmp = await connected(address)

    async def worker():
        for _ in range(total // width):
            await qmp.execute('query-status')

    await asyncio.gather(*(worker() for _ in range(width)))
    await qmp.disconnect()
    return total // width * width


async def events(address):
    qmp = await connected(address)
    with qmp.listener() as listener:
        reply = asyncio.ensure_future(
            qmp.execute('flood', {'count': EVENTS}))
        seen = 0
        async for _ in listener:
            seen += 1
            if seen == EVENTS:
                break
        await reply
    await qmp.disconnect()
    return EVENTS


async def flood(address):
    qmp = await connected(address)
    gc.collect()
    before = rss()
    await qmp.execute('flood', {'count': FLOOD})
    gc.collect()
    growth = rss() - before
    await qmp.disconnect()
    return FLOOD, growth


async def big(address):
    qmp = await connected(address)
    for _ in range(BIG_COUNT):
        value = await qmp.execute('big', {'size': BIG})
        assert len(value) == BIG
    await qmp.disconnect()
    return BIG_COUNT


async def cycles(address):
    qmp = QMPClient('bench')
    for _ in range(CYCLES):
        await qmp.connect(address)
        await qmp.disconnect()
    return CYCLES


def legacy(address, count=LEGACY):
    """The blocking client, one command at a time (no event loop)."""
    qmp = QEMUMonitorProtocol(address)
    qmp.connect()
    for _ in range(count):
        qmp.cmd('query-status')
    qmp.close()
    return count


def qemu_legacy(address):
    return legacy(address, QEMU_LEGACY)


async def qemu_sequential(address):
    return await sequential(address, QEMU_SEQUENTIAL)


async def qemu_concurrent(address):
    return await pipelined(address, QEMU_CONCURRENT, WIDTH)


SCENARIOS = {
    'sequential': sequential, 'pipelined': pipelined, 'events': events,
    'flood': flood, 'big': big, 'cycles': cycles,
    'qemu-sequential': qemu_sequential, 'qemu-concurrent': qemu_concurrent,
}
# Blocking scenarios: plain functions, run without an event loop.
BLOCKING = {'legacy': legacy, 'qemu-legacy': qemu_legacy}


def main():
    scenario, address = sys.argv[1], sys.argv[2]
    wall, cpu = time.perf_counter(), time.process_time()
    if scenario in BLOCKING:
        result = BLOCKING[scenario](address)
    else:
        if os.environ.get('QMP_BENCH_LOOP') == 'uvloop':
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        result = asyncio.run(SCENARIOS[scenario](address))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ops, growth = result if isinstance(result, tuple) else (result, None)
    print(json.dumps({'ops': ops, 'wall': wall, 'cpu': cpu,
                      'rss_growth': growth}))


if __name__ == '__main__':
    main()
