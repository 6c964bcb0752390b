r"""
Stage 2: train a diffusion model (LDM UNet or DiT) on the latents of a frozen autoencoder.

  python train_ae.py && python train_ldm.py                  # tiny AE, then a tiny UNet, embedded dataset, CPU is fine
  python train_ldm.py --model dit --preset tiny               # the same with a DiT
  python train_ldm.py --model dit --objective flow            # rectified flow (SiT's velocity loss), sampled by Heun
  torchrun --nproc_per_node=8 train_ldm.py --data /imagenet/train --image_size 256 --ae sd-vae.safetensors \
      --ae_preset sd --model dit --preset DiT-XL/2 --batch_size 32 --cache_latents /fast/latents   # DiT's recipe

Latents are normalised as z = (E(x) - latent_shift) * latent_scale, with shift and scale the mean and 1/std of the
latents of one global batch drawn at random from the data and gathered over ranks (LDM's scale_by_std), fixed for the
run and kept in the checkpoint: two scalars for images, one pair per latent channel for video (--latent_norm). The loss is diffusion.py's:
--objective eps or v trains DDPM (diffusion.Diffusion: eps- or v-prediction MSE, plus L_vlb for learn_sigma models),
--objective flow trains rectified flow (diffusion.Flow, as SiT and SD3: --prediction velocity|x0|noise, --time_sampling,
--time_shift), with the same backbones; the checkpoint records which, and sample.py samples it with that family's
samplers. Class-conditional when the data has labels (ImageFolder
with class subfolders), with label dropout for classifier-free guidance; unconditional otherwise.
--cache_latents DIR encodes the data set once, each image and its mirror image, into DIR/latents.npy (a memmap,
N x 2 x C x h x w) and DIR/labels.npy, and trains from there with the same random flips; --cache_size N caches only
a seeded random N of the images (the embedded dataset needs it, being unlimited), or N random crops with
--random_crop. The cache is float16, in random order, read in shuffled chunks (data.LatentCache), and is refused when
the autoencoder's weights, the data, the image size, the crop mode or the cache size differ from what it was made with.

Video (--num_frames N > 1, N = 1 + 4k for the tiny and cogvideox presets): the frozen autoencoder is a
`train_ae.py --num_frames` checkpoint (or CogVideoX's VAE with --ae_preset cogvideox), the data are clips of N frames
(data.make_dataset: the embedded moving dead leaves, or a folder of videos, class-conditional with class
subfolders as Kinetics), the latents (B, C, T', h, w) with T' = 1 + (N - 1) / 4, and the denoiser is the video DiT
(--model dit). Shift and scale are per channel by default (--latent_norm channel), so that no channel's offset or
spread dominates the denoiser's loss. The sample grids are videos
(samples_STEP/grid.mp4, grid.gif, grid_frames.png). --cache_latents caches clips as it caches images (each clip and
its mirror clip, (N, 2, C, T', h, w)); on a CPU it is what makes video training fast, since rendering or decoding a clip
and encoding it cost far more than a step of a small DiT.

  python train_ae.py --num_frames 17 && python train_ldm.py --num_frames 17 --ae out/video_ae/ckpt.pt --model dit \
      --image_size 32 --batch_size 8 --out_dir out/video_ldm

Shared flags (cli.add_common_args) and their defaults in this script:
  --data (embedded dead leaves)  --image_size 64  --batch_size 32  --grad_accum 1  --max_steps 5000  --lr 0.0001
  --out_dir out/ldm  --preset tiny  --seed 0  --device auto  --dtype auto  --num_workers 2
  --log_interval 10  --eval_interval 500  --ckpt_interval 2500
  switches: --random_crop  --compile  --resume  --allow_changes  --overwrite  --tensorboard  --init_from PATH
"""
import os
import sys
import json
import time
import argparse
import contextlib
from copy import deepcopy

from cli import (FLOW_PREDICTIONS, SCHEDULES, TIME_SAMPLINGS, add_common_args, checked, set_cpu_threads,
                 stop_on_signals)

# -----------------------------------------------------------------------------
# config, read before torch is imported, so that --help and a mistyped flag answer at once

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
add_common_args(parser, out_dir='out/ldm', lr=1e-4, preset='tiny', batch_size=32, max_steps=5000, eval_interval=500,
                ckpt_interval=2500)
parser.add_argument('--ae', type=str, default='out/ae/ckpt.pt', help='the frozen autoencoder: a train_ae.py checkpoint or public weights')
parser.add_argument('--ae_preset', type=str, default=None, help="architecture of public --ae weights ('sd', 'flux'); not needed for train_ae.py checkpoints")
parser.add_argument('--model', type=str, default=None, choices=['unet', 'dit'], help='the denoiser backbone; --preset picks its size (unet: tiny, ldm-32, ldm-64; dit: tiny, DiT-S/2 ... DiT-XL/8); default: unet for images, dit for video (the only video backbone)')
parser.add_argument('--objective', type=str, default='eps', choices=['eps', 'v', 'flow'], help="DDPM with eps- or v-prediction (diffusion.Diffusion), or rectified flow (diffusion.Flow: x_t = (1 - t) x0 + t eps, SiT's and SD3's)")
parser.add_argument('--schedule', type=str, default=None, choices=SCHEDULES, help="DDPM's noise schedule (diffusion.beta_schedule); default: the backbone paper's (unet: ldm_linear as LDM, dit: linear as DiT); scaled_linear is Stable Diffusion's")
parser.add_argument('--learn_sigma', action=argparse.BooleanOptionalAction, default=None, help='DDPM: also learn the variance (iDDPM, with L_vlb); default: on for dit, off for unet; never under flow')
parser.add_argument('--prediction', type=str, default=None, choices=FLOW_PREDICTIONS, help="flow: what the network predicts (default velocity, as SiT); DDPM's eps or v is --objective")
parser.add_argument('--time_sampling', type=str, default='uniform', choices=TIME_SAMPLINGS, help="flow: the density of training times, uniform (SiT) or logit_normal (SD3)")
parser.add_argument('--logit_mean', type=checked(float), default=0.0, help="flow with logit_normal: SD3's location m")
parser.add_argument('--logit_std', type=checked(float, lo=0, lo_open=True), default=1.0, help="flow with logit_normal: SD3's scale s")
parser.add_argument('--time_shift', type=checked(float, lo=0, lo_open=True), default=1.0, help="flow: SD3's time shift s, t' = s t / (1 + (s - 1) t), in training and (from the checkpoint) in sampling; 1 = none, > 1 toward noise")
parser.add_argument('--class_dropout_prob', type=checked(float, lo=0, hi=1, hi_open=True), default=0.1, help='label dropout for classifier-free guidance (class-conditional data only)')
parser.add_argument('--ema_decay', type=checked(float, lo=0, hi=1, hi_open=True), default=0.9999, help='EMA decay of the denoiser weights (samples use the EMA)')
parser.add_argument('--ema_warmup', action='store_true', help='EMA decay min(ema_decay, (1 + n) / (10 + n)) at update n, for short runs (DiT has none)')
parser.add_argument('--weight_decay', type=checked(float, lo=0), default=0.0, help='AdamW weight decay (DiT uses 0)')
parser.add_argument('--latent_scale', type=checked(float, lo=0, lo_open=True), default=None, help='override the latent scale (default: 1/std of a random global batch, or the checkpoint\'s)')
parser.add_argument('--latent_shift', type=checked(float), default=None, help='override the latent shift (default: mean of a random global batch, or the checkpoint\'s)')
parser.add_argument('--latent_norm', type=str, default=None, choices=['scalar', 'channel'], help="scale_by_std with one mean and std over all latents, or per channel; default: scalar for images (LDM's), channel for video")
parser.add_argument('--cache_latents', type=str, default=None, help='folder for the encoded data set (made on first use, then reused)')
parser.add_argument('--cache_size', type=checked(int, lo=1), default=None, help='with --cache_latents: encode a seeded random N of the images, or N random crops with --random_crop (required for the embedded dataset and for crops)')
parser.add_argument('--grad_checkpointing', action='store_true', help='DiT: recompute activations in the backward pass (less memory, larger batches)')
parser.add_argument('--num_samples', type=checked(int, lo=1), default=16, help='images in the periodic sample grid (EMA model; DDIM, or Heun under flow)')
parser.add_argument('--num_frames', type=checked(int, lo=1), default=1, help='frames per training clip (1 + 4k for the video AE presets); 1 = images. N > 1 trains the video DiT on the latents of a video autoencoder')
parser.add_argument('--frame_stride', type=checked(int, lo=1), default=1, help='video: take every n-th frame of the source video')
parser.add_argument('--sample_steps', type=checked(int, lo=1, hi=1000), default=50, help='DDIM (flow: Heun) steps for the periodic sample grid')
args = parser.parse_args()
video = args.num_frames > 1
args.model = args.model or ('dit' if video else 'unet')  # as train_ae.py's VIDEO_DEFAULTS: video has one backbone
latent_norm = args.latent_norm or ('channel' if video else 'scalar')
flow = args.objective == 'flow'
FLOW_ONLY = ('prediction', 'time_sampling', 'logit_mean', 'logit_std', 'time_shift')  # Flow's arguments, by flag
learn_sigma = args.learn_sigma if args.learn_sigma is not None else args.model == 'dit' and not flow
schedule = None if flow else args.schedule or {'unet': 'ldm_linear', 'dit': 'linear'}[args.model]
# what the checkpoint records of the objective: the family, what the network outputs, and Flow's arguments (None under
# DDPM). 'prediction' keeps its old meaning for DDPM (eps or v; checkpoints made before flow have no 'objective')
objective = {'objective': args.objective, 'prediction': (args.prediction or 'velocity') if flow else args.objective,
             **{k: getattr(args, k) if flow else None for k in FLOW_ONLY[1:]}}

# the CPU threads this machine can spare, set while torch can still obey (cli.set_cpu_threads), and a first line at once:
# what runs and where it goes (loading torch and encoding the data take a while, longer on a busy machine)
threads = set_cpu_threads(reserve=0 if args.cache_latents else args.num_workers)  # workers decoding images keep cores busy
stop_on_signals()  # Ctrl-C and SIGTERM: one line, and the last checkpoint kept
if os.environ.get('RANK', '0') == '0':
    print(f"train_ldm.py: {args.model} {args.preset}, objective {args.objective}, on the latents of {args.ae}, "
          f"{args.max_steps} steps of batch {args.batch_size} -> {args.out_dir}; {threads}; loading torch ...", flush=True)

# the command line is read: now the heavy imports (torch alone takes over a second)
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from common import (die, select_device, setup_distributed, cleanup_distributed, resolve_dtype, autocast,
                    make_grad_scaler, broadcast_latent_norm, all_reduce_mean, seed_everything, gather_rng_states,
                    CheckpointWriter, ema_decay, update_ema, Loader, save_image_grid, save_video_grid, Logger,
                    note_non_finite, stop_if_non_finite, stop_if_weights_non_finite, rank_checksum_diff, peak_memory,
                    check_resume_steps, resume_run, weights_hash, refuse_unused)
from rundir import check_run_dir, prepare_run_dir, no_space_is_an_error, check_output, refuse_overlap
from data import make_dataset, random_subset, build_latent_cache, file_sha256, dataset_identity
from diffusion import Diffusion, Flow
from metrics import to_uint8
from model import build_backbone
from weights import load_autoencoder, load_checkpoint

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU, as config.json records it


def check_args(args):
    """The rules between flags, and every output of an earlier run in --out_dir, checked before anything is built so
    that a mistake costs seconds, not a run. -> (the checkpoint path, the checkpoint to resume or None)."""
    if video and args.model != 'dit':
        die("video latents (--num_frames > 1) need --model dit (the video DiT); the UNet is for images only.")
    if args.grad_checkpointing and args.model != 'dit':
        die("--grad_checkpointing is implemented for --model dit only.")
    if flow and args.learn_sigma:
        die("--learn_sigma does not apply to --objective flow: a flow has no variance to learn; drop it.")
    if flow and args.schedule:
        die("--schedule is DDPM's noise schedule; --objective flow has its own path x_t = (1 - t) x0 + t eps, whose "
            "times --time_sampling and --time_shift shape.")
    given = [f'--{k}' for k in FLOW_ONLY if getattr(args, k) != parser.get_default(k)]
    if given and not flow:
        die(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --objective flow only; this run trains DDPM "
            f"(--objective {args.objective}).")
    if flow and args.time_sampling == 'uniform' and {'--logit_mean', '--logit_std'} & set(given):
        die("--logit_mean and --logit_std shape the logit-normal density; pass --time_sampling logit_normal too.")
    if args.cache_latents and (args.data is None or args.random_crop) and args.cache_size is None:
        die("--cache_latents with the embedded dataset or --random_crop needs --cache_size N: there is no end to the "
            "images (or crops) to cache.")
    refuse_unused(sys.argv[1:], [('--cache_size', args.cache_latents, 'only applies with --cache_latents'),
                                 ('--frame_stride', video, 'only applies to video (--num_frames > 1)'),
                                 ('--allow_changes', args.resume, 'only applies with --resume')])
    ckpt_path = check_run_dir(args.out_dir, args.resume, args.overwrite,
                              [(args.data, '--data'), (args.ae, '--ae'), (args.init_from, '--init_from')])
    if args.cache_latents and not os.path.isfile(os.path.join(args.cache_latents, 'meta.json')):
        check_output(args.cache_latents, '--cache_latents', folder=True)  # to be built (a made one may be read-only)
        refuse_overlap(args.cache_latents, '--cache_latents', [(args.data, '--data')])
    ckpt = (load_checkpoint(ckpt_path, 'train_ldm.py', hint='resume a train_ldm.py run, or choose another --out_dir')
            if args.resume else None)
    if ckpt is not None:
        check_resume_steps(ckpt, ckpt_path, args.max_steps)
    return ckpt_path, ckpt


ckpt_path, ckpt = check_args(args)
saved = ckpt['config'] if ckpt is not None else None  # the settings of the run to resume

# -----------------------------------------------------------------------------
# init: processes, precision, seeds, the frozen autoencoder

dist = setup_distributed(args.device)
device = dist.device
dtype = resolve_dtype(args.dtype, device)
prepare_run_dir(args.out_dir, args.overwrite, dist.master)
seed_everything(args.seed + dist.rank)
if dist.master:
    print(f"train_ldm.py: {dist.world_size} process(es) on {device}; preparing the data and the networks ...", flush=True)

ae_path = saved['ae'] if saved and args.ae == parser.get_default('ae') else args.ae
try:
    ae = load_autoencoder(ae_path, preset=args.ae_preset, device=device, video=video)
    ae.requires_grad_(False)
except FileNotFoundError:
    die(f"autoencoder {ae_path} does not exist; train one with train_ae.py or pass public weights with --ae PATH "
        f"--ae_preset sd|flux.")
except ValueError as e:
    die(f"{e} (for --ae {ae_path})")
f, C = ae.downsample_factor, ae.cfg.z_channels
if args.image_size % f:
    die(f"--image_size {args.image_size} is not divisible by the autoencoder's downsampling factor {f}.")
latent_size = args.image_size // f
latent_frames = None  # images; video: the latent clip length T'
if video:
    if (args.num_frames - 1) % ae.temporal_factor:
        die(f"--num_frames {args.num_frames} must be 1 + {ae.temporal_factor}k for the video autoencoder's temporal "
            f"factor {ae.temporal_factor}.")
    latent_frames = 1 + (args.num_frames - 1) // ae.temporal_factor
latent_shape = [C, *([latent_frames] if video else []), latent_size, latent_size]  # of one item: (C, [T',] h, w)
# the autoencoder's identity goes into the checkpoint; sample.py and --resume refuse another one, whose latents the
# denoiser and the latent scale were not made for
ae_identity = {'ae_sha': weights_hash(ae), 'ae_factor': f, 'ae_channels': C}
trained_with = {k: saved.get(k) for k in ae_identity} if saved else ae_identity
if trained_with['ae_sha'] is not None and trained_with != ae_identity:
    die(f"--ae {ae_path} (f{f}, {C} channels, weights {ae_identity['ae_sha']}) is not the autoencoder {ckpt_path} "
        f"was trained with (f{trained_with['ae_factor']}, {trained_with['ae_channels']} channels, weights "
        f"{trained_with['ae_sha']}); pass that one with --ae.")


@torch.no_grad()
def encode(x):  # x (B, 3, [T,] H, W) in [-1, 1] -> unnormalised latents (B, C, [T',] h, w), a posterior sample as LDM, DiT
    with autocast(device, dtype):
        z, _ = ae.encode(x, sample=True)
    return z.float()

# -----------------------------------------------------------------------------
# data: images (encoded on the fly) or the latent cache; every rank shares the seed and takes its own shard of each
# epoch's permutation

images = make_dataset(args.data, args.image_size, seed=args.seed, train=True, random_crop=args.random_crop,
                      num_frames=args.num_frames, frame_stride=args.frame_stride)  # video: clips (3, T, H, W)
if args.cache_latents:
    num_items = args.cache_size if args.random_crop or args.data is None else min(args.cache_size or len(images), len(images))
    key = {'ae_sha256': file_sha256(ae_path), 'data': dataset_identity(images, args.data, args.seed),
           'image_size': args.image_size, 'random_crop': args.random_crop, 'cache_size': num_items,
           'seed': args.seed, 'latent_shape': latent_shape}
    if video:
        key |= {'num_frames': args.num_frames, 'frame_stride': args.frame_stride}
    dataset = build_latent_cache(args.cache_latents, images, encode, latent_shape, key, num_items, args.batch_size, dist,
                                 args.seed, args.random_crop, args.num_workers)
else:
    dataset = images
num_classes = dataset.num_classes
loader = Loader(dataset, args.batch_size, args.seed, dist, num_workers=args.num_workers)
run_config = {**vars(args), **objective, 'num_images': len(dataset), 'schedule': schedule,
              'learn_sigma': learn_sigma, 'latent_norm': latent_norm}  # the resolved defaults, as saved: a resume compares like with like


def to_latent(x):
    """A loader batch -> unnormalised latents: cached batches already are latents."""
    return x if args.cache_latents else encode(x)

# -----------------------------------------------------------------------------
# latent normalisation (LDM's scale_by_std), the denoiser, EMA, optimizer

if ckpt is not None:
    latent_shift, latent_scale = ckpt['latent_shift'], ckpt['latent_scale']
else:  # LDM's scale_by_std: mean and 1/std of one global batch, a seeded random sample of the data split over ranks
    mine = random_subset(dataset, args.batch_size * dist.world_size, args.seed)[dist.rank::dist.world_size]
    z = to_latent(torch.stack([dataset[i][0] for i in mine]).to(device)).double()
    if latent_norm == 'channel':  # (B, C, ...) -> (C, N): one mean and std per channel
        z = z.transpose(0, 1).flatten(1)
        moments = torch.stack([torch.full((C,), float(z.shape[1]), dtype=torch.float64, device=device), z.sum(1),
                               z.pow(2).sum(1)])  # (3, C)
    else:
        moments = torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64, device=device), z.sum(), z.pow(2).sum()])
    if dist.ddp:
        torch.distributed.all_reduce(moments)  # the sums over every rank's images: exact, whatever the world size
    n, mean = moments[0], moments[1] / moments[0]
    std = (moments[2] / n - mean ** 2).clamp_min(0).sqrt()
    latent_shift, latent_scale = mean.tolist(), (1.0 / std).tolist()  # floats, or lists of C floats
latent_shift = args.latent_shift if args.latent_shift is not None else latent_shift
latent_scale = args.latent_scale if args.latent_scale is not None else latent_scale
shift, scale = (broadcast_latent_norm(v, 5 if video else 4, device) for v in (latent_shift, latent_scale))

backbone = dict(model=args.model, preset=args.preset, latent_size=latent_size, in_channels=C, num_classes=num_classes,
                learn_sigma=learn_sigma, class_dropout_prob=args.class_dropout_prob if num_classes > 0 else 0.0)
if video:
    backbone['num_frames'] = latent_frames
denoiser = {'backbone': backbone, 'objective': args.objective, 'schedule': schedule, 'prediction': objective['prediction']}
if saved:  # a checkpoint made before flow has no 'objective': its 'prediction' (eps or v) was the objective
    trained_as = {k: saved[k] for k in denoiser if k in saved} | {'objective': saved.get('objective', saved['prediction'])}
    if trained_as != denoiser:
        die(f"{ckpt_path} was trained with {trained_as}; resume it with the same --model, --preset, --objective, "
            f"--schedule, --prediction, --learn_sigma, --class_dropout_prob, --image_size and data.")
try:
    raw_model = build_backbone(**backbone).to(device)
except ValueError as e:
    die(str(e))
raw_model.grad_checkpointing = args.grad_checkpointing
ema = deepcopy(raw_model).eval().requires_grad_(False)
if flow:
    process = Flow(**{k: objective[k] for k in FLOW_ONLY})
else:
    process = Diffusion(schedule, prediction=args.objective, learn_sigma=learn_sigma, device=device)
opt = torch.optim.AdamW(raw_model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                        fused=device.type == 'cuda')  # one kernel for the whole update on GPUs
scaler = make_grad_scaler(dtype, device)

# -----------------------------------------------------------------------------
# the starting point: a fine-tune's weights (--init_from; optimizer and step start fresh), or the run to resume,
# exactly where it stopped (a change of the data stream, common.RESUME_EXACT, cannot continue it exactly)

step = 0
if args.init_from:
    init = load_checkpoint(args.init_from, 'ldm')  # ckpt.pt, or ema.pt whose EMA weights start both
    for module, state in ((raw_model, init.get('model', init['ema'])), (ema, init['ema'])):
        try:
            module.load_state_dict(state)
        except RuntimeError:
            die(f"{args.init_from} does not fit --model {args.model} --preset {args.preset} with {C}-channel "
                f"{latent_size}x{latent_size} latents and {num_classes} classes; pass the flags it was trained with.")
    del init
if ckpt is not None:
    step = resume_run(ckpt, run_config, args.allow_changes, dist, args.out_dir,
                      states={'model': raw_model, 'ema': ema, 'opt': opt, 'scaler': scaler, 'loader': loader},
                      lrs={'opt': args.lr}, exact=('cache_latents', 'cache_size', *FLOW_ONLY[1:]),
                      unsaved=('num_samples', 'sample_steps', 'ae', 'grad_checkpointing'))
    ckpt = None

model = raw_model
if args.compile:
    model = torch.compile(model)
if dist.ddp:
    model = DDP(model, device_ids=[dist.local_rank] if device.type == 'cuda' else None)

# fixed noise and labels for the periodic grids, so that grids from different steps are comparable
g = torch.Generator().manual_seed(args.seed)
grid_noise = torch.randn(args.num_samples, *latent_shape,
                         generator=g).to(device)
grid_labels = (torch.arange(args.num_samples) % num_classes).to(device) if num_classes > 0 else None


@torch.no_grad()
def sample_grid():
    """Samples of the EMA model (DDIM, or Heun under flow; no guidance), decoded by the autoencoder."""
    model_fn = lambda x, t: ema(x, t, grid_labels)  # noqa: E731
    with autocast(device, dtype):
        if flow:
            z = process.ode_sample(model_fn, grid_noise, steps=args.sample_steps, solver='heun')
        else:
            z = process.ddim_sample(model_fn, grid_noise, steps=args.sample_steps)
        x = ae.decode(z.float() / scale + shift).float()
    if video:  # (B, 3, T, H, W) -> uint8 (B, T, H, W, 3) -> samples_STEP/grid.mp4, grid.gif, grid_frames.png
        clips = to_uint8(x).permute(0, 2, 3, 4, 1).cpu().numpy()
        folder = os.path.join(args.out_dir, f'samples_{step:07d}')
        os.makedirs(folder, exist_ok=True)
        logger.image('samples', save_video_grid(clips, folder)[2], step)  # grid_frames.png
        return
    nrow = int(args.num_samples ** 0.5)
    save_image_grid(x.clamp(-1, 1), os.path.join(args.out_dir, f'samples_{step:07d}.png'), nrow=max(nrow, 1))
    logger.image('samples', os.path.join(args.out_dir, f'samples_{step:07d}.png'), step)


def checkpoint():
    """ckpt.pt, everything a resume needs (DiT-XL/2 with AdamW: 11 GB), and ema.pt, the EMA weights and what
    sample.py needs (2.7 GB), both written on a background thread after a CPU copy."""
    global saved_step
    stop_if_non_finite(first_bad_step, ckpt_path, dist, progress, saved_step)  # a non-finite loss is never saved
    stop_if_weights_non_finite([raw_model, ema, opt], step, ckpt_path, saved_step, dist, progress)  # nor such weights
    rng = gather_rng_states(dist)  # collective: every rank calls it
    if dist.master:
        config = {**run_config, 'ae': ae_path, **ae_identity, 'backbone': backbone, 'schedule': schedule, 'learn_sigma': learn_sigma,
                  'image_size': args.image_size}
        export = {'ema': ema.state_dict(), 'step': step, 'latent_scale': latent_scale, 'latent_shift': latent_shift,
                  'config': config}
        writer.save({ckpt_path: {**export, 'model': raw_model.state_dict(), 'opt': opt.state_dict(),
                                 'scaler': scaler.state_dict(), 'rng': rng, 'loader': loader.state_dict()},
                     os.path.join(args.out_dir, 'ema.pt'): export})
    saved_step = step

# -----------------------------------------------------------------------------
# training loop


logger = Logger(args.out_dir, dist.master, args.tensorboard, step)
if dist.master:
    with no_space_is_an_error(args.out_dir), open(os.path.join(args.out_dir, 'config.json'), 'w') as fh:
        json.dump({**run_config, 'ae': ae_path, **ae_identity, 'backbone': backbone, 'schedule': schedule, 'learn_sigma': learn_sigma,
                   'latent_scale': latent_scale, 'latent_shift': latent_shift, 'world_size': dist.world_size,
                   'dtype': dtype}, fh, indent=2)
    n_params = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else f"({', '.join(f'{a:.3g}' for a in v)})"  # noqa: E731
    frames = f"{latent_frames}x" if video else ''
    if flow:
        times = args.time_sampling + (f' ({args.logit_mean:g}, {args.logit_std:g})' if args.time_sampling != 'uniform' else '')
        trains = f"rectified flow, {objective['prediction']}-prediction, {times} times, shift {args.time_shift:g}"
    else:
        trains = f"{schedule} schedule, {args.objective}-prediction{', learned variance' if learn_sigma else ''}"
    print(f"{args.model} {args.preset}: {n_params / 1e6:.2f}M params on {C}x{frames}{latent_size}x{latent_size} latents "
          f"(f={f}), {num_classes or 'no'} classes, {trains}; latent shift {fmt(latent_shift)}, scale {fmt(latent_scale)}; "
          f"{dist.world_size} process(es) on {device}, {dtype}")
# smoothing=0: the time left from the mean time a step has taken so far (evaluations included); tqdm's default, a
# moving average of the last few steps, swung between 5 min and 2.5 h with each evaluation and each busy second
progress = tqdm(total=args.max_steps, initial=step, disable=not dist.master, dynamic_ncols=True, smoothing=0)
writer = CheckpointWriter()
first_bad_step = torch.full((), float('inf'), dtype=torch.float64, device=device)  # inf: every loss so far finite
saved_step = step if args.resume else None  # the step of the checkpoint on disk that this run wrote or resumed
train_time, timed_steps = 0.0, 0  # wall time of training steps only (no sampling, no checkpointing)
while step < args.max_steps:
    t0 = time.time()
    loss_sum = 0.0
    # gradient accumulation that all-reduces only on the last micro-step
    for micro in range(args.grad_accum):
        x, y = next(loader)
        z = (to_latent(x.to(device, non_blocking=True)) - shift) * scale  # (B, C, [T',] h, w), ~unit variance
        y = y.to(device) if num_classes > 0 else None
        sync = contextlib.nullcontext() if (not dist.ddp or micro == args.grad_accum - 1) else model.no_sync()
        with sync:
            with autocast(device, dtype):
                loss = process.training_loss(model, z, y).mean()
            scaler.scale(loss / args.grad_accum).backward()
        loss_sum += loss.detach() / args.grad_accum
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, raw_model, ema_decay(args.ema_decay, step, args.ema_warmup))
    step += 1
    progress.update(1)

    # a non-finite loss is noted on the device (no host sync); the host checks the note at every log line, sample
    # grid and checkpoint, and stops before anything is written, so the last checkpoint stays good
    first_bad_step = note_non_finite(first_bad_step, loss_sum, step)
    if step % args.log_interval == 0 or step % args.eval_interval == 0 or step == args.max_steps:  # checkpoint() too
        stop_if_non_finite(first_bad_step, ckpt_path, dist, progress, saved_step)  # the host waits for the GPU here

    train_time, timed_steps = train_time + time.time() - t0, timed_steps + 1
    if step % args.log_interval == 0 or step == args.max_steps:
        dt, train_time, timed_steps = train_time / timed_steps, 0.0, 0
        latents = args.batch_size * args.grad_accum * dist.world_size
        logger.log(step, loss=all_reduce_mean(loss_sum.float(), dist), step_time=dt, latents_per_sec=latents / dt, lr=args.lr,
                   skipped_images=loader.skipped(), **peak_memory(device))
    if step % args.ckpt_interval == 0 or step == args.max_steps:
        checkpoint()  # before the optional sample grid, so that nothing it does can cost the run
    if (step % args.eval_interval == 0 or step == args.max_steps) and dist.master:
        sample_grid()
progress.close()
writer.wait()
if dist.ddp:
    logger.log(step, rank_checksum_diff=rank_checksum_diff(raw_model, dist))
if dist.master:  # where everything went, so that nobody has to look
    print(f"done at step {step}: checkpoint {ckpt_path} (EMA weights for sample.py: "
          f"{os.path.join(args.out_dir, 'ema.pt')}), log {os.path.join(args.out_dir, 'log.jsonl')}, sample grids "
          f"{os.path.join(args.out_dir, 'samples_*.png')}")
cleanup_distributed()
