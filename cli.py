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


def cpu_threads():
    """How many threads torch should use on the CPU: OMP_NUM_THREADS when it is set (torchrun sets it to 1 per process),
    else the cores that other processes leave idle, rounded, at least 1 and at most the cores this process may use.
    Torch alone takes one thread a core; when another process holds a core, its OpenMP threads then wait for each other
    on the shared core and a step can take 10-30x longer (bench/bench_threads.py measures it)."""
    if os.environ.get('OMP_NUM_THREADS', '').strip().isdigit() and int(os.environ['OMP_NUM_THREADS']) > 0:
        return int(os.environ['OMP_NUM_THREADS'])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    idle = idle_cores()
    return cores if idle is None else max(1, min(cores, round(idle)))
