"""
The image and video sets the evaluation scores (eval_fid.py --fake / --ref): a samples .npz (ImageArray, or a uint8
video array), a folder of images at their own size (ImageFiles) or resized (DatasetImages), a folder of videos
(read_video_folder), or a statistics .npz. Each image set yields uint8 (3, H, W) images with a known .size and counts
its unreadable files.
"""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data import Subset
from tqdm import tqdm

from evaluation.metrics import to_uint8
from utils.cli import die
from utils.data import (IMAGE_EXTENSIONS, UNREADABLE, VIDEO_EXTENSIONS, VideoFolder, list_files, make_dataset,
                        open_first_readable, random_subset, read_folder)

# ----------------------------------------------------------------------------------------------
# Image sources: every set is a Dataset of (uint8 (3, H, W) image, 1 if the file was unreadable and a neighbour stands
# in, else 0) with a known .size (H, W); sharded_batches counts the unreadable files into .unreadable


class ImageArray(Dataset):
    """A uint8 (N, H, W, 3) array, as in the arr_0 of the .npz files sample.py (and ADM's evaluator) use."""
    unreadable, left_out = 0, {}

    def __init__(self, array):
        self.array = array
        self.size = array.shape[1:3]

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.array[i])).permute(2, 0, 1), 0


class ImageFiles(Dataset):
    """A folder of images, searched recursively, in sorted order, used at their own size (which must be one size). An
    unreadable file is replaced by the next readable one and counted, as in training."""
    unreadable = 0

    def __init__(self, root):
        self.root = root
        self.files, self.left_out = read_folder(root, IMAGE_EXTENSIONS, 'images')
        sizes = {}
        for f in self.files:  # PIL reads only the header here
            try:
                with Image.open(f) as img:
                    w, h = img.size
                    if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the image by 90 degrees
                        w, h = h, w
            except UNREADABLE:
                continue  # counted when it is read
            sizes.setdefault((w, h), f)
        if not sizes:
            die(f"none of the {len(self.files)} images under {root} could be read.")
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            die(f"{root} holds images of different sizes ({fa} is {a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}); "
                f"pass --image_size to center-crop and resize them all.")
        w, h = next(iter(sizes))
        self.size = (h, w)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img, _, unreadable = open_first_readable(self.files, i, self.root)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous(), unreadable  # (3, H, W)


class DatasetImages(Dataset):
    """n images of a data.py dataset (the embedded dead-leaves stream or a resized ImageFolder) as uint8: a seeded
    random sample of the whole set (data.random_subset), never the first n files of a class-sorted folder."""
    unreadable = 0

    def __init__(self, dataset, n, seed=0):
        self.dataset, self.index = dataset, random_subset(dataset, n, seed)
        self.size = (dataset.image_size, dataset.image_size)
        self.left_out = getattr(dataset, 'left_out', {})

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        x, _, unreadable = self.dataset.load(self.index[i])
        return to_uint8(x), unreadable


def read_video_folder(path, image_size, num_frames, limit, seed):
    """A folder of videos (searched recursively, decoded by data.py's reader) -> uint8 (N, T, H, W, 3): the middle
    num_frames-frame clip of each video, centre-cropped to image_size, at most `limit` videos (seeded random). A video
    that gives no clip is counted and left out (data.VideoFolder would put the next video in its place, twice)."""
    if image_size is None:
        die(f"--ref/--fake {path} is a folder of videos; pass --image_size (and --num_frames) for its clips.")
    folder = VideoFolder(path, image_size, num_frames, train=False)
    index = random_subset(folder, limit, seed) if limit is not None else range(len(folder))
    clips, unreadable = [], 0
    for i in tqdm(index, desc=f'reading {path}', dynamic_ncols=True):
        x, _, skipped = folder.load(i)  # (3, T, H, W) in [-1, 1], made from uint8 / 127.5 - 1: exact round trip
        if skipped:
            unreadable += 1
        else:
            clips.append(to_uint8(x).permute(1, 2, 3, 0).numpy())
    if unreadable:
        print(f"{path}: left out {unreadable} of {len(index)} videos that gave no {num_frames}-frame clip")
    videos = np.stack(clips).view(Videos)
    videos.unreadable, videos.left_out = unreadable, folder.left_out
    return videos


class Videos(np.ndarray):
    """uint8 videos (N, T, H, W, 3), as an array, that remember what their folder's reading left out: `unreadable`
    videos that gave no clip, and the `left_out` files of the listing (read_folder). An .npz's array has neither."""
    unreadable, left_out = 0, {}


def is_video_folder(path):
    """True for a folder with videos and no images in it (searched recursively, hidden files left out)."""
    left_out = list_files(path, ())[1]
    return any(left_out.get(e) for e in VIDEO_EXTENSIONS) and not any(left_out.get(e) for e in IMAGE_EXTENSIONS)


def open_source(path, image_size, limit, seed=0, num_frames=16):
    """--ref/--fake -> (kind, source, statistics): ('stats', None) for an .npz of statistics alone, ('videos', uint8
    (N, T, H, W, 3) array) for a samples .npz of videos or a folder of videos (num_frames-frame clips), else ('images',
    Dataset); at most `limit` images or videos (a seeded random sample when the source holds more). statistics: the
    Frechet statistics an .npz holds (mu, sigma: FID or FVD; mu_s, sigma_s: sFID), alone or beside its images as in
    ADM's reference batches, else {}."""
    statistics = {}
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            die(f"{path} does not exist; pass a folder of images, a samples .npz or a statistics .npz.")
        try:
            with np.load(path) as f:
                contents = {k: f[k] for k in ('mu', 'sigma', 'mu_s', 'sigma_s', 'arr_0') if k in f}
        except Exception as e:  # random bytes, a cut-off file, a pickle
            die(f"{path} could not be read as an .npz file ({type(e).__name__}); pass a samples or statistics .npz "
                f"as sample.py and --save_stats write them.")
        for mu_key, sigma_key in (('mu', 'sigma'), ('mu_s', 'sigma_s')):
            if mu_key in contents and sigma_key in contents:
                statistics[mu_key], statistics[sigma_key] = check_statistics(contents[mu_key], contents[sigma_key],
                                                                             f"{mu_key}/{sigma_key} in {path}")
        if 'arr_0' not in contents and 'mu' in statistics:
            return 'stats', None, statistics
        if 'arr_0' not in contents:
            die(f"{path} holds neither arr_0 (uint8 images) nor mu/sigma (statistics); it is not an evaluation .npz.")
        array = contents['arr_0']
        video = array.dtype == np.uint8 and array.ndim == 5 and array.shape[-1] == 3
        if not video and (array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3):
            die(f"arr_0 of {path} is {array.dtype} {array.shape}, not uint8 (N, H, W, 3) images or (N, T, H, W, 3) "
                f"videos as sample.py writes.")
        if len(array) == 0:
            die(f"{path} holds no {'videos' if video else 'images'} (arr_0 is {array.shape}); a metric of an empty "
                f"set is no number.")
        if image_size is not None and tuple(array.shape[-3:-1]) != (image_size, image_size):
            die(f"{path} holds {array.shape[-3]}x{array.shape[-2]} {'videos' if video else 'images'}, and "
                f"--image_size is {image_size} (it resizes folders, never an .npz); pass --image_size "
                f"{array.shape[-3]} or samples made at {image_size}.")
        if video:
            return 'videos', array if limit is None else array[random_subset(array, limit, seed)], statistics
        images = ImageArray(array)
    elif os.path.isdir(path) and is_video_folder(path):
        return 'videos', read_video_folder(path, image_size, num_frames, limit, seed), statistics
    elif os.path.isdir(path):
        if image_size is None:
            images = ImageFiles(path)
        else:
            folder = make_dataset(path, image_size, train=False)
            images = DatasetImages(folder, len(folder))
    else:
        die(f"{path} is neither a folder nor an .npz file; pass a folder of images, a samples .npz or a statistics .npz.")
    if limit is not None:
        images = images if limit >= len(images) else _Sample(images, random_subset(images, limit, seed))
    return 'images', images, statistics


def check_statistics(mu, sigma, what):
    """A mean (D,) and covariance (D, D) read from a file, or one sentence saying why they are not."""
    if (mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not len(mu)
            or not np.issubdtype(mu.dtype, np.number) or not np.issubdtype(sigma.dtype, np.number)):
        die(f"the statistics {what} are {mu.dtype} {mu.shape} and {sigma.dtype} {sigma.shape}, not "
            f"a mean (D,) and a covariance (D, D) as --save_stats writes them.")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        die(f"the statistics {what} hold NaN or infinite values; make them again with --save_stats.")
    if not (np.allclose(sigma, sigma.T) and (np.diag(sigma) >= 0).all()):
        die(f"the covariance {what} is no covariance (not symmetric, or a negative variance); make the statistics "
            f"again with --save_stats.")
    return mu, sigma


class _Sample(Subset):
    """The images at `index` of a set, keeping its .size. FID does not depend on the order of a set; SWD takes its first
    SWD_MAX_IMAGES, so a set is shuffled (all of it, seeded) before that cut."""
    unreadable = 0

    def __init__(self, images, index):
        super().__init__(images, index)
        self.size, self.left_out = images.size, images.left_out


def shuffled(images, seed):
    return _Sample(images, np.random.default_rng(seed).permutation(len(images)).tolist())
