"""
The paper's figures in miniature, from one command, with the project's own scripts (Skorokhodov et al., ICML 2025).

  python reproduce.py                  # Fig. 1 (LDM convergence on baseline vs SE latents, 2 seeds) and Fig. 5 (erasure)
  python reproduce.py --channels       # + Fig. 2: latent high frequencies vs z_channels 4, 8, 16, 32, next to RGB
  python reproduce.py --kl_sweep       # + Fig. 3: ... vs the KL weight (0 and three orders of magnitude), samples and means
  python reproduce.py --se_sweep       # + Fig. 4: ... and the PSNR cost vs se_weight, from scratch and as a fine-tune
  python reproduce.py --all            # every figure
  python reproduce.py --smoke          # tiny sizes: checks the pipeline, says nothing about SE
  python reproduce.py --num_frames 17  # the video experiment: causal 3D video AEs, the video DiT, video SWD (and FVD)
  python reproduce.py --device cuda --nproc 8 --ae_steps 20000 --ldm_steps 100000   # GPUs: it launches torchrun

The shape follows FluxAE's problem, where the paper finds the effect largest: f8 with 16 latent channels (64 px images
-> 8x8x16 latents, 12x fewer numbers than pixels). Every autoencoder is trained with the same recipe and differs from
the baseline in one setting (L1 + KL, plus SE where named; no LPIPS or GAN, which need weights or more steps than a
CPU has); each is measured on the same held-out images (spectrum.py): its offset-free spectrum and
hf_share on posterior means and on posterior samples, RGB on the latent grid beside it, its reconstruction PSNR beside
bicubic at the latent grid, and its erasure curve. For Fig. 1 the same latent DiT is trained on each arm's latents, and
at evenly spaced steps it is sampled (sample.py, the same sampler, steps and seed) and scored (eval_fid.py: SWD per
scale; FID when Inception weights exist). --seeds repeats Fig. 1's LDMs, --ae_seeds its autoencoders too (by default
one pair of AEs, as the paper fine-tunes one FluxAE, so that each gets the steps it needs); the sweeps use seed 0.

Everything goes to out_dir: report.md (tables, plots, a verdict computed from the numbers), report.json (every number)
and the artefacts.

Video (--num_frames 17, 1 + 4k): the same pipeline on clips (the embedded moving dead leaves, or --data, a folder of
videos) with the tiny causal 3D video AE (f4 in space, 4x in time: 17 x 32^2 clips -> 16 x 5 x 8 x 8 latents) and the
video DiT on each arm's latents. Four arms, as the paper's video experiment fine-tunes CogVideoX-AE: baseline and SE from
scratch, and the baseline fine-tuned with SE next to its control (the same fine-tune steps with se_weight 0). Measured:
the spatial spectrum of the latent frames, the temporal spectrum along them (spectrum.py --num_frames), reconstruction
PSNR next to bicubic at the latent grid frame by frame; the LDMs' samples are scored by the video SWD (frames and frame
differences, weight-free) and FVD where the I3D weights exist, beside two trivial references: a second draw of real
clips, and each AE's own reconstructions of it (the floor an LDM on that AE can reach).

Each artefact records the settings it was made with (reproduce_settings.json, including those of the
artefacts it was made from); a rerun reuses what matches, resumes a training run whose settings match, remakes the rest,
and says which it did.
"""
import os
import sys
import json
import time
import shutil
import argparse
import platform
import statistics
import subprocess

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
SIZES = {  # default: Fig. 1 (2 seeds) and Fig. 5 in under 30 minutes on 2 CPU cores; smoke: the pipeline end to end
    'default': dict(image_size=64, ae_steps=500, ft_steps=150, ae_batch_size=8, ldm_steps=2000, ldm_evals=3,
                    ldm_batch_size=64, cache_size=1024, num_samples=256, num_eval=256, sample_steps=25),
    'smoke': dict(image_size=64, ae_steps=4, ft_steps=2, ae_batch_size=2, ldm_steps=4, ldm_evals=2, ldm_batch_size=4,
                  cache_size=16, num_samples=16, num_eval=16, sample_steps=3),
    # --num_frames 17: four arms with 2 LDM seeds each in under 45 minutes on 2 CPU cores; clips of 17 x 32 x 32
    'video': dict(image_size=32, ae_steps=200, ft_steps=60, ae_batch_size=1, ldm_steps=1000, ldm_evals=3,
                  ldm_batch_size=32, cache_size=256, num_samples=64, num_eval=64, sample_steps=25),
    'video_smoke': dict(image_size=32, ae_steps=2, ft_steps=1, ae_batch_size=1, ldm_steps=2, ldm_evals=1,
                        ldm_batch_size=2, cache_size=4, num_samples=4, num_eval=4, sample_steps=2),
}
Z_CHANNELS = [4, 8, 16, 32]                  # Fig. 2
KL_WEIGHTS = [0.0, 1e-6, 1e-4, 1e-2]         # Fig. 3: 0, then four orders of magnitude
SE_WEIGHTS = [0.0, 0.1, 0.25, 0.5, 1.0]      # Fig. 4
ERASE_STRIP = [0.0, 0.25, 0.5, 0.75]         # Fig. 5's image strip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default='out/reproduce', help='everything goes here')
parser.add_argument('--smoke', action='store_true', help='tiny sizes: checks the pipeline, says nothing about SE')
parser.add_argument('--channels', action='store_true', help='also Fig. 2: AEs with z_channels 4, 8, 16, 32')
parser.add_argument('--kl_sweep', action='store_true', help='also Fig. 3: AEs with kl_weight 0, 1e-6, 1e-4, 1e-2')
parser.add_argument('--se_sweep', action='store_true', help='also Fig. 4: se_weight 0..1, from scratch and fine-tuned')
parser.add_argument('--all', action='store_true', help='every figure (1-5)')
parser.add_argument('--data', type=str, default=None, help='image folder; omitted: the embedded dead-leaves dataset')
parser.add_argument('--random_crop', action='store_true', help='train on random crops of the images')
parser.add_argument('--seeds', type=int, default=2, help="Fig. 1's LDMs with seeds 0..N-1 (training, data order, sampling)")
parser.add_argument('--ae_seeds', type=int, default=1, help="Fig. 1's autoencoders with seeds 0..N-1 (<= --seeds); LDM seed "
                    "s runs on the AEs of seed s %% N, so --ae_seeds equal to --seeds repeats everything")
parser.add_argument('--se_weight', type=float, default=0.25, help="SE weight of Fig. 1's SE arm (the paper: 0.25)")
parser.add_argument('--kl_weight', type=float, default=1e-6, help="KL weight of every AE but Fig. 3's (LDM's 1e-6)")
parser.add_argument('--z_channels', type=int, default=16, help="latent channels of every AE but Fig. 2's (FluxAE: 16)")
parser.add_argument('--ae_preset', type=str, default=None, help="autoencoder preset (default: model.AE_PRESETS' tiny-f8; "
                    "video: VIDEO_AE_PRESETS' tiny)")
parser.add_argument('--num_frames', type=int, default=1, help='> 1: the video experiment on clips of this many frames '
                    '(1 + 4k, e.g. 17)')
parser.add_argument('--ae_lr', type=float, default=1e-3, help="AE learning rate (the tiny presets learn fastest near 1e-3)")
parser.add_argument('--ae_warmup', type=int, default=50, help='AE learning-rate warm-up steps')
parser.add_argument('--ldm_model', type=str, default='dit', choices=['dit', 'unet'], help='diffusion backbone')
parser.add_argument('--ldm_preset', type=str, default=None, help="backbone preset (default: the script's tiny one)")
parser.add_argument('--ldm_ema_decay', type=float, default=0.999, help="LDM EMA decay; DiT's 0.9999 suits 400K steps, "
                    "after a few thousand it is still mostly the initial weights")
parser.add_argument('--device', type=str, default='auto', help="'auto', 'cpu', 'cuda'")
parser.add_argument('--nproc', type=int, default=1, help='processes per training and sampling run (torchrun), e.g. GPUs')
for key, value in SIZES['default'].items():
    parser.add_argument(f'--{key}', type=int, default=None, help=f"default {value} ({SIZES['smoke'][key]} with --smoke; "
                        f"video {SIZES['video'][key]}, {SIZES['video_smoke'][key]} with --smoke)")
args = parser.parse_args()
video = args.num_frames > 1
size_set = ('video_smoke' if args.smoke else 'video') if video else ('smoke' if args.smoke else 'default')
sizes = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in SIZES[size_set].items()}
args.ae_preset = args.ae_preset or ('tiny' if video else 'tiny-f8')
figures = {'channels': args.channels or args.all, 'kl_sweep': args.kl_sweep or args.all,
           'se_sweep': args.se_sweep or args.all}
if video and (any(figures.values()) or (args.num_frames - 1) % 4):
    sys.exit(f"error: the video experiment (--num_frames {args.num_frames}) needs 1 + 4k frames and runs Fig. 1 only; "
             f"drop --channels, --kl_sweep, --se_sweep and --all, or --num_frames.")
if min(args.seeds, args.ae_seeds, args.nproc, args.num_frames, *sizes.values()) < 1 or args.ae_seeds > args.seeds:
    sys.exit("error: --seeds, --ae_seeds, --nproc, --num_frames and every size must be at least 1, and --ae_seeds at "
             "most --seeds.")
if sizes['ldm_evals'] > sizes['ldm_steps']:
    sys.exit(f"error: --ldm_evals {sizes['ldm_evals']} asks for more evaluations than --ldm_steps {sizes['ldm_steps']}.")
os.makedirs(args.out_dir, exist_ok=True)
frame_args = ['--num_frames', args.num_frames] if video else []
data_args = (['--data', args.data] if args.data else []) + (['--random_crop'] if args.random_crop else []) + frame_args
eval_data_args = (['--data', args.data] if args.data else []) + frame_args

# -----------------------------------------------------------------------------
# running the project's scripts, and remembering what each artefact was made with

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


def settings_file(out):
    return os.path.join(out, 'reproduce_settings.json')


def recorded(out):
    return json.load(open(settings_file(out))) if os.path.exists(settings_file(out)) else None


def record(out, settings):
    os.makedirs(out, exist_ok=True)
    with open(settings_file(out), 'w') as f:
        json.dump(settings, f, indent=1)


def differences(old, new, prefix=''):
    """The setting names (dotted paths) whose values differ between two settings dicts."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def clear_unless_matching(out, settings):
    """True when `out` was made with exactly `settings`; otherwise empties it, saying why."""
    old = recorded(out)
    if old == settings:
        return True
    if old is not None:
        print(f"remaking {out}: its settings changed ({', '.join(differences(old, settings)[:6])})")
    elif os.path.exists(out):
        print(f"remaking {out}: it has no settings record")
    shutil.rmtree(out, ignore_errors=True)
    return False


def checkpoint_step(path):
    return torch.load(path, map_location='cpu', weights_only=False)['step'] if os.path.exists(path) else None


def train(script, out, steps, settings, script_args):
    """Train to `steps` under `settings` (which leave out the step count): reuse a finished run, resume a shorter one
    made with the same settings, remake anything else. Returns the settings with the steps, for what depends on it."""
    done = checkpoint_step(os.path.join(out, 'ckpt.pt')) if clear_unless_matching(out, settings) else None
    if done is not None and done > steps:
        print(f"remaking {out}: it was trained for {done} steps, {steps} are asked for")
        shutil.rmtree(out)
        done = None
    if done == steps:
        print(f"reusing {out} ({done} steps, settings match)")
    else:
        print(f"resuming {out} from step {done} to {steps}" if done else f"making {out}")
        if not done:
            shutil.rmtree(out, ignore_errors=True)  # a run killed before its first checkpoint starts afresh
        record(out, settings)  # before training, so that a killed run resumes
        run(script, '--out_dir', out, '--max_steps', steps, *script_args, *(['--resume'] if done else []),
            nproc=args.nproc)
    return {**settings, 'steps': steps}


def once(out, settings, script, *script_args, nproc=1):
    """Make the artefact folder `out` with one script run, unless it already holds one made with `settings`."""
    if clear_unless_matching(out, settings):
        print(f"reusing {out} (settings match)")
        return settings
    print(f"making {out}")
    os.makedirs(out, exist_ok=True)
    run(script, *script_args, nproc=nproc)
    record(out, settings)  # after the run: a killed run leaves no record, so it is remade
    return settings


def train_time(out_dir):
    """Seconds spent in training steps, from the run's log (step_time is averaged over each log interval)."""
    rows = [json.loads(l) for l in open(os.path.join(out_dir, 'log.jsonl')) if '"step_time"' in l]
    total, last = 0.0, 0
    for r in rows:
        if r['step'] > last:
            total, last = total + r['step_time'] * (r['step'] - last), r['step']
    return total

# -----------------------------------------------------------------------------
# the steps: an autoencoder, its measurements, an LDM on its latents

def autoencoder(seed, z_channels=None, kl_weight=None, se_weight=0.0, parent=None):
    """Train one AE (or fine-tune `parent`'s) and measure it. Returns (name, its folder, its settings)."""
    z_channels = z_channels or args.z_channels
    kl_weight = args.kl_weight if kl_weight is None else kl_weight
    name = f"z{z_channels}_kl{kl_weight:g}_se{se_weight:g}" + (f"_ft_{parent[0]}" if parent else '')
    out = os.path.join(args.out_dir, f'seed{seed}', f'ae_{name}')
    script_args = ['--seed', seed, '--image_size', sizes['image_size'], '--device', args.device, *data_args,
                   '--preset', args.ae_preset, '--kl_weight', kl_weight, '--se_weight', se_weight,
                   '--batch_size', sizes['ae_batch_size'], '--lpips_weight', 0, '--disc_weight', 0, '--num_workers', 1,
                   '--lr', args.ae_lr, '--warmup_steps', args.ae_warmup]
    script_args += ['--init_from', os.path.join(parent[1], 'ckpt.pt')] if parent else ['--z_channels', z_channels]
    steps = sizes['ft_steps'] if parent else sizes['ae_steps']
    settings = train('train_ae.py', out, steps, {'script': 'train_ae.py', 'args': list(map(str, script_args)),
                                                 'init_from': parent[2] if parent else None},
                     [*script_args, '--eval_interval', steps, '--ckpt_interval', max(steps // 4, 1)])
    return name, out, settings


def measure(ae):
    """spectrum.py on the held-out images (clips): spectra (means and samples; video: spatial per latent frame and
    temporal), PSNR, bicubic reference, erasure (images)."""
    name, out, settings = ae
    spec = os.path.join(out, 'spectrum')
    spectrum_args = ['--ckpt', os.path.join(out, 'ckpt.pt'), '--label', name, *eval_data_args,
                     '--image_size', sizes['image_size'], '--num_images', sizes['num_eval'], '--seed', 0,
                     '--device', args.device, '--out_dir', spec]
    once(spec, {'script': 'spectrum.py', 'args': list(map(str, spectrum_args)), 'ae': settings},
         'spectrum.py', *spectrum_args)
    if video:  # the spatial numbers over all latent frames, and the temporal spectrum along them
        result = json.load(open(os.path.join(spec, 'spectrum_video.json')))['video']
        r, rgb = result[name], result[result[name]['rgb_reference']]
        return {'hf_share': r['hf_share'], 'hf_share_sample': r['posterior_sample']['hf_share'],
                'rgb_hf_share': rgb['hf_share'], 'psnr': r['reconstruction_psnr'], 'bicubic_psnr': r['bicubic_psnr'],
                'profile': r['mean'], 'profile_sample': r['posterior_sample']['mean'], 'rgb_profile': rgb['mean'],
                'hf_share_per_frame': r['spatial_hf_share_per_frame'], 'temporal_hf': r['temporal_hf_ratio'],
                'rgb_temporal_hf': rgb['temporal_hf_ratio'], 'temporal_profile': r['temporal_spectrum'],
                'rgb_temporal_profile': rgb['temporal_spectrum'], 'ae_train_seconds': train_time(out)}
    result = json.load(open(os.path.join(spec, 'spectrum.json')))
    r = result['autoencoders'][name]
    rgb = result['rgb'][r['rgb_reference']]
    return {'hf_share': r['hf_share'], 'hf_share_sample': r.get('posterior_sample', {}).get('hf_share', r['hf_share']),
            'rgb_hf_share': r['rgb_hf_share'], 'psnr': r['reconstruction_psnr'], 'bicubic_psnr': r['bicubic_psnr'],
            'erasure_psnr': r['erasure_psnr'], 'profile': r['mean'],
            'profile_sample': r.get('posterior_sample', {}).get('mean', r['mean']), 'rgb_profile': rgb['mean'],
            'ae_train_seconds': train_time(out)}


def ldm_curve(seed, ae):
    """Fig. 1 for one arm: the same DiT on the AE's latents, sampled and scored at ldm_evals evenly spaced steps."""
    name, ae_dir, ae_settings = ae
    d = os.path.join(args.out_dir, f'seed{seed}')
    ldm = os.path.join(d, f'ldm_{name}')
    script_args = ['--seed', seed, '--image_size', sizes['image_size'], '--device', args.device, *data_args,
                   '--ae', os.path.join(ae_dir, 'ckpt.pt'), '--model', args.ldm_model,
                   *(['--preset', args.ldm_preset] if args.ldm_preset else []),
                   '--batch_size', sizes['ldm_batch_size'], '--num_workers', 1, '--ema_decay', args.ldm_ema_decay,
                   '--cache_latents', os.path.join(ldm, 'latent_cache'), '--cache_size', sizes['cache_size']]  # goes with it
    settings = {'script': 'train_ldm.py', 'args': list(map(str, script_args)), 'ae': ae_settings}
    curve = []
    for k in range(1, sizes['ldm_evals'] + 1):
        step = round(sizes['ldm_steps'] * k / sizes['ldm_evals'])
        snapshot = os.path.join(ldm, f'ckpt_{step:07d}.pt')  # the samples of this step can be remade later
        if not (recorded(ldm) == settings and os.path.exists(snapshot)):
            ldm_settings = train('train_ldm.py', ldm, step, settings,
                                 [*script_args, '--eval_interval', sizes['ldm_steps'], '--ckpt_interval', step,
                                  '--num_samples', 4, '--sample_steps', sizes['sample_steps']])  # a glance; sample.py samples
            shutil.copyfile(os.path.join(ldm, 'ckpt.pt'), snapshot)
        else:
            ldm_settings = {**settings, 'steps': step}
            print(f"reusing {snapshot} (settings match)")
        samples = os.path.join(d, f'samples_{name}_{step:07d}')
        sample_args = ['--ckpt', snapshot, '--num_samples', sizes['num_samples'], '--sampler', 'ddim',
                       '--steps', sizes['sample_steps'], '--seed', seed, '--device', args.device, '--out_dir', samples]
        sample_settings = once(samples, {'script': 'sample.py', 'args': list(map(str, sample_args)), 'ldm': ldm_settings},
                               'sample.py', *sample_args, nproc=args.nproc)
        metrics = score(os.path.join(d, f'gen_{name}_{step:07d}'), os.path.join(samples, 'samples.npz'),
                        {'samples': sample_settings})
        grid = os.path.join(samples, 'grid_frames.png' if video else 'grid.png')
        curve.append({'step': step, **metrics, 'grid': os.path.relpath(grid, args.out_dir)})
    return {'curve': curve, 'ldm_train_seconds': train_time(ldm)}


def score(gen, fake, settings):
    """eval_fid.py on a samples .npz against the held-out images (video: the held-out clips of real_clips()), into the
    folder `gen`, remade when `settings` (what the samples were made from) change. -> the numbers and what was skipped."""
    real = ['--real', real_clips()[0]] if video else [*(['--real', args.data] if args.data else []),
                                                       '--image_size', sizes['image_size'], '--num_real', sizes['num_eval']]
    gen_args = ['--fake', fake, *real, '--seed', 0, '--device', args.device, '--out', os.path.join(gen, 'metrics.json')]
    once(gen, {'script': 'eval_fid.py', 'args': list(map(str, gen_args)), **settings,
               **({'real': real_clips()[1]} if video else {})}, 'eval_fid.py', *gen_args)
    metrics = json.load(open(os.path.join(gen, 'metrics.json')))
    return {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, 'skipped': metrics.get('skipped', {})}


def uint8_samples(x):
    """Images (N, 3, H, W) or clips (N, 3, T, H, W) in [-1, 1] -> uint8 (N, [T,] H, W, 3), as sample.py writes them."""
    from metrics import to_uint8
    return to_uint8(x.clamp(-1, 1)).movedim(1, -1).cpu().numpy()


def real_clips():
    """Video: the held-out clips every set of video samples is scored against (eval_fid.py needs them as a file), a
    seeded random num_eval of them as a uint8 .npz. -> (its path, the settings it was made with)."""
    import numpy as np
    from data import make_video_dataset, random_subset
    out = os.path.join(args.out_dir, 'real_clips')
    settings = {'data': args.data, 'image_size': sizes['image_size'], 'num_frames': args.num_frames,
                'num_eval': sizes['num_eval']}
    path = os.path.join(out, 'real.npz')
    if not clear_unless_matching(out, settings):
        print(f"making {out}")
        dataset = make_video_dataset(args.data, sizes['image_size'], args.num_frames, seed=0, train=False)
        clips = uint8_samples(torch.stack([dataset[i][0] for i in random_subset(dataset, sizes['num_eval'], 0)]))
        os.makedirs(out, exist_ok=True)
        np.savez(path, arr_0=clips)  # (num_eval, T, H, W, 3)
        record(out, settings)
    return path, settings


def swd_references(aes):
    """The trivial references beside Fig. 1's curves, scored exactly as the LDM's samples are (eval_fid.py against the
    same held-out images): `real`, a second draw of real images (from the training stream, disjoint from the held-out
    set), the level no generator can beat but by chance; and each AE's reconstructions of that draw (posterior means),
    the floor that an LDM on its latents approaches but cannot pass. Video: clips and the video AEs. -> {name: metrics}."""
    import numpy as np
    from common import select_device
    from data import make_dataset, make_video_dataset, random_subset
    from weights import load_autoencoder, load_video_autoencoder
    n = sizes['num_samples']
    if video:
        dataset = make_video_dataset(args.data, sizes['image_size'], args.num_frames, seed=0, train=True,
                                     random_crop=args.random_crop)
    else:
        dataset = make_dataset(args.data, sizes['image_size'], seed=0, train=True, random_crop=args.random_crop)
    items = random_subset(dataset, n, 0)
    if args.random_crop:  # n seeded crops, cycling through the images, as the training loader draws them
        items = [(i, k) for k, i in enumerate((items * n)[:n])]
    kinds = {'real': None, **{f"{arm} AE reconstructions": ae for arm, ae in aes.items()}}
    device = select_device(args.device)
    out, real = {}, None
    for name, ae in kinds.items():
        ref = os.path.join(args.out_dir, 'references', name.split()[0] + ('' if ae is None else '_ae'))
        settings = {'what': name, 'num_samples': n, 'image_size': sizes['image_size'], 'data': data_args,
                    'ae': None if ae is None else ae[2]}
        npz = os.path.join(ref, 'samples.npz')
        if not clear_unless_matching(ref, settings):
            print(f"making {ref}")
            os.makedirs(ref, exist_ok=True)
            if real is None:  # the draw is made once, for whichever files need it
                real = torch.stack([dataset[i][0] for i in items])  # (n, 3, [T,] H, W)
            x = real
            with torch.no_grad():
                if ae is not None:
                    model = (load_video_autoencoder if video else load_autoencoder)(os.path.join(ae[1], 'ckpt.pt'),
                                                                                    device=device)
                    x = torch.cat([model.decode(model.encode(b.to(device), sample=False)[0]).cpu()
                                   for b in x.split(8 if video else 64)])
            np.savez(npz, arr_0=uint8_samples(x))
            record(ref, settings)
        metrics = score(os.path.join(ref, 'metrics'), npz, {'samples': settings})
        out[name] = {k: v for k, v in metrics.items() if k != 'skipped'}
    return out

# -----------------------------------------------------------------------------
# statistics and the verdict: sentences computed from the numbers

def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(name, base, se, lower_is_better=True):
    """One sentence on a per-seed paired comparison. A difference counts only when every seed agrees on its sign and
    the mean paired difference exceeds the larger of the two arms' seed spreads (with one seed: never)."""
    (mb, sb), (ms, ss) = mean_std(base), mean_std(se)
    diffs = [s - b for b, s in zip(base, se)]
    change = 100 * (ms - mb) / abs(mb) if mb else float('nan')
    seeds = ', '.join(f"{b:.4g} -> {s:.4g}" for b, s in zip(base, se))
    clear = len(diffs) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)) and \
        abs(statistics.mean(diffs)) > max(sb, ss)
    if not clear:
        why = 'one seed cannot show a spread' if len(diffs) == 1 else "no difference beyond the seeds' spread"
        return f"{name}: baseline {mb:.4g} ± {sb:.2g}, SE {ms:.4g} ± {ss:.2g} ({change:+.1f}%): {why} (seeds: {seeds})."
    verb = 'lowered' if ms < mb else 'raised'
    good = (ms < mb) == lower_is_better
    return (f"{name}: SE {verb} it by {abs(change):.1f}% ({mb:.4g} ± {sb:.2g} -> {ms:.4g} ± {ss:.2g}; seeds: {seeds}), "
            f"{'better' if good else 'worse'} beyond the seeds' spread.")


def hf_series(rows):
    """hf_share of posterior means, of samples, and of RGB on the latent grid, over a sweep's AEs (in order)."""
    return {'posterior means': [m['hf_share'] for m in rows.values()],
            'posterior samples': [m['hf_share_sample'] for m in rows.values()],
            'RGB on the latent grid': [m['rgb_hf_share'] for m in rows.values()]}


def trend(xs, ys):
    """'rises' / 'falls' when ys is monotone in xs, else 'is not monotone'."""
    if all(b > a for a, b in zip(ys, ys[1:])):
        return 'rises'
    if all(b < a for a, b in zip(ys, ys[1:])):
        return 'falls'
    return 'is not monotone'

# -----------------------------------------------------------------------------
# figures

def plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as pyplot
    return pyplot


def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, name), dpi=120)
    plt().close(fig)
    return name


def plot_convergence(fig1, keys, references):
    """Fig. 1: the sample metrics `keys` (SWD average and per scale; video: video SWD, frames, motion) vs LDM steps,
    mean ± std over seeds as a band, one line per arm; the references as horizontal lines."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for arm, color in zip(fig1, ('tab:blue', 'tab:orange', 'tab:green', 'tab:red')):
            steps = [p['step'] for p in fig1[arm][0]['curve']]
            values = [[s['curve'][i][key] for s in fig1[arm]] for i in range(len(steps))]
            m = [statistics.mean(v) for v in values]
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.plot(steps, m, 'o-', color=color, label=f"{arm} latents")
            ax.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.2)
            ax.axhline(references[f"{arm} AE reconstructions"][key], color=color, ls=':', label=f"{arm} AE reconstructions")
        ax.axhline(references['real'][key], color='black', ls='--', label=f"a second draw of real {what}")
        ax.set(xlabel='LDM training steps', ylabel=f"{key} (lower is better)", title=key.replace('swd_', 'SWD '))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save(fig, 'fig1_convergence.png')


def plot_spectra(rows, name, title):
    """Profiles of several AEs (means solid, samples dotted) with RGB on the latent grid (dashed)."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.5, 4))
    for label, m in rows.items():
        line, = ax.plot(m['profile'], label=f"{label} mean (hf {m['hf_share']:.3f})")
        ax.plot(m['profile_sample'], ':', color=line.get_color(), label=f"{label} sample (hf {m['hf_share_sample']:.3f})")
    first = next(iter(rows.values()))
    ax.plot(first['rgb_profile'], '--', color='black', label=f"RGB on the latent grid (hf {first['rgb_hf_share']:.3f})")
    ax.set(yscale='log', xlabel='zigzag index (low -> high frequency)', ylabel='RMS coefficient / RMS centred DC',
           title=title)
    ax.legend(fontsize=6)
    return save(fig, name)


def plot_temporal(rows, name):
    """Video: the temporal spectrum of each AE's latents (DCT along the latent frames, each channel's AC profile over
    its mean) with RGB on the same grid (dashed)."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 3.8))
    for label, m in rows.items():
        k = range(1, len(m['temporal_profile']) + 1)
        ax.plot(k, m['temporal_profile'], 'o-', label=f"{label} (temporal hf {m['temporal_hf']:.3f})")
    first = next(iter(rows.values()))
    ax.plot(k, first['rgb_temporal_profile'], 'o--', color='black',
            label=f"RGB on the latent grid (temporal hf {first['rgb_temporal_hf']:.3f})")
    ax.set(xlabel='temporal DCT frequency k (latent frames)', ylabel='mean |coefficient| / channel mean',
           title='Temporal spectrum of the latents (white noise: flat at 1)')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, name)


def plot_sweep(xs, series, xlabel, name, log_x=False, psnr=None):
    """hf_share (and optionally PSNR) against a swept setting."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2 if psnr else 1, figsize=(9 if psnr else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    for label, ys in series.items():
        ax.plot(xs, ys, '--' if label.startswith('RGB') else 'o-', label=label)
    ax.set(xlabel=xlabel, ylabel='hf_share (AC energy in zigzag 32..63)', xscale='symlog' if log_x else 'linear')
    if log_x:
        ax.set_xscale('symlog', linthresh=min(x for x in xs if x > 0))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if psnr:
        for label, ys in psnr.items():
            axes[0][1].plot(xs, ys, '--' if 'bicubic' in label else 'o-', label=label)
        axes[0][1].set(xlabel=xlabel, ylabel='reconstruction PSNR (dB)')
        axes[0][1].legend(fontsize=7)
        axes[0][1].grid(alpha=0.3)
    return save(fig, name)


def plot_erasure(fig5):
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 3.8))
    pct = [10 * k for k in range(10)]
    for arm, m in fig5.items():
        ax.plot(pct, m['erasure_psnr'], 'o-', label=f"{arm} latents")
    ax.set(xlabel='% of latent DCT coefficients erased (highest first)', ylabel='PSNR vs input (dB)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, 'fig5_erasure.png')


@torch.no_grad()
def erasure_strip(aes):
    """Fig. 5's image strip: for 4 held-out images, rows RGB, baseline, SE; columns 0/25/50/75% of the 8x8 DCT
    coefficients erased (RGB in its own blocks, the AEs in their latents, then decoded)."""
    from torchvision.utils import save_image
    from data import make_dataset
    from weights import load_autoencoder
    from spectrum import erase_high_frequencies
    dataset = make_dataset(args.data, sizes['image_size'], seed=0, train=False)
    x = torch.stack([dataset[i][0] for i in range(min(4, len(dataset)))])  # (4, 3, H, W)
    models = {arm: load_autoencoder(os.path.join(out, 'ckpt.pt')) for arm, (_, out, _) in aes.items()}
    rows = [torch.cat([erase_high_frequencies(x, p).clamp(-1, 1) for p in ERASE_STRIP], dim=3)]
    for arm, ae in models.items():
        z, _ = ae.encode(x, sample=False)
        rows.append(torch.cat([ae.decode(erase_high_frequencies(z, p)).clamp(-1, 1) for p in ERASE_STRIP], dim=3))
    grid = torch.cat(rows, dim=2)  # (4, 3, 3H, 4W): per image, rows RGB / baseline / SE, columns the erased fractions
    save_image((grid + 1) / 2, os.path.join(args.out_dir, 'fig5_strip.png'), nrow=len(x), padding=4, pad_value=1)
    return 'fig5_strip.png'

# -----------------------------------------------------------------------------
# the experiment

def hardware():
    if torch.cuda.is_available() and args.device != 'cpu':
        return f"{args.nproc}x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def ae_table(rows):
    """One row per AE; video adds the temporal hf ratio of the latents and of RGB on their grid."""
    temporal = ['temporal hf', 'RGB temporal hf'] if video else []
    lines = ["| autoencoder | hf_share means | hf_share samples | RGB hf_share | " + ''.join(f"{c} | " for c in temporal) +
             "PSNR | bicubic at latent grid | margin | AE train s |", "|---" * (8 + len(temporal)) + "|"]
    for label, m in rows.items():
        margin = m['psnr'] - m['bicubic_psnr']
        cells = f"{m['temporal_hf']:.4f} | {m['rgb_temporal_hf']:.4f} | " if video else ''
        lines.append(f"| {label} | {m['hf_share']:.4f} | {m['hf_share_sample']:.4f} | {m['rgb_hf_share']:.4f} | {cells}"
                     f"{m['psnr']:.2f} | {m['bicubic_psnr']:.2f} | {margin:+.2f} dB{'' if margin >= 3 else ' (< 3 dB)'} | "
                     f"{m['ae_train_seconds']:.0f} |")
    return lines


t0 = time.time()
report, md = {'config': {**vars(args), 'sizes': sizes}, 'hardware': hardware(), 'torch': torch.__version__}, []

# Fig. 1: baseline vs SE from scratch, equal steps (AE seeds < ae_seeds); video also the SE fine-tune of the baseline
# and its control; the LDM convergence on each (seeds < seeds)
PAIRS = [('baseline', 'se', '')] + ([('control', 'se_ft', 'fine-tuned: ')] if video else [])  # (reference, SE, label)
fig1, fig1_ae, fig1_aes = {arm: [] for pair in PAIRS for arm in pair[:2]}, {arm: [] for pair in PAIRS for arm in pair[:2]}, []
for seed in range(args.ae_seeds):
    base = autoencoder(seed)
    fig1_aes.append({'baseline': base, 'se': autoencoder(seed, se_weight=args.se_weight)})
    if video:  # the paper's video recipe: fine-tune the baseline with SE; the same steps without SE are the control
        fig1_aes[-1] |= {'control': autoencoder(seed, parent=base),
                         'se_ft': autoencoder(seed, se_weight=args.se_weight, parent=base)}
    for arm, ae in fig1_aes[-1].items():
        fig1_ae[arm].append(measure(ae))
seed0_aes = fig1_aes[0]
for seed in range(args.seeds):  # LDM seed s runs on the AEs of seed s % ae_seeds
    for arm, ae in fig1_aes[seed % args.ae_seeds].items():
        fig1[arm].append(ldm_curve(seed, ae))
references = swd_references(seed0_aes)
report['fig1'] = {'autoencoders': fig1_ae, 'ldm': fig1, 'references': references}
final = lambda arm, key: [s['curve'][-1][key] for s in fig1[arm]]
average = lambda arm, key: [statistics.mean(p[key] for p in s['curve']) for s in fig1[arm]]
last = fig1['baseline'][0]['curve'][-1]
if video:  # the weight-free video SWD (its frame and motion halves), and FVD where the I3D weights exist
    swd_keys = ['video_swd', 'swd_frames', 'swd_motion']
    gen_keys = swd_keys + (['fvd'] if 'fvd' in last else [])
else:
    swd_keys = ['swd_avg'] + sorted((k for k in last if k.startswith('swd_') and k[4:].isdigit()), key=lambda k: -int(k[4:]))
    gen_keys = swd_keys + (['fid'] if 'fid' in last else [])
ae_metric = lambda arm, key: [m[key] for m in fig1_ae[arm]]
verdict = []
for ref, se, label in PAIRS:
    verdict += [compare(f'{label}hf_share of posterior means', ae_metric(ref, 'hf_share'), ae_metric(se, 'hf_share')),
                compare(f'{label}hf_share of posterior samples (what the LDM learns)', ae_metric(ref, 'hf_share_sample'),
                        ae_metric(se, 'hf_share_sample'))]
    if video:
        verdict.append(compare(f'{label}temporal hf of the latents', ae_metric(ref, 'temporal_hf'),
                               ae_metric(se, 'temporal_hf')))
    verdict.append(compare(f'{label}reconstruction PSNR', ae_metric(ref, 'psnr'), ae_metric(se, 'psnr'),
                           lower_is_better=False))
    verdict += [compare(f"{label}{k} of samples at the last LDM step", final(ref, k), final(se, k)) for k in gen_keys]
    verdict += [compare(f"{label}{k} averaged over the {sizes['ldm_evals']} LDM evaluations (convergence)",
                        average(ref, k), average(se, k)) for k in gen_keys]
report['verdict'] = verdict
short_of_target = [f"{arm} seed {s}" for arm in fig1_ae for s, m in enumerate(fig1_ae[arm])
                   if m['psnr'] - m['bicubic_psnr'] < 3]
skipped = {k: why for arm in fig1 for s in fig1[arm] for p in s['curve'] for k, why in p['skipped'].items()}
what = 'clips' if video else 'images'
seed0_rows = {arm: fig1_ae[arm][0] for arm in fig1_ae}  # the AEs of seed 0: spectra plots, Fig. 5
finetune_text = (f"; se_ft and control: the baseline fine-tuned {sizes['ft_steps']} more steps with and without SE"
                 if video else '')

md += ["# Scale equivariance in miniature: " + ("the video experiment" if video else "the paper's figures"), "",
       f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if args.smoke else 'default sizes'}, "
       f"data: {args.data or 'embedded dead leaves'}{' (random crops)' if args.random_crop else ''}, "
       f"{args.seeds} seed(s) for Fig. 1{f', {args.num_frames}-frame clips' if video else ''}, hardware: {hardware()}, "
       f"torch {torch.__version__}.", "",
       "Sizes: " + ', '.join(f"{k} {v}" for k, v in sizes.items()) +
       f"; AE preset {args.ae_preset}, z_channels {args.z_channels}, kl_weight {args.kl_weight:g}, "
       f"LDM {args.ldm_model} {args.ldm_preset or '(tiny)'}, EMA {args.ldm_ema_decay}.", "",
       "hf_share is spectrum.py's offset-free measure: the share of AC energy in zigzag coefficients 32..63 of 8x8 block "
       "DCTs, averaged over channels (white noise 0.508); lower = closer to smooth images. Samples are posterior "
       "samples, what the LDM is trained on; means are the posterior means. Every AE is measured on the same "
       f"{sizes['num_eval']} held-out {what}, next to bicubic down-and-up at its latent grid"
       f"{' (every frame; generous: it keeps all frames, the latent 1 in 4)' if video else ''}.", ""]
if video:
    md += ["Video: hf_share is that of every latent frame, over all of them (an 8x8 latent frame is one DCT block); "
           "temporal hf is spectrum.temporal_hf_ratio, the mean |DCT coefficient| along the latent frames in the upper "
           "half of the temporal frequencies, over each channel's mean AC amplitude (white noise in time: 1; lower = "
           "smoother in time). RGB is pooled to the latents' (t, h, w) grid.", ""]
md += ["## Fig. 1: LDM convergence on baseline vs SE latents", "",
       f"{'The two arms from scratch' if video else 'Both arms'}: the same preset, recipe, data order and "
       f"{sizes['ae_steps']} AE steps (the SE arm, se_weight "
       f"{args.se_weight:g}, pays one extra decoder pass per step)"
       f"{finetune_text}, "
       f"then the same {'video ' if video else ''}DiT, {sizes['ldm_steps']} steps, "
       f"sampled ({sizes['num_samples']} DDIM samples, {sizes['sample_steps']} steps, the same seed) and scored at "
       f"{sizes['ldm_evals']} evenly spaced steps. Bands: ± std over {args.seeds} LDM seed(s) on {args.ae_seeds} AE seed(s).", ""]
for seed in range(args.ae_seeds):
    md += ae_table({f"{arm} seed {seed}": fig1_ae[arm][seed] for arm in fig1_ae})[2 if seed else 0:]
md += ["", ("Every AE beats bicubic at its latent grid by at least 3 dB." if not short_of_target else
            f"Short of the 3 dB target over bicubic: {', '.join(short_of_target)}."), "",
       *([f"![spatial spectra]({plot_spectra(seed0_rows, 'spectra_spatial.png', 'Spatial spectrum of the latent frames')})",
          "", f"![temporal spectra]({plot_temporal(seed0_rows, 'spectra_temporal.png')})", ""] if video else []),
       f"![Fig. 1]({plot_convergence(fig1, swd_keys, references)})", "",
       "| arm | " + " | ".join(f"{k} final" for k in gen_keys) + " | LDM train s |", "|---" * (len(gen_keys) + 2) + "|"]
for arm in fig1:
    cells = [f"{mean_std(final(arm, k))[0]:.2f} ± {mean_std(final(arm, k))[1]:.2f}" for k in gen_keys]
    md.append(f"| {arm} | " + " | ".join(cells) + f" | {statistics.mean(s['ldm_train_seconds'] for s in fig1[arm]):.0f} |")
for name, m in references.items():  # the same metrics of real images and of the AEs' reconstructions (seed 0)
    md.append(f"| reference: {name} | " + " | ".join(f"{m[k]:.2f}" if k in m else '-' for k in gen_keys) + " | |")
md += [""] + [f"- {k} not measured: {why}" for k, why in sorted(skipped.items())]
md += ["", f"The reference rows score a second draw of real {what} (from the training stream) and each seed-0 AE's "
       f"reconstructions of it against the same held-out {what}, with the same counts: the first is what a perfect "
       "generator gets, the second what a perfect LDM on that AE's latents can get."]
md += ["", f"Samples at the last step (seed 0{', first frames above middle frames' if video else ''}):", "",
       "| " + " | ".join(fig1) + " |", "|---" * len(fig1) + "|",
       "| " + " | ".join(f"![{arm}]({fig1[arm][0]['curve'][-1]['grid']})" for arm in fig1) + " |", "",
       "### Verdict (computed from the numbers above)", "",
       "A difference counts only when every seed agrees on its sign and the mean paired difference exceeds the larger "
       "of the two arms' seed standard deviations.", ""] + [f"- {v}" for v in verdict] + [""]

# Fig. 5: erasure, from the seed-0 AEs of Fig. 1 (images)
fig5 = seed0_rows
md += [] if video else ["## Fig. 5: erasing the latents' high frequencies", "",
       "PSNR of the decoded image after zeroing the highest p% of every 8x8 latent block's DCT coefficients (seed 0). "
       "Strip: per image, rows RGB (its own blocks), baseline, SE; columns 0, 25, 50, 75% erased.", "",
       f"![Fig. 5 curves]({plot_erasure(fig5)})", "", f"![Fig. 5 strip]({erasure_strip(seed0_aes)})", "",
       "| erased | " + " | ".join(f"{10 * k}%" for k in range(10)) + " |", "|---" * 11 + "|"]
if not video:
    md += [f"| {arm} | " + " | ".join(f"{v:.2f}" for v in m['erasure_psnr']) + " |" for arm, m in fig5.items()]
    md += [""]
    report['fig5'] = {arm: m['erasure_psnr'] for arm, m in fig5.items()}

if figures['channels']:  # Fig. 2
    rows = {f"z{c}": measure(autoencoder(0, z_channels=c)) for c in Z_CHANNELS}
    report['fig2'] = rows
    series = hf_series(rows)
    md += ["## Fig. 2: latent channels", "", f"AEs identical but for z_channels (seed 0, {sizes['ae_steps']} steps).", "",
           f"![Fig. 2 spectra]({plot_spectra(rows, 'fig2_spectra.png', 'Fig. 2: spectra vs latent channels')})", "",
           f"![Fig. 2]({plot_sweep(Z_CHANNELS, series, 'z_channels', 'fig2_channels.png')})", ""] + ae_table(rows) + [
           "", f"- hf_share of posterior means {trend(Z_CHANNELS, series['posterior means'])} with channels "
           f"({', '.join(f'{v:.4f}' for v in series['posterior means'])}); of samples "
           f"{trend(Z_CHANNELS, series['posterior samples'])} "
           f"({', '.join(f'{v:.4f}' for v in series['posterior samples'])}). The paper: it rises.", ""]

if figures['kl_sweep']:  # Fig. 3
    rows = {f"kl {w:g}": measure(autoencoder(0, kl_weight=w)) for w in KL_WEIGHTS}
    report['fig3'] = rows
    series = hf_series(rows)
    md += ["## Fig. 3: KL weight", "", f"AEs identical but for kl_weight (seed 0, {sizes['ae_steps']} steps).", "",
           f"![Fig. 3 spectra]({plot_spectra(rows, 'fig3_spectra.png', 'Fig. 3: spectra vs KL weight')})", "",
           f"![Fig. 3]({plot_sweep(KL_WEIGHTS, series, 'kl_weight', 'fig3_kl.png', log_x=True)})", ""] + ae_table(rows) + [
           "", f"- hf_share of posterior samples {trend(KL_WEIGHTS, series['posterior samples'])} with the KL weight "
           f"({', '.join(f'{v:.4f}' for v in series['posterior samples'])}); of means "
           f"{trend(KL_WEIGHTS, series['posterior means'])} ({', '.join(f'{v:.4f}' for v in series['posterior means'])}). "
           "The paper: KL noise adds high frequencies to the samples.", ""]

if figures['se_sweep']:  # Fig. 4
    base = autoencoder(0)
    scratch = {w: measure(autoencoder(0, se_weight=w)) for w in SE_WEIGHTS}
    tuned = {w: measure(autoencoder(0, se_weight=w, parent=base)) for w in SE_WEIGHTS}
    report['fig4'] = {'scratch': {str(w): m for w, m in scratch.items()}, 'finetune': {str(w): m for w, m in tuned.items()}}
    series = {'from scratch (means)': [m['hf_share'] for m in scratch.values()],
              'from scratch (samples)': [m['hf_share_sample'] for m in scratch.values()],
              'fine-tuned (means)': [m['hf_share'] for m in tuned.values()],
              'fine-tuned (samples)': [m['hf_share_sample'] for m in tuned.values()],
              'RGB on the latent grid': [m['rgb_hf_share'] for m in scratch.values()]}
    psnr = {'from scratch': [m['psnr'] for m in scratch.values()], 'fine-tuned': [m['psnr'] for m in tuned.values()],
            'bicubic at latent grid': [m['bicubic_psnr'] for m in scratch.values()]}
    md += ["## Fig. 4: SE strength", "",
           f"se_weight swept from scratch ({sizes['ae_steps']} steps) and as the paper's fine-tune of the se_weight-0 "
           f"baseline ({sizes['ft_steps']} more steps; se_weight 0 is the control for the extra steps). Seed 0.", "",
           f"![Fig. 4]({plot_sweep(SE_WEIGHTS, series, 'se_weight', 'fig4_se.png', psnr=psnr)})", ""]
    md += ae_table({**{f"scratch se {w:g}": m for w, m in scratch.items()},
                    **{f"fine-tune se {w:g}": m for w, m in tuned.items()}})
    md += ["", f"- From scratch, hf_share of means {trend(SE_WEIGHTS, series['from scratch (means)'])} with se_weight "
           f"({', '.join(f'{v:.4f}' for v in series['from scratch (means)'])}), PSNR "
           f"{trend(SE_WEIGHTS, psnr['from scratch'])} ({', '.join(f'{v:.2f}' for v in psnr['from scratch'])} dB).",
           f"- Fine-tuned, hf_share of means {trend(SE_WEIGHTS, series['fine-tuned (means)'])} "
           f"({', '.join(f'{v:.4f}' for v in series['fine-tuned (means)'])}), PSNR "
           f"{trend(SE_WEIGHTS, psnr['fine-tuned'])} ({', '.join(f'{v:.2f}' for v in psnr['fine-tuned'])} dB). "
           "The paper: SE lowers the high frequencies at a small PSNR cost.", ""]

wall = time.time() - t0
md.insert(3, f"Wall time of this invocation: {wall / 60:.1f} min (reused artefacts cost nothing).")
report['wall_seconds'] = wall
with open(os.path.join(args.out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(md))
with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
print('\n'.join(md))
print(f"\nwrote {os.path.join(args.out_dir, 'report.md')} and report.json")
