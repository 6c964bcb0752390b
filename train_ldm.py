"""
Stage 2: train a diffusion model (LDM UNet or DiT) on the latents of a frozen autoencoder.

  python train_ae.py && python train_ldm.py                  # tiny AE, then a tiny UNet, embedded dataset, CPU is fine
  python train_ldm.py --model dit --preset tiny               # the same with a DiT
  torchrun --nproc_per_node=8 train_ldm.py --data /imagenet/train --image_size 256 --ae sd-vae.safetensors \
      --ae_preset sd --model dit --preset DiT-XL/2 --batch_size 32 --cache_latents /fast/latents   # DiT's recipe

Latents are normalised as z = (E(x) - latent_shift) * latent_scale, with shift and scale the mean and 1/std of the
first batch's latents (LDM's scale_by_std), fixed for the run and kept in the checkpoint. The loss is diffusion.py's
(eps- or v-prediction MSE, plus L_vlb for learn_sigma models). Class-conditional when the data has labels (ImageFolder
with class subfolders), with label dropout for classifier-free guidance; unconditional otherwise.
--cache_latents DIR encodes the data set once, each image and its mirror image, into DIR/latents.npy (a memmap,
N x 2 x C x h x w) and DIR/labels.npy, and trains from there with the same random flips; --cache_size N caches only
the first N images (the embedded dataset needs it, being unlimited), or N random crops with --random_crop.
"""
import os
import json
import time
import argparse
import contextlib
from copy import deepcopy

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from common import (add_common_args, die, setup_distributed, cleanup_distributed, resolve_dtype, autocast,
                    make_grad_scaler, all_reduce_mean, seed_everything, gather_rng_states, restore_rng_states,
                    save_checkpoint, load_checkpoint, update_ema, build_loader, save_image_grid, Logger,
                    stop_if_non_finite, rank_param_max_diff, peak_memory)
from data import make_dataset
from diffusion import Diffusion
from model import build_backbone, load_autoencoder

# -----------------------------------------------------------------------------
# config

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
add_common_args(parser, out_dir='out/ldm', lr=1e-4, preset='tiny', batch_size=32, max_steps=5000, eval_interval=500,
                ckpt_interval=500)
parser.add_argument('--ae', type=str, default='out/ae/ckpt.pt', help='the frozen autoencoder: a train_ae.py checkpoint or public weights')
parser.add_argument('--ae_preset', type=str, default=None, help="architecture of public --ae weights ('sd', 'flux'); not needed for train_ae.py checkpoints")
parser.add_argument('--model', type=str, default='unet', choices=['unet', 'dit'], help='the denoiser backbone; --preset picks its size (unet: tiny, ldm-32, ldm-64; dit: tiny, DiT-S/2 ... DiT-XL/8)')
parser.add_argument('--schedule', type=str, default=None, choices=['linear', 'scaled_linear'], help="noise schedule; default: the backbone paper's (unet: scaled_linear as LDM, dit: linear as DiT)")
parser.add_argument('--prediction', type=str, default='eps', choices=['eps', 'v'], help='what the network predicts')
parser.add_argument('--learn_sigma', action=argparse.BooleanOptionalAction, default=None, help='also learn the variance (iDDPM, with L_vlb); default: on for dit, off for unet')
parser.add_argument('--class_dropout_prob', type=float, default=0.1, help='label dropout for classifier-free guidance (class-conditional data only)')
parser.add_argument('--ema_decay', type=float, default=0.9999, help='EMA decay of the denoiser weights (samples use the EMA)')
parser.add_argument('--weight_decay', type=float, default=0.0, help='AdamW weight decay (DiT uses 0)')
parser.add_argument('--latent_scale', type=float, default=None, help='override the latent scale (default: 1/std of the first batch, or the checkpoint\'s)')
parser.add_argument('--latent_shift', type=float, default=None, help='override the latent shift (default: mean of the first batch, or the checkpoint\'s)')
parser.add_argument('--cache_latents', type=str, default=None, help='folder for the encoded data set (made on first use, then reused)')
parser.add_argument('--cache_size', type=int, default=None, help='with --cache_latents: encode the first N images, or N random crops with --random_crop (required for the embedded dataset and for crops)')
parser.add_argument('--grad_checkpointing', action='store_true', help='DiT: recompute activations in the backward pass (less memory, larger batches)')
parser.add_argument('--num_samples', type=int, default=16, help='images in the periodic sample grid (EMA model, DDIM)')
parser.add_argument('--sample_steps', type=int, default=50, help='DDIM steps for the periodic sample grid')
args = parser.parse_args()
learn_sigma = args.learn_sigma if args.learn_sigma is not None else args.model == 'dit'
schedule = args.schedule or {'unet': 'scaled_linear', 'dit': 'linear'}[args.model]

# -----------------------------------------------------------------------------
# init: processes, precision, seeds, the frozen autoencoder

dist = setup_distributed(args.device)
device = dist.device
dtype = resolve_dtype(args.dtype, device)
os.makedirs(args.out_dir, exist_ok=True)
ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
if not args.resume and os.path.exists(ckpt_path):
    die(f"{ckpt_path} already exists; pass --resume to continue that run or choose another --out_dir.")
seed_everything(args.seed + dist.rank)
ckpt = load_checkpoint(ckpt_path) if args.resume else None

ae_path = ckpt['config']['ae'] if ckpt is not None and args.ae == parser.get_default('ae') else args.ae
try:
    ae = load_autoencoder(ae_path, preset=args.ae_preset, device=device).requires_grad_(False)
except FileNotFoundError:
    die(f"autoencoder {ae_path} does not exist; train one with train_ae.py or pass public weights with --ae PATH "
        f"--ae_preset sd|flux.")
except ValueError as e:
    die(f"{e} (for --ae {ae_path})")
f, C = ae.downsample_factor, ae.cfg.z_channels
if args.image_size % f:
    die(f"--image_size {args.image_size} is not divisible by the autoencoder's downsampling factor {f}.")
latent_size = args.image_size // f


@torch.no_grad()
def encode(x):  # x (B, 3, H, W) in [-1, 1] -> unnormalised latents (B, C, h, w), a posterior sample as LDM and DiT
    with autocast(device, dtype):
        z, _ = ae.encode(x, sample=True)
    return z.float()

# -----------------------------------------------------------------------------
# data: images (encoded on the fly) or the latent cache


class LatentCache(torch.utils.data.Dataset):
    """Encoded data set: latents.npy (N, 2, C, h, w) float32, the image and its mirror image, and labels.npy (N,).
    load() follows data.py's protocol, so common.Loader shards, orders and resumes it like images, and the per-item
    seed picks the flip exactly as ImageFolder does."""
    infinite = False

    def __init__(self, root):
        meta = json.load(open(os.path.join(root, 'meta.json')))
        self.latents = np.load(os.path.join(root, 'latents.npy'), mmap_mode='r')
        self.labels = np.load(os.path.join(root, 'labels.npy'))
        self.num_classes, self.meta = meta['num_classes'], meta

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, item_seed = item if isinstance(item, tuple) else (item, None)
        flip = item_seed is not None and np.random.default_rng([item_seed, i]).random() < 0.5
        return torch.from_numpy(np.array(self.latents[i, int(flip)])), int(self.labels[i]), 0


def build_latent_cache(root):
    """Encode the data set once (ranks split it), mirror images included; meta.json is written last, as the marker
    of a complete cache, and records what was encoded so a stale cache is refused rather than used."""
    if (args.data is None or args.random_crop) and args.cache_size is None:
        die("--cache_latents with the embedded dataset or --random_crop needs --cache_size N: there is no end to the "
            "images (or crops) to cache.")
    images = make_dataset(args.data, args.image_size, seed=args.seed, train=True, random_crop=args.random_crop)
    if args.random_crop:  # N random crops, crop i drawn with its own seed; plain indices would give center crops
        N = args.cache_size
        item = lambda i: images.load((i % len(images), args.seed * 1_000_003 + i))[:2]
    else:
        N = len(images) if args.cache_size is None else min(args.cache_size, len(images))
        item = lambda i: images[i]  # a plain index: no flip (the cache holds both), no crop
    wanted = {'data': os.path.abspath(args.data) if args.data else f'dead leaves, seed {args.seed}', 'num_images': N,
              'random_crop': args.random_crop, 'image_size': args.image_size, 'ae': os.path.abspath(ae_path),
              'latent_shape': [C, latent_size, latent_size]}
    meta_path = os.path.join(root, 'meta.json')
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path))
        if {k: meta.get(k) for k in wanted} != wanted:
            die(f"the latent cache {root} was made for {meta} but this run wants {wanted}; use another "
                f"--cache_latents folder.")
        return LatentCache(root)
    if dist.master:
        os.makedirs(root, exist_ok=True)
        np.lib.format.open_memmap(os.path.join(root, 'latents.npy'), mode='w+', dtype=np.float32,
                                  shape=(N, 2, C, latent_size, latent_size)).flush()
    if dist.ddp:
        torch.distributed.barrier()
    store = np.load(os.path.join(root, 'latents.npy'), mmap_mode='r+')
    labels = np.zeros(N, dtype=np.int64)
    mine = range(dist.rank * args.batch_size, N, dist.world_size * args.batch_size)
    for start in tqdm(mine, desc='encoding latents', disable=not dist.master):
        stop = min(start + args.batch_size, N)
        items = [item(i) for i in range(start, stop)]  # (x, y); an unreadable file is replaced by a neighbour
        x = torch.stack([item[0] for item in items]).to(device)
        store[start:stop, 0] = encode(x).cpu().numpy()
        store[start:stop, 1] = encode(x.flip(3)).cpu().numpy()
        labels[start:stop] = [item[1] for item in items]
    store.flush()
    if dist.ddp:  # each rank filled its own label slice: sum them on the master
        lab = torch.from_numpy(labels).to(device)
        torch.distributed.all_reduce(lab)
        labels = lab.cpu().numpy()
        torch.distributed.barrier()
    if dist.master:
        np.save(os.path.join(root, 'labels.npy'), labels)
        with open(meta_path, 'w') as fh:
            json.dump({**wanted, 'num_classes': images.num_classes}, fh)
    if dist.ddp:
        torch.distributed.barrier()
    return LatentCache(root)


if args.cache_latents:
    dataset = build_latent_cache(args.cache_latents)
else:
    dataset = make_dataset(args.data, args.image_size, seed=args.seed, train=True, random_crop=args.random_crop)
num_classes = dataset.num_classes
loader = build_loader(args, dist, dataset=dataset)


def to_latent(x):
    """A loader batch -> unnormalised latents: cached batches already are latents."""
    return x if args.cache_latents else encode(x)

# -----------------------------------------------------------------------------
# latent normalisation (LDM's scale_by_std), the denoiser, EMA, optimizer


if ckpt is not None:
    latent_shift, latent_scale = ckpt['latent_shift'], ckpt['latent_scale']
else:  # mean and 1/std of the first batch's latents (LDM uses its first batch); rank 0's posterior sample wins
    first = torch.stack([dataset[i][0] for i in range(min(args.batch_size, len(dataset)))]).to(device)
    z = to_latent(first)
    stats = torch.stack([z.mean(), 1.0 / z.std()])
    if dist.ddp:
        torch.distributed.broadcast(stats, src=0)
    latent_shift, latent_scale = stats.tolist()
latent_shift = args.latent_shift if args.latent_shift is not None else latent_shift
latent_scale = args.latent_scale if args.latent_scale is not None else latent_scale

backbone = dict(model=args.model, preset=args.preset, latent_size=latent_size, in_channels=C, num_classes=num_classes,
                learn_sigma=learn_sigma, class_dropout_prob=args.class_dropout_prob if num_classes > 0 else 0.0)
if ckpt is not None:
    saved = {k: ckpt['config'][k] for k in ('backbone', 'schedule', 'prediction')}
    if saved != {'backbone': backbone, 'schedule': schedule, 'prediction': args.prediction}:
        die(f"{ckpt_path} was trained with {saved}; resume it with the same --model, --preset, --schedule, "
            f"--prediction, --learn_sigma, --class_dropout_prob, --image_size and data.")
try:
    raw_model = build_backbone(**backbone).to(device)
except ValueError as e:
    die(str(e))
if args.grad_checkpointing:
    if args.model != 'dit':
        die("--grad_checkpointing is implemented for --model dit only.")
    raw_model.grad_checkpointing = True
ema = deepcopy(raw_model).eval().requires_grad_(False)
diffusion = Diffusion(schedule, prediction=args.prediction, learn_sigma=learn_sigma, device=device)
opt = torch.optim.AdamW(raw_model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                        fused=device.type == 'cuda')  # one kernel for the whole update on GPUs
scaler = make_grad_scaler(dtype, device)


def load_weights(module, state, what):
    try:
        module.load_state_dict(state)
    except RuntimeError:
        die(f"{what} does not fit --model {args.model} --preset {args.preset} with {C}-channel {latent_size}x"
            f"{latent_size} latents and {num_classes} classes; pass the flags it was trained with.")


step = 0
if args.init_from:  # start from another run's denoiser (fine-tuning); optimizer and step start fresh
    init = load_checkpoint(args.init_from)
    load_weights(raw_model, init['model'], args.init_from)
    load_weights(ema, init.get('ema', init['model']), args.init_from)
    del init
if ckpt is not None:
    load_weights(raw_model, ckpt['model'], ckpt_path)
    load_weights(ema, ckpt['ema'], ckpt_path)
    opt.load_state_dict(ckpt['opt'])
    for group in opt.param_groups:
        group['lr'] = args.lr  # the command line wins over the saved state, so a resume can change it
    scaler.load_state_dict(ckpt['scaler'])
    loader.load_state_dict(ckpt['loader'])
    step = ckpt['step']
    restore_rng_states(ckpt['rng'], dist)
    ckpt = None

model = raw_model
if args.compile:
    model = torch.compile(model)
if dist.ddp:
    model = DDP(model, device_ids=[dist.local_rank] if device.type == 'cuda' else None)

# fixed noise and labels for the periodic grids, so that grids from different steps are comparable
g = torch.Generator().manual_seed(args.seed)
grid_noise = torch.randn(args.num_samples, C, latent_size, latent_size, generator=g).to(device)
grid_labels = (torch.arange(args.num_samples) % num_classes).to(device) if num_classes > 0 else None


@torch.no_grad()
def sample_grid():
    """Samples of the EMA model (DDIM, no guidance), decoded by the autoencoder."""
    with autocast(device, dtype):
        z = diffusion.ddim_sample(lambda x, t: ema(x, t, grid_labels), grid_noise, steps=args.sample_steps)
        x = ae.decode(z.float() / latent_scale + latent_shift).float()
    nrow = int(args.num_samples ** 0.5)
    save_image_grid(x.clamp(-1, 1), os.path.join(args.out_dir, f'samples_{step:07d}.png'), nrow=max(nrow, 1))


def checkpoint():
    rng = gather_rng_states(dist)  # collective: every rank calls it
    if dist.master:
        save_checkpoint({'model': raw_model.state_dict(), 'ema': ema.state_dict(), 'opt': opt.state_dict(),
                         'scaler': scaler.state_dict(), 'step': step, 'rng': rng, 'loader': loader.state_dict(),
                         'latent_scale': latent_scale, 'latent_shift': latent_shift,
                         'config': {**vars(args), 'ae': ae_path, 'backbone': backbone, 'schedule': schedule,
                                    'learn_sigma': learn_sigma, 'image_size': args.image_size}}, ckpt_path)

# -----------------------------------------------------------------------------
# training loop


logger = Logger(args.out_dir, dist.master)
if dist.master:
    with open(os.path.join(args.out_dir, 'config.json'), 'w') as fh:
        json.dump({**vars(args), 'ae': ae_path, 'backbone': backbone, 'schedule': schedule, 'learn_sigma': learn_sigma,
                   'latent_scale': latent_scale, 'latent_shift': latent_shift, 'world_size': dist.world_size,
                   'dtype': dtype}, fh, indent=2)
    n_params = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    print(f"{args.model} {args.preset}: {n_params / 1e6:.2f}M params on {C}x{latent_size}x{latent_size} latents "
          f"(f={f}), {num_classes or 'no'} classes, {schedule} schedule, {args.prediction}-prediction"
          f"{', learned variance' if learn_sigma else ''}; latent shift {latent_shift:.4g}, scale {latent_scale:.4g}; "
          f"{dist.world_size} process(es) on {device}, {dtype}")
progress = tqdm(total=args.max_steps, initial=step, disable=not dist.master, dynamic_ncols=True)
train_time, timed_steps = 0.0, 0  # wall time of training steps only (no sampling, no checkpointing)
while step < args.max_steps:
    t0 = time.time()
    loss_sum = 0.0
    # gradient accumulation that all-reduces only on the last micro-step
    for micro in range(args.grad_accum):
        x, y = next(loader)
        z = (to_latent(x.to(device, non_blocking=True)) - latent_shift) * latent_scale  # (B, C, h, w), ~unit variance
        y = y.to(device) if num_classes > 0 else None
        sync = contextlib.nullcontext() if (not dist.ddp or micro == args.grad_accum - 1) else model.no_sync()
        with sync:
            with autocast(device, dtype):
                loss = diffusion.training_loss(model, z, y).mean()
            scaler.scale(loss / args.grad_accum).backward()
        loss_sum += loss.detach() / args.grad_accum
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, raw_model, args.ema_decay)
    step += 1
    progress.update(1)

    # a non-finite loss stops the run before anything is written: the last checkpoint stays good
    loss_avg = all_reduce_mean(loss_sum.float(), dist)
    if not torch.isfinite(loss_avg):
        progress.close()
        stop_if_non_finite(loss_avg, step, ckpt_path, dist)

    train_time, timed_steps = train_time + time.time() - t0, timed_steps + 1
    if step % args.log_interval == 0 or step == args.max_steps:
        dt, train_time, timed_steps = train_time / timed_steps, 0.0, 0
        latents = args.batch_size * args.grad_accum * dist.world_size
        logger.log(step, loss=loss_avg, step_time=dt, latents_per_sec=latents / dt, lr=args.lr,
                   skipped_images=loader.skipped, **peak_memory(device))
    if (step % args.eval_interval == 0 or step == args.max_steps) and dist.master:
        sample_grid()
    if step % args.ckpt_interval == 0 or step == args.max_steps:
        checkpoint()
progress.close()
if dist.ddp:
    logger.log(step, rank_param_max_diff=rank_param_max_diff(raw_model, dist))
cleanup_distributed()
