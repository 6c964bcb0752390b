"""The thread policy every script applies before torch is imported (cli.set_cpu_threads): what the user set is kept;
otherwise the cores other processes leave idle, less the script's own data workers, and sleeping waits when there is
more than one thread. bench/bench_threads.py measures why."""
import os
import subprocess
import sys

import pytest

from utils import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_env(monkeypatch):
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OMP_WAIT_POLICY'):
        monkeypatch.setenv(name, '')  # records the original, so that what set_cpu_threads writes is undone after
        monkeypatch.delenv(name)
    monkeypatch.setattr(cli.os, 'sched_getaffinity', lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize('idle, reserve, threads', [(8.0, 0, 8), (5.6, 0, 6), (3.2, 0, 3), (0.3, 0, 1), (None, 0, 8),
                                                    (8.0, 2, 6), (1.0, 2, 1), (None, 2, 6)])
def test_threads_are_the_idle_cores_less_the_data_workers_and_at_least_one(clean_env, monkeypatch, idle, reserve, threads):
    monkeypatch.setattr(cli, 'idle_cores', lambda: idle)
    assert cli.cpu_threads(reserve) == threads
    cli.set_cpu_threads(reserve)
    assert os.environ['OMP_NUM_THREADS'] == os.environ['MKL_NUM_THREADS'] == str(threads)
    assert os.environ.get('OMP_WAIT_POLICY') == ('PASSIVE' if threads > 1 else None)


def test_what_the_user_set_is_kept_and_nothing_is_added_to_it(clean_env, monkeypatch):
    monkeypatch.setattr(cli, 'idle_cores', lambda: 8.0)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert cli.set_cpu_threads(reserve=2) == '3 CPU threads (OMP_NUM_THREADS)'
    assert os.environ['OMP_NUM_THREADS'] == '3' and 'OMP_WAIT_POLICY' not in os.environ
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
    monkeypatch.delenv('OMP_NUM_THREADS')
    cli.set_cpu_threads(reserve=2)
    assert os.environ['OMP_NUM_THREADS'] == '6' and os.environ['OMP_WAIT_POLICY'] == 'ACTIVE'


def test_idle_cores_sees_a_busy_process():
    if not os.path.exists('/proc/stat') or os.cpu_count() < 2:
        pytest.skip('needs /proc/stat and 2 cores')
    before = cli.idle_cores(0.5)
    busy = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        import time
        time.sleep(0.3)
        during = cli.idle_cores(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert 0 <= during <= os.cpu_count() and during < before - 0.5  # one core less, give or take other work
