"""
Benchmarks: this checkout against the reference library, side by side.

``make bench`` (or ``python bench/run.py [--reps N] [--output FILE]``):

1. makes ``bench/.venv-ref`` with PyPI ``qemu.qmp==0.0.6``, once;
2. starts the stand-in server (``server.py``) in its own process;
3. runs every scenario of ``workload.py`` in fresh processes, alternating
   reference and checkout, ``--reps`` times each, and the bare-socket
   floor (``floor.py``); both get environments of the same size, and each
   rep a different size (see `padded`);
4. does the same against real ``qemu-system-x86_64`` when installed;
5. prints a table of medians and writes it to BENCHMARKS.rst.

Client CPU is the workload process's own CPU time (time.process_time), so
the server's work never counts.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REF_VENV = os.path.join(HERE, '.venv-ref')
REF_VERSION = '0.0.6'
REF_PYTHON = os.path.join(REF_VENV, 'bin', 'python')

SCENARIOS = [
    ('sequential', 'sequential execute (one at a time)'),
    ('pipelined', '64 concurrent executes in flight'),
    ('events', 'events through a listener (async for)'),
    ('big', '8 MiB reply'),
    ('cycles', 'connect + negotiate + disconnect'),
    ('flood', '300,000 unread events (RSS growth)'),
    ('legacy', 'blocking client (legacy), one command at a time'),
]
# Run again on uvloop: the asyncio scenarios that measure the client.
UVLOOP_SCENARIOS = [
    ('sequential', 'uvloop: sequential execute'),
    ('pipelined', 'uvloop: 64 concurrent executes in flight'),
    ('events', 'uvloop: events through a listener'),
    ('cycles', 'uvloop: connect + negotiate + disconnect'),
]
# fleet.py: many idle sessions in one process (fleet_server.py).
FLEET_SIZES = [1000, 10000]
# Python's default garbage collector settings, then full collections held
# back as docs/performance.rst advises for thousands of sessions.
FLEET_GC = [('default', []), ('gc-tuned', ['gc-tuned'])]
FLEET_KEYS = ['rss_per_session', 'connect', 'cmd_cpu_us', 'cmds_per_s',
              'event_cpu_us', 'events_per_s']
FLEET_REPS = 3
QEMU_SCENARIOS = [
    ('qemu-sequential', 'real QEMU: sequential query-status'),
    ('qemu-concurrent', 'real QEMU: 64 concurrent query-status'),
    ('qemu-legacy', 'real QEMU: blocking client, sequential'),
]


def ensure_reference():
    if not os.path.exists(REF_PYTHON):
        print(f"creating {REF_VENV} with qemu.qmp=={REF_VERSION} ...")
        venv.create(REF_VENV, with_pip=True)
    check = subprocess.run(
        [REF_PYTHON, '-c', 'import qemu.qmp, importlib.metadata as m;'
         'print(m.version("qemu.qmp"))'],
        capture_output=True, text=True)
    if check.stdout.strip() != REF_VERSION:
        subprocess.run([REF_PYTHON, '-m', 'pip', 'install', '-q',
                        f'qemu.qmp=={REF_VERSION}'], check=True)
    # Both libraries run on this interpreter, also on uvloop.
    if subprocess.run([REF_PYTHON, '-c', 'import uvloop'],
                      capture_output=True).returncode:
        subprocess.run([REF_PYTHON, '-m', 'pip', 'install', '-q', 'uvloop'],
                       check=True)


def interpreters():
    """(label, python, environment) for the reference and this checkout."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ('PYTHONPATH', 'PYTHONASYNCIODEBUG',
                          'PYTHONDEVMODE')}
    # The same interpreter and site for both: this tree comes first on
    # sys.path, so its qemu.qmp shadows the reference's.  The reference
    # gets a PYTHONPATH as long, naming no directory: the environments
    # must be the same size (see padded).
    ours = dict(clean, PYTHONPATH=ROOT)
    decoy = '/' + '-' * (len(ROOT) - 1)
    return [('reference', REF_PYTHON, dict(clean, PYTHONPATH=decoy)),
            ('checkout', REF_PYTHON, ours)]


def padded(env, rep, reps):
    """
    ``env`` with a padding variable whose size depends on the rep.

    The size of the environment moves where the process's stack starts,
    and with it the alignment of CPython's hot data: on the benchmark
    machine, a few bytes more or less changed the client's CPU per
    command by up to 30% (docs/performance.rst).  So both libraries get
    the same size in each rep, and the reps spread over sizes: a ratio
    is then neither one library's luck nor the other's.
    """
    return dict(env, QMP_BENCH_PAD='x' * (rep * 4096 // max(reps, 1)))


# On a machine with cores to spare, the server gets one and every client
# the other, so that run-to-run differences are not scheduling luck.
CORES = sorted(os.sched_getaffinity(0))
SERVER_CORES = {CORES[-1]} if len(CORES) > 1 else set(CORES)
CLIENT_CORES = {CORES[0]}


def pin(cores):
    return lambda: os.sched_setaffinity(0, cores)


def run_script(python, env, script, scenario, address, *extra):
    out = subprocess.run(
        [python, os.path.join(HERE, script), scenario, address, *extra],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=600,
        preexec_fn=pin(CLIENT_CORES))
    if out.returncode:
        raise RuntimeError(f"{script} {scenario} with {python} failed:\n"
                           f"{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_server(path, script='server.py'):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, script),
                             path], stdout=subprocess.PIPE, text=True,
                            preexec_fn=pin(SERVER_CORES))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != 'ready':
        raise RuntimeError("stand-in server did not start")
    return proc


def start_qemu(tmp):
    qemu = shutil.which('qemu-system-x86_64')
    path = os.path.join(tmp, 'qemu.sock')
    pidfile = os.path.join(tmp, 'qemu.pid')
    subprocess.run([qemu, '-M', 'none', '-nodefaults', '-display', 'none',
                    '-daemonize', '-pidfile', pidfile, '-qmp',
                    f'unix:{path},server=on,wait=off'], check=True,
                   preexec_fn=pin(SERVER_CORES))
    with open(pidfile) as pid:
        return path, int(pid.read())


def import_time(python, env, reps):
    code = ('import time; t = time.perf_counter(); import qemu.qmp; '
            'print(time.perf_counter() - t)')
    times = []
    for _ in range(reps):
        out = subprocess.run([python, '-c', code], env=env, cwd=HERE,
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout))
    return min(times)


def median(results, key):
    return statistics.median(r[key] for r in results)


def summarize(name, label, runs):
    row = {'name': name, 'label': label}
    for lib, results in runs.items():
        ops = results[0]['ops']
        row[lib] = {
            'ops_per_s': ops / median(results, 'wall'),
            'cpu_us': median(results, 'cpu') / ops * 1e6,
            'rss_mb': (median(results, 'rss_growth') / 2**20
                       if results[0]['rss_growth'] is not None else None),
        }
    return row


def interleaved(libs, reps, run):
    """``run(python, env)`` ``reps`` times per library, alternating
    libraries, each rep in environments of its own size: the results per
    library."""
    runs = {lib: [] for lib, _, _ in libs}
    for rep in range(reps):
        for lib, python, env in libs:
            runs[lib].append(run(python, padded(env, rep, reps)))
    return runs


def measure(reps):
    rows = []
    libs = interpreters()
    with tempfile.TemporaryDirectory(prefix='qmp-bench-') as tmp:
        path = os.path.join(tmp, 'bench.sock')
        server = start_server(path)
        try:
            for name, label in SCENARIOS:
                runs = interleaved(libs, reps, lambda python, env: run_script(
                    python, env, 'workload.py', name, path))
                rows.append(summarize(name, label, runs))
                print(format_row(rows[-1]), flush=True)
            for name, label in UVLOOP_SCENARIOS:
                runs = {lib: [] for lib, _, _ in libs}
                for rep in range(reps):
                    for lib, python, env in libs:
                        runs[lib].append(run_script(
                            python, dict(padded(env, rep, reps),
                                         QMP_BENCH_LOOP='uvloop'),
                            'workload.py', name, path))
                rows.append(summarize(name, label, runs))
                print(format_row(rows[-1]), flush=True)
            floor = {}
            for name in ('pipelined', 'events'):
                results = [run_script(REF_PYTHON,
                                      padded(libs[1][2], rep, reps),
                                      'floor.py', name, path)
                           for rep in range(reps)]
                floor[name] = median(results, 'cpu') / results[0]['ops'] * 1e6
        finally:
            server.kill()
            server.wait()

        if shutil.which('qemu-system-x86_64'):
            for name, label in QEMU_SCENARIOS:
                runs = {lib: [] for lib, _, _ in libs}
                for rep in range(reps):
                    for lib, python, env in libs:
                        qemu_path, pid = start_qemu(tmp)
                        try:
                            runs[lib].append(run_script(
                                python, padded(env, rep, reps),
                                'workload.py', name, qemu_path))
                        finally:
                            os.kill(pid, 9)
                rows.append(summarize(name, label, runs))
                print(format_row(rows[-1]), flush=True)

    imports = {lib: import_time(python, env, max(reps, 5))
               for lib, python, env in libs}
    return rows, floor, imports


def measure_fleet(reps):
    """fleet.py's figures at each of FLEET_SIZES, medians per library."""
    rows = []
    libs = interpreters()
    with tempfile.TemporaryDirectory(prefix='qmp-bench-') as tmp:
        path = os.path.join(tmp, 'fleet.sock')
        server = start_server(path, 'fleet_server.py')
        try:
            for gc_mode, extra in FLEET_GC:
                for size in FLEET_SIZES:
                    args = [str(size), path] + extra
                    runs = interleaved(libs, reps,
                                       lambda python, env: run_script(
                                           python, env, 'fleet.py', *args))
                    rows.append(fleet_row(size, gc_mode, runs))
                    print(format_fleet_row(rows[-1]), flush=True)
        finally:
            server.kill()
            server.wait()
    return rows


def fleet_row(size, gc_mode, runs):
    row = {'sessions': size, 'gc': gc_mode}
    for lib, results in runs.items():
        row[lib] = {key: median(results, key) for key in FLEET_KEYS}
    return row


def fleet_label(row):
    tuned = ' (GC tuned)' if row['gc'] == 'gc-tuned' else ''
    return f"{row['sessions']:,}{tuned}"


def format_fleet_row(row):
    ref, ours = row['reference'], row['checkout']
    return (f"{fleet_label(row)} sessions: RSS/session "
            f"{ref['rss_per_session'] / 1024:.1f} "
            f"{ours['rss_per_session'] / 1024:.1f} KB, "
            f"connect {ref['connect']:.1f} {ours['connect']:.1f} s, "
            f"command {ref['cmd_cpu_us']:.0f} {ours['cmd_cpu_us']:.0f} us "
            f"({ours['cmds_per_s'] / ref['cmds_per_s']:.2f}x/s), "
            f"event {ref['event_cpu_us']:.0f} {ours['event_cpu_us']:.0f} us "
            f"({ours['events_per_s'] / ref['events_per_s']:.2f}x/s)")


def format_row(row):
    ref, ours = row['reference'], row['checkout']
    if ref['rss_mb'] is not None:
        return (f"{row['label']:<44} RSS +{ref['rss_mb']:8.1f} MB  "
                f"+{ours['rss_mb']:8.1f} MB  "
                f"{ref['rss_mb'] / max(ours['rss_mb'], 0.1):6.1f}x less")
    return (f"{row['label']:<44} {ref['ops_per_s']:9.0f} "
            f"{ours['ops_per_s']:9.0f} ops/s  "
            f"{ref['cpu_us']:7.1f} {ours['cpu_us']:7.1f} us/op  "
            f"{ref['cpu_us'] / ours['cpu_us']:5.2f}x less CPU  "
            f"{ours['ops_per_s'] / ref['ops_per_s']:5.2f}x ops/s")


def machine():
    model = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}")


def report(rows, floor, imports, reps):
    lines = [
        'Benchmarks', '==========', '',
        f"Measured {datetime.date.today().isoformat()} on {machine()}.",
        'The server runs on one core and each client on another.',
        f"Reference: PyPI ``qemu.qmp=={REF_VERSION}``; checkout: this tree. "
        f"Medians of {reps} interleaved runs, each in a fresh process; in "
        f"each run both get environments of the same size, and the runs "
        f"vary it (it moves CPython's speed by up to 30% here).", '',
        'Reproduce with ``make bench`` (``python bench/run.py``).', '',
        'Client CPU is the client process\'s own CPU time per operation; '
        'the stand-in server (``bench/server.py``) runs in another process.',
        '',
        '.. list-table::', '   :header-rows: 1', '',
        '   * - scenario', '     - reference ops/s', '     - checkout ops/s',
        '     - reference CPU us/op', '     - checkout CPU us/op',
        '     - CPU ratio', '     - throughput ratio',
    ]
    for row in rows:
        ref, ours = row['reference'], row['checkout']
        if ref['rss_mb'] is not None:
            lines += [f"   * - {row['label']}",
                      f"     - +{ref['rss_mb']:.1f} MB", f"     - +"
                      f"{ours['rss_mb']:.1f} MB", '     -', '     -',
                      f"     - {ref['rss_mb'] / max(ours['rss_mb'], 0.1):.1f}x"
                      " less memory", '     -']
            continue
        lines += [f"   * - {row['label']}",
                  f"     - {ref['ops_per_s']:,.0f}",
                  f"     - {ours['ops_per_s']:,.0f}",
                  f"     - {ref['cpu_us']:.1f}",
                  f"     - {ours['cpu_us']:.1f}",
                  f"     - {ref['cpu_us'] / ours['cpu_us']:.2f}x less",
                  f"     - {ours['ops_per_s'] / ref['ops_per_s']:.2f}x"]
    lines += [
        '', f"Import time (``import qemu.qmp``, best of runs): reference "
        f"{imports['reference'] * 1000:.1f} ms, checkout "
        f"{imports['checkout'] * 1000:.1f} ms.", '',
        "Floor (blocking socket, JSON encode/decode only): pipelined "
        f"{floor['pipelined']:.1f} us/op, events {floor['events']:.1f} "
        "us/event.", '',
        'What bounds these figures, and what was found on the way: '
        '``docs/performance.rst``.  Memory over a long session: '
        '``python bench/soak.py``.', '']
    return '\n'.join(lines)


def fleet_report(rows):
    lines = [
        'Many sessions in one process', '----------------------------', '',
        'One process holds N idle sessions (``bench/fleet.py``) against '
        '``bench/fleet_server.py``; then one ``query-status`` on every '
        'session at once, and one event to every session, five rounds '
        'each.  Reference / checkout; CPU is the client\'s per command or '
        'event.  "GC tuned": the same, with ``gc.set_threshold(young, '
        'middle, 100)`` once the sessions are connected (docs/'
        'performance.rst, "Many VMs").', '',
        '.. list-table::', '   :header-rows: 1', '',
        '   * - sessions', '     - RSS per idle session',
        '     - time to connect all', '     - CPU per command',
        '     - commands/s ratio', '     - CPU per event',
        '     - events/s ratio',
    ]
    for row in rows:
        ref, ours = row['reference'], row['checkout']
        lines += [
            f"   * - {fleet_label(row)}",
            f"     - {ref['rss_per_session'] / 1024:.1f} / "
            f"{ours['rss_per_session'] / 1024:.1f} KB",
            f"     - {ref['connect']:.1f} / {ours['connect']:.1f} s",
            f"     - {ref['cmd_cpu_us']:.0f} / {ours['cmd_cpu_us']:.0f} us",
            f"     - {ours['cmds_per_s'] / ref['cmds_per_s']:.2f}x",
            f"     - {ref['event_cpu_us']:.0f} / "
            f"{ours['event_cpu_us']:.0f} us",
            f"     - {ours['events_per_s'] / ref['events_per_s']:.2f}x"]
    lines += ['', f'CPU per command at {FLEET_SIZES[-1]:,} sessions over '
              f'the same at {FLEET_SIZES[0]:,} (reference / checkout):', '']
    for gc_mode, _ in FLEET_GC:
        by_size = {row['sessions']: row for row in rows
                   if row['gc'] == gc_mode}
        small, large = by_size[FLEET_SIZES[0]], by_size[FLEET_SIZES[-1]]
        growth = [large[lib]['cmd_cpu_us'] / small[lib]['cmd_cpu_us']
                  for lib in ('reference', 'checkout')]
        lines.append(f"- {gc_mode}: {growth[0]:.2f}x / {growth[1]:.2f}x")
    return '\n'.join(lines + [''])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--output', default=os.path.join(ROOT,
                                                         'BENCHMARKS.rst'))
    args = parser.parse_args()
    ensure_reference()
    # pip byte-compiled the reference; do the same for this tree, or its
    # import time would include compiling (PYTHONDONTWRITEBYTECODE).
    subprocess.run([REF_PYTHON, '-m', 'compileall', '-q',
                    os.path.join(ROOT, 'qemu')], check=True)
    print(f"{'scenario':<44} {'reference':>9} {'checkout':>9}")
    rows, floor, imports = measure(args.reps)
    fleet = measure_fleet(min(args.reps, FLEET_REPS))
    print(f"import qemu.qmp: reference {imports['reference'] * 1000:.1f} ms,"
          f" checkout {imports['checkout'] * 1000:.1f} ms")
    print(f"floor: pipelined {floor['pipelined']:.1f} us/op, events "
          f"{floor['events']:.1f} us/event")
    with open(args.output, 'w') as out:
        out.write(report(rows, floor, imports, args.reps)
                  + fleet_report(fleet))
    print(f"written to {args.output}")


if __name__ == '__main__':
    main()
