"""Running the project's scripts as a user would: in a subprocess, with tiny settings."""
import os
import sys
import json
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_AE = ['--image_size', '16', '--batch_size', '2', '--num_workers', '0', '--lpips_weight', '0',
           '--log_interval', '1', '--eval_interval', '1000', '--ckpt_interval', '1000', '--num_eval', '2']


def run(script, *args, torchrun=0, check=True, timeout=600):
    """Run `script` (relative to the repo) with args; torchrun=N launches N processes. Returns CompletedProcess."""
    cmd = [sys.executable]
    if torchrun:
        cmd += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(torchrun)]
    cmd += [os.path.join(ROOT, script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def train_rows(out_dir):
    """Log rows of training steps (those with a loss), keyed by step."""
    return {r['step']: r for r in read_log(out_dir) if 'loss' in r}
