"""
Autoencoder training speed, with and without the scale-equivariance (SE) branch. Each measurement prints one JSON line.

  python bench/bench_ae.py                                               # tiny preset, 64 px, CPU
  python bench/bench_ae.py --device cuda --presets flux,sd --image_size 256 --batch_size 16

The parts (--parts):
  1. train_ae: the real train_ae.py with every loss on (L1 + LPIPS + KL + PatchGAN from step 0), run as a subprocess
     and timed from its own log; the baseline and SE arms run in alternation (A B A B ...) so that drift of a shared
     machine hits both alike. Reports step time, images/s, peak memory, the SE overhead and MFU. LPIPS runs with
     random VGG16 / linear-head weights written to files (the speed does not depend on the values; the real ones
     cannot be fetched offline). MFU counts the autoencoder's FLOPs only (bench/flops.py: 3x the forward of E and D,
     plus the SE decode); LPIPS and the discriminator are left out, so it understates what the GPU does.
  2. vs_diffusers: our Autoencoder against diffusers' AutoencoderKL of the same configuration, forward + backward of
     the same L1 loss, alternated, in the default and in channels_last memory format.
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
parser.add_argument('--presets', default='tiny', help='comma-separated autoencoder presets to measure (model.AE_PRESETS)')
parser.add_argument('--image_size', type=int, default=64, help='image resolution in pixels')
parser.add_argument('--batch_size', type=int, default=8, help='images per step')
parser.add_argument('--steps', type=int, default=30, help='train_ae.py steps per run; the first log interval is warm-up')
parser.add_argument('--repeats', type=int, default=2, help='alternating train_ae.py runs per arm')
parser.add_argument('--iters', type=int, default=10, help='timed forward + backward passes per model in part 2')
add_device_arg(parser, default='cpu')
parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'], help='autocast dtype; default: bfloat16 on GPUs, float32 on the CPU')
parser.add_argument('--compile', action='store_true', help='torch.compile the autoencoder (train_ae.py --compile)')
parser.add_argument('--lpips', action=argparse.BooleanOptionalAction, default=True, help='part 1 with the LPIPS loss on (random VGG16 and linear-head weights)')
parser.add_argument('--parts', default='train_ae,vs_diffusers', help='the parts to run, comma-separated: train_ae, vs_diffusers')
args = parser.parse_args()

import torch  # noqa: E402

from utils.common import autocast, select_device  # noqa: E402
from flops import ae_flops, ae_decoder_flops, device_peak_flops  # noqa: E402
from model import AE_PRESETS, Autoencoder  # noqa: E402

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
device = torch.device(args.device)
cuda = device.type == 'cuda'
dtype = args.dtype or ('bfloat16' if cuda else 'float32')
device_name = torch.cuda.get_device_name(device) if cuda else 'cpu'
peak = device_peak_flops(device_name, dtype) if cuda else None
parts = set(args.parts.split(','))


def emit(**row):
    print(json.dumps({'device': device_name, 'dtype': dtype, 'image_size': args.image_size,
                      'batch_size': args.batch_size, **row}), flush=True)


def ae_train_flops(preset, se_scales=()):
    """Per image: 3x the forward of E and D; SE adds 3x a decode of the downsampled latent (mean over the scales)."""
    cfg, H = AE_PRESETS[preset], args.image_size
    f = 2 ** (len(cfg.ch_mult) - 1)
    se = statistics.mean(ae_decoder_flops(cfg, H // f // s, H // f // s) for s in se_scales) if se_scales else 0
    return 3 * (ae_flops(cfg, H, H) + se)

# -----------------------------------------------------------------------------
# 1. the real train_ae.py, baseline and SE alternated


if 'train_ae' in parts:
    tmp = tempfile.mkdtemp()
    lpips_flags = []
    if args.lpips:
        from torchvision.models import vgg16
        from evaluation.perceptual import LPIPS
        torch.save(vgg16().state_dict(), os.path.join(tmp, 'vgg16.pth'))
        torch.save({f'lin{l}.model.1.weight': torch.rand(1, c, 1, 1) for l, c in enumerate(LPIPS.channels)},
                   os.path.join(tmp, 'lin.pth'))
        lpips_flags = ['--lpips_weight', '1.0', '--vgg_weights', os.path.join(tmp, 'vgg16.pth'),
                       '--lpips_lin_weights', os.path.join(tmp, 'lin.pth')]
    else:
        lpips_flags = ['--lpips_weight', '0']
    arms = {'baseline': 0.0, 'se': 0.25}
    for preset in args.presets.split(','):
        times, mems = {arm: [] for arm in arms}, {arm: 0.0 for arm in arms}
        for r in range(args.repeats):
            for arm, w in arms.items():
                out = os.path.join(tmp, f'{preset}_{arm}{r}')
                cmd = [sys.executable, os.path.join(ROOT, 'train_ae.py'), '--out_dir', out, '--preset', preset,
                       '--image_size', str(args.image_size), '--batch_size', str(args.batch_size),
                       '--max_steps', str(args.steps), '--se_weight', str(w), '--disc_start', '0',
                       '--log_interval', '5', '--eval_interval', str(10 ** 9), '--ckpt_interval', str(10 ** 9),
                       '--device', args.device, '--dtype', dtype, '--num_workers', '4' if cuda else '1'] + lpips_flags
                cmd += ['--compile'] * args.compile
                run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if run.returncode:
                    emit(bench='train_ae', preset=preset, arm=arm, error=run.stderr[-2000:])
                    sys.exit(1)
                with open(os.path.join(out, 'log.jsonl')) as fh:
                    rows = [json.loads(line) for line in fh if '"step_time"' in line]
                times[arm] += [row['step_time'] for row in rows[1:-1]]  # drop warm-up and the partial last interval
                mems[arm] = max([mems[arm]] + [row.get('peak_mem_gb', 0) for row in rows])
                subprocess.run(['rm', '-rf', out])
        result = {}
        for arm, w in arms.items():
            t = statistics.median(times[arm])
            flops = ae_train_flops(preset, (2, 4) if w else ()) * args.batch_size
            result[arm] = t
            emit(bench='train_ae', preset=preset, arm=arm, compile=args.compile, lpips=args.lpips, disc=True,
                 step_time_s=round(t, 4), images_per_sec=round(args.batch_size / t, 1),
                 peak_mem_gb=round(mems[arm], 2) if cuda else None, ae_tflops=round(flops / t / 1e12, 2),
                 ae_mfu=round(flops / t / peak, 4) if peak else None)
        emit(bench='train_ae', preset=preset, se_overhead=round(result['se'] / result['baseline'], 3))

# -----------------------------------------------------------------------------
# 2. our autoencoder vs diffusers' AutoencoderKL, the same L1 loss, alternated


def timed(fn):
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


if 'vs_diffusers' in parts:
    from diffusers import AutoencoderKL
    for preset in args.presets.split(','):
        cfg = AE_PRESETS[preset]
        torch.manual_seed(0)
        ours = Autoencoder(cfg).to(device).train()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        ref = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.z_channels,
                            block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
                            down_block_types=('DownEncoderBlock2D',) * len(widths),
                            up_block_types=('UpDecoderBlock2D',) * len(widths),
                            use_quant_conv=cfg.use_quant_conv, use_post_quant_conv=cfg.use_quant_conv).to(device).train()
        x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1

        def step(model, inp, forward):
            def run():
                with autocast(device, dtype):
                    loss = (forward(model, inp) - inp).abs().mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
            return run

        ours_fwd = lambda m, inp: m.decode(m.encode(inp)[0])  # noqa: E731
        ref_fwd = lambda m, inp: m(inp, sample_posterior=True).sample  # noqa: E731
        variants = {'ours': step(ours, x, ours_fwd), 'diffusers': step(ref, x, ref_fwd)}
        if cuda:  # the same two models in channels_last (NHWC), the layout cuDNN's fastest conv kernels use
            ours_cl = Autoencoder(cfg).to(device).train().to(memory_format=torch.channels_last)
            ref_cl = type(ref)(**ref.config).to(device).train().to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            variants.update(ours_channels_last=step(ours_cl, x_cl, ours_fwd),
                            diffusers_channels_last=step(ref_cl, x_cl, ref_fwd))
        times = {k: [] for k in variants}
        for i in range(3 + args.iters):
            for k, fn in variants.items():
                t = timed(fn)
                if i >= 3:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        emit(bench='vs_diffusers', preset=preset, fwd_bwd_s={k: round(v, 4) for k, v in med.items()},
             ours_over_diffusers=round(med['ours'] / med['diffusers'], 3),
             channels_last_speedup=round(med['ours'] / med['ours_channels_last'], 3) if cuda else None)
