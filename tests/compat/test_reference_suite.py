"""
The reference library's own test module, run unchanged against this package.

The test downloads the reference's source distribution from PyPI at run
time, extracts ``tests/test_protocol.py`` (its AsyncProtocol tests) into a
temporary directory and runs it with pytest, each test under a timeout.
That file is never committed here.  Without PyPI the test skips locally
and fails in CI.
"""

import subprocess
import sys
import tarfile

import pytest

from tests.helpers import unavailable

REFERENCE = 'qemu.qmp==0.0.6'
MEMBER = 'tests/test_protocol.py'
EXPECTED = 27


def download_sdist(directory):
    """The reference's sdist, downloaded into ``directory``."""
    try:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
             '--no-binary', ':all:', '--dest', str(directory), REFERENCE],
            check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        unavailable(f"cannot download {REFERENCE}: "
                    f"{getattr(err, 'stderr', '') or err}")
    (sdist,) = directory.glob('*.tar.gz')
    return sdist


@pytest.mark.timeout(600)
def test_reference_test_module_passes(tmp_path):
    """All 27 tests of the reference's tests/test_protocol.py pass, none
    skipped, against this package."""
    sdist = download_sdist(tmp_path / 'download')
    run = tmp_path / 'run'
    run.mkdir()
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers()
                     if m.name.endswith('/' + MEMBER)]
        source = tar.extractfile(member)
        assert source is not None
        (run / 'test_protocol.py').write_bytes(source.read())
    # Its own pytest settings, not this project's (whose warnings-as-errors
    # and doctest collection are for our code).
    (run / 'pytest.ini').write_text(
        '[pytest]\nasyncio_mode = strict\n'
        'asyncio_default_fixture_loop_scope = function\n')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
         '-rfEs', '--timeout', '10', 'test_protocol.py'],
        cwd=run, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:]
    assert summary.startswith(f'{EXPECTED} passed'), summary
    assert 'skipped' not in summary and 'error' not in summary, summary
