r"""
Stage 2: train a diffusion model (LDM UNet or DiT) on the latents of a frozen autoencoder.

  python train_ae.py && python train_ldm.py                  # tiny AE, then a tiny UNet, embedded dataset, CPU is fine
  python train_ldm.py --model dit --preset tiny               # the same with a DiT
  python train_ldm.py --model dit --objective flow            # rectified flow (SiT's velocity loss), sampled by Heun
  torchrun --nproc_per_node=8 train_ldm.py --data /imagenet/train --image_size 256 --ae sd-vae.safetensors \
      --ae_preset sd --model dit --preset DiT-XL/2 --batch_size 32 --cache_latents /fast/latents   # DiT's recipe

Latents are normalised as z = (E(x) - latent_shift) * latent_scale, with shift and scale the mean and 1/std of the
latents of one global batch drawn at random from the data and gathered over ranks (LDM's scale_by_std), fixed for the
run and kept in the checkpoint: two scalars for images, one pair per latent channel for video (--latent_norm). A VQ
autoencoder's latent is taken before quantisation, and decoding quantises (CompVis' VQModelInterface: model.py's
encode_first_stage / decode_first_stage); --ae none diffuses the pixels themselves (LDM-1). The loss is diffusion.py's:
--objective eps or v trains DDPM (diffusion.Diffusion: eps- or v-prediction MSE, or L1 with --diffusion_loss l1 as LDM's
inpainting config, plus L_vlb for learn_sigma models; --beta_start/--beta_end move the schedule's ends as LDM's do),
--objective flow trains rectified flow (diffusion.Flow, as SiT and SD3: --prediction velocity|x0|noise, --time_sampling,
--time_shift), with the same backbones; the checkpoint records which, and sample.py samples it with that family's
samplers. Class-conditional when the data has labels (ImageFolder
with class subfolders), with label dropout for classifier-free guidance; unconditional otherwise.
--cache_latents DIR encodes the data set once, each image and its mirror image, into DIR/latents.npy (a memmap,
N x 2 x C x h x w) and DIR/labels.npy, and trains from there with the same random flips; --cache_size N caches only
a seeded random N of the images (the embedded dataset needs it, being unlimited), or N random crops with
--random_crop. The cache is float16, in random order, read in shuffled chunks (utils/latent_cache.py), and is refused when
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

Text and layouts (--task text | layout, LDM Sec. 3.3): the UNet cross-attends to the output of tau_theta
(model.TextEncoder, LDM's BERTEmbedder), trained with it, over the tokens of each image's caption (tokenizer.py: UTF-8
bytes, or BERT's WordPiece from a vocab.txt) or layout (taming's (class, corner, corner) triples); a share
--cond_dropout_prob of them is dropped to "" (no box) for guidance. Captions: the embedded data's own (the colour and
kind of the largest shapes, the background), or --data with x.txt beside x.png or a captions.jsonl; layouts: the
embedded boxes, or a layout.jsonl. A DiT has no cross-attention, so text and layouts train UNets only.

  python train_ldm.py --task text --ae assets/baseline_mini.safetensors --image_size 32 --out_dir out/ldm_text

"""
import os
import sys
import json
import time
import argparse
import functools
import contextlib
from copy import deepcopy

from utils.cli import (HelpFormatter, DEGRADATIONS, DIFFUSION_LOSSES, FLOW_PREDICTIONS, MASK_KINDS, SCHEDULE_BETAS, SCHEDULES, TASKS,
                 TIME_SAMPLINGS, add_common_args, checked, cuda_visible, set_cpu_threads, stop_on_signals, unit_interval)

# -----------------------------------------------------------------------------
# config, read before torch is imported, so that --help and a mistyped flag answer at once

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
add_common_args(parser, out_dir='out/ldm', lr=1e-4, preset='tiny', batch_size=32, max_steps=5000, eval_interval=500,
                ckpt_interval=2500)
parser.add_argument('--ae', type=str, default='out/ae/ckpt.pt', help="the frozen autoencoder: a train_ae.py checkpoint or public weights; 'none' diffuses pixels (LDM-1)")
parser.add_argument('--ae_preset', type=str, default=None, help="architecture of public --ae weights ('sd', 'flux', CompVis' 'vq-f4', 'kl-f16', ...); not for our checkpoints")
parser.add_argument('--model', type=str, default=None, choices=['unet', 'dit'], help='the denoiser backbone, sized by --preset (unet: tiny, ldm-64, ldm-4, cin256-v2, ...; dit: tiny, DiT-S/2 ...)')
parser.add_argument('--objective', type=str, default='eps', choices=['eps', 'v', 'flow'], help="DDPM with eps- or v-prediction (diffusion.Diffusion), or rectified flow (diffusion.Flow, SiT's and SD3's)")
parser.add_argument('--schedule', type=str, default=None, choices=SCHEDULES, help="DDPM's noise schedule (none: the backbone paper's, unet ldm_linear, dit linear); scaled_linear is SD's")
parser.add_argument('--beta_start', type=checked(float, lo=0, hi=1, lo_open=True, hi_open=True), default=None, help="DDPM's beta_1, CompVis' linear_start (0.0015 in LDM's bsr_sr, inpainting, layout, semantic); default: the --schedule's")
parser.add_argument('--beta_end', type=checked(float, lo=0, hi=1, lo_open=True, hi_open=True), default=None, help="DDPM's beta_T, CompVis' linear_end (0.0155 LDM's bsr_sr; 0.0205 inpainting, layout, semantic); default: the --schedule's")
parser.add_argument('--diffusion_loss', type=str, default='l2', choices=DIFFUSION_LOSSES, help="elementwise loss on eps, v or the flow's target: l2 (the default) or l1 (LDM's inpainting config, CompVis' loss_type)")
parser.add_argument('--lr_warmup', type=checked(int, lo=0), default=0, help="LDM's warm-up (LambdaLinearScheduler): lr linear from 0 to --lr over N steps (10000 in its configs); default 0: none")
parser.add_argument('--learn_sigma', action=argparse.BooleanOptionalAction, default=None, help='DDPM: also learn the variance (iDDPM, with L_vlb); default: on for dit, off for unet; never under flow')
parser.add_argument('--prediction', type=str, default=None, choices=FLOW_PREDICTIONS, help="flow: what the network predicts (default velocity, as SiT); DDPM's eps or v is --objective")
parser.add_argument('--time_sampling', type=str, default='uniform', choices=TIME_SAMPLINGS, help="flow: the density of training times, uniform (SiT) or logit_normal (SD3)")
parser.add_argument('--logit_mean', type=checked(float), default=0.0, help="flow with logit_normal: SD3's location m")
parser.add_argument('--logit_std', type=checked(float, lo=0, lo_open=True), default=1.0, help="flow with logit_normal: SD3's scale s")
parser.add_argument('--time_shift', type=checked(float, lo=0, lo_open=True), default=1.0, help="flow: SD3's time shift s, t' = s t / (1 + (s - 1) t), in training and sampling; 1 = none, > 1 toward noise")
parser.add_argument('--class_dropout_prob', type=checked(float, lo=0, hi=1, hi_open=True), default=0.1, help='label dropout for classifier-free guidance (class-conditional data only)')
parser.add_argument('--ema_decay', type=checked(float, lo=0, hi=1, hi_open=True), default=0.9999, help='EMA decay of the denoiser weights (samples use the EMA)')
parser.add_argument('--ema_warmup', action='store_true', help='EMA decay min(ema_decay, (1 + n) / (10 + n)) at update n, for short runs (DiT has none)')
parser.add_argument('--weight_decay', type=checked(float, lo=0), default=0.0, help='AdamW weight decay (DiT uses 0)')
parser.add_argument('--latent_scale', type=checked(float, lo=0, lo_open=True), default=None, help='override the latent scale (default: 1/std of a random global batch, or the checkpoint\'s)')
parser.add_argument('--latent_shift', type=checked(float), default=None, help='override the latent shift (default: mean of a random global batch, or the checkpoint\'s)')
parser.add_argument('--latent_norm', type=str, default=None, choices=['scalar', 'channel'], help='scale_by_std with one mean and std over all latents, or per channel (none: scalar for images, channel for video)')
parser.add_argument('--cache_latents', type=str, default=None, help='folder for the encoded data set (made on first use, then reused)')
parser.add_argument('--cache_size', type=checked(int, lo=1), default=None, help='with --cache_latents: encode a seeded random N images, or N random crops (needed for endless data and crops)')
parser.add_argument('--grad_checkpointing', action='store_true', help='DiT: recompute activations in the backward pass (less memory, larger batches)')
parser.add_argument('--num_samples', type=checked(int, lo=1), default=16, help='images in the periodic sample grid (EMA model; DDIM, or Heun under flow)')
parser.add_argument('--num_frames', type=checked(int, lo=1), default=1, help="frames per training clip (1 + 4k); 1 = images. N > 1 trains the video DiT on a video autoencoder's latents")
parser.add_argument('--frame_stride', type=checked(int, lo=1), default=1, help='video: take every n-th frame of the source video')
parser.add_argument('--task', type=str, default='none', choices=TASKS, help="conditioning.py: sr, inpaint, semantic concatenate to z_t; text, layout are tokens cross-attended to")
parser.add_argument('--sr_factor', type=checked(int, lo=2), default=4, help='--task sr: the upsampling factor, LR size = image_size / factor; default 4')
parser.add_argument('--degradation', type=str, default='bicubic', choices=DEGRADATIONS, help="--task sr: SR3's bicubic (the default) or bsr_light, LDM's lighter BSR chain (blur, resize, noise, JPEG)")
parser.add_argument('--masks', type=str, default='mixed', choices=MASK_KINDS, help='--task inpaint: LaMa-like masks, thick or thin strokes, boxes, or a mix; default mixed')
parser.add_argument('--mask_area', type=unit_interval, default=(0.05, 0.5), help='--task inpaint: lo,hi, the share of the image a mask covers; default 0.05,0.5')
parser.add_argument('--tokenizer', type=str, default='bytes', help="--task text: 'bytes' (UTF-8, no download) or a BERT vocab.txt or tokenizers JSON (LDM's)")
parser.add_argument('--max_length', type=checked(int, lo=3), default=77, help="--task text: tokens per caption, tau_theta's positions; longer captions are cut (LDM's 77)")
parser.add_argument('--max_objects', type=checked(int, lo=1), default=8, help="--task layout: boxes per image, 3 tokens each (LDM's OpenImages model: 30)")
parser.add_argument('--cond_dropout_prob', type=checked(float, lo=0, hi=1, hi_open=True), default=0.1, help='--task text, layout: share of captions dropped to "" (no box) in training, for guidance')
parser.add_argument('--sample_steps', type=checked(int, lo=1, hi=1000), default=50, help='DDIM (flow: Heun) steps for the periodic sample grid')
args = parser.parse_args()
video = args.num_frames > 1
# On a CPU the paper's recipe (lr 1e-4, EMA 0.9999, latents encoded every step) learns nothing in a CPU budget. Where
# the device is left to the machine (--device auto) and it is a CPU, the run takes the recipe of repro/sweep_ldm_lr.py's
# sweep for the tiny DiT, flag by flag where the user gave none; --device cpu keeps the flags' own defaults.
given = {a.split('=')[0][2:] for a in sys.argv[1:] if a.startswith('--')}  # the flags on the command line
CPU_LR = {('dit', 'tiny', False): 1e-3, ('dit', 'tiny', True): 3e-3}  # (model, preset, video): the sweep's best lr
CPU_RECIPE = dict(model='dit', preset='tiny', ema_decay=0.999, ema_warmup=True, batch_size=32 if video else 64,
                  cache_latents=os.path.join(args.out_dir, 'latent_cache'), num_workers=0)  # cached: no decoding to do
cpu = args.device == 'auto' and not cuda_visible()  # torch, which knows for sure, is not loaded yet
recipe = {}  # the flags the CPU recipe set, to be said (the same on a resume, so that its config matches)
if cpu:
    backbone_given = {'model', 'preset'} & given  # one of the two: the other keeps its own default
    recipe = {k: v for k, v in CPU_RECIPE.items() if k not in given and not (k in ('model', 'preset') and backbone_given)}
    if args.task != 'none':  # a task conditions the UNet on each batch's pixels: no DiT, no latent cache, its own batch
        recipe = {k: v for k, v in recipe.items() if k not in ('model', 'preset', 'cache_latents', 'batch_size', 'num_workers')}
    if 'cache_latents' in recipe and 'cache_size' not in given and (args.data is None or args.random_crop):
        # the embedded set is endless: the miniature's cache sizes, or the latents the run draws if it draws fewer
        recipe['cache_size'] = min(256 if video else 2000, args.max_steps * args.batch_size * args.grad_accum)
    # a UNet predicts v on a CPU: at 8x8 latents after 600 steps an eps-UNet still errs by 0.05 (MSE) at t = 999, which
    # DDIM's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies by 85; its samples left the data's std by 10-20x
    if (recipe.get('model', args.model) or 'unet') == 'unet' and not video and 'objective' not in given:
        recipe['objective'] = 'v'
    vars(args).update(recipe)
    lr = CPU_LR.get((args.model or ('dit' if video else 'unet'), args.preset, video))
    if 'lr' not in given and lr is not None:
        recipe['lr'] = args.lr = lr
args.model = args.model or ('dit' if video else 'unet')  # as train_ae.py's VIDEO_DEFAULTS: video has one backbone
latent_norm = args.latent_norm or ('channel' if video else 'scalar')
flow = args.objective == 'flow'
FLOW_ONLY = ('prediction', 'time_sampling', 'logit_mean', 'logit_std', 'time_shift')  # Flow's arguments, by flag
learn_sigma = args.learn_sigma if args.learn_sigma is not None else args.model == 'dit' and not flow
schedule = None if flow else args.schedule or {'unet': 'ldm_linear', 'dit': 'linear'}[args.model]
# the endpoints (beta_1, beta_T) of the schedule as the checkpoint records them: the schedule's own unless moved
betas = (None, None) if flow else tuple(SCHEDULE_BETAS[schedule][i] if v is None else v
                                        for i, v in enumerate((args.beta_start, args.beta_end)))
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
    if recipe:
        print("train_ldm.py: on a CPU (--device auto), the recipe of repro/sweep_ldm_lr.py where no flag says otherwise: " +
              ' '.join(f"--{k}" if v is True else f"--{k} {v}" for k, v in recipe.items()) +
              ('' if 'lr' in recipe or 'lr' in given else
               f"; no CPU sweep covers --model {args.model} --preset {args.preset}, so --lr stays {args.lr:g}"),
              flush=True)

# the command line is read: now the heavy imports (torch alone takes over a second)
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.common import (die, select_device, setup_distributed, cleanup_distributed, resolve_dtype, autocast,
                    make_grad_scaler, broadcast_latent_norm, all_reduce_mean, seed_everything, gather_rng_states,
                    CheckpointWriter, ema_decay, update_ema, Loader, save_image_grid, save_video_grid, Logger,
                    note_non_finite, stop_if_non_finite, stop_if_weights_non_finite, rank_checksum_diff, peak_memory,
                    check_resume_steps, resume_run, weights_hash, refuse_unused)
from utils.rundir import check_run_dir, prepare_run_dir, no_space_is_an_error, check_output, refuse_overlap
from utils.data import make_dataset, random_subset
from utils.latent_cache import build_latent_cache, file_sha256, dataset_identity
from diffusion import process_from_config
from evaluation.metrics import GUARD_SATURATED, GUARD_STD_RATIO, sample_guard, to_uint8
from denoiser import apply_model, build_backbone, learned_conditioning
from model import decode_first_stage, encode_first_stage
from utils.tokenizer import LayoutTokenizer, load_tokenizer
from utils import conditioning
from utils.weights import PIXELS, load_autoencoder, load_checkpoint

auto = args.device == 'auto'
args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU, as config.json records it
if auto and args.device == 'cpu' and not cpu:
    print("train_ldm.py: torch finds no GPU, though the driver's files suggested one; this run keeps the GPU recipe "
          "(the CPU recipe of repro/sweep_ldm_lr.py takes --device auto on a machine without GPU drivers).", flush=True)


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
    if flow and (args.beta_start is not None or args.beta_end is not None):
        die("--beta_start and --beta_end move DDPM's noise schedule; --objective flow has none.")
    if not flow and betas[0] > betas[1]:
        die(f"--beta_start {betas[0]:g} is above --beta_end {betas[1]:g}; the betas of a noise schedule rise.")
    given = [f'--{k}' for k in FLOW_ONLY if getattr(args, k) != parser.get_default(k)]
    if given and not flow:
        die(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --objective flow only; this run trains DDPM "
            f"(--objective {args.objective}).")
    if flow and args.time_sampling == 'uniform' and {'--logit_mean', '--logit_std'} & set(given):
        die("--logit_mean and --logit_std shape the logit-normal density; pass --time_sampling logit_normal too.")
    if args.task in ('text', 'layout') and (video or args.model != 'unet'):
        die(f"--task {args.task} needs cross-attention to its tokens, which only the UNet has (a DiT would need "
            f"PixArt-style blocks, not built here); train it with --model unet on images.")
    if args.task != 'none' and (video or args.model != 'unet'):
        die(f"--task {args.task} concatenates its condition to the UNet's input; train it with --model unet on images.")
    if args.task == 'layout' and args.random_crop:
        die("--task layout knows its boxes on the centre crop only; drop --random_crop.")
    if args.task == 'text':
        try:  # a missing or unreadable vocabulary costs seconds, not the autoencoder's loading
            load_tokenizer(args.tokenizer)
        except ValueError as e:
            die(str(e))
    if args.task != 'none' and args.cache_latents:
        die(f"--task {args.task} builds its condition from the pixels of each batch (an LR image, a masked image, a label "
            f"map), which the latent cache does not hold; drop --cache_latents.")
    if args.task == 'sr' and args.image_size % args.sr_factor:
        die(f"--image_size {args.image_size} is not a multiple of --sr_factor {args.sr_factor}; the LR image would not "
            f"be a whole number of pixels.")
    if args.task == 'semantic' and args.random_crop:
        die("--task semantic crops the image and its label map alike from the centre; drop --random_crop.")
    if args.cache_latents and (args.data is None or args.random_crop) and args.cache_size is None:
        die("--cache_latents with the embedded dataset or --random_crop needs --cache_size N: there is no end to the "
            "images (or crops) to cache.")
    refuse_unused(sys.argv[1:], [('--cache_size', args.cache_latents, 'only applies with --cache_latents'),
                                 ('--frame_stride', video, 'only applies to video (--num_frames > 1)'),
                                 ('--allow_changes', args.resume, 'only applies with --resume'),
                                 ('--sr_factor', args.task == 'sr', 'only applies to --task sr'),
                                 ('--degradation', args.task == 'sr', 'only applies to --task sr'),
                                 ('--masks', args.task == 'inpaint', 'only applies to --task inpaint'),
                                 ('--mask_area', args.task == 'inpaint', 'only applies to --task inpaint'),
                                 ('--tokenizer', args.task == 'text', 'only applies to --task text'),
                                 ('--max_length', args.task == 'text', 'only applies to --task text'),
                                 ('--max_objects', args.task == 'layout', 'only applies to --task layout'),
                                 ('--cond_dropout_prob', args.task in ('text', 'layout'), 'only applies to --task text '
                                  'or layout')])
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


# CompVis' VQModelInterface: the LDM learns a VQ autoencoder's latent before quantisation, and decoding quantises. A run
# of an earlier train_ldm.py learned the quantised latent: its config has no 'vq_latents', and it is not resumed.
vq_latents = 'pre_quantization' if ae.cfg.regularizer == 'vq' else None
if saved and saved.get('vq_latents') != vq_latents:
    die(f"{ckpt_path} was trained on the quantised latents of its VQ autoencoder by an earlier train_ldm.py, and this "
        f"one trains on the latents before quantisation, as LDM; start a new run in another --out_dir.")


@torch.no_grad()
def encode(x):  # x (B, 3, [T,] H, W) in [-1, 1] -> unnormalised latents (B, C, [T',] h, w), a posterior sample as LDM, DiT
    with autocast(device, dtype):
        z = encode_first_stage(ae, x, sample=True)
    return z.float()

# -----------------------------------------------------------------------------
# data: images (encoded on the fly) or the latent cache; every rank shares the seed and takes its own shard of each
# epoch's permutation

images = make_dataset(args.data, args.image_size, seed=args.seed, train=True, random_crop=args.random_crop,
                      num_frames=args.num_frames, frame_stride=args.frame_stride,
                      segmentation=args.task == 'semantic', annotation={'text': 'caption', 'layout': 'layout'}.get(
                          args.task), max_objects=args.max_objects, style=args.dataset)  # video: clips (3, T, H, W)
# text and layout: the tokenizer of their captions or boxes (checked in check_args), recorded whole in the checkpoint
tokenizer = (load_tokenizer(args.tokenizer) if args.task == 'text' else
             LayoutTokenizer(images.layout_classes, max_objects=args.max_objects) if args.task == 'layout' else None)
# the task: what its condition is made of (recorded in the checkpoint), and the data source that makes it per item
cond_cfg = conditioning.task_config(args.task, args.sr_factor, args.degradation, args.masks, args.mask_area,
                                    getattr(images, 'num_labels', 0), tokenizer, args.max_length, args.cond_dropout_prob)
trained_task = saved.get('conditioning', {'task': 'none'}) if saved else cond_cfg  # older checkpoints: no task
if trained_task != cond_cfg:
    die(f"{ckpt_path} was trained with the condition {conditioning.describe(trained_task)}, not "
        f"{conditioning.describe(cond_cfg)}; resume it with the same --task, "
        f"its settings and data.")
if args.task != 'none':
    dataset = conditioning.TaskData(images, cond_cfg, args.seed)  # items {'image', 'LR_image' | 'mask' | 'segmentation'}
elif args.cache_latents:
    num_items = args.cache_size if args.random_crop or args.data is None else min(args.cache_size or len(images), len(images))
    key = {'ae_sha256': file_sha256(ae_path) if ae_path != PIXELS else PIXELS, 'data': dataset_identity(images, args.data, args.seed),
           'image_size': args.image_size, 'random_crop': args.random_crop, 'cache_size': num_items,
           'seed': args.seed, 'latent_shape': latent_shape}
    if video:
        key |= {'num_frames': args.num_frames, 'frame_stride': args.frame_stride}
    if vq_latents:  # a cache of quantised latents, made by an earlier train_ldm.py, is not one of these
        key |= {'vq_latents': vq_latents}
    dataset = build_latent_cache(args.cache_latents, images, encode, latent_shape, key, num_items, args.batch_size, dist,
                                 args.seed, args.random_crop, args.num_workers)
else:
    dataset = images
num_classes = dataset.num_classes
loader = Loader(dataset, args.batch_size, args.seed, dist, num_workers=args.num_workers)
run_config = {**vars(args), **objective, 'num_images': len(dataset), 'schedule': schedule, 'beta_start': betas[0],
              'beta_end': betas[1], 'learn_sigma': learn_sigma, 'latent_norm': latent_norm,
              'vq_latents': vq_latents}  # the resolved defaults, as saved: a resume compares like with like


def pixels(x):  # an item's images: a task's items are dicts (conditioning.TaskData)
    return x['image'] if isinstance(x, dict) else x


def to_latent(x):
    """A loader batch -> unnormalised latents: cached batches already are latents."""
    return x if args.cache_latents else encode(x)


def get_input(x, y):
    """A loader batch -> (z, cond), as CompVis' get_input: the normalised latents (B, C, [T',] h, w) of its images and
    the condition dict that model.apply_model feeds to the denoiser (conditioning.get_input, plus the labels)."""
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v  # captions stay strings
             for k, v in (x if isinstance(x, dict) else {'image': x}).items()}
    z = (to_latent(batch['image']) - shift) * scale
    cond = conditioning.get_input(cond_cfg, batch, lambda v: (encode(v) - shift) * scale, z.shape[-2:],
                                  dropout=cond_cfg.get('cond_dropout_prob', 0.0), device=device)
    return z, {**cond, 'y': y.to(device) if num_classes > 0 else None}

# -----------------------------------------------------------------------------
# latent normalisation (LDM's scale_by_std), the denoiser, EMA, optimizer

if ckpt is not None:
    latent_shift, latent_scale = ckpt['latent_shift'], ckpt['latent_scale']
else:  # LDM's scale_by_std: mean and 1/std of one global batch, a seeded random sample of the data split over ranks
    mine = random_subset(dataset, args.batch_size * dist.world_size, args.seed)[dist.rank::dist.world_size]
    z = to_latent(torch.stack([pixels(dataset[i][0]) for i in mine]).to(device)).double()
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
if dist.master:  # data latents, the guard's reference for the periodic samples (metrics.sample_guard)
    z_ref = (to_latent(torch.stack([pixels(dataset[i][0]) for i in random_subset(dataset, 64, args.seed + 1)]).to(device)) -
             shift) * scale

backbone = dict(model=args.model, preset=args.preset, latent_size=latent_size, in_channels=C, num_classes=num_classes,
                learn_sigma=learn_sigma, class_dropout_prob=args.class_dropout_prob if num_classes > 0 else 0.0)
if args.task in ('text', 'layout'):  # the UNet's tau_theta over the tokenizer's vocabulary
    backbone['text_encoder'] = {'vocab_size': tokenizer.vocab_size, 'max_length': cond_cfg['max_length']}
elif args.task != 'none':  # the channels concatenated to z_t; unconditional backbones keep their old config
    backbone['cond_channels'] = conditioning.concat_channels(cond_cfg, C)
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
process = process_from_config(run_config, device)  # Diffusion or Flow: the one rebuild, as sample.py's and the probe's
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
                      lrs={'opt': args.lr}, exact=('cache_latents', 'cache_size', *FLOW_ONLY[1:], 'beta_start', 'beta_end',
                                                     'diffusion_loss', 'lr_warmup'),
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
if args.task != 'none':  # a task's grid: the conditions of a fixed seeded set of items, and their images beside
    grid_items = [dataset[i][0] for i in random_subset(dataset, args.num_samples, args.seed)]
    grid_batch = {k: torch.stack([it[k] for it in grid_items]).to(device) if torch.is_tensor(grid_items[0][k])
                  else [it[k] for it in grid_items] for k in grid_items[0]}  # captions: a list of strings


@torch.no_grad()
def sample_grid():
    """Samples of the EMA model (DDIM, or Heun under flow; no guidance), decoded by the autoencoder."""
    cond = {'y': grid_labels}
    with autocast(device, dtype):
        if args.task != 'none':
            cond |= conditioning.get_input(cond_cfg, grid_batch, lambda v: (encode(v) - shift) * scale, latent_shape[-2:],
                                           device=device)
            cond = learned_conditioning(ema, cond)  # text and layout: tau_theta once, not at every step
        model_fn = functools.partial(apply_model, ema, cond=cond)
        if flow:
            z = process.ode_sample(model_fn, grid_noise, steps=args.sample_steps, solver='heun')
        else:
            z = process.ddim_sample(model_fn, grid_noise, steps=args.sample_steps)
        x = decode_first_stage(ae, z.float() / scale + shift).float()
    guard = sample_guard(z, z_ref, x)  # do the samples look like data latents, and decode to unsaturated images?
    logger.log(step, guard_ok=guard['ok'], guard_std_ratio_min=min(guard['std_ratio']),
               guard_std_ratio_max=max(guard['std_ratio']), guard_saturated=guard['saturated'])
    if not guard['ok']:
        lo, hi = GUARD_STD_RATIO
        tqdm.write(f"train_ldm.py: the samples at step {step} fail the guard: latent std {min(guard['std_ratio']):.2f}-"
                   f"{max(guard['std_ratio']):.2f} of the data's per channel (ok: {lo:g}-{hi:g}), "
                   f"{guard['saturated']:.0%} of pixels saturated (ok: at most {GUARD_SATURATED:.0%}); the LDM has not "
                   f"learned to sample yet.")
    if video:  # (B, 3, T, H, W) -> uint8 (B, T, H, W, 3) -> samples_STEP/grid.mp4, grid.gif, grid_frames.png
        clips = to_uint8(x).permute(0, 2, 3, 4, 1).cpu().numpy()
        folder = os.path.join(args.out_dir, f'samples_{step:07d}')
        os.makedirs(folder, exist_ok=True)
        logger.image('samples', save_video_grid(clips, folder)[2], step)  # grid_frames.png
        return
    nrow = int(args.num_samples ** 0.5)
    if args.task != 'none':  # the targets' rows above the samples' rows
        nrow, x = max(nrow, 1), torch.cat([grid_batch['image'], x])
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
                  'image_size': args.image_size, 'conditioning': cond_cfg}
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
                   'conditioning': cond_cfg,
                   'latent_scale': latent_scale, 'latent_shift': latent_shift, 'world_size': dist.world_size,
                   'dtype': dtype}, fh, indent=2)
    n_params = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else f"({', '.join(f'{a:.3g}' for a in v)})"  # noqa: E731
    frames = f"{latent_frames}x" if video else ''
    if flow:
        times = args.time_sampling + (f' ({args.logit_mean:g}, {args.logit_std:g})' if args.time_sampling != 'uniform' else '')
        trains = f"rectified flow, {objective['prediction']}-prediction, {times} times, shift {args.time_shift:g}"
    else:
        trains = (f"{schedule} schedule (beta {betas[0]:g} to {betas[1]:g}), {args.objective}-prediction"
                  f"{', learned variance' if learn_sigma else ''}")
    trains += f", {args.diffusion_loss} loss" + (f", lr warm-up over {args.lr_warmup} steps" if args.lr_warmup else '')
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
    # LDM's LambdaLinearScheduler (f_start 1e-6, f_max 1): lr_n = lr (f_start + (1 - f_start) n / N) for n < N, then lr
    lr = args.lr * (1e-6 + (1 - 1e-6) * step / args.lr_warmup) if step < args.lr_warmup else args.lr
    for group in opt.param_groups:
        group['lr'] = lr  # a function of the step alone, so a resumed run continues the same schedule
    loss_sum = 0.0
    # gradient accumulation that all-reduces only on the last micro-step
    for micro in range(args.grad_accum):
        z, cond = get_input(*next(loader))  # z (B, C, [T',] h, w), ~unit variance
        sync = contextlib.nullcontext() if (not dist.ddp or micro == args.grad_accum - 1) else model.no_sync()
        with sync:
            with autocast(device, dtype):
                loss = process.training_loss(functools.partial(apply_model, model), z, cond).mean()
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
        logger.log(step, loss=all_reduce_mean(loss_sum.float(), dist), step_time=dt, latents_per_sec=latents / dt, lr=lr,
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
