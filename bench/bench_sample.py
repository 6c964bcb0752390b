"""
Sampling throughput of a DiT: DDPM with 250 steps (DiT's FID protocol) and DDIM with 50, with and without
classifier-free guidance (which doubles the batch through the network), with diffusion.py's samplers as sample.py
calls them, plus the autoencoder's decode. One JSON line per setting: images/s of the denoising loop, the decode's
images/s, the end-to-end images/s and the loop's MFU (network FLOPs only).

  python bench/bench_sample.py                                           # CPU: DiT-S/2, 8x8x4 latents, few steps
  python bench/bench_sample.py --device cuda --preset DiT-XL/2 --batch_size 256 --compile
Weights are random: the speed of a sampler does not depend on them.
"""
import os
import sys
import json
import time
import argparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))
from utils.cli import HelpFormatter, add_device_arg  # noqa: E402

# the command line is read before torch is imported, so that --help and a mistyped flag answer at once
parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--preset', default='DiT-S/2', help='the DiT preset to sample with (random weights)')
parser.add_argument('--latent_size', type=int, default=None, help='latent h = w (default: 32 on GPUs, 8 on CPU)')
parser.add_argument('--ae_preset', default='sd', help='the decoder: sd (f8, 4 ch) or flux (f8, 16 ch)')
parser.add_argument('--batch_size', type=int, default=8, help='samples per batch')
parser.add_argument('--settings', default=None,
                    help='comma-separated sampler:steps:cfg_scale (none given: ddpm 250 and ddim 50 steps at cfg 1 and 1.5 '
                         'on GPUs, 10 on CPU)')
add_device_arg(parser, default='cpu')
parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'], help='autocast dtype; default: bfloat16 on GPUs, float32 on the CPU')
parser.add_argument('--compile', action='store_true', help='torch.compile the network')
args = parser.parse_args()

import torch  # noqa: E402

from utils.common import autocast, select_device  # noqa: E402
from diffusion import Diffusion, cfg_model_fn  # noqa: E402
from flops import dit_flops, dit_config, device_peak_flops  # noqa: E402
from denoiser import build_backbone
from model import Autoencoder, AE_PRESETS  # noqa: E402

args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
device = torch.device(args.device)
cuda = device.type == 'cuda'
dtype = args.dtype or ('bfloat16' if cuda else 'float32')
h = args.latent_size or (32 if cuda else 8)
settings = args.settings or ('ddpm:250:1,ddpm:250:1.5,ddim:50:1,ddim:50:1.5' if cuda else 'ddpm:10:1,ddim:10:1.5')
device_name = torch.cuda.get_device_name(device) if cuda else 'cpu'
peak = device_peak_flops(device_name, dtype) if cuda else None
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

torch.manual_seed(0)
cfg = AE_PRESETS[args.ae_preset]
C = cfg.z_channels
raw = build_backbone('dit', args.preset, h, C, num_classes=1000, learn_sigma=True).to(device).eval()
model = torch.compile(raw) if args.compile else raw
model.num_classes, model.y_embedder = raw.num_classes, raw.y_embedder  # what cfg_model_fn reads
ae = Autoencoder(cfg).to(device).eval()
diffusion = Diffusion('linear', learn_sigma=True, device=device)
forward_flops = dit_flops(**dit_config(raw))


def sync():
    if cuda:
        torch.cuda.synchronize()


def run(sampler, steps, cfg_scale):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(args.batch_size, C, h, h, generator=g).to(device)
    y = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
    model_fn = cfg_model_fn(model, y, cfg_scale) if cfg_scale != 1 else (lambda x, t: model(x, t, y))
    gens = [torch.Generator().manual_seed(i) for i in range(args.batch_size)]  # per-sample noise, as sample.py
    sync()
    t0 = time.perf_counter()
    with autocast(device, dtype):
        if sampler == 'ddpm':
            z = diffusion.ddpm_sample(model_fn, x_T, steps=steps, generator=gens)
        else:
            z = diffusion.ddim_sample(model_fn, x_T, steps=steps)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad():
            ae.decode(z.float())
    sync()
    return t1 - t0, time.perf_counter() - t1


for setting in settings.split(','):
    sampler, steps, cfg_scale = setting.split(':')
    steps, cfg_scale = int(steps), float(cfg_scale)
    run(sampler, min(steps, 3), cfg_scale)  # warm-up: compilation, cuDNN autotuning
    loop, decode = run(sampler, steps, cfg_scale)
    flops = forward_flops * args.batch_size * steps * (2 if cfg_scale != 1 else 1)
    print(json.dumps({'device': device_name, 'dtype': dtype, 'preset': args.preset, 'latent': [C, h, h],
                      'batch_size': args.batch_size, 'compile': args.compile, 'sampler': sampler, 'steps': steps,
                      'cfg_scale': cfg_scale, 'loop_s': round(loop, 3),
                      'loop_images_per_sec': round(args.batch_size / loop, 2),
                      'decode_images_per_sec': round(args.batch_size / decode, 1),
                      'images_per_sec': round(args.batch_size / (loop + decode), 2),
                      'loop_mfu': round(flops / loop / peak, 4) if peak else None}), flush=True)
