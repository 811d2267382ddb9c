#!/usr/bin/env python3
"""
The same backup as backup.py, with the blocking API.

    qemu-img create -f qcow2 backup.qcow2 SIZE     # SIZE: the disk's size
    python3 backup_blocking.py qmp.sock NODE backup.qcow2
"""

import argparse
import asyncio
import os

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

JOB = 'example-backup'
TARGET = 'example-backup-target'


def backup(qmp: QEMUMonitorProtocol, node: str, target: str) -> None:
    qmp.cmd('blockdev-add', **{
        'node-name': TARGET, 'driver': 'qcow2',
        'file': {'driver': 'file', 'filename': os.path.abspath(target)}})
    try:
        # Events are kept from the moment of connecting: none is missed.
        qmp.cmd('blockdev-backup', **{
            'job-id': JOB, 'device': node, 'target': TARGET,
            'sync': 'full', 'auto-dismiss': False})
        status = 'created'
        while status != 'concluded':
            try:
                event = qmp.pull_event(wait=0.5)
            except asyncio.TimeoutError:
                event = None
            if event is None:
                for job in qmp.cmd('query-jobs'):
                    if job['id'] == JOB and job['total-progress']:
                        percent = (100 * job['current-progress']
                                   // job['total-progress'])
                        print(f"{job['status']}: {percent}%", flush=True)
            elif event['event'] == 'JOB_STATUS_CHANGE' \
                    and event['data']['id'] == JOB:
                status = event['data']['status']
        jobs = qmp.cmd('query-jobs')
        error = next(job.get('error') for job in jobs if job['id'] == JOB)
        qmp.cmd('job-dismiss', id=JOB)
        if error:
            raise SystemExit(f"backup failed: {error}")
        print(f"{node} backed up to {target}")
    finally:
        qmp.cmd('blockdev-del', **{'node-name': TARGET})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('socket', help="QEMU's QMP socket")
    parser.add_argument('node', help='node name of the disk to back up')
    parser.add_argument('target', help='an existing qcow2 image, as large')
    args = parser.parse_args()

    with QEMUMonitorProtocol(args.socket, nickname='backup') as qmp:
        qmp.connect()
        try:
            backup(qmp, args.node, args.target)
        except ExecuteError as err:
            raise SystemExit(f"QEMU refused: {err}") from None


if __name__ == '__main__':
    main()
