"""tests/pythons.py: which Pythons ``make check`` tests, and what it says
when one is missing."""

import sys
import threading
import configparser

import pytest

from tests import pythons


def test_the_claimed_versions_are_setup_cfgs():
    """From the oldest that python_requires admits to the newest
    classifier, none left out."""
    claimed = pythons.claimed_versions()
    config = configparser.ConfigParser()
    config.read(pythons.ROOT / 'setup.cfg')
    oldest = config['options']['python_requires'].replace('>=', '').strip()
    assert pythons.name(claimed[0]) == oldest
    assert claimed == [(3, minor) for minor in
                       range(claimed[0][1], claimed[-1][1] + 1)]
    assert claimed[-1] >= (3, 13)


def fake_pyenv(root, build, target):
    """``root/versions/BUILD/bin/python3.X`` running ``target``."""
    bindir = root / 'versions' / build / 'bin'
    bindir.mkdir(parents=True)
    python = bindir / ('python' + build.rsplit('.', 1)[0])
    python.write_text('#!/bin/sh\nexec %s "$@"\n' % target)
    python.chmod(0o755)
    return str(python)


def test_a_pyenv_build_is_found_only_if_it_runs_as_named(
        tmp_path, monkeypatch):
    """The newest pyenv build of a version that runs as that version;
    one that does not run (a shim for an unselected version) is passed
    over."""
    this = sys.version_info[:2]
    monkeypatch.setenv('PYENV_ROOT', str(tmp_path))
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    minor = '%d.%d' % this
    fake_pyenv(tmp_path, minor + '.2', sys.executable)
    newest = fake_pyenv(tmp_path, minor + '.10', '/nonexistent/python')
    # Runnable, but not releases: a candidate and a free-threaded build.
    fake_pyenv(tmp_path, minor + '.11rc1', sys.executable)
    fake_pyenv(tmp_path, minor + '.11t', sys.executable)
    assert pythons.find_python(this) != newest
    assert pythons.find_python(this) == str(
        tmp_path / 'versions' / (minor + '.2') / 'bin' / ('python' + minor))
    assert pythons.find_python((3, 1)) is None


@pytest.mark.parametrize('ci, status, said', [
    ('true', 1, 'error: Python 3.1 (claimed in setup.cfg) not found'),
    ('', 0, 'note: Python 3.1 (claimed in setup.cfg) not found'),
])
def test_a_claimed_python_missing(monkeypatch, capsys, tmp_path, ci, status,
                                  said):
    """Missing in CI, a claimed version fails the run; here, a note."""
    monkeypatch.setenv('CI', ci)
    monkeypatch.setattr(pythons, 'WORK', tmp_path)
    monkeypatch.setattr(pythons, 'claimed_versions', lambda: [(3, 1)])
    monkeypatch.setattr(pythons, 'find_python', lambda version: None)
    monkeypatch.setattr(pythons, 'plan', lambda *args: [])
    assert pythons.main([]) == status
    out = capsys.readouterr().out
    assert said in out
    assert 'note: Python %d.%d, running this, is not claimed' \
        % sys.version_info[:2] in out


def test_each_version_gets_its_tests():
    """The oldest and the newest found: mypy and all the tests; those
    between: the unit tests; the running one: the unit tests on uvloop
    too.  The longest runs come first, the running Python's before all."""
    found = {(3, 2): '/py3.2', (3, 4): '/py3.4', (3, 5): '/py3.5'}
    venv = str(pythons.WORK / '%s' / 'bin' / 'python')
    jobs = pythons.plan(found, (3, 3), '/venv/python')
    assert [(job.label, job.tests, job.interpreter) for job in jobs] == [
        ('3.3', 'unit', '/venv/python'),
        ('3.3-uvloop', 'uvloop', '/venv/python'),
        ('3.2', 'all', venv % '3.2'),
        ('3.5', 'all', venv % '3.5'),
        ('3.4', 'unit', venv % '3.4'),
    ]


def test_alone_the_running_python_gets_all_the_tests():
    """No other Python found (or one setup.cfg does not claim, running
    this): the running one is the oldest and the newest, and runs what
    ``make test`` runs."""
    jobs = pythons.plan({}, (3, 2), '/venv/python')
    assert [(job.label, job.tests) for job in jobs] == [
        ('3.2', 'all'), ('3.2-uvloop', 'uvloop')]


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
    """main() with Pythons 3.1 and the running one, and no real runs."""
    monkeypatch.setattr(pythons, 'WORK', tmp_path)
    monkeypatch.setattr(pythons, 'stopping', threading.Event())
    monkeypatch.setattr(pythons, 'claimed_versions',
                        lambda: [(3, 1), sys.version_info[:2]])
    monkeypatch.setattr(pythons, 'find_python',
                        lambda version: '/py/%d.%d' % version)
    monkeypatch.setattr(pythons, 'prepare', lambda job: None)
    return tmp_path


def test_a_failed_run_fails_and_shows_its_log(monkeypatch, capsys,
                                              fake_runs):
    """Every run's last pytest line is shown; a failed run's log too, and
    the whole fails."""
    def run_job(job, ready):
        ready.result()
        job.log.write_text('FAILED tests/unit/test_x.py::test_y\n'
                           '1 failed, 2 passed in 1.00s\n'
                           if job.version == (3, 1) else
                           '3 passed in 1.00s\n')
        failures = [pythons.StepFailed('pytest exited with status 1',
                                       job.log)] \
            if job.version == (3, 1) else []
        return pythons.Outcome(job, failures, 1.0)
    monkeypatch.setattr(pythons, 'run_job', run_job)
    assert pythons.main(['--jobs', '1']) == 1
    out = capsys.readouterr().out
    assert 'Python 3.1: pytest exited with status 1; 1 failed, 2 passed ' \
        'in 1.00s (1 s)' in out
    assert 'FAILED tests/unit/test_x.py::test_y' in out
    assert 'Python %d.%d: 3 passed in 1.00s (1 s)' % sys.version_info[:2] \
        in out


def test_a_failed_install_shows_pips_output(monkeypatch, capsys, fake_runs):
    """A virtual environment that cannot be made fails its run, with the
    end of what pip said."""
    def prepare(job):
        log = fake_runs / 'venv.log'
        log.write_text('ERROR: No matching distribution found for frob\n')
        raise pythons.StepFailed('pip install exited with status 1', log)
    monkeypatch.setattr(pythons, 'prepare', prepare)
    monkeypatch.setattr(pythons, 'plan', lambda found, running, python: [
        pythons.Job((3, 1), '/py/3.1', 'unit')])
    assert pythons.main([]) == 1
    out = capsys.readouterr().out
    assert 'Python 3.1: pip install exited with status 1 (0 s)' in out
    assert 'No matching distribution found for frob' in out


def test_ctrl_c_starts_nothing_more(monkeypatch, fake_runs):
    """After Ctrl-C, the runs waiting never start, no command starts, and
    the status is 130.  (One run may have been taken by the worker freed
    by the interrupted one, before the interrupt was seen.)"""
    started = []

    def run_job(job, ready):
        started.append(job.label)
        if len(started) == 1:
            raise KeyboardInterrupt
        assert pythons.stopping.wait(10)
        return pythons.Outcome(job, [], 0.0)
    monkeypatch.setattr(pythons, 'run_job', run_job)
    monkeypatch.setattr(pythons, 'plan', lambda found, running, python: [
        pythons.Job((3, n), '/py', 'unit') for n in range(4)])
    assert pythons.main(['--jobs', '1']) == 130
    assert started in (['3.0'], ['3.0', '3.1'])
    with (fake_runs / 'x.log').open('w') as log:
        with pytest.raises(pythons.StepFailed, match='interrupted'):
            pythons.run_logged(['touch', str(fake_runs / 'ran')], log)
    assert not (fake_runs / 'ran').exists()


def test_one_run_at_a_time_in_a_checkout(monkeypatch, capsys, fake_runs):
    """A second run while one goes on says so, instead of deleting the
    first one's environments."""
    import fcntl
    with (fake_runs / '.lock').open('w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert pythons.main([]) == 1
    assert 'another run of tests.pythons' in capsys.readouterr().out


@pytest.mark.parametrize('last_line', [
    '853 passed, 1 skipped in 358.37s (0:05:58)',
    '692 passed in 179.34s (0:02:59)',
    '1 failed, 691 passed, 2 warnings in 12.00s',
    '3 errors in 1.50s',
])
def test_the_summary_is_pytests_last_line(tmp_path, last_line):
    """Whatever pytest counted last (skips, warnings), the summary is
    that line, not 'no test summary'."""
    log = tmp_path / 'run.log'
    log.write_text('.....  [100%]\n=== short test summary info ===\n'
                   'SKIPPED [1] x.py:1: reason\n== ' + last_line + ' ==\n')

    class Logged:
        pass

    job = Logged()
    job.log = log
    assert pythons.summary(job) == last_line
