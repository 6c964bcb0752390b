"""
The time eval_fid.py takes to score generated images against ADM's reference batch, stage by stage, each measured at a
size this machine runs in minutes and extrapolated by its cost model to --num_fake samples against --num_ref reference
images (default: 50K against the 10K images of VIRTUAL_imagenet256_labeled.npz). One JSON line per stage.

  python bench/bench_eval.py                                     # CPU, one thread per process as eval_fid.py runs
  python bench/bench_eval.py --device cuda --images 2000 --pr_n 20000

The stages and their cost models:
  - Inception forward: linear in the images (the samples, and the reference images that precision/recall and KID need);
  - precision/recall: k-NN radii within each set and distances across them, (R^2 + F^2 + R F) pairs of 2048-d features;
  - KID: 100 subsets of 1000 whatever the set sizes, measured as it is;
  - FID and sFID: the samples' statistics (covariance: linear in the samples) and two Frechet distances (fixed);
  - IS: measured as it is on num_fake logits.
Weights, images and features are random: the time does not depend on them.
"""
import os
import sys
import json
import time
import argparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.cli import HelpFormatter, add_device_arg  # noqa: E402

# the command line is read before torch is imported, so that --help and a mistyped flag answer at once
parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
add_device_arg(parser, default='cpu')
parser.add_argument('--image_size', type=int, default=256, help='resolution of the samples (ADM ImageNet 256: 256)')
parser.add_argument('--batch_size', type=int, default=50, help="images per Inception forward pass (eval_fid.py's default)")
parser.add_argument('--images', type=int, default=None, help='images to time the Inception on (default: 100 on CPU, 2000 on GPUs)')
parser.add_argument('--pr_n', type=int, default=None, help='features per set to time precision/recall on (default: 2000 on CPU, 20000 on GPUs)')
parser.add_argument('--stats_n', type=int, default=5000, help='features to time the covariance on')
parser.add_argument('--num_fake', type=int, default=50000, help='generated samples to extrapolate the time to')
parser.add_argument('--num_ref', type=int, default=10000, help='reference images to extrapolate the time to')
parser.add_argument('--float32_pr', action='store_true', help="precision/recall in float32 (torch-fidelity's) instead of ADM's float16 distances")
args = parser.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.common import select_device  # noqa: E402
from evaluation.inception import InceptionV3FID  # noqa: E402
from evaluation.metrics import (feature_statistics, frechet_distance, inception_score, kernel_inception_distance,  # noqa: E402
                     precision_recall)

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
device = torch.device(args.device)
cuda = device.type == 'cuda'
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as eval_fid.py
n_images = args.images or (2000 if cuda else 100)
pr_n = args.pr_n or (20000 if cuda else 2000)
F, R = args.num_fake, args.num_ref
g = torch.Generator().manual_seed(0)


def timed(fn):
    """-> (seconds, result): wall time on a GPU; on the CPU the process's CPU time, which a machine shared with other
    jobs does not inflate (the wall time is printed beside it)."""
    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    timed.wall = time.perf_counter() - t0
    return (timed.wall if cuda else time.process_time() - c0), out


def report(stage, measured, seconds, estimate):
    print(json.dumps({'device': torch.cuda.get_device_name(device) if cuda else 'cpu',
                      'threads': torch.get_num_threads(), 'stage': stage, 'measured': measured,
                      'measured_s': round(seconds, 2), 'wall_s': round(timed.wall, 2),
                      f'estimate_s_{F}_vs_{R}': round(estimate, 1)}), flush=True)


net = InceptionV3FID().eval().to(device)
x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device) * 2 - 1
batches = -(-n_images // args.batch_size)
with torch.no_grad():
    net(x[:2])  # warm-up
    seconds, _ = timed(lambda: [net(x) for _ in range(batches)])
report('inception_forward', f'{batches * args.batch_size} images at {args.image_size}px, batch {args.batch_size}',
       seconds, seconds / (batches * args.batch_size) * (F + R))

rng = np.random.default_rng(0)
feats = lambda n: torch.from_numpy(rng.gamma(0.5, 0.5, (n, 2048)).astype(np.float32)).to(device)  # noqa: E731
a, b = feats(pr_n), feats(pr_n)
seconds, _ = timed(lambda: precision_recall(a, b, float16=not args.float32_pr))
report('precision_recall' + ('_float32' if args.float32_pr else '_float16'), f'{pr_n} vs {pr_n}', seconds,
       seconds * (R * R + F * F + R * F) / (3 * pr_n * pr_n))

a, b = feats(min(F, 2000)), feats(min(R, 2000))
seconds, _ = timed(lambda: kernel_inception_distance(a, b))
report('kid', '100 subsets of 1000', seconds, seconds)

n = min(args.stats_n, F)
f1, f2 = feats(n).cpu(), feats(n).cpu()
cov_s, _ = timed(lambda: (feature_statistics(f1), feature_statistics(f1[:, :2023])))
stats = [feature_statistics(f) for f in (f1, f2)]
dist_s, _ = timed(lambda: frechet_distance(*stats[0], *stats[1]))
report('fid_and_sfid', f'covariances of {n} samples (2048 and 2023-d) and one 2048-d distance', cov_s + dist_s,
       cov_s * F / n + 2 * dist_s)

logits = torch.randn(F, 1008, generator=g) * 3
seconds, _ = timed(lambda: inception_score(logits))
report('inception_score', f'{F} logits', seconds, seconds)
