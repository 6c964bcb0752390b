"""
The command line, read before torch is imported: every script parses its flags with these torch-free pieces first, so
that --help and a mistyped flag answer at once, and sets its CPU threads (cpu_threads) while torch can still obey.
"""
import os
import time


def idle_cores(seconds=0.2):
    """The cores the rest of the machine leaves idle, from two reads of /proc/stat `seconds` apart (this process sleeps
    in between, so it does not count itself). None where there is no /proc/stat."""
    def read():
        with open('/proc/stat') as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, and idle + iowait
    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return None if total1 <= total0 else os.cpu_count() * (idle1 - idle0) / (total1 - total0)


def cpu_threads(reserve=0):
    """How many threads torch should use on the CPU: OMP_NUM_THREADS when it is set (torchrun sets it to 1 per process),
    else the cores that other processes leave idle, less `reserve` (the cores this script's own data-loader workers
    keep busy), at least 1 and at most the cores this process may use. Torch alone takes one thread a core, and a
    thread that shares its core with another process holds up every other thread at each OpenMP barrier: beside one
    busy process the README's train_ae.py command took 0.62 s a step at torch's 2 threads and 0.26 s at 1, beside a
    second torch job 2.20 s and 0.34 s (bench/bench_threads.py; 2 cores)."""
    if os.environ.get('OMP_NUM_THREADS', '').strip().isdigit() and int(os.environ['OMP_NUM_THREADS']) > 0:
        return int(os.environ['OMP_NUM_THREADS'])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    idle = idle_cores()
    return max(1, min(cores, cores if idle is None else round(idle)) - reserve)


def set_cpu_threads(reserve=0):
    """The thread policy of every script, applied before torch is imported (torch reads these variables when it
    loads): OMP_NUM_THREADS and MKL_NUM_THREADS from cpu_threads(reserve), and, where it picks more than one thread,
    OMP_WAIT_POLICY=PASSIVE, so that threads waiting at a barrier sleep instead of spinning on a core that a process
    started later may need (0.38 s a step against 0.62 beside a busy process, 9% slower on an idle machine). What the
    user set is kept. -> a phrase for the script's first line."""
    given = 'OMP_NUM_THREADS' in os.environ
    threads = cpu_threads(reserve)
    os.environ.setdefault('OMP_NUM_THREADS', str(threads))
    os.environ.setdefault('MKL_NUM_THREADS', str(threads))
    if threads > 1:
        os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return f"{threads} CPU thread{'s' if threads > 1 else ''}" + (' (OMP_NUM_THREADS)' if given else '')
