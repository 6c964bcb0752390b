"""
Datasets. dataset[i] is (x, y): x (3, H, W) float in [-1, 1], y the class id (0 when unlabelled). dataset.load(item)
also returns 1 when the item's file was unreadable and its next readable neighbour stands in (0 otherwise), for the
loaders to count. An item may be
`i` or `(i, item_seed)`; the seed drives augmentation, so the Loader in common.py can make every epoch's flips and crops
reproducible; a plain `i` gives the un-augmented image.

- DeadLeaves: the embedded default, a procedural dataset that needs no download and no disk. The dead-leaves model
  (Matheron; Lee, Mumford & Huang 2001) drops opaque shapes with power-law sizes, p(r) ~ r^-3, on top of each other;
  the result is scale invariant with the ~1/f amplitude spectrum and sharp occlusion edges of natural photographs.
  Rendered at 4x and box-downsampled (antialiasing), with smooth shading and a little sensor noise per shape.
- ImageFolder: a folder searched recursively (jpg, jpeg, png, webp, bmp). Class ids come from the first-level
  subfolders when every image sits in one (ImageNet's train folder works as is); otherwise the set is unlabelled.
"""
import os

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from common import die

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def _split_item(item):
    return item if isinstance(item, tuple) else (item, None)

# -----------------------------------------------------------------------------
# the embedded dataset

def dead_leaves(seed, index, size, supersample=4, r_min=2.0, max_shapes=400):
    """One dead-leaves image, deterministic in (seed, index). Returns float32 (H, W, 3) in [0, 1]."""
    rng = np.random.default_rng([seed, index])
    S = size * supersample
    r_min, r_max = r_min * supersample, 0.6 * S
    img = np.zeros((S, S, 3), np.float32)
    covered = np.zeros((S, S), bool)
    grid_y, grid_x = np.mgrid[0:S, 0:S].astype(np.float32)
    # scene-level colour mood, so images differ globally as photos do
    base_hue, hue_spread = rng.random(), rng.uniform(0.05, 0.4)
    # every shape's random parameters in one draw (the per-shape loop below only paints)
    n = max_shapes
    r = (r_min ** -2 - rng.random(n) * (r_min ** -2 - r_max ** -2)) ** -0.5  # inverse CDF of p(r) ~ r^-3 (scale invariance)
    cx, cy = rng.uniform(-r, S + r), rng.uniform(-r, S + r)
    is_disk, angle, aspect = rng.random(n) < 0.5, rng.uniform(0, np.pi, n), rng.uniform(0.25, 1.0, n)
    hue = (base_hue + hue_spread * rng.standard_normal(n)) % 1.0
    sat, val = rng.uniform(0.1, 0.6, n), rng.uniform(0.4, 0.85, n)
    gradient = rng.normal(0, 0.3, (n, 2)) / np.maximum(r, 1.0)[:, None]
    for k in range(n):
        x0, x1 = max(int(cx[k] - r[k]), 0), min(int(cx[k] + r[k]) + 1, S)
        y0, y1 = max(int(cy[k] - r[k]), 0), min(int(cy[k] + r[k]) + 1, S)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = grid_x[y0:y1, x0:x1] - cx[k], grid_y[y0:y1, x0:x1] - cy[k]
        if is_disk[k]:
            mask = dx * dx + dy * dy <= r[k] * r[k]
        else:  # rotated rectangle with aspect ratio up to 4
            c, s_ = np.cos(angle[k]), np.sin(angle[k])
            mask = (np.abs(dx * c + dy * s_) <= r[k]) & (np.abs(dy * c - dx * s_) <= r[k] * aspect[k])
        mask &= ~covered[y0:y1, x0:x1]  # front to back: earlier shapes occlude later ones
        if not mask.any():
            continue
        colour = _hsv_to_rgb(hue[k], sat[k], val[k])
        # smooth shading: a linear gradient across the shape, like light falling on a surface
        shade = 1.0 + gradient[k, 0] * dx[mask] + gradient[k, 1] * dy[mask]
        img[y0:y1, x0:x1][mask] = np.clip(colour[None, :] * shade[:, None], 0, 1)
        covered[y0:y1, x0:x1] |= mask
        if k % 16 == 15 and covered.mean() > 0.995:  # what is left are specks, averaged away below
            break
    if not covered.all():  # the rest is far background
        img[~covered] = _hsv_to_rgb(base_hue, 0.3, 0.5)
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))  # box filter = antialiased downsampling
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)  # sensor noise floor of a real camera
    return np.clip(img, 0, 1)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


class DeadLeaves(torch.utils.data.Dataset):
    """Unlimited, deterministic per (seed, index). The held-out stream (train=False) uses a disjoint seed."""
    infinite = True
    num_classes = 0

    def __init__(self, image_size, seed=0, train=True):
        self.image_size = image_size
        self.seed = seed if train else seed + 1_000_000_007

    def __len__(self):
        return 2 ** 31 - 1

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, _ = _split_item(item)
        x = torch.from_numpy(dead_leaves(self.seed, i, self.image_size)).permute(2, 0, 1)
        return x * 2 - 1, 0, 0

# -----------------------------------------------------------------------------
# image folders

def list_images(root):
    """Image files under root, searched recursively in sorted order. Symbolic links are followed, but no folder is
    entered twice (a link loop would otherwise list the data set over and over), and only regular files count (a named
    pipe called x.png would block the reader forever)."""
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        files += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(dirpath, f))]
    return files


# the largest value of each integer image mode: 16-bit PNGs open as I;16, or as I in older Pillow (PNG has no 32-bit)
_INT_MODE_MAX = {'I;16': 65535, 'I;16B': 65535, 'I;16L': 65535, 'I;16N': 65535}


def open_image(path):
    """An image file -> 8-bit RGB, upright: the EXIF orientation of phone photos is applied; 16-bit grey is rescaled by
    its bit depth (a dark 16-bit image stays dark); alpha is composited on white; palettes are expanded. Decodes now,
    so a truncated file fails here, not later."""
    with open(path, 'rb') as f:
        img = Image.open(f)
        img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in _INT_MODE_MAX or img.mode == 'I':
        top = _INT_MODE_MAX.get(img.mode, 65535 if img.format == 'PNG' else 2 ** 31 - 1)
        a = np.asarray(img, dtype=np.float64) / top
        img = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8), 'L')
    if img.mode == 'P':
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'LA'):
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert('RGBA'))
    return img.convert('RGB')


UNREADABLE = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)  # what PIL raises for a bad file


def open_first_readable(files, i, root):
    """(image, index, unreadable): files[i], or when it cannot be read the next readable file, and 1 if files[i] was
    unreadable (else 0), so that every reader counts bad files, once per pass, rather than crash on them or hide them."""
    for skipped in range(len(files)):
        j = (i + skipped) % len(files)
        try:
            return open_image(files[j]), j, int(skipped > 0)
        except UNREADABLE:
            continue
    die(f"none of the {len(files)} images under {root} could be read.")


def center_crop(img, size):
    """Resize the short side to `size` (box filter halving first, then bicubic, as ADM does) and crop the centre."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(img, size, rng):
    """Random downscale, log-uniform between none and 'short side = size', then a random size x size crop."""
    short = min(img.size)
    if short < size:
        return center_crop(img, size)
    scale = np.exp(rng.uniform(np.log(size / short), 0.0))
    if scale < 1.0:
        img = img.resize(tuple(max(size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)
    left = int(rng.integers(0, img.size[0] - size + 1))
    top = int(rng.integers(0, img.size[1] - size + 1))
    return img.crop((left, top, left + size, top + size))


class ImageFolder(torch.utils.data.Dataset):
    infinite = False

    def __init__(self, root, image_size, flip=True, random_crop=False):
        if not os.path.isdir(root):
            die(f"--data {root} is not a folder; point it at a folder of images.")
        files = list_images(root)
        if not files:
            die(f"--data {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), searched recursively.")
        self.root, self.files, self.image_size = root, files, image_size
        self.flip, self.random_crop = flip, random_crop
        top = [os.path.relpath(f, root).split(os.sep) for f in files]
        if all(len(t) > 1 for t in top) and len({t[0] for t in top}) > 1:
            self.classes = sorted({t[0] for t in top})
            index = {c: k for k, c in enumerate(self.classes)}
            self.labels = [index[t[0]] for t in top]
        else:
            self.classes, self.labels = [], [0] * len(files)
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, item_seed = _split_item(item)
        # unreadable or truncated files are replaced by the next readable one and counted, never a crash mid-epoch
        img, j, unreadable = open_first_readable(self.files, i, self.root)
        rng = np.random.default_rng([item_seed if item_seed is not None else 0, i])
        img = random_crop(img, self.image_size, rng) if self.random_crop else center_crop(img, self.image_size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)  # (3, H, W)
        if self.flip and item_seed is not None and rng.random() < 0.5:
            x = x.flip(2)
        return x.contiguous(), self.labels[j], unreadable


def make_dataset(data, image_size, seed=0, train=True, random_crop=False):
    """data=None -> the embedded DeadLeaves stream; else an ImageFolder (evaluation: no flips)."""
    if data is None:
        return DeadLeaves(image_size, seed=seed, train=train)
    return ImageFolder(data, image_size, flip=train, random_crop=random_crop)


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we count, not a silently grey image
