r"""
Stage 1: train or fine-tune the autoencoder (E, D) of latent diffusion, optionally with the scale-equivariance (SE)
regulariser of Skorokhodov et al. (ICML 2025), which makes its latents more "diffusable".

  python train_ae.py --se_weight 0.25                        # tiny AE, embedded dead-leaves data, CPU is fine
  torchrun --nproc_per_node=8 train_ae.py --se_weight 0.25   # the same under DDP
  torchrun --nproc_per_node=8 train_ae.py --data /imagenet/train --image_size 256 --preset flux \
      --init_from flux_ae.safetensors --se_weight 0.25 --max_steps 20000   # the paper's fine-tuning recipe
  python train_ae.py --num_frames 17 --se_weight 0.25       # tiny causal 3D video AE, embedded moving dead leaves
  torchrun --nproc_per_node=8 train_ae.py --num_frames 17 --data /kinetics700/train --image_size 256 \
      --preset cogvideox --init_from cogvideox_vae.safetensors --se_weight 0.25 --se_scales 2,4   # the paper's video recipe

Generator loss (LDM's LPIPSWithDiscriminator, plus SE):
  L = |x - D(z)| + lpips_weight * LPIPS(x, D(z))                         reconstruction, z = E(x)
    + kl_weight * KL(q(z|x) || N(0, I))  (or the VQ codebook + commitment losses)
    + adaptive_weight * disc_weight * -D_patch(D(z))                     after disc_start
    + se_weight * (|down(x) - D(down(z))| + lpips_weight * LPIPS(down(x), D(down(z))))
    + hf_reg_weight * mean |DCT(z)_uv| ((u + v) / 7)^p / 4                 optional, the authors' latent HF penalty
where down() shrinks x and z by the same factor s drawn from --se_scales (model.scale_equivariance_loss) with the
authors' operator, bilinear with align_corners=True and no antialiasing (--se_down; 'mean' is their other one,
'antialiased' ours). --se_ignore_lpips leaves LPIPS off the SE term, as their ignore_lpips; --se_mode dct_cut replaces
the downsampling by their DCT cut: the same random share, up to --se_max_cut, of the high frequencies cut from z (8x8
tiles) and from x (8f x 8f tiles). The discriminator sees only full-resolution reconstructions (hinge loss, or taming's
vanilla with --disc_loss vanilla). --rec_loss l2 makes the pixel term |x - D(z)| a squared error, in L_rec and in SE.

Video (--num_frames N > 1, N = 1 + 4k): the causal 3D autoencoder of model.py (presets tiny, cogvideox) on clips
(B, 3, N, H, W). L1 is over all pixels of the clip, LPIPS and the PatchGAN discriminator see every frame as an image
(a frame discriminator), and down() shrinks each frame of x and each latent frame of z; time is untouched, as in the
paper, unless --se_temporal_scales also shrinks it in both by a factor drawn from that list: the first frame kept
apart, the others averaged in groups, as the comment on the authors' temporal_scale_factors intends (their released
einops.reduce pattern keeps every frame, so it shrinks no time; ours does). --se_temporal is '2'. Video runs
default to --image_size 32 --batch_size 1 --max_steps 200 --lr 0.0002 --se_scales 2 --out_dir out/video_ae
--eval_interval 100 --ckpt_interval 100 (VIDEO_DEFAULTS), sized for two CPU cores.

"""
import os
import sys
import json
import time
import random
import argparse
import contextlib
from copy import deepcopy
from dataclasses import asdict, replace

from utils.cli import (HelpFormatter, VIDEO_DEFAULTS, DISC_LOSSES, REC_LOSSES, SE_DOWNSAMPLING, add_common_args, checked, int_list,
                 set_cpu_threads, stop_on_signals)

# -----------------------------------------------------------------------------
# config, read before torch is imported, so that --help and a mistyped flag answer at once

pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
pre.add_argument('--num_frames', type=str, default='1')  # only which defaults apply; the real parser checks the value
video = pre.parse_known_args()[0].num_frames.strip() != '1'
parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
add_common_args(parser, out_dir='out/ae', lr=1e-4)
parser.add_argument('--num_frames', type=checked(int, lo=1), default=1, help='frames per training clip (1 + 4k); 1 = images. N > 1 trains the video AE presets with VIDEO_DEFAULTS')
parser.add_argument('--frame_stride', type=checked(int, lo=1), default=1, help='video: take every n-th frame of the source video')
parser.add_argument('--se_temporal', action='store_true', help='video: SE also halves time in x and z, as --se_temporal_scales 2 (needs N = 1 + 8k)')
parser.add_argument('--se_temporal_scales', type=int_list(2), default='', help="video: temporal factors, one drawn per step, by which SE also shrinks time in x and z (first frame kept)")
parser.add_argument('--regularizer', type=str, default=None, choices=['kl', 'vq'], help="latent regulariser; default: the preset's")
parser.add_argument('--kl_weight', type=checked(float, lo=0), default=1e-6, help="weight of the KL term (LDM's convention: KL summed over the latent vs. L1 summed over pixels)")
parser.add_argument('--lpips_weight', type=checked(float, lo=0), default=1.0, help='weight of the LPIPS perceptual loss; 0 disables it (no VGG weights needed)')
parser.add_argument('--rec_loss', type=str, default='l1', choices=REC_LOSSES, help="the pixel term of L_rec (and of SE's distance): l1 (LDM's, the default) or l2 (eq. 1 as an MSE)")
parser.add_argument('--disc_loss', type=str, default='hinge', choices=DISC_LOSSES, help="the discriminator's loss: hinge (LDM's, the default) or vanilla (taming's vanilla_d_loss, the GAN of eq. 3)")
parser.add_argument('--disc_weight', type=checked(float, lo=0), default=0.5, help='weight of the adversarial loss (times the adaptive weight)')
parser.add_argument('--disc_start', type=checked(int, lo=0), default=None, help='step at which the adversarial loss switches on; none: 0 when fine-tuning (--init_from), else 50001 (LDM)')
parser.add_argument('--disc_lr', type=checked(float, lo=0, lo_open=True), default=None, help='discriminator learning rate; default: --lr')
parser.add_argument('--se_weight', type=checked(float, lo=0), default=0.0, help='scale-equivariance loss weight (paper: 0.25); 0 = baseline')
parser.add_argument('--se_scales', type=int_list(2), default='2,4', help="SE's downsampling factors, one drawn uniformly per step (the authors' scale_factors 0.5, 0.25 are 2, 4 here)")
parser.add_argument('--warmup_steps', type=checked(int, lo=0), default=0, help='linear learning-rate warm-up of the autoencoder over this many steps (0: none)')
parser.add_argument('--z_channels', type=checked(int, lo=1), default=None, help="latent channels; default: the preset's (the paper's Fig. 2 varies it)")
parser.add_argument('--ch_mult', type=int_list(1), default=None, help="width of each level over ch, e.g. '1,2,4': f = 2^(levels - 1); default: the preset's")
parser.add_argument('--attn_resolutions', type=int_list(1), default=None, help="CompVis': attention in the levels whose feature size at --image_size is listed ('' none); default: the preset's")
parser.add_argument('--n_embed', type=checked(int, lo=2), default=None, help="VQ codebook size; default: the preset's")
parser.add_argument('--se_down', type=str, default='bilinear', choices=SE_DOWNSAMPLING,
                    help="how SE shrinks x and z: the authors' 'bilinear' (align_corners, no antialiasing) or 'mean'; 'antialiased' is ours")
parser.add_argument('--se_mode', type=str, default='downsample', choices=['downsample', 'dct_cut'], help="SE by downsampling (the paper) or by the authors' DCT cut of high frequencies from z and x (--se_max_cut)")
parser.add_argument('--se_max_cut', type=checked(float, lo=0, hi=1, lo_open=True), default=0.5, help='dct_cut: the share of each tile\'s DCT coefficients cut is drawn uniformly in [0, this] every step')
parser.add_argument('--se_detach_z', action='store_true', help="ablation, not the authors': SE's z detached, so SE "
                    "trains the decoder alone")
parser.add_argument('--se_ignore_lpips', action='store_true', help="leave LPIPS off the SE term (L1 only), as the authors' ignore_lpips")
parser.add_argument('--hf_reg_weight', type=checked(float, lo=0), default=0.0, help="weight of the authors' high-frequency penalty on the latents' 8x8 block-DCT amplitudes (0: off)")
parser.add_argument('--hf_reg_power', type=checked(float, lo=0), default=2.0, help='the power p of the high-frequency penalty, which weighs coefficient (u, v) by ((u + v) / 7)^p / 4')
parser.add_argument('--ema_decay', type=checked(float, lo=0, hi=1, hi_open=True), default=0.0, help='EMA of the autoencoder weights (e.g. 0.999); 0 = off')
parser.add_argument('--grad_clip', type=checked(float, lo=0), default=1.0, help='clip the global gradient norm; 0 = off')
parser.add_argument('--num_eval', type=checked(int, lo=1), default=8, help='held-out images in the reconstruction grid and HF-ratio probe')
parser.add_argument('--vgg_weights', type=str, default=None, help='local VGG16 ImageNet weights (vgg16-397923af.pth) for LPIPS')
parser.add_argument('--lpips_lin_weights', type=str, default=None, help='local LPIPS v0.1 linear-head weights (vgg.pth)')
if video:
    parser.set_defaults(**VIDEO_DEFAULTS)
args = parser.parse_args()

se_scales = args.se_scales if args.se_mode == 'downsample' else []
se_time_scales = args.se_temporal_scales or ([2] if args.se_temporal else [])
disc_start = args.disc_start if args.disc_start is not None else (0 if args.init_from else 50001)
# the CPU threads this machine can spare, set while torch can still obey (cli.set_cpu_threads), and a first line at once:
# what runs and where it goes (loading torch, the data and the networks take a while, longer on a busy machine)
threads = set_cpu_threads(reserve=args.num_workers)  # the data workers keep their own cores busy
stop_on_signals()  # Ctrl-C and SIGTERM: one line, and the last checkpoint kept
if os.environ.get('RANK', '0') == '0':
    print(f"train_ae.py: {'fine-tuning ' + args.init_from if args.init_from else 'preset ' + args.preset}, "
          f"{args.image_size} px{f' x {args.num_frames} frames' if video else ''}, {args.data or 'embedded data'}, "
          f"se_weight {args.se_weight:g}, {args.max_steps} steps of batch {args.batch_size} -> {args.out_dir}; {threads}; "
          f"loading torch ...", flush=True)

# the command line is read: now the heavy imports (torch alone takes over a second)
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.common import (die, select_device, setup_distributed, cleanup_distributed, resolve_dtype, autocast,
                    make_grad_scaler, all_reduce_mean, seed_everything, gather_rng_states, CheckpointWriter, update_ema,
                    Loader, save_image_grid, tile_videos, write_mp4, Logger, note_non_finite, stop_if_non_finite,
                    stop_if_weights_non_finite, rank_checksum_diff, peak_memory, check_resume_steps, resume_run,
                    refuse_unused)
from utils.rundir import check_run_dir, prepare_run_dir, no_space_is_an_error
from utils.data import make_dataset, random_subset
from evaluation.metrics import bicubic_at_latent_grid, psnr, rgb_on_latent_grid, to_uint8
from model import AE_PRESETS, DISC_LOSSES, Autoencoder, NLayerDiscriminator, adaptive_gan_weight, codebook_usage, make_ae_config, pixel_loss, dct_cut_equivariance_loss, latent_hf_penalty, se_downsample, causal_time_pool, scale_equivariance_loss, to_frames
from evaluation.perceptual import LPIPS_MIN_SIZE, LPIPS
from utils.spectral import hf_share
from video_model import VIDEO_AE_PRESETS, VideoAutoencoder
from utils.weights import load_autoencoder, load_checkpoint

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU, as config.json records it


def check_args(args):
    """The rules between flags, and every output of an earlier run in --out_dir, checked before anything is built so
    that a mistake costs seconds, not a run. -> (the checkpoint path, the checkpoint to resume or None)."""
    presets = VIDEO_AE_PRESETS if video else AE_PRESETS
    if not args.init_from and args.preset not in presets:
        die(f"--preset {args.preset} is not {'a video' if video else 'an'} autoencoder preset; "
            f"choose one of {', '.join(presets)}.")
    if video and args.regularizer not in (None, 'kl'):
        die("the video autoencoder is KL-regularised; drop --regularizer vq or train on images (--num_frames 1).")
    if video and (args.attn_resolutions is not None or args.n_embed is not None):
        die("--attn_resolutions and --n_embed are for the image autoencoder; drop them or train on images.")
    if args.se_weight > 0 and not args.se_scales:
        die("--se_weight > 0 needs at least one factor in --se_scales, such as '2,4'.")
    if args.se_temporal and args.se_temporal_scales:
        die("--se_temporal is --se_temporal_scales 2; pass one or the other.")
    time_scales = args.se_temporal_scales or ([2] if args.se_temporal else [])
    if time_scales and args.se_mode != 'downsample':
        die("temporal SE shrinks time as the downsampling SE does; drop --se_temporal(_scales) or --se_mode dct_cut.")
    for s in time_scales:  # 1 + 4k frames -> 1 + k latent frames; both keep frame 0 and need k divisible by s
        if not video or (args.num_frames - 1) % (4 * s):
            die(f"temporal SE by {s} keeps the first frame and averages the other 4k frames (and k latent frames) in "
                f"groups of {s}, so --num_frames must be 1 + {4 * s}j; --num_frames {args.num_frames} is not.")
    if args.disc_weight > 0 and disc_start < args.max_steps and args.image_size < 32:
        die(f"the PatchGAN discriminator needs --image_size of at least 32 (got {args.image_size}); "
            f"raise it, or keep the discriminator off with --disc_start {args.max_steps}.")
    smallest = args.image_size // max(args.se_scales) if args.se_weight > 0 else args.image_size  # SE's smallest
    if args.se_ignore_lpips or args.se_mode == 'dct_cut':
        smallest = args.image_size  # no LPIPS on small images
    if args.lpips_weight > 0 and smallest < LPIPS_MIN_SIZE:
        die(f"LPIPS needs images of at least {LPIPS_MIN_SIZE} pixels (VGG16 halves them four times), and --image_size "
            f"{args.image_size} with SE factor {max(args.se_scales)} gives {smallest}; raise --image_size, lower "
            f"--se_scales, or train without LPIPS with --lpips_weight 0.")
    refuse_unused(sys.argv[1:], [
        ('--frame_stride', video, 'only applies to video (--num_frames > 1)'),
        ('--vgg_weights', args.lpips_weight > 0, 'only applies with --lpips_weight > 0'),
        ('--lpips_lin_weights', args.lpips_weight > 0, 'only applies with --lpips_weight > 0'),
        ('--disc_lr', args.disc_weight > 0, 'only applies with --disc_weight > 0'),
        ('--allow_changes', args.resume, 'only applies with --resume')])
    inputs = [(args.data, '--data'), (args.init_from, '--init_from'), (args.vgg_weights, '--vgg_weights'),
              (args.lpips_lin_weights, '--lpips_lin_weights')]
    ckpt_path = check_run_dir(args.out_dir, args.resume, args.overwrite, inputs)
    ckpt = (load_checkpoint(ckpt_path, 'train_ae.py', hint='resume a train_ae.py run, or choose another --out_dir')
            if args.resume else None)
    if ckpt is not None:
        check_resume_steps(ckpt, ckpt_path, args.max_steps)
        if args.ema_decay > 0 and 'ema' not in ckpt:
            die(f"{ckpt_path} has no EMA weights; resume without --ema_decay or start a new run.")
    return ckpt_path, ckpt


ckpt_path, ckpt = check_args(args)

# -----------------------------------------------------------------------------
# init: processes, precision, seeds

dist = setup_distributed(args.device)
device = dist.device
dtype = resolve_dtype(args.dtype, device)
prepare_run_dir(args.out_dir, args.overwrite, dist.master)
seed_everything(args.seed + dist.rank)  # different noise per rank; the data shard differs by construction
if dist.master:
    print(f"train_ae.py: {dist.world_size} process(es) on {device} ({dtype}); preparing the data and the networks ...",
          flush=True)

# -----------------------------------------------------------------------------
# data: the training stream, of which every rank takes its own shard of each epoch's permutation, and a fixed
# held-out batch for the grids and the high-frequency probe (a seeded random sample, not the first files)

dataset = make_dataset(args.data, args.image_size, seed=args.seed, train=True, random_crop=args.random_crop,
                       num_frames=args.num_frames, frame_stride=args.frame_stride, style=args.dataset)
loader = Loader(dataset, args.batch_size, args.seed, dist, num_workers=args.num_workers)
eval_set = make_dataset(args.data, args.image_size, seed=args.seed, train=False, num_frames=args.num_frames,
                        frame_stride=args.frame_stride, style=args.dataset)
x_eval = torch.stack([eval_set[i][0] for i in random_subset(eval_set, args.num_eval, args.seed)]).to(device)

# -----------------------------------------------------------------------------
# models

if args.init_from:
    try:  # our checkpoint (it names its own preset) or public weights made for --preset
        ae = load_autoencoder(args.init_from, preset=args.preset, video=video)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        die(str(e))
    ae_config = ae.cfg
else:
    ae_config = (VIDEO_AE_PRESETS if video else AE_PRESETS)[args.preset]
if video and (args.num_frames - 1) % 2 ** ae_config.temporal_levels:
    die(f"--num_frames {args.num_frames} must be 1 + {2 ** ae_config.temporal_levels}k for the causal layout.")
architecture = {'regularizer': args.regularizer, 'z_channels': args.z_channels, 'n_embed': args.n_embed,
                'ch_mult': tuple(args.ch_mult) if args.ch_mult is not None else None,
                'attn_resolutions': tuple(args.attn_resolutions) if args.attn_resolutions is not None else None}
if args.attn_resolutions is not None:  # the sizes are counted from this run's images (CompVis' ddconfig resolution)
    architecture['resolution'] = args.image_size
for flag, value in architecture.items():
    if value is not None and value != getattr(ae_config, flag):
        if args.init_from:
            die(f"--{flag} {value} differs from the {getattr(ae_config, flag)} {flag} of --init_from.")
        ae_config = replace(ae_config, **{flag: value})
if args.n_embed is not None and ae_config.regularizer != 'vq':
    die("--n_embed is the VQ codebook's size; add --regularizer vq or drop it.")
if args.ch_mult == []:
    die("--ch_mult needs at least one level, such as '1,2,4'.")
sizes = [getattr(ae_config, 'resolution', 0) // 2 ** i for i in range(len(ae_config.ch_mult))]  # each level's feature size
if not video and set(ae_config.attn_resolutions) - set(sizes):
    die(f"attention at {','.join(map(str, ae_config.attn_resolutions))} px (--attn_resolutions, or the preset's) asks "
        f"for a size no level has: the levels' features are {', '.join(map(str, sizes))} px for "
        f"{ae_config.resolution} px images; pass sizes from that list.")
# a checkpoint made before a field existed has the preset's value of it (make_ae_config fills it in)
if ckpt is not None and asdict(make_ae_config(ckpt['config']['preset'], ckpt['config']['ae_config'],
                                              VIDEO_AE_PRESETS if video else None)) != asdict(ae_config):
    saved, now = ckpt['config'], asdict(ae_config)
    then = asdict(make_ae_config(saved['preset'], saved['ae_config'], VIDEO_AE_PRESETS if video else None))
    differ = ', '.join(f"{k} {then.get(k)} in it, {now.get(k)} here" for k in sorted(set(now) | set(then))
                       if then.get(k) != now.get(k))  # the parameters, named (a preset may change)
    die(f"{ckpt_path} is a {saved['ae_config'].get('regularizer', 'kl')} autoencoder of preset {saved['preset']}, not the "
        f"{ae_config.regularizer} one of --preset {args.preset} ({differ}); resume with the flags it was trained with.")
if not args.init_from:
    try:
        ae = (VideoAutoencoder if video else Autoencoder)(ae_config)
    except ValueError as e:  # e.g. a --ch_mult whose widths GroupNorm cannot split
        die(str(e))
ae.to(device).train()
f = ae.downsample_factor
se_largest = max(se_scales, default=1) if args.se_weight > 0 else 1
if args.image_size % (f * se_largest) != 0 and se_largest == 1:
    die(f"--image_size {args.image_size} must be divisible by the autoencoder's downsampling factor {f}.")
if args.image_size % (f * se_largest) != 0:
    die(f"--image_size {args.image_size} must be divisible by the downsampling factor {f} times the largest SE scale "
        f"{se_largest}, so that x and z shrink by the same factor.")
if args.hf_reg_weight > 0 and args.image_size // f < 8:
    die(f"--hf_reg_weight penalises the latent's 8x8 block-DCT spectrum, and --image_size {args.image_size} gives "
        f"{args.image_size // f}x{args.image_size // f} latents; use --image_size {8 * f} or more.")
if args.se_weight > 0 and args.se_mode == 'dct_cut' and args.image_size % (8 * f):
    die(f"--se_mode dct_cut cuts the latent in 8x8 tiles and the image in {8 * f}x{8 * f} tiles; --image_size "
        f"{args.image_size} is not a multiple of {8 * f}.")
disc = NLayerDiscriminator().to(device).train()
lpips = None
if args.lpips_weight > 0:
    try:
        lpips = LPIPS(vgg_weights=args.vgg_weights, lin_weights=args.lpips_lin_weights).to(device).eval()
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        die(f"{e}; pass local copies with --vgg_weights and --lpips_lin_weights, or train without LPIPS with "
            f"--lpips_weight 0.")
    lpips.requires_grad_(False)
ema = deepcopy(ae).eval().requires_grad_(False) if args.ema_decay > 0 else None

fused = device.type == 'cuda'  # one kernel for the whole update on GPUs
opt_g = torch.optim.Adam(ae.parameters(), lr=args.lr, betas=(0.5, 0.9), fused=fused)  # LDM's betas for GAN training
opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_lr or args.lr, betas=(0.5, 0.9), fused=fused)
scaler = make_grad_scaler(dtype, device)

# -----------------------------------------------------------------------------
# resume: a change of the data stream (common.RESUME_EXACT) or of what the model is cannot continue the run exactly

run_config = {**vars(args), 'num_images': len(dataset), 'disc_start': disc_start}  # resolved, as saved
step = 0
if ckpt is not None:
    step = resume_run(ckpt, run_config, args.allow_changes, dist, args.out_dir,
                      states={'model': ae, 'disc': disc, 'ema': ema, 'opt_g': opt_g, 'opt_d': opt_d, 'scaler': scaler,
                              'loader': loader},
                      lrs={'opt_g': args.lr, 'opt_d': args.disc_lr or args.lr},
                      exact=('preset', 'regularizer', 'rec_loss', 'disc_loss'), unsaved=('num_eval',))
    ckpt = None

model = ae
if args.compile:
    model = torch.compile(model)
if dist.ddp:
    # the SE branch decodes through the inner `ae` (model.scale_equivariance_loss) after DDP's forward: its gradients
    # land in the same parameters in the same backward, so DDP all-reduces them with the rest
    model = DDP(model, device_ids=[dist.local_rank] if device.type == 'cuda' else None)
    disc_ddp = DDP(disc, device_ids=[dist.local_rank] if device.type == 'cuda' else None)
else:
    disc_ddp = disc

# -----------------------------------------------------------------------------
# losses

def reconstruction_loss(x, x_rec):
    """L1 (or L2, --rec_loss) + lpips_weight * LPIPS, both per pixel (LPIPS per frame for video), averaged over the
    batch."""
    loss = pixel_loss(x, x_rec, args.rec_loss)
    if lpips is not None:
        loss = loss + args.lpips_weight * lpips(to_frames(x), to_frames(x_rec)).mean()
    return loss


def se_distance(x, x_rec):
    """The SE term's distance: the reconstruction loss, or its pixel term alone with --se_ignore_lpips."""
    return pixel_loss(x, x_rec, args.rec_loss) if args.se_ignore_lpips else reconstruction_loss(x, x_rec)


def discriminate(net, x, x_rec):
    """PatchGAN logits of real and reconstructed images from one forward pass of their concatenation: under DDP a
    second forward before the backward would re-broadcast BatchNorm's buffers in place, which CUDA autograd rejects
    (pytorch/pytorch#110363). The generator's step uses the same joint batch, so both steps see one BatchNorm."""
    logits = net(torch.cat([x, x_rec]))  # (2B, 1, h, w)
    return logits[:len(x)], logits[len(x):]


@torch.no_grad()
def evaluate():
    """Reconstruction grid (inputs, reconstructions, SE branch) and spectral.hf_share of the latent means vs. RGB."""
    net = ema if ema is not None else ae
    net.eval()
    with autocast(device, dtype):
        z, _ = net.encode(x_eval, sample=False)
        x_rec = net.decode(z).float()
        rows, labels = [x_eval, x_rec], ['input', 'reconstruction']
        for s in se_scales if args.se_weight > 0 else []:
            s_t = max(se_time_scales, default=1)
            down = lambda t: causal_time_pool(se_downsample(t, s, args.se_down), factor=s_t) if s_t > 1 else se_downsample(t, s, args.se_down)
            up = lambda t: F.interpolate(t, size=x_eval.shape[2:], mode='nearest')  # shown at full size (and length)
            rows += [up(down(x_eval)), up(net.decode(down(z)).float())]
            factor = f'/{s}' + (f', time /{s_t}' if s_t > 1 else '')
            labels += [f'SE target: down(x), {factor}', f'SE: D(down(z)), {factor}']
    ae.train()
    if video:
        save_video_previews(rows, labels)
    else:
        save_image_grid(torch.cat(rows).clamp(-1, 1), os.path.join(args.out_dir, f'recon_{step:07d}.png'),
                        nrow=len(x_eval), row_labels=labels)
    logger.image('recon', os.path.join(args.out_dir, f'recon_{step:07d}.png'), step)  # video: its frame strip
    # beside the reconstruction, the trivial reference of spectrum.py: bicubic down and up at the latent grid (video:
    # every frame, generous since it keeps all frames and the latent only 1 in 4)
    metrics = {'val_psnr': psnr(x_rec.clamp(-1, 1), x_eval).mean().item(),
               'val_psnr_bicubic': psnr(bicubic_at_latent_grid(x_eval, f), x_eval).mean().item()}
    if min(z.shape[-2:]) >= 8:  # the spectrum works on 8x8 DCT blocks of the latent (of every latent frame)
        rgb = rgb_on_latent_grid(x_eval, z.shape, getattr(ae_config, 'temporal_levels', 0))
        metrics.update(hf_share_latent=hf_share(z.float()), hf_share_rgb=hf_share(rgb))
    return metrics


def save_video_previews(rows, labels):
    """rows: clips (B, 3, T, H, W) of inputs, reconstructions and SE branches -> an MP4 whose frame t shows every clip
    (columns) of every row, and a PNG strip of the first two clips, one row of frames per kind."""
    T = x_eval.shape[2]
    clips = to_uint8(torch.cat(rows).float())  # (rows*B, 3, T, H, W)
    write_mp4(tile_videos(clips.permute(0, 2, 3, 4, 1).cpu().numpy(), nrow=len(x_eval)),
              os.path.join(args.out_dir, f'recon_{step:07d}.mp4'))
    clips = range(min(2, len(x_eval)))
    strip = torch.cat([r[i].transpose(0, 1) for i in clips for r in rows])  # (2*rows*T, 3, H, W)
    save_image_grid(strip.clamp(-1, 1), os.path.join(args.out_dir, f'recon_{step:07d}.png'), nrow=T,
                    row_labels=[f'clip {i}: {label}' for i in clips for label in labels])


def checkpoint():
    global saved_step
    stop_if_non_finite(first_bad_step, ckpt_path, dist, progress, saved_step)  # a non-finite loss is never saved
    stop_if_weights_non_finite([ae, disc, ema, opt_g, opt_d], step, ckpt_path, saved_step, dist, progress)
    rng = gather_rng_states(dist)  # collective: every rank calls it
    if dist.master:
        ckpt = {'model': ae.state_dict(), 'disc': disc.state_dict(), 'opt_g': opt_g.state_dict(),
                'opt_d': opt_d.state_dict(), 'scaler': scaler.state_dict(), 'step': step, 'rng': rng,
                'loader': loader.state_dict(),
                'config': {**run_config, 'ae_config': asdict(ae_config)}}
        if ema is not None:
            ckpt['ema'] = ema.state_dict()
        writer.save({ckpt_path: ckpt})
    saved_step = step

# -----------------------------------------------------------------------------
# training loop

logger = Logger(args.out_dir, dist.master, args.tensorboard, step)
if dist.master:
    with no_space_is_an_error(args.out_dir), open(os.path.join(args.out_dir, 'config.json'), 'w') as fh:
        json.dump({**run_config, 'ae_config': asdict(ae_config), 'world_size': dist.world_size, 'dtype': dtype}, fh, indent=2)
    n_params = sum(p.numel() for p in ae.parameters())
    print(f"autoencoder {n_params / 1e6:.2f}M params, f={f}, z={ae_config.z_channels}, {ae_config.regularizer}; "
          f"{dist.world_size} process(es) on {device}, {dtype}; se_weight {args.se_weight}, scales {se_scales}")
pixels = 3 * args.num_frames * args.image_size ** 2
# smoothing=0: the time left from the mean time a step has taken so far (evaluations included); tqdm's default, a
# moving average of the last few steps, swung between 5 min and 2.5 h with each evaluation and each busy second
progress = tqdm(total=args.max_steps, initial=step, disable=not dist.master, dynamic_ncols=True, smoothing=0)
writer = CheckpointWriter()
first_bad_step = torch.full((), float('inf'), dtype=torch.float64, device=device)  # inf: every loss so far finite
saved_step = step if args.resume else None  # the step of the checkpoint on disk that this run wrote or resumed
train_time, timed_steps = 0.0, 0  # wall time of training steps only (no evaluation, no checkpointing)
while step < args.max_steps:
    t0 = time.time()
    lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else args.lr
    for group in opt_g.param_groups:
        group['lr'] = lr  # a function of the step alone, so a resumed run continues the same schedule
    use_disc = step >= disc_start and args.disc_weight > 0
    batches, terms = [], {}
    # ---- autoencoder (generator) step, with gradient accumulation that syncs only on the last micro-step
    for micro in range(args.grad_accum):
        x, _ = next(loader)
        x = x.to(device, non_blocking=True)
        se_scale = random.choice(se_scales) if args.se_weight > 0 and se_scales else 0
        se_time = random.choice(se_time_scales) if se_scale and se_time_scales else 1
        cut = random.uniform(0, args.se_max_cut) if args.se_weight > 0 and args.se_mode == 'dct_cut' else None
        sync = contextlib.nullcontext() if (not dist.ddp or micro == args.grad_accum - 1) else model.no_sync()
        with sync:
            with autocast(device, dtype):
                x_rec, z, reg_loss = model(x)  # z (B, C, H/f, W/f), a posterior sample for KL
                rec = reconstruction_loss(x, x_rec)
                if ae_config.regularizer == 'kl':
                    reg = args.kl_weight * reg_loss / pixels  # KL summed over the latent, per pixel (LDM's balance)
                else:
                    reg = reg_loss  # VQ codebook + commitment losses (LDM's codebook_weight 1)
                loss = rec + reg
                if se_scale or cut is not None:
                    if cut is None:
                        se, _ = scale_equivariance_loss(ae, x, z.detach() if args.se_detach_z else z, se_scale,
                                                        se_distance, args.se_down, se_time)
                    else:
                        se, _ = dct_cut_equivariance_loss(ae, x, z, cut, se_distance)
                    loss = loss + args.se_weight * se
                    terms['se'] = terms.get('se', 0) + se.detach() / args.grad_accum
                if args.hf_reg_weight > 0:
                    hf_reg = latent_hf_penalty(z.float(), power=args.hf_reg_power).mean()
                    loss = loss + args.hf_reg_weight * hf_reg
                    terms['hf_reg'] = terms.get('hf_reg', 0) + hf_reg.detach() / args.grad_accum
                if use_disc:
                    disc.requires_grad_(False)  # the generator's loss must not train the discriminator
                    g_loss = -discriminate(disc, to_frames(x), to_frames(x_rec))[1].mean()
                    disc.requires_grad_(True)
                    w = adaptive_gan_weight(rec, g_loss, ae.last_layer(), pixels)  # LDM's lambda in per-pixel units
                    loss = loss + w * args.disc_weight * g_loss
                    terms['g'] = terms.get('g', 0) + g_loss.detach() / args.grad_accum
                    terms['adaptive_w'] = w
            scaler.scale(loss / args.grad_accum).backward()
        terms['loss'] = terms.get('loss', 0) + loss.detach() / args.grad_accum
        terms['rec'] = terms.get('rec', 0) + rec.detach() / args.grad_accum
        terms['reg'] = terms.get('reg', 0) + reg.detach() / args.grad_accum
        batches.append((x, x_rec.detach()))
    scaler.unscale_(opt_g)
    terms['grad_norm'] = nn.utils.clip_grad_norm_(ae.parameters(), args.grad_clip if args.grad_clip > 0 else float('inf'))
    # ---- discriminator step on the same batches (hinge or vanilla loss, --disc_loss)
    if use_disc:
        for micro, (x, x_rec) in enumerate(batches):
            sync = contextlib.nullcontext() if (not dist.ddp or micro == args.grad_accum - 1) else disc_ddp.no_sync()
            with sync:
                with autocast(device, dtype):
                    d_loss = DISC_LOSSES[args.disc_loss](*discriminate(disc_ddp, to_frames(x), to_frames(x_rec)))
                scaler.scale(d_loss / args.grad_accum).backward()
            terms['d'] = terms.get('d', 0) + d_loss.detach() / args.grad_accum
        scaler.unscale_(opt_d)
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(disc.parameters(), args.grad_clip)
        scaler.step(opt_d)
    scaler.step(opt_g)
    scaler.update()  # once, after both optimizers
    opt_g.zero_grad(set_to_none=True)
    opt_d.zero_grad(set_to_none=True)
    if ema is not None:
        update_ema(ema, ae, args.ema_decay)
    step += 1
    progress.update(1)

    # ---- a non-finite loss is noted on the device (no host sync); the host checks the note at every log line,
    # evaluation and checkpoint, and stops before anything is written, so the last checkpoint stays good
    first_bad_step = note_non_finite(first_bad_step, terms['loss'].detach(), step)
    if step % args.log_interval == 0 or step % args.eval_interval == 0 or step == args.max_steps:  # checkpoint() too
        stop_if_non_finite(first_bad_step, ckpt_path, dist, progress, saved_step)  # the host waits for the GPU here

    train_time, timed_steps = train_time + time.time() - t0, timed_steps + 1
    if step % args.log_interval == 0 or step == args.max_steps:
        dt, train_time, timed_steps = train_time / timed_steps, 0.0, 0
        images = args.batch_size * args.grad_accum * dist.world_size * args.num_frames  # video: frames
        if ae_config.regularizer == 'vq':  # of the last micro-batch's codes, on this rank (CompVis logs the same)
            terms['perplexity'], terms['codebook_usage'] = codebook_usage(ae.quantize.nearest(z.detach().float()),
                                                                          ae_config.n_embed)
        logger.log(step, **{k: (all_reduce_mean(v.float(), dist) if torch.is_tensor(v) else v) for k, v in terms.items()},
                   step_time=dt, images_per_sec=images / dt, skipped_images=loader.skipped(), lr=lr,
                   **peak_memory(device))
    if step % args.ckpt_interval == 0 or step == args.max_steps:
        checkpoint()  # before the optional evaluation, so that nothing it does can cost the run
    if step % args.eval_interval == 0 or step == args.max_steps:
        if dist.master:
            logger.log(step, **evaluate())
progress.close()
writer.wait()
if dist.ddp:
    logger.log(step, rank_checksum_diff=max(rank_checksum_diff(ae, dist), rank_checksum_diff(disc, dist)))
if dist.master:  # where everything went, so that nobody has to look
    print(f"done at step {step}: checkpoint {ckpt_path}, log {os.path.join(args.out_dir, 'log.jsonl')}, previews "
          f"{os.path.join(args.out_dir, 'recon_*.' + ('mp4/png' if video else 'png'))}")
cleanup_distributed()
