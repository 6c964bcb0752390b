"""
Autoencoder training speed with and without the scale-equivariance branch, measured side by side: the real
train_ae.py runs in alternation (A B A B ...), so drift of the machine hits both arms alike.

  python bench/bench_ae.py                        # tiny preset, CPU
  python bench/bench_ae.py --preset sd --image_size 256 --batch_size 16 --device cuda
Reports the median step time and images/s of each arm over the timed log intervals, and their ratio.
"""
import os
import sys
import json
import argparse
import tempfile
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--preset', default='tiny')
parser.add_argument('--image_size', type=int, default=64)
parser.add_argument('--batch_size', type=int, default=8)
parser.add_argument('--steps', type=int, default=30, help='steps per run; the first log interval is warm-up and dropped')
parser.add_argument('--repeats', type=int, default=2, help='alternating runs per arm')
parser.add_argument('--device', default='auto')
parser.add_argument('--dtype', default='auto')
parser.add_argument('--lpips_weight', type=float, default=0.0, help='0 (default) times L1 + SE only; LPIPS needs VGG weights')
args = parser.parse_args()

arms = {'baseline': 0.0, 'se': 0.25}
times = {arm: [] for arm in arms}
with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.repeats):
        for arm, w in arms.items():
            out = os.path.join(tmp, f'{arm}{r}')
            cmd = [sys.executable, os.path.join(ROOT, 'train_ae.py'), '--out_dir', out, '--preset', args.preset,
                   '--image_size', str(args.image_size), '--batch_size', str(args.batch_size),
                   '--max_steps', str(args.steps), '--se_weight', str(w), '--log_interval', '5',
                   '--eval_interval', str(10 ** 9), '--ckpt_interval', str(10 ** 9), '--device', args.device,
                   '--dtype', args.dtype, '--lpips_weight', str(args.lpips_weight), '--num_workers', '1']
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            with open(os.path.join(out, 'log.jsonl')) as f:
                rows = [json.loads(l) for l in f if '"step_time"' in l]
            times[arm] += [row['step_time'] for row in rows[1:-1]]  # drop warm-up and the partial last interval
result = {arm: {'step_time_s': statistics.median(t), 'images_per_sec': args.batch_size / statistics.median(t)}
          for arm, t in times.items()}
result['se_overhead'] = result['se']['step_time_s'] / result['baseline']['step_time_s']
print(json.dumps({'config': vars(args), **result}, indent=2))
