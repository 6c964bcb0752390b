r"""
Does spatial conditioning work? LDM's three concatenation tasks in miniature (LDM Sec. 3.3 and 4.3-4.5), run with the
project's own scripts on the latents of the shipped autoencoder (assets/baseline_mini.safetensors, f4, 8 channels):
super-resolution x4 (16 -> 64 px, SR3's bicubic degradation), inpainting with LaMa-like masks (scored at 40-50% of the
image), and semantic synthesis from colour maps of the shapes (few large leaves). Each is a tiny UNet trained by
train_ldm.py --task, sampled by sample.py --task --input on held-out images, scored beside its trivial reference:

  python repro/reproduce_tasks.py                    # the miniature, CPU-sized: 64 px, 1500 steps per task
  python repro/reproduce_tasks.py --size quick       # 32 px (SR 8 -> 32), 600 steps per task: a first look
  python repro/reproduce_tasks.py --size smoke       # toy sizes: checks that the pipeline runs, says nothing about quality
  python repro/reproduce_tasks.py --data ~/photos    # SR and inpainting on photographs (semantic needs the embedded data)

  sr        PSNR, SSIM, LPIPS (with VGG weights) and SWD of the samples against the targets (eval_fid.py --paired),
            and SR3's consistency (LR-PSNR: the output downsampled as the input was, against the input), beside the
            bicubic upsampling of the same LR input
  inpaint   the same per mask bucket (40-50% of the image, and all: 5-60%), beside the trivial fill (the mean colour
            of the known region)
  semantic  on the shapes (data.dead_leaves style 'shapes'; each label the colour name of a leaf or the background):
            the share of pixels whose colour name (data.colour_names) is the map's, and the R^2 of the map's regions
            (metrics.region_r2: is the image drawn in the map's regions, whatever their colours), of the samples, the
            real images, their reconstructions, and chance (the real images against another image's map). On the
            textured leaves, whose labels are texture kinds, the autoencoder's reconstructions already lost them: a
            per-pixel kind classifier read them at 0.47, chance 0.45 (real images 0.76)

Two choices differ from LDM's configs, both for a CPU budget. The UNets predict v (--objective v), not eps: at the
miniature's 8x8-16x16 latents an eps-UNet still errs by ~0.05 (MSE) at t = 999 after 600 steps, and DDIM's
x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies that by 1 / sqrt(abar_999) = 85, so its samples left the data's
latent std by 10-20x (the guard failed); a v-UNet of the same steps passes it. And the embedded training images are
rendered once into --out_dir/train (a dead-leaves image costs 26 ms at 64 px, more than a training step), a finite
set that the runs read as --data. Every table also scores the autoencoder's reconstructions of the targets, the ceiling of any LDM on its latents. A
sampler is not a regressor: a perfect posterior sampler has twice the MSE of the posterior mean (3 dB less PSNR),
so PSNR favours the blurry trivial references; SWD and LR-PSNR do not.
Everything goes to --out_dir: a grid per task (grid_<task>.png: input, condition, sample, target rows) and tasks.json
with every number. A rerun reuses the trained models and inputs (delete --out_dir to start over).
"""
import os
import sys
import json
import argparse
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the scripts it runs
sys.path.insert(0, ROOT)

from utils.cli import HelpFormatter, add_device_arg

BASELINE = os.path.join(ROOT, 'assets', 'baseline_mini.safetensors')
TASKS = ('sr', 'inpaint', 'semantic')
# the sizes: image side, LDM steps, batch, held-out images, sampling steps, rendered training images
SIZES = {'full': dict(image_size=64, steps=1500, batch=16, num_eval=64, sample_steps=50, num_train=3000),
         'quick': dict(image_size=32, steps=600, batch=8, num_eval=16, sample_steps=25, num_train=1000),
         'smoke': dict(image_size=16, steps=2, batch=2, num_eval=3, sample_steps=2, num_train=8)}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default='out/tasks', help='where every artefact goes; default out/tasks')
parser.add_argument('--data', type=str, default=None, help='an image folder for sr and inpaint (default: the embedded dead leaves)')
parser.add_argument('--tasks', type=str, default=','.join(TASKS), help='comma-separated tasks to run; default sr,inpaint,semantic')
parser.add_argument('--size', type=str, default='full', choices=list(SIZES), help='full, quick (a first look) or smoke (checks it runs); default full')
parser.add_argument('--seed', type=int, default=0, help='seed of the runs and of the held-out draw; default 0')
add_device_arg(parser)
args = parser.parse_args()

import numpy as np  # noqa: E402  (after the command line: --help answers at once)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from utils import conditioning  # noqa: E402
from utils.common import die, save_image_grid  # noqa: E402
from utils.data import IMAGE_EXTENSIONS, _hsv_to_rgb, colour_names, make_dataset, random_subset, read_folder  # noqa: E402
from utils.weights import load_autoencoder  # noqa: E402
from evaluation.metrics import psnr, region_r2  # noqa: E402
from model import decode_first_stage, encode_first_stage  # noqa: E402

size = SIZES[args.size]
S = size['image_size']
tasks = [t for t in args.tasks.split(',') if t]
if not tasks or set(tasks) - set(TASKS):
    die(f"--tasks must name some of {', '.join(TASKS)}, got '{args.tasks}'.")
if args.data is not None and 'semantic' in tasks:
    die("semantic synthesis here needs the colour maps of the embedded shapes; drop --data or pass --tasks sr,inpaint.")
os.makedirs(args.out_dir, exist_ok=True)


def run(script, *script_args, log):
    """One script run, its output to `log`; a failure ends this one with the script's last lines."""
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, script_args)]
    with open(log, 'w') as fh:
        p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if p.returncode:
        die(f"{script} failed ({' '.join(cmd[1:])}); its output is in {log}.")


def to_png(x, path):  # (3, H, W) in [-1, 1] -> an 8-bit PNG
    Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(path)


def read(path):  # a PNG -> (3, H, W) in [-1, 1]
    return torch.from_numpy(np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


# the inpainting mask buckets scored (LDM Tab. 7: 40-50% of the image, and all), as (lo, hi) shares of the image;
# 'all' is the training masks' own range
MASK_BUCKETS = {'40-50%': (0.4, 0.5), 'all': (0.05, 0.6)}
BUCKET_DIRS = {'40-50%': '', 'all': '_all'}  # the folder suffix of each bucket: inpaint/ and fill/, inpaint_all/ ...


def reconstruct(ae, x):  # the autoencoder's reconstruction D(E(x)) of one image (3, H, W)
    with torch.no_grad():
        return decode_first_stage(ae, encode_first_stage(ae, x[None], sample=False))[0].clamp(-1, 1)


def held_out(out_dir, data, S, num_eval, seed):
    """The held-out inputs of every task, with their targets and trivial references, written once:
    target/i.png; autoencoder/i.png (its reconstruction D(E(x)), every model's ceiling); sr/i.png (the LR image) and
    bicubic/i.png (PIL's bicubic upsampling of it); per mask bucket (MASK_BUCKETS) inpaint<suffix>/i.png + i_mask.png
    and fill<suffix>/i.png (the hole filled with the known region's mean colour). Semantic synthesis draws the shapes
    (data.dead_leaves style 'shapes'): semantic/i_label.png (colour maps), semantic_target/i.png and
    semantic_autoencoder/i.png, held-out images of their own."""
    root = os.path.join(out_dir, 'heldout')
    if os.path.isfile(os.path.join(root, 'done')):
        return root
    subs = ['target', 'autoencoder', 'sr', 'bicubic', 'semantic', 'semantic_target', 'semantic_autoencoder']
    for sub in subs + [f'{k}{d}' for d in BUCKET_DIRS.values() for k in ('inpaint', 'fill')]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ae = load_autoencoder(BASELINE)
    images = make_dataset(data, S, seed=seed, train=False)
    for i in random_subset(images, num_eval, seed):
        x = images.load(i)[0]
        to_png(x, os.path.join(root, 'target', f'{i}.png'))
        to_png(reconstruct(ae, x), os.path.join(root, 'autoencoder', f'{i}.png'))
        lr = conditioning.bicubic_downsample(x, 4)
        to_png(lr, os.path.join(root, 'sr', f'{i}.png'))
        Image.open(os.path.join(root, 'sr', f'{i}.png')).resize((S, S), Image.BICUBIC).save(
            os.path.join(root, 'bicubic', f'{i}.png'))
        for b, (bucket, area) in enumerate(MASK_BUCKETS.items()):
            d = BUCKET_DIRS[bucket]
            m = conditioning.random_mask(S, S, 'mixed', [seed, i, b], area)  # (1, H, W), 1 = hole
            to_png(x, os.path.join(root, f'inpaint{d}', f'{i}.png'))
            Image.fromarray((m[0].numpy() * 255).astype(np.uint8)).save(os.path.join(root, f'inpaint{d}', f'{i}_mask.png'))
            x8 = read(os.path.join(root, f'inpaint{d}', f'{i}.png'))
            mean = (x8 * (1 - m)).sum((1, 2), keepdim=True) / (1 - m).sum()  # the known region's mean colour
            to_png(torch.where(m.bool(), mean, x8), os.path.join(root, f'fill{d}', f'{i}.png'))
    if data is None:
        shapes = make_dataset(None, S, seed=seed, train=False, segmentation=True, style='shapes')
        for i in random_subset(shapes, num_eval, seed):
            item = shapes.load(i)[0]
            to_png(item['image'], os.path.join(root, 'semantic_target', f'{i}.png'))
            to_png(reconstruct(ae, item['image']), os.path.join(root, 'semantic_autoencoder', f'{i}.png'))
            Image.fromarray(item['segmentation'].numpy().astype(np.uint8)).save(
                os.path.join(root, 'semantic', f'{i}_label.png'))
    open(os.path.join(root, 'done'), 'w').close()
    return root


def split(data, out_dir, num_eval, seed):
    """--data split once into held-out images and training images, so that no held-out image is trained on: a seeded
    random quarter of the folder's images (at most num_eval) linked into out_dir/photos/heldout, the rest into
    out_dir/photos/train. -> (the training folder, the held-out folder)."""
    root = os.path.join(out_dir, 'photos')
    train, held = os.path.join(root, 'train'), os.path.join(root, 'heldout')
    if not os.path.isfile(os.path.join(root, 'done')):
        files = read_folder(data, IMAGE_EXTENSIONS, 'images')[0]
        if len(files) < 8:
            die(f"--data {data} has {len(files)} images; the miniature needs at least 8 (a quarter held out).")
        order = np.random.default_rng(seed).permutation(len(files))
        n_held = min(num_eval, len(files) // 4)
        for k, i in enumerate(order):
            folder = held if k < n_held else train
            os.makedirs(folder, exist_ok=True)
            os.symlink(os.path.abspath(files[i]), os.path.join(folder, f'{i}{os.path.splitext(files[i])[1].lower()}'))
        open(os.path.join(root, 'done'), 'w').close()
    return train, held


def rendered(out_dir, S, n, seed):
    """The embedded training sets, rendered once from the training stream: n textured dead-leaves images as
    out_dir/train/images/i.png, and n shapes with their colour maps as train/labelled/i.png + i_label.png (semantic
    synthesis). -> (the images folder, the labelled folder)."""
    root = os.path.join(out_dir, 'train')
    images, labelled = os.path.join(root, 'images'), os.path.join(root, 'labelled')
    if not os.path.isfile(os.path.join(root, 'done')):
        os.makedirs(images, exist_ok=True)
        os.makedirs(labelled, exist_ok=True)
        textured = make_dataset(None, S, seed=seed, train=True)
        shapes = make_dataset(None, S, seed=seed, train=True, segmentation=True, style='shapes')
        for i in range(n):
            to_png(textured.load(i)[0], os.path.join(images, f'{i}.png'))
            item = shapes.load(i)[0]
            to_png(item['image'], os.path.join(labelled, f'{i}.png'))
            Image.fromarray(item['segmentation'].numpy().astype(np.uint8)).save(os.path.join(labelled, f'{i}_label.png'))
        open(os.path.join(root, 'done'), 'w').close()
    return images, labelled


def ldm(task, out_dir, data, S, steps, batch, sample_steps, seed, device):
    """A tiny v-predicting UNet for `task` on the baseline's latents (train_ldm.py --task) trained on the folder
    `data`; reused when made."""
    out = os.path.join(out_dir, f'ldm_{task}')
    if not os.path.isfile(os.path.join(out, 'ema.pt')):
        flags = {'sr': ['--sr_factor', 4], 'semantic': [],  # inpainting: LDM's config's L1 loss, the 'all' bucket's masks
                 'inpaint': ['--masks', 'mixed', '--mask_area', ','.join(map(str, MASK_BUCKETS['all'])), '--diffusion_loss', 'l1']}
        run('train_ldm.py', '--task', task, *flags[task], '--ae', BASELINE, '--model', 'unet', '--preset', 'tiny',
            '--objective', 'v', '--data', data,
            '--image_size', S, '--batch_size', batch, '--max_steps', steps, '--lr', 1e-3, '--ema_decay', 0.999,
            '--ema_warmup', '--num_workers', 1, '--seed', seed, '--device', device, '--eval_interval', steps,
            '--ckpt_interval', steps, '--num_samples', 4, '--sample_steps', sample_steps, '--out_dir', out,
            '--overwrite', log=os.path.join(out_dir, f'train_{task}.log'))
    return out


@torch.no_grad()
def lr_consistency(folder, root):
    """SR3's consistency: the PSNR (dB) of each output of `folder`, downsampled x4 as the LR inputs were
    (conditioning.bicubic_downsample), against its LR input heldout/sr/i.png, averaged over the images. A sample that
    honours its condition scores high; the bicubic upsampling is the reference."""
    names = sorted(f[:-4] for f in os.listdir(os.path.join(root, 'sr')) if f.endswith('.png'))
    return float(np.mean([psnr(conditioning.bicubic_downsample(read(os.path.join(folder, f'{n}.png')), 4)[None],
                               read(os.path.join(root, 'sr', f'{n}.png'))[None]).item() for n in names]))


def paired(fake, ref, name, out_dir, device):
    """eval_fid.py --paired of two folders -> its numbers."""
    out = os.path.join(out_dir, f'metrics_{name}.json')
    run('eval_fid.py', '--paired', '--fake', fake, '--ref', ref, '--num_workers', 0, '--device', device,
        '--out', out, '--overwrite', log=os.path.join(out_dir, f'eval_{name}.log'))
    with open(out) as f:
        numbers = json.load(f)
    return {k: numbers[k] for k in ('num_pairs', 'paired_psnr', 'paired_ssim', 'paired_lpips', 'swd_avg', 'fid')
            if k in numbers}


@torch.no_grad()
def semantic_scores(folder, root, shift=0):
    """The semantic samples (or any images) of `folder` scored against the held-out colour maps heldout/semantic/
    i_label.png: the share of pixels whose colour name (data.colour_names) is the map's, and the R^2 of the map's
    regions (metrics.region_r2), averaged over the images; shift=1 scores each image against the next image's map
    (chance)."""
    names = sorted(f[:-len('_label.png')] for f in os.listdir(os.path.join(root, 'semantic')) if f.endswith('_label.png'))
    agree, r2 = [], []
    for i, n in enumerate(names):
        x = read(os.path.join(folder, f'{n}.png'))
        seg = np.asarray(Image.open(os.path.join(root, 'semantic', f'{names[(i + shift) % len(names)]}_label.png')))
        agree.append(float((colour_names(x) == seg).mean()))
        r2.append(region_r2(x, seg))
    return {'colour_agreement': float(np.mean(agree)), 'region_r2': float(np.mean(r2))}


def grid(task, root, samples, out_dir):
    """grid_<task>.png: rows of inputs (LR upsampled by nearest / masked image / colour map in its colours), samples
    and targets."""
    targets = os.path.join(root, 'semantic_target' if task == 'semantic' else 'target')
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(targets))[:8]
    S = read(os.path.join(targets, f'{names[0]}.png')).shape[-1]
    palette = torch.tensor(np.array([_hsv_to_rgb(k / 6, 0.6, 0.8) for k in range(6)] + [(0.5, 0.5, 0.5)])) * 2 - 1
    rows = {'input': [], 'sample': [], 'target': []}
    for n in names:
        if task == 'sr':
            rows['input'].append(F.interpolate(read(os.path.join(root, 'sr', f'{n}.png'))[None], size=(S, S))[0])
        elif task == 'inpaint':
            m = torch.from_numpy(np.asarray(Image.open(os.path.join(root, 'inpaint', f'{n}_mask.png'))) >= 128)
            rows['input'].append(conditioning.masked_image(read(os.path.join(root, 'inpaint', f'{n}.png')), m.float()))
        else:
            seg = torch.from_numpy(np.asarray(Image.open(os.path.join(root, 'semantic', f'{n}_label.png'))).astype(np.int64))
            rows['input'].append(palette[seg].permute(2, 0, 1).float())
        rows['sample'].append(read(os.path.join(samples, f'{n}.png')))
        rows['target'].append(read(os.path.join(targets, f'{n}.png')))
    path = os.path.join(out_dir, f'grid_{task}.png')
    save_image_grid(torch.stack(rows['input'] + rows['sample'] + rows['target']), path, nrow=len(names),
                    row_labels=['input', 'sample', 'target'])
    return path


# -----------------------------------------------------------------------------
# the run: held-out inputs, one LDM per task, its samples, the numbers beside the trivial references

if not os.path.isfile(BASELINE):
    die(f"the shipped autoencoder {BASELINE} is missing; restore assets/ from the repository.")
train_images, held_images = split(args.data, args.out_dir, size['num_eval'], args.seed) if args.data else (None, None)
root = held_out(args.out_dir, held_images, S, size['num_eval'], args.seed)
if not args.data:
    train_images, train_labelled = rendered(args.out_dir, S, size['num_train'], args.seed)
report = {'sizes': size, 'data': args.data or 'embedded dead leaves', 'objective': 'v'}
for task in tasks:
    model = ldm(task, args.out_dir, train_labelled if task == 'semantic' else train_images, S, size['steps'],
                size['batch'], size['sample_steps'], args.seed, args.device)
    target = os.path.join(root, 'target')
    inputs = {f'{task}{BUCKET_DIRS[b]}': b for b in MASK_BUCKETS} if task == 'inpaint' else {task: None}
    for name in inputs:  # the held-out inputs of the task (inpainting: one folder per mask bucket)
        samples = os.path.join(args.out_dir, f'samples_{name}')
        if not os.path.isfile(os.path.join(samples, 'samples.npz')):
            run('sample.py', '--ckpt', os.path.join(model, 'ema.pt'), '--input', os.path.join(root, name), '--steps',
                size['sample_steps'], '--device', args.device, '--out_dir', samples, '--overwrite',
                log=os.path.join(args.out_dir, f'sample_{name}.log'))
    images = os.path.join(args.out_dir, f'samples_{task}', 'images')
    ceiling = (paired(os.path.join(root, 'autoencoder'), target, 'autoencoder', args.out_dir, args.device)
               if task != 'semantic' else None)
    if task == 'semantic':  # on the shapes: samples, real images, their reconstructions, chance (another's map)
        real, recon = os.path.join(root, 'semantic_target'), os.path.join(root, 'semantic_autoencoder')
        swd = paired(images, real, task, args.out_dir, args.device).get('swd_avg')  # the pairs are arbitrary: SWD only
        report[task] = {'model': {**semantic_scores(images, root), 'swd_avg': swd},
                        'real': semantic_scores(real, root), 'autoencoder': semantic_scores(recon, root),
                        'chance': semantic_scores(real, root, shift=1)}
    elif task == 'sr':
        report[task] = {'model': paired(images, target, task, args.out_dir, args.device),
                        'bicubic': paired(os.path.join(root, 'bicubic'), target, 'bicubic', args.out_dir, args.device),
                        'autoencoder': ceiling}
        for row, folder in (('model', images), ('bicubic', os.path.join(root, 'bicubic')),
                            ('autoencoder', os.path.join(root, 'autoencoder'))):
            report[task][row] = {**report[task][row], 'lr_psnr': lr_consistency(folder, root)}
    else:  # a table per mask bucket
        report[task] = {bucket: {'model': paired(os.path.join(args.out_dir, f'samples_{name}', 'images'), target, name,
                                                 args.out_dir, args.device),
                                 'fill': paired(os.path.join(root, f'fill{BUCKET_DIRS[bucket]}'), target,
                                                f'fill{BUCKET_DIRS[bucket]}', args.out_dir, args.device),
                                 'autoencoder': ceiling} for name, bucket in inputs.items()}
    report[task]['grid'] = grid(task, root, images, args.out_dir)

with open(os.path.join(args.out_dir, 'tasks.json'), 'w') as f:
    json.dump(report, f, indent=2)
fmt = lambda v: '-' if v is None else f'{v:.4f}'  # noqa: E731
for task in tasks:
    r = report[task]
    if task == 'semantic':
        print(f"{'semantic:':20s} {'colour':>8s} {'R2':>8s} {'SWD':>8s}")
        for row in ('model', 'real', 'autoencoder', 'chance'):
            print(f"{'':5s}{row:15s} " + ' '.join(f"{fmt(r[row].get(k)):>8s}" for k in ('colour_agreement', 'region_r2', 'swd_avg')))
        continue
    for bucket, table in ({task: r} if task == 'sr' else {f'{task} {b}': r[b] for b in MASK_BUCKETS}).items():
        print(f"{bucket + ':':20s} {'PSNR':>8s} {'SSIM':>8s} {'LPIPS':>8s} {'SWD':>8s} {'LR-PSNR':>8s}")
        for row, m in ((k, v) for k, v in table.items() if k != 'grid'):
            print(f"{'':5s}{row:15s} " + ' '.join(f"{fmt(m.get(k)):>8s}" for k in ('paired_psnr', 'paired_ssim',
                                                                                  'paired_lpips', 'swd_avg', 'lr_psnr')))
print(f"wrote {os.path.join(args.out_dir, 'tasks.json')}")
