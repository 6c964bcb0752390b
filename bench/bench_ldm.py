"""
Speed of the diffusion backbones, in-process:
  1. a full training step of train_ldm.py's (Diffusion.training_loss forward + backward + AdamW step) for each
     backbone and latent size;
  2. our DiT against diffusers' DiTTransformer2DModel of the same size, forward + backward, the two timed in
     alternation (A B A B ...) so that drift of a shared machine hits both alike.

  python bench/bench_ldm.py                                   # CPU: DiT-S/2 and the tiny UNet, batch 8, 8x8x4 and 16x16x4
  python bench/bench_ldm.py --device cuda --dtype bfloat16 --batch_size 64 --latent_sizes 32 --backbones dit:DiT-XL/2
Prints one JSON object (median seconds per step, latents per second, ours / diffusers time ratio).
"""
import os
import sys
import json
import time
import argparse
import statistics

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import autocast  # noqa: E402
from diffusion import Diffusion  # noqa: E402
from model import build_backbone, DIT_PRESETS  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--backbones', default='dit:DiT-S/2,unet:tiny', help='comma-separated model:preset pairs')
parser.add_argument('--latent_sizes', default='8,16', help='comma-separated latent sizes h = w')
parser.add_argument('--channels', type=int, default=4, help='latent channels')
parser.add_argument('--num_classes', type=int, default=1000, help='class-conditional with this many classes (0: unconditional)')
parser.add_argument('--batch_size', type=int, default=8)
parser.add_argument('--steps', type=int, default=10, help='timed steps per measurement (after --warmup)')
parser.add_argument('--warmup', type=int, default=2)
parser.add_argument('--device', default='cpu')
parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
parser.add_argument('--no_diffusers', action='store_true', help='skip the comparison with diffusers')
args = parser.parse_args()
device = torch.device(args.device)
sizes = [int(s) for s in args.latent_sizes.split(',')]


def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def batch(h, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(args.batch_size, args.channels, h, h, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device) if args.num_classes else None
    return x, y

# -----------------------------------------------------------------------------
# 1. the training step of train_ldm.py


results = {'config': vars(args), 'device_name': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
           'threads': torch.get_num_threads(), 'train_step': [], 'dit_vs_diffusers': []}
for spec in args.backbones.split(','):
    name, preset = spec.split(':')
    for h in sizes:
        torch.manual_seed(0)
        learn_sigma = name == 'dit'
        model = build_backbone(name, preset, h, args.channels, args.num_classes, learn_sigma).to(device).train()
        diffusion = Diffusion('linear' if name == 'dit' else 'scaled_linear', learn_sigma=learn_sigma)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        z, y = batch(h)

        def step():
            with autocast(device, args.dtype):
                loss = diffusion.training_loss(model, z, y).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = [timed(step) for _ in range(args.warmup + args.steps)][args.warmup:]
        t = statistics.median(times)
        row = {'backbone': spec, 'latent': [args.channels, h, h], 'batch_size': args.batch_size,
               'params_M': round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
               'step_time_s': round(t, 4), 'latents_per_sec': round(args.batch_size / t, 1)}
        results['train_step'].append(row)
        print(json.dumps(row), file=sys.stderr)

# -----------------------------------------------------------------------------
# 2. our DiT vs diffusers' DiTTransformer2DModel, same size, forward + backward, alternating


if not args.no_diffusers:
    from diffusers import DiTTransformer2DModel
    dit_specs = [s.split(':')[1] for s in args.backbones.split(',') if s.startswith('dit:')]
    for preset in dit_specs:
        for h in sizes:
            torch.manual_seed(0)
            ours = DIT_PRESETS[preset](input_size=h, in_channels=args.channels, num_classes=max(args.num_classes, 1),
                                       learn_sigma=True).to(device).train()
            D, heads = ours.blocks[0].attn.qkv.in_features, ours.blocks[0].attn.num_heads
            ref = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=D // heads,
                                        in_channels=args.channels, out_channels=2 * args.channels,
                                        num_layers=len(ours.blocks), sample_size=h, patch_size=ours.patch_size,
                                        num_embeds_ada_norm=max(args.num_classes, 1), norm_eps=1e-6).to(device).train()
            x, _ = batch(h)
            t = torch.randint(0, 1000, (args.batch_size,), generator=torch.Generator().manual_seed(1)).to(device)
            y = torch.randint(0, max(args.num_classes, 1), (args.batch_size,)).to(device)

            def fwd_bwd_ours():
                with autocast(device, args.dtype):
                    out = ours(x, t, y)
                out.float().square().mean().backward()
                ours.zero_grad(set_to_none=True)

            def fwd_bwd_ref():
                with autocast(device, args.dtype):
                    out = ref(x, timestep=t, class_labels=y).sample
                out.float().square().mean().backward()
                ref.zero_grad(set_to_none=True)

            t_ours, t_ref = [], []
            for i in range(args.warmup + args.steps):
                a, b = timed(fwd_bwd_ours), timed(fwd_bwd_ref)
                if i >= args.warmup:
                    t_ours.append(a)
                    t_ref.append(b)
            row = {'preset': preset, 'latent': [args.channels, h, h], 'batch_size': args.batch_size,
                   'ours_fwd_bwd_s': round(statistics.median(t_ours), 4),
                   'diffusers_fwd_bwd_s': round(statistics.median(t_ref), 4),
                   'ours_over_diffusers': round(statistics.median(t_ours) / statistics.median(t_ref), 3),
                   'params_M': {'ours': round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                                'diffusers': round(sum(p.numel() for p in ref.parameters()) / 1e6, 2)}}
            results['dit_vs_diffusers'].append(row)
            print(json.dumps(row), file=sys.stderr)

print(json.dumps(results, indent=2))
