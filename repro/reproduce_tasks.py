r"""
Does spatial conditioning work? LDM's three concatenation tasks in miniature (LDM Sec. 3.3 and 4.3-4.5), run with the
project's own scripts on the latents of the shipped autoencoder (assets/baseline_mini.safetensors, f4, 8 channels):
super-resolution x4 (16 -> 64 px, SR3's bicubic degradation), inpainting with LaMa-like masks (scored at 40-50% of the
image), and semantic synthesis from the dead-leaves shape-kind maps. Each is a tiny UNet trained by train_ldm.py
--task, sampled by sample.py --task --input on held-out images, scored beside its trivial reference:

  python repro/reproduce_tasks.py                    # the miniature, CPU-sized: 64 px, 3000 steps per task
  python repro/reproduce_tasks.py --size quick       # 32 px (SR 8 -> 32), 600 steps per task: a first look
  python repro/reproduce_tasks.py --size smoke       # toy sizes: checks that the pipeline runs, says nothing about quality
  python repro/reproduce_tasks.py --data ~/photos    # SR and inpainting on photographs (semantic needs the embedded data)

  sr        PSNR, SSIM, LPIPS (with VGG weights) and SWD of the samples against the targets (eval_fid.py --paired),
            beside the bicubic upsampling of the same LR input
  inpaint   the same at 40-50% masks, beside the trivial fill (the mean colour of the known region)
  semantic  the share of pixels whose shape kind, as a small per-pixel classifier trained on the embedded data reads
            it, matches the map: of the samples, of the real images (the classifier's own ceiling) and of chance
            (the most frequent kind of each map)
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
# the sizes: image side, LDM steps, batch, held-out images, sampling steps, classifier steps
SIZES = {'full': dict(image_size=64, steps=3000, batch=16, num_eval=64, sample_steps=50, classifier_steps=1000),
         'quick': dict(image_size=32, steps=600, batch=8, num_eval=16, sample_steps=25, classifier_steps=300),
         'smoke': dict(image_size=16, steps=2, batch=2, num_eval=3, sample_steps=2, classifier_steps=2)}

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
from utils.data import SHAPE_KINDS, make_dataset, random_subset  # noqa: E402

size = SIZES[args.size]
S = size['image_size']
tasks = [t for t in args.tasks.split(',') if t]
if not tasks or set(tasks) - set(TASKS):
    die(f"--tasks must name some of {', '.join(TASKS)}, got '{args.tasks}'.")
if args.data is not None and 'semantic' in tasks:
    die("semantic synthesis here needs the shape-kind maps of the embedded data; drop --data or pass --tasks sr,inpaint.")
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


def held_out(out_dir, data, S, num_eval, seed):
    """The held-out inputs of every task, with their targets and trivial references, written once:
    target/i.png; sr/i.png (the LR image) and bicubic/i.png (PIL's bicubic upsampling of it); inpaint/i.png +
    i_mask.png (a mask of 40-50% of the image) and fill/i.png (the hole filled with the known region's mean colour);
    semantic/i_label.png."""
    root = os.path.join(out_dir, 'heldout')
    if os.path.isfile(os.path.join(root, 'done')):
        return root
    for sub in ('target', 'sr', 'bicubic', 'inpaint', 'fill', 'semantic'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    images = make_dataset(data, S, seed=seed, train=False, segmentation=data is None)
    for i in random_subset(images, num_eval, seed):
        item, _, _ = images.load(i)
        x = item['image'] if isinstance(item, dict) else item
        to_png(x, os.path.join(root, 'target', f'{i}.png'))
        lr = conditioning.bicubic_downsample(x, 4)
        to_png(lr, os.path.join(root, 'sr', f'{i}.png'))
        Image.open(os.path.join(root, 'sr', f'{i}.png')).resize((S, S), Image.BICUBIC).save(
            os.path.join(root, 'bicubic', f'{i}.png'))
        m = conditioning.random_mask(S, S, 'mixed', [seed, i], (0.4, 0.5))  # (1, H, W), 1 = hole
        to_png(x, os.path.join(root, 'inpaint', f'{i}.png'))
        Image.fromarray((m[0].numpy() * 255).astype(np.uint8)).save(os.path.join(root, 'inpaint', f'{i}_mask.png'))
        x8 = read(os.path.join(root, 'inpaint', f'{i}.png'))
        mean = (x8 * (1 - m)).sum((1, 2), keepdim=True) / (1 - m).sum()  # the known region's mean colour
        to_png(torch.where(m.bool(), mean, x8), os.path.join(root, 'fill', f'{i}.png'))
        if isinstance(item, dict):
            Image.fromarray(item['segmentation'].numpy().astype(np.uint8)).save(
                os.path.join(root, 'semantic', f'{i}_label.png'))
    open(os.path.join(root, 'done'), 'w').close()
    return root


def ldm(task, out_dir, data, S, steps, batch, sample_steps, seed, device):
    """A tiny UNet for `task` on the baseline's latents (train_ldm.py --task); reused when made."""
    out = os.path.join(out_dir, f'ldm_{task}')
    if not os.path.isfile(os.path.join(out, 'ema.pt')):
        flags = {'sr': ['--sr_factor', 4], 'inpaint': ['--masks', 'mixed', '--mask_area', '0.05,0.6'], 'semantic': []}
        run('train_ldm.py', '--task', task, *flags[task], '--ae', BASELINE, '--model', 'unet', '--preset', 'tiny',
            '--image_size', S, '--batch_size', batch, '--max_steps', steps, '--lr', 1e-3, '--ema_decay', 0.999,
            '--ema_warmup', '--num_workers', 1, '--seed', seed, '--device', device, '--eval_interval', steps,
            '--ckpt_interval', steps, '--num_samples', 4, '--sample_steps', sample_steps, '--out_dir', out,
            '--overwrite', *(['--data', data] if data else []), log=os.path.join(out_dir, f'train_{task}.log'))
    return out


def paired(fake, ref, name, out_dir, device):
    """eval_fid.py --paired of two folders -> its numbers."""
    out = os.path.join(out_dir, f'metrics_{name}.json')
    run('eval_fid.py', '--paired', '--fake', fake, '--ref', ref, '--num_workers', 0, '--device', device,
        '--out', out, '--overwrite', log=os.path.join(out_dir, f'eval_{name}.log'))
    with open(out) as f:
        numbers = json.load(f)
    return {k: numbers[k] for k in ('num_pairs', 'paired_psnr', 'paired_ssim', 'paired_lpips', 'swd_avg', 'fid')
            if k in numbers}


class KindClassifier(torch.nn.Module):
    """Per-pixel shape kind (data.SHAPE_KINDS) from an image: a small fully convolutional net on the image's local
    high-pass (the kinds differ in texture, not colour), the semantic task's judge; trained on the embedded training
    stream, scored on held-out real images as its own ceiling. (Without the high-pass and the batch norms it stayed
    at chance, cross-entropy ln 3, after 400 steps.)"""

    def __init__(self, width=32):
        super().__init__()
        layers, c = [], 3
        for dilation in (1, 2, 4, 1):
            layers += [torch.nn.Conv2d(c, width, 3, padding=dilation, dilation=dilation), torch.nn.BatchNorm2d(width),
                       torch.nn.SiLU()]
            c = width
        self.net = torch.nn.Sequential(*layers, torch.nn.Conv2d(width, len(SHAPE_KINDS), 1))

    def forward(self, x):  # (B, 3, H, W) -> logits (B, K, H, W)
        return self.net(x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False))  # x minus its 5 x 5 local mean


def train_classifier(out_dir, S, steps, seed):
    """KindClassifier trained `steps` Adam steps of 16 embedded images at S px (a stream apart from the held-out one)."""
    path = os.path.join(out_dir, 'kind_classifier.pt')
    net = KindClassifier()
    if os.path.isfile(path):
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    torch.manual_seed(seed)
    stream = make_dataset(None, S, seed=seed + 1, train=True, segmentation=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(steps):
        items = [stream.load(step * 16 + j)[0] for j in range(16)]
        x, seg = torch.stack([it['image'] for it in items]), torch.stack([it['segmentation'] for it in items])
        loss = F.cross_entropy(net(x), seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)
    return net.eval()


@torch.no_grad()
def kind_agreement(net, folder, labels):
    """The share of pixels whose classified kind matches the map, over the images of `folder` named as the maps."""
    hits = total = 0
    for name in sorted(labels):
        seg = torch.from_numpy(np.asarray(Image.open(labels[name])).astype(np.int64))
        pred = net(read(os.path.join(folder, f'{name}.png'))[None]).argmax(1)[0]
        hits, total = hits + (pred == seg).sum().item(), total + seg.numel()
    return hits / total


def grid(task, root, samples, out_dir):
    """grid_<task>.png: rows of inputs (LR upsampled by nearest / masked image / label map), samples and targets."""
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(root, 'target')))[:8]
    S = read(os.path.join(root, 'target', f'{names[0]}.png')).shape[-1]
    rows = {'input': [], 'sample': [], 'target': []}
    for n in names:
        if task == 'sr':
            rows['input'].append(F.interpolate(read(os.path.join(root, 'sr', f'{n}.png'))[None], size=(S, S))[0])
        elif task == 'inpaint':
            m = torch.from_numpy(np.asarray(Image.open(os.path.join(root, 'inpaint', f'{n}_mask.png'))) >= 128)
            rows['input'].append(conditioning.masked_image(read(os.path.join(root, 'inpaint', f'{n}.png')), m.float()))
        else:
            seg = torch.from_numpy(np.asarray(Image.open(os.path.join(root, 'semantic', f'{n}_label.png'))).astype(np.int64))
            palette = torch.tensor([[-1, -1, -1], [1, -0.2, -0.2], [-0.2, 1, -0.2], [-0.2, -0.2, 1.0]])
            rows['input'].append(palette[seg].permute(2, 0, 1))
        rows['sample'].append(read(os.path.join(samples, f'{n}.png')))
        rows['target'].append(read(os.path.join(root, 'target', f'{n}.png')))
    path = os.path.join(out_dir, f'grid_{task}.png')
    save_image_grid(torch.stack(rows['input'] + rows['sample'] + rows['target']), path, nrow=len(names),
                    row_labels=['input', 'sample', 'target'])
    return path


# -----------------------------------------------------------------------------
# the run: held-out inputs, one LDM per task, its samples, the numbers beside the trivial references

if not os.path.isfile(BASELINE):
    die(f"the shipped autoencoder {BASELINE} is missing; restore assets/ from the repository.")
root = held_out(args.out_dir, args.data, S, size['num_eval'], args.seed)
report = {'sizes': size, 'data': args.data or 'embedded dead leaves'}
for task in tasks:
    model = ldm(task, args.out_dir, args.data, S, size['steps'], size['batch'], size['sample_steps'], args.seed,
                args.device)
    samples = os.path.join(args.out_dir, f'samples_{task}')
    if not os.path.isfile(os.path.join(samples, 'samples.npz')):
        run('sample.py', '--ckpt', os.path.join(model, 'ema.pt'), '--input', os.path.join(root, task), '--steps',
            size['sample_steps'], '--device', args.device, '--out_dir', samples, '--overwrite',
            log=os.path.join(args.out_dir, f'sample_{task}.log'))
    images = os.path.join(samples, 'images')
    target = os.path.join(root, 'target')
    if task == 'semantic':
        net = train_classifier(args.out_dir, S, size['classifier_steps'], args.seed)
        labels = {f[:-len('_label.png')]: os.path.join(root, 'semantic', f) for f in os.listdir(os.path.join(root, 'semantic'))}
        chance = np.mean([np.bincount(np.asarray(Image.open(p)).ravel()).max() / (S * S) for p in labels.values()])
        report[task] = {'model': kind_agreement(net, images, labels), 'real': kind_agreement(net, target, labels),
                        'chance': float(chance), 'swd': paired(images, target, task, args.out_dir, args.device).get('swd_avg')}
    else:
        trivial = 'bicubic' if task == 'sr' else 'fill'
        report[task] = {'model': paired(images, target, task, args.out_dir, args.device),
                        trivial: paired(os.path.join(root, trivial), target, trivial, args.out_dir, args.device)}
    report[task]['grid'] = grid(task, root, images, args.out_dir)

with open(os.path.join(args.out_dir, 'tasks.json'), 'w') as f:
    json.dump(report, f, indent=2)
fmt = lambda v: '-' if v is None else f'{v:.4f}'  # noqa: E731
for task in tasks:
    r = report[task]
    if task == 'semantic':
        print(f"semantic: shape kinds matching the map: model {fmt(r['model'])}, real images {fmt(r['real'])}, chance "
              f"{fmt(r['chance'])}; SWD to the targets {fmt(r['swd'])}; grid {r['grid']}")
        if r['real'] <= r['chance']:
            print("semantic: the classifier reads real images no better than chance, so its score of the samples says "
                  "nothing; train it longer (classifier_steps).")
        continue
    print(f"{task}: {'':10s} {'PSNR':>8s} {'SSIM':>8s} {'LPIPS':>8s} {'SWD':>8s}")
    for row, m in ((k, v) for k, v in r.items() if k != 'grid'):
        print(f"{'':5s}{row:10s} " + ' '.join(f"{fmt(m.get(k)):>8s}" for k in ('paired_psnr', 'paired_ssim', 'paired_lpips', 'swd_avg')))
print(f"wrote {os.path.join(args.out_dir, 'tasks.json')}")
