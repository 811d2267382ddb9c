"""
Record tests/transcripts/qemu-VERSION/*.jsonl from a real QEMU:
``make transcripts`` (``QEMU=/path/to/qemu-system-x86_64`` for another
version than the one on PATH).

Each session of sessions.py runs against a QEMU of its own (``-M none``,
a 64 MiB qcow2 disk as node ``disk0``) and is recorded to a file named
after it, in a directory named after the version QEMU's greeting gives.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.transcript import Recorder
from tests.transcripts.sessions import SESSIONS

HERE = Path(__file__).resolve().parent


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"record.py: {name} is not installed")
    return path


async def record(qemu: str, name: str) -> Path:
    with tempfile.TemporaryDirectory(prefix='qmp-transcript-') as work:
        for image in ('disk.qcow2', 'backup.qcow2'):
            subprocess.run([tool('qemu-img'), 'create', '-q', '-f', 'qcow2',
                            image, '64M'], cwd=work, check=True)
        subprocess.run([tool('qemu-io'), '-f', 'qcow2', '-c',
                        'write -P 0x5a 1M 4M', 'disk.qcow2'], cwd=work,
                       check=True, capture_output=True)
        # Not -daemonize, which would leave the directory the relative
        # paths are in: connect() tries again until the socket is there.
        proc = subprocess.Popen([
            qemu, '-M', 'none', '-nodefaults', '-display', 'none',
            '-blockdev', 'driver=qcow2,node-name=disk0,file.driver=file,'
                         'file.filename=disk.qcow2',
            '-qmp', 'unix:qmp.sock,server=on,wait=off'], cwd=work)
        partial = Path(work) / 'session.jsonl'
        try:
            qmp = QMPClient(name)
            with Recorder(partial) as qmp.recorder:
                await qmp.connect(os.path.join(work, 'qmp.sock'), retry=30)
                await SESSIONS[name](qmp)
                await qmp.disconnect()
            assert qmp.greeting is not None
            version = qmp.greeting.QMP.version['qemu']
        finally:
            proc.kill()
            proc.wait()
        directory = HERE / 'qemu-{major}.{minor}.{micro}'.format(**version)
        directory.mkdir(exist_ok=True)
        target = directory / f'{name}.jsonl'
        shutil.copyfile(partial, target)
        return target


def main() -> None:
    qemu = os.environ.get('QEMU') or tool('qemu-system-x86_64')
    for name in SESSIONS:
        path = asyncio.run(record(qemu, name))
        print(f"{path.relative_to(HERE.parents[1])}: "
              f"{path.stat().st_size:,} bytes", file=sys.stderr)


if __name__ == '__main__':
    main()
