"""
The sessions recorded from real QEMU by ``make transcripts`` (record.py)
and replayed by tests/unit/test_transcripts.py: the same code both ways.

Each takes a connected `QMPClient` and returns what it saw, so a replay
can be compared with what the recording saw.  QEMU runs in a directory of
its own with ``disk.qcow2`` (64 MiB) as node ``disk0``; paths are
relative to it, so the transcripts hold none of the recording machine's.
"""

from typing import Any, Awaitable, Callable, Dict, List

from qemu.qmp import QMPClient

Session = Callable[[QMPClient], Awaitable[List[Any]]]


async def probe(qmp: QMPClient) -> List[Any]:
    """What a tool asks first: version, commands, the schema."""
    return [await qmp.execute('query-version'),
            await qmp.execute('query-commands'),
            await qmp.execute('query-qmp-schema')]


async def backup_job(qmp: QMPClient) -> List[Any]:
    """A full backup of disk0 as a job, followed by its events to the
    end, then its clean-up."""
    seen = [await qmp.execute('blockdev-add', {
        'node-name': 'target0', 'driver': 'qcow2',
        'file': {'driver': 'file', 'filename': 'backup.qcow2'}})]
    async with qmp.expect('JOB_STATUS_CHANGE',
                          {'id': 'job0', 'status': 'concluded'}):
        seen.append(await qmp.execute('blockdev-backup', {
            'job-id': 'job0', 'device': 'disk0', 'target': 'target0',
            'sync': 'full', 'auto-dismiss': False}))
    seen.append([job['status'] for job in await qmp.execute('query-jobs')])
    seen.append(await qmp.execute('job-dismiss', {'id': 'job0'}))
    seen.append(await qmp.execute('blockdev-del', {'node-name': 'target0'}))
    seen.append(_statuses(qmp.events.history))
    return seen


def _statuses(events: Any) -> List[Dict[str, Any]]:
    return [{'event': event['event'], 'data': event['data']}
            for event in events]


#: Every session, by the name of its transcript file.
SESSIONS: Dict[str, Session] = {'probe': probe, 'backup-job': backup_job}
