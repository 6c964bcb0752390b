"""
The paper's experiment in miniature, in one command: does scale equivariance make an autoencoder more diffusable?

  python reproduce.py                       # embedded dead-leaves data; under 30 minutes on 2 CPU cores
  python reproduce.py --smoke               # a few minutes' check of the whole pipeline (used by the tests)
  python reproduce.py --data ~/photos --random_crop          # crops of real photographs
  python reproduce.py --device cuda --nproc 8 --image_size 256 --ae_preset sd --ae_steps 20000 ...   # scaled up

Four autoencoders are trained identically (preset, data, seed, steps) except for SE:
  baseline     se_weight 0                     from scratch, ae_steps
  se           se_weight 0.25                  from scratch, ae_steps
  baseline_ft  baseline + ft_steps more, se_weight 0      (the control for the extra steps)
  se_ft        baseline + ft_steps more, se_weight 0.25   (the paper's fine-tuning recipe)
Then, for each: the latent spectrum next to RGB's (spectrum.py), reconstruction metrics (eval_fid.py --ae), the same
LDM trained on its latents of the same cache_size training images (train_ldm.py --cache_latents), the same number of samples with the same sampler and seed (sample.py), and
the generation metrics (eval_fid.py): SWD per scale, and FID when Inception weights are available.
Everything goes to out_dir: report.md (table, plots, sample grids), report.json (every number) and, per seed, the
artefacts of every step. Artefacts that exist are reused, so a killed run resumes where it stopped.
"""
import os
import sys
import json
import time
import argparse
import platform
import statistics
import subprocess

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
ARMS = {  # name: (se_weight, initialised from)
    'baseline': (0.0, None),
    'se': (0.25, None),
    'baseline_ft': (0.0, 'baseline'),
    'se_ft': (0.25, 'baseline'),
}
SIZES = {  # default: under 30 minutes on 2 CPU cores; smoke: the pipeline end to end in a few minutes
    'default': dict(image_size=32, ae_steps=500, ft_steps=125, ae_batch_size=8, ldm_steps=2000, ldm_batch_size=64,
                    cache_size=1024, num_samples=256, num_eval=256, sample_steps=50),
    'smoke': dict(image_size=32, ae_steps=6, ft_steps=2, ae_batch_size=2, ldm_steps=6, ldm_batch_size=4,
                  cache_size=16, num_samples=16, num_eval=16, sample_steps=5),
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default='out/reproduce', help='everything goes here')
parser.add_argument('--smoke', action='store_true', help='tiny sizes: checks the pipeline, says nothing about SE')
parser.add_argument('--data', type=str, default=None, help='image folder; omitted: the embedded dead-leaves dataset')
parser.add_argument('--random_crop', action='store_true', help='train and evaluate on random crops of the images')
parser.add_argument('--seeds', type=int, default=1, help='repeat the whole experiment with seeds 0..N-1; report mean and spread')
parser.add_argument('--se_weight', type=float, default=0.25, help='SE weight of the se arms (the paper: 0.25)')
parser.add_argument('--ae_preset', type=str, default='tiny', help='autoencoder preset (model.AE_PRESETS)')
parser.add_argument('--ldm_model', type=str, default='dit', choices=['dit', 'unet'], help='diffusion backbone')
parser.add_argument('--ldm_preset', type=str, default=None, help="backbone preset (default: the script's tiny one)")
parser.add_argument('--lpips_weight', type=float, default=0.0, help='LPIPS weight in AE training (needs VGG weights)')
parser.add_argument('--ldm_ema_decay', type=float, default=0.999, help="LDM EMA decay; DiT's 0.9999 suits 400K steps, "
                    "after a few thousand it is still mostly the initial weights")
parser.add_argument('--device', type=str, default='auto', help="'auto', 'cpu', 'cuda'")
parser.add_argument('--nproc', type=int, default=1, help='processes per training/sampling step (torchrun), e.g. GPUs')
for key, value in SIZES['default'].items():
    parser.add_argument(f'--{key}', type=int, default=None, help=f"default {value} ({SIZES['smoke'][key]} with --smoke)")
args = parser.parse_args()
sizes = {k: (getattr(args, k) if getattr(args, k) is not None else v)
         for k, v in SIZES['smoke' if args.smoke else 'default'].items()}
arms = {name: (args.se_weight if w else 0.0, parent) for name, (w, parent) in ARMS.items()}
os.makedirs(args.out_dir, exist_ok=True)
data_args = (['--data', args.data] if args.data else []) + (['--random_crop'] if args.random_crop else [])
eval_data_args = ['--data', args.data] if args.data else []

# -----------------------------------------------------------------------------
# running the project's scripts

def run(script, *script_args, nproc=1):
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)]
    cmd += [os.path.join(ROOT, script), *map(str, script_args)]
    print(f"\n$ {' '.join(cmd[1:] if nproc > 1 else [os.path.basename(script), *map(str, script_args)])}", flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = p.stdout.strip().splitlines()[-3:]
    print('\n'.join('  ' + line[-200:] for line in tail), flush=True)
    if p.returncode != 0:
        print(p.stdout[-5000:])
        sys.exit(f"error: {script} failed (exit {p.returncode}); its output is above. Fix it and rerun: "
                 f"finished steps are reused.")
    return time.time() - t0


def checkpoint_step(path):
    return torch.load(path, map_location='cpu', weights_only=False)['step'] if os.path.exists(path) else None


def train(script, out_dir, steps, *script_args):
    """Train to `steps`, resuming a checkpoint that exists; a finished one is reused as it is."""
    done = checkpoint_step(os.path.join(out_dir, 'ckpt.pt'))
    if done is not None and done >= steps:
        print(f"reusing {out_dir} ({done} steps)")
        return
    run(script, '--out_dir', out_dir, '--max_steps', steps, *script_args, *(['--resume'] if done is not None else []),
        nproc=args.nproc)


def once(path, script, *script_args):
    """Run a step whose product is `path` unless it is already there."""
    if os.path.exists(path):
        print(f"reusing {path}")
    else:
        run(script, *script_args)


def train_time(out_dir):
    """Seconds spent in training steps, from the run's log (step_time is averaged over each log interval)."""
    rows = [json.loads(l) for l in open(os.path.join(out_dir, 'log.jsonl')) if '"step_time"' in l]
    total, last = 0.0, 0
    for r in rows:
        if r['step'] > last:
            total, last = total + r['step_time'] * (r['step'] - last), r['step']
    return total

# -----------------------------------------------------------------------------
# the experiment, per seed

def experiment(seed):
    d = os.path.join(args.out_dir, f'seed{seed}')
    common = ['--seed', seed, '--image_size', sizes['image_size'], '--device', args.device]
    ae = {arm: os.path.join(d, f'ae_{arm}') for arm in arms}
    for arm, (se_weight, parent) in arms.items():  # 1. autoencoders (parents first: dict order)
        steps = sizes['ae_steps'] if parent is None else sizes['ft_steps']
        init = ['--init_from', os.path.join(ae[parent], 'ckpt.pt')] if parent else []
        train('train_ae.py', ae[arm], steps, *common, *data_args, *init, '--preset', args.ae_preset,
              '--se_weight', se_weight, '--batch_size', sizes['ae_batch_size'], '--lpips_weight', args.lpips_weight,
              '--num_workers', 1, '--eval_interval', max(steps // 4, 1), '--ckpt_interval', max(steps // 4, 1))
    once(os.path.join(d, 'spectrum', 'spectrum.json'), 'spectrum.py',  # 2. spectra and erasure curves
         *sum((['--ckpt', os.path.join(ae[a], 'ckpt.pt'), '--label', a] for a in arms), []), *eval_data_args,
         '--image_size', sizes['image_size'], '--num_images', sizes['num_eval'], '--seed', seed,
         '--device', args.device, '--out_dir', os.path.join(d, 'spectrum'))
    results = {}
    for arm in arms:
        rec_json = os.path.join(d, f'recon_{arm}.json')  # 3. reconstruction metrics on the held-out set
        once(rec_json, 'eval_fid.py', '--ae', os.path.join(ae[arm], 'ckpt.pt'), *eval_data_args,
             '--image_size', sizes['image_size'], '--num_real', sizes['num_eval'], '--seed', seed,
             '--device', args.device, '--out', rec_json)
        ldm = os.path.join(d, f'ldm_{arm}')  # 4. the same LDM on each autoencoder's latents
        train('train_ldm.py', ldm, sizes['ldm_steps'], *common, *data_args, '--ae', os.path.join(ae[arm], 'ckpt.pt'),
              '--model', args.ldm_model, *(['--preset', args.ldm_preset] if args.ldm_preset else []),
              '--batch_size', sizes['ldm_batch_size'], '--num_workers', 1, '--ema_decay', args.ldm_ema_decay,
              '--cache_latents', os.path.join(d, f'cache_{arm}'), '--cache_size', sizes['cache_size'],
              '--eval_interval', sizes['ldm_steps'], '--ckpt_interval', max(sizes['ldm_steps'] // 4, 1))
        samples = os.path.join(d, f'samples_{arm}')  # 5. the same samples: sampler, steps, seed
        once(os.path.join(samples, 'samples.npz'), 'sample.py', '--ckpt', os.path.join(ldm, 'ckpt.pt'),
             '--num_samples', sizes['num_samples'], '--sampler', 'ddim', '--steps', sizes['sample_steps'],
             '--seed', seed, '--device', args.device, '--out_dir', samples)
        gen_json = os.path.join(d, f'gen_{arm}.json')  # 6. generation metrics against the same reference set
        once(gen_json, 'eval_fid.py', '--fake', os.path.join(samples, 'samples.npz'),
             *(['--real', args.data] if args.data else []), '--image_size', sizes['image_size'],
             '--num_real', sizes['num_eval'], '--seed', seed, '--device', args.device, '--out', gen_json)
        results[arm] = collect(d, arm, ae[arm], ldm, rec_json, gen_json)
    return results


def collect(d, arm, ae_dir, ldm_dir, rec_json, gen_json):
    """The numbers of one arm, from the JSON files the scripts wrote."""
    spec = json.load(open(os.path.join(d, 'spectrum', 'spectrum.json')))['autoencoders'][arm]
    rec, gen = json.load(open(rec_json)), json.load(open(gen_json))
    row = {'hf_ratio': spec['hf_ratio'], 'rgb_hf_ratio': spec['rgb_hf_ratio'], 'hf_vs_rgb': spec['hf_ratio_vs_rgb'],
           'erasure_psnr': spec['erasure_psnr'], 'ae_train_seconds': train_time(ae_dir),
           'ldm_train_seconds': train_time(ldm_dir)}
    # eval_fid.py's JSON: the numbers at the top level, plus 'skipped' (metric -> why) and 'args'
    row.update({f'rec_{k}': v for k, v in rec.items() if isinstance(v, (int, float))})
    row.update({f'gen_{k}': v for k, v in gen.items() if isinstance(v, (int, float))})
    row['skipped'] = {**{f'rec_{k}': v for k, v in rec['skipped'].items()}, **{f'gen_{k}': v for k, v in gen['skipped'].items()}}
    return row

# -----------------------------------------------------------------------------
# the report

def hardware():
    if torch.cuda.is_available() and args.device != 'cpu':
        return f"{args.nproc}x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def summarise(per_seed):
    """arm -> metric -> (mean, spread over seeds; spread is the sample std, 0 for one seed)."""
    summary = {}
    for arm in arms:
        keys = [k for k, v in per_seed[0][arm].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        summary[arm] = {}
        for k in keys:
            values = [s[arm][k] for s in per_seed if k in s[arm]]
            summary[arm][k] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return summary


def write_report(per_seed, wall):
    summary = summarise(per_seed)
    columns = [('hf_ratio', 'latent HF ratio', 4), ('hf_vs_rgb', 'HF vs RGB', 2), ('rec_psnr', 'rec PSNR', 2),
               ('rec_ssim', 'rec SSIM', 4), ('rec_lpips', 'rec LPIPS', 4), ('rec_rfid', 'rFID', 2),
               ('gen_swd_avg', 'gen SWD avg', 2), ('gen_fid', 'gen FID', 2)]
    swd_levels = sorted({k for s in summary.values() for k in s if k.startswith('gen_swd_') and k != 'gen_swd_avg'
                         and k[len('gen_swd_'):].isdigit()}, key=lambda k: -int(k[len('gen_swd_'):]))
    columns += [(k, f"SWD {k[len('gen_swd_'):]}px", 2) for k in swd_levels]
    columns = [c for c in columns if any(c[0] in s for s in summary.values())]
    fmt = lambda m, k, p: (f"{m[k][0]:.{p}f}" + (f" ± {m[k][1]:.{p}f}" if args.seeds > 1 else '')) if k in m else '–'
    lines = ["# Scale equivariance in miniature", "",
             f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if args.smoke else 'default sizes'}, "
             f"data: {args.data or 'embedded dead leaves'}{' (random crops)' if args.random_crop else ''}, "
             f"{args.seeds} seed(s), hardware: {hardware()}, torch {torch.__version__}, wall time {wall / 60:.1f} min.", "",
             "Sizes: " + ', '.join(f"{k} {v}" for k, v in sizes.items()) +
             f"; AE preset {args.ae_preset}, LDM {args.ldm_model} {args.ldm_preset or '(tiny)'}, "
             f"se_weight {args.se_weight}, lpips_weight {args.lpips_weight}, LDM EMA {args.ldm_ema_decay}.", "",
             "Equal compute where it matters: every arm uses the same preset, data order, seed and steps; the two "
             "fine-tuned arms both continue the same baseline for the same steps; every LDM is trained, sampled and "
             "evaluated identically against the same held-out set. The SE arms pay for one extra decoder pass per step.", "",
             "| autoencoder | " + ' | '.join(c[1] for c in columns) + " | AE train s | LDM train s |",
             "|---" * (len(columns) + 3) + "|"]
    for arm, m in summary.items():
        lines.append(f"| {arm} | " + ' | '.join(fmt(m, k, p) for k, _, p in columns) +
                     f" | {m['ae_train_seconds'][0]:.0f} | {m['ldm_train_seconds'][0]:.0f} |")
    rgb = summary['baseline']['rgb_hf_ratio'][0]
    skipped = {k: why for s in per_seed for row in s.values() for k, why in row['skipped'].items()}
    lines += [""] + [f"- {k} not measured: {why}" for k, why in sorted(skipped.items())]
    lines += ["", f"RGB HF ratio at the latent resolution: {rgb:.4f}. Lower HF ratio = closer to RGB = more diffusable "
              "(the paper's claim); lower SWD/FID = better samples; PSNR/SSIM higher and LPIPS/rFID lower = better "
              "reconstructions.", "",
              "## Spectra (seed 0)", "", "![spectrum](seed0/spectrum/spectrum.png)", "",
              "![erasure](seed0/spectrum/erasure.png)", "", "## Samples (seed 0)", "",
              "| " + " | ".join(arms) + " |", "|---" * len(arms) + "|",
              "| " + " | ".join(f"![{a}](seed0/samples_{a}/grid.png)" for a in arms) + " |", ""]
    with open(os.path.join(args.out_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(lines))
    report = {'config': {**vars(args), 'sizes': sizes}, 'hardware': hardware(), 'torch': torch.__version__,
              'wall_seconds': wall, 'per_seed': per_seed,
              'summary': {a: {k: {'mean': v[0], 'std': v[1]} for k, v in m.items()} for a, m in summary.items()}}
    with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    print('\n'.join(lines[:len(lines)]))


t0 = time.time()
per_seed = [experiment(seed) for seed in range(args.seeds)]
write_report(per_seed, time.time() - t0)
print(f"\nwrote {os.path.join(args.out_dir, 'report.md')} and report.json")
