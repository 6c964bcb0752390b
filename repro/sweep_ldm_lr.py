"""
Which learning rate should reproduce.py's LDMs train at? The same LDM recipe (train_ldm.py: backbone, batch, EMA with
warm-up, latent cache) at several learning rates on one autoencoder's latents, each scored by the diffusability probe
(probe.py: eps-MSE on held-out latents with fixed noise, mean over noise levels) and by its sample guard, side by side.
reproduce.py's --ldm_lr defaults come from this sweep (the numbers are in the README).

  python repro/sweep_ldm_lr.py --ae assets/baseline_video_mini.safetensors --num_frames 17 --heldout H.npz
  python repro/sweep_ldm_lr.py --ae assets/baseline_mini.safetensors --image_size 64 --data TRAIN --heldout HELD

H.npz: held-out clips, e.g. out/reproduce_video/data/heldout2.npz (the second held-out draw of reproduce.py
--num_frames 17); the video sweep takes about 8 minutes on 2 cores. TRAIN, HELD: out/reproduce/data/train and heldout2.

Each run goes to --out_dir/lr_<lr>; one JSON line per learning rate, then a table. Runs go two at a time, one thread
each (as in reproduce.py).
"""
import os
import sys
import json
import argparse
import subprocess
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.cli import HelpFormatter  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--ae', required=True, help='the autoencoder whose latents the LDMs train on')
parser.add_argument('--heldout', required=True, help='held-out images (a folder) or clips (an .npz of uint8 clips)')
parser.add_argument('--data', default=None, help='training images (default: the embedded data set)')
parser.add_argument('--num_frames', type=int, default=1, help='> 1: clips of this many frames and the video DiT')
parser.add_argument('--image_size', type=int, default=32, help='resolution of the training data')
parser.add_argument('--lrs', default='3e-4,1e-3,3e-3', help='comma-separated learning rates')
parser.add_argument('--steps', type=int, default=1000, help='training steps of each LDM')
parser.add_argument('--batch_size', type=int, default=32, help='latents per step')
parser.add_argument('--cache_size', type=int, default=512, help='training items encoded once into the latent cache')
parser.add_argument('--preset', default='tiny', help='the DiT preset')
parser.add_argument('--jobs', type=int, default=2, help='runs at a time, one thread each')
parser.add_argument('--out_dir', default='out/sweep_ldm_lr', help='where the runs go')
args = parser.parse_args()


def one(lr):
    """Train one LDM at `lr`, probe its last EMA weights. -> a row."""
    out = os.path.join(args.out_dir, f'lr_{lr}')
    cmd = [sys.executable, os.path.join(ROOT, 'train_ldm.py'), '--ae', args.ae, '--model', 'dit', '--preset',
           args.preset, '--lr', lr, '--batch_size', str(args.batch_size), '--max_steps', str(args.steps),
           '--image_size', str(args.image_size), '--ema_decay', '0.999', '--ema_warmup', '--num_workers', '0',
           '--cache_latents', os.path.join(out, 'latent_cache'), '--cache_size', str(args.cache_size),
           '--eval_interval', str(args.steps), '--ckpt_interval', str(args.steps), '--num_samples', '4',
           '--out_dir', out, '--overwrite', '--device', 'cpu']
    cmd += ['--num_frames', str(args.num_frames)] if args.num_frames > 1 else []
    cmd += ['--data', args.data] if args.data else []
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'stdout.log'), 'w') as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    import torch
    torch.set_num_threads(1)
    from repro.probe import PROBE_T, diffusability_probe
    p = diffusability_probe(os.path.join(out, 'ckpt.pt'), args.heldout, PROBE_T)
    row = {'lr': float(lr), 'steps': args.steps, 'eps_mse_mean': p['eps_mse_mean'], 'pixel_mse_mean': p['pixel_mse_mean'],
           'guard_ok': p['guard']['ok'], 'std_ratio_min': min(p['guard']['std_ratio']),
           'std_ratio_max': max(p['guard']['std_ratio']), 'saturated': p['guard']['saturated']}
    print(json.dumps(row), flush=True)
    return row


if __name__ == '__main__':
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, args.lrs.split(',')))
    print(f"\n{'lr':>8s} {'eps-MSE':>9s} {'pixel MSE':>10s} {'guard':>6s} {'std ratio':>11s} {'saturated':>9s}")
    for r in rows:
        print(f"{r['lr']:8.0e} {r['eps_mse_mean']:9.4f} {r['pixel_mse_mean']:10.4f} {str(r['guard_ok']):>6s} "
              f"{r['std_ratio_min']:5.2f}-{r['std_ratio_max']:<5.2f} {r['saturated']:9.1%}")
    with open(os.path.join(args.out_dir, 'sweep.json'), 'w') as f:
        json.dump(rows, f, indent=1)
