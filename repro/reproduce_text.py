r"""
Is the caption learned? LDM's text-to-image (Sec. 3.3, cross-attention to tau_theta) in miniature, on the captioned
embedded dead leaves ("a red disk and a blue rectangle on a green background": the colour and kind of the two largest
shapes and the background colour, read from the generator's own parameters), run with the project's own scripts.

  python repro/reproduce_text.py                 # the miniature, sized for about 30 minutes on 2 idle CPU cores
  python repro/reproduce_text.py --smoke         # the pipeline at toy sizes (checks it runs; says nothing about text)

(1) train_ldm.py --task text trains the tiny UNet and its tau_theta jointly on the latents of the shipped baseline
autoencoder (assets/baseline_mini.safetensors), with caption dropout 0.1, on a finite training set rendered once into
--out_dir/train_<dataset> (x.png + x.txt, read as --data: rendering costs more than a training step). The data set is
the shapes (--dataset): on the textured dead leaves, whose two largest of 400 leaves the captions name, the scorer
read the largest leaf's kind no better than the majority class even on real images. The UNet predicts v, not eps as
LDM's: at 8x8 latents an eps-UNet's error at t = 999, multiplied by 1 / sqrt(abar_999) = 85 in DDIM's x0, threw its
samples 10-20x off the data's latent std after 600 steps (reproduce_tasks.py's docstring has the numbers).
(2) The probe's question for conditioning:
on held-out images, at fixed noise levels with fixed noise, the eps-MSE with each image's own caption against a
shuffled caption (another held-out image's), paired over images, with a Wilcoxon signed-rank p-value. (3) Alignment:
sample.py draws one sample per held-out caption; a small CNN trained on other embedded images (labels from the
generator) reads the background colour and the colour and kind of the largest shape of each sample. The same scorer
on the real held-out images with their own captions (real) and with shuffled captions (chance) stands beside it.
(4) Guidance: alignment and SWD against the real held-out images at each --cfg_scales, LDM's Fig. 14 trade-off.
Everything goes to --out_dir: report.md (the tables), report.json, and grids_<scale>.png with their prompts.
"""
import os
import re
import sys
import json
import argparse
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the scripts it runs
sys.path.insert(0, ROOT)

from utils.cli import DATASETS, HelpFormatter, checked, set_cpu_threads

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default='out/reproduce_text', help='where everything goes')
parser.add_argument('--smoke', action='store_true', help='toy sizes: checks that the pipeline runs (the tests use it)')
parser.add_argument('--steps', type=checked(int, lo=1), default=None, help='LDM training steps (each of text and layout); None: 2000 (smoke: 4)')
parser.add_argument('--cfg_scales', type=str, default='1,2,4', help='guidance scales of the trade-off')
parser.add_argument('--seed', type=checked(int, lo=0), default=0, help='seed of the LDM run and of every draw')
parser.add_argument('--layout', action=argparse.BooleanOptionalAction, default=True, help='also the layout-to-image LDM and its box IoU')
parser.add_argument('--dataset', type=str, default='shapes', choices=DATASETS, help="the embedded set: shapes (few large leaves, whose colours a caption names and a scorer reads) or textured")
args = parser.parse_args()
set_cpu_threads()

import numpy as np  # noqa: E402  (the command line answers before the heavy imports)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402
from PIL import Image  # noqa: E402

from utils import conditioning  # noqa: E402
from utils.common import die, save_image_grid  # noqa: E402
from utils.data import (COLOURS, LAYOUT_CLASSES, DeadLeaves, box_iou, boxes_list, caption, dead_leaves,  # noqa: E402
                        layout)
from utils.weights import load_checkpoint  # noqa: E402
from repro.probe import load_ldm  # noqa: E402
from evaluation.swd import swd_descriptors, swd_from_descriptors, swd_resolutions  # noqa: E402

AE = os.path.join(ROOT, 'assets', 'baseline_mini.safetensors')
SIZES = {  # image size, batch, LDM steps, held-out images, scorer training images and steps, sampler steps
    'full': dict(image_size=32, batch_size=32, steps=2000, held_out=256, scorer_images=4000, scorer_steps=1000, sample_steps=50,
                 train_images=4000),
    'smoke': dict(image_size=16, batch_size=4, steps=4, held_out=8, scorer_images=16, scorer_steps=2, sample_steps=2,
                  train_images=8),
}
LEVELS = (50, 200, 400, 600, 800)  # the DDPM timesteps the eps-MSE is probed at
MAX_OBJECTS = 8  # boxes per layout, 3 tokens each (train_ldm.py's default)
ATTRIBUTES = ('background', 'colour', 'kind')  # what the scorer reads: the caption's background, first shape
NAMES = {'background': COLOURS + ('grey',), 'colour': COLOURS + ('grey',), 'kind': ('disk', 'rectangle')}
CAPTION = re.compile(r"a (\w+) (disk|rectangle)(?: and a \w+ \w+)? on a (\w+) background")


def attributes(text):
    """A caption -> its (background, colour, kind) class ids, as the scorer predicts them."""
    colour, kind, background = CAPTION.fullmatch(text).groups()
    return NAMES['background'].index(background), NAMES['colour'].index(colour), NAMES['kind'].index(kind)


class Scorer(nn.Module):
    """A small CNN that reads an image's background colour and its largest shape's colour and kind."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for width, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):  # 32 px -> 8 x 8 features
            layers += [nn.Conv2d(c, width, 3, stride, 1), nn.BatchNorm2d(width), nn.SiLU()]
            c = width
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(c, len(NAMES[a])) for a in ATTRIBUTES)

    def forward(self, x):  # (B, 3, H, W) in [-1, 1] -> a list of logits, one per attribute
        h = self.net(x)
        return [head(h) for head in self.heads]


def render(seed, n, size, style):
    """n embedded images (dead_leaves' `style`) of stream `seed` -> (images (n, 3, H, W) in [-1, 1], their captions)."""
    pairs = [dead_leaves(seed, i, size, scene=True, style=style) for i in range(n)]
    return torch.stack([torch.from_numpy(p[0]).permute(2, 0, 1) * 2 - 1 for p in pairs]), [caption(p[1]) for p in pairs]


def training_folder(out_dir, seed, n, size, style, max_objects):
    """The LDMs' training set: n embedded images (dead_leaves' `style`) of the training stream `seed`, rendered once as
    out_dir/train_<style>/i.png with their captions in i.txt and their layouts in layout.jsonl. -> the folder."""
    folder = os.path.join(out_dir, f'train_{style}')
    if not os.path.isfile(os.path.join(folder, 'done')):
        os.makedirs(folder, exist_ok=True)
        boxes = []
        for i in range(n):
            img, scene = dead_leaves(seed, i, size, scene=True, style=style)
            Image.fromarray((img * 255).round().astype(np.uint8)).save(os.path.join(folder, f'{i}.png'))
            with open(os.path.join(folder, f'{i}.txt'), 'w') as f:
                f.write(caption(scene))
            boxes.append({'file': f'{i}.png', 'boxes': [[LAYOUT_CLASSES[c], *b] for c, *b in layout(scene, max_objects)]})
        with open(os.path.join(folder, 'layout.jsonl'), 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in boxes)
        open(os.path.join(folder, 'done'), 'w').close()
    return folder


def train_scorer(size, n_images, steps, seed, style):
    """The scorer, trained on a stream of embedded images apart from the LDM's and the held-out ones."""
    x, captions = render(seed + 2_000_000_011, n_images, size, style)
    y = torch.tensor([attributes(c) for c in captions])  # (n, 3)
    torch.manual_seed(seed)
    scorer, g = Scorer(), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(scorer.parameters(), lr=2e-3)
    for _ in range(steps):
        i = torch.randint(0, n_images, (min(64, n_images),), generator=g)
        loss = sum(F.cross_entropy(logits, y[i, k]) for k, logits in enumerate(scorer(x[i])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return scorer.eval()


@torch.no_grad()
def alignment(scorer, images, captions):
    """The share of images whose scored attribute equals the caption's, per attribute and for all three at once."""
    pred = torch.stack([logits.argmax(1) for logits in scorer(images)], 1)  # (n, 3)
    hit = pred == torch.tensor([attributes(c) for c in captions])
    return {**{a: hit[:, k].float().mean().item() for k, a in enumerate(ATTRIBUTES)}, 'all': hit.all(1).float().mean().item()}


def layout_prompt(boxes):
    """A layout (data.boxes_tensor, classes of LAYOUT_CLASSES) -> sample.py's prompt 'red disk x0 y0 x1 y1; ...'."""
    return '; '.join(f"{LAYOUT_CLASSES[c]} {x0:.3f} {y0:.3f} {x1:.3f} {y1:.3f}" for c, x0, y0, x1, y1 in boxes_list(boxes))


@torch.no_grad()
def eps_mse_true_vs_shuffled(ckpt, images, prompts, seed):
    """Per held-out image, the eps-MSE averaged over LEVELS with its own prompt (a caption, or a layout as sample.py
    reads it) and with the next image's, with the same noise for both. -> (true (n,), shuffled (n,))."""
    model, process, config, shift, scale, ae = load_ldm(ckpt)
    cfg = config['conditioning']
    z = (ae.encode(images, sample=False)[0] - shift) * scale  # posterior means, normalised as in training
    g = torch.Generator().manual_seed(seed)
    out = []
    for texts in (prompts, prompts[1:] + prompts[:1]):  # the next image's prompt: a derangement
        items, _ = conditioning.read_prompts(cfg, texts, None, '')
        batch = ({'caption': texts} if cfg['task'] == 'text' else {'boxes': torch.stack([it['boxes'] for it in items])})
        tokens, mask = conditioning.tokenize(cfg, batch)
        context = model.cond_stage_model(tokens, mask)
        g.manual_seed(seed)
        mse = torch.zeros(len(images))
        for t in LEVELS:
            tt, noise = torch.full((len(images),), t), torch.randn(z.shape, generator=g)
            pred = model(process.q_sample(z, tt, noise), tt, context=context, context_mask=mask)
            eps, _ = process.eps_x0(process.split_output(pred)[0], process.q_sample(z, tt, noise), tt)
            mse += (eps - noise).pow(2).flatten(1).mean(1) / len(LEVELS)
        out.append(mse.numpy())
    return out


def run(script, *flags):
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, flags)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def swd(a, b):
    res = swd_resolutions(*a.shape[-2:])
    da, db = (swd_descriptors(x, torch.arange(len(x))) for x in (a, b))
    return swd_from_descriptors(da, db, res)['swd_avg']


# -----------------------------------------------------------------------------
# the run: the LDM, the probe, the scorer, the samples, the report

size = SIZES['smoke' if args.smoke else 'full']
steps = args.steps or size['steps']
scales = [float(s) for s in args.cfg_scales.split(',')]
os.makedirs(args.out_dir, exist_ok=True)


def trained(task, steps, out_dir, dataset, seed, size):
    """The LDM of `task` (text or layout) on the rendered training set of `dataset`, made once (a rerun with the same
    steps and data set reuses it). -> its ema.pt."""
    out = os.path.join(out_dir, f'ldm_{task}_{dataset}')
    ckpt = os.path.join(out, 'ema.pt')
    if not os.path.isfile(ckpt) or load_checkpoint(ckpt, 'ldm')['step'] != steps:
        train = training_folder(out_dir, seed, size['train_images'], size['image_size'], dataset, MAX_OBJECTS)
        print(f"training the {task} LDM: {steps} steps -> {out}", flush=True)
        run('train_ldm.py', '--ae', AE, '--task', task, '--objective', 'v', '--data', train, '--num_workers', 1,
            *(['--max_objects', MAX_OBJECTS] if task == 'layout' else []), '--image_size', size['image_size'],
            '--batch_size', size['batch_size'], '--max_steps', steps, '--lr', '1e-3', '--ema_decay', '0.999',
            '--ema_warmup', '--num_samples', 4, '--sample_steps', 2, '--eval_interval', steps, '--ckpt_interval', steps,
            '--log_interval', max(steps // 20, 1), '--seed', seed, '--device', 'cpu', '--out_dir', out, '--overwrite')
    return ckpt


def paired_probe(ckpt, images, prompts, seed):
    """(2) The eps-MSE with the true prompt against a shuffled one, paired over held-out images -> its numbers."""
    true, shuffled = eps_mse_true_vs_shuffled(ckpt, images, prompts, seed)
    diff = shuffled - true
    p = wilcoxon(shuffled, true, alternative='greater').pvalue if np.any(diff != 0) else 1.0
    return {'eps_mse_true': float(true.mean()), 'eps_mse_shuffled': float(shuffled.mean()),
            'mean_diff': float(diff.mean()), 'sem_diff': float(diff.std(ddof=1) / len(diff) ** 0.5),
            'share_true_lower': float((diff > 0).mean()), 'wilcoxon_p': float(p), 'n': len(diff)}


def probe_line(name, probe):
    return (f"Held-out eps-MSE over t in {LEVELS}, n = {probe['n']} images: true {name} {probe['eps_mse_true']:.4f}, "
            f"shuffled {probe['eps_mse_shuffled']:.4f}; shuffled - true = {probe['mean_diff']:.2e} +- "
            f"{probe['sem_diff']:.1e} (sem), lower with the true {name} for {100 * probe['share_true_lower']:.0f}% "
            f"of images, Wilcoxon signed-rank p = {probe['wilcoxon_p']:.3g} (one-sided; the unit is a held-out image "
            f"of one LDM seed).")


def samples(ckpt, prompts, name, scale, out_dir, seed, steps):
    """sample.py: one sample per prompt at guidance `scale`, DDIM `steps` -> (n, 3, H, W) in [-1, 1]."""
    out = os.path.join(out_dir, f'samples_{name}_cfg{scale:g}')
    prompt_file = os.path.join(out_dir, f'prompts_{name}.txt')
    with open(prompt_file, 'w') as f:
        f.writelines(c + '\n' for c in prompts)
    run('sample.py', '--ckpt', ckpt, '--prompt_file', prompt_file, '--n_samples', 1, '--cfg_scale', scale,
        '--steps', steps, '--seed', seed, '--device', 'cpu', '--out_dir', out, '--overwrite')
    with np.load(os.path.join(out, 'samples.npz')) as f:
        return torch.from_numpy(f['arr_0']).permute(0, 3, 1, 2).float() / 127.5 - 1


report = {'steps': steps, 'image_size': size['image_size'], 'dataset': args.dataset}
lines = [f"# Text- and layout-to-image miniature ({args.dataset}, {size['image_size']} px, {steps} steps each)", ""]
# text: the probe, the scorer's alignment of real images, of chance and of the samples at each guidance scale
ckpt = trained('text', steps, args.out_dir, args.dataset, args.seed, size)
held = DeadLeaves(size['image_size'], seed=args.seed, train=False, annotation='caption', style=args.dataset)
items = [held[i][0] for i in range(size['held_out'])]
images, captions = torch.stack([it['image'] for it in items]), [it['caption'] for it in items]
probe = paired_probe(ckpt, images, captions, args.seed)
scorer = train_scorer(size['image_size'], size['scorer_images'], size['scorer_steps'], args.seed, args.dataset)
rows = {'real': alignment(scorer, images, captions), 'chance': alignment(scorer, images, captions[1:] + captions[:1])}
rows['real']['swd'] = swd(render(args.seed + 3_000_000_019, len(images), size['image_size'], args.dataset)[0], images)
for s in scales:
    x = samples(ckpt, captions, 'text', s, args.out_dir, args.seed, size['sample_steps'])
    rows[f'samples, cfg {s:g}'] = {**alignment(scorer, x, captions), 'swd': swd(x, images)}
    save_image_grid(torch.cat([images[:8], x[:8]]), os.path.join(args.out_dir, f'grid_text_cfg{s:g}.png'), nrow=8)
report['text'] = {'probe': probe, 'alignment': rows, 'grid_prompts': captions[:8]}
lines += ["## Text", "", probe_line('caption', probe), "",
          "| scored | background | colour | kind | all three | SWD x1e3 vs held-out |", "|---|---|---|---|---|---|"]
lines += [f"| {name} | {r['background']:.3f} | {r['colour']:.3f} | {r['kind']:.3f} | {r['all']:.3f} | "
          f"{r.get('swd', float('nan')):.1f} |" for name, r in rows.items()]
lines += ["", "grid_text_cfg<s>.png: the real held-out images (top row) and the samples for their captions (bottom):"]
lines += [f"{i + 1}. {c}" for i, c in enumerate(captions[:8])]
# layout: the same held-out images with their boxes; the probe, and the IoU of the largest box with what is drawn
if args.layout:
    ckpt = trained('layout', steps, args.out_dir, args.dataset, args.seed, size)
    held = DeadLeaves(size['image_size'], seed=args.seed, train=False, annotation='layout', max_objects=MAX_OBJECTS,
                      style=args.dataset)
    layouts = [layout_prompt(held[i][0]['boxes']) for i in range(size['held_out'])]
    probe = paired_probe(ckpt, images, layouts, args.seed)
    iou = lambda x, prompts: float(np.mean([box_iou(xi, p) for xi, p in zip(x, prompts)]))  # noqa: E731
    rows = {'real': {'iou': iou(images, layouts)}, 'chance': {'iou': iou(images, layouts[1:] + layouts[:1])}}
    for s in scales:
        x = samples(ckpt, layouts, 'layout', s, args.out_dir, args.seed, size['sample_steps'])
        rows[f'samples, cfg {s:g}'] = {'iou': iou(x, layouts), 'swd': swd(x, images)}
        save_image_grid(torch.cat([images[:8], x[:8]]), os.path.join(args.out_dir, f'grid_layout_cfg{s:g}.png'), nrow=8)
    report['layout'] = {'probe': probe, 'iou': rows, 'grid_prompts': layouts[:8]}
    lines += ["", "## Layout", "", probe_line('layout', probe), "",
              "IoU of each layout's largest box with the bounding box of the region of its colour drawn there (real: "
              "the held-out images with their own layouts; chance: with the next image's):", "",
              "| scored | box IoU | SWD x1e3 vs held-out |", "|---|---|---|"]
    lines += [f"| {name} | {r['iou']:.3f} | {r.get('swd', float('nan')):.1f} |" for name, r in rows.items()]
    lines += ["", "grid_layout_cfg<s>.png: the real held-out images (top row) and the samples for their layouts:"]
    lines += [f"{i + 1}. {c}" for i, c in enumerate(layouts[:8])]
with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=2)
with open(os.path.join(args.out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
print('\n'.join(lines))
