"""
Training speed of the diffusion backbones. Each measurement prints one JSON line: step time, images (latents) per
second, peak GPU memory and MFU = model FLOPs per step / step time / the device's peak (bench/flops.py).

  python bench/bench_ldm.py                                      # CPU: DiT-S/2 on 8x8x4 latents, (2) and (3) only
  python bench/bench_ldm.py --device cuda --presets DiT-XL/2 --batch_size 128 --compile   # one H100: all three
  python bench/bench_ldm.py --device cuda --presets DiT-S/2,DiT-B/2,DiT-L/2,DiT-XL/2 --batch_size 128 --compile
  python bench/bench_ldm.py --parts vs_latte --presets tiny,DiT-S/2 --num_frames 5   # video: 4 x 5 x 8 x 8 latents

The parts (--parts):
  1. train_ldm: the real train_ldm.py, run as a subprocess on a latent cache (a random-weight autoencoder of --ae_preset
     encodes --num_images synthetic JPEGs once), timed from its own log: the code path a user runs, loader included.
  2. synthetic: the same step (Diffusion.training_loss, backward, AdamW) in-process on one batch held on the device, so
     the gap to (1) is the cost of the data pipeline and the loop's bookkeeping.
  3. vs_diffusers: our DiT against diffusers' DiTTransformer2DModel of the same size, forward + backward, timed in
     alternation (A B A B ...) so that drift of a shared machine hits both alike.
  4. vs_latte (asked for by name): our VideoDiT on --num_frames latent frames, with full and with alternating
     attention, against diffusers' LatteTransformer3DModel of the same width and depth, alternated as in (3).
"""
import os
import sys
import json
import time
import argparse
import tempfile
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))
from utils.cli import HelpFormatter, add_device_arg  # noqa: E402

# the command line is read before torch is imported, so that --help and a mistyped flag answer at once
parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--presets', default='DiT-S/2', help='comma-separated DiT presets to measure')
parser.add_argument('--latent_size', type=int, default=None, help='latent h = w (default: 32 on GPUs, 8 on CPU)')
parser.add_argument('--ae_preset', default='sd', help='autoencoder of the train_ldm run: sd (f8, 4 ch) or flux (f8, 16 ch)')
parser.add_argument('--num_classes', type=int, default=1000, help='classes of the synthetic data (0: unconditional)')
parser.add_argument('--batch_size', type=int, default=8, help='latents per step')
parser.add_argument('--steps', type=int, default=10, help='timed steps per measurement (after --warmup)')
parser.add_argument('--warmup', type=int, default=3, help='untimed steps (log intervals in part 1) before the timed ones')
add_device_arg(parser, default='cpu')
parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'], help='autocast dtype; default: bfloat16 on GPUs, float32 on the CPU')
parser.add_argument('--compile', action='store_true', help='torch.compile the model (as train_ldm.py --compile)')
parser.add_argument('--grad_checkpointing', action='store_true', help='recompute activations in the backward pass (train_ldm.py --grad_checkpointing)')
parser.add_argument('--num_images', type=int, default=2048, help='images in the train_ldm run\'s latent cache')
parser.add_argument('--num_frames', type=int, default=5, help='latent frames of the vs_latte part')
parser.add_argument('--parts', default=None, help='comma-separated: train_ldm, synthetic, vs_diffusers, vs_latte '
                    '(none given: the first three on GPUs, the last two on CPU)')
args = parser.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.common import autocast, select_device  # noqa: E402
from diffusion import Diffusion  # noqa: E402
from flops import dit_flops, dit_config, device_peak_flops  # noqa: E402
from denoiser import build_backbone, DIT_PRESETS
from model import VIDEO_DIT_PRESETS  # noqa: E402

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
device = torch.device(args.device)
cuda = device.type == 'cuda'
dtype = args.dtype or ('bfloat16' if cuda else 'float32')
h = args.latent_size or (32 if cuda else 8)
parts = set((args.parts or ('train_ldm,synthetic,vs_diffusers' if cuda else 'synthetic,vs_diffusers')).split(','))
device_name = torch.cuda.get_device_name(device) if cuda else 'cpu'
peak = device_peak_flops(device_name, dtype) if cuda else None
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
C = {'sd': 4, 'flux': 16}[args.ae_preset]


def emit(**row):
    print(json.dumps({'device': device_name, 'dtype': dtype, **row}), flush=True)


def sync():
    if cuda:
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def mfu(flops_per_step, step_time):
    return round(flops_per_step / step_time / peak, 4) if peak else None


def train_flops(preset, batch_size):
    """Model FLOPs of a training step: 3x the forward (forward + backward). Gradient checkpointing's second forward is
    not counted, as MFU (unlike hardware FLOPs utilisation) counts only the FLOPs the model needs."""
    model = build_backbone('dit', preset, h, C, args.num_classes, learn_sigma=True)
    return 3 * dit_flops(**dit_config(model)) * batch_size


def check_flash_attention(model):
    """Which fused attention kernel scaled_dot_product_attention runs for this model: run one forward allowing only
    the flash kernel (it raises if the inputs do not fit it), then only the memory-efficient one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    x = torch.randn(2, C, h, h, device=device)
    t = torch.randint(0, 1000, (2,), device=device)
    y = torch.randint(0, args.num_classes, (2,), device=device) if args.num_classes else None
    for name, backend in (('flash', SDPBackend.FLASH_ATTENTION), ('efficient', SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with torch.no_grad(), autocast(device, dtype), sdpa_kernel(backend):
                model(x, t, y)
            return name
        except RuntimeError:
            continue
    return 'math'

# -----------------------------------------------------------------------------
# 1. the real train_ldm.py on a latent cache


def write_images(folder, n, size=256):
    """n synthetic JPEGs (smooth colour fields with noise) in class subfolders, so the run is class-conditional."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(folder, f'class{i % max(args.num_classes, 1):04d}' if args.num_classes else '')
        os.makedirs(d, exist_ok=True)
        low = rng.random((4, 4, 3))
        img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, f'{i:06d}.jpg'), quality=90)


def random_autoencoder(path):
    """Random weights of the preset in the public (LDM) layout: the speed of a step does not depend on the values."""
    from safetensors.torch import save_file
    from model import Autoencoder, AE_PRESETS
    torch.manual_seed(0)
    save_file(Autoencoder(AE_PRESETS[args.ae_preset]).state_dict(), path)


if 'train_ldm' in parts:
    tmp = tempfile.mkdtemp(dir='/dev/shm' if os.path.isdir('/dev/shm') else None)  # an 11 GB XL/2 checkpoint: RAM
    data, ae_path = os.path.join(tmp, 'images'), os.path.join(tmp, 'ae.safetensors')
    write_images(data, args.num_images, size=h * 8)
    random_autoencoder(ae_path)
    log_every = 5
    for preset in args.presets.split(','):
        out = os.path.join(tmp, preset.replace('/', '_'))
        cmd = [sys.executable, os.path.join(ROOT, 'train_ldm.py'), '--data', data, '--image_size', str(h * 8),
               '--ae', ae_path, '--ae_preset', args.ae_preset, '--model', 'dit', '--preset', preset,
               '--batch_size', str(args.batch_size), '--max_steps', str((args.warmup + args.steps) * log_every),
               '--log_interval', str(log_every), '--eval_interval', str(10 ** 9), '--ckpt_interval', str(10 ** 9),
               '--cache_latents', os.path.join(tmp, 'cache'), '--out_dir', out, '--device', args.device,
               '--dtype', dtype, '--num_samples', '1', '--sample_steps', '1']
        cmd += ['--compile'] * args.compile + ['--grad_checkpointing'] * args.grad_checkpointing
        t0 = time.time()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if run.returncode:
            emit(bench='train_ldm', preset=preset, error=run.stderr[-2000:])
            continue
        with open(os.path.join(out, 'log.jsonl')) as fh:
            rows = [json.loads(line) for line in fh if '"step_time"' in line]
        timed_rows = rows[args.warmup:]  # the first intervals hold compilation and cuDNN's autotuning
        step_time = statistics.median(r['step_time'] for r in timed_rows)
        emit(bench='train_ldm', preset=preset, latent=[C, h, h], batch_size=args.batch_size, compile=args.compile,
             grad_checkpointing=args.grad_checkpointing, step_time_s=round(step_time, 4),
             images_per_sec=round(args.batch_size / step_time, 1),
             peak_mem_gb=round(max(r.get('peak_mem_gb', 0) for r in rows), 2),
             tflops=round(train_flops(preset, args.batch_size) / step_time / 1e12, 1),
             mfu=mfu(train_flops(preset, args.batch_size), step_time), wall_s=round(time.time() - t0, 1))
        subprocess.run(['rm', '-rf', out])

# -----------------------------------------------------------------------------
# 2. the same step in-process on one batch that stays on the device


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(args.batch_size, C, h, h, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device) if args.num_classes else None
    return x, y


if 'synthetic' in parts:
    for preset in args.presets.split(','):
        torch.manual_seed(0)
        raw = build_backbone('dit', preset, h, C, args.num_classes, learn_sigma=True).to(device).train()
        raw.grad_checkpointing = args.grad_checkpointing
        backend = check_flash_attention(raw) if cuda else 'cpu'
        model = torch.compile(raw) if args.compile else raw
        diffusion = Diffusion('linear', learn_sigma=True, device=device)
        opt = torch.optim.AdamW(raw.parameters(), lr=1e-4, fused=cuda)
        z, y = batch()

        def step():
            with autocast(device, dtype):
                loss = diffusion.training_loss(model, z, y).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = [timed(step) for _ in range(args.warmup + args.steps)][args.warmup:]
        t = statistics.median(times)
        emit(bench='synthetic', preset=preset, latent=[C, h, h], batch_size=args.batch_size, compile=args.compile,
             grad_checkpointing=args.grad_checkpointing, sdpa_backend=backend, step_time_s=round(t, 4),
             images_per_sec=round(args.batch_size / t, 1),
             peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if cuda else None,
             tflops=round(train_flops(preset, args.batch_size) / t / 1e12, 2),
             mfu=mfu(train_flops(preset, args.batch_size), t))
        del raw, model, opt
        if cuda:
            torch.cuda.empty_cache()

# -----------------------------------------------------------------------------
# 3. our DiT vs diffusers' DiTTransformer2DModel, same size, forward + backward, alternating


if 'vs_diffusers' in parts:
    from diffusers import DiTTransformer2DModel
    for preset in args.presets.split(','):
        torch.manual_seed(0)
        ours = DIT_PRESETS[preset](input_size=h, in_channels=C, num_classes=max(args.num_classes, 1),
                                   learn_sigma=True).to(device).train()
        D, heads = ours.blocks[0].attn.qkv.in_features, ours.blocks[0].attn.num_heads
        ref = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=D // heads, in_channels=C,
                                    out_channels=2 * C, num_layers=len(ours.blocks), sample_size=h,
                                    patch_size=ours.patch_size, num_embeds_ada_norm=max(args.num_classes, 1),
                                    norm_eps=1e-6).to(device).train()
        x, _ = batch()
        t = torch.randint(0, 1000, (args.batch_size,), generator=torch.Generator().manual_seed(1)).to(device)
        y = torch.randint(0, max(args.num_classes, 1), (args.batch_size,)).to(device)

        def fwd_bwd_ours():
            with autocast(device, dtype):
                out = ours(x, t, y)
            out.float().square().mean().backward()
            ours.zero_grad(set_to_none=True)

        def fwd_bwd_ref():
            with autocast(device, dtype):
                out = ref(x, timestep=t, class_labels=y).sample
            out.float().square().mean().backward()
            ref.zero_grad(set_to_none=True)

        t_ours, t_ref = [], []
        for i in range(args.warmup + args.steps):
            a, b = timed(fwd_bwd_ours), timed(fwd_bwd_ref)
            if i >= args.warmup:
                t_ours.append(a)
                t_ref.append(b)
        emit(bench='vs_diffusers', preset=preset, latent=[C, h, h], batch_size=args.batch_size, compile=False,
             ours_fwd_bwd_s=round(statistics.median(t_ours), 4), diffusers_fwd_bwd_s=round(statistics.median(t_ref), 4),
             ours_over_diffusers=round(statistics.median(t_ours) / statistics.median(t_ref), 3),
             params_M={'ours': round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                       'diffusers': round(sum(p.numel() for p in ref.parameters()) / 1e6, 2)})
        del ours, ref
        if cuda:
            torch.cuda.empty_cache()

# -----------------------------------------------------------------------------
# 4. our VideoDiT (full and alternating attention) vs diffusers' Latte, same width and depth, alternating

if 'vs_latte' in parts:
    from diffusers import LatteTransformer3DModel
    T = args.num_frames
    for preset in args.presets.split(','):
        torch.manual_seed(0)
        ours = {attention: VIDEO_DIT_PRESETS[preset](input_size=h, num_frames=T, in_channels=C, learn_sigma=True,
                                                     num_classes=max(args.num_classes, 1), attention=attention)
                .to(device).train() for attention in ('full', 'alternating')}
        block = ours['full'].blocks[0]
        D, heads, depth = block.attn.qkv.in_features, block.attn.num_heads, len(ours['full'].blocks)
        # Latte stacks num_layers pairs of (spatial block with cross-attention, temporal block): depth/2 pairs give
        # depth blocks, as our alternating model has. It is text-conditioned: one caption token of width 1 (~free).
        ref = LatteTransformer3DModel(num_attention_heads=heads, attention_head_dim=D // heads, in_channels=C,
                                      out_channels=2 * C, num_layers=max(depth // 2, 1), sample_size=h,
                                      patch_size=ours['full'].patch_size, activation_fn='gelu-approximate',
                                      norm_type='ada_norm_single', norm_elementwise_affine=False, norm_eps=1e-6,
                                      caption_channels=1, cross_attention_dim=D, video_length=T).to(device).train()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch_size, C, T, h, h, generator=g).to(device)
        t = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
        y = torch.randint(0, max(args.num_classes, 1), (args.batch_size,), generator=g).to(device)
        caption = torch.randn(args.batch_size, 1, 1, generator=g).to(device)

        def fwd_bwd(model, call):
            def f():
                with autocast(device, dtype):
                    out = call()
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)
            return f

        runs = {'ours_full': fwd_bwd(ours['full'], lambda: ours['full'](x, t, y)),
                'ours_alternating': fwd_bwd(ours['alternating'], lambda: ours['alternating'](x, t, y)),
                'latte': fwd_bwd(ref, lambda: ref(x, timestep=t, encoder_hidden_states=caption).sample)}
        times = {k: [] for k in runs}
        for i in range(args.warmup + args.steps):
            for k, f in runs.items():
                s = timed(f)
                if i >= args.warmup:
                    times[k].append(s)
        med = {k: statistics.median(v) for k, v in times.items()}
        emit(bench='vs_latte', preset=preset, latent=[C, T, h, h], batch_size=args.batch_size,
             **{f"{k}_fwd_bwd_s": round(v, 4) for k, v in med.items()},
             full_over_latte=round(med['ours_full'] / med['latte'], 3),
             alternating_over_latte=round(med['ours_alternating'] / med['latte'], 3),
             params_M={'ours': round(sum(p.numel() for p in ours['full'].parameters()) / 1e6, 2),
                       'latte': round(sum(p.numel() for p in ref.parameters()) / 1e6, 2)})
        del ours, ref
        if cuda:
            torch.cuda.empty_cache()
