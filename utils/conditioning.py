"""
Conditioning tasks of a latent diffusion model, built in one place, as CompVis' LatentDiffusion.get_input builds c
from a batch: the task names, the pixels each task's condition comes from (TaskData: the super-resolution
degradations, the inpainting masks, the label maps), and get_input, which turns a batch of them into the condition
dict the denoiser is fed (model.apply_model, CompVis' DiffusionWrapper):

  'concat'  (B, k, h, w) spatially aligned with z_t, concatenated to its channels (LDM Sec. 3.3, c_concat)
  'y'       (B,) class labels, or None
  'tokens'  (B, L) a caption or a layout, which the UNet's tau_theta encodes into the context it cross-attends to
            (LDM Sec. 3.3, c_crossattn), with 'context_mask' (B, L), True = a real token

  none      unconditional, or class-conditional through 'y'
  sr        super-resolution: the low-resolution image, resized to the latent grid (LDM-SR; for f4 at x4 it already is)
  inpaint   the latent of the masked image, normalised like z, and the mask at the latent grid (CompVis' inpaint.py)
  semantic  the one-hot label map, rescaled to the latent grid as CompVis' SpatialRescaler does
  text      the caption's tokens (tokenizer.py), "" with probability cond_dropout_prob in training (for guidance)
  layout    the boxes' tokens (tokenizer.LayoutTokenizer, taming's triples), no box with probability cond_dropout_prob

A batch is a dict with CompVis' keys: 'image' (B, 3, H, W) in [-1, 1], 'LR_image' (B, 3, H/s, W/s) in [-1, 1],
'mask' (B, 1, H, W) with 1 = hole (CompVis: mask >= 0.5 is the hole), 'segmentation' (B, H, W) int64 class ids,
'caption' (a list of B strings), 'boxes' (B, max_objects, 5) of data.boxes_tensor.
Every random draw (a degradation, a mask) is seeded per item, so a resumed run sees the same conditions.
Run nothing here directly: train_ldm.py and sample.py import it.
"""
import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


from utils.cli import DEGRADATIONS, MASK_KINDS, TASKS  # the names the flags offer
from utils.data import boxes_list, boxes_tensor
from utils.tokenizer import from_state


def task_config(task, sr_factor=4, degradation='bicubic', masks='mixed', mask_area=(0.0, 1.0), num_labels=0,
                tokenizer=None, max_length=77, cond_dropout_prob=0.1):
    """What a checkpoint records of its task: the task and only the settings that task reads. text and layout record
    their tokenizer whole (tokenizer.state(), a BERT vocabulary included), so that sampling needs no file."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")
    if task == 'sr':
        return {'task': task, 'sr_factor': sr_factor, 'degradation': degradation}
    if task == 'inpaint':
        return {'task': task, 'masks': masks, 'mask_area': list(mask_area)}
    if task == 'semantic':
        return {'task': task, 'num_labels': num_labels}
    if task in ('text', 'layout'):
        max_length = 3 * tokenizer.max_objects if task == 'layout' else max_length
        return {'task': task, 'tokenizer': tokenizer.state(), 'max_length': max_length,
                'cond_dropout_prob': cond_dropout_prob}
    return {'task': task}


def describe(cfg):
    """A task config for a message: a recorded tokenizer by its kind and size, not its whole vocabulary."""
    tok = cfg.get('tokenizer')
    if tok is None:
        return cfg
    size = len(tok.get('vocab', tok.get('classes', [])))
    return {**cfg, 'tokenizer': tok['kind'] + (f" ({size} {'classes' if tok['kind'] == 'layout' else 'tokens'})" if size else '')}


def concat_channels(cfg, z_channels):
    """k, the channels a task concatenates to z_t (the UNet's cond_channels)."""
    return {'none': 0, 'sr': 3, 'inpaint': z_channels + 1, 'semantic': cfg.get('num_labels', 0)}[cfg['task']]

# -----------------------------------------------------------------------------
# super-resolution: the degradations, per image (3, H, W) in [-1, 1] -> (3, H/s, W/s)


def bicubic_downsample(x, factor):
    """SR3's degradation, PIL's bicubic downsampling by `factor` (as LDM's ImageNetSR 'pil_bicubic'), on the 8-bit
    image: torch's antialiased bicubic on uint8 is PIL's separable filter (a = -0.5, widened by the factor), to one
    8-bit level. The LR image is then what an LR PNG holds. x (..., 3, H, W) in [-1, 1] -> (..., 3, H/s, W/s)."""
    lead = x.shape[:-3]
    u8 = ((x.reshape(-1, *x.shape[-3:]).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    lr = F.interpolate(u8, size=(x.shape[-2] // factor, x.shape[-1] // factor), mode='bicubic', antialias=True,
                       align_corners=False)
    return (lr.float() / 127.5 - 1).reshape(*lead, *lr.shape[-3:])


def gaussian_kernel(rng, sf):
    """bsrgan_light's add_blur kernel: half the time an anisotropic Gaussian (eigenvalues l1, l2 ~ U(0, (4 + sf) / 4),
    size 3 + U{2..11}), else an isotropic one (sigma ~ U(0, (2 + 0.2 sf) / 4), size 3 + U{2..4}). -> (k, k) float64."""
    wd2, wd = (4.0 + sf) / 4, (2.0 + 0.2 * sf) / 4  # bsrgan_light's quarter of bsrgan's widths
    if rng.random() < 0.5:
        l1, l2 = max(wd2 * rng.random(), 1e-6), max(wd2 * rng.random(), 1e-6)
        size, theta = int(rng.integers(2, 12)) + 3, rng.random() * np.pi
        v = np.array([np.cos(theta), np.sin(theta)])
        V = np.array([[v[0], v[1]], [v[1], -v[0]]])
        cov = V @ np.diag([l1, l2]) @ np.linalg.inv(V)  # Sigma = V D V^-1
        c = np.arange(size) - size / 2.0 + 0.5  # bsrgan's gm_blur_kernel grid (half-pixel offset for even sizes)
        d = np.stack(np.meshgrid(c, c, indexing='xy'), -1)  # (k, k, 2) as (x, y)
        k = np.exp(-0.5 * np.einsum('...i,ij,...j->...', d, np.linalg.inv(cov), d))  # N(d; 0, Sigma), unnormalised
    else:
        size, sigma = int(rng.integers(2, 5)) + 3, max(wd * rng.random(), 1e-6)
        c = np.arange(size) - (size - 1) / 2.0  # fspecial's grid
        yy, xx = np.meshgrid(c, c, indexing='ij')
        k = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
        k[k < np.finfo(float).eps * k.max()] = 0
    return k / k.sum()


def blur(x, rng, sf):
    """bsr_light step 1: convolve each channel with gaussian_kernel, mirror padding (scipy's 'mirror' = torch's
    'reflect'). x (3, H, W)."""
    k = torch.from_numpy(gaussian_kernel(rng, sf)).float()
    kh, kw = k.shape
    pad = (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2)
    xp = F.pad(x[None].float(), pad, mode='reflect')
    return F.conv2d(xp, k.flip(0, 1).expand(3, 1, kh, kw).contiguous(), groups=3)[0]  # flip: a convolution, as scipy


def resize_down(x, rng, size):
    """bsr_light step 2: resize to `size` with one of OpenCV's interpolations bsrgan draws (1 linear, 2 cubic,
    3 area), here torch's, without antialiasing as OpenCV's linear and cubic have none. x (3, H, W)."""
    mode = ('bilinear', 'bicubic', 'area')[int(rng.integers(0, 3))]
    kw = {} if mode == 'area' else {'align_corners': False}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kw)[0].clamp(-1, 1)


def gaussian_noise(x, rng, level=(1, 2)):
    """bsr_light step 3: Gaussian noise of sigma = U{1..2} / 255 on [0, 1] (bsrgan_light's noise levels): colour noise
    with p 0.4, the same noise on all channels with p 0.4, channel-correlated noise with p 0.2. x (3, H, W)."""
    sigma = int(rng.integers(level[0], level[1] + 1)) / 255.0 * 2  # on [-1, 1]: twice the [0, 1] sigma
    u, (_, H, W) = rng.random(), x.shape
    if u > 0.6:
        n = rng.normal(0, sigma, (3, H, W))
    elif u < 0.4:
        n = np.repeat(rng.normal(0, sigma, (1, H, W)), 3, 0)
    else:  # N(0, L^2 U^T D U), L = the largest level, as bsrgan's third kind
        U = np.linalg.qr(rng.random((3, 3)))[0]
        cov = np.abs((level[1] / 255.0 * 2) ** 2 * U.T @ np.diag(rng.random(3)) @ U)
        n = rng.multivariate_normal(np.zeros(3), cov, (H, W)).transpose(2, 0, 1)
    return (x + torch.from_numpy(n).float()).clamp(-1, 1)


def jpeg(x, rng, quality=(80, 95)):
    """bsr_light step 4: JPEG compression at a quality U{80..95} (bsrgan_light's add_JPEG_noise), through PIL.
    x (3, H, W) -> the decoded image, on the 8-bit grid."""
    q = int(rng.integers(quality[0], quality[1] + 1))
    u8 = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format='JPEG', quality=q)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'), dtype=np.float32)
    return torch.from_numpy(out / 127.5 - 1).permute(2, 0, 1)


def bsr_light(x, factor, seed):
    """LDM's lighter BSR degradation (bsrgan_light's degradation_bsrgan_variant), in a fixed order with one seeded
    generator per step: blur -> resize to H/s x W/s -> noise -> JPEG. bsrgan_light shuffles the order and resizes
    through a random intermediate size; the fixed order (an extension, named bsr_light here) lands on the LR size
    exactly and lets each step be tested on its own. x (3, H, W) in [-1, 1] -> (3, H/s, W/s)."""
    r_blur, r_resize, r_noise, r_jpeg = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    x = blur(x, r_blur, factor)
    x = resize_down(x, r_resize, (x.shape[-2] // factor, x.shape[-1] // factor))
    x = gaussian_noise(x, r_noise)
    return jpeg(x, r_jpeg)


def degrade(x, factor, degradation, seed):
    """The LR image of x (3, H, W) in [-1, 1] under `degradation` -> (3, H / factor, W / factor)."""
    if degradation == 'bicubic':
        return bicubic_downsample(x, factor)
    if degradation == 'bsr_light':
        return bsr_light(x, factor, seed)
    raise ValueError(f"unknown degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}.")

# -----------------------------------------------------------------------------
# inpainting: LaMa-like masks, (1, H, W) float with 1 = hole

# LaMa's mask generators' settings at 256 px (its irregular 'thick' and 'thin' strokes, and boxes), scaled to the image
MASK_SETTINGS = {
    'thick': dict(max_angle=4, max_len=200, max_width=100, min_times=1, max_times=5),
    'thin': dict(max_angle=4, max_len=100, max_width=40, min_times=4, max_times=50),
    'box': dict(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=5),
}


def _strokes(rng, H, W, max_angle, max_len, max_width, min_times, max_times):
    """LaMa's make_random_irregular_mask: polylines of random angle, length and brush width, drawn with round joints."""
    s = min(H, W) / 256
    img = Image.new('L', (W, H), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        for _ in range(1 + int(rng.integers(0, 5))):
            angle = 0.01 + rng.uniform(0, max_angle)
            angle = 2 * np.pi - angle if rng.random() < 0.5 else angle
            length, width = 10 * s + rng.uniform(0, max_len * s), max(1, round(5 * s + rng.uniform(0, max_width * s)))
            x2 = int(np.clip(x + length * np.sin(angle), 0, W - 1))
            y2 = int(np.clip(y + length * np.cos(angle), 0, H - 1))
            draw.line([(x, y), (x2, y2)], fill=1, width=width)
            r = width / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
            x, y = x2, y2
    return np.asarray(img, dtype=np.float32)


def _boxes(rng, H, W, margin, bbox_min_size, bbox_max_size, min_times, max_times):
    """LaMa's make_random_rectangle_mask: axis-aligned boxes inside a margin."""
    s = min(H, W) / 256
    margin, lo, hi = round(margin * s), max(1, round(bbox_min_size * s)), max(2, round(bbox_max_size * s))
    m = np.zeros((H, W), np.float32)
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        bw = int(rng.integers(lo, max(lo + 1, min(hi, W - 2 * margin))))
        bh = int(rng.integers(lo, max(lo + 1, min(hi, H - 2 * margin))))
        x0 = int(rng.integers(margin, max(margin + 1, W - margin - bw)))
        y0 = int(rng.integers(margin, max(margin + 1, H - margin - bh)))
        m[y0:y0 + bh, x0:x0 + bw] = 1
    return m


def random_mask(H, W, kind, seed, area=(0.0, 1.0), tries=1000):
    """A LaMa-like mask (1, H, W) float, 1 = hole, deterministic in seed, whose hole covers a share of the image in
    [area[0], area[1]]: masks are drawn until one does (LaMa keeps its masks by area the same way). 'mixed' picks one
    of thick, thin and box per draw."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        k = MASK_KINDS[int(rng.integers(0, 3))] if kind == 'mixed' else kind
        m = (_boxes if k == 'box' else _strokes)(rng, H, W, **MASK_SETTINGS[k])
        if area[0] <= m.mean() <= area[1]:
            return torch.from_numpy(m)[None]
    raise ValueError(f"no {kind} mask of {H}x{W} covered {area[0]:g} to {area[1]:g} of the image in {tries} draws; "
                     f"widen --mask_area or choose other --masks.")


def masked_image(x, mask):
    """CompVis' inpaint.py: (1 - m) x in [0, 1], mapped to [-1, 1]: the hole is black (-1). x (B, 3, H, W)."""
    return (1 - mask) * (x + 1) - 1  # = 2 ((1 - m) (x + 1) / 2) - 1


def latent_mask(mask, size):
    """The mask at the latent grid, as CompVis' inpaint.py: F.interpolate (nearest) of the mask mapped to [-1, 1]."""
    return F.interpolate(mask * 2 - 1, size=size)

# -----------------------------------------------------------------------------
# semantic synthesis


def spatial_rescale(onehot, size):
    """CompVis' SpatialRescaler: n_stages of bilinear interpolation by multiplier 0.5 (its defaults), n = log2 of the
    size ratio, here without its learned 1x1 remap (out_channels), which the UNet's first convolution absorbs.
    Bilinear by 1/2 (align_corners False) is the mean of each 2x2 block, so the result holds each class's share of
    a latent cell. onehot (B, K, H, W) -> (B, K, size)."""
    x = onehot.float()
    while x.shape[-2] > size[0]:
        x = F.interpolate(x, scale_factor=0.5, mode='bilinear')
    if tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"a label map of {tuple(onehot.shape[-2:])} does not halve to the latent grid {tuple(size)}.")
    return x

# -----------------------------------------------------------------------------
# the condition of a batch


def get_input(cfg, batch, encode, latent_size, dropout=0.0, device='cpu'):
    """CompVis' get_input: a batch (the dict above, on the device) -> the condition dict the denoiser is fed.
    encode(x) -> the normalised latent (z - shift) * scale of pixels x; latent_size (h, w) the grid of z. dropout:
    text and layout, the share of conditions dropped (training: cfg's cond_dropout_prob)."""
    task, cond = cfg['task'], {}
    if task == 'sr':
        lr = batch['LR_image'].float()
        if tuple(lr.shape[-2:]) != tuple(latent_size):  # f8 at x4: the LR image is twice the latent grid
            lr = F.interpolate(lr, size=latent_size, mode='bicubic', antialias=True, align_corners=False)
        cond['concat'] = lr  # (B, 3, h, w)
    elif task == 'inpaint':
        m = batch['mask'].float()
        cond['concat'] = torch.cat([encode(masked_image(batch['image'], m)), latent_mask(m, latent_size)], 1)
    elif task == 'semantic':
        onehot = F.one_hot(batch['segmentation'].long(), cfg['num_labels']).permute(0, 3, 1, 2)
        cond['concat'] = spatial_rescale(onehot, latent_size)  # (B, K, h, w)
    elif task in ('text', 'layout'):
        cond['tokens'], cond['context_mask'] = (v.to(device) for v in tokenize(cfg, batch, dropout))
    return cond


def tokenize(cfg, batch, dropout=0.0):
    """A batch's captions or layouts -> tokens (B, L) and mask (B, L). Each is dropped with probability `dropout` for
    classifier-free guidance: a dropped caption is "" (LDM's unconditional c = get_learned_conditioning([""])), a
    dropped layout has no box; the draw is torch's global RNG, which a resume restores."""
    text = cfg['task'] == 'text'
    notes = list(batch['caption']) if text else [boxes_list(b) for b in batch['boxes'].cpu()]
    drop = (torch.rand(len(notes)) < dropout).tolist() if dropout > 0 else [False] * len(notes)
    notes = [('' if text else []) if d else n for n, d in zip(notes, drop)]
    return from_state(cfg['tokenizer']).encode(notes, cfg['max_length'])


def read_prompts(cfg, prompts, prompt_file, negative_prompt):
    """sample.py's prompts for a text or layout model (--prompt, repeatable, then --prompt_file's lines) -> (items, null):
    one item per prompt, {'caption'} or {'boxes' (data.boxes_tensor), 'prompt'}, and the negative prompt's item."""
    prompts = list(prompts or [])
    if prompt_file is not None:
        if not os.path.isfile(prompt_file):
            raise ValueError(f"--prompt_file {prompt_file} does not exist; pass a text file of prompts, one a line.")
        with open(prompt_file, encoding='utf-8') as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            raise ValueError(f"--prompt_file {prompt_file} holds no prompt; write one prompt a line.")
        prompts += lines
    if not prompts:
        raise ValueError(f"this model was trained on --task {cfg['task']}; give it --prompt \"...\" (repeatable) or "
                         f"--prompt_file F.")
    if cfg['task'] == 'text':
        return [{'caption': p} for p in prompts], {'caption': negative_prompt}
    tok = from_state(cfg['tokenizer'])

    def item(p):
        return {'boxes': boxes_tensor(tok.parse(p), tok.max_objects), 'prompt': p}
    return [item(p) for p in prompts], item(negative_prompt)


def prompt_text(item):
    """The prompt an item of read_prompts was made from."""
    return item['caption'] if 'caption' in item else item['prompt']


def collate(items, device):
    """Items (dicts) -> one batch on the device: tensors stacked, strings (captions) as a list."""
    return {k: torch.stack([it[k] for it in items]).to(device) if torch.is_tensor(items[0][k])
            else [it[k] for it in items] for k in items[0]}


class TaskData(torch.utils.data.Dataset):
    """A data.py dataset's items as the batches of a task: {'image', and 'LR_image' | 'mask' | 'segmentation'}. The LR
    image and the mask are made from the item's own seed (the loader's item seed and index), so they are the same on
    every run and every resume. Semantic synthesis needs a data set with label maps (data.DeadLeaves with
    segmentation, or data.LabelledFolder), whose items already are such dicts."""

    def __init__(self, images, cfg, seed):
        self.images, self.cfg, self.seed = images, cfg, seed
        self.infinite = getattr(images, 'infinite', False)
        self.num_classes = images.num_classes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        x, y, unreadable = self.images.load(item)
        batch = dict(x) if isinstance(x, dict) else {'image': x}
        i, item_seed = item if isinstance(item, tuple) else (item, None)
        seed = [self.seed, item_seed or 0, i]  # this item's own stream
        task, H, W = self.cfg['task'], batch['image'].shape[-2], batch['image'].shape[-1]
        if task == 'sr':
            batch['LR_image'] = degrade(batch['image'], self.cfg['sr_factor'], self.cfg['degradation'], seed)
        elif task == 'inpaint':
            batch['mask'] = random_mask(H, W, self.cfg['masks'], seed, self.cfg['mask_area'])
        elif task == 'semantic' and 'segmentation' not in batch:
            raise ValueError("semantic synthesis needs label maps: the embedded data's, or --data with x_label.png "
                             "beside each x.png.")
        return batch, y, unreadable

# -----------------------------------------------------------------------------
# sample.py's inputs: a folder of conditions, one sample each

def _suffixed(folder, suffix):
    """{name: path} of the PNG/JPEG images in `folder` whose stem ends with `suffix`, and {name: path} of the rest."""
    found, rest = {}, {}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        if ext.lower() not in ('.png', '.jpg', '.jpeg', '.bmp', '.webp'):
            continue
        if suffix and stem.endswith(suffix):
            found[stem[:-len(suffix)]] = os.path.join(folder, f)
        else:
            rest[stem] = os.path.join(folder, f)
    return found, rest


def _rgb(path):  # -> (3, H, W) in [-1, 1]
    return torch.from_numpy(np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def read_inputs(cfg, folder, multiple):
    """The conditions in `folder` for a model of task cfg -> [(name, item)], item as TaskData's (without a target
    image for sr and semantic), with every check a user's files can fail as ValueError's one sentence:
      img2img   (sample.py --strength) every image is an input to edit
      sr        every image is an LR input; its size times the factor must be a multiple of `multiple` (the latent
                factor times the UNet's downsampling)
      inpaint   x.png with x_mask.png beside it, of x's size, binary (0 or 255; >= 128 is the hole, as CompVis' >= 0.5)
      semantic  x_label.png, one-channel class ids below the model's num_labels
    A file without its partner is counted and named. The sizes must be multiples of `multiple` (convolutional
    sampling takes any such size)."""
    task = cfg['task']
    if task == 'img2img':  # sample.py --strength: every image is an input to edit
        _, files = _suffixed(folder, None)
        items = [(n, {'image': _rgb(p)}) for n, p in files.items()]
    elif task == 'sr':
        _, files = _suffixed(folder, None)
        items = [(n, {'LR_image': _rgb(p)}) for n, p in files.items()]
        for n, it in items:
            h, w = (s * cfg['sr_factor'] for s in it['LR_image'].shape[-2:])
            if h % multiple or w % multiple:
                raise ValueError(f"{files[n]} is {w // cfg['sr_factor']}x{h // cfg['sr_factor']}; times the factor "
                                 f"{cfg['sr_factor']} it must be a multiple of {multiple} on each side (the LR side a "
                                 f"multiple of {multiple // np.gcd(multiple, cfg['sr_factor'])}), so crop it.")
    elif task == 'inpaint':
        masks, images = _suffixed(folder, '_mask')
        alone = sorted(set(masks) ^ set(images))
        if alone:
            raise ValueError(f"{len(alone)} file(s) under {folder} lack their partner (first: {alone[0]}; x.png needs "
                             f"x_mask.png and the other way round); add or remove them.")
        items = []
        for n in images:
            x, m = _rgb(images[n]), np.asarray(Image.open(masks[n]).convert('L'))
            if m.shape != tuple(x.shape[-2:]):
                raise ValueError(f"{masks[n]} is {m.shape[1]}x{m.shape[0]}, but its image is {x.shape[-1]}x"
                                 f"{x.shape[-2]}; a mask must be its image's size.")
            if not np.isin(m, (0, 255)).all():
                raise ValueError(f"{masks[n]} is not binary (it holds grey values); write 255 for the hole and 0 "
                                 f"for the known pixels.")
            items.append((n, {'image': x, 'mask': torch.from_numpy(m >= 128).float()[None]}))
    elif task == 'semantic':
        labels, _ = _suffixed(folder, '_label')
        items = []
        for n, p in labels.items():
            seg = np.asarray(Image.open(p))
            if seg.ndim != 2 or seg.max() >= cfg['num_labels']:
                raise ValueError(f"{p} holds a class id the model never saw (ids 0 to {cfg['num_labels'] - 1}, as "
                                 f"one-channel grey values); pass label maps of its data.")
            items.append((n, {'segmentation': torch.from_numpy(seg.astype(np.int64))}))
    else:
        raise ValueError(f"a model of task {task!r} takes no --input folder.")
    if not items:
        raise ValueError(f"{folder} holds no images to edit with --strength." if task == 'img2img' else
                         f"{folder} holds no inputs for --task {task}.")
    for n, it in items:
        hw = next(iter(it.values())).shape[-2:]
        if task != 'sr' and (hw[0] % multiple or hw[1] % multiple):
            raise ValueError(f"the input {n} is {hw[1]}x{hw[0]}; each side must be a multiple of {multiple} (the "
                             f"latent factor times the UNet's downsampling), so crop it.")
    return items


def output_size(cfg, item):
    """(H, W) in pixels of the sample an input makes."""
    if cfg['task'] == 'sr':
        return tuple(s * cfg['sr_factor'] for s in item['LR_image'].shape[-2:])
    return tuple((item['image'] if cfg['task'] in ('inpaint', 'img2img') else item['segmentation']).shape[-2:])
