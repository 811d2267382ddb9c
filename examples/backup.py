#!/usr/bin/env python3
"""
Back up a disk of a running VM into a qcow2 image, with progress.

    qemu-img create -f qcow2 backup.qcow2 SIZE     # SIZE: the disk's size
    python3 backup.py qmp.sock NODE backup.qcow2

NODE is the node name of the disk (``query-named-block-nodes`` lists
them).  The backup is a ``blockdev-backup`` job; its progress comes from
``query-jobs``, its end from ``JOB_STATUS_CHANGE`` events.
"""

import argparse
import asyncio
import os
import sys

from qemu.qmp import ExecuteError, Message, QMPClient

JOB = 'example-backup'
TARGET = 'example-backup-target'


def our_job(event: Message) -> bool:
    return bool(event['data']['id'] == JOB)


async def report_progress(qmp: QMPClient) -> None:
    """Print the job's progress twice a second, until cancelled."""
    while True:
        for job in await qmp.execute('query-jobs'):
            if job['id'] == JOB and job['total-progress']:
                done, total = job['current-progress'], job['total-progress']
                percent = 100 * done // total
                print(f"{job['status']}: {percent}%", flush=True)
        await asyncio.sleep(0.5)


async def backup(qmp: QMPClient, node: str, target: str) -> None:
    await qmp.execute('blockdev-add', {
        'node-name': TARGET, 'driver': 'qcow2',
        'file': {'driver': 'file', 'filename': os.path.abspath(target)}})
    try:
        # Listen before starting the job: no status change can be missed.
        with qmp.listener('JOB_STATUS_CHANGE', our_job) as changes:
            await qmp.execute('blockdev-backup', {
                'job-id': JOB, 'device': node, 'target': TARGET,
                'sync': 'full', 'auto-dismiss': False})
            progress = asyncio.create_task(report_progress(qmp))
            try:
                async for event in changes:
                    if event['data']['status'] == 'concluded':
                        break
            finally:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
        jobs = await qmp.execute('query-jobs')
        error = next(job.get('error') for job in jobs if job['id'] == JOB)
        await qmp.execute('job-dismiss', {'id': JOB})
        if error:
            raise SystemExit(f"backup failed: {error}")
        print(f"{node} backed up to {target}")
    finally:
        await qmp.execute('blockdev-del', {'node-name': TARGET})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('socket', help="QEMU's QMP socket")
    parser.add_argument('node', help='node name of the disk to back up')
    parser.add_argument('target', help='an existing qcow2 image, as large')
    args = parser.parse_args()

    qmp = QMPClient('backup')
    await qmp.connect(args.socket)
    try:
        await backup(qmp, args.node, args.target)
    except ExecuteError as err:
        raise SystemExit(f"QEMU refused: {err}") from None
    finally:
        await qmp.disconnect()


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
