"""
At which noise level does an LDM lose its data? SDEdit restoration (sample.py --strength) of held-out images, per
strength, beside the trivial reference of the same start decoded without any denoising.

  python repro/restoration.py --ckpt out/latent/ema.pt --ckpt out/pixels/ema.pt --input heldout/ --out_dir out/restore

For each checkpoint (an LDM on latents, or on pixels with train_ldm.py --ae none) and each strength s, sample.py
--strength s noises each input's latent to the first of the sampler's last int(50 s) steps and runs those steps; the
script scores the result against the input (PSNR, and metrics.region_stats: near-uniform regions, as on samples). The
reference, "identity", decodes the very start sample.py denoises (the same noise) scaled back to the data's level (x_t / sqrt(abar_t) under DDPM,
x_t / (1 - t) under flow): what the start still holds. A denoiser earns its place by the dB it adds over it. Strength 0
is the autoencoder's reconstruction (the input itself on pixels); at strength 1 the start holds nothing, so it has no
reference.

Writes restoration.json, restoration.md (the table) and restoration.png (rows: the input, then each strength; a block
of --show images per checkpoint). Each sample.py run goes to --out_dir/<name>_<strength>, <name> the checkpoint's
folder.
"""
import os
import sys
import json
import argparse
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.cli import HelpFormatter, die  # noqa: E402  (torch, numpy and the models load after --help)

STEPS = 50  # sample.py's default steps (DDIM, even spacing; Heun under flow), which the reference follows

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
parser.add_argument('--ckpt', action='append', required=True, help='a train_ldm.py checkpoint; repeat to compare')
parser.add_argument('--input', required=True, help='a folder of held-out images at the size the models sample')
parser.add_argument('--strengths', default='0,0.1,0.3,0.5,0.7,1', help='comma-separated SDEdit strengths in [0, 1]')
parser.add_argument('--show', type=int, default=6, help='images per checkpoint in the figure')
parser.add_argument('--seed', type=int, default=0, help="the noise's seed (sample.py's, and the reference's)")
parser.add_argument('--out_dir', default='out/restoration', help='where the runs and the report go')


def read_images(folder):
    """The images sample.py --strength edits, in its order (conditioning.read_inputs) -> (N, H, W, 3) uint8."""
    import torch
    from utils.conditioning import read_inputs
    try:
        items = read_inputs({'task': 'img2img'}, folder, 1)
    except ValueError as e:
        die(str(e))
    if len({tuple(it['image'].shape) for _, it in items}) != 1:
        die(f"the images in {folder} differ in size; restoration compares them as one batch, so pass images of one size.")
    x = torch.stack([it['image'] for _, it in items])  # exact: read_inputs maps uint8 v to v / 127.5 - 1
    return ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def psnr(a, b):  # uint8 arrays; None where they are equal (a pixel model at strength 0)
    import numpy as np
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return None if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def to_unit(a):  # uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1]
    import torch
    return torch.from_numpy(a).float().permute(0, 3, 1, 2) / 127.5 - 1


def identity_references(ckpt_path, x, strengths, seed):
    """{strength: the SDEdit start of sample.py --strength, decoded without denoising}: x0_hat = x_t / sqrt(abar_t)
    (DDPM) or x_t / (1 - t) (flow), at the first of the last sdedit_steps(STEPS, strength) steps. None where no step
    runs (the reconstruction is then the answer) or where the start holds nothing (strength 1)."""
    import torch
    from diffusion import Flow, process_from_config, randn, sample_generators, sampling_steps, sdedit_steps
    from evaluation.metrics import to_uint8
    from model import decode_first_stage, encode_first_stage
    from utils.weights import load_autoencoder, load_checkpoint
    ckpt = load_checkpoint(ckpt_path, 'ldm')
    config = ckpt['config']
    ae = load_autoencoder(config['ae'])
    process = process_from_config(config)
    scale, shift = (torch.as_tensor(ckpt[n]).float().reshape(1, -1, 1, 1) for n in ('latent_scale', 'latent_shift'))
    with torch.no_grad():
        z = (encode_first_stage(ae, to_unit(x), sample=False).float() - shift) * scale
        noise = randn(z.shape, sample_generators(seed, range(len(z))), 'cpu')  # sample.py's x_T, sample by sample
        refs = {}
        for strength in strengths:
            k = sdedit_steps(STEPS, strength)
            if k in (0, STEPS):
                refs[strength] = None
                continue
            if isinstance(process, Flow):
                t = process.timesteps(STEPS).tolist()[STEPS - k]
                z_hat = process.q_sample(z, torch.full((len(z),), t), noise) / (1 - t)
            else:
                t = sampling_steps(process.T, STEPS)[STEPS - k][0]
                z_hat = process.sdedit_start(z, noise, t) / process.abar[t].sqrt()
            refs[strength] = to_uint8(decode_first_stage(ae, z_hat / scale + shift).float()).permute(0, 2, 3, 1).numpy()
    return refs


def figure(x, results, strengths, show, path):
    import numpy as np
    from PIL import Image, ImageDraw
    Z = max(1, 96 // x.shape[1])
    W, gap, lab = x.shape[2] * Z, 12, 90
    n = min(show, len(x))
    strip = lambda a: Image.fromarray(np.concatenate(list(a[:n]), 1)).resize((n * W, x.shape[1] * Z), Image.NEAREST)  # noqa: E731
    H = x.shape[1] * Z
    img = Image.new('RGB', (lab + len(results) * (n * W + gap), 24 + (len(strengths) + 1) * (H + 4)), 'white')
    d = ImageDraw.Draw(img)
    for j, (name, rows) in enumerate(results.items()):
        X = lab + j * (n * W + gap)
        d.text((X, 6), name, fill='black')
        img.paste(strip(x), (X, 24))
        for i, s in enumerate(strengths):
            img.paste(strip(rows[s]), (X, 24 + (i + 1) * (H + 4)))
    for i, label in enumerate(['input'] + [f'strength {s:g}' for s in strengths]):
        d.text((4, 24 + i * (H + 4) + H // 2), label, fill='black')
    img.save(path)


def main(argv=None):
    args = parser.parse_args(argv)
    import numpy as np
    from evaluation.metrics import region_stats
    try:
        strengths = [float(s) for s in args.strengths.split(',')]
    except ValueError:
        die(f"--strengths must be comma-separated numbers in [0, 1], got '{args.strengths}'.")
    if not strengths or any(not 0 <= s <= 1 for s in strengths):
        die(f"--strengths must lie in [0, 1], got '{args.strengths}'.")
    names = [os.path.basename(os.path.dirname(os.path.abspath(c))) for c in args.ckpt]
    if len(set(names)) != len(names):
        die("two --ckpt share a folder name, which names their runs; pass checkpoints from folders of distinct names.")
    x = read_images(args.input)
    os.makedirs(args.out_dir, exist_ok=True)
    report, images = {'input': os.path.abspath(args.input), 'images': len(x), 'steps': STEPS,
                      'input_regions': region_stats(to_unit(x)), 'models': {}}, {}
    for ckpt, name in zip(args.ckpt, names):
        rows, images[name] = [], {}
        refs = identity_references(ckpt, x, strengths, args.seed)
        for s in strengths:
            out = os.path.join(args.out_dir, f'{name}_{s:g}')
            cmd = [sys.executable, os.path.join(ROOT, 'sample.py'), '--ckpt', ckpt, '--input', args.input,
                   '--strength', str(s), '--seed', str(args.seed), '--out_dir', out, '--overwrite']
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                die(f"sample.py --strength {s:g} on {ckpt} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            y = np.load(os.path.join(out, 'samples.npz'))['arr_0']
            ref = refs[s]
            row = {'strength': s, 'psnr': psnr(y, x), 'identity_psnr': None if ref is None else psnr(ref, x),
                   'regions': region_stats(to_unit(y))}
            rows.append(row)
            images[name][s] = y
            print(json.dumps({'model': name, **row}), flush=True)
        report['models'][name] = {'ckpt': os.path.abspath(ckpt), 'rows': rows}
    with open(os.path.join(args.out_dir, 'restoration.json'), 'w') as f:
        json.dump(report, f, indent=1)
    lines = ['| model | strength | PSNR (dB) | identity (dB) | gain (dB) | regions | covered |', '|---|---|---|---|---|---|---|']
    for name, m in report['models'].items():
        for r in m['rows']:
            ident = r['identity_psnr']
            gain = '' if ident is None or r['psnr'] is None else f"{r['psnr'] - ident:+.2f}"
            got = 'exact' if r['psnr'] is None else f"{r['psnr']:.2f}"
            lines.append(f"| {name} | {r['strength']:g} | {got} | {'' if ident is None else f'{ident:.2f}'} | "
                         f"{gain} | {r['regions']['regions']:.2f} | {r['regions']['covered']:.3f} |")
    held = report['input_regions']
    lines.append(f"\nHeld-out images: {held['regions']:.2f} regions covering {held['covered']:.3f}.")
    with open(os.path.join(args.out_dir, 'restoration.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    figure(x, images, strengths, args.show, os.path.join(args.out_dir, 'restoration.png'))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
