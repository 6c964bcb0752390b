"""
The spectral diagnosis of Skorokhodov et al. (ICML 2025), "Improving the Diffusability of Autoencoders": how much
high-frequency energy an autoencoder's latents carry, beside that of the images at the latent resolution.

Run it on any autoencoder the project can load (train_ae.py checkpoints, or public weights with --preset):
  python spectrum.py --ckpt out/base/ckpt.pt --ckpt out/se/ckpt.pt --label base --label se --out_dir out/spectrum
  python spectrum.py --ckpt sd_vae.safetensors --preset sd --data /path/to/images --image_size 256
  python spectrum.py --data /path/to/photos --image_size 512 --rgb_pool 8     # no --ckpt: the images alone
KL autoencoders are measured on their posterior means and on posterior samples (what train_ldm.py trains on; the
difference is the KL noise). It writes spectrum.png (S vs zigzag index, one line per AE plus RGB at the latent
resolution), erasure.png (PSNR vs % of coefficients erased) and spectrum.json (every number), and prints a table.

Autoencoder latents carry more high-frequency energy than RGB images at the same resolution, the more so with more
latent channels and KL noise, and a diffusion model trained on them spends its capacity on that noise. The
scale-equivariance loss pulls the latent spectrum back toward RGB's. This file measures it, as the paper does, with
the JPEG tool kit: an orthonormal DCT-II on 8x8 blocks, coefficients read in zigzag order k = 0..63 (low to high).
The measures themselves (BlockSpectrum, hf_share, hf_energy_share, the temporal ones) are defined in spectral.py,
which training imports too.
"""
import os
import sys
import json
import argparse

from utils.cli import HelpFormatter, add_device_arg, checked, set_cpu_threads, stop_on_signals

ERASE_FRACTIONS = [k / 10 for k in range(10)]     # p = 0, 0.1, ..., 0.9 of the 64 coefficients erased


def parse_args(argv=None):
    """The command line (sys.argv when argv is None), read without torch: main() reads it again."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument('--ckpt', action='append', default=[], help='autoencoder to analyse (repeatable): a train_ae.py '
                   'checkpoint, or public weights with --preset; none: the images alone')
    p.add_argument('--label', action='append', default=[], help='name of each --ckpt in plots and JSON, in the same '
                   'order (default: the file name)')
    p.add_argument('--preset', type=str, default=None, help='the architecture of public --ckpt weights, an AE_PRESETS name (e.g. sd, flux)')
    p.add_argument('--data', type=str, default=None, help='image folder; omitted: the held-out dead-leaves stream')
    p.add_argument('--num_images', type=checked(int, lo=1), default=256, help='images to analyse (at most the folder size)')
    p.add_argument('--image_size', type=checked(int, lo=8), default=256, help='images are resized and center-cropped to this')
    p.add_argument('--batch_size', type=checked(int, lo=1), default=16, help='images per forward pass')
    p.add_argument('--rgb_pool', type=checked(int, lo=1), action='append', default=[], help='also report the images average-pooled '
                   'by this factor (repeatable), e.g. 8 to compare with f8 latents')
    p.add_argument('--seed', type=checked(int, lo=0), default=0, help='seed of the dead-leaves stream')
    add_device_arg(p)
    p.add_argument('--out_dir', type=str, default='out/spectrum', help='where spectrum.png, erasure.png, spectrum.json go')
    p.add_argument('--num_frames', type=checked(int, lo=1), default=1, help='> 1: video clips of this many frames '
                   '(1 + 4k) and video AEs (public ones: --preset cogvideox); spatial, temporal spectra')
    p.add_argument('--overwrite', action='store_true', help='replace the results already in --out_dir')
    return p.parse_args(argv)


if __name__ == '__main__':  # before torch is imported: --help and a mistyped flag answer at once, and the threads hold
    parse_args()
    set_cpu_threads()
    stop_on_signals()

import torch
from tqdm import tqdm

from utils.common import die, select_device, load_batches, Counted, refuse_unused, non_finite
from utils.rundir import refuse_to_overwrite, no_space_is_an_error, check_output, lock_folder, refuse_overlap
from utils.data import make_dataset, random_subset
from evaluation.metrics import PSNR_MAX, bicubic_at_latent_grid, psnr, rgb_on_latent_grid
from model import cut_dct_high_frequencies
from utils.spectral import (BLOCK, BlockSpectrum, temporal_amplitude, temporal_energy, temporal_hf_energy_share,
                      temporal_hf_ratio, temporal_spectrum)
from utils.weights import load_autoencoder

@torch.no_grad()
def analyse_video(dataset, aes, n, batch_size, device):
    """The first n clips of `dataset`, and per AE ({label: autoencoder}): the spatial spectrum of its latent frames
    (each frame, and all together; posterior means and samples), the temporal spectrum, and the reconstruction PSNR of
    every frame next to bicubic at the latent grid; RGB on the same (t, h, w) grid beside it."""
    loader = load_batches(torch.utils.data.Subset(Counted(dataset), range(n)), batch_size=batch_size)
    unreadable = 0  # clips whose file gave none, replaced by a neighbour's: counted
    meters = {}  # (name, 'temporal') -> Mean of temporal amplitudes; (name, 'spatial', t) -> BlockSpectrum of frame t;
    # (name, 'spatial') -> BlockSpectrum of all frames; (label, 'sample') -> ... of posterior samples; PSNR Means
    def add(key, value, B):
        meters.setdefault(key, Mean()).update(value, B)
    for x, _, bad in tqdm(loader, desc='clips', unit='batch'):
        unreadable += int(bad.sum())
        x = x.to(device)  # (B, 3, T, H, W)
        B = x.shape[0]
        add(('RGB full', 'temporal'), temporal_amplitude(x), B)
        add(('RGB full', 'temporal_energy'), temporal_energy(x), B)
        for f in {ae.downsample_factor for ae in aes.values()}:  # the trivial reference, frame by frame
            add((f'bicubic f{f}', 'psnr'), psnr(bicubic_at_latent_grid(x, f), x).mean(), B)
        for label, ae in aes.items():
            z, _ = ae.encode(x, sample=False)  # (B, C, t, h, w)
            if min(z.shape[-2:]) < BLOCK:
                die(f"--image_size {x.shape[-1]} gives latents of {z.shape[-2]}x{z.shape[-1]}, smaller than one "
                    f"{BLOCK}x{BLOCK} DCT block; use --image_size {BLOCK * ae.downsample_factor} or more.")
            add((label, 'psnr'), psnr(ae.decode(z).clamp(-1, 1), x).mean(), B)
            meters.setdefault((label, 'sample'), BlockSpectrum()).update(ae.encode(x, sample=True)[0])
            ref = rgb_on_latent_grid(x, z.shape, ae.cfg.temporal_levels)
            for name, t in ((label, z), (f"RGB for {label}", ref)):
                add((name, 'temporal'), temporal_amplitude(t), B)
                add((name, 'temporal_energy'), temporal_energy(t), B)
                meters.setdefault((name, 'spatial'), BlockSpectrum()).update(t)
                for i in range(t.shape[2]):
                    meters.setdefault((name, 'spatial', i), BlockSpectrum()).update(t[:, :, i])
    result = dict(num_clips=n, unreadable_clips=unreadable, video={})
    for key, meter in meters.items():
        if key[0].startswith('bicubic'):
            continue
        row = result['video'].setdefault(key[0], {'spatial_hf_share_per_frame': []})
        if key[1] == 'temporal_energy':
            row['temporal_hf_energy_share'] = temporal_hf_energy_share(meter.value)
        elif key[1] == 'temporal':
            row.update(temporal_spectrum=temporal_spectrum(meter.value).mean(0).tolist(),
                       temporal_hf_ratio=temporal_hf_ratio(meter.value))
        elif key[1] == 'psnr':
            f = aes[key[0]].downsample_factor
            row.update(reconstruction_psnr=meter.value.item(), bicubic_psnr=meters[(f'bicubic f{f}', 'psnr')].value.item(),
                       rgb_reference=f"RGB for {key[0]}")
        elif key[1] == 'sample':
            row['posterior_sample'] = meter.stats()
        elif len(key) == 2:  # all frames: the spatial profile and hf_share
            row.update(meter.stats())
        else:
            row['spatial_hf_share_per_frame'].append(meter.hf_share())
    return result

# -----------------------------------------------------------------------------
# command line

class Mean:
    """Running mean of per-batch means, weighted by batch size; exact for (C, 64) amplitudes and (B,) PSNRs alike."""
    def __init__(self):
        self.total, self.n = 0, 0

    def update(self, value, n):
        self.total, self.n = self.total + value.double().cpu() * n, self.n + n

    @property
    def value(self):
        return self.total / self.n


def check_args(args, argv):
    """The rules between flags, and the outputs, checked before anything is built; resolves --device and fills in the
    default labels."""
    args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
    outputs = ('spectrum.json', 'spectrum.png', 'erasure.png', 'spectrum_video.json')
    check_output(args.out_dir, '--out_dir', folder=True)
    refuse_overlap(args.out_dir, '--out_dir', [(args.data, '--data')] + [(c, '--ckpt') for c in args.ckpt])
    refuse_to_overwrite([os.path.join(args.out_dir, n) for n in outputs],
                        args.overwrite)
    refuse_unused(argv if argv is not None else sys.argv[1:], [
        ('--rgb_pool', args.num_frames == 1, 'only applies to images (--num_frames 1)'),
        ('--preset', bool(args.ckpt), 'names the architecture of --ckpt weights')])
    if args.image_size % BLOCK:
        die(f"--image_size {args.image_size} is not a multiple of the {BLOCK}x{BLOCK} DCT block; use "
            f"{args.image_size // BLOCK * BLOCK} or {(args.image_size // BLOCK + 1) * BLOCK}.")
    if args.label and len(args.label) != len(args.ckpt):
        die(f"got {len(args.label)} --label for {len(args.ckpt)} --ckpt; give one label per checkpoint or none.")
    args.label = args.label or [os.path.splitext(os.path.basename(c))[0] for c in args.ckpt]
    if len(set(args.label)) != len(args.label):
        die(f"labels {args.label} repeat; name each --ckpt with its own --label.")
    for f in args.rgb_pool:
        if f < 1 or args.image_size % f or args.image_size // f < BLOCK:
            die(f"--rgb_pool {f} must divide --image_size {args.image_size} and leave at least {BLOCK}x{BLOCK} pixels.")


def rgb_key(h, w):
    return f"RGB {h}x{w}"


@torch.no_grad()
def analyse(dataset, aes, indices, batch_size, device, rgb_sizes):
    """One pass over the images `indices` of `dataset`: every AE ({label: autoencoder}) encodes each batch; spectra
    and erasure PSNRs accumulate exactly. RGB is measured at each of `rgb_sizes` (h, w) and on every latent grid."""
    n, rgb_sizes = len(indices), set(rgb_sizes)
    rgb_spec = {}                                            # (h, w) -> BlockSpectrum of the pooled images
    factors = {ae.downsample_factor for ae in aes.values()} | {1}
    rgb_erasure = {f: [Mean() for _ in ERASE_FRACTIONS] for f in factors}  # PSNR of the image erased in 8f tiles
    ae_spec = {k: BlockSpectrum() for k in aes}              # label -> spectrum of the posterior means
    ae_spec_sample = {k: BlockSpectrum() for k in aes if aes[k].cfg.regularizer == 'kl'}  # ... of posterior samples
    ae_erasure = {k: [Mean() for _ in ERASE_FRACTIONS] for k in aes}
    bicubic = {f: Mean() for f in factors - {1}}              # PSNR of bicubic_at_latent_grid
    latent_size, unreadable = {}, 0
    for start in tqdm(range(0, n, batch_size), desc='images', unit='batch'):
        items = [dataset.load(i) for i in indices[start:start + batch_size]]  # (x, y, 1 if unreadable)
        unreadable += sum(item[2] for item in items)  # unreadable files, replaced by their neighbours: counted
        x = torch.stack([item[0] for item in items]).to(device)  # (B, 3, H, W) in [-1, 1]
        B = x.shape[0]
        for label, ae in aes.items():
            z, _ = ae.encode(x, sample=False)  # posterior mean (VQ: the quantised latent)
            if min(z.shape[-2:]) < BLOCK or z.shape[-2] % BLOCK or z.shape[-1] % BLOCK:
                die(f"--image_size {x.shape[-1]} gives {label} latents of {z.shape[-2]}x{z.shape[-1]}, not whole "
                    f"{BLOCK}x{BLOCK} DCT blocks; use a multiple of {BLOCK * ae.downsample_factor}.")
            ae_spec[label].update(z)
            if label in ae_spec_sample:  # z + sigma * eps, eps ~ N(0, I): what train_ldm.py caches and learns
                ae_spec_sample[label].update(ae.encode(x, sample=True)[0])
            latent_size[label] = tuple(z.shape[-2:])
            rgb_sizes.add(latent_size[label])
            for p, meter in zip(ERASE_FRACTIONS, ae_erasure[label]):
                x_rec = ae.decode(cut_dct_high_frequencies(z, BLOCK, p)).clamp(-1, 1)
                meter.update(psnr(x_rec, x).mean(), B)
        for f, meter in bicubic.items():
            meter.update(psnr(bicubic_at_latent_grid(x, f), x).mean(), B)
        for size in rgb_sizes:
            rgb_spec.setdefault(size, BlockSpectrum()).update(rgb_on_latent_grid(x, size))
        for f, meters in rgb_erasure.items():
            for p, meter in zip(ERASE_FRACTIONS, meters):
                meter.update(psnr(cut_dct_high_frequencies(x, BLOCK * f, p).clamp(-1, 1), x).mean(), B)

    rgb = {rgb_key(*s): dict(resolution=list(s), **rgb_spec[s].stats()) for s in sorted(rgb_spec)}
    result = dict(num_images=n, unreadable_images=unreadable, erase_fractions=ERASE_FRACTIONS, rgb=rgb,
                  rgb_erasure_psnr=[m.value.item() for m in rgb_erasure[1]], autoencoders={})
    for label, ae in aes.items():
        ref = rgb_key(*latent_size[label])
        stats = ae_spec[label].stats()
        erasure = [m.value.item() for m in ae_erasure[label]]
        r = dict(downsample_factor=ae.downsample_factor,
                 latent_channels=len(stats['per_channel']), latent_resolution=list(latent_size[label]),
                 **stats, rgb_reference=ref, rgb_hf_share=rgb[ref]['hf_share'],
                 hf_share_vs_rgb=stats['hf_share'] / rgb[ref]['hf_share'],  # > 1: latents noisier than the images
                 rgb_hf_energy_share=rgb[ref]['hf_energy_share'],
                 reconstruction_psnr=erasure[0], bicubic_psnr=bicubic[ae.downsample_factor].value.item(),
                 erasure_psnr=erasure,  # the latent erased in 8x8 tiles, decoded
                 rgb_erasure_psnr=[m.value.item() for m in rgb_erasure[ae.downsample_factor]])  # image in 8f x 8f tiles
        if label in ae_spec_sample:
            r['posterior_sample'] = ae_spec_sample[label].stats()
        result['autoencoders'][label] = r
    return result


def plot(result, out_dir):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    idx = list(range(BLOCK * BLOCK))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in result['autoencoders'].items():
        mean, std = torch.tensor(r['mean']), torch.tensor(r['std'])
        line, = ax.plot(idx, mean, label=f"{label} mean ({len(r['per_channel'])} ch, hf {r['hf_share']:.3f})")
        # a log axis cannot show mean - std <= 0; clip the band at a tenth of the mean
        ax.fill_between(idx, (mean - std).clamp_min(mean.min().item() * 0.1), mean + std, color=line.get_color(), alpha=0.2)
        if 'posterior_sample' in r:
            ax.plot(idx, r['posterior_sample']['mean'], ':', color=line.get_color(),
                    label=f"{label} sample (hf {r['posterior_sample']['hf_share']:.3f})")
    greys = iter(['black', 'dimgray', 'gray', 'darkgray', 'silver'] * 4)
    for key, r in result['rgb'].items():
        mean, std = torch.tensor(r['mean']), torch.tensor(r['std'])
        c = next(greys)
        ax.plot(idx, mean, '--', color=c, label=f"{key} (hf {r['hf_share']:.3f})")
        ax.fill_between(idx, (mean - std).clamp_min(mean.min().item() * 0.1), mean + std, color=c, alpha=0.1)
    ax.set(yscale='log', xlabel='zigzag index (low -> high frequency)', ylabel='RMS coefficient / RMS centred DC',
           title=f"8x8 block DCT spectrum, {result['num_images']} images (band: ±std over channels)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'spectrum.png'), dpi=150)
    plt.close(fig)

    pct = [100 * p for p in result['erase_fractions']]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, r in result['autoencoders'].items():
        ax.plot(pct, r['erasure_psnr'], 'o-', label=f"{label} latents")
    curves = {f"RGB in {BLOCK * r['downsample_factor']}x{BLOCK * r['downsample_factor']} tiles": r['rgb_erasure_psnr']
              for r in result['autoencoders'].values()} or {f'RGB in {BLOCK}x{BLOCK} tiles': result['rgb_erasure_psnr']}
    for (name, rgb), c in zip(curves.items(), ['black', 'dimgray', 'gray']):
        lossless = [v < PSNR_MAX for v in rgb]  # erasing nothing from RGB is lossless: leave it off the axis
        ax.plot([q for q, ok in zip(pct, lossless) if ok], [v for v, ok in zip(rgb, lossless) if ok], 'o--', color=c,
                label=f'{name} (the same scales; 0% is lossless)')
    ax.set(xlabel='% of DCT coefficients erased (highest frequencies first)', ylabel='PSNR vs input (dB)',
           title='Erasure: reconstruction from low frequencies only')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'erasure.png'), dpi=150)
    plt.close(fig)


def open_inputs(data, image_size, num_frames, seed, ckpts, labels, preset, device):
    """The held-out images (clips) of --data and the autoencoders {label: model}; a bad --data or --ckpt is the user's
    to fix: one sentence, no traceback."""
    try:
        dataset = make_dataset(data, image_size, seed=seed, train=False, num_frames=num_frames)
        aes = {label: load_autoencoder(path, preset=preset, device=device, video=num_frames > 1)
               for label, path in zip(labels, ckpts)}
    except (FileNotFoundError, ValueError, KeyError) as e:
        die(str(e))
    return dataset, aes


def print_video_table(result):
    print(f"\n{'':24s} {'temporal hf':>11s} {'hf_share':>9s} {'sampled':>9s} {'PSNR':>6s} {'bicubic':>7s}  "
          f"spatial hf_share per latent frame")
    for label, r in result['video'].items():
        sampled = f"{r['posterior_sample']['hf_share']:9.4f}" if 'posterior_sample' in r else f"{'-':>9s}"
        psnrs = f"{r['reconstruction_psnr']:6.2f} {r['bicubic_psnr']:7.2f}" if 'bicubic_psnr' in r else f"{'-':>6s} {'-':>7s}"
        spatial = f"{r['hf_share']:9.4f}" if 'hf_share' in r else f"{'-':>9s}"  # RGB at full size: temporal only
        print(f"{label:24s} {r['temporal_hf_ratio']:11.4f} {spatial} {sampled} {psnrs}  "
              + ' '.join(f"{v:.4f}" for v in r['spatial_hf_share_per_frame']))


def print_table(result):
    print(f"\n{'':24s} {'shape':>12s} {'hf_share':>9s} {'hf_energy':>9s}" + (
        f" {'sampled':>9s} {'RGB ref':>9s} {'ratio':>7s} {'recon PSNR':>11s} {'bicubic':>8s}" if result['autoencoders'] else ''))
    for label, r in result['autoencoders'].items():
        shape = f"{len(r['per_channel'])}x{r['latent_resolution'][0]}x{r['latent_resolution'][1]}"
        sampled = f"{r['posterior_sample']['hf_share']:9.4f}" if 'posterior_sample' in r else f"{'-':>9s}"
        print(f"{label:24s} {shape:>12s} {r['hf_share']:9.4f} {r['hf_energy_share']:9.4f} {sampled} {r['rgb_hf_share']:9.4f} "
              f"{r['hf_share_vs_rgb']:7.2f} {r['reconstruction_psnr']:11.2f} {r['bicubic_psnr']:8.2f}")
    for key, r in result['rgb'].items():
        print(f"{key:24s} {'3x%dx%d' % tuple(r['resolution']):>12s} {r['hf_share']:9.4f} {r['hf_energy_share']:9.4f}")
    if result['unreadable_images']:
        print(f"{result['unreadable_images']} unreadable image files were replaced by their neighbours")


def write_json(result, path):
    """The results, whole: a NaN or infinite number in them (images of one flat colour have no AC energy to divide by)
    is an error, never a number in the JSON."""
    bad = non_finite(result)
    if bad:
        die(f"{', '.join(bad[:3])} came out as no finite number (images without texture, such as flat colours, have no "
            f"spectrum); nothing was written.")
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    check_args(args, argv)
    lock_folder(args.out_dir, '--out_dir')
    device = torch.device(args.device)
    dataset, aes = open_inputs(args.data, args.image_size, args.num_frames, args.seed, args.ckpt, args.label,
                               args.preset, device)
    n = args.num_images if getattr(dataset, 'infinite', False) else min(args.num_images, len(dataset))
    if n < args.num_images:
        print(f"{args.data} holds {n} {'clips' if args.num_frames > 1 else 'images'}; analysing all of them.")
    torch.manual_seed(args.seed)  # posterior samples that repeat from run to run
    if args.num_frames > 1:
        result = {'args': vars(args), **analyse_video(dataset, aes, n, args.batch_size, device),
                  'left_out_files': getattr(dataset, 'left_out', {})}  # hidden files and other types, not read
        if result['unreadable_clips']:
            print(f"{result['unreadable_clips']} videos gave no clip and were replaced by their neighbours")
        os.makedirs(args.out_dir, exist_ok=True)
        with no_space_is_an_error(args.out_dir):
            write_json(result, os.path.join(args.out_dir, 'spectrum_video.json'))
        print_video_table(result)
        print(f"wrote spectrum_video.json to {args.out_dir}")
        return
    rgb_sizes = [(args.image_size, args.image_size)] + [(args.image_size // f,) * 2 for f in args.rgb_pool]
    indices = random_subset(dataset, n, args.seed)  # a seeded random sample of the images, not the first files
    result = {'args': vars(args), **analyse(dataset, aes, indices, args.batch_size, device, rgb_sizes),
              'left_out_files': getattr(dataset, 'left_out', {})}  # hidden files and other types, not read
    for label, path in zip(args.label, args.ckpt):
        result['autoencoders'][label]['ckpt'] = path
    os.makedirs(args.out_dir, exist_ok=True)
    with no_space_is_an_error(args.out_dir):
        write_json(result, os.path.join(args.out_dir, 'spectrum.json'))
        plot(result, args.out_dir)
    print_table(result)
    print(f"wrote spectrum.png, erasure.png, spectrum.json to {args.out_dir}")


if __name__ == '__main__':
    main()
