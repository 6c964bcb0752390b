"""
The training data sets, images and clips (make_dataset); the latent cache of train_ldm.py is in latent_cache.py and
the sets the evaluation scores in evaluation/sources.py. Datasets:
dataset[i] is (x, y): x (3, H, W) float in [-1, 1], y the class id (0 when unlabelled). dataset.load(item)
also returns 1 when the item's file was unreadable and its next readable neighbour stands in (0 otherwise), for the
loaders to count. An item may be
`i` or `(i, item_seed)`; the seed drives augmentation, so the Loader in common.py can make every epoch's flips and crops
reproducible; a plain `i` gives the un-augmented image.

- DeadLeaves: the embedded default, a procedural dataset that needs no download and no disk. The dead-leaves model
  (Matheron; Lee, Mumford & Huang 2001) drops opaque shapes with power-law sizes, p(r) ~ r^-3 from a radius of 4
  pixels up, on top of each other; the result is scale invariant with the ~1/f amplitude spectrum and sharp occlusion
  edges of natural photographs.
  Rendered at 4x and box-downsampled (antialiasing), with smooth shading and a little sensor noise per shape.
- ImageFolder: a folder searched recursively (jpg, jpeg, png, webp, bmp). Class ids come from the first-level
  subfolders when every image sits in one (ImageNet's train folder works as is); otherwise the set is unlabelled.
- Video (train_ae.py --num_frames N): clips x (3, N, H, W). DeadLeaves(num_frames=N), the embedded default (shapes of the
  still set moving over a panning dead-leaves background), and VideoFolder, videos decoded with PyAV (read_clip seeks
  to the clip instead of decoding the whole file; bad videos are counted skips).

Every subset of a data set (evaluation images, reference sets, the latent statistics) is random_subset(): a seeded
random sample of the whole set, never "the first N files", which on a class-sorted folder are a handful of classes.
"""
import os
import json

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from utils.cli import DATASETS
from utils.common import die

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def _split_item(item):
    return item if isinstance(item, tuple) else (item, None)

# -----------------------------------------------------------------------------
# the embedded dataset

def dead_leaves(seed, index, size, supersample=4, r_min=4.0, max_shapes=400, texture_supersample=None,
                segmentation=False, scene=False, style='textured'):
    """One dead-leaves image, deterministic in (seed, index). Returns float32 (H, W, 3) in [0, 1]. texture_supersample:
    the factor by which the caller will shrink this image further (moving_dead_leaves renders its background at canvas
    resolution), so that leaf textures stay below the final pixel's Nyquist frequency. segmentation=True also returns
    the label map (H, W) int64 of the shape kind that covers each pixel (SHAPE_KINDS: the far background or a leaf's
    texture; style 'shapes': COLOUR_LABELS, the leaf's or background's colour name), the label covering most of the
    pixel's supersampled area. scene=True also returns (last) what was drawn,
    the captions' and layouts' source: {'background': its colour name, 'shapes': [{'colour', 'kind', 'area' (share
    of the image seen), 'box' (x0, y0, x1, y1) in [0, 1]}], largest first}. The image is the same either way.
    style='shapes': the recognisable set (DATASETS): 4-12 large leaves (radius 10-30% of the side) of independent,
    saturated hues with a light texture (a third of the contrast) on a visible background, so that a sample either
    shows whole shapes or does not, and a caption's colours are seen; r_min is then unused, and max_shapes caps the
    count (the count is drawn first, so that the images with max_shapes >= 12 are the default set's)."""
    rng = np.random.default_rng([seed, index])
    S = size * supersample
    r_min, r_max = r_min * supersample, 0.6 * S
    img = np.zeros((S, S, 3), np.float32)
    covered = np.zeros((S, S), bool)
    grid_y, grid_x = np.mgrid[0:S, 0:S].astype(np.float32)
    # scene-level colour mood, so images differ globally as photos do
    base_hue, hue_spread = rng.random(), rng.uniform(0.05, 0.4)
    # every shape's random parameters in one draw (the per-shape loop below only paints)
    shapes_style = style == 'shapes'
    if style not in DATASETS:
        raise ValueError(f"unknown dead-leaves style {style!r}; use one of {', '.join(DATASETS)}.")
    n = min(int(rng.integers(4, 13)), max_shapes) if shapes_style else max_shapes
    if shapes_style:  # few large leaves, each inside the image by at least half its radius
        r = rng.uniform(0.1, 0.3, n) * S
        cx, cy = rng.uniform(r / 2, S - r / 2), rng.uniform(r / 2, S - r / 2)
    else:
        r = (r_min ** -2 - rng.random(n) * (r_min ** -2 - r_max ** -2)) ** -0.5  # inverse CDF of p(r) ~ r^-3 (scale invariance)
        cx, cy = rng.uniform(-r, S + r), rng.uniform(-r, S + r)
    is_disk, angle, aspect = rng.random(n) < 0.5, rng.uniform(0, np.pi, n), rng.uniform(0.25, 1.0, n)
    if shapes_style:  # every leaf its own hue, saturated enough to be named
        hue, sat, val = rng.random(n), rng.uniform(0.45, 0.9, n), rng.uniform(0.5, 0.9, n)
    else:
        hue = (base_hue + hue_spread * rng.standard_normal(n)) % 1.0
        sat, val = rng.uniform(0.1, 0.6, n), rng.uniform(0.4, 0.85, n)
    gradient = rng.normal(0, 0.3, (n, 2)) / np.maximum(r, 1.0)[:, None]
    texture = LeafTextures(rng, n, S, supersample * (texture_supersample or 1))
    if shapes_style:
        texture.contrast /= 3
    # the label map: textured, 0 far background and 1 + the leaf's texture kind (SHAPE_KINDS); shapes, each leaf's and
    # the background's colour name (COLOUR_LABELS), a map a sample can follow and colour_names can read back
    colour_id = lambda h, s_: COLOUR_LABELS.index(colour_name(h, s_))  # noqa: E731
    kind = (np.full((S, S), colour_id(base_hue, 0.3) if shapes_style else 0, np.int64) if segmentation else None)
    shapes = []
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
        dx, dy = dx[mask], dy[mask]
        # smooth shading: a linear gradient across the shape, like light falling on a surface
        shade = (1.0 + gradient[k, 0] * dx + gradient[k, 1] * dy) * texture(k, dx, dy)
        img[y0:y1, x0:x1][mask] = np.clip(colour[None, :] * shade[:, None], 0, 1)
        covered[y0:y1, x0:x1] |= mask
        if scene:  # what is seen of shape k: mask holds only its visible pixels (shapes are painted front to back)
            ys, xs = np.nonzero(mask)
            shapes.append({'colour': colour_name(hue[k], sat[k]), 'kind': 'disk' if is_disk[k] else 'rectangle',
                           'area': len(ys) / S ** 2, 'box': [float(x0 + xs.min()) / S, float(y0 + ys.min()) / S,
                                                             float(x0 + xs.max() + 1) / S, float(y0 + ys.max() + 1) / S]})
        if kind is not None:
            kind[y0:y1, x0:x1][mask] = colour_id(hue[k], sat[k]) if shapes_style else 1 + texture.kind[k]
        if k % 16 == 15 and covered.mean() > 0.995:  # what is left are specks, averaged away below
            break
    if not covered.all():  # the rest is far background
        img[~covered] = _hsv_to_rgb(base_hue, 0.3, 0.5)
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))  # box filter = antialiased downsampling
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)  # sensor noise floor of a real camera
    out = [np.clip(img, 0, 1)]
    if kind is not None:  # the majority kind of each output pixel's supersample x supersample block
        votes = np.eye(len(COLOUR_LABELS if shapes_style else SHAPE_KINDS), dtype=np.int64)[kind].reshape(size, supersample, size, supersample, -1)
        out.append(votes.sum(axis=(1, 3)).argmax(-1))
    if scene:
        shapes.sort(key=lambda d: -d['area'])
        out.append({'background': colour_name(base_hue, 0.3), 'shapes': shapes})
    return out[0] if len(out) == 1 else tuple(out)


SHAPE_KINDS = ('background', 'plain', 'grating', 'noise')  # the label ids of dead_leaves(segmentation=True)


COLOURS = ('red', 'yellow', 'green', 'cyan', 'blue', 'magenta')  # the six hue sextants, centred on 0, 1/6, ..., 5/6
COLOUR_LABELS = COLOURS + ('grey',)  # the label ids of dead_leaves(style='shapes', segmentation=True), colour_names'
LAYOUT_CLASSES = tuple(f'{c} {k}' for c in COLOURS + ('grey',) for k in ('disk', 'rectangle'))
LAYOUT_MIN_AREA = 0.01  # shapes that cover less of the image are specks, not objects of a layout


def colour_name(hue, sat):
    """A leaf's colour in words: its hue's sextant, or grey when it is too pale (saturation < 0.2) to have one."""
    return 'grey' if sat < 0.2 else COLOURS[int(hue * 6 + 0.5) % 6]


def caption(scene):
    """The caption of a dead_leaves scene: the colour and kind of its two largest shapes, and its background colour,
    e.g. 'a red disk and a blue rectangle on a green background'."""
    named = [f"a {d['colour']} {d['kind']}" for d in scene['shapes'][:2]]
    return f"{' and '.join(named)} on a {scene['background']} background"


def layout(scene, max_objects):
    """The layout of a dead_leaves scene: (class, x0, y0, x1, y1) of its largest shapes that cover at least
    LAYOUT_MIN_AREA, class an index of LAYOUT_CLASSES, the box around what is seen of the shape."""
    return [(LAYOUT_CLASSES.index(f"{d['colour']} {d['kind']}"), *d['box'])
            for d in scene['shapes'][:max_objects] if d['area'] >= LAYOUT_MIN_AREA]


def colour_names(image):
    """Each pixel's colour in colour_name's words, as ids of COLOUR_LABELS: (3, H, W) in [-1, 1] -> (H, W)."""
    rgb = ((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-8), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(mx - mn, 1e-8)  # the hexcone hue: which channel is largest, and how far toward the next
    hue = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    return np.where(sat < 0.2, len(COLOURS), (hue * 6 + 0.5).astype(np.int64) % 6)


def box_iou(image, prompt):
    """How well an image (3, H, W) in [-1, 1] draws the first (largest) box of a layout prompt 'red disk x0 y0 x1 y1;
    ...' (sample.py's, coordinates in [0, 1]), by the generator's own colour names: the IoU of that box with the
    bounding box of the connected region of pixels of the box's colour that overlaps it most (0 where none does)."""
    from scipy import ndimage  # here, not at the top: training never imports scipy (tests/test_structure.py)
    name, *coords = prompt.split(';')[0].rsplit(' ', 4)
    colour = COLOUR_LABELS.index(name.split()[0])
    S = image.shape[-1]
    x0, y0, x1, y1 = (float(v) * S for v in coords)
    regions, n = ndimage.label(colour_names(image) == colour)
    inside = regions[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
    counts = np.bincount(inside.ravel(), minlength=n + 1)[1:]
    if n == 0 or counts.max() == 0:
        return 0.0
    ys, xs = np.nonzero(regions == 1 + counts.argmax())
    a0, b0, a1, b1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    overlap = max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
    return overlap / ((x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - overlap)


class LeafTextures:
    """The surface of each leaf: a third are plain (shaded only), a third carry a grating (a sinusoid of random
    frequency, orientation and phase) and a third a patch of 1/f noise (the amplitude spectrum of natural textures).
    Without texture the leaves are flat colour inside sharp edges, which an autoencoder codes as edges plus a mean;
    with it, a leaf has detail at every scale up to the pixel, as a photograph does, and the code must carry it.
    texture(k, dx, dy) -> the multiplicative texture of leaf k at offsets (dx, dy) from its centre, in canvas pixels,
    so a texture moves and turns with its leaf. Parameters are drawn once for n leaves from rng."""

    def __init__(self, rng, n, S, supersample):
        self.kind = rng.integers(0, 3, n)                                   # 0 plain, 1 grating, 2 noise
        self.contrast = rng.uniform(0.1, 0.35, n)
        # gratings from 1/16 to 1/3 cycles per output pixel, log-uniform; canvas pixels are 1/supersample of one
        self.frequency = np.exp(rng.uniform(np.log(1 / 16), np.log(1 / 3), n)) / supersample
        self.orientation, self.phase = rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
        self.offset = rng.integers(0, S, (n, 2))                           # where each leaf cuts its noise patch
        fy, fx = np.fft.fftfreq(S)[:, None], np.fft.rfftfreq(S)[None, :]
        amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / S)             # 1/f, the DC bin capped
        amplitude[0, 0] = 0.0
        spectrum = amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape))
        noise = np.fft.irfft2(spectrum, s=(S, S))                           # (S, S), periodic
        self.noise = (noise / noise.std()).astype(np.float32)
        self.S = S

    def __call__(self, k, dx, dy):
        if self.kind[k] == 1:
            u = dx * np.cos(self.orientation[k]) + dy * np.sin(self.orientation[k])
            return 1.0 + self.contrast[k] * np.sin(2 * np.pi * self.frequency[k] * u + self.phase[k])
        if self.kind[k] == 2:
            iy = (np.round(dy).astype(np.int64) + self.offset[k, 0]) % self.S
            ix = (np.round(dx).astype(np.int64) + self.offset[k, 1]) % self.S
            return 1.0 + self.contrast[k] * np.clip(self.noise[iy, ix], -3, 3)
        return 1.0


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


class DeadLeaves(torch.utils.data.Dataset):
    """The embedded data set: unlimited, deterministic per (seed, index); the held-out stream (train=False) uses a
    disjoint seed. Images (3, H, W), or with num_frames > 1 clips of moving dead leaves (3, T, H, W).
    segmentation=True: items are {'image', 'segmentation' (H, W) int64, ids of SHAPE_KINDS}, for semantic synthesis;
    annotation 'caption' | 'layout': {'image', 'caption'} or {'image', 'boxes' (max_objects, 5)}, from the scene."""
    infinite = True
    num_classes = 0
    layout_classes = LAYOUT_CLASSES

    def __init__(self, image_size, seed=0, train=True, num_frames=1, segmentation=False, annotation=None, max_objects=8,
                 style='textured'):
        if num_frames > 1 and (segmentation or annotation or style != 'textured'):
            raise ValueError("the moving dead leaves (num_frames > 1) are textured and have no label maps, captions or "
                             "layouts.")
        self.image_size, self.num_frames, self.segmentation, self.style = image_size, num_frames, segmentation, style
        self.num_labels = len(COLOUR_LABELS if style == 'shapes' else SHAPE_KINDS)
        self.annotation, self.max_objects = annotation, max_objects
        self.seed = seed if train else seed + 1_000_000_007

    def __len__(self):
        return 2 ** 31 - 1

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, _ = _split_item(item)
        if self.num_frames > 1:
            clip = moving_dead_leaves(self.seed, i, self.image_size, self.num_frames)
            return torch.from_numpy(clip).permute(3, 0, 1, 2) * 2 - 1, 0, 0  # (3, T, H, W)
        if self.segmentation:
            img, seg = dead_leaves(self.seed, i, self.image_size, segmentation=True, style=self.style)
            return {'image': torch.from_numpy(img).permute(2, 0, 1) * 2 - 1, 'segmentation': torch.from_numpy(seg)}, 0, 0
        if self.annotation is None:
            x = torch.from_numpy(dead_leaves(self.seed, i, self.image_size, style=self.style)).permute(2, 0, 1)
            return x * 2 - 1, 0, 0
        img, scene = dead_leaves(self.seed, i, self.image_size, scene=True, style=self.style)
        x = torch.from_numpy(img).permute(2, 0, 1) * 2 - 1
        if self.annotation == 'caption':
            return {'image': x, 'caption': caption(scene)}, 0, 0
        return {'image': x, 'boxes': boxes_tensor(layout(scene, self.max_objects), self.max_objects)}, 0, 0


def boxes_tensor(boxes, max_objects):
    """A layout as a batchable tensor (max_objects, 5) of (class, x0, y0, x1, y1), class -1 where there is no box."""
    out = torch.full((max_objects, 5), -1.0)
    if boxes:
        out[:min(len(boxes), max_objects)] = torch.tensor(boxes[:max_objects], dtype=torch.float32)
    return out


def boxes_list(boxes):
    """boxes_tensor's inverse: (max_objects, 5) -> [(class, x0, y0, x1, y1)]."""
    return [(int(b[0]), *map(float, b[1:])) for b in boxes.tolist() if b[0] >= 0]

# -----------------------------------------------------------------------------
# image folders

def list_files(root, extensions=IMAGE_EXTENSIONS):
    """(files, left_out): the files under root with one of `extensions` (the types read; any case), searched
    recursively in sorted order, and what was left out, counted: {'hidden': n} for hidden files and folders (a name
    that starts with '.', such as .ipynb_checkpoints or .DS_Store; a folder counts once, unopened) and {'.gif': n,
    ...} for files of other types. Symbolic links are followed, but no folder is entered twice (a link loop would
    otherwise list the data set over and over), and only regular files count (a named pipe called x.png would block
    the reader forever)."""
    files, seen, left_out = [], set(), {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        hidden = [d for d in dirnames if d.startswith('.')] + [f for f in filenames if f.startswith('.')]
        if hidden:
            left_out['hidden'] = left_out.get('hidden', 0) + len(hidden)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            if f.startswith('.') or not os.path.isfile(path):
                continue
            if f.lower().endswith(extensions):
                files.append(path)
            else:
                ext = os.path.splitext(f)[1].lower() or 'no extension'
                left_out[ext] = left_out.get(ext, 0) + 1
    return files, left_out


def describe_left_out(left_out):
    """{'.gif': 2, 'hidden': 1} -> '2 .gif files and 1 hidden file or folder'."""
    parts = [f"{n} {ext} file{'s' if n > 1 else ''}" for ext, n in sorted(left_out.items()) if ext != 'hidden']
    if left_out.get('hidden'):
        parts.append(f"{left_out['hidden']} hidden file{'s' if left_out['hidden'] > 1 else ''} or folder"
                     f"{'s' if left_out['hidden'] > 1 else ''}")
    return ', '.join(parts[:-1]) + (' and ' if len(parts) > 1 else '') + parts[-1] if parts else 'nothing'


_announced = set()


def read_folder(root, extensions, what):
    """The one listing of a data folder, for every reader (training, the latent cache, evaluation, the spectrum):
    `root` must be a folder with `what` ('images', 'videos') in it, and what was left out (hidden files, other types) is
    said once per folder and returned, never silently ignored. -> (files, left_out)."""
    if not os.path.isdir(root):
        die(f"{root} is not a folder; point it at a folder of {what}.")
    files, left_out = list_files(root, extensions)
    types = ', '.join(extensions)
    if not files:
        die(f"{root} holds no {what} (the types read are {types}), searched recursively"
            + (f"; it holds {describe_left_out(left_out)}" if left_out else '') + ".")
    if left_out and root not in _announced and int(os.environ.get('RANK', 0)) == 0:
        _announced.add(root)
        print(f"{root}: reading {len(files)} {what}, leaving out {describe_left_out(left_out)} (the types read are "
              f"{types}; hidden files and folders are skipped)")
    return files, left_out


def folder_classes(root, files):
    """Class names and per-file labels from the first-level subfolders when every file sits in one and there are at
    least two (ImageNet's and Kinetics' layouts); otherwise ([], all 0): an unlabelled set."""
    top = [os.path.relpath(f, root).split(os.sep) for f in files]
    if all(len(t) > 1 for t in top) and len({t[0] for t in top}) > 1:
        classes = sorted({t[0] for t in top})
        index = {c: k for k, c in enumerate(classes)}
        return classes, [index[t[0]] for t in top]
    return [], [0] * len(files)


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


def read_annotations(root, files, annotation):
    """-> (files, annotations, layout classes) of the images that have an annotation: a caption from x.txt beside x.jpg
    or a line {"file", "caption"} of root/captions.jsonl, or a layout from a line {"file", "boxes": [[class, x0, y0, x1,
    y1], ...]} of root/layout.jsonl, coordinates in [0, 1] of the image (file: the path relative to root). An image
    without one is left out, counted and named, never trained as empty."""
    name = 'captions.jsonl' if annotation == 'caption' else 'layout.jsonl'
    path, found = os.path.join(root, name), {}
    key = 'caption' if annotation == 'caption' else 'boxes'
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    found[os.path.normpath(os.path.join(root, row['file']))] = row[key]
                except (ValueError, KeyError, TypeError):
                    die(f"{path} line {n} is not a JSON object with 'file' and '{key}'; write one such object a line.")
    if annotation == 'caption':
        for f in files:
            sidecar = os.path.splitext(f)[0] + '.txt'
            if f not in found and os.path.isfile(sidecar):
                with open(sidecar, encoding='utf-8') as fh:
                    found[f] = fh.read().strip()
    kept = [f for f in files if os.path.normpath(f) in found]
    missing = [os.path.relpath(f, root) for f in files if os.path.normpath(f) not in found]
    where = f"x.txt beside x.jpg or a line of {path}" if annotation == 'caption' else f"a line of {path}"
    if not kept:
        die(f"no image in {root} has a {annotation}; give each one {where}.")
    if missing and root not in _announced_missing and int(os.environ.get('RANK', 0)) == 0:
        _announced_missing.add(root)
        print(f"{root}: leaving out {len(missing)} of {len(files)} images that have no {annotation} (the first: "
              f"{', '.join(missing[:3])}); give each one {where}")
    notes = [found[os.path.normpath(f)] for f in kept]
    if annotation == 'caption':
        return kept, [str(c) for c in notes], ()
    classes = sorted({str(b[0]) for boxes in notes for b in boxes})
    layouts = []
    for f, boxes in zip(kept, notes):
        try:
            layouts.append([(classes.index(str(b[0])), *(float(v) for v in b[1:5])) for b in boxes if len(b) == 5])
        except (TypeError, ValueError, IndexError):
            die(f"{path}: the boxes of {os.path.relpath(f, root)} are not [class, x0, y0, x1, y1] lists.")
        bad = [b for b in layouts[-1] if not (0 <= b[1] <= b[3] <= 1 and 0 <= b[2] <= b[4] <= 1)]
        if bad or len(layouts[-1]) != len(boxes):
            die(f"{path}: a box of {os.path.relpath(f, root)} lies outside the image or is not [class, x0, y0, x1, y1]; "
                f"give x0 <= x1 and y0 <= y1 in [0, 1] of the image's width and height.")
    return kept, layouts, tuple(classes)


_announced_missing = set()


def crop_boxes(boxes, w, h, flip):
    """A layout in the coordinates of a w x h image -> in those of its centre crop (center_crop), mirrored with the
    image when flip; boxes left with no area are dropped (taming's filter_annotations)."""
    s = min(w, h)
    left, top, fx, fy = (w - s) / 2 / w, (h - s) / 2 / h, w / s, h / s
    out = []
    for c, x0, y0, x1, y1 in boxes:
        x0, x1 = (min(max((v - left) * fx, 0.0), 1.0) for v in (x0, x1))
        y0, y1 = (min(max((v - top) * fy, 0.0), 1.0) for v in (y0, y1))
        if x1 > x0 and y1 > y0:
            out.append((c, 1 - x1, y0, 1 - x0, y1) if flip else (c, x0, y0, x1, y1))  # taming's horizontally_flip_bbox
    return out


class ImageFolder(torch.utils.data.Dataset):
    infinite = False

    def __init__(self, root, image_size, flip=True, random_crop=False, annotation=None, max_objects=8):
        files, self.left_out = read_folder(root, IMAGE_EXTENSIONS, 'images')
        self.annotation, self.max_objects, self.annotations, self.layout_classes = annotation, max_objects, None, ()
        if annotation is not None:
            if annotation == 'layout' and random_crop:
                die("--random_crop would cut boxes the layout does not know of; train layouts on centre crops.")
            files, self.annotations, self.layout_classes = read_annotations(root, files, annotation)
        self.root, self.files, self.image_size = root, files, image_size
        self.flip, self.random_crop = flip, random_crop
        self.classes, self.labels = folder_classes(root, files)
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
        w, h = img.size
        img = random_crop(img, self.image_size, rng) if self.random_crop else center_crop(img, self.image_size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)  # (3, H, W)
        flip = self.flip and item_seed is not None and rng.random() < 0.5
        if flip:
            x = x.flip(2)
        if self.annotation == 'caption':
            return {'image': x.contiguous(), 'caption': self.annotations[j]}, self.labels[j], unreadable
        if self.annotation == 'layout':
            boxes = boxes_tensor(crop_boxes(self.annotations[j], w, h, flip), self.max_objects)
            return {'image': x.contiguous(), 'boxes': boxes}, self.labels[j], unreadable
        return x.contiguous(), self.labels[j], unreadable


def label_pairs(files, root):
    """x.png + x_label.png pairs of a folder's files -> (image paths, label paths). An image without its label map is
    named in one sentence, never dropped in silence."""
    stems = {os.path.splitext(f)[0]: f for f in files}
    images = [f for s, f in stems.items() if not s.endswith('_label')]
    alone = [f for f in images if os.path.splitext(f)[0] + '_label' not in stems]
    if alone:
        die(f"{len(alone)} of the {len(images)} images under {root} have no label map beside them (first: {alone[0]}; "
            f"x.png needs x_label.png); add them or remove those images.")
    return images, [stems[os.path.splitext(f)[0] + '_label'] for f in images]


class LabelledFolder(torch.utils.data.Dataset):
    """Images with their label maps (x.png + x_label.png, class ids as 8-bit grey values), for semantic synthesis:
    the short side resized to image_size (the image bicubic, the labels nearest), the centre cropped, and both flipped
    together. num_labels is one more than the largest id of any map."""
    infinite = False
    num_classes = 0

    def __init__(self, root, image_size, flip=True):
        files, self.left_out = read_folder(root, IMAGE_EXTENSIONS, 'images')
        self.root, self.image_size, self.flip = root, image_size, flip
        self.files, self.label_files = label_pairs(files, root)
        self.num_labels = 1 + max(int(np.asarray(Image.open(os.path.join(root, f))).max()) for f in self.label_files)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, item_seed = _split_item(item)
        img = Image.open(os.path.join(self.root, self.files[i])).convert('RGB')
        lab = Image.open(os.path.join(self.root, self.label_files[i]))
        if lab.mode not in ('L', 'P') or lab.size != img.size:
            die(f"{self.label_files[i]} under {self.root} is not a one-channel label map of its image's size "
                f"{img.size[0]}x{img.size[1]}; write class ids as an 8-bit grey image of that size.")
        scale = self.image_size / min(img.size)
        size = tuple(max(self.image_size, round(v * scale)) for v in img.size)
        img, lab = img.resize(size, resample=Image.BICUBIC), lab.resize(size, resample=Image.NEAREST)
        left, top = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        box = (left, top, left + self.image_size, top + self.image_size)
        x = torch.from_numpy(np.asarray(img.crop(box), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)  # (3, H, W)
        seg = torch.from_numpy(np.asarray(lab.crop(box), dtype=np.int64))  # (H, W)
        if self.flip and item_seed is not None and np.random.default_rng([item_seed, i]).random() < 0.5:
            x, seg = x.flip(2), seg.flip(1)
        return {'image': x.contiguous(), 'segmentation': seg.contiguous()}, 0, 0


def random_subset(dataset, n, seed):
    """n indices of `dataset` drawn without replacement, seeded, sorted (disk order). Every item of the embedded
    dataset is already an independent random image, so there the first n are a random sample."""
    if getattr(dataset, 'infinite', False) or n >= len(dataset):
        return list(range(min(n, len(dataset))))
    return sorted(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False).tolist())


def make_dataset(data, image_size, seed=0, train=True, random_crop=False, num_frames=1, frame_stride=1,
                 segmentation=False, annotation=None, max_objects=8, style='textured'):
    """The data set of every script: images (num_frames 1) or clips of num_frames frames, frame_stride apart. data=None
    -> the embedded DeadLeaves stream (of clips with num_frames > 1); else an ImageFolder (VideoFolder) (evaluation: no flips).
    segmentation=True: images with their label maps (DeadLeaves' shape kinds, or a LabelledFolder). annotation
    'caption' | 'layout': items are {'image', 'caption' or 'boxes' (max_objects, 5)} (images only). style: the
    embedded set's (DATASETS: textured dead leaves, or the recognisable shapes); a folder has its own."""
    if style != 'textured' and (data is not None or num_frames > 1):
        die(f"--dataset {style} is an embedded image set: drop --data{' and --num_frames' if num_frames > 1 else ''}, "
            f"or --dataset.")
    if segmentation:
        return (DeadLeaves(image_size, seed=seed, train=train, segmentation=True, style=style) if data is None
                else LabelledFolder(data, image_size, flip=train))
    if num_frames > 1:
        if data is None:
            return DeadLeaves(image_size, seed=seed, train=train, num_frames=num_frames)
        return VideoFolder(data, image_size, num_frames, frame_stride, train=train, random_crop=random_crop)
    if data is None:
        return DeadLeaves(image_size, seed=seed, train=train, annotation=annotation, max_objects=max_objects,
                          style=style)
    return ImageFolder(data, image_size, flip=train, random_crop=random_crop, annotation=annotation,
                       max_objects=max_objects)


# -----------------------------------------------------------------------------
# video: clips x (3, T, H, W) in [-1, 1]

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov')


def moving_dead_leaves(seed, index, size, num_frames, supersample=4, n_shapes=48):
    """One clip of moving dead leaves, deterministic in (seed, index). Returns float32 (T, H, W, 3) in [0, 1].
    A dead-leaves background (the image set's model) pans slowly, as a camera does; in front of it, dead-leaves shapes
    move, each with its own velocity and, for some, an acceleration, a rotation or a change of scale. Every frame is
    rendered at `supersample`x and box-downsampled, then gets its own sensor noise, as the image set."""
    rng = np.random.default_rng([seed, index, 7])  # 7: a stream apart from the image set's (seed, index)
    S, T = size * supersample, num_frames
    pan = rng.normal(0, 0.4, 2) * supersample  # background velocity, canvas pixels per frame (0.4 px at output size)
    margin = int(np.ceil(np.abs(pan).max() * max(T - 1, 0))) + 1
    # the background is an image of the still set, drawn at canvas resolution (r_min scaled to match), larger by the pan
    background = dead_leaves(seed, index, S + 2 * margin, supersample=1, r_min=2.0 * supersample,
                            texture_supersample=supersample)
    # foreground shapes: the image set's size law p(r) ~ r^-3, front to back in index order
    n = n_shapes
    r_min, r_max = 2.0 * supersample, 0.4 * S
    r = (r_min ** -2 - rng.random(n) * (r_min ** -2 - r_max ** -2)) ** -0.5
    cx, cy = rng.uniform(-0.2 * S, 1.2 * S, n), rng.uniform(-0.2 * S, 1.2 * S, n)
    velocity = rng.normal(0, 1.0, (n, 2)) * supersample  # canvas pixels per frame (about 1 px at output size)
    accel = rng.normal(0, 0.1, (n, 2)) * supersample * (rng.random(n) < 0.3)[:, None]
    is_disk, angle, aspect = rng.random(n) < 0.5, rng.uniform(0, np.pi, n), rng.uniform(0.25, 1.0, n)
    spin = rng.normal(0, 0.05, n) * (rng.random(n) < 0.5)        # radians per frame, rectangles only
    growth = rng.normal(0, 0.02, n) * (rng.random(n) < 0.3)      # log-scale change per frame
    base_hue, hue_spread = rng.random(), rng.uniform(0.05, 0.4)
    hue = (base_hue + hue_spread * rng.standard_normal(n)) % 1.0
    colours = [_hsv_to_rgb(h, s, v) for h, s, v in zip(hue, rng.uniform(0.1, 0.6, n), rng.uniform(0.4, 0.85, n))]
    gradient = rng.normal(0, 0.3, (n, 2)) / np.maximum(r, 1.0)[:, None]
    texture = LeafTextures(rng, n, S, supersample)
    grid_y, grid_x = np.mgrid[0:S, 0:S].astype(np.float32)
    clip = np.empty((T, size, size, 3), np.float32)
    for t in range(T):
        ox, oy = (margin + np.round(pan * t)).astype(int)
        img = background[oy:oy + S, ox:ox + S].copy()
        covered = np.zeros((S, S), bool)
        px, py = cx + velocity[:, 0] * t + 0.5 * accel[:, 0] * t * t, cy + velocity[:, 1] * t + 0.5 * accel[:, 1] * t * t
        rt = r * np.exp(growth * t)
        for k in range(n):
            x0, x1 = max(int(px[k] - rt[k]), 0), min(int(px[k] + rt[k]) + 1, S)
            y0, y1 = max(int(py[k] - rt[k]), 0), min(int(py[k] + rt[k]) + 1, S)
            if x0 >= x1 or y0 >= y1:
                continue
            dx, dy = grid_x[y0:y1, x0:x1] - px[k], grid_y[y0:y1, x0:x1] - py[k]
            if is_disk[k]:
                mask = dx * dx + dy * dy <= rt[k] * rt[k]
            else:
                c, s_ = np.cos(angle[k] + spin[k] * t), np.sin(angle[k] + spin[k] * t)
                mask = (np.abs(dx * c + dy * s_) <= rt[k]) & (np.abs(dy * c - dx * s_) <= rt[k] * aspect[k])
            mask &= ~covered[y0:y1, x0:x1]
            if not mask.any():
                continue
            shade = 1.0 + gradient[k, 0] * dx[mask] + gradient[k, 1] * dy[mask]  # the shading moves with the shape
            # the texture turns with a spinning leaf and scales with a growing one
            turn, scale = spin[k] * t, np.exp(-growth[k] * t)
            tx = (dx[mask] * np.cos(turn) + dy[mask] * np.sin(turn)) * scale
            ty = (dy[mask] * np.cos(turn) - dx[mask] * np.sin(turn)) * scale
            shade = shade * texture(k, tx, ty)
            img[y0:y1, x0:x1][mask] = np.clip(colours[k][None, :] * shade[:, None], 0, 1)
            covered[y0:y1, x0:x1] |= mask
        clip[t] = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    clip += rng.normal(0, 0.01, clip.shape).astype(np.float32)  # sensor noise, new in every frame
    return np.clip(clip, 0, 1)


class BadVideo(ValueError):
    """A video that cannot give a clip: the loader counts it and takes the next one."""


def read_clip(path, num_frames, frame_stride, start=None, rng=None):
    """`num_frames` consecutive frames, `frame_stride` apart, from `path` as PIL images, decoded with PyAV. The clip
    starts at frame `start` (None: a random start drawn from `rng`). It seeks to the key frame before the clip and
    decodes from there, never the whole video. Raises BadVideo for no video stream, a clip longer than the video, or a
    variable frame rate; PyAV's own errors for undecodable files."""
    import av
    with av.open(path) as container:
        if not container.streams.video:
            raise BadVideo(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise BadVideo(f"{path} has no frame rate")
        n = stream.frames
        if not n:  # some containers (webm, mkv) do not store the frame count: the duration tells it
            duration = (float(stream.duration * stream.time_base) if stream.duration
                        else (container.duration or 0) / av.time_base)
            n = int(duration * rate)
        span = (num_frames - 1) * frame_stride + 1
        if n < span:
            raise BadVideo(f"{path} has {n} frames, fewer than the {span} a clip needs")
        if start is None:
            start = int(rng.integers(0, n - span + 1))
        t0 = stream.start_time or 0  # the first frame's timestamp, in stream.time_base units (often 0)
        if start > 0:
            container.seek(t0 + int(start / rate / stream.time_base), stream=stream, backward=True, any_frame=False)
        frames, last = [], None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise BadVideo(f"{path} has frames without timestamps")
            index = float((frame.pts - t0) * stream.time_base * rate)  # frame number: on the constant-rate grid
            if abs(index - round(index)) > 0.25 or (last is not None and round(index) != last + 1):
                raise BadVideo(f"{path} has a variable frame rate")
            last = index = round(index)
            if index >= start and (index - start) % frame_stride == 0:
                frames.append(frame.to_image())
                if len(frames) == num_frames:
                    return frames
    raise BadVideo(f"{path} ended after {len(frames)} of the {num_frames} frames of its clip")


class VideoFolder(torch.utils.data.Dataset):
    """Videos under `root`, searched recursively; class ids from first-level subfolders as ImageFolder (Kinetics'
    layout works as is). Item i is a clip of the i-th video at a random start (training) or its middle (evaluation)."""
    infinite = False

    def __init__(self, root, image_size, num_frames, frame_stride=1, train=True, random_crop=False):
        files, self.left_out = read_folder(root, VIDEO_EXTENSIONS, 'videos')
        self.root, self.files, self.image_size = root, files, image_size
        self.num_frames, self.frame_stride, self.train, self.random_crop = num_frames, frame_stride, train, random_crop
        self.classes, self.labels = folder_classes(root, files)
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        return self.load(item)[:2]

    def clip_start(self, path):
        """The middle clip of a video (evaluation)."""
        import av
        with av.open(path) as container:
            stream = container.streams.video[0]
            n = stream.frames or int(float(stream.duration * stream.time_base) * (stream.average_rate or 0))
        return max(0, (n - (self.num_frames - 1) * self.frame_stride - 1) // 2)

    def load(self, item):
        import av
        i, item_seed = _split_item(item)
        seed = item_seed if item_seed is not None else 0
        # unreadable, too short or variable-rate videos are replaced by the next good one and counted
        for skipped in range(len(self.files)):
            j = (i + skipped) % len(self.files)
            rng = np.random.default_rng([seed, j])
            try:
                start = None if self.train and item_seed is not None else self.clip_start(self.files[j])
                frames = read_clip(self.files[j], self.num_frames, self.frame_stride, start, rng)
                break
            except (BadVideo, av.FFmpegError, OSError, ValueError, IndexError, ZeroDivisionError, TypeError):
                continue
        else:
            die(f"none of the {len(self.files)} videos under {self.root} gave a clip of {self.num_frames} frames at "
                f"stride {self.frame_stride}; check the files, or lower --num_frames or --frame_stride.")
        crop_seed = int(rng.integers(2 ** 31))
        if self.random_crop:  # one crop for the whole clip: every frame gets the same generator state
            frames = [random_crop(f, self.image_size, np.random.default_rng(crop_seed)) for f in frames]
        else:
            frames = [center_crop(f, self.image_size) for f in frames]
        x = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames]) / 127.5 - 1)  # (T, H, W, 3)
        x = x.permute(3, 0, 1, 2)  # (3, T, H, W)
        if self.train and item_seed is not None and rng.random() < 0.5:
            x = x.flip(3)
        return x.contiguous(), self.labels[j], int(skipped > 0)  # this item's own file was bad (as images count)


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we count, not a silently grey image
