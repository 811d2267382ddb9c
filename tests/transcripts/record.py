"""
Record tests/transcripts/qemu-VERSION/*.jsonl from a real QEMU:
``make transcripts`` (``QEMU=/path/to/qemu-system-x86_64`` for another
version than the one on PATH).

Each session of sessions.py runs against a QEMU of its own (``-M none``,
a 64 MiB qcow2 disk as node ``disk0``) and is recorded to a file named
after it, in a directory named after the version QEMU's greeting gives.

The scripts of examples/ are recorded too, into ``examples/`` there: each
runs as a program of its own, through qmp-record (the recording proxy),
as any program would be.  Paths of the recording's temporary directory
are masked: a replay accepts whatever path the test gives.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, List

from qemu.qmp import QMPClient
from qemu.qmp.qmp_record import serve
from qemu.qmp.transcript import MASKED, Recorder, Transcript
from tests.transcripts.sessions import SESSIONS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"record.py: {name} is not installed")
    return path


def start_qemu(qemu: str, work: str, *sockets: str) -> subprocess.Popen:
    """QEMU in ``work``, disk0 on disk.qcow2, a monitor on each socket.
    Not -daemonize, which would leave the directory the relative paths
    are in: clients try again until the socket is there."""
    for image in ('disk.qcow2', 'backup.qcow2'):
        subprocess.run([tool('qemu-img'), 'create', '-q', '-f', 'qcow2',
                        image, '64M'], cwd=work, check=True)
    subprocess.run([tool('qemu-io'), '-f', 'qcow2', '-c',
                    'write -P 0x5a 1M 4M', 'disk.qcow2'], cwd=work,
                   check=True, capture_output=True)
    monitors: List[str] = []
    for path in sockets:
        monitors += ['-qmp', f'unix:{path},server=on,wait=off']
    return subprocess.Popen([
        qemu, '-M', 'none', '-nodefaults', '-display', 'none',
        '-blockdev', 'driver=qcow2,node-name=disk0,file.driver=file,'
                     'file.filename=disk.qcow2', *monitors], cwd=work)


def directory_for(greeting: Any) -> Path:
    version = greeting.QMP.version['qemu']
    directory = HERE / 'qemu-{major}.{minor}.{micro}'.format(**version)
    directory.mkdir(exist_ok=True)
    return directory


async def record(qemu: str, name: str) -> Path:
    with tempfile.TemporaryDirectory(prefix='qmp-transcript-') as work:
        proc = start_qemu(qemu, work, 'qmp.sock')
        partial = Path(work) / 'session.jsonl'
        try:
            qmp = QMPClient(name)
            with Recorder(partial) as qmp.recorder:
                await qmp.connect(os.path.join(work, 'qmp.sock'), retry=30)
                await SESSIONS[name](qmp)
                await qmp.disconnect()
            directory = directory_for(qmp.greeting)
        finally:
            proc.kill()
            proc.wait()
        target = directory / f'{name}.jsonl'
        shutil.copyfile(partial, target)
        return target


def masked_paths(source: Path, target: Path, work: str) -> None:
    """Copy a transcript, masking the arguments that are paths in
    ``work`` (they differ from run to run)."""
    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mask(item) for item in value]
        if isinstance(value, str) and value.startswith(work):
            return MASKED
        return value
    lines = source.read_text().splitlines()
    with open(target, 'w', encoding='utf-8') as out:
        for line in lines:
            obj = json.loads(line)
            if obj.get('from') == 'client' and 'msg' in obj:
                obj['msg'] = mask(obj['msg'])
            out.write(json.dumps(obj, separators=(',', ':')) + '\n')


async def run_example(work: str, script: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / 'examples' / script), *args, cwd=work,
        env={**os.environ, 'PYTHONPATH': str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode:
        raise SystemExit(f"{script} failed: {err.decode()}")
    return out.decode()


async def record_guest_agent(directory: Path) -> Path:
    """Record examples/guest_agent.py against qemu-ga (on the host: the
    agent answers the same protocol there), through qmp-record."""
    with tempfile.TemporaryDirectory(prefix='qmp-transcript-') as work:
        os.mkdir(os.path.join(work, 'state'))
        agent = subprocess.Popen([
            tool('qemu-ga'), '-m', 'unix-listen', '-p',
            os.path.join(work, 'qga.sock'), '-t',
            os.path.join(work, 'state')])
        partial = os.path.join(work, 'session.jsonl')
        try:
            # Wait until the agent listens: a client that tries again.
            probe = QMPClient('probe')
            probe.await_greeting = probe.negotiate = False
            await probe.connect(os.path.join(work, 'qga.sock'), retry=30)
            await probe.disconnect()
            ready = asyncio.Event()
            proxy = asyncio.create_task(serve(
                os.path.join(work, 'qga.sock'),
                os.path.join(work, 'record.sock'), partial, once=True,
                ready=ready))
            await ready.wait()
            await run_example(work, 'guest_agent.py', 'record.sock')
            await proxy
        finally:
            agent.kill()
            agent.wait()
        (directory / 'examples').mkdir(exist_ok=True)
        target = directory / 'examples' / 'guest_agent.jsonl'
        masked_paths(Path(partial), target, work)
        return target


async def record_example(qemu: str, script: str) -> Path:
    """Record ``script`` (one of examples/) through qmp-record."""
    with tempfile.TemporaryDirectory(prefix='qmp-transcript-') as work:
        proc = start_qemu(qemu, work, 'qmp.sock', 'control.sock')
        partial = os.path.join(work, 'session.jsonl')
        ready = asyncio.Event()
        try:
            # The control monitor first: QEMU listens once it answers.
            control = QMPClient('control')
            await control.connect(os.path.join(work, 'control.sock'),
                                  retry=30)
            proxy = asyncio.create_task(serve(
                os.path.join(work, 'qmp.sock'),
                os.path.join(work, 'record.sock'), partial, once=True,
                ready=ready))
            await ready.wait()
            if script == 'watch_events.py':
                watcher = asyncio.create_task(
                    run_example(work, script, 'record.sock'))
                # (Its session starts before these: the watcher prints
                # "Watching" once connected; the proxy sees it first.)
                while not os.path.exists(partial) \
                        or len(Path(partial).read_text().splitlines()) < 4:
                    await asyncio.sleep(0.05)
                for command in ('stop', 'cont', 'quit'):
                    await control.execute(command)
                await watcher
            else:
                await run_example(work, script, 'record.sock', 'disk0',
                                  'backup.qcow2')
                await control.execute('quit')
            await proxy
            directory = directory_for(control.greeting)
            try:
                await control.disconnect()
            except EOFError:
                pass
        finally:
            proc.kill()
            proc.wait()
        (directory / 'examples').mkdir(exist_ok=True)
        target = directory / 'examples' / script.replace('.py', '.jsonl')
        masked_paths(Path(partial), target, work)
        Transcript.load(target)  # it reads back
        return target


def main() -> None:
    qemu = os.environ.get('QEMU') or tool('qemu-system-x86_64')
    paths = [asyncio.run(record(qemu, name)) for name in SESSIONS]
    paths += [asyncio.run(record_example(qemu, script))
              for script in EXAMPLES]
    paths.append(asyncio.run(record_guest_agent(paths[0].parent)))
    for path in paths:
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes",
              file=sys.stderr)


#: The scripts of examples/ recorded against QEMU (guest_agent.py is
#: recorded against qemu-ga).
EXAMPLES = ['backup.py', 'backup_blocking.py', 'watch_events.py']


if __name__ == '__main__':
    main()
