"""
The latent cache of train_ldm.py (--cache_latents): the data set encoded once by the frozen autoencoder, each image
(clip) and its mirror image, float16 in a seeded random order, read in shuffled contiguous 64 MiB chunks. It records
what made it (the autoencoder's SHA-256, the data, image size, crop mode, cache size) and is refused, in one
sentence, when any of them differs.
"""
import hashlib
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from utils.cli import die
from utils.common import load_batches
from utils.data import _split_item
from utils.rundir import lock_folder, partial_path, release_lock

# -----------------------------------------------------------------------------
# the latent cache: the data set encoded once by the frozen autoencoder of train_ldm.py

CHUNK_BYTES = 64 << 20  # one chunk is read as one sequential 64 MiB run


class LatentCache(torch.utils.data.Dataset):
    """
    root/latents.npy (N, 2, C, h, w) float16, each image and its mirror image (video: (N, 2, C, T', h, w), each clip and
    its mirror clip), root/labels.npy (N,) (-1 for an item whose file was unreadable: it is left out, not replaced)
    and root/meta.json, written last, the mark of a complete cache.
    float16 halves float32's disk (ImageNet with FLUX's 16 x 32 x 32 latents: 84 GB instead of 168 GB) at a relative
    rounding error of 2^-11, far below the posterior noise the latents were sampled with. The images were written in a
    seeded random order, so a contiguous chunk is a random sample of the data set: epoch_order() shuffles the chunks and
    the items inside each, and the disk reads one chunk after another instead of seeking for every item.
    load() follows the protocol of the image datasets, so common.Loader shards, orders and resumes it the same way, and
    the per-item seed picks the flip as ImageFolder's does. Opening checks every file against meta.json
    (DamagedCache when one is missing, cut short or of another shape).
    """
    infinite = False

    def __init__(self, root):
        try:
            with open(os.path.join(root, 'meta.json')) as f:
                self.meta = json.load(f)
            if not isinstance(self.meta, dict) or not isinstance(self.meta.get('key'), dict):
                raise ValueError("meta.json is not a cache's")
            shape = (self.meta['key']['cache_size'], 2, *self.meta['key']['latent_shape'])
            self.latents = np.load(os.path.join(root, 'latents.npy'), mmap_mode='r')
            self.labels = np.load(os.path.join(root, 'labels.npy'))
            if self.latents.shape != shape or self.latents.dtype != np.float16:
                raise ValueError(f"latents.npy is {self.latents.dtype} {self.latents.shape}, not float16 {shape}")
            if self.labels.shape != shape[:1] or not np.issubdtype(self.labels.dtype, np.integer):
                raise ValueError(f"labels.npy is {self.labels.dtype} {self.labels.shape}, not integers {shape[:1]}")
            self.num_classes = int(self.meta['num_classes'])
        except (OSError, ValueError, KeyError, TypeError) as e:  # a file missing, cut short, or not ours
            raise DamagedCache(f"{type(e).__name__}: {e}") from None
        self.index = np.flatnonzero(self.labels >= 0)  # the items whose files were readable
        self.unreadable_left_out = len(self.labels) - len(self.index)
        if not len(self.index):
            die(f"every image of the latent cache {root} was unreadable; check the data.")
        self.chunk = max(1, CHUNK_BYTES // self.latents[0].nbytes)

    def __len__(self):
        return len(self.index)

    def epoch_order(self, generator):
        """A permutation of the items: chunks of self.chunk consecutive items in random order, shuffled inside."""
        n, k = len(self), self.chunk
        order = []
        for c in torch.randperm(-(-n // k), generator=generator).tolist():
            lo, hi = c * k, min((c + 1) * k, n)
            order += (lo + torch.randperm(hi - lo, generator=generator)).tolist()
        return order

    def __getitem__(self, item):
        return self.load(item)[:2]

    def load(self, item):
        i, item_seed = _split_item(item)
        flip = item_seed is not None and np.random.default_rng([item_seed, i]).random() < 0.5
        p = self.index[i]
        z = torch.from_numpy(self.latents[p, int(flip)].astype(np.float32))  # (C, h, w), video (C, T', h, w)
        return z, int(self.labels[p]), 0


class DamagedCache(Exception):
    """A latent cache whose files do not match its meta.json: build_latent_cache makes it again."""


def file_sha256(path):
    """Hex digest of a file's bytes: a checkpoint retrained in place gets a new one."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            h.update(block)
    return h.hexdigest()


def dataset_identity(dataset, data, seed):
    """What names the images: the folder and a hash of its file list, or the embedded stream's seed."""
    if data is None:
        return f'dead leaves, seed {seed}'
    names = '\n'.join(os.path.relpath(f, dataset.root) for f in dataset.files)
    return f'{os.path.abspath(data)} ({len(dataset.files)} files, list sha256 {hashlib.sha256(names.encode()).hexdigest()[:16]})'


def build_latent_cache(root, images, encode, latent_shape, key, num_items, batch_size, dist, seed, random_crop,
                       num_workers=2):
    """
    LatentCache(root), encoding `num_items` items of `images` with `encode` (x (B, 3, H, W) -> z (B, C, h, w), or clips
    x (B, 3, T, H, W) -> z (B, C, T', h, w)) first unless root holds a complete cache. `key` is everything the content
    depends on (the autoencoder's hash, the data, the image size, the crop mode, the cache size); a cache made for
    another key is refused, never silently reused, and a damaged one (a file missing or cut short) is made again.
    The builder holds root's lock (rundir.lock_folder), so two runs never write one cache; ranks split the work;
    meta.json is written last, as the marker of a complete cache. An unreadable image is left out (labels -1) and
    counted (meta.json's skipped_images), never replaced by a copy of its neighbour. With random_crop, item i is crop i
    of image i mod len(images), drawn with its own seed; otherwise item i is image i, centre-cropped, unflipped. The
    posterior noise is drawn from its own seed, so building the cache leaves the run's random stream as it was: the
    same command trains the same whether or not the cache existed.
    """
    key = {**key, 'latent_shape': list(latent_shape), 'cache_size': num_items}
    build = False
    if dist.master:
        cache = _open_cache(root, key)
        if cache is None:
            locked = lock_folder(root, '--cache_latents')  # False when it is this run's own --out_dir
            cache = _open_cache(root, key)  # made by another run between the look and the lock
            build = cache is None
            if not build and locked:
                release_lock(root)
    if dist.ddp:
        decision = [build]
        torch.distributed.broadcast_object_list(decision, src=0)
        build = decision[0]
    if not build:
        if dist.ddp:
            torch.distributed.barrier()
        return cache if dist.master else LatentCache(root)
    meta_path = os.path.join(root, 'meta.json')
    # cache position p holds item order[p], in random order so that any contiguous chunk is a random sample; without
    # crops, and fewer items than images, the items are a random sample of the images
    rng = np.random.default_rng(seed)
    finite_images = not random_crop and not getattr(images, 'infinite', False)
    order = rng.permutation(len(images))[:num_items] if finite_images else rng.permutation(num_items)
    if dist.master:
        for name in ('meta.json', 'labels.npy'):  # the marker first: a build that is killed leaves none
            if os.path.exists(os.path.join(root, name)):
                os.remove(os.path.join(root, name))
        np.lib.format.open_memmap(os.path.join(root, 'latents.npy'), mode='w+', dtype=np.float16,
                                  shape=(num_items, 2, *latent_shape)).flush()
    if dist.ddp:
        torch.distributed.barrier()
    store = np.load(os.path.join(root, 'latents.npy'), mmap_mode='r+')
    labels = np.zeros(num_items, dtype=np.int64)
    positions = [p for start in range(dist.rank * batch_size, num_items, dist.world_size * batch_size)
                 for p in range(start, min(start + batch_size, num_items))]
    if random_crop:
        item = lambda p: (int(order[p]) % len(images), seed * 1_000_003 + int(order[p]))  # noqa: E731
    else:
        item = lambda p: int(order[p])  # noqa: E731  a plain index: no flip (the cache holds both), no crop
    devices = [dist.device] if dist.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):  # the run's own random stream is untouched
        torch.manual_seed(seed * 1_000_003 + dist.rank)
        for p, x, y, unreadable in tqdm(load_batches(_Positions(positions, item, images), batch_size=batch_size,
                                                     num_workers=num_workers),
                                        desc='encoding latents', total=-(-len(positions) // batch_size),
                                        disable=not dist.master):
            x = x.to(dist.device)
            for flip in (0, 1):
                z = encode(x.flip(-1) if flip else x).cpu().numpy().astype(np.float16)  # the mirror image: W is last
                if not np.isfinite(z).all():
                    die(f"latents beyond float16's range (|z| > 65504) came out of the autoencoder; it is broken or "
                        f"not an autoencoder for images in [-1, 1].")
                store[p.numpy(), flip] = z
            labels[p.numpy()] = np.where(unreadable.numpy() > 0, -1, y.numpy())  # an unreadable one is left out
    store.flush()
    if dist.ddp:  # each rank filled its own label positions: sum them
        lab = torch.from_numpy(labels).to(dist.device)
        torch.distributed.all_reduce(lab)
        labels = lab.cpu().numpy()
        torch.distributed.barrier()
    if dist.master:
        np.save(os.path.join(root, 'labels.npy'), labels)
        skipped = int((labels < 0).sum())
        with open(partial_path(meta_path), 'w') as f:  # whole or not at all: it marks the cache complete
            json.dump({'key': key, 'num_classes': images.num_classes, 'dtype': 'float16', 'skipped_images': skipped},
                      f, indent=1)
        os.replace(partial_path(meta_path), meta_path)
        if skipped:
            print(f"the latent cache {root} leaves out {skipped} of {num_items} images, which could not be read")
        if locked:
            release_lock(root)
    if dist.ddp:
        torch.distributed.barrier()
    return LatentCache(root)


def _open_cache(root, key):
    """The complete cache at root, or None when there is none (or a damaged one, said and made again); a complete
    cache made from other inputs is refused."""
    meta_path = os.path.join(root, 'meta.json')
    if not os.path.exists(meta_path):
        return None
    try:
        cache = LatentCache(root)
    except DamagedCache as e:
        print(f"the latent cache {root} is damaged ({e}); making it again")
        return None
    made_for = cache.meta['key']
    changed = '; '.join(f"{k} {made_for.get(k)!r} there, {key[k]!r} now" for k in key if made_for.get(k) != key[k])
    if changed:
        die(f"the latent cache {root} was made from other inputs ({changed}); delete it or pass another "
            f"--cache_latents folder.")
    if cache.unreadable_left_out:
        print(f"the latent cache {root} leaves out {cache.unreadable_left_out} images, which could not be read")
    return cache


class _Positions(torch.utils.data.Dataset):
    """(cache position, x, y, 1 if its file was unreadable) for the positions one rank encodes."""
    def __init__(self, positions, item, images):
        self.positions, self.item, self.images = positions, item, images

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, k):
        x, y, unreadable = self.images.load(self.item(self.positions[k]))
        return self.positions[k], x, y, unreadable


