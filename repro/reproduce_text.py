r"""
Is the caption learned? LDM's text-to-image (Sec. 3.3, cross-attention to tau_theta) in miniature, on the captioned
embedded dead leaves ("a red disk and a blue rectangle on a green background": the colour and kind of the two largest
shapes and the background colour, read from the generator's own parameters), run with the project's own scripts.

  python repro/reproduce_text.py                 # the miniature, sized for about 30 minutes on 2 idle CPU cores
  python repro/reproduce_text.py --smoke         # the pipeline at toy sizes (checks it runs; says nothing about text)

(1) train_ldm.py --task text trains the tiny UNet and its tau_theta jointly on the latents of the shipped baseline
autoencoder (assets/baseline_mini.safetensors), with caption dropout 0.1. (2) The probe's question for conditioning:
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

from utils.cli import HelpFormatter, checked, set_cpu_threads

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                 allow_abbrev=False)
parser.add_argument('--out_dir', type=str, default='out/reproduce_text', help='where everything goes')
parser.add_argument('--smoke', action='store_true', help='toy sizes: checks that the pipeline runs (the tests use it)')
parser.add_argument('--steps', type=checked(int, lo=1), default=None, help='LDM training steps; None: 3000 (smoke: 4)')
parser.add_argument('--cfg_scales', type=str, default='1,2,4', help='guidance scales of the trade-off')
parser.add_argument('--seed', type=checked(int, lo=0), default=0, help='seed of the LDM run and of every draw')
args = parser.parse_args()
set_cpu_threads()

import numpy as np  # noqa: E402  (the command line answers before the heavy imports)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from utils import conditioning  # noqa: E402
from utils.common import die, save_image_grid  # noqa: E402
from utils.data import COLOURS, DeadLeaves, caption, dead_leaves  # noqa: E402
from utils.weights import load_checkpoint  # noqa: E402
from repro.probe import load_ldm  # noqa: E402
from evaluation.swd import swd_descriptors, swd_from_descriptors, swd_resolutions  # noqa: E402

AE = os.path.join(ROOT, 'assets', 'baseline_mini.safetensors')
SIZES = {  # image size, batch, LDM steps, held-out images, scorer training images and steps, sampler steps
    'full': dict(image_size=32, batch_size=32, steps=3000, held_out=256, scorer_images=4000, scorer_steps=1500, sample_steps=50),
    'smoke': dict(image_size=16, batch_size=4, steps=4, held_out=8, scorer_images=16, scorer_steps=2, sample_steps=2),
}
LEVELS = (50, 200, 400, 600, 800)  # the DDPM timesteps the eps-MSE is probed at
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
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU(),
                                 nn.Conv2d(64, 64, 3, 1, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(64, len(NAMES[a])) for a in ATTRIBUTES)

    def forward(self, x):  # (B, 3, H, W) in [-1, 1] -> a list of logits, one per attribute
        h = self.net(x)
        return [head(h) for head in self.heads]


def render(seed, n, size):
    """n embedded images of stream `seed` -> (images (n, 3, H, W) in [-1, 1], their captions)."""
    pairs = [dead_leaves(seed, i, size, scene=True) for i in range(n)]
    return torch.stack([torch.from_numpy(p[0]).permute(2, 0, 1) * 2 - 1 for p in pairs]), [caption(p[1]) for p in pairs]


def train_scorer(size, n_images, steps, seed):
    """The scorer, trained on a stream of embedded images apart from the LDM's and the held-out ones."""
    x, captions = render(seed + 2_000_000_011, n_images, size)
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


@torch.no_grad()
def eps_mse_true_vs_shuffled(ckpt, images, captions, seed):
    """Per held-out image, the eps-MSE averaged over LEVELS with its own caption and with the next image's, with the
    same noise for both. -> (true (n,), shuffled (n,))."""
    model, process, config, shift, scale, ae = load_ldm(ckpt)
    cfg = config['conditioning']
    z = (ae.encode(images, sample=False)[0] - shift) * scale  # posterior means, normalised as in training
    g = torch.Generator().manual_seed(seed)
    out = []
    for caps in (captions, captions[1:] + captions[:1]):  # the next image's caption: a derangement
        tokens, mask = conditioning.tokenize(cfg, {'caption': caps})
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
ldm = os.path.join(args.out_dir, 'ldm')
# (1) the text LDM, made once (a rerun with the same steps reuses it)
if not os.path.isfile(os.path.join(ldm, 'ema.pt')) or load_checkpoint(os.path.join(ldm, 'ema.pt'), 'ldm')['step'] != steps:
    print(f"training the text LDM: {steps} steps -> {ldm}", flush=True)
    run('train_ldm.py', '--ae', AE, '--task', 'text', '--image_size', size['image_size'], '--batch_size',
        size['batch_size'], '--max_steps', steps, '--lr', '1e-3', '--ema_decay', '0.999', '--ema_warmup',
        '--num_samples', 4, '--sample_steps', 2, '--eval_interval', steps, '--ckpt_interval', steps,
        '--log_interval', max(steps // 20, 1), '--seed', args.seed, '--device', 'cpu', '--out_dir', ldm, '--overwrite')
ckpt = os.path.join(ldm, 'ema.pt')
held = DeadLeaves(size['image_size'], seed=args.seed, train=False, annotation='caption')
items = [held[i][0] for i in range(size['held_out'])]
images, captions = torch.stack([it['image'] for it in items]), [it['caption'] for it in items]
# (2) eps-MSE with the true caption against a shuffled one, paired over held-out images
true, shuffled = eps_mse_true_vs_shuffled(ckpt, images, captions, args.seed)
diff = shuffled - true
p = wilcoxon(shuffled, true, alternative='greater').pvalue if np.any(diff != 0) else 1.0
probe = {'eps_mse_true': float(true.mean()), 'eps_mse_shuffled': float(shuffled.mean()),
         'mean_diff': float(diff.mean()), 'sem_diff': float(diff.std(ddof=1) / len(diff) ** 0.5),
         'share_true_lower': float((diff > 0).mean()), 'wilcoxon_p': float(p), 'n': len(diff)}
# (3, 4) the scorer; real and chance; samples at each guidance scale
scorer = train_scorer(size['image_size'], size['scorer_images'], size['scorer_steps'], args.seed)
rows = {'real': alignment(scorer, images, captions), 'chance': alignment(scorer, images, captions[1:] + captions[:1])}
rows['real']['swd'] = swd(render(args.seed + 3_000_000_019, len(images), size['image_size'])[0], images)
prompt_file = os.path.join(args.out_dir, 'prompts.txt')
with open(prompt_file, 'w') as f:
    f.writelines(c + '\n' for c in captions)
for s in scales:
    out = os.path.join(args.out_dir, f'samples_cfg{s:g}')
    run('sample.py', '--ckpt', ckpt, '--prompt_file', prompt_file, '--n_samples', 1, '--cfg_scale', s,
        '--steps', size['sample_steps'], '--seed', args.seed, '--device', 'cpu', '--out_dir', out, '--overwrite')
    with np.load(os.path.join(out, 'samples.npz')) as f:
        x = torch.from_numpy(f['arr_0']).permute(0, 3, 1, 2).float() / 127.5 - 1
    rows[f'samples, cfg {s:g}'] = {**alignment(scorer, x, captions), 'swd': swd(x, images)}
    save_image_grid(torch.cat([images[:8], x[:8]]), os.path.join(args.out_dir, f'grid_cfg{s:g}.png'), nrow=8)
report = {'probe': probe, 'alignment': rows, 'steps': steps, 'image_size': size['image_size'],
          'grid_prompts': captions[:8]}
with open(os.path.join(args.out_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=2)
lines = ["# Text-to-image miniature", "",
         f"Held-out eps-MSE over t in {LEVELS}, n = {probe['n']} images: true caption {probe['eps_mse_true']:.4f}, "
         f"shuffled {probe['eps_mse_shuffled']:.4f}; shuffled - true = {probe['mean_diff']:.2e} +- "
         f"{probe['sem_diff']:.1e} (sem), lower with the true caption for {100 * probe['share_true_lower']:.0f}% "
         f"of images, Wilcoxon signed-rank p = {probe['wilcoxon_p']:.3g} (one-sided; the unit is a held-out image "
         f"of one LDM seed).", "",
         "| scored | background | colour | kind | all three | SWD x1e3 vs held-out |", "|---|---|---|---|---|---|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['background']:.3f} | {r['colour']:.3f} | {r['kind']:.3f} | {r['all']:.3f} | "
                 f"{r.get('swd', float('nan')):.1f} |")
lines += ["", "grid_cfg<s>.png: the real held-out images (top row) and the samples for their captions (bottom):"]
lines += [f"{i + 1}. {c}" for i, c in enumerate(captions[:8])]
with open(os.path.join(args.out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
print('\n'.join(lines))

