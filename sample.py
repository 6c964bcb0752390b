r"""
Sample a trained latent diffusion model: writes out_dir/grid.png, one PNG per sample (out_dir/images/000000.png, ...)
and out_dir/samples.npz (uint8 N x H x W x 3 under arr_0, the format of ADM's evaluator and of eval_fid.py).
A video model (train_ldm.py --num_frames) writes one MP4 per sample (out_dir/videos/000000.mp4, ...), the preview
grid.mp4, grid.gif and grid_frames.png (first frames above middle frames), and samples.npz of uint8 N x T x H x W x 3.

  python sample.py --ckpt out/ldm/ckpt.pt                                     # 16 samples, DDIM 50 steps, EMA weights
                                                            # (a --objective flow model: Heun 50 steps, 99 evaluations)
  python sample.py --ckpt out/ldm/ckpt.pt --sampler ddpm --steps 250 --cfg_scale 1.5 --classes 3,7
  python sample.py --ckpt out/ldm/ckpt.pt --sampler plms --steps 50       # LDM's txt2img --plms: timesteps 981, ..., 1
  torchrun --nproc_per_node=8 sample.py --ckpt out/ldm/ema.pt --num_samples 50000 --sampler ddpm --steps 250 \
      --cfg_scale 1.5 --cfg_channels 3          # DiT's FID-50K protocol (ema.pt: the EMA-only export, 1/4 the size)
  python sample.py --ckpt out/ldm/ema.pt --input photos/ --strength 0.3   # SDEdit: the last 15 of 50 DDIM steps
      # from each image's latent noised to timestep 285, as diffusers' img2img; strength 0 gives the reconstruction

The checkpoint's objective picks the sampler family: DDPM models (--objective eps, v) sample with ancestral DDPM or
DDIM over ADM's respaced timesteps, or as LDM does, with DDIM (--spacing ldm) or PLMS over CompVis' timesteps
1, 21, ..., 981, which end on timestep 0 (diffusers' steps_offset=1, set_alpha_to_one=False); rectified-flow models
(--objective flow) with the Euler or Heun ODE solver or SiT's Euler-Maruyama SDE (diffusion.Flow), on the time grid of
the checkpoint's time shift. --cfg_interval lo,hi guides only at times t in [lo, hi] (LightningDiT's interval; t = 0
data, t = 1 noise); for a DDPM model t is the flow time of the same noise level, so one interval means one range of
noise levels under both families.

A text or layout model (train_ldm.py --task text | layout) samples --n_samples per --prompt (repeatable) or per line of
--prompt_file, prompt-major as CompVis' txt2img, and guides as eps(x_t, neg) + s (eps(x_t, c) - eps(x_t, neg)) with neg
the --negative_prompt ("" by default, LDM's null); the prompts go to prompts.txt and samples.npz (prompts), in order:

  python sample.py --ckpt out/ldm_text/ema.pt --prompt "a red disk and a blue rectangle on a green background" \
      --n_samples 8 --cfg_scale 3
  python sample.py --ckpt out/ldm_layout/ema.pt --prompt "red disk 0.1 0.1 0.6 0.6; blue rectangle 0.5 0.5 1 1"

Sample i draws all its noise from its own generator, seeded with numpy's SeedSequence(seed, spawn_key=(i,)). A
class-conditional model's labels follow --labels: 'random' draws each uniformly from --classes (all classes by default),
as DiT's sample_ddp.py, here all at once from SeedSequence(seed)'s generator; 'balanced' gives sample i the class
classes[i % len(classes)], equal counts per class as REPA-E and later papers (50 per class for 50K samples). Either way
the result does not depend on the batch size or the number of processes, and no two (seed, i) pairs share noise.
samples.npz then also holds the labels (arr_1, as ADM's image_sample.py) and the protocol ('label_protocol').
"""
import os
import re
import sys
import glob
import argparse
import functools

from utils.cli import HelpFormatter, SPACINGS, TASKS, add_device_arg, checked, set_cpu_threads, stop_on_signals, unit_interval

# -----------------------------------------------------------------------------
# config, read before torch is imported, so that --help and a mistyped flag answer at once

DDPM_SAMPLERS, FLOW_SAMPLERS = ('ddpm', 'ddim', 'plms'), ('euler', 'heun', 'sde')
DEFAULT_STEPS = {'ddim': 50, 'ddpm': 250, 'plms': 50, 'euler': 50, 'heun': 50, 'sde': 250}  # Heun 50: 99 evaluations
DEFAULT_SPACING = {'ddim': 'ddim', 'ddpm': 'even', 'plms': 'ldm'}  # ADM's for its samplers, LDM's for PLMS


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--ckpt', type=str, default='out/ldm/ckpt.pt', help='a train_ldm.py checkpoint (ckpt.pt, or ema.pt: its EMA-only export)')
parser.add_argument('--out_dir', type=str, default=None, help="where the samples go; default: a 'samples' folder next to --ckpt")
parser.add_argument('--overwrite', action='store_true', help="replace the samples already in --out_dir (they are deleted first, so two models' images never mix)")
parser.add_argument('--ae', type=str, default=None, help='the autoencoder; default: the one the LDM was trained with')
parser.add_argument('--ae_preset', type=str, default=None, help="architecture of public --ae weights ('sd', 'flux')")
parser.add_argument('--no_ema', action='store_true', help='use the raw weights instead of the EMA weights')
parser.add_argument('--num_samples', type=checked(int, lo=1), default=16, help='how many samples in all (over every process)')
parser.add_argument('--batch_size', type=checked(int, lo=1), default=16, help='samples per process per forward pass')
parser.add_argument('--sampler', type=str, default=None, choices=DDPM_SAMPLERS + FLOW_SAMPLERS, help="DDPM models: 'ddpm', 'ddim' or LDM's 'plms'; flow models: 'euler', 'heun' or SiT's 'sde' (none: ddim, heun)")
parser.add_argument('--steps', type=checked(int, lo=1, hi=1000), default=None, help='denoising steps (DDPM: out of T=1000); default: 50 for ddim, plms, euler and heun, 250 for ddpm and sde')
parser.add_argument('--spacing', type=str, default=None, choices=SPACINGS, help="DDPM timesteps: ADM's 'even' or 'ddim' (0, 20, ..), LDM's 'ldm' (1, 21, ..); none: ddim, ddpm even, plms ldm")
parser.add_argument('--eta', type=checked(float, lo=0, hi=1), default=None, help='DDIM noise: 0 deterministic (the default), 1 ancestral-like (ddim only)')
parser.add_argument('--cfg_scale', type=checked(float, lo=0), default=1.0, help='classifier-free guidance scale s; 1 = plain conditional sampling')
parser.add_argument('--cfg_interval', type=unit_interval, default=None, help='guide only at flow times t in [lo, hi] (0 data, 1 noise; DDPM: the flow time of equal noise); none: all')
parser.add_argument('--cfg_channels', type=checked(int, lo=1), default=None, help="guide only the first N latent channels (DiT's sampler guides 3 of 4, for its published FIDs); none: all")
parser.add_argument('--classes', type=str, default=None, help='comma-separated class ids to draw labels from; default: all classes')
parser.add_argument('--labels', type=str, default=None, choices=['random', 'balanced'], help="class labels: 'random' uniform, as DiT's FID-50K protocol, or 'balanced' equal counts per class, as REPA-E")
parser.add_argument('--seed', type=checked(int, lo=0), default=0, help='base seed; sample i uses the seed (seed, i)')
parser.add_argument('--task', type=str, default=None, choices=TASKS, help="the model's task (default: the checkpoint's); inpaint with --inpaint_mode replace for any model")
parser.add_argument('--input', type=str, default=None, help='--task sr|inpaint|semantic: LR images, x.png + x_mask.png or x_label.png; --strength: images; default none')
parser.add_argument('--strength', type=checked(float, lo=0, hi=1), default=None, help="SDEdit: each --input image's latent, noised, then the last int(steps * strength) steps (diffusers' img2img)")
parser.add_argument('--inpaint_mode', type=str, default='concat', choices=['concat', 'replace'], help="concat (the default): an inpainting model; replace: any DDPM model, LDM's p_sample_loop(mask, x0)")
parser.add_argument('--H', type=checked(int, lo=1), default=None, help='sample height in pixels, UNets only (convolutional sampling); default: the training size')
parser.add_argument('--W', type=checked(int, lo=1), default=None, help='sample width in pixels, UNets only; default: the training size')
parser.add_argument('--prompt', type=str, action='append', default=None, help="text/layout models: a caption, or 'class x0 y0 x1 y1; ...'; repeatable")
parser.add_argument('--prompt_file', type=str, default=None, help='text/layout models: a file of prompts, one a line (the COCO protocol)')
parser.add_argument('--negative_prompt', type=str, default='', help="text/layout models: the prompt guidance moves away from ('' is LDM's null)")
parser.add_argument('--n_samples', type=checked(int, lo=1), default=4, help="text/layout models: samples per prompt (CompVis txt2img's --n_samples)")
add_device_arg(parser)
parser.add_argument('--dtype', type=str, default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
                    help="autocast dtype; 'auto' = bfloat16 on GPUs that support it, else float32")
args = parser.parse_args()
set_cpu_threads()  # the CPU threads this machine can spare, while torch can still obey
stop_on_signals()  # Ctrl-C and SIGTERM: one line, and the last checkpoint kept

# the command line is read: now the heavy imports (torch alone takes over a second)
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.common import (select_device, die, setup_distributed, cleanup_distributed, resolve_dtype, autocast,
                    broadcast_latent_norm, save_image_grid, save_video_grid, write_mp4, weights_hash, refuse_unused,
                    all_finite, state_tensors)
from utils.rundir import (refuse_to_overwrite, no_space_is_an_error, check_output, lock_folder, refuse_overlap,
                    atomic_write)
from diffusion import cfg_model_fn, process_from_config, spaced_timesteps, sample_generators, randn
from evaluation.metrics import to_uint8
from denoiser import apply_model, build_backbone, learned_conditioning
from model import decode_first_stage, encode_first_stage
from utils import conditioning
from utils.weights import load_autoencoder, load_checkpoint

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU

if args.sampler in ('ddpm', 'plms') and args.eta not in (None, 0):
    why = {'ddpm': 'ancestral DDPM has its own noise', 'plms': 'PLMS is deterministic: CompVis requires ddim_eta 0'}
    die(f"--eta only applies to --sampler ddim ({why[args.sampler]}).")
if args.sampler == 'ddpm' and args.spacing == 'ldm':
    die("--spacing ldm is LDM's for its DDIM and PLMS samplers; sample --sampler ddpm with --spacing even or ddim.")
if args.sampler == 'plms' and args.steps == 1:
    die("--sampler plms needs at least 2 --steps: its first step evaluates the network at the next timestep too.")
refuse_unused(sys.argv[1:], [('--cfg_channels', args.cfg_scale != 1, 'only applies with --cfg_scale other than 1')])
if args.cfg_interval is not None and args.cfg_scale == 1:
    die("--cfg_interval limits classifier-free guidance; pass a --cfg_scale other than 1 with it.")
out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), 'samples')
image_dir, video_dir = os.path.join(out_dir, 'images'), os.path.join(out_dir, 'videos')
# checked before any work, and locked: two samplers never mix their files
check_output(out_dir, '--out_dir' if args.out_dir else f'--out_dir (by default {out_dir})', folder=True)
refuse_overlap(out_dir, '--out_dir', [(args.ckpt, '--ckpt'), (args.ae, '--ae')])
if int(os.environ.get('RANK', 0)) == 0:
    lock_folder(out_dir, '--out_dir')
# samples of another run in out_dir would mix with these, and eval_fid would score them together
refuse_to_overwrite([os.path.join(out_dir, 'samples.npz')] + sorted(glob.glob(os.path.join(image_dir, '*.png')))[:1]
                    + sorted(glob.glob(os.path.join(video_dir, '*.mp4')))[:1], args.overwrite)

dist = setup_distributed(args.device)
device = dist.device
dtype = resolve_dtype(args.dtype, device)
torch.set_grad_enabled(False)

# -----------------------------------------------------------------------------
# the LDM checkpoint and its autoencoder

if not os.path.exists(args.ckpt):
    die(f"LDM checkpoint {args.ckpt} does not exist; pass a train_ldm.py checkpoint with --ckpt.")
ckpt = load_checkpoint(args.ckpt, 'ldm')
config = ckpt['config']
backbone = config['backbone']
video = 'num_frames' in backbone  # a video DiT on (B, C, T', h, w) latents
if args.no_ema and 'model' not in ckpt:
    die(f"{args.ckpt} holds only the EMA weights (train_ldm.py's ema.pt); drop --no_ema or pass its ckpt.pt.")
try:
    model = build_backbone(**backbone).to(device).eval()
    model.load_state_dict(ckpt['model'] if args.no_ema else ckpt['ema'])
except Exception as e:  # whatever a config of nonsense makes the constructors raise
    die(f"the config and weights in {args.ckpt} describe no model that can be built ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:160]}); it is not a checkpoint train_ldm.py wrote.")
if not all_finite(state_tensors(model)):
    die(f"the {'raw' if args.no_ema else 'EMA'} weights in {args.ckpt} are not finite (NaN or inf): its run diverged, "
        f"and its samples would be noise or black; sample an earlier checkpoint.")
objective = config.get('objective', config['prediction'])  # checkpoints made before flow: their prediction, eps or v
flow = objective == 'flow'
sampler = args.sampler or ('heun' if flow else 'ddim')
if sampler not in (FLOW_SAMPLERS if flow else DDPM_SAMPLERS):
    die(f"--sampler {sampler} is a {'DDPM' if flow else 'rectified-flow'} sampler, but {args.ckpt} was trained with "
        f"--objective {objective}; use {', '.join(FLOW_SAMPLERS) if flow else ' or '.join(DDPM_SAMPLERS)}.")
if flow and (args.eta is not None or args.spacing is not None):
    die(f"--eta and --spacing are DDPM's; {args.ckpt} is a rectified-flow model, whose times follow its time shift "
        f"({config['time_shift']:g}).")
try:  # the time shift, like every Flow argument, and the betas are the ones the model was trained with
    process = process_from_config(config, device)
except Exception as e:
    die(f"the config and weights in {args.ckpt} describe no model that can be built ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:160]}); it is not a checkpoint train_ldm.py wrote.")
latent_scale, latent_shift = (broadcast_latent_norm(ckpt[k], 5 if video else 4, device) for k in ('latent_scale', 'latent_shift'))
del ckpt

ae_path = args.ae or config['ae']
try:
    ae = load_autoencoder(ae_path, preset=args.ae_preset or config.get('ae_preset'), device=device, video=video)
except FileNotFoundError:
    die(f"autoencoder {ae_path}, which this LDM was trained with, does not exist; pass its new location with --ae.")
except ValueError as e:
    die(f"{e} (for --ae {ae_path})")
# the latents must come from the autoencoder the LDM was trained on: its factor, channels and (when recorded) weights
f, C_ae = ae.downsample_factor, ae.cfg.z_channels
trained_f = config['ae_factor'] if 'ae_factor' in config else config['image_size'] // max(backbone['latent_size'], 1)
if (f, C_ae) != (trained_f, backbone['in_channels']):
    die(f"--ae {ae_path} makes f{f} latents with {C_ae} channels, but this LDM was trained on f{trained_f} latents "
        f"with {backbone['in_channels']} channels; pass the autoencoder it was trained with ({config['ae']}).")
if config.get('ae_sha') is not None and weights_hash(ae) != config['ae_sha']:
    die(f"--ae {ae_path} has other weights than the autoencoder this LDM was trained with ({config['ae']}, weights "
        f"{config['ae_sha']}); its latents would not be the ones the LDM learned, so pass that autoencoder.")
# a VQ LDM learned the latent before quantisation, and decoding quantises (CompVis' VQModelInterface); one trained by an
# earlier train_ldm.py (no 'vq_latents' in its config) learned the quantised latent, and is decoded as it was
force_not_quantize = config.get('vq_latents') != 'pre_quantization'

num_classes = backbone['num_classes']
trained_task = config.get('conditioning', {'task': 'none'})
text = trained_task['task'] in ('text', 'layout')  # prompts, through the model's tau_theta
if text and args.cfg_scale != 1 and not trained_task['cond_dropout_prob'] > 0:
    die(f"classifier-free guidance needs the null caption that caption dropout trains, and {args.ckpt} was trained with "
        f"--cond_dropout_prob 0; sample it with --cfg_scale 1.")
if (args.prompt or args.prompt_file) and not text:
    die(f"{args.ckpt} records no tokenizer: it was trained without --task text or layout, so --prompt and "
        f"--prompt_file do not apply.")
refuse_unused(sys.argv[1:], [(f, text, 'only applies to a --task text or layout model')
                             for f in ('--negative_prompt', '--n_samples')])
if num_classes == 0:
    if args.classes is not None or args.labels is not None or (args.cfg_scale != 1 and not text):
        die("this model is unconditional; --classes, --labels and --cfg_scale do not apply.")
    classes = labels = None
elif args.cfg_scale != 1 and not backbone['class_dropout_prob'] > 0:
    die(f"classifier-free guidance needs the null label that label dropout trains, and {args.ckpt} was trained with "
        f"--class_dropout_prob 0; sample it with --cfg_scale 1.")
elif args.cfg_channels is not None and args.cfg_channels > backbone['in_channels']:
    die(f"--cfg_channels {args.cfg_channels} is more than the model's {backbone['in_channels']} latent channels; pass "
        f"at most {backbone['in_channels']}, or leave it out to guide them all.")
else:
    try:
        classes = [int(c) for c in args.classes.split(',')] if args.classes else list(range(num_classes))
    except ValueError:
        die(f"--classes must be comma-separated integers, got '{args.classes}'.")
    if not classes or any(not 0 <= c < num_classes for c in classes):
        die(f"--classes must lie in [0, {num_classes - 1}], got '{args.classes}'.")
    args.labels = args.labels or 'random'
    if args.labels == 'balanced':
        K = len(classes)
        if args.num_samples % K:  # equal counts, as --help promises, or nothing
            die(f"--labels balanced gives each of the {K} classes the same number of samples, and --num_samples "
                f"{args.num_samples} is not a multiple of {K}; pass {-(-args.num_samples // K) * K}, or --labels "
                f"random.")
        labels = np.array([classes[i % K] for i in range(args.num_samples)])
    else:  # every rank draws the same labels, from a stream apart from every sample's noise stream (seed, (i,))
        labels = np.random.default_rng(np.random.SeedSequence(args.seed)).choice(classes, args.num_samples)
steps = args.steps or DEFAULT_STEPS[sampler]
if not flow:
    spacing = args.spacing or DEFAULT_SPACING[sampler]
    try:
        spaced_timesteps(process.T, steps, spacing)
    except ValueError as e:
        die(f"{e} (--steps {steps}, --spacing {spacing})")
interval = None  # --cfg_interval in what the network is fed: 1000 t for a flow, the timestep indices for DDPM
if args.cfg_interval is not None and flow:
    interval = tuple(process.network_time(t) for t in args.cfg_interval)
elif args.cfg_interval is not None:
    lo, hi = args.cfg_interval
    t_of = process.flow_time()  # (T,) the flow time of each timestep's noise level
    inside = torch.nonzero((t_of >= lo) & (t_of <= hi))
    if len(inside) == 0:
        die(f"no timestep of the {config['schedule']} schedule has a noise level in --cfg_interval {lo:g},{hi:g} "
            f"(its flow times run from {t_of[0]:.4f} to {t_of[-1]:.4f}); widen it.")
    interval = (inside.min().item(), inside.max().item())  # flow_time rises with t, so the indices inside are a range
C, h = backbone['in_channels'], backbone['latent_size']
latent_shape = (C, backbone['num_frames'], h, h) if video else (C, h, h)

# the task: the checkpoint's (older ones have none), one sample per input of --input; or the training-free inpainting
# of any DDPM model (--inpaint_mode replace); or a size other than the training size (--H, --W), UNets only
task, replace = args.task or trained_task['task'], args.inpaint_mode == 'replace'
refuse_unused(sys.argv[1:], [('--inpaint_mode', task == 'inpaint', 'only applies to --task inpaint'),
                             ('--num_samples', task == 'none', 'is set by --input, or by the prompts times --n_samples, '
                              'with a --task'),
                             ('--input', task not in ('none', 'text', 'layout') or args.strength is not None,
                              'only applies to --task sr, inpaint or semantic, or with --strength')])
if args.strength is not None:  # SDEdit: the images' latents, noised, then the last steps of the sampler
    if trained_task['task'] != 'none' or task != 'none' or video:
        die(f"--strength edits images with an image model that has no task of its own; {args.ckpt} is "
            f"{'a video model' if video else 'trained for --task ' + trained_task['task']}, so drop it.")
    if sampler not in ('ddim', 'ddpm', 'euler', 'heun'):
        die(f"--strength runs the last steps of --sampler ddim, ddpm, euler or heun; {sampler} has no such start "
            f"here, so choose one of those.")
    if args.input is None:
        die("--strength edits images; pass the folder that holds them with --input DIR.")
if replace and (trained_task['task'] != 'none' or flow):
    die(f"--inpaint_mode replace inpaints with a DDPM model that has no task of its own; {args.ckpt} is "
        f"{'a rectified flow' if flow else 'trained for --task ' + trained_task['task']}, so drop it.")
if replace and sampler == 'plms':
    die("--inpaint_mode replace replaces the known region at each step of --sampler ddim or ddpm; PLMS's multistep "
        "update has no such step here, so choose one of those.")
if task != trained_task['task'] and not replace:
    die(f"{args.ckpt} was trained for --task {trained_task['task']}, not {task}; pass its own task (or, for inpainting "
        f"with a model of no task, --inpaint_mode replace).")
if task not in ('none', 'text', 'layout') and args.input is None:
    die(f"--task {task} samples one image per input; pass the folder of inputs with --input DIR.")
if args.input is not None and not os.path.isdir(args.input):
    die(f"--input {args.input} is not a folder; pass the folder that holds the inputs.")
if (args.H or args.W) and (task not in ('none', 'text', 'layout') or video or backbone['model'] != 'unet'
                           or args.strength is not None):
    die("--H and --W set the size of a UNet's unconditional or class-conditional samples; a DiT's position embedding "
        "is fixed to its training size, and a task's size comes from its inputs." if backbone['model'] != 'unet' or
        video else "--H and --W do not apply with a --task or --strength: each sample takes its input's size.")
multiple = f * getattr(model, 'downsample_factor', 1)  # a UNet halves its latents downsample_factor times
if args.H or args.W:
    H_px, W_px = args.H or config['image_size'], args.W or config['image_size']
    if H_px % multiple or W_px % multiple:
        die(f"--H {H_px} --W {W_px}: each must be a multiple of {multiple} (the autoencoder's factor {f} times the "
            f"UNet's downsampling {multiple // f}).")
    latent_shape = (C, H_px // f, W_px // f)
items = None  # a task's inputs: [(name, item)], sample i for items[i]
if text:  # n_samples per prompt, prompt-major (txt2img's order); the prompts are written beside the samples
    try:
        prompts, null = conditioning.read_prompts(trained_task, args.prompt, args.prompt_file, args.negative_prompt)
    except ValueError as e:
        die(str(e))
    items = [(f'{i:06d}', prompts[i // args.n_samples]) for i in range(len(prompts) * args.n_samples)]
    args.num_samples = len(items)
elif task != 'none' or args.strength is not None:
    input_task = {'task': 'inpaint'} if replace else {'task': 'img2img'} if args.strength is not None else trained_task
    try:
        items = conditioning.read_inputs(input_task, args.input, multiple)
    except ValueError as e:
        die(str(e))
    args.num_samples = len(items)
    sizes = {tuple(it['image'].shape[-2:]) for _, it in items} if args.strength is not None else set()
    if backbone['model'] != 'unet' and sizes - {(config['image_size'],) * 2}:
        die(f"a DiT's position embedding is fixed to its training size, {config['image_size']}x{config['image_size']}; "
            f"--strength needs --input images of that size, so crop or resize them.")


def encode(x):  # pixels (B, 3, H, W) -> the normalised latent of the posterior mean, (z - shift) * scale
    return (encode_first_stage(ae, x, sample=False).float() - latent_shift) * latent_scale  # VQ: before quantising

if dist.master:
    os.makedirs(video_dir if video else image_dir, exist_ok=True)
    for folder in (image_dir, video_dir):  # only with --overwrite (checked above), and only the files this script names
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if re.fullmatch(r'\d{6}\.(png|mp4|npy)', name) and os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    if flow:
        how = f"{sampler} {steps} steps ({2 * steps - 1 if sampler == 'heun' else steps} evaluations), time shift {process.time_shift:g}"
    else:
        how = f"{sampler} {steps} steps ({spacing} spacing){f', eta {args.eta or 0}' if sampler == 'ddim' else ''}"
        how += f", {steps + 1} evaluations" if sampler == 'plms' else ''  # the warm-up's second evaluation
    guidance = '' if args.cfg_interval is None else f" in t {args.cfg_interval[0]:g}..{args.cfg_interval[1]:g}"
    print(f"{args.num_samples} samples, {how}, cfg scale {args.cfg_scale}{guidance}, "
          f"{'raw' if args.no_ema else 'EMA'} weights, {'' if labels is None else args.labels + ' labels, '}{dist.world_size} process(es) on {device}, {dtype} -> {out_dir}")
if dist.ddp:
    torch.distributed.barrier()

# -----------------------------------------------------------------------------
# sampling: this rank's indices r, r + W, r + 2W, ..., in batches

mine = list(range(dist.rank, args.num_samples, dist.world_size))
batches = [mine[i:i + args.batch_size] for i in range(0, len(mine), args.batch_size)]
if items is not None and not text:  # a batch holds inputs of one size
    size_of = lambda i: conditioning.output_size(input_task, items[i][1])  # noqa: E731
    batches = [[i for i in b if size_of(i) == s] for b in batches for s in dict.fromkeys(map(size_of, b))]
names = [n for n, _ in items] if items is not None else [f'{i:06d}' for i in range(args.num_samples)]
for idx in tqdm(batches, desc='sampling', disable=not dist.master, dynamic_ncols=True, smoothing=0):  # mean pace
    gens = sample_generators(args.seed, idx)  # one noise stream per sample, from (seed, i) alone
    cond, known, batch, edit = {'y': torch.from_numpy(labels[idx]).to(device) if classes else None}, None, None, {}
    shape = latent_shape
    if items is not None:
        batch = conditioning.collate([items[i][1] for i in idx], device)
        shape = latent_shape if text else (C, *(s // f for s in size_of(idx[0])))
    x_T = randn((len(idx), *shape), gens, device)  # (B, C, [T',] h, w)
    with autocast(device, dtype):
        if replace:  # the known latent cells: those with no hole pixel (a max-pool of the mask over each f x f cell)
            known = (encode(batch['image']), 1 - torch.nn.functional.max_pool2d(batch['mask'], f))
        elif args.strength is not None:  # SDEdit: x_T is the noise its latent is noised with
            edit = {'x0': encode(batch['image']), 'strength': args.strength}
        elif task != 'none':
            cond |= conditioning.get_input(trained_task, batch, encode, shape[-2:], device=device)
        if text:  # tau_theta once per batch: the prompts' context, and that of the negative prompt (LDM's uc)
            cond = learned_conditioning(model, cond)
            uc = learned_conditioning(model, conditioning.get_input(
                trained_task, conditioning.collate([null] * len(idx), device), encode, shape[-2:], device=device)
            ) if args.cfg_scale != 1 else None
    if args.cfg_scale != 1:
        model_fn = cfg_model_fn(model, cond, args.cfg_scale, args.cfg_channels, interval, null=uc if text else None)
    else:
        model_fn = functools.partial(apply_model, model, cond=cond)
    with autocast(device, dtype):
        if sampler == 'ddpm':
            z = process.ddpm_sample(model_fn, x_T, steps=steps, generator=gens, spacing=spacing, known=known, **edit)
        elif sampler == 'ddim':
            z = process.ddim_sample(model_fn, x_T, steps=steps, eta=args.eta or 0.0, generator=gens, spacing=spacing,
                                    known=known, **edit)
        elif sampler == 'plms':
            z = process.plms_sample(model_fn, x_T, steps=steps, spacing=spacing)
        elif sampler == 'sde':  # SiT's defaults: diffusion coefficient w = t, last step of 0.04 without noise
            z = process.sde_sample(model_fn, x_T, steps=steps, generator=gens)
        else:
            z = process.ode_sample(model_fn, x_T, steps=steps, solver=sampler, **edit)
        x = decode_first_stage(ae, z.float() / latent_scale + latent_shift, force_not_quantize).float()  # undo the latent normalisation
    if not torch.isfinite(x).all():  # to_uint8 would write NaN as black pixels, a result that looks like one
        die(f"samples {idx[0]}..{idx[-1]} came out non-finite (NaN or inf): the model or its latent normalisation "
            f"in {args.ckpt} is broken; nothing more was written.")
    x = to_uint8(x)
    if task == 'inpaint':  # the composite (1 - m) x + m x_hat, with the known pixels exactly the input's
        x = torch.where(batch['mask'].bool(), x, to_uint8(batch['image']))
    with no_space_is_an_error(out_dir):
        if video:  # the MP4 to watch, and the exact uint8 frames for samples.npz (MP4 is lossy), removed below
            for i, clip in zip(idx, x.permute(0, 2, 3, 4, 1).cpu().numpy()):  # (T, H, W, 3)
                write_mp4(clip, os.path.join(video_dir, f'{i:06d}.mp4'))
                np.save(os.path.join(video_dir, f'{i:06d}.npy'), clip)
        else:
            for i, img in zip(idx, x.permute(0, 2, 3, 1).cpu().numpy()):  # (H, W, 3)
                Image.fromarray(img).save(os.path.join(image_dir, f'{names[i]}.png'))

# -----------------------------------------------------------------------------
# the master assembles the npz and the grid from every rank's PNGs

if dist.ddp:
    torch.distributed.barrier()
if dist.master:
    if video:
        arr = np.stack([np.load(os.path.join(video_dir, f'{i:06d}.npy')) for i in range(args.num_samples)])  # (N, T, H, W, 3)
    else:
        arr = [np.asarray(Image.open(os.path.join(image_dir, f'{n}.png')).convert('RGB')) for n in names]
        arr = np.stack(arr) if len({a.shape for a in arr}) == 1 else None  # (N, H, W, 3) uint8; None: several sizes
    if text:  # the prompt of each sample, in sample order
        with open(os.path.join(out_dir, 'prompts.txt'), 'w', encoding='utf-8') as fh:
            fh.writelines(conditioning.prompt_text(it).replace('\n', ' ') + '\n' for _, it in items)
    if arr is None:  # a task's inputs of several sizes: the PNGs are the result, as no npz holds them
        print(f"wrote {args.num_samples} PNGs of several sizes to {image_dir} (no samples.npz: its images share a size)")
    else:
        with no_space_is_an_error(out_dir, arr.nbytes):
            with atomic_write(os.path.join(out_dir, 'samples.npz')) as tmp, open(tmp, 'wb') as fh:  # eval_fid never reads half
                np.savez(fh, arr_0=arr, **({} if labels is None else {'arr_1': labels, 'label_protocol': args.labels}),
                         **({'prompts': np.array([conditioning.prompt_text(it) for _, it in items])} if text else {}))
            if video:
                save_video_grid(arr, out_dir)
                for i in range(args.num_samples):
                    os.remove(os.path.join(video_dir, f'{i:06d}.npy'))
            else:
                grid = torch.from_numpy(arr[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1
                save_image_grid(grid, os.path.join(out_dir, 'grid.png'), nrow=max(int(len(grid) ** 0.5), 1))
        print(f"wrote {out_dir}/samples.npz {arr.shape}, " + (f"grid.mp4/.gif/_frames.png and {args.num_samples} MP4s"
                                                               if video else f"grid.png and {args.num_samples} PNGs"))
cleanup_distributed()
