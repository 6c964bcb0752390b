"""
How many CPU threads should a script use when other processes share the machine? The README's first command
(train_ae.py, mini AE at 64 px) is run for a few steps under each thread setting, on an idle machine and beside
competing processes, all in one run, so the seconds per step can be read side by side.

  python bench/bench_threads.py                      # about 10 minutes on 2 cores; run it on an otherwise idle machine

The thread settings (--settings):
  default   what torch does unasked: one thread a core, OpenMP threads spinning while they wait
  passive   as many threads, with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep)
  one       a single thread
  auto      the project's policy (cli.set_cpu_threads): the cores left idle at start, less the data-loader workers'

Competitors: none; 'spin', one pure-Python busy loop; 'torch', another torch process doing matmuls at torch's default
thread count (what a second training run does). One JSON line per (competitor, setting) with the median seconds a
step (log.jsonl's step_time, the first interval left out), then a table.
"""
import os
import sys
import json
import time
import shutil
import argparse
import tempfile
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.cli import HelpFormatter, cpu_threads  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--steps', type=int, default=30, help='training steps per measurement (step times of the '
                    'first log interval are left out)')
parser.add_argument('--settings', default='default,passive,one,auto', help='comma-separated thread settings')
parser.add_argument('--competitors', default='none,spin,torch', help='comma-separated competing loads')
parser.add_argument('--timeout', type=int, default=300, help='seconds before a measurement is given up')
args = parser.parse_args()

COMMAND = ['train_ae.py', '--se_weight', '0.25', '--lpips_weight', '0', '--preset', 'mini', '--image_size', '64',
           '--batch_size', '8', '--lr', '1e-3', '--warmup_steps', '100']   # the README's first command
CORES = len(os.sched_getaffinity(0))
COMPETITORS = {'none': None, 'spin': [sys.executable, '-c', 'while True: pass'],
               'torch': [sys.executable, '-c', 'import torch\nx = torch.randn(512, 512)\nwhile True: x @ x']}


def environment(setting):
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OMP_WAIT_POLICY')}
    if setting == 'default':
        env['OMP_NUM_THREADS'] = str(CORES)  # what torch picks unasked; set so that the policy under test stays out
    elif setting == 'passive':
        env.update(OMP_NUM_THREADS=str(CORES), OMP_WAIT_POLICY='PASSIVE')
    elif setting == 'one':
        env['OMP_NUM_THREADS'] = '1'
    elif setting != 'auto':
        sys.exit(f"error: unknown setting {setting}")
    return env


def measure(setting):
    """-> (median seconds a step, wall seconds of the whole command, seconds to its first line of output)."""
    out = tempfile.mkdtemp()
    cmd = [sys.executable, *COMMAND, '--max_steps', str(args.steps), '--log_interval', '5', '--eval_interval',
           str(args.steps), '--ckpt_interval', str(args.steps), '--out_dir', out]
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=ROOT, env=environment(setting), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = None
    try:
        while os.read(p.stdout.fileno(), 1 << 16):
            first = first or time.time() - t0
        p.wait(timeout=max(1, args.timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        p.kill()
    wall = time.time() - t0
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))] if \
        os.path.exists(os.path.join(out, 'log.jsonl')) else []
    times = [r['step_time'] for r in rows if 'step_time' in r and r['step'] > 5]
    shutil.rmtree(out, ignore_errors=True)
    return (statistics.median(times) if times else None), wall, first


results = {}
for competitor in args.competitors.split(','):
    load = subprocess.Popen(COMPETITORS[competitor], env=environment('default')) if COMPETITORS[competitor] else None
    time.sleep(2)  # the competitor settles (torch's import) before anything is measured
    try:
        picked = cpu_threads(reserve=2)  # the command runs 2 data-loader workers
        for setting in args.settings.split(','):
            step, wall, first = measure(setting)
            results[competitor, setting] = step
            print(json.dumps({'competitor': competitor, 'setting': setting, 'cores': CORES,
                              'threads': {'default': CORES, 'passive': CORES, 'one': 1, 'auto': picked}[setting],
                              'step_s': step and round(step, 3), 'wall_s': round(wall, 1),
                              'first_output_s': first and round(first, 1), 'steps': args.steps}), flush=True)
    finally:
        if load:
            load.kill()
            load.wait()

settings = args.settings.split(',')
print(f"\nseconds a step ({CORES} cores), by competing load and thread setting:")
print(f"{'':8s}" + ''.join(f"{s:>10s}" for s in settings))
for competitor in args.competitors.split(','):
    print(f"{competitor:8s}" + ''.join(f"{results[competitor, s]:10.3f}" if results[competitor, s] else f"{'-':>10s}"
                                       for s in settings))
