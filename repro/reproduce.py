"""
Does scale equivariance (SE) make latents more diffusable? The experiment of Skorokhodov et al. (ICML 2025) in
miniature, from one command, run with the project's own scripts; report.py turns its numbers into report.md.

  python repro/reproduce.py                  # Fig. 1 and 5: 3 shipped baselines, each fine-tuned with SE and without
  python repro/reproduce.py --dataset shapes # the same on few large shapes, whose samples a viewer can judge
  python repro/reproduce.py --pretrain --pretrain_seed K   # make shipped baseline K again (about 40 min on one core)
  python repro/reproduce.py --pretrain --data ~/photos --random_crop --baseline ae.safetensors  # an AE of a folder
  python repro/reproduce.py --data ~/photos --random_crop --baseline ae.safetensors  # the experiment on that folder
  python repro/reproduce.py --ablations all  # + per run: SE with z detached, one factor, DCT cut, HF penalty, 5x longer
  python repro/reproduce.py --channels       # + Fig. 2 (latent channels); --kl_sweep: Fig. 3; --se_sweep: Fig. 4; --all
  python repro/reproduce.py --objective flow # rectified-flow LDMs instead of DDPM (eps,flow: both, on the same autoencoders)
  python repro/reproduce.py --smoke          # the pipeline at toy sizes (checks it runs; says nothing about SE)
  python repro/reproduce.py --num_frames 17  # video: the shipped causal 3D baseline, spatial SE and spatial + temporal SE
  python repro/reproduce.py --f_sweep        # instead, LDM's f ablation (its Fig. 6/7): pixels (f1) and AEs of f2 .. f32

The protocol. (1) Deep autoencoders (preset mini: f4, 8 channels, no shortcut from pixels to latent) are pretrained
once, for long, by --pretrain with seeds 0, 1 and 2, and shipped in assets/ with their recipe and the commit that made
them. (2) As the paper fine-tunes FluxAE, each run (a baseline and a seed) fine-tunes its baseline twice for the same
steps, data order and seed: with SE (se_weight 0.25, the authors' operator) and without (the control). (3) Each autoencoder is measured on held-out images by spectrum.py:
hf_share and hf_energy_share of posterior means and samples beside RGB on the latent grid, and reconstruction PSNR
beside bicubic at the latent grid. (4) The same LDM recipe trains on each autoencoder's latents (the run's seed for both arms), normalised per channel
so that no channel scale the decoder absorbs moves it.
The primary metric is a diffusability probe: on held-out latents, with the same fixed noise for every arm, the LDM's
eps-MSE and the pixel error of its decoded x0 prediction at each noise level. Secondary: its samples, scored by SWD
(and FID/KID with Inception weights) beside a second draw of real images and each AE's own reconstructions, after a
guard that says whether the LDM has learned to sample at all, and the recognisability of samples and references.
Beside the probe, the Gaussian oracle of each arm's latent spectrum under one scalar and per-channel normalisation. (5)
Every comparison is paired (SE against its own control), with baselines as units (a paired t-test and an exact
sign-flip test; over seeds where there is one baseline, said so) and, for the probe, held-out images as units (a
hierarchical bootstrap); the verdict, at alpha = 0.05, claims an effect on the probe only where both agree.

Everything goes to --out_dir; report.json holds every number. Each artefact records the settings it was made with
(reproduce_settings.json); a rerun reuses what matches, resumes training runs whose settings match and remakes the
rest. On a CPU, --jobs children run at once, one thread each.

Video (--num_frames 17): the same protocol on clips of the embedded moving dead leaves. The baseline is the causal 3D
autoencoder (preset mini: f4 in space, 4x in time, 16 channels), shipped in assets/ as the image one; each seed
fine-tunes it three times: the control, spatial SE, and spatial + temporal SE (--se_temporal: x and z also halved in
time, the first frame kept apart, as the comment on the authors' temporal_scale_factors intends; their released
code keeps every frame). The spectra are spatial (per latent frame)
and temporal; the LDM is the video DiT; the probe runs on held-out clips; samples are scored by the video SWD (and FVD
with I3D weights). Figures 2-5 are image-only.
"""
import os
import sys
import json
import time
import shutil
import re
import signal
import hashlib
import argparse
import platform
import threading
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the scripts it runs
sys.path.insert(0, ROOT)

from utils.cli import DATASETS, HelpFormatter, add_device_arg, die, int_list
from utils.rundir import lock_folder, refuse_overlap

ASSETS = os.path.join(ROOT, 'assets')
BASELINE = {'image': os.path.join(ASSETS, 'baseline_mini.safetensors'),
            'video': os.path.join(ASSETS, 'baseline_video_mini.safetensors')}


def baseline_file(kind, seed):
    """The shipped baseline pretrained with --seed `seed`: seed 0 is the first file, seed k > 0 its sibling _seed{k}."""
    return BASELINE[kind] if seed == 0 else BASELINE[kind].replace('.safetensors', f'_seed{seed}.safetensors')
# the recipe of the shipped baseline: train_ae.py from scratch on the embedded data (L1 + KL; no LPIPS, whose VGG
# weights a fresh machine may not have, and no GAN, which needs more steps than a CPU hour)
PRETRAIN = {'image': ['--preset', 'mini', '--image_size', 64, '--batch_size', 8, '--lr', 1e-3, '--warmup_steps', 100,
                      '--kl_weight', 1e-6, '--lpips_weight', 0, '--disc_weight', 0, '--seed', 0, '--max_steps', 6000,
                      '--eval_interval', 1000, '--ckpt_interval', 500],
            # the causal 3D autoencoder: 16 latent channels as CogVideoX's; batch 2 at a high learning rate with warm-up
            'video': ['--preset', 'mini', '--z_channels', 16, '--num_frames', 17, '--image_size', 32, '--batch_size', 2,
                      '--lr', 2e-3, '--warmup_steps', 100, '--kl_weight', 1e-6, '--lpips_weight', 0, '--disc_weight', 0,
                      '--seed', 0, '--max_steps', 4000, '--eval_interval', 100, '--ckpt_interval', 500]}
SIZES = {  # default: Fig. 1 (3 seeds) and Fig. 5 in about 30 minutes on 2 CPU cores; smoke: the pipeline end to end
    'default': dict(image_size=64, train_images=2000, num_eval=256, ft_steps=300, ft_batch_size=8, ldm_steps=2000,
                    ldm_evals=2, ldm_batch_size=64, num_samples=256, sample_steps=50, sweep_steps=1500),
    'smoke': dict(image_size=32, train_images=16, num_eval=16, ft_steps=2, ft_batch_size=2, ldm_steps=4, ldm_evals=2,
                  ldm_batch_size=4, num_samples=16, sample_steps=3, sweep_steps=2),
    # --num_frames: Fig. 1 on clips (3 arms x 3 seeds) in about 45 minutes on 2 CPU cores; train_images are the clips
    # each LDM caches (the autoencoders train on the endless embedded stream)
    'video': dict(image_size=32, train_images=256, num_eval=64, ft_steps=200, ft_batch_size=2, ldm_steps=3000,
                  ldm_evals=1, ldm_batch_size=32, num_samples=64, sample_steps=25, sweep_steps=0),
    'video_smoke': dict(image_size=32, train_images=4, num_eval=4, ft_steps=2, ft_batch_size=1, ldm_steps=4,
                        ldm_evals=2, ldm_batch_size=2, num_samples=4, sample_steps=3, sweep_steps=0),
}
SIZE_HELP = {  # what each of SIZES sets, for --help
    'image_size': 'resolution of every image trained on and measured',
    'train_images': "training images (or, with --random_crop, each LDM's cached crops)",
    'num_eval': 'images in each of the two held-out sets',
    'ft_steps': 'steps of each fine-tune of the baseline (Fig. 1, Fig. 4)',
    'ft_batch_size': 'images per step of each fine-tune',
    'ldm_steps': 'training steps of each LDM',
    'ldm_evals': "evenly spaced LDM snapshots probed; the last is sampled",
    'ldm_batch_size': 'latents per step of each LDM',
    'num_samples': "samples scored from each LDM's last snapshot",
    'sample_steps': "DDIM steps of each LDM's preview grid",
    'sweep_steps': 'steps of each autoencoder trained from scratch (Fig. 2, 3)',
}
Z_CHANNELS = [4, 8, 16, 32]                  # Fig. 2, from scratch
KL_WEIGHTS = [1e-6, 1e-2, 1e-1, 1.0]         # Fig. 3, from scratch: the posterior noise shows from 1e-1 (std 0.06 at 1e-2)
SE_WEIGHTS = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]  # Fig. 4, fine-tunes of the baseline (0.05: where SE is small against L1)
# --ablations: more fine-tunes of every run, each measured by spectrum.py beside its control (no LDM): (the train_ae.py
# flags that make it on top of the SE arm's, its steps in ft_steps, its control: 'control' or a control as long)
ABLATIONS = {
    'se_detach': (['--se_detach_z'], 1, 'control'),  # SE trains the decoder alone (issue 37: which side moves the HF)
    'se_f2': (['--se_scales', '2'], 1, 'control'),   # the paper's factors one at a time (the SE arm draws 2 or 4)
    'se_f4': (['--se_scales', '4'], 1, 'control'),
    'dct_cut': (['--se_mode', 'dct_cut'], 1, 'control'),  # the authors' alternative: the DCT's HF cut from z and x
    'hf_reg': (['--se_weight', '0', '--hf_reg_weight', '0.1'], 1, 'control'),  # the authors' HF penalty (weight: ours)
    'se_long': ([], 5, 'control_long'),          # SE fine-tuned 5x longer, beside a control as long
}
# LDM's Sec. 4.1 (Fig. 6, 7): f1 diffuses pixels (train_ldm.py --ae none), f2-f32 the model.py mini-f* autoencoders;
# every LDM is the same tiny DiT with the same steps and batch. Default sizes: 23-27 min on 2 idle cores, estimated
# from per-step times measured on a busy machine (2026-12-07) and scaled by Fig. 1's LDM step measured beside them
F_FACTORS = [1, 2, 4, 8, 16, 32]
F_SWEEP_SIZES = {'default': dict(ae_steps=500, ldm_steps=1000, ldm_batch_size=16),
                 'smoke': dict(ae_steps=2, ldm_steps=2, ldm_batch_size=2)}
PROBE_DECODED_CLIPS = 16                     # video: held-out clips whose x0 prediction the probe decodes (its cost)
PROGRESS_SECONDS = 30                        # how often each running child's progress is shown
SHIPPED_BASELINES = 3                        # image baselines in assets/, pretrained with seeds 0, 1, 2
HELD_OUT = 0.25                              # the share of a --data folder's files held out (a seeded hash of names)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default=None, help='where every artefact and report.md go (none: out/reproduce, or out/reproduce_video); reruns reuse what matches')
parser.add_argument('--pretrain', action='store_true', help='train the baseline autoencoder from scratch with the shipped recipe and write it to --baseline')
parser.add_argument('--pretrain_seed', type=int, default=0, help="--pretrain's --seed: 0 remakes the first shipped "
                    "baseline, k its sibling _seed{k}")
parser.add_argument('--baseline', type=str, default=None, help='pretrained autoencoder(s) every arm fine-tunes, '
                    'comma-separated (none: shipped ones)')
parser.add_argument('--baselines', type=int, default=None, help='how many shipped baselines (seeds 0..N-1) to fine-tune; '
                    f'none: {SHIPPED_BASELINES} (smoke, video: 1)')
parser.add_argument('--smoke', action='store_true', help='toy sizes: checks that the pipeline runs, says nothing about SE')
parser.add_argument('--replot', action='store_true', help="only re-write report.md and its figures from --out_dir's report.json")
parser.add_argument('--channels', action='store_true', help='also Fig. 2: autoencoders with z_channels 4, 8, 16, 32')
parser.add_argument('--kl_sweep', action='store_true',
                    help='also Fig. 3: autoencoders from scratch with kl_weight ' + ', '.join(f'{w:g}' for w in KL_WEIGHTS))
parser.add_argument('--se_sweep', action='store_true', help='also Fig. 4: fine-tunes with se_weight 0 .. 1')
parser.add_argument('--skip_ldm', action='store_true', help="the autoencoders and their spectra alone (Fig. 1's "
                    "fine-tunes, --ablations): no LDM, probe or samples")
parser.add_argument('--ablations', type=str, default='', help="more fine-tunes per run, by their spectra: "
                    f"{','.join(ABLATIONS)} or all")
parser.add_argument('--all', action='store_true', help='every figure (1-5): --channels, --kl_sweep and --se_sweep too')
parser.add_argument('--num_frames', type=int, default=1, help='> 1: the video experiment on clips of this many frames (1 + 8k); Fig. 1 only')
parser.add_argument('--f_sweep', action='store_true', help="instead: LDM's Fig. 6/7 in miniature, quality against "
                    "throughput for each factor of --f_factors (f_sweep.md)")
parser.add_argument('--f_factors', type=int_list(1), default=F_FACTORS, help="--f_sweep's downsampling factors "
                    f"(1: pixels); default {','.join(map(str, F_FACTORS))}")
parser.add_argument('--data', type=str, default=None, help='image folder, split once by a seeded hash of file names into training and held-out files; none: dead leaves')
parser.add_argument('--dataset', type=str, default='textured', choices=DATASETS, help="embedded data: textured "
                    "dead leaves, or few large shapes")
parser.add_argument('--val_data', type=str, default=None, help='a folder of held-out images; then all of --data trains')
parser.add_argument('--random_crop', action='store_true', help='random crops of --data (training, and the held-out sets)')
parser.add_argument('--seeds', type=int, default=None, help='seeds per baseline, each an SE/control pair; none: 3 '
                    'with one baseline, else 1')
parser.add_argument('--se_weight', type=float, default=0.25, help="the SE arm's weight (the paper: 0.25)")
parser.add_argument('--se_down', type=str, default='bilinear', help="SE's operator (train_ae.py --se_down; the "
                    "authors': bilinear)")
parser.add_argument('--ft_lr', type=float, default=1e-4, help='learning rate of every fine-tune of the baseline')
parser.add_argument('--objective', type=str, default='eps', help="the LDMs' objective: eps (DDPM), v (DDPM, "
                    "v-prediction), flow, or several, e.g. eps,flow")
parser.add_argument('--ldm_model', type=str, default='dit', choices=['dit', 'unet'], help="the LDMs' denoiser backbone "
                    "(train_ldm.py --model)")
parser.add_argument('--ldm_preset', type=str, default='tiny', help="the size preset of the LDMs' backbone "
                    "(train_ldm.py --preset)")
parser.add_argument('--ldm_lr', type=float, default=None, help="learning rate of every LDM (none: 1e-3 on images, 3e-3 on video, the best of repro's LR sweep)")
parser.add_argument('--latent_norm', type=str, default=None, choices=['scalar', 'channel'], help="LDMs' latent "
                    "normalisation; none: channel (no channel scale moves the probe)")
parser.add_argument('--ldm_ema_decay', type=float, default=0.999, help="EMA decay of the LDMs' weights, with a warm-up "
                    "(train_ldm.py --ema_warmup): min(decay, (1 + n) / (10 + n))")
add_device_arg(parser)  # passed on to every script
parser.add_argument('--nproc', type=int, default=1, help='processes per training and sampling run (torchrun), e.g. GPUs')
parser.add_argument('--jobs', type=int, default=None, help='script runs at a time (default: 2 on a CPU, one thread '
                    'each; 1 with --nproc > 1)')
for key, value in SIZES['default'].items():
    parser.add_argument(f'--{key}', type=int, default=None, help=f"{SIZE_HELP[key]}; none: {value} (smoke "
                        f"{SIZES['smoke'][key]}; video {SIZES['video'][key]}, smoke {SIZES['video_smoke'][key]})")


def ablations_of(flag):
    """--ablations as a list of ABLATIONS' names ('all': every one)."""
    return list(ABLATIONS) if flag == 'all' else [a for a in flag.split(',') if a]


def baselines_of(files, count, num_frames, smoke):
    """The baseline files a run fine-tunes: --baseline's list (files), else the first --baselines (count) shipped
    files: by default all of them for images, the first alone for video and for a smoke run."""
    if files:
        return files.split(',')
    kind = kind_of(num_frames)
    n = count or (1 if kind == 'video' or smoke else SHIPPED_BASELINES)
    return [baseline_file(kind, k) for k in range(n)]


def kind_of(num_frames):
    """'video' with --num_frames > 1, else 'image': which baseline, recipe and sizes a run takes."""
    return 'video' if num_frames > 1 else 'image'


def check_args(args):
    """Every rule between flags, before anything runs. -> (sizes, figures, objectives)."""
    video = args.num_frames > 1
    args.out_dir = args.out_dir or ('out/reproduce_video' if video else 'out/reproduce' + ('_shapes' if
                                                                                        args.dataset == 'shapes' else ''))
    args.ldm_lr = args.ldm_lr or (3e-3 if video else 1e-3)
    args.latent_norm = args.latent_norm or 'channel'  # a probe that no channel scale the decoder absorbs can move
    baselines = baselines_of(args.baseline, args.baselines, args.num_frames, args.smoke)
    args.seeds = args.seeds or (3 if len(baselines) == 1 else 1)  # units: baselines where there are several
    size_set = ('video_smoke' if args.smoke else 'video') if video else ('smoke' if args.smoke else 'default')
    sizes = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in SIZES[size_set].items()}
    objectives = args.objective.split(',')
    problems = [f"--{k} must be at least 1" for k, v in sizes.items() if v < 1 and not (video and k == 'sweep_steps')]
    if args.num_frames < 1 or (video and (args.num_frames - 1) % 8):
        problems.append(f"--num_frames must be 1 (images) or 1 + 8k (clips: the video autoencoder halves time twice, "
                        f"and temporal SE halves its latent frames once more), got {args.num_frames}")
    if args.dataset != 'textured' and (video or args.data):
        problems.append(f"--dataset {args.dataset} is an embedded image set; drop --data and --num_frames with it")
    if video and (args.data or args.val_data):
        problems.append("the video experiment runs on the embedded moving dead leaves; --data and --val_data are for "
                        "images")
    unknown = set(ablations_of(args.ablations)) - set(ABLATIONS)
    if unknown:
        problems.append(f"--ablations knows {', '.join(ABLATIONS)} (or all), not {', '.join(sorted(unknown))}")
    if video and (args.channels or args.kl_sweep or args.se_sweep or args.all or args.ablations):
        problems.append("Figures 2-5 and the ablations are image-only; drop --channels, --kl_sweep, --se_sweep, "
                        "--ablations and --all with --num_frames")
    problems += [f"--{k} must be at least 1" for k in ('seeds', 'nproc', 'baselines')
                 if getattr(args, k) is not None and getattr(args, k) < 1]
    if args.baselines is not None and args.baseline:
        problems.append("--baselines counts the shipped baselines; with --baseline, list your files instead")
    if args.baselines is not None and args.baselines > (1 if video else SHIPPED_BASELINES):
        problems.append(f"--baselines {args.baselines}: {1 if video else SHIPPED_BASELINES} "
                        f"{'video' if video else 'image'} baseline(s) are shipped; make more with --pretrain "
                        f"--pretrain_seed K, and pass them with --baseline")
    if args.jobs is not None and args.jobs < 1:
        problems.append("--jobs must be at least 1")
    if not 0 <= args.se_weight or not args.se_weight > 0:
        problems.append(f"--se_weight must be positive (the SE arm), got {args.se_weight}")
    if set(objectives) - {'eps', 'v', 'flow'} or len(set(objectives)) != len(objectives):
        problems.append(f"--objective must be eps, v or flow, or several of them (eps,flow), got {args.objective}")
    if sizes['ldm_evals'] > sizes['ldm_steps']:
        problems.append(f"--ldm_evals {sizes['ldm_evals']} asks for more evaluations than --ldm_steps {sizes['ldm_steps']}")
    if args.val_data is not None and args.data is None:
        problems.append("--val_data holds the held-out images of --data; pass --data too")
    for flag in ('data', 'val_data'):
        if getattr(args, flag) is not None and not os.path.isdir(getattr(args, flag)):
            problems.append(f"--{flag} {getattr(args, flag)} is not a folder")
    if args.data and args.val_data:  # held-out images must not train: the same folder, or one inside the other
        a, b = os.path.realpath(args.data), os.path.realpath(args.val_data)
        if a == b or b.startswith(a + os.sep) or a.startswith(b + os.sep):
            problems.append(f"--val_data {args.val_data} {'is' if a == b else 'overlaps'} --data {args.data}: held-out "
                            f"images would be training images; pass a folder apart from --data")
    if args.data and not args.baseline and not args.smoke and not args.pretrain:  # the shipped baseline is 3.0 dB below bicubic on photographs
        problems.append("the shipped baseline was trained on the embedded dead leaves and on photographs starts 3 dB "
                        "below bicubic, so a fine-tune there is mostly domain adaptation; pass an autoencoder converged "
                        "on your images with --baseline, or make one first with --pretrain --data DIR --baseline FILE "
                        "(the shipped recipe on the folder's training split)")
    if args.pretrain and args.data and not args.baseline:
        problems.append("--pretrain --data writes an autoencoder of your images; name its file with --baseline (the "
                        "shipped files stay the embedded data's)")
    if args.pretrain and args.data and args.baseline and os.path.isfile(args.baseline):
        problems.append(f"--pretrain would overwrite {args.baseline}; name a new file with --baseline")
    for baseline in baselines:
        if not args.pretrain and not os.path.isfile(baseline) and not args.smoke:
            problems.append(f"the baseline autoencoder {baseline} does not exist; make it with python "
                            f"repro/reproduce.py --pretrain, or pass one with --baseline")
    if problems:
        sys.exit(f"error: {problems[0]}." + (f" ({len(problems) - 1} more problem(s).)" if len(problems) > 1 else ''))
    refuse_overlap(args.out_dir, '--out_dir', [(args.data, '--data'), (args.val_data, '--val_data'),
                                               (args.baseline, '--baseline')])
    figures = {'channels': args.channels or args.all, 'kl_sweep': args.kl_sweep or args.all,
               'se_sweep': args.se_sweep or args.all}
    return sizes, figures, objectives


@dataclass(frozen=True)
class Run:
    """One unit of Fig. 1: baseline number `index` (its file and sha256 prefix) fine-tuned with `seed`, once per arm.
    Its artefacts go to seed{s}/ for the first baseline and to baseline{b}/seed{s}/ for each other."""
    index: int
    path: str
    id: str
    seed: int

    @property
    def folder(self):
        return os.path.join(*([f'baseline{self.index}'] if self.index else []), f'seed{self.seed}')


@dataclass(frozen=True)
class Experiment:
    """What every step of one run reads, built by main() from the checked flags and passed to each helper.

    out_dir: where every artefact goes; sizes: the run's SIZES, flags applied; video, num_frames: clips or images;
    arms: the Fig. 1 arms ('control', 'se'[, 'se_st']); device, nproc, jobs: where and how many
    script runs at a time; random_crop, se_down, ft_lr, ldm_model, ldm_preset, ldm_lr, ldm_ema_decay, latent_norm
    (None: train_ldm.py's default): the flags of the same names, passed on to the scripts; f_factors: --f_sweep's
    factors; baseline: for pretrain, the file it writes; runs: the units of Fig. 1 (Run: a baseline and a seed);
    reference_seconds: REFERENCE_SECONDS of this kind of run; data, counts: the materialised data's folders
    and sizes (set once they are made); work: the time left (a Work, set once the plan is known); child_seconds: the
    seconds spent in each script, filled as they run."""
    out_dir: str
    sizes: dict
    video: bool
    num_frames: int
    arms: tuple
    device: str
    nproc: int
    jobs: int
    random_crop: bool
    se_down: str
    ft_lr: float
    ldm_model: str
    ldm_preset: str
    ldm_lr: float
    ldm_ema_decay: float
    f_factors: list
    baseline: str
    reference_seconds: dict
    runs: tuple = ()
    ablations: tuple = ()
    dataset: str = 'textured'
    latent_norm: str = None
    data: dict = None
    counts: dict = None
    work: 'Work' = None
    child_seconds: dict = field(default_factory=dict)

# -----------------------------------------------------------------------------
# running the project's scripts, and remembering what each artefact was made with

# -----------------------------------------------------------------------------
# what a run shows while it runs: every child's messages whole, a live line per running child, the time left

# the seconds one unit of each kind of work took in the default run (2 idle cores, 2 jobs of one thread, 2026-12-01):
# a training step, a held-out image through spectrum.py or the probe, a sample drawn (sample.py's 50 DDIM steps), scored
REFERENCE_SECONDS = {'train_ae.py': 0.36, 'train_ldm.py': 0.12, 'spectrum.py': 36 / 256, 'probe': 54 / 256,
                     'sample.py': 17 / 256, 'eval_fid.py': 8 / 256}
# the same for the video run (--num_frames 17): a step, a clip
VIDEO_REFERENCE_SECONDS = {'train_ae.py': 0.6, 'train_ldm.py': 0.08, 'spectrum.py': 0.5, 'probe': 0.6,
                           'sample.py': 0.3, 'eval_fid.py': 0.05}
TQDM = re.compile(r'(\d+)/(\d+) \[([\d:]+)<([\d:?]+)')   # a tqdm bar's "n/total [elapsed<remaining"


PACE_PRIOR = 120.0  # s: the reference pace counts as this much work already seen, so a few first steps move it little


class Work:
    """The time left of the whole run: the work planned (in REFERENCE_SECONDS), less what is done or reused, at the
    pace this machine has shown on the work it ran, shrunk toward the reference pace while little has run (the first
    steps of a run include start-up and say little of its pace)."""

    def __init__(self, planned, width, reference=REFERENCE_SECONDS):
        self.planned, self.width, self.done, self.ran, self.t0 = planned, width, 0.0, 0.0, time.time()
        self.reference = reference  # REFERENCE_SECONDS, or VIDEO_REFERENCE_SECONDS for a video run
        self.running = {}  # label -> (reference seconds of the child, the share of it done)

    def finish(self, kind, units, ran=True):
        self.done += self.reference[kind] * units
        self.ran += self.reference[kind] * units if ran else 0.0

    def left(self):
        """-> seconds left."""
        partial = sum(ref * share for ref, share in self.running.values())
        ran = self.ran + partial
        pace = (PACE_PRIOR + time.time() - self.t0) / (PACE_PRIOR + ran / self.width)  # wall s per reference s of a job
        return max(0.0, self.planned - self.done - partial) / self.width * pace


def minutes(seconds):
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Display:
    """Children's messages printed whole as they come, each under its child's name, and one status line per running
    child (its stage, its step, and the whole run's time left): redrawn in place below the messages on a terminal,
    else printed every PROGRESS_SECONDS."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lines, self.printed, self.shown = {}, {}, 0
        self.tty = sys.stdout.isatty()

    def _draw(self, messages=()):
        out = '\x1b[F\x1b[2K' * self.shown if self.tty else ''  # erase the status block
        out += ''.join(m + '\n' for m in messages)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            out += ''.join(line[:width] + '\n' for line in self.lines.values())
            self.shown = len(self.lines)
        sys.stdout.write(out)
        sys.stdout.flush()

    def say(self, *messages):
        with self.lock:
            self._draw(messages)

    def status(self, label, text):
        with self.lock:
            self.lines[label] = f"  {label}: {text}"
            if self.tty:
                self._draw()
            elif time.time() - self.printed.get(label, 0) >= PROGRESS_SECONDS:
                self.printed[label] = time.time()
                self._draw([self.lines[label]])

    def remove(self, label):
        with self.lock:
            self.lines.pop(label, None)
            self.printed.pop(label, None)
            self._draw()


display = Display()
say = display.say


def is_message(line):
    """A line a child wrote for its reader: not a progress bar, not a row of its metrics log (also in log.jsonl)."""
    return bool(line.strip()) and not line.startswith(('step ', '$ ')) and not re.search(r'\d+%\|', line)


def run(exp, script, *script_args, log=None, units=None, first_step=0):
    """One script run; its output goes to `log` (a file in the artefact's folder). Its messages are shown whole as they
    come, and a live line shows its progress and the whole run's time left. units: of REFERENCE_SECONDS, if not
    those of run_units; first_step: the step a resumed training run starts from."""
    cmd = [sys.executable]
    if exp.nproc > 1 and script in ('train_ae.py', 'train_ldm.py', 'sample.py'):
        cmd += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(exp.nproc)]
    cmd += [os.path.join(ROOT, script), *map(str, script_args)]
    env = dict(os.environ, **({'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'} if exp.jobs > 1 else {}))
    t0 = time.time()
    log = log or os.devnull
    label = f"{script} {os.path.relpath(os.path.dirname(os.path.abspath(log)), exp.out_dir)}"
    units = run_units(script, script_args, exp.sizes['num_samples']) if units is None else units
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, 'a') as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        start = f.tell()
        with children_lock:
            if stopping:  # a signal came: no script starts after it
                raise SystemExit(1)
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
            children.add(p)
    with open(log, 'rb') as reader:
        reader.seek(start)
        pending = ''
        while True:
            finished = p.poll() is not None
            pending += reader.read().decode(errors='replace')
            *lines, pending = pending.split('\n')
            messages = [m for m in (line.split('\r')[-1].rstrip() for line in lines) if is_message(m)]
            if messages and not stopping:  # once stopped, end_children's line is the last
                say(*[f"  {label}| {m}" for m in messages])
            if finished:
                break
            bar = [part.strip() for part in pending.split('\r') if part.strip()]
            m = TQDM.search(bar[-1]) if bar else None
            # a resumed training run's bar starts at first_step: its share done counts from there
            share = max(0, int(m.group(1)) - first_step) / max(1, int(m.group(2)) - first_step) if m else 0.0
            exp.work.running[label] = (exp.work.reference[script] * units, share)
            progress = f"{m.group(1)}/{m.group(2)}, {m.group(4)} left" if m else f"running for {time.time() - t0:.0f} s"
            display.status(label, f"{progress}; the whole run: about {minutes(exp.work.left())} left")
            time.sleep(1)
    children.discard(p)
    exp.work.running.pop(label, None)
    display.remove(label)
    exp.child_seconds[script] = exp.child_seconds.get(script, 0.0) + time.time() - t0  # where the time went, by script
    if stopping:  # ended by end_children, which says so
        raise SystemExit(1)
    if p.returncode != 0:
        say(''.join(messages_of(log)[-60:]))
        sys.exit(f"error: {script} failed (exit {p.returncode}); its messages are above, and its whole output in {log}. "
                 f"Fix it and rerun: finished steps are reused.")
    exp.work.finish(script, units)
    say(f"  {label} ... done in {time.time() - t0:.0f} s; the whole run: about {minutes(exp.work.left())} left")


children = set()  # the running child processes, each ended with this run (end_children)
children_lock = threading.RLock()  # re-entrant: the signal handler runs in the main thread, which may hold it
stopping = []  # the signal that stops this run, once one came


def end_children(signum, frame):
    """SIGINT or SIGTERM to this run: no script starts after it, every running one gets SIGTERM and ends in one line
    keeping its last checkpoint (which the same command resumes from), and then this run ends, in one line."""
    with children_lock:
        stopping.append(signum)
        running = list(children)
    for p in running:
        if p.poll() is None:
            p.terminate()
    for p in running:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print(f"stopped by {signal.Signals(signum).name}: the {len(running)} running script(s) ended, each keeping its "
          f"last checkpoint; the same command resumes.", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run_units(script, script_args, num_samples):
    """The units of REFERENCE_SECONDS that one run of spectrum.py, sample.py or eval_fid.py does."""
    a = list(map(str, script_args))
    if script == 'spectrum.py':
        return int(a[a.index('--num_images') + 1])
    if script == 'sample.py':
        return int(a[a.index('--num_samples') + 1])
    return num_samples  # eval_fid.py: the samples, or a reference set of the same size


def messages_of(log):
    """A child's output without its progress bars' redraws: every line, whole, and of each redrawn line the last."""
    with open(log, errors='replace') as f:
        return [line.split('\r')[-1].rstrip() + '\n' for line in f if line.split('\r')[-1].strip()]


def parallel(tasks, jobs):
    """Run the callables `tasks` (each runs its own scripts in order), `jobs` at a time; -> their results."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return [f.result() for f in [pool.submit(t) for t in tasks]]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a stop, the tasks not yet begun never begin


def settings_file(out):
    return os.path.join(out, 'reproduce_settings.json')


def recorded(out):
    return json.load(open(settings_file(out))) if os.path.exists(settings_file(out)) else None


def record(out, settings):
    os.makedirs(out, exist_ok=True)
    with open(settings_file(out), 'w') as f:
        json.dump(settings, f, indent=1)


def clear_unless_matching(out, settings):
    """True when `out` was made with exactly `settings`; otherwise empties it, saying why."""
    old = recorded(out)
    if old == settings:
        return True
    if old is not None:
        changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        say(f"remaking {out}: its settings changed ({', '.join(changed[:6])})")
    shutil.rmtree(out, ignore_errors=True)
    return False


def checkpoint_step(path):
    from utils.weights import load_checkpoint
    return load_checkpoint(path)['step'] if os.path.exists(path) else None


def train(exp, script, out, steps, settings, script_args, start=0):
    """Train to `steps` under `settings` (which leave out the step count): reuse a finished run, resume a shorter one
    made with the same settings, remake anything else. start: the step this call's share of the planned work begins
    at (an LDM trains to each snapshot in turn). -> the settings with the steps, for what depends on them."""
    done = checkpoint_step(os.path.join(out, 'ckpt.pt')) if clear_unless_matching(out, settings) else None
    if done is not None and done > steps:
        shutil.rmtree(out)
        done = None
    exp.work.finish(script, max(0, (done or 0) - start), ran=False)  # reused steps count as done
    if done != steps:
        if not done:
            shutil.rmtree(out, ignore_errors=True)  # a run killed before its first checkpoint starts afresh
        record(out, settings)  # before training, so that a killed run resumes
        run(exp, script, '--out_dir', out, '--max_steps', steps, *script_args, *(['--resume'] if done else []),
            log=os.path.join(out, 'stdout.log'), units=steps - max(done or 0, start), first_step=max(done or 0, start))
    return {**settings, 'steps': steps}


def once(exp, out, settings, script, *script_args):
    """Make the artefact folder `out` with one script run, unless it already holds one made with `settings`."""
    if not clear_unless_matching(out, settings):
        os.makedirs(out, exist_ok=True)
        run(exp, script, *script_args, log=os.path.join(out, 'stdout.log'))
        record(out, settings)  # after the run: a killed run leaves no record, so it is remade
    else:
        exp.work.finish(script, run_units(script, script_args, exp.sizes['num_samples']), ran=False)
    return settings

# -----------------------------------------------------------------------------
# the data: training images, and two disjoint held-out sets drawn by one protocol

def held_out_files(names, seed=0):
    """The held-out share of a folder's files: those whose seeded hash ranks among the lowest HELD_OUT of them (at
    least two, and at least one file left to train). Neither file order nor a rerun changes the split, and adding a
    file moves at most one other across it; a threshold on the hash instead holds out a share that varies with the
    draw (2 of Kodak's 24 files, where 6 were asked for)."""
    rank = sorted(names, key=lambda name: hashlib.sha256(f"{seed}/{name}".encode()).digest())
    return set(rank[:min(len(names) - 1, max(2, round(HELD_OUT * len(names))))])


def write_images(x, folder):
    """Images (N, 3, H, W) in [-1, 1] -> folder/000000.png, ... (8-bit, as every evaluation reads them)."""
    from PIL import Image
    from evaluation.metrics import to_uint8
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(to_uint8(x).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(os.path.join(folder, f'{i:06d}.png'))


def draw(dataset, indices):
    """dataset[i][0] for i in indices, stacked: made in worker processes, one a core (the embedded generator is
    deterministic per index, so the images do not depend on the workers; a GPU machine's cores make 20,000 quickly)."""
    import torch
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=32,
                                         num_workers=os.cpu_count() if (os.cpu_count() or 1) > 1 else 0)
    return torch.cat([x for x, *_ in loader])


def materialise_data(exp, source, val_source):
    """out_dir/data/{train, heldout, heldout2}: the images every script reads, made once. The embedded set: training
    images from the training stream, the two held-out sets from the disjoint held-out stream. A --data folder: its
    training files linked into train/ (the training scripts crop and flip them), its held-out files (a seeded hash of
    their names, or --val_data) cut into image_size crops, alternately into the two held-out sets; random crops with
    --random_crop (num_eval per set, cycling through the files), else centre crops. No held-out file is ever in train/.
    -> ({name: folder}, {name: image count})."""
    out = os.path.join(exp.out_dir, 'data')
    if exp.video:
        return materialise_clips(exp, out)
    folders = {k: os.path.join(out, k) for k in ('train', 'heldout', 'heldout2')}
    settings = {'data': source, 'val_data': val_source, 'random_crop': exp.random_crop, 'held_out': [HELD_OUT, 'rank'],
                **({'dataset': exp.dataset} if source is None and exp.dataset != 'textured' else {}),
                'image_size': exp.sizes['image_size'], 'train_images': exp.sizes['train_images'], 'num_eval': exp.sizes['num_eval']}
    if not clear_unless_matching(out, settings):
        import torch
        from utils.data import DeadLeaves, ImageFolder, list_files
        if source is None:
            train_set, held = (DeadLeaves(exp.sizes['image_size'], train=split, style=exp.dataset) for split in (True, False))
            write_images(draw(train_set, range(exp.sizes['train_images'])), folders['train'])
            for k, name in enumerate(('heldout', 'heldout2')):
                n = exp.sizes['num_eval']
                write_images(draw(held, range(k * n, (k + 1) * n)), folders[name])
        else:
            files = list_files(source)[0]
            held = held_out_files([os.path.relpath(f, source) for f in files])
            held_files = list_files(val_source)[0] if val_source else \
                [f for f in files if os.path.relpath(f, source) in held]
            train_files = files if val_source else [f for f in files if f not in set(held_files)]
            refuse_shared_files(train_files, held_files)
            if len(held_files) < 2 or not train_files:
                sys.exit(f"error: {source} splits into {len(train_files)} training and {len(held_files)} held-out "
                         f"files; it needs at least one and two. Add images, or pass --val_data.")
            os.makedirs(folders['train'], exist_ok=True)
            for i, f in enumerate(train_files):  # links: the training scripts read the originals
                os.symlink(os.path.abspath(f), os.path.join(folders['train'], f"{i:06d}{os.path.splitext(f)[1]}"))
            for k, name in enumerate(('heldout', 'heldout2')):
                half = held_files[k::2]  # alternate files: the two sets share no file
                tmp = os.path.join(out, f'.{name}_files')
                os.makedirs(tmp, exist_ok=True)
                for i, f in enumerate(half):
                    os.symlink(os.path.abspath(f), os.path.join(tmp, f"{i:06d}{os.path.splitext(f)[1]}"))
                folder = ImageFolder(tmp, exp.sizes['image_size'], flip=False, random_crop=exp.random_crop)
                items = [(i % len(half), 1000 * k + i) for i in range(exp.sizes['num_eval'])] if exp.random_crop \
                    else range(len(half))  # (index, crop seed): num_eval seeded crops; else one centre crop a file
                write_images(torch.stack([folder.load(item)[0] for item in items]), folders[name])
                shutil.rmtree(tmp)
        record(out, settings)
    from utils.data import list_files
    return folders, {k: len(list_files(v)[0]) for k, v in folders.items()}

def refuse_shared_files(train_files, held_files):
    """No held-out image may also train: a file of --val_data whose bytes equal a file of --data (a copy, under any
    name) is an error. Only files of equal size are hashed."""
    from utils.latent_cache import file_sha256
    by_size = {}
    for f in train_files:
        by_size.setdefault(os.path.getsize(f), []).append(f)
    for f in held_files:
        twins = [g for g in by_size.get(os.path.getsize(f), []) if file_sha256(g) == file_sha256(f)]
        if twins:
            die(f"{f} of --val_data is also a training image ({twins[0]} of --data holds the same bytes); held-out "
                f"images must not train, so remove one of them.")


def materialise_clips(exp, out):
    """Video: out_dir/data/heldout.npz and heldout2.npz, uint8 clips (N, T, H, W, 3) as sample.py writes them, two
    disjoint draws of the embedded held-out stream (clips 0..n-1 and n..2n-1; spectrum.py reads the first n from the
    stream itself). Training runs read the training stream, which shares no clip with it. -> (paths, counts)."""
    n = exp.sizes['num_eval']
    paths = {'train': None, 'heldout': os.path.join(out, 'heldout.npz'), 'heldout2': os.path.join(out, 'heldout2.npz')}
    settings = {'num_frames': exp.num_frames, 'image_size': exp.sizes['image_size'], 'num_eval': n}
    if not clear_unless_matching(out, settings):
        import numpy as np
        import torch
        from utils.data import DeadLeaves
        from evaluation.metrics import to_uint8
        held = DeadLeaves(exp.sizes['image_size'], train=False, num_frames=exp.num_frames)
        os.makedirs(out, exist_ok=True)
        for k, name in enumerate(('heldout', 'heldout2')):
            clips = torch.stack([held[i][0] for i in range(k * n, (k + 1) * n)])  # (n, 3, T, H, W)
            np.savez(paths[name], arr_0=to_uint8(clips).permute(0, 2, 3, 4, 1).numpy())
        record(out, settings)
    return paths, {'train': exp.sizes['train_images'], 'heldout': n, 'heldout2': n}

# -----------------------------------------------------------------------------
# the autoencoders

def pretrain(exp, seed=0):
    """--pretrain: the baseline from scratch with the shipped recipe and --seed `seed`, written as a safetensors file whose metadata
    holds its config, the recipe, the commit that made it, its wall time and its held-out PSNR beside bicubic."""
    from safetensors.torch import save_file
    from utils.weights import load_checkpoint
    kind = kind_of(exp.num_frames)
    out = os.path.join(exp.out_dir, 'pretrain' if seed == 0 else f'pretrain_seed{seed}')
    recipe = seeded(PRETRAIN[kind], seed) + ['--device', exp.device, '--num_workers', 1,
                                             *(training_data(exp) if exp.data else [])]
    settings = train(exp, 'train_ae.py', out, recipe[recipe.index('--max_steps') + 1],
                     {'script': 'train_ae.py', 'args': list(map(str, recipe))}, recipe)
    ckpt = load_checkpoint(os.path.join(out, 'ckpt.pt'))
    log = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    evals = [r for r in log if 'val_psnr' in r]
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = {'config': json.dumps({'preset': ckpt['config']['preset'], 'ae_config': ckpt['config']['ae_config'],
                                  'num_frames': ckpt['config']['num_frames']}),
            'recipe': 'python train_ae.py ' + ' '.join(map(str, seeded(PRETRAIN[kind], seed) + (training_data(exp) if exp.data else []))),
            'commit': commit or 'unknown',
            'steps': str(ckpt['step']), 'train_seconds': f"{train_seconds(out):.0f}",
            'hardware': hardware(exp.device, exp.nproc),
            'val_psnr': f"{evals[-1]['val_psnr']:.3f}", 'val_psnr_bicubic': f"{evals[-1]['val_psnr_bicubic']:.3f}"}
    path = exp.baseline
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in ckpt['model'].items()}, path, metadata=meta)
    say(f"wrote {path}: {meta['steps']} steps in {float(meta['train_seconds']) / 60:.1f} min, held-out PSNR "
        f"{meta['val_psnr']} dB (bicubic at the latent grid {meta['val_psnr_bicubic']} dB)")
    return settings


def seeded(recipe, seed):
    """A recipe (a flag list holding --seed) with its seed replaced."""
    i = recipe.index('--seed') + 1
    return recipe[:i] + [seed] + recipe[i + 1:]


def train_seconds(out_dir):
    """Seconds spent in training steps, from the run's log (step_time is averaged over each log interval)."""
    rows = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl')) if '"step_time"' in line]
    total, last = 0.0, 0
    for r in rows:
        if r['step'] > last:
            total, last = total + r['step_time'] * (r['step'] - last), r['step']
    return total


def training_data(exp):
    """The data flags of every training run: the training images, or for video the embedded clips' training stream."""
    if exp.video:
        return ['--num_frames', exp.num_frames]
    return ['--data', exp.data['train'], *(['--random_crop'] if exp.random_crop else [])]


def finetune(exp, run, name, se_weight=0.0, steps=None, temporal=False, extra=()):
    """The run's baseline fine-tuned with its seed and se_weight (0: a control) for `steps`, on the training images;
    temporal: SE also halves time (video); extra: more train_ae.py flags (an ablation's). -> (name, folder, settings)."""
    out = os.path.join(exp.out_dir, run.folder, f'ae_{name}')
    script_args = ['--init_from', run.path, *training_data(exp), '--image_size', exp.sizes['image_size'],
                   *(['--se_temporal'] if temporal else []), '--seed', run.seed, '--device', exp.device,
                   '--batch_size', exp.sizes['ft_batch_size'], '--lr', exp.ft_lr, '--kl_weight', 1e-6,
                   '--se_weight', se_weight, '--se_down', exp.se_down, '--lpips_weight', 0, '--disc_weight', 0,
                   '--num_workers', 1, *extra]
    steps = steps or exp.sizes['ft_steps']
    settings = train(exp, 'train_ae.py', out, steps, {'script': 'train_ae.py', 'args': list(map(str, script_args)),
                                                      'baseline': run.id},
                     [*script_args, '--eval_interval', steps, '--ckpt_interval', steps])
    return name, out, settings


def scratch(exp, name, steps, z_channels=8, kl_weight=1e-6):
    """Fig. 2 and 3: an autoencoder of the baseline's family and recipe but for z_channels or kl_weight, from scratch
    (z8 at KL 1e-6 is the same run in both, made once)."""
    out = os.path.join(exp.out_dir, 'seed0', f'ae_{name}')
    recipe = [a for a in PRETRAIN['image']]
    recipe[recipe.index('--max_steps'):recipe.index('--max_steps') + 2] = []
    recipe[recipe.index('--kl_weight') + 1] = kl_weight
    script_args = [*recipe, '--z_channels', z_channels, '--data', exp.data['train'], '--device', exp.device,
                   '--num_workers', 1, '--image_size', exp.sizes['image_size']]
    settings = train(exp, 'train_ae.py', out, steps, {'script': 'train_ae.py', 'args': list(map(str, script_args))},
                     [*script_args, '--eval_interval', steps, '--ckpt_interval', steps])
    return name, out, settings


def measure(exp, ae, ckpt=None):
    """spectrum.py on the held-out images: both HF shares of posterior means and samples, RGB beside them, PSNR
    beside bicubic, erasure in matching tiles. ae: (name, folder, settings); the weights are folder/ckpt.pt or ckpt."""
    name, out, settings = ae
    spec = os.path.join(out, 'spectrum')
    # video: the held-out stream
    held = ['--num_frames', exp.num_frames] if exp.video else ['--data', exp.data['heldout']]
    spectrum_args = ['--ckpt', ckpt or os.path.join(out, 'ckpt.pt'), '--label', name, *held,
                     '--image_size', exp.sizes['image_size'], '--num_images', exp.counts['heldout'], '--seed', 0,
                     '--device', exp.device, '--out_dir', spec]
    once(exp, spec, {'script': 'spectrum.py', 'args': list(map(str, spectrum_args)), 'ae': settings},
         'spectrum.py', *spectrum_args)
    if exp.video:  # spatial spectra over every latent frame, and the temporal measures
        rows = json.load(open(os.path.join(spec, 'spectrum_video.json')))['video']
        r = rows[name]
        rgb = rows[r['rgb_reference']]
    else:
        result = json.load(open(os.path.join(spec, 'spectrum.json')))
        r = result['autoencoders'][name]
        rgb = result['rgb'][r['rgb_reference']]
    sample = r.get('posterior_sample', r)
    say(f"  {name} ({os.path.relpath(out, exp.out_dir)}): hf_share {r['hf_share']:.4f} (RGB {rgb['hf_share']:.4f}), "
        f"hf_energy_share {r['hf_energy_share']:.4f}, PSNR {r['reconstruction_psnr']:.2f} dB (bicubic at the latent "
        f"grid {r['bicubic_psnr']:.2f})")
    m = {'hf_share': r['hf_share'], 'hf_share_sample': sample['hf_share'], 'hf_energy_share': r['hf_energy_share'],
         'hf_energy_share_sample': sample['hf_energy_share'], 'rgb_hf_share': rgb['hf_share'],
         'rgb_hf_energy_share': rgb['hf_energy_share'], 'psnr': r['reconstruction_psnr'],
         'bicubic_psnr': r['bicubic_psnr'], 'profile': r['mean'], 'profile_sample': sample['mean'],
         'rgb_profile': rgb['mean'],
         'ae_train_seconds': train_seconds(out) if os.path.exists(os.path.join(out, 'log.jsonl')) else 0.0}
    if exp.video:
        m.update({k: r[k] for k in ('temporal_hf_ratio', 'temporal_hf_energy_share')},
                 **{f'rgb_{k}': rgb[k] for k in ('temporal_hf_ratio', 'temporal_hf_energy_share')})
    else:
        m.update(erasure_psnr=r['erasure_psnr'], rgb_erasure_psnr=r['rgb_erasure_psnr'])
    return m

# -----------------------------------------------------------------------------
# the LDM on one autoencoder's latents: training, the probe, samples

def ldm(exp, run, ae, objective):
    """Train the LDM of one arm and run (with the run's seed), stopping at ldm_evals evenly spaced steps to keep a snapshot of each. ->
    (folder, [(step, snapshot path, settings)])."""
    name, ae_dir, ae_settings = ae
    other = exp.latent_norm not in (None, 'channel' if exp.video else 'scalar')  # not train_ldm.py's default: only that
    norm = ['--latent_norm', exp.latent_norm] if other else []  # gets the flag and a folder, so default runs reuse theirs
    out = os.path.join(exp.out_dir, run.folder, f'ldm_{objective}_{name}' + (f'_{exp.latent_norm}' if other else ''))
    script_args = ['--seed', run.seed, '--image_size', exp.sizes['image_size'], '--device', exp.device, *training_data(exp),
                   '--ae', os.path.join(ae_dir, 'ckpt.pt'),
                   '--model', exp.ldm_model, '--preset', exp.ldm_preset, '--lr', exp.ldm_lr,
                   '--batch_size', exp.sizes['ldm_batch_size'], '--num_workers', 0, '--ema_decay', exp.ldm_ema_decay,
                   '--ema_warmup', *(['--objective', objective] if objective != 'eps' else []),
                   *norm,
                   '--cache_latents', os.path.join(out, 'latent_cache'),
                   '--cache_size', exp.sizes['train_images'] if exp.random_crop or exp.video else exp.counts['train']]  # crops, or each file
    settings = {'script': 'train_ldm.py', 'args': list(map(str, script_args)), 'ae': ae_settings}
    snapshots, previous = [], 0
    for k in range(1, exp.sizes['ldm_evals'] + 1):
        step = round(exp.sizes['ldm_steps'] * k / exp.sizes['ldm_evals'])
        snapshot = os.path.join(out, f'ckpt_{step:07d}.pt')
        if not (recorded(out) == settings and os.path.exists(snapshot)):
            train(exp, 'train_ldm.py', out, step, settings, [*script_args, '--eval_interval', exp.sizes['ldm_steps'],
                                                              '--ckpt_interval', step, '--num_samples', 4,
                                                              '--sample_steps', exp.sizes['sample_steps']],
                  start=previous)
            shutil.copyfile(os.path.join(out, 'ckpt.pt'), snapshot)
        else:
            exp.work.finish('train_ldm.py', step - previous, ran=False)
        snapshots.append((step, snapshot, {**settings, 'steps': step}))
        previous = step
    return out, snapshots


def samples(exp, seed, out, snapshot, settings):
    """sample.py (DDIM, the seed's noise) and eval_fid.py against the held-out images. -> (metrics, grid path)."""
    folder = os.path.join(out, 'samples')
    sample_args = ['--ckpt', snapshot, '--num_samples', exp.sizes['num_samples'], '--seed', seed,
                   '--device', exp.device, '--out_dir', folder, '--overwrite']
    sample_settings = once(exp, folder, {'script': 'sample.py', 'args': list(map(str, sample_args)), 'ldm': settings},
                           'sample.py', *sample_args)
    return score(exp, os.path.join(out, 'scores'), os.path.join(folder, 'samples.npz'), {'samples': sample_settings}), \
        os.path.join(folder, 'grid_frames.png' if exp.video else 'grid.png')


def score(exp, folder, fake, settings):
    """eval_fid.py on a samples .npz against the held-out images, and for images the recognisability measure
    (metrics.region_stats: near-uniform connected regions, counted alike on samples, held-out images and
    reconstructions). -> the numbers and what was skipped."""
    gen_args = ['--fake', fake, '--real', exp.data['heldout'], '--seed', 0, '--device', exp.device, '--overwrite',
                '--num_workers', 0, '--out', os.path.join(folder, 'metrics.json')]
    once(exp, folder, {'script': 'eval_fid.py', 'args': list(map(str, gen_args)), **settings}, 'eval_fid.py', *gen_args)
    metrics = json.load(open(os.path.join(folder, 'metrics.json')))
    if not exp.video:
        import numpy as np
        import torch
        from evaluation.metrics import region_stats
        with np.load(fake) as f:
            images = torch.from_numpy(f['arr_0']).permute(0, 3, 1, 2).float() / 127.5 - 1
        metrics.update(region_stats(images))
    return {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, 'skipped': metrics.get('skipped', {})}


def probe(exp, snapshot, objective):
    """The diffusability probe of one LDM snapshot (its EMA weights) on the held-out images, in-process: each image's
    latent (posterior mean, normalised as the LDM's training data) is noised to every level of PROBE_T with the same
    fixed noise for every arm, and the LDM's eps-MSE and the pixel MSE of its decoded x0 prediction are averaged over
    images. Also the guard: the per-channel std of 64 DDIM sample latents over that of the data latents. Cached as
    probe.json beside the snapshot."""
    cache = snapshot.replace('.pt', '_probe.json')
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(snapshot):
        cached = json.load(open(cache))
        if 'eps_mse_per_image' in cached:  # a probe of before the per-image numbers and the oracle runs again
            exp.work.finish('probe', exp.counts['heldout'], ran=False)
            return cached
    from utils.common import select_device
    from repro.probe import PROBE_T, PROBE_T_FLOW, diffusability_probe
    t0 = time.time()
    result = diffusability_probe(snapshot, exp.data['heldout'], PROBE_T_FLOW if objective == 'flow' else PROBE_T,
                                 device=select_device(exp.device), decoded=PROBE_DECODED_CLIPS if exp.video else None)
    exp.child_seconds['probe'] = exp.child_seconds.get('probe', 0.0) + time.time() - t0
    exp.work.finish('probe', exp.counts['heldout'])
    say(f"  probe {os.path.relpath(snapshot, exp.out_dir)} ... done in {time.time() - t0:.0f} s; the whole run: about "
        f"{minutes(exp.work.left())} left")
    with open(cache, 'w') as f:
        json.dump(result, f)
    return result


NOISE_SIGMAS = [0.0] + [round(0.01 * 10 ** (k / 10), 5) for k in range(31)]  # the RGB + noise curve: 0, 0.01 .. 10


def rgb_noise(exp, aes, baseline):
    """The RGB + noise reference: the held-out images on the latent grid with Gaussian noise of each NOISE_SIGMAS
    (relative to each channel's std), their hf_share, and the noise level at which RGB is as high-frequency as each
    arm's latents (posterior means), per run. aes: {arm: [measure() per run]}."""
    from evaluation.metrics import rgb_on_latent_grid
    from repro.probe import held_out
    from utils.spectral import equivalent_sigma, noised_hf_share
    from utils.weights import load_autoencoder
    f = load_autoencoder(baseline).downsample_factor
    x = held_out(exp.data['heldout'], exp.sizes['image_size'])
    shares = noised_hf_share(rgb_on_latent_grid(x, (x.shape[-2] // f, x.shape[-1] // f)), NOISE_SIGMAS)
    return {'sigmas': NOISE_SIGMAS, 'hf_share': shares,
            'equivalent_sigma': {arm: [equivalent_sigma(NOISE_SIGMAS, shares, m['hf_share']) for m in ms]
                                 for arm, ms in aes.items()}}


def references(exp, aes):
    """The trivial references beside the samples' scores, by the same eval_fid.py call: the second held-out set (what
    a perfect generator gets) and each AE's reconstructions of it (what a perfect LDM on its latents gets)."""
    import numpy as np
    import torch
    from utils.common import save_image_grid, save_video_grid
    from evaluation.metrics import to_uint8
    from repro.probe import held_out
    from utils.weights import load_autoencoder
    x = held_out(exp.data['heldout2'], exp.sizes['image_size'])  # (N, 3, [T,] H, W)
    out = {}
    for name, ae in [('real', None)] + list(aes.items()):
        folder = os.path.join(exp.out_dir, 'references', name)
        npz = os.path.join(folder, 'samples.npz')
        settings = {'what': name, 'data': exp.counts, 'ae': None if ae is None else ae[2]}
        if recorded(folder) != settings:
            os.makedirs(folder, exist_ok=True)
            rec = x
            if ae is not None:
                with torch.no_grad():
                    model = load_autoencoder(os.path.join(ae[1], 'ckpt.pt'))
                    rec = torch.cat([model.decode(model.encode(b, sample=False)[0]) for b in x.split(16 if exp.video else 64)])
            uint8 = to_uint8(rec.clamp(-1, 1))
            np.savez(npz, arr_0=(uint8.permute(0, 2, 3, 4, 1) if exp.video else uint8.permute(0, 2, 3, 1)).numpy())
            if exp.video:  # grid.mp4, grid.gif and grid_frames.png, as sample.py writes them
                save_video_grid(uint8.permute(0, 2, 3, 4, 1).numpy(), folder)
            else:
                save_image_grid(rec[:64].clamp(-1, 1), os.path.join(folder, 'grid.png'), nrow=8)
            record(folder, settings)
        out[name] = {k: v for k, v in score(exp, os.path.join(folder, 'scores'), npz, {'samples': settings}).items()
                     if k != 'skipped'}
    return out


def erasure_strip(exp, aes):
    """Fig. 5's strip: 4 held-out images, each shown with 0, 25, 50 and 75% of its coefficients erased; one labelled row
    for RGB (erased in 8f x 8f tiles), then one for each AE (its latent erased in 8x8 tiles, decoded)."""
    import torch
    import torch.nn.functional as F
    from utils.common import save_image_grid
    from utils.data import ImageFolder
    from model import cut_dct_high_frequencies
    from utils.weights import load_autoencoder
    held = ImageFolder(exp.data['heldout'], exp.sizes['image_size'], flip=False)
    x = torch.stack([held.load(i)[0] for i in range(min(4, len(held)))])
    fractions = [0.0, 0.25, 0.5, 0.75]
    models = {arm: load_autoencoder(os.path.join(out, 'ckpt.pt')) for arm, (_, out, _) in aes.items()}
    f = next(iter(models.values())).downsample_factor
    per_image = lambda erase: torch.stack([erase(p) for p in fractions], 1).flatten(0, 1)  # (N*4, 3, H, W)  # noqa: E731
    rows, labels = [per_image(lambda p: cut_dct_high_frequencies(x, 8 * f, p))], [f'RGB, {8 * f}px tiles']
    with torch.no_grad():
        for arm, ae in models.items():
            z, _ = ae.encode(x, sample=False)
            rows.append(per_image(lambda p: ae.decode(cut_dct_high_frequencies(z, 8, p))))
            labels.append(f'{arm}, latent 8px tiles')
    grid = torch.cat(rows).clamp(-1, 1)
    grid = F.interpolate(grid, scale_factor=max(1, 96 // grid.shape[-1]), mode='nearest')  # legible at small sizes
    labels[0] += ' (each image: 0/25/50/75% erased)'
    save_image_grid(grid, os.path.join(exp.out_dir, 'fig5_strip.png'), nrow=len(x) * len(fractions), row_labels=labels)

# -----------------------------------------------------------------------------
# --f_sweep: LDM's downsampling-factor ablation (Rombach et al., Sec. 4.1, Fig. 6 and 7) in miniature

def f_sweep_check(exp, smoke):
    """The rules of --f_sweep, before anything runs. -> its sizes."""
    problems = [f"--f_factors {f} has no autoencoder; choose from {','.join(map(str, F_FACTORS))}"
                for f in exp.f_factors if f not in F_FACTORS]
    if exp.video:
        problems.append("--f_sweep is an image experiment; drop --num_frames")
    if not exp.f_factors:
        problems.append("--f_factors needs at least one factor")
    elif exp.sizes['image_size'] % (2 * max(exp.f_factors)):  # the DiT's 2x2 patches of the smallest latent
        problems.append(f"--f_sweep needs --image_size divisible by 2 x {max(exp.f_factors)} (the tiny DiT's patches "
                        f"on the f{max(exp.f_factors)} latent), got {exp.sizes['image_size']}")
    if problems:
        sys.exit(f"error: {problems[0]}.")
    return F_SWEEP_SIZES['smoke' if smoke else 'default']


def f_sweep_planned(exp, fs):
    """The REFERENCE_SECONDS of the sweep, for the time-left display (an f1 LDM step costs about 10 of f4's)."""
    t, images, n = exp.reference_seconds, exp.counts['heldout'], exp.sizes['num_samples']
    per_f = images * t['probe'] + n * (t['sample.py'] + t['eval_fid.py'])
    aes = sum(f > 1 for f in exp.f_factors) * (fs['ae_steps'] * t['train_ae.py'] + n * t['eval_fid.py'])
    return aes + len(exp.f_factors) * (fs['ldm_steps'] * t['train_ldm.py'] * fs['ldm_batch_size'] / 64 + per_f)


def f_autoencoder(exp, f, steps):
    """The sweep's autoencoder of factor f: model.py's mini-f{f} from scratch with the shipped baseline's recipe (L1 +
    KL 1e-6, Adam 1e-3 after 100 warm-up steps, batch 8) for `steps`. -> (name, folder, settings)."""
    out = os.path.join(exp.out_dir, 'f_sweep', f'ae_f{f}')
    recipe = [a for a in PRETRAIN['image']]
    recipe[recipe.index('--max_steps'):recipe.index('--max_steps') + 2] = []
    recipe[recipe.index('--preset') + 1] = f'mini-f{f}'
    script_args = [*recipe, '--data', exp.data['train'], '--device', exp.device, '--num_workers', 1,
                   '--image_size', exp.sizes['image_size']]
    settings = train(exp, 'train_ae.py', out, steps, {'script': 'train_ae.py', 'args': list(map(str, script_args))},
                     [*script_args, '--eval_interval', steps, '--ckpt_interval', steps])
    return f'f{f}', out, settings


def f_ldm(exp, ae_path, ae_settings, out, fs):
    """The sweep's LDM on one first stage (ae_path, or 'none' for pixels): the same tiny DiT recipe as Fig. 1's, for
    the sweep's steps and batch. -> (its last checkpoint, settings)."""
    script_args = ['--seed', 0, '--image_size', exp.sizes['image_size'], '--device', exp.device, *training_data(exp),
                   '--ae', ae_path, '--model', 'dit', '--preset', 'tiny', '--lr', exp.ldm_lr,
                   '--batch_size', fs['ldm_batch_size'], '--num_workers', 0, '--ema_decay', exp.ldm_ema_decay,
                   '--ema_warmup', '--cache_latents', os.path.join(out, 'latent_cache'),
                   '--cache_size', exp.sizes['train_images'] if exp.random_crop else exp.counts['train']]
    settings = train(exp, 'train_ldm.py', out, fs['ldm_steps'],
                     {'script': 'train_ldm.py', 'args': list(map(str, script_args)), 'ae': ae_settings},
                     [*script_args, '--eval_interval', fs['ldm_steps'], '--ckpt_interval', fs['ldm_steps'],
                      '--num_samples', 4, '--sample_steps', exp.sizes['sample_steps']])
    return os.path.join(out, 'ckpt.pt'), settings


def f_reconstruction(exp, ae_path, f):
    """PSNR of the first stage's reconstructions (posterior means) of the held-out images, and of bicubic at its latent
    grid (metrics.bicubic_at_latent_grid, the trivial reference train_ae.py and spectrum.py measure)."""
    import torch
    from evaluation.metrics import bicubic_at_latent_grid, psnr
    from repro.probe import held_out
    from utils.weights import load_autoencoder
    x = held_out(exp.data['heldout'], exp.sizes['image_size'])  # (N, 3, H, W)
    ae = load_autoencoder(ae_path)
    with torch.no_grad():
        rec = torch.cat([ae.decode(ae.encode(b, sample=False)[0]) for b in x.split(64)]).clamp(-1, 1)
    return psnr(rec, x).mean().item(), psnr(bicubic_at_latent_grid(x, f), x).mean().item()


def f_sampling_throughput(snapshot, batch=16, steps=50):
    """Images a second that the LDM draws: DDIM with sample.py's default 50 steps on one batch of 16, decoding included,
    timed in this process (one thread, beside the other job)."""
    import torch
    from model import decode_first_stage
    from repro.probe import load_ldm
    model, process, config, shift, scale, ae = load_ldm(snapshot)
    backbone = config['backbone']
    x_T = torch.randn(batch, backbone['in_channels'], backbone['latent_size'], backbone['latent_size'],
                      generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    with torch.no_grad():
        z = process.ddim_sample(lambda x, t: model(x, t, None), x_T, steps=steps)
        decode_first_stage(ae, z / scale + shift)
    return batch / (time.time() - t0)


def f_arm(exp, f, fs):
    """One factor: its autoencoder (none for f1) and reconstruction PSNR, its LDM, the probe, samples and scores, and
    the LDM's training and sampling throughput. -> (numbers, the autoencoder for references())."""
    if f == 1:
        ae, ae_path = None, 'none'
        ae_settings = {'first_stage': 'pixels'}
    else:
        ae = f_autoencoder(exp, f, fs['ae_steps'])
        ae_path, ae_settings = os.path.join(ae[1], 'ckpt.pt'), ae[2]
    out = os.path.join(exp.out_dir, 'f_sweep', f'ldm_f{f}')
    snapshot, settings = f_ldm(exp, ae_path, ae_settings, out, fs)
    psnr_ae, psnr_bicubic = f_reconstruction(exp, ae_path, f)
    probed = probe(exp, snapshot, 'eps')
    metrics, grid = samples(exp, 0, out, snapshot, settings)
    h = exp.sizes['image_size'] // f
    channels = 3 if f == 1 else json.load(open(os.path.join(ae[1], 'config.json')))['ae_config']['z_channels']
    return {'f': f, 'latent_shape': [channels, h, h],
            'compression': 3 * exp.sizes['image_size'] ** 2 / (channels * h * h),
            'psnr': psnr_ae, 'bicubic_psnr': psnr_bicubic,
            'ae_train_seconds': train_seconds(ae[1]) if ae else 0.0,
            'probe': probed, 'samples': metrics, 'grid': os.path.relpath(grid, exp.out_dir),
            'train_images_per_second': fs['ldm_steps'] * fs['ldm_batch_size'] / train_seconds(out),
            'sample_images_per_second': f_sampling_throughput(snapshot)}, ae


def f_sweep(exp, fs, t0, config):
    """--f_sweep: for each factor of --f_factors, f_arm; the references (a second held-out draw, each autoencoder's
    reconstructions of it); f_sweep.json and, by report.py, f_sweep.md and its figure."""
    import torch
    say(f"reproduce.py --f_sweep: LDM's downsampling factors {', '.join(f'f{f}' for f in exp.f_factors)} on the "
        f"embedded data at {exp.sizes['image_size']} px; everything goes to {os.path.join(exp.out_dir, 'f_sweep')}; "
        f"about {minutes(exp.work.left())} at the pace of 2 idle CPU cores")
    order = sorted(exp.f_factors)  # f1 first: its LDM is the longest job
    arms = parallel([lambda f=f: f_arm(exp, f, fs) for f in order], exp.jobs)
    refs = references(exp, {f"f{r['f']}": ae for r, ae in arms if ae is not None})
    result = {'config': {**config, 'sizes': exp.sizes, 'f_sweep': fs}, 'data': exp.counts,
              'hardware': hardware(exp.device, exp.nproc),
              'torch': torch.__version__, 'jobs': exp.jobs, 'factors': [r for r, _ in arms], 'references': refs,
              'references_grid': os.path.join('references', 'real', 'grid.png'), 'wall_seconds': time.time() - t0,
              'child_seconds': exp.child_seconds}
    with open(os.path.join(exp.out_dir, 'f_sweep.json'), 'w') as f:
        json.dump(result, f, indent=1)
    from repro.report import write_f_sweep_report
    say(write_f_sweep_report(exp.out_dir))
    say(f"\nwrote {os.path.join(exp.out_dir, 'f_sweep.json')} and f_sweep.md (--f_sweep --replot re-writes it "
        f"from the numbers)")

# -----------------------------------------------------------------------------
# the experiment

def planned_work(exp, figures, objectives):
    """The REFERENCE_SECONDS of everything this run does; what a rerun reuses counts as done when it is reached."""
    t, n = exp.reference_seconds, len(exp.arms) * len(exp.runs)
    images, samples = exp.counts['heldout'], exp.sizes['num_samples']
    finetune = exp.sizes['ft_steps'] * t['train_ae.py'] + images * t['spectrum.py']
    per_ldm = (exp.sizes['ldm_steps'] * t['train_ldm.py'] + exp.sizes['ldm_evals'] * images * t['probe'] +
               samples * t['sample.py'] + samples * t['eval_fid.py'])
    total = (n * finetune + len(exp.runs) * images * t['spectrum.py'] + len(objectives) * n * per_ldm +
             bool(objectives) * (1 + len(exp.arms)) * samples * t['eval_fid.py'])
    from_scratch = exp.sizes['sweep_steps'] * t['train_ae.py'] + images * t['spectrum.py']
    total += (figures['channels'] * len(Z_CHANNELS) + figures['kl_sweep'] * len(KL_WEIGHTS)) * from_scratch
    total += figures['se_sweep'] * len(SE_WEIGHTS) * finetune
    total += sum(ABLATIONS[a][1] * (1 + (ABLATIONS[a][2] != 'control')) for a in exp.ablations) * len(exp.runs) * finetune
    return total


def hardware(device, nproc):
    import torch
    if torch.cuda.is_available() and device != 'cpu':
        return f"{nproc}x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def fig1_arm(exp, run, ae, objective):
    """One arm of one run: its LDM, the probe at every snapshot, the samples of the last. -> numbers."""
    out, snapshots = ldm(exp, run, ae, objective)
    curve = [{'step': step, **probe(exp, path, objective)} for step, path, _ in snapshots]
    metrics, grid = samples(exp, run.seed, out, *snapshots[-1][1:])
    return {'probe': curve, 'samples': metrics, 'grid': os.path.relpath(grid, exp.out_dir),
            'ldm_train_seconds': train_seconds(out)}


def main(argv=None):
    """The run the command line asks for; argv: its flags (default sys.argv[1:])."""
    args = parser.parse_args(argv)
    if args.replot and args.f_sweep:  # f_sweep.md and its figure from f_sweep.json
        from repro.report import write_f_sweep_report
        if not os.path.isfile(os.path.join(args.out_dir, 'f_sweep.json')):
            parser.exit(2, f"error: {args.out_dir} holds no f_sweep.json; pass the --out_dir of a --f_sweep run.\n")
        say(write_f_sweep_report(args.out_dir))
        return
    if args.replot:  # the report from the numbers alone, without re-running anything
        from repro.report import write_report
        if not os.path.isfile(os.path.join(args.out_dir, 'report.json')):
            parser.exit(2, f"error: {args.out_dir} holds no report.json; pass the --out_dir of a reproduce.py run.\n")
        say(write_report(args.out_dir))
        return
    sizes, figures, objectives = check_args(args)
    objectives = [] if args.skip_ldm else objectives  # --skip_ldm: the autoencoders and their spectra alone
    video = args.num_frames > 1
    import torch  # after the checks, so that a mistake is told in a second
    jobs = args.jobs or (1 if args.nproc > 1 or (args.device != 'cpu' and torch.cuda.is_available()) else 2)
    if jobs > 1:
        torch.set_num_threads(1)  # the probe runs in this process beside the children: one thread each, as they have
    lock_folder(args.out_dir, '--out_dir')  # one run per folder, for the whole run; each child locks its own below
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, end_children)
    t0 = time.time()
    exp = Experiment(out_dir=args.out_dir, sizes=sizes, video=video, num_frames=args.num_frames,
                     arms=('control', 'se', 'se_st') if video else ('control', 'se'),  # se_st: SE in space and time
                     device=args.device, nproc=args.nproc, jobs=jobs, random_crop=args.random_crop,
                     se_down=args.se_down, ft_lr=args.ft_lr, ldm_model=args.ldm_model, ldm_preset=args.ldm_preset,
                     ldm_lr=args.ldm_lr, ldm_ema_decay=args.ldm_ema_decay, latent_norm=args.latent_norm,
                     f_factors=args.f_factors, dataset=args.dataset, ablations=tuple(ablations_of(args.ablations)),
                     baseline=args.baseline or baseline_file(kind_of(args.num_frames), args.pretrain_seed),
                     reference_seconds={**REFERENCE_SECONDS, **(VIDEO_REFERENCE_SECONDS if video else {})})
    if args.pretrain:
        recipe = PRETRAIN[kind_of(args.num_frames)]
        exp = replace(exp, work=Work(recipe[recipe.index('--max_steps') + 1] * exp.reference_seconds['train_ae.py'], 1,
                                     exp.reference_seconds))
        say(f"reproduce.py --pretrain: the {kind_of(args.num_frames)} baseline autoencoder from scratch, about "
            f"{minutes(exp.work.left())} at the pace of 2 idle CPU cores; the run goes to "
            f"{os.path.join(args.out_dir, 'pretrain' if args.pretrain_seed == 0 else f'pretrain_seed{args.pretrain_seed}')}")
        if args.data:  # the recipe on the folder's training split (its held-out files are split off first)
            data, counts = materialise_data(exp, args.data, args.val_data)
            exp = replace(exp, data=data, counts=counts)
        pretrain(exp, args.pretrain_seed)
        return
    if args.f_sweep:  # LDM's f ablation, on its own
        fs = f_sweep_check(exp, args.smoke)
        data, counts = materialise_data(exp, args.data, args.val_data)
        exp = replace(exp, data=data, counts=counts)
        exp = replace(exp, work=Work(f_sweep_planned(exp, fs), jobs, exp.reference_seconds))
        f_sweep(exp, fs, t0, vars(args))
        return
    baselines = baselines_of(args.baseline, args.baselines, args.num_frames, args.smoke)
    say(f"reproduce.py: {len(baselines)} baseline(s) x {args.seeds} seed(s) x ({', '.join(exp.arms)}), LDM objective "
        f"{args.objective}, "
        f"{'embedded moving dead leaves, ' + str(args.num_frames) + ' frames' if video else f'embedded dead leaves ({args.dataset})' if args.data is None else args.data}"
        f"; everything goes to {args.out_dir}. Making the data ...")
    data, counts = materialise_data(exp, args.data, args.val_data)
    exp = replace(exp, data=data, counts=counts, runs=tuple(Run(b, path, None, s) for b, path in enumerate(baselines)
                                                            for s in range(args.seeds)))
    exp = replace(exp, work=Work(planned_work(exp, figures, objectives), jobs, exp.reference_seconds))
    say(f"the data: {counts['train']} training {'clips cached per LDM' if video else 'images'} and {counts['heldout']} "
        f"+ {counts['heldout2']} held-out {'clips' if video else 'images'} in {os.path.join(args.out_dir, 'data')}. The "
        f"whole run: about {minutes(exp.work.left())} at the pace of the default run on 2 idle CPU cores (the estimate "
        f"follows this machine's pace as it runs)")
    for b, path in enumerate(baselines):
        if args.smoke and not os.path.isfile(path):  # the smoke run's stand-in: a 2-step autoencoder of the same family
            baselines[b] = os.path.join(args.out_dir, f'smoke_baseline{b}', 'ckpt.pt')
            train(exp, 'train_ae.py', os.path.dirname(baselines[b]), 2, {'smoke': 'baseline', 'seed': b,
                                                                          'num_frames': args.num_frames},
                  ['--preset', 'mini', '--image_size', sizes['image_size'], '--batch_size', 2, '--lpips_weight', 0,
                   '--disc_weight', 0, '--seed', b, '--device', args.device, '--num_workers', 0, *training_data(exp)])
    ids = [hashlib.sha256(open(path, 'rb').read()).hexdigest()[:16] for path in baselines]
    exp = replace(exp, runs=tuple(Run(b, path, i, s) for b, (path, i) in enumerate(zip(baselines, ids))
                                  for s in range(args.seeds)))
    report = {'config': {**vars(args), 'sizes': sizes, 'baseline': baselines[0], 'baseline_sha256': ids[0],
                         'baselines': [{'file': path, 'sha256': i} for path, i in zip(baselines, ids)]},
              'runs': [{'baseline': run.id, 'seed': run.seed} for run in exp.runs],  # the units of report.py's tests
              'latent_norm': args.latent_norm, 'data': counts, 'hardware': hardware(args.device, args.nproc),
              'torch': torch.__version__, 'jobs': jobs}

    # Fig. 1: per run (a baseline and a seed), the SE fine-tune(s) and the control; each baseline measured beside them
    arms, runs = exp.arms, exp.runs
    aes = parallel([lambda run=run, arm=arm: finetune(exp, run, arm, args.se_weight if arm != 'control' else 0.0,
                                                      temporal=arm == 'se_st')
                    for run in runs for arm in arms], jobs)
    aes = {arm: [ae for ae in aes if ae[0] == arm] for arm in arms}
    measured = parallel([lambda ae=ae: measure(exp, ae) for arm in arms for ae in aes[arm]] +
                        [lambda b=b: measure(exp, ('baseline', os.path.join(args.out_dir, f'baseline{b or ""}'),
                                                   {'file': ids[b]}), baselines[b]) for b in range(len(baselines))],
                        jobs)
    report['autoencoders'] = {arm: measured[i * len(runs):(i + 1) * len(runs)] for i, arm in enumerate(arms)}
    report['baselines'] = measured[len(arms) * len(runs):]  # before fine-tuning, one per baseline
    report['baseline'] = report['baselines'][0]
    if not video:
        report['rgb_noise'] = rgb_noise(exp, {**report['autoencoders'], 'baseline': report['baselines']}, baselines[0])
    report['ldm'] = {}
    for objective in objectives:
        made = parallel([lambda run=run, i=i, arm=arm: fig1_arm(exp, run, aes[arm][i], objective)
                         for i, run in enumerate(runs) for arm in arms], jobs)
        report['ldm'][objective] = {arm: made[k::len(arms)] for k, arm in enumerate(arms)}
    if objectives:  # the samples' trivial references
        report['references'] = references(exp, {arm: aes[arm][0] for arm in arms})
        report['references_grid'] = os.path.join('references', 'real', 'grid_frames.png' if video else 'grid.png')
    if not video:  # Fig. 5 erases in 8x8 tiles of images
        report['fig5'] = {arm: {'latent': report['autoencoders'][arm][0]['erasure_psnr'],
                                'rgb': report['autoencoders'][arm][0]['rgb_erasure_psnr']} for arm in arms}
        erasure_strip(exp, {arm: aes[arm][0] for arm in arms})

    if figures['channels']:  # Fig. 2: the same family from scratch, z_channels swept
        made = parallel([lambda c=c: scratch(exp, f'z{c}', sizes['sweep_steps'], z_channels=c) for c in Z_CHANNELS],
                        jobs)
        measured = parallel([lambda m=m: measure(exp, m) for m in made], jobs)
        report['fig2'] = {'z_channels': Z_CHANNELS, 'autoencoders': dict(zip([m[0] for m in made], measured))}
    if figures['kl_sweep']:  # Fig. 3: the same family from scratch, kl_weight swept (the posterior variance settles)
        made = parallel([lambda w=w: scratch(exp, 'z8' if w == 1e-6 else f'kl{w:g}', sizes['sweep_steps'], kl_weight=w)
                         for w in KL_WEIGHTS], jobs)
        measured = parallel([lambda m=m: measure(exp, m) for m in made], jobs)
        report['fig3'] = {'kl_weights': KL_WEIGHTS,
                          'autoencoders': dict(zip([f"kl {w:g}" for w in KL_WEIGHTS], measured))}
    if figures['se_sweep']:  # Fig. 4: fine-tunes of the baseline, se_weight swept (0 is the control of Fig. 1)
        made = parallel([lambda w=w: finetune(exp, exp.runs[0], {0: 'control', args.se_weight: 'se'}.get(w, f'se{w:g}'),
                                              se_weight=w) for w in SE_WEIGHTS], jobs)
        measured = parallel([lambda m=m: measure(exp, m) for m in made], jobs)
        report['fig4'] = {'se_weights': SE_WEIGHTS, 'finetune': dict(zip(map(str, SE_WEIGHTS), measured))}

    if exp.ablations:  # each ablation of every run, and the longer control where one is needed, measured alike
        wanted = [(name, *ABLATIONS[name]) for name in exp.ablations]
        wanted += [(control, [], steps, None) for control, steps in
                   dict.fromkeys((c, k) for _, _, k, c in wanted if c != 'control')]
        made = parallel([lambda run=run, w=w: finetune(exp, run, w[0], 0.0 if w[3] is None else args.se_weight,
                                                       steps=w[2] * sizes['ft_steps'], extra=w[1])
                         for w in wanted for run in runs], jobs)
        measured = parallel([lambda m=m: measure(exp, m) for m in made], jobs)
        report['ablations'] = {'arms': {name: {'control': control, 'steps': k * sizes['ft_steps'],
                                               'flags': list(map(str, flags))} for name, flags, k, control in wanted
                                        if control is not None},
                               'autoencoders': {w[0]: measured[i * len(runs):(i + 1) * len(runs)]
                                                for i, w in enumerate(wanted)}}
        if 'dct_cut' in exp.ablations:  # Fig. 5's third row: the AE fine-tuned with the authors' DCT cut
            first = made[[w[0] for w in wanted].index('dct_cut') * len(runs)]
            report['fig5']['dct_cut'] = {'latent': report['ablations']['autoencoders']['dct_cut'][0]['erasure_psnr'],
                                         'rgb': report['ablations']['autoencoders']['dct_cut'][0]['rgb_erasure_psnr']}
            erasure_strip(exp, {**{arm: aes[arm][0] for arm in arms}, 'dct_cut': first})

    from repro.report import two_level, verdict, write_report
    report['two_level'] = two_level(report)  # per_baseline, per_image, bootstrap of the probe's numbers
    report['wall_seconds'] = time.time() - t0
    report['child_seconds'] = exp.child_seconds
    report['verdict'] = None if args.smoke else verdict(report)  # toy sizes support no claim
    with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    say(write_report(args.out_dir))
    say(f"\nwrote {os.path.join(args.out_dir, 'report.json')} and report.md (--replot re-writes it "
          f"from report.json)")


if __name__ == '__main__':
    main()
