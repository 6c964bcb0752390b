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

Everything goes to out_dir: report.json (every number) and the artefacts, then report.md (tables, plots, a verdict
computed from the numbers), which report.py writes from report.json alone (`python report.py out/reproduce` re-plots).

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
import subprocess

import torch

from report import verdict, write_report

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
    from weights import load_checkpoint
    return load_checkpoint(path)['step'] if os.path.exists(path) else None


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
    from data import make_dataset, random_subset
    out = os.path.join(args.out_dir, 'real_clips')
    settings = {'data': args.data, 'image_size': sizes['image_size'], 'num_frames': args.num_frames,
                'num_eval': sizes['num_eval']}
    path = os.path.join(out, 'real.npz')
    if not clear_unless_matching(out, settings):
        print(f"making {out}")
        dataset = make_dataset(args.data, sizes['image_size'], seed=0, train=False, num_frames=args.num_frames)
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
    from data import make_dataset, random_subset
    from weights import load_autoencoder
    n = sizes['num_samples']
    dataset = make_dataset(args.data, sizes['image_size'], seed=0, train=True, random_crop=args.random_crop,
                           num_frames=args.num_frames)
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
                    model = load_autoencoder(os.path.join(ae[1], 'ckpt.pt'), device=device)
                    x = torch.cat([model.decode(model.encode(b.to(device), sample=False)[0]).cpu()
                                   for b in x.split(8 if video else 64)])
            np.savez(npz, arr_0=uint8_samples(x))
            record(ref, settings)
        metrics = score(os.path.join(ref, 'metrics'), npz, {'samples': settings})
        out[name] = {k: v for k, v in metrics.items() if k != 'skipped'}
    return out


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


# -----------------------------------------------------------------------------
# the experiment

def hardware():
    if torch.cuda.is_available() and args.device != 'cpu':
        return f"{args.nproc}x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


t0 = time.time()
report = {'config': {**vars(args), 'sizes': sizes}, 'hardware': hardware(), 'torch': torch.__version__}

# Fig. 1: baseline vs SE from scratch, equal steps (AE seeds < ae_seeds); video also the SE fine-tune of the baseline
# and its control; the LDM convergence on each (seeds < seeds)
arms = ['baseline', 'se'] + (['control', 'se_ft'] if video else [])
fig1, fig1_ae, fig1_aes = {arm: [] for arm in arms}, {arm: [] for arm in arms}, []
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
report['fig1'] = {'autoencoders': fig1_ae, 'ldm': fig1, 'references': swd_references(seed0_aes)}

if not video:  # Fig. 5: erasure, from the seed-0 AEs of Fig. 1 (images)
    report['fig5'] = {arm: fig1_ae[arm][0]['erasure_psnr'] for arm in fig1_ae}
    erasure_strip(seed0_aes)
if figures['channels']:  # Fig. 2
    report['fig2'] = {'z_channels': Z_CHANNELS,
                      'autoencoders': {f"z{c}": measure(autoencoder(0, z_channels=c)) for c in Z_CHANNELS}}
if figures['kl_sweep']:  # Fig. 3
    report['fig3'] = {'kl_weights': KL_WEIGHTS,
                      'autoencoders': {f"kl {w:g}": measure(autoencoder(0, kl_weight=w)) for w in KL_WEIGHTS}}
if figures['se_sweep']:  # Fig. 4: from scratch, and as the paper's fine-tune of the baseline
    base = autoencoder(0)
    report['fig4'] = {'se_weights': SE_WEIGHTS,
                      'scratch': {str(w): measure(autoencoder(0, se_weight=w)) for w in SE_WEIGHTS},
                      'finetune': {str(w): measure(autoencoder(0, se_weight=w, parent=base)) for w in SE_WEIGHTS}}

report['wall_seconds'] = time.time() - t0
report['verdict'] = verdict(report)
with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
print(write_report(args.out_dir))
print(f"\nwrote {os.path.join(args.out_dir, 'report.json')} and report.md (python report.py {args.out_dir} re-plots it)")
