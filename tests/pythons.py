"""
The tests on every Python that setup.cfg claims.

``python -m tests.pythons`` (``make pythons``, the last step of ``make
check``) finds each claimed ``3.X`` interpreter, on ``PATH`` or under
pyenv, and runs there:

- the unit tests, on every version;
- all the tests (the integration tests with real QEMU too) on the oldest
  and the newest version found, and ``mypy -p qemu`` there too, so that an
  API or syntax newer than the oldest claimed Python fails here, not for a
  user (the running Python's mypy is ``make typecheck``);
- the unit tests on uvloop, on the running Python.

Every version but the running one gets a virtual environment in
``build/pythons/3.X``, made by uv and remade when setup.cfg or
pyproject.toml changes.  A
claimed version that cannot be found is a failure when ``CI`` is
``true``, a note otherwise.  Two test runs go at a time (``--jobs``),
each into its own log in ``build/pythons``; the end of a failed run's log
is printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import configparser
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Dict, List, NamedTuple, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / 'build' / 'pythons'
EXTRAS = 'devel,docs,tui'
# How prepare() makes an environment: change it when that changes, and
# environments made the old way are made again.
RECIPE = 'uv venv --seed; uv pip install -e .[%s]' % EXTRAS
# As ``make test`` runs them: asyncio's debug mode, warnings shown (and
# made errors by pyproject.toml).
TEST_ENV = {'PYTHONASYNCIODEBUG': '1', 'PYTHONDEVMODE': '1'}

Version = Tuple[int, int]


def claimed_versions() -> List[Version]:
    """The ``Programming Language :: Python :: 3.X`` classifiers."""
    config = configparser.ConfigParser()
    config.read(ROOT / 'setup.cfg')
    found = re.findall(r'Python :: (\d+)\.(\d+)\s*$',
                       config['metadata']['classifiers'], re.MULTILINE)
    return sorted((int(major), int(minor)) for major, minor in found)


def name(version: Version) -> str:
    return '%d.%d' % version


def version_of(python: str) -> Optional[Version]:
    """What ``python`` runs as, or None if it does not run (a pyenv shim
    for a version not selected, say)."""
    try:
        result = subprocess.run(
            [python, '-c', 'import sys; print(*sys.version_info[:2])'],
            capture_output=True, text=True, timeout=30, check=True)
        major, minor = result.stdout.split()
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def find_python(version: Version) -> Optional[str]:
    """A usable interpreter of ``version``: ``python3.X`` on PATH, else
    the newest pyenv release build of it (no release candidates, no
    free-threaded builds)."""
    candidates = []
    on_path = shutil.which('python' + name(version))
    if on_path:
        candidates.append(on_path)
    pyenv_root = os.environ.get('PYENV_ROOT',
                                os.path.expanduser('~/.pyenv'))
    release = re.compile(re.escape(name(version)) + r'\.(\d+)$')
    builds = []
    for build in glob.glob(os.path.join(pyenv_root, 'versions', '*')):
        match = release.match(os.path.basename(build))
        if match:
            builds.append((int(match.group(1)), os.path.join(
                build, 'bin', 'python' + name(version))))
    candidates += [path for _, path in sorted(builds, reverse=True)]
    for candidate in candidates:
        if version_of(candidate) == version:
            return candidate
    return None


class Job(NamedTuple):
    """One test run."""

    version: Version
    python: str  # the interpreter found for the version
    tests: str  # 'all' (with mypy unless running), 'unit' or 'uvloop'
    running: bool = False  # the interpreter running this: no venv to make

    @property
    def label(self) -> str:
        return name(self.version) + ('-uvloop' if self.tests == 'uvloop'
                                     else '')

    @property
    def venv(self) -> Path:
        return WORK / name(self.version)

    @property
    def log(self) -> Path:
        return WORK / (self.label + '.log')

    @property
    def interpreter(self) -> str:
        """The Python the tests run on."""
        if self.running:
            return self.python
        return str(self.venv / 'bin' / 'python')


def plan(found: Dict[Version, str], running: Version,
         running_python: str) -> List[Job]:
    """The test runs: all the tests on the oldest and the newest Python
    here, the unit tests on the others, and the unit tests on uvloop on the
    running one (tested even if setup.cfg does not claim it).  The longest
    come first, so that two at a time end together, the running Python's
    first of all, as they need no virtual environment made."""
    here = sorted(set(found) | {running})
    ends = (here[0], here[-1])
    jobs = [Job(running, running_python,
                'all' if running in ends else 'unit', running=True),
            Job(running, running_python, 'uvloop', running=True)]
    others = [version for version in here if version != running]
    others.sort(key=lambda version: version not in ends)
    jobs += [Job(version, found[version],
                 'all' if version in ends else 'unit')
             for version in others]
    return jobs


class StepFailed(Exception):
    """A step of a job failed; ``log`` has its output."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


# Set on Ctrl-C: no command starts after it.
stopping = threading.Event()


def run_logged(command: List[str], log: IO[str],
               env: Optional[Dict[str, str]] = None) -> None:
    """Run ``command`` in the checkout, its output into ``log``.

    :raise StepFailed: When it exits with an error, or cannot start.
    """
    log.write('$ %s\n' % ' '.join(command))
    log.flush()
    if stopping.is_set():
        raise StepFailed('interrupted', Path(log.name))
    try:
        status = subprocess.call(command, cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT,
                                 env=dict(os.environ, **(env or {})))
    except OSError as err:
        raise StepFailed('%s: %s' % (command[0], err), Path(log.name))
    if status != 0:
        raise StepFailed('%s exited with status %d'
                         % (' '.join(command[1:4]), status), Path(log.name))


def install_fingerprint(python: str) -> str:
    """What a virtual environment is made from: when it changes, the
    environment is made again."""
    digest = hashlib.sha256((python + RECIPE).encode())
    for file in ('setup.cfg', 'pyproject.toml'):
        digest.update((ROOT / file).read_bytes())
    return digest.hexdigest()


def uv_binary() -> str:
    """The uv program that the devel extra installs."""
    import uv  # here: only making environments needs it
    return uv.find_uv_bin()


def prepare(job: Job) -> None:
    """Make the job's virtual environment, unless it is up to date.  Its
    output goes to ``build/pythons/3.X-venv.log``.

    :raise StepFailed: When a step fails.
    """
    stamp = job.venv / '.qemu-qmp-devel'
    fingerprint = install_fingerprint(job.python)
    if stamp.exists() and stamp.read_text() == fingerprint:
        return
    shutil.rmtree(job.venv, ignore_errors=True)
    # uv (a devel extra) makes one in seconds; pip took a minute.
    uv = uv_binary()
    with (WORK / (name(job.version) + '-venv.log')).open('w') as log:
        for command in (
                # --seed: pip too, as in any venv (a test runs it).
                [uv, 'venv', '-q', '--seed', '--python', job.python,
                 str(job.venv)],
                [uv, 'pip', 'install', '-q', '--python', job.interpreter,
                 '-e', '.[%s]' % EXTRAS]):
            run_logged(command, log)
    stamp.write_text(fingerprint)


class Outcome(NamedTuple):
    job: Job
    failures: List[StepFailed]
    seconds: float  # testing, not waiting for the environment


def run_job(job: Job, ready: 'concurrent.futures.Future[None]') -> Outcome:
    """Wait for the job's environment, then run its checks: mypy, if any,
    and the tests, each whatever the other did."""
    try:
        ready.result()
    except StepFailed as failure:
        return Outcome(job, [failure], 0.0)
    started = time.monotonic()
    failures = []
    with job.log.open('w') as log:
        commands: List[Tuple[List[str], Dict[str, str]]] = []
        if job.tests == 'all' and not job.running:
            commands.append(([job.interpreter, '-m', 'mypy', '-p', 'qemu'],
                             {}))
        env = dict(TEST_ENV)
        if job.tests == 'uvloop':
            env['QMP_TEST_LOOP'] = 'uvloop'
        commands.append(([job.interpreter, '-m', 'pytest', '-q',
                          '-p', 'no:cacheprovider',
                          *([] if job.tests == 'all' else ['tests/unit'])],
                         env))
        for command, env in commands:
            try:
                run_logged(command, log, env)
            except StepFailed as failure:
                failures.append(failure)
    return Outcome(job, failures, time.monotonic() - started)


def summary(job: Job) -> str:
    """pytest's last line, from the job's log."""
    for line in reversed(job.log.read_text(errors='replace').splitlines()):
        # ('... passed, 1 skipped in 3.0s': the count before 'in' varies.)
        if re.search(r'\b(passed|failed|errors?)\b.* in [0-9.]+s\b', line):
            return line.strip('= ')
    return 'no test summary'


def show(outcome: Outcome) -> None:
    """What a finished job did; for a failure, the end of its log."""
    job = outcome.job
    said = [str(failure) for failure in outcome.failures]
    if job.log.exists():
        said.append(summary(job))
    print("Python %s: %s (%.0f s)" % (job.label, '; '.join(said),
                                      outcome.seconds), flush=True)
    for log in dict.fromkeys(failure.log for failure in outcome.failures):
        print("The end of %s:" % os.path.relpath(log))
        sys.stdout.write(log.read_text(errors='replace')[-20000:])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m tests.pythons', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--jobs', type=int, default=2, metavar='N',
                        help="test runs at a time (default 2)")
    args = parser.parse_args(argv)

    (WORK).mkdir(parents=True, exist_ok=True)
    with (WORK / '.lock').open('w') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("error: another run of tests.pythons is using %s"
                  % os.path.relpath(WORK))
            return 1
        try:
            return run_all(max(args.jobs, 1))
        except KeyboardInterrupt:
            return 130


def run_all(jobs_at_a_time: int) -> int:
    """Find the Pythons, run their jobs and say how they went.

    :return: The exit status: 1 if anything failed.
    """
    in_ci = os.environ.get('CI') == 'true'
    claimed = claimed_versions()
    running = sys.version_info[:2]
    found = {version: python for version in claimed if version != running
             for python in [find_python(version)] if python}
    jobs = plan(found, running, sys.executable)

    failed = False
    if running not in claimed:
        print("note: Python %s, running this, is not claimed in setup.cfg"
              % name(running))
    for version in claimed:
        if version != running and version not in found:
            print("%s: Python %s (claimed in setup.cfg) not found, on PATH "
                  "or under pyenv; its tests did not run"
                  % ('error' if in_ci else 'note', name(version)))
            failed = failed or in_ci
    for job in jobs:
        print("Python %s (%s): %s, log in %s" % (
            job.label, job.python,
            {'all': 'all the tests' + ('' if job.running else ' and mypy'),
             'unit': 'the unit tests',
             'uvloop': 'the unit tests on uvloop'}[job.tests],
            os.path.relpath(job.log)), flush=True)

    # Virtual environments are made one at a time (each editable install
    # writes the checkout's egg-info), while the tests run.
    installer = concurrent.futures.ThreadPoolExecutor(1)
    pool = concurrent.futures.ThreadPoolExecutor(jobs_at_a_time)
    try:
        runs = []
        for job in jobs:
            if job.running:
                ready: concurrent.futures.Future[None] = \
                    concurrent.futures.Future()
                ready.set_result(None)
            else:
                ready = installer.submit(prepare, job)
            runs.append(pool.submit(run_job, job, ready))
        for run in concurrent.futures.as_completed(runs):
            outcome = run.result()
            show(outcome)
            failed = failed or bool(outcome.failures)
    except BaseException:
        # Ctrl-C: start nothing more (the commands running got the
        # terminal's SIGINT too).
        for executor in (installer, pool):
            executor.shutdown(wait=False, cancel_futures=True)
        stopping.set()
        raise
    finally:
        for executor in (installer, pool):
            executor.shutdown(wait=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
