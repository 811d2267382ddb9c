"""
Soak: one session, 1,000,000 mixed executes and events, flat memory.

``python bench/soak.py [--ops N]`` starts the stand-in server, connects
once, and repeats rounds of 64 concurrent executes plus a burst of 512
events read through a listener, until N operations (executes + events)
are done.  It samples RSS and open file descriptors as it goes and prints
them; both should be flat from the first sample to the last.
"""

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from qemu.qmp import QMPClient  # noqa: E402  (after the path fix-up)
from workload import rss  # noqa: E402

WIDTH = 64
BURST = 512


def rss_mb():
    return rss() / 2**20


def open_fds():
    return len(os.listdir('/proc/self/fd'))


async def soak(path, total, samples):
    qmp = QMPClient('soak')
    await qmp.connect(path)
    done, next_sample, start = 0, 0, time.perf_counter()
    print(f"{'ops':>10} {'seconds':>8} {'RSS MB':>8} {'fds':>5}")
    with qmp.listener('BLOCK_JOB_PENDING') as listener:
        while done < total:
            await asyncio.gather(*(qmp.execute('query-status')
                                   for _ in range(WIDTH)))
            await qmp.execute('flood', {'count': BURST})
            for _ in range(BURST):
                await listener.get()
            done += WIDTH + 1 + BURST
            if done >= next_sample:
                gc.collect()
                sample = (done, time.perf_counter() - start, rss_mb(),
                          open_fds())
                samples.append(sample)
                print(f"{sample[0]:>10} {sample[1]:>8.1f} {sample[2]:>8.1f} "
                      f"{sample[3]:>5}", flush=True)
                next_sample += total // 10
    await qmp.disconnect()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--ops', type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='qmp-soak-') as tmp:
        path = os.path.join(tmp, 'soak.sock')
        server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'server.py'), path],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and \
            server.stdout.readline().strip() == 'ready'
        samples = []
        try:
            asyncio.run(soak(path, args.ops, samples))
        finally:
            server.kill()
            server.wait()
    first, last = samples[1], samples[-1]  # after one round of warm-up
    print(f"RSS {first[2]:.1f} -> {last[2]:.1f} MB, "
          f"fds {first[3]} -> {last[3]} "
          f"over {last[0] - first[0]:,} operations")


if __name__ == '__main__':
    main()
