"""
Score generated images or videos against a reference set, or an autoencoder's reconstructions of a dataset, with the
metrics the papers report, over one or many GPUs. Every number printed also goes into a JSON file (--out); a metric
that cannot run says why, there and on screen.

Generated samples against a reference set (ADM's reference batch .npz, a folder, a samples .npz as sample.py writes, or
a statistics .npz):
  python eval_fid.py --fake samples.npz --ref VIRTUAL_imagenet256_labeled.npz   # ADM's table, as DiT / SiT report it
  python eval_fid.py --fake samples.npz --ref /path/to/images --image_size 256
  python eval_fid.py --fake samples.npz                          # reference: the embedded dead-leaves set
  python eval_fid.py --ref /path/to/images --image_size 256 --save_stats ref.npz   # cache the reference statistics
  torchrun --nproc_per_node=8 eval_fid.py --fake samples.npz --ref ref.npz         # feature extraction over 8 GPUs
Videos (uint8 (N, T, H, W, 3) in arr_0, as sample.py writes them): FVD needs T >= 16, the video SWD T >= 2:
  python eval_fid.py --fake video_samples.npz --ref real_videos.npz
  python eval_fid.py --ref real_videos.npz --save_stats fvd_ref.npz              # then --ref fvd_ref.npz
  python eval_fid.py --fake video_samples.npz --ref /kinetics/val --image_size 64 --num_frames 17   # a video folder
A conditional model's outputs against their targets, pair by pair (sample.py --task writes x.png for input x): PSNR,
SSIM and LPIPS per pair (LDM's Tab. 5 columns), beside the distribution metrics of the two folders:
  python eval_fid.py --paired --fake out/sr/samples/images --ref /path/to/hr_images
An autoencoder's reconstructions of a dataset (the embedded one when --data is omitted):
  python eval_fid.py --ae out/ckpt.pt --image_size 64
Text-to-image, LDM's COCO protocol (Tab. 2): one caption a line in, one sample per caption, FID against the reference
images (COCO val2014 centre-cropped to --image_size; 30,000 captions drawn at random give COCO-30K):
  python sample.py --ckpt out/ldm_text/ema.pt --prompt_file coco_captions.txt --n_samples 1 --cfg_scale 1.5
  python eval_fid.py --fake out/ldm_text/samples/samples.npz --ref /coco/val2014 --image_size 256

Every number of the experiments is measured the same way, here (sharded feature extraction, gathered in set order).
The measurements live in their own modules (metrics.py, inception.py, swd.py, i3d.py) and the sets in data.py; this
file opens the sets, extracts features and scores:
  - ADM's suite (openai/guided-diffusion's evaluator, the protocol of DiT, SiT and REPA-E) from one pass of the
    Inception-v3 of TensorFlow's 2015-12-05 graph (inception.py, with the graph's own TF1 resize to 299 x 299): FID
    (Heusel et al. 2017) on pool_3, sFID on the spatial features, IS on the logits, precision/recall (k = 3), and KID
    (Binkowski et al. 2018), which is unbiased and so usable at small sample counts. The equations are in metrics.py.
  - The multi-scale sliced Wasserstein distance (SWD) of Progressive GANs (Karras et al. 2018), which needs no
    pretrained weights and so also works offline: one number per Laplacian-pyramid level.
  - For an autoencoder: PSNR, SSIM, LPIPS and rFID (the FID between images and their reconstructions), plus SWD.
  - For videos: FVD (Unterthiner et al. 2018) with the Kinetics-400 I3D, as cd-fvd / TATS / VideoGPT measure it, and
    a weight-free video SWD (frames, and frame differences for motion).
"""
import os
import sys
import json
import argparse

from utils.cli import (HelpFormatter, FID_WEIGHTS_FILE, I3D_WEIGHTS_FILE, add_device_arg, checked, set_cpu_threads,
                 stop_on_signals)


def parse_args(argv=None):
    """The command line (sys.argv when argv is None), read without torch: main() reads it again."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                allow_abbrev=False)
    p.add_argument('--fake', type=str, default=None, help='generated images: a folder, a samples .npz (uint8 arr_0) or statistics .npz; or videos (.npz or a folder)')
    p.add_argument('--ref', '--real', dest='ref', type=str, default=None, help="the reference: the kinds --fake takes, or ADM's reference batch .npz; omitted: the embedded held-out stream")
    p.add_argument('--num_real', type=checked(int, lo=1), default=None, help='a seeded random N of the reference images, or with --ae of the images reconstructed (none: all, or 1000)')
    p.add_argument('--image_size', type=checked(int, lo=1), default=None, help='center-crop and resize folder images to this size; also the dead-leaves size (none: as they are)')
    p.add_argument('--num_frames', type=checked(int, lo=2), default=16, help="frames per clip read from a folder of videos (each video's middle clip; default 16, FVD's clip length)")
    p.add_argument('--save_stats', type=str, default=None, help="write the reference set's statistics here (FID's mu, sigma; sFID's mu_s, sigma_s), to pass as --ref")
    p.add_argument('--ae', type=str, default=None, help='evaluate this autoencoder (a train_ae.py checkpoint, or public weights with --preset) on reconstructions of --data')
    p.add_argument('--preset', type=str, default=None, help='AE_PRESETS name for an --ae file that is a public state dict')
    p.add_argument('--data', type=str, default=None, help='with --ae: the image folder to reconstruct at --image_size (default: the embedded dead-leaves set)')
    p.add_argument('--vgg_weights', type=str, default=None, help="with --ae: local torchvision VGG16 weights for LPIPS (default: the torch hub cache)")
    p.add_argument('--lpips_lin_weights', type=str, default=None, help="with --ae: local LPIPS v0.1 linear-head weights, vgg.pth (default: the torch hub cache)")
    p.add_argument('--inception_weights', type=str, default=None, help=f"path of {FID_WEIGHTS_FILE}, pytorch-fid's (none: the torch hub cache, downloaded once)")
    p.add_argument('--i3d_weights', type=str, default=None, help=f'for videos: path of the FVD I3D weights {I3D_WEIGHTS_FILE} (none: the torch hub cache)')
    p.add_argument('--batch_size', type=checked(int, lo=1), default=50, help='images (or videos) per forward pass per process')
    p.add_argument('--num_workers', type=checked(int, lo=0), default=2, help='image-decoding worker processes per process')
    p.add_argument('--seed', type=checked(int, lo=0), default=0, help='seed of the dead-leaves set (SWD neighbourhoods and directions are fixed)')
    add_device_arg(p)
    p.add_argument('--out', type=str, default=None, help='JSON file for every number printed (default: <--fake, --ae or --save_stats path>_metrics.json)')
    p.add_argument('--paired', action='store_true', help='--fake and --ref are folders of pairs by file name: add PSNR, SSIM, LPIPS per pair; default off')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out or --save_stats file')
    return p.parse_args(argv)


if __name__ == '__main__':  # before torch is imported: --help and a mistyped flag answer at once, and the threads hold
    set_cpu_threads(reserve=parse_args().num_workers)  # the decoding workers keep their own cores busy
    stop_on_signals()

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import Subset
from tqdm import tqdm

from utils.common import select_device, die, setup_distributed, cleanup_distributed, load_batches, refuse_unused, non_finite
from utils.rundir import refuse_to_overwrite, no_space_is_an_error, check_output, refuse_overlap, lock_file, atomic_write
from utils.data import IMAGE_EXTENSIONS, make_dataset, open_image, random_subset
from evaluation.sources import DatasetImages, open_source, shuffled
from evaluation.i3d import FVD_NUM_FRAMES, i3d_features, load_i3d
from evaluation.inception import INCEPTION_FEATURES, load_inception
from evaluation.metrics import (feature_statistics, frechet_distance, inception_score, kernel_inception_distance, precision_recall,
                     psnr, ssim, to_uint8)
from evaluation.perceptual import LPIPS
from evaluation.swd import (SWD_MAX_IMAGES, SWD_MIN_RES, SWD_NHOOD, SWD_NHOODS_PER_IMAGE, swd_descriptors, swd_from_descriptors,
                 swd_resolutions, video_swd)
from utils.weights import load_autoencoder

# ----------------------------------------------------------------------------------------------
# Sharded feature extraction

def _shard(n, dist):
    """Rank r takes the r-th contiguous block of ceil(n / world_size) images; all padding is at the end."""
    per_rank = -(-n // dist.world_size)
    return min(dist.rank * per_rank, n), min((dist.rank + 1) * per_rank, n), per_rank


def _gather_rows(chunks, row_shape, rows_per_rank, total, dist, dtype=torch.float32):
    """Every rank's rows (its list of chunks, each (B, *row_shape)) in rank order, each padded to rows_per_rank for
    all_gather, padding dropped (it is all at the end, since blocks are contiguous and filled in order)."""
    t = torch.cat(chunks) if chunks else torch.zeros(0, *row_shape, dtype=dtype, device=dist.device)
    if not dist.ddp:
        return t
    padded = t.new_zeros((rows_per_rank,) + tuple(t.shape[1:]))
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, padded)
    return torch.cat(parts)[:total]


def sharded_batches(images, dist, batch_size, num_workers, desc):
    """This rank's block of `images`: yields (index (B,), x (B, 3, H, W) float on dist.device in [-1, 1]). When all
    are done, images.unreadable is the number of unreadable files (replaced by a neighbour) over all ranks."""
    lo, hi, _ = _shard(len(images), dist)
    loader = load_batches(Subset(images, range(lo, hi)), batch_size=batch_size, num_workers=num_workers,
                          pin_memory=dist.device.type == 'cuda')
    start, unreadable = lo, torch.zeros((), dtype=torch.long, device=dist.device)
    for x, bad in tqdm(loader, desc=desc, disable=not dist.master, leave=False):
        index = torch.arange(start, start + len(x))
        start += len(x)
        unreadable += bad.sum().to(dist.device)
        yield index, x.to(dist.device).float() / 127.5 - 1
    if dist.ddp:
        torch_dist.all_reduce(unreadable)
    images.unreadable = int(unreadable)


class Collector:
    """Inception features of all n images of a set and SWD descriptors of its first swd_count, added batch by batch
    on each rank and gathered in set order by finish() (on every rank; the metrics are computed on the master)."""
    def __init__(self, n, size, dist, inception=None, swd_count=0):
        self.n, self.dist, self.inception, self.swd_count = n, dist, inception, swd_count
        self.resolutions = swd_resolutions(*size) if swd_count > 0 else []
        self.features, self.descriptors = [], [[] for _ in self.resolutions]

    @torch.no_grad()
    def add(self, index, x):
        if self.inception is not None:
            self.features.append({name: f.float() for name, f in self.inception(x).items()})
        keep = index < self.swd_count
        if keep.any():
            for level, d in zip(self.descriptors, swd_descriptors(x[keep.to(x.device)], index[keep])):
                level.append(d)

    def finish(self):
        """-> (features {'pool3': (n, 2048), 'spatial': (n, 2023), 'logits': (n, 1008)} float32 on the device or None,
        [descriptors (swd_count * 128, 3, 7, 7) per level] or None)."""
        _, _, per_rank = _shard(self.n, self.dist)
        features = descriptors = None
        if self.inception is not None:
            features = {name: _gather_rows([f[name] for f in self.features], (dim,), per_rank, self.n, self.dist)
                        for name, dim in INCEPTION_FEATURES.items()}
        if self.swd_count > 0:
            descriptors = [_gather_rows(level, (3, SWD_NHOOD, SWD_NHOOD), per_rank * SWD_NHOODS_PER_IMAGE,
                                        self.swd_count * SWD_NHOODS_PER_IMAGE, self.dist) for level in self.descriptors]
        return features, descriptors


def collect(images, dist, batch_size, num_workers, desc, inception=None, swd_count=0):
    """Features and descriptors of one image set (see Collector)."""
    collector = Collector(len(images), images.size, dist, inception, swd_count)
    for index, x in sharded_batches(images, dist, batch_size, num_workers, desc):
        collector.add(index, x)
    return collector.finish()

def video_set_features(videos, i3d, dist, batch_size):
    """FVD features (N, 400) float32 of uint8 videos (N, T, H, W, 3): each rank embeds its block, gathered in set
    order."""
    lo, hi, per_rank = _shard(len(videos), dist)
    features = []
    for i in tqdm(range(lo, hi, batch_size), desc='I3D', disable=not dist.master, leave=False):
        v = torch.from_numpy(np.ascontiguousarray(videos[i:min(i + batch_size, hi)])).to(dist.device)
        features.append(i3d_features(i3d, v.permute(0, 1, 4, 2, 3).float() / 127.5 - 1))
    return _gather_rows(features, (400,), per_rank, len(videos), dist)

# ----------------------------------------------------------------------------------------------
# Autoencoder evaluation

@torch.no_grad()
def evaluate_autoencoder(ae, images, dist, inception=None, lpips=None, batch_size=32, num_workers=0):
    """
    Reconstructs every image of `images` (uint8 Dataset with .size) through ae (posterior mean for KL, quantised codes
    for VQ). Reconstructions are rounded to 8 bits first, as a saved PNG would be. Returns {'psnr' (dB, mean over
    images of per-image PSNR on [0, 1]), 'ssim', 'lpips' (when an LPIPS net is given), 'rfid' (FID of inputs vs
    reconstructions, when an Inception net is given), 'swd_<res>'..., 'swd_avg'}.
    """
    n = len(images)
    swd_count = min(n, SWD_MAX_IMAGES)
    inputs = Collector(n, images.size, dist, inception, swd_count)
    recons = Collector(n, images.size, dist, inception, swd_count)
    per_image = {'psnr': [], 'ssim': []} | ({'lpips': []} if lpips is not None else {})
    for index, x in sharded_batches(images, dist, batch_size, num_workers, 'reconstruct'):
        z, _ = ae.encode(x, sample=False)
        x_rec = to_uint8(ae.decode(z).float()).float() / 127.5 - 1  # (B, 3, H, W), on the 8-bit grid
        per_image['psnr'].append(psnr(x_rec, x))
        per_image['ssim'].append(ssim(x_rec, x))
        if lpips is not None:
            per_image['lpips'].append(lpips(x_rec, x).double().flatten())
        inputs.add(index, x)
        recons.add(index, x_rec)
    _, _, per_rank = _shard(n, dist)
    results = {name: _gather_rows(values, (), per_rank, n, dist, torch.float64).mean().item()
               for name, values in per_image.items()}
    feats_in, desc_in = inputs.finish()
    feats_rec, desc_rec = recons.finish()
    if inception is not None:
        if len(feats_in['pool3']) < 2:
            die(f"rFID is a Frechet distance, which needs at least 2 images (their covariance), and --num_real gives "
                f"{len(feats_in['pool3'])}; pass more images.")
        results['rfid'] = frechet_distance(*feature_statistics(feats_in['pool3'].cpu()),
                                           *feature_statistics(feats_rec['pool3'].cpu()))
    results |= swd_from_descriptors(desc_in, desc_rec, inputs.resolutions)
    return results

def evaluate_pairs(fake_dir, ref_dir, lpips, device):
    """PSNR, SSIM (metrics.py) and LPIPS (when the network is given) of each image of fake_dir against the image of the
    same name in ref_dir, averaged over the pairs (LDM's Tab. 5). A file without its partner, or a pair of two sizes, is
    counted and named in one sentence, never dropped."""
    def stems(folder):
        return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')}
    fake, ref = stems(fake_dir), stems(ref_dir)
    alone = sorted(set(fake) ^ set(ref))
    if alone:
        die(f"{len(alone)} file(s) of --fake {fake_dir} and --ref {ref_dir} have no partner of the same name (first: "
            f"{alone[0]}); --paired compares x.png with x.png, so add or remove them.")
    per_pair = {'psnr': [], 'ssim': []} | ({'lpips': []} if lpips is not None else {})
    for name in tqdm(sorted(fake), desc='pairs', dynamic_ncols=True):
        x, y = (torch.from_numpy(np.asarray(open_image(p), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
                for p in (fake[name], ref[name]))
        if x.shape != y.shape:
            die(f"the pair {name} is {x.shape[-1]}x{x.shape[-2]} in --fake but {y.shape[-1]}x{y.shape[-2]} in --ref; "
                f"a pair must share its size.")
        per_pair['psnr'].append(psnr(x, y).item())
        per_pair['ssim'].append(ssim(x, y).item())
        if lpips is not None:
            per_pair['lpips'].append(lpips(x.to(device), y.to(device)).item())
    return {'num_pairs': len(fake), **{f'paired_{k}': float(np.mean(v)) for k, v in per_pair.items()}}

# ----------------------------------------------------------------------------------------------
# command line

def load_on_rank0_first(load, dist):
    """Rank 0 loads (and downloads into the shared cache) before the others, so only one process downloads.
    -> (model or None, the one-sentence reason why the weights could not be had)."""
    model, reason = None, None
    for rank0_turn in (True, False):
        if dist.master == rank0_turn:
            try:
                model = load()
            except FileNotFoundError as e:  # weights missing and offline: skip the metric, say why
                reason = str(e)
            except ValueError as e:  # a file that is not what its flag asks for
                die(str(e))
        if dist.ddp:
            torch_dist.barrier()
    return model, reason


FLAG = {'real': '--ref', 'fake': '--fake'}  # the flag of each set, for messages
# The Frechet distances: each a metric name -> (the features it is of, the keys of their mu and sigma in an .npz)
IMAGE_DISTANCES = {'fid': ('pool3', 'mu', 'sigma'), 'sfid': ('spatial', 'mu_s', 'sigma_s')}  # ADM's file keys
VIDEO_DISTANCES = {'fvd': ('i3d', 'mu', 'sigma')}


def frechet(sets, features, distances, save_stats, dist, what, items):
    """
    The one Frechet evaluation of FID, sFID and FVD. sets: {'real': (kind, source, precomputed), 'fake': ...}. A set's
    statistics of each of `distances` are those precomputed in its file when it holds them (as ADM's evaluator reads
    them), else those of its `features` ({set: {feature: (N, D)} or None}). save_stats writes the real set's in an
    .npz under the distances' keys. -> {distance: value} (on the master, for every distance both sets have
    statistics of; none without a fake set).
    """
    if not dist.master:
        return {}
    stats = {name: {} for name in sets}
    for name, (_, _, precomputed) in sets.items():
        for distance, (feature, mu, sigma) in distances.items():
            if mu in precomputed and sigma in precomputed:
                stats[name][distance] = precomputed[mu], precomputed[sigma]
            elif features.get(name) is not None:
                n = len(features[name][feature])
                if n < 2:  # a covariance of one sample is not defined
                    die(f"{distance.upper()} is a Frechet distance, which needs at least 2 {items} in each set (their "
                        f"covariance), and {FLAG[name]} has {n}; pass more {items}.")
                stats[name][distance] = feature_statistics(features[name][feature].cpu())
    if save_stats is not None:
        for distance, (mu, sigma) in stats['real'].items():
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                die(f"the {what} statistics ({distance}) of --ref are not finite (a set of fewer than 2 {items}, or "
                    f"features that overflowed); nothing was written.")
        arrays = {key: value for distance, (_, *keys) in distances.items() if distance in stats['real']
                  for key, value in zip(keys, stats['real'][distance])}
        with no_space_is_an_error(os.path.dirname(os.path.abspath(save_stats))), atomic_write(save_stats) as tmp:
            with open(tmp, 'wb') as f:
                np.savez_compressed(f, **arrays)
        print(f"saved the {what} statistics ({', '.join(arrays)}) of {len(sets['real'][1])} reference {items} to "
              f"{save_stats}")
    if sets['fake'][0] is None:
        return {}
    try:
        return {d: frechet_distance(*stats['real'][d], *stats['fake'][d]) for d in distances
                if d in stats['real'] and d in stats['fake']}
    except ValueError as e:  # statistics of another layer than the other set's
        die(str(e))


def open_sets(fake, real, num_real, image_size, num_frames, seed):
    """--fake and --ref as (kind, source, precomputed statistics) each (sources.open_source); without --ref, a seeded
    sample of the held-out dead-leaves images at --image_size or the fake images' size. -> (fake, real, is video)."""
    fake = open_source(fake, image_size, None, num_frames=num_frames) if fake else (None, None, {})
    if real is not None:
        real = open_source(real, image_size, num_real, seed, num_frames)
    elif fake[0] == 'videos':
        die("videos are scored against reference videos; pass --ref, an .npz of uint8 (N, T, H, W, 3) videos or "
            "their FVD statistics (--save_stats).")
    else:
        size = image_size if image_size is not None else (fake[1].size[0] if fake[0] == 'images' else None)
        if size is None:
            die("the dead-leaves reference set needs a resolution; pass --image_size.")
        n = num_real if num_real is not None else (len(fake[1]) if fake[0] == 'images' else 1000)
        real = 'images', DatasetImages(make_dataset(None, size, seed=seed, train=False), n, seed), {}
    video = any(kind == 'videos' or np.shape(stats.get('mu')) == (400,) for kind, _, stats in (real, fake))
    return fake, real, video


def sample_metrics(real, fake):
    """ADM's IS of the fake set's logits, and precision/recall (ADM's order: reference, sample) and KID of the two sets'
    pool_3 features (metrics.py), where the sets allow. real, fake: {feature: (N, D)} or None (a statistics file).
    -> (results, skipped)."""
    if fake is None:
        return {}, dict.fromkeys(('is', 'precision', 'kid'), "IS, precision, recall and KID need the generated images' "
                                 "features, and --fake is a statistics file.")
    results, skipped = {'is': inception_score(fake['logits'])}, {}
    if real is None:
        return results, dict.fromkeys(('precision', 'kid'), "precision, recall and KID compare the features of both "
                                      "sets, and --ref is a statistics file.")
    try:
        results['precision'], results['recall'] = precision_recall(real['pool3'], fake['pool3'])
    except ValueError as e:  # too few samples: one sentence
        skipped['precision'] = str(e)
    try:
        results['kid'], results['kid_std'] = kernel_inception_distance(fake['pool3'], real['pool3'])
    except ValueError as e:
        skipped['kid'] = str(e)
    return results, skipped


def evaluate_images(real, fake, dist, inception_weights, save_stats, batch_size, num_workers, seed):
    """ADM's suite (FID, sFID, IS, precision/recall) and KID when the Inception weights load, and SWD, of the fake
    images against the real ones or their statistics; save_stats writes the Inception statistics of the real ones.
    -> (results, skipped)."""
    sets = {'real': real, 'fake': fake}
    for name, (kind, _, precomputed) in sets.items():
        if kind == 'stats' and np.shape(precomputed['mu']) != (2048,):
            die(f"the {FLAG[name]} statistics are {np.shape(precomputed['mu'])[0]}-d, not the 2048 Inception pool3 "
                f"features of FID; save image statistics with --save_stats from images.")
    (real_kind, real, _), (fake_kind, fake, _) = real, fake
    results, skipped = {}, {}
    inception = None
    if 'images' in (real_kind, fake_kind):  # two statistics files need no network
        inception, skipped['fid'] = load_on_rank0_first(lambda: load_inception(inception_weights, dist.device), dist)
        if inception is not None or fake_kind is None:
            del skipped['fid']
    if save_stats is not None and inception is None:
        die(f"--save_stats needs the Inception network, and {skipped.get('fid') or 'it was not loaded'}")
    if save_stats is not None and real_kind != 'images':
        die("--save_stats writes the statistics of reference images, and --ref is a statistics file already.")

    swd_count = 0
    if fake_kind == 'images' and real_kind == 'images':
        if tuple(real.size) != tuple(fake.size):
            skipped['swd'] = (f"SWD compares images of one resolution, and --ref is {real.size[0]}x{real.size[1]} "
                              f"while --fake is {fake.size[0]}x{fake.size[1]}; pass --image_size.")
        elif min(real.size) < SWD_MIN_RES:
            skipped['swd'] = f"SWD needs images of at least {SWD_MIN_RES} pixels, these are {real.size[0]}x{real.size[1]}."
        else:
            swd_count = min(len(real), len(fake), SWD_MAX_IMAGES)
    elif fake_kind is not None:
        skipped['swd'] = "SWD needs images, and one of --ref/--fake is a statistics file."

    features, descriptors = {}, {}
    for name, (kind, source, _) in sets.items():
        if kind == 'images':
            results[f'num_{name}'] = len(source)
            if 0 < swd_count < len(source):  # SWD's cut is then a random sample (FID ignores the order)
                source = shuffled(source, seed)
            features[name], descriptors[name] = collect(source, dist, batch_size, num_workers, name, inception,
                                                        swd_count)
            results[f'unreadable_{name}'] = source.unreadable  # replaced by their neighbours: say how many
            if source.left_out:  # hidden files and files of other types, which were not read
                results[f'left_out_{name}'] = source.left_out
    distances = frechet(sets, features, IMAGE_DISTANCES, save_stats, dist, 'Inception', 'images')
    if dist.master and fake_kind is not None and 'fid' not in skipped:
        if 'sfid' not in distances:
            skipped['sfid'] = ("sFID needs the spatial statistics of both sets, and a statistics file here holds only "
                               "mu and sigma (pytorch-fid's format); --save_stats writes mu_s and sigma_s as well.")
        suite, skipped_suite = sample_metrics(features.get('real'), features.get('fake'))
        results = distances | suite | results
        skipped |= skipped_suite
    if swd_count > 0 and dist.master:
        results['swd_images'] = swd_count
        results |= swd_from_descriptors(descriptors['real'], descriptors['fake'], swd_resolutions(*real.size))
    return results, skipped


def evaluate_videos(real, fake, dist, i3d_weights, save_stats, batch_size, seed):
    """FVD (when the I3D weights load) and the weight-free video SWD of the fake videos against the real ones or their
    FVD statistics; save_stats writes the FVD statistics of the real ones. -> (results, skipped)."""
    sets = {'real': real, 'fake': fake}
    for name, (kind, _, precomputed) in sets.items():
        if kind == 'images':
            die(f"{FLAG[name]} holds images while the other set holds videos (or FVD statistics); pass videos for "
                f"both.")
        if kind == 'stats' and np.shape(precomputed['mu']) != (400,):
            die(f"the {FLAG[name]} statistics are {np.shape(precomputed['mu'])[0]}-d, not the 400 I3D logits of FVD; "
                f"save video statistics with --save_stats from an .npz of videos.")
    (real_kind, real, _), (fake_kind, fake, _) = real, fake
    results, skipped = {}, {'fvd': None}
    i3d = None
    if 'videos' in (real_kind, fake_kind):  # two statistics files need no network
        i3d, skipped['fvd'] = load_on_rank0_first(lambda: load_i3d(i3d_weights, dist.device), dist)
    short = [f"{FLAG[name]} has {source.shape[1]}" for name, (kind, source, _) in sets.items()
             if kind == 'videos' and source.shape[1] < FVD_NUM_FRAMES]
    if i3d is not None and short:
        i3d, skipped['fvd'] = None, f"FVD is measured on {FVD_NUM_FRAMES}-frame clips and {short[0]} frames."
    if save_stats is not None and i3d is None:
        die(f"--save_stats needs the I3D network, and {skipped['fvd']}")

    features = {}
    for name, (kind, source, _) in sets.items():
        if kind == 'videos':
            results[f'num_{name}'] = len(source)
            results[f'unreadable_{name}'] = getattr(source, 'unreadable', 0)  # a folder's videos that gave no clip
            if getattr(source, 'left_out', None):
                results[f'left_out_{name}'] = source.left_out
            if i3d is not None:
                features[name] = {'i3d': video_set_features(source, i3d, dist, batch_size)}
    results |= frechet(sets, features, VIDEO_DISTANCES, save_stats, dist, 'FVD', 'videos')

    if fake_kind == 'videos' and real_kind == 'videos':
        T, H, W = fake.shape[1:4]
        if real.shape[1:] != fake.shape[1:]:
            skipped['video_swd'] = (f"video SWD compares videos of one length and size, and --ref is "
                                    f"{'x'.join(map(str, real.shape[1:4]))} while --fake is {T}x{H}x{W} (T x H x W).")
        elif min(H, W) < SWD_MIN_RES:
            skipped['video_swd'] = f"video SWD needs frames of at least {SWD_MIN_RES} pixels, these are {H}x{W}."
        elif T < 2:
            skipped['video_swd'] = "video SWD needs at least 2 frames (its motion term compares frames), these have 1."
        elif dist.master:
            n = min(len(real), len(fake), max(2, SWD_MAX_IMAGES // T))  # at most ProGAN's count of frames
            def sample(v):  # n videos (a seeded random subset when there are more), (n, T, 3, H, W) uint8
                return torch.from_numpy(v if n == len(v) else v[random_subset(v, n, seed)]).permute(0, 1, 4, 2, 3)
            results['swd_videos'] = n
            results |= video_swd(sample(real), sample(fake), device=dist.device)
    elif fake_kind is not None:
        skipped['video_swd'] = "video SWD needs videos, and one of --ref/--fake is a statistics file."
    if skipped['fvd'] is None:
        del skipped['fvd']
    return results, skipped


def open_autoencoder(path, preset, data, image_size, num_real, seed, device):
    """--ae and the held-out images of --data it reconstructs (a seeded sample of num_real, or 1000 of the endless
    dead-leaves stream), each one sentence when it cannot be had. -> (autoencoder, images)."""
    if image_size is None:
        die("--ae needs --image_size, the resolution to reconstruct the dataset at.")
    try:
        dataset = make_dataset(data, image_size, seed=seed, train=False)
        ae = load_autoencoder(path, preset=preset, device=device, video=False)
    except (FileNotFoundError, ValueError) as e:
        die(str(e))
    if image_size % ae.downsample_factor:
        die(f"--image_size {image_size} is not divisible by the autoencoder's downsampling factor "
            f"{ae.downsample_factor}; pass a multiple of it.")
    n = num_real if num_real is not None else (1000 if data is None else len(dataset))
    return ae, DatasetImages(dataset, min(n, len(dataset)), seed)


def LPIPS_or_why(vgg_weights, lin_weights, dist):
    """-> (the LPIPS network, None), or (None, why it could not load)."""
    lpips, why = load_on_rank0_first(lambda: LPIPS(vgg_weights, lin_weights).to(dist.device), dist)
    return lpips, None if why is None else why + '; pass local copies with --vgg_weights and --lpips_lin_weights.'


def check_args(args):
    """The rules between flags, before anything is built. -> the JSON file the numbers go to."""
    if args.ae is not None and (args.fake is not None or args.ref is not None or args.save_stats is not None):
        die("--ae scores reconstructions of --data, while --fake/--ref/--save_stats are for generated images; pass one or the other.")
    if args.paired and not (args.fake and args.ref and os.path.isdir(args.fake) and os.path.isdir(args.ref)):
        die("--paired compares two folders file by file; pass both as folders with --fake and --ref.")
    if args.ae is None and any(v is not None for v in (args.data, args.preset)):
        die("--data and --preset go with --ae; to score generated images against a folder, pass it as --ref.")
    if args.ae is None and not args.paired and (args.vgg_weights or args.lpips_lin_weights):
        die("--vgg_weights and --lpips_lin_weights are for LPIPS, which --ae and --paired compute; pass one of them.")
    if args.ae is None and args.fake is None and args.save_stats is None:
        die("nothing to evaluate; pass --fake (generated images), --ae (an autoencoder) or --save_stats (reference statistics).")
    out = args.out or os.path.splitext((args.fake or args.ae or args.save_stats).rstrip('/'))[0] + '_metrics.json'
    inputs = [(args.fake, '--fake'), (args.ref, '--ref'), (args.ae, '--ae'), (args.data, '--data')] + [
        (getattr(args, k), f'--{k}') for k in ('inception_weights', 'i3d_weights', 'vgg_weights', 'lpips_lin_weights')]
    check_output(out, '--out' if args.out else f'--out (by default {out})', folder=False)
    refuse_overlap(out, '--out', inputs + [(args.save_stats, '--save_stats')])
    if int(os.environ.get('RANK', 0)) == 0:
        lock_file(out, '--out')  # one evaluation writes each file at a time (rank 0 for all ranks)
    refuse_to_overwrite([out], args.overwrite, flag='--out')
    if args.save_stats is not None:
        check_output(args.save_stats, '--save_stats', folder=False)
        refuse_overlap(args.save_stats, '--save_stats', inputs)
        if int(os.environ.get('RANK', 0)) == 0:
            lock_file(args.save_stats, '--save_stats')
        refuse_to_overwrite([args.save_stats], args.overwrite, flag='--save_stats')
    return out


def check_results(results):
    """Every number is finite: a NaN or infinite metric (statistics of one image, a broken set) is an error, never a
    number in the JSON."""
    bad = non_finite(results)
    if bad:
        die(f"{', '.join(bad)} came out as no finite number for the sets given (a set of fewer than 2 images, or "
            f"statistics that are not a covariance); nothing was written.")


def main(argv=None):
    args = parse_args(argv)
    args.device = select_device(args.device)  # 'auto' becomes the GPU or the CPU
    out = check_args(args)

    dist = setup_distributed(args.device)
    # TF32 convolutions round to a 10-bit mantissa; full float32 keeps the features independent of the GPU generation
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.ae is not None:  # an autoencoder's reconstructions of --data
        ae, images = open_autoencoder(args.ae, args.preset, args.data, args.image_size, args.num_real, args.seed,
                                      dist.device)
        skipped = {}
        inception, skipped['rfid'] = load_on_rank0_first(lambda: load_inception(args.inception_weights, dist.device),
                                                         dist)
        lpips, skipped['lpips'] = LPIPS_or_why(args.vgg_weights, args.lpips_lin_weights, dist)
        skipped = {name: why for name, why in skipped.items() if why is not None}
        results = {'num_images': len(images),
                   **evaluate_autoencoder(ae, images, dist, inception, lpips, args.batch_size, args.num_workers),
                   'unreadable_images': images.unreadable,  # replaced by their neighbours, counted
                   **({'left_out_images': images.left_out} if images.left_out else {})}
    else:  # generated images or videos against a reference set
        fake, real, video = open_sets(args.fake, args.ref, args.num_real, args.image_size, args.num_frames, args.seed)
        refuse_unused(argv if argv is not None else sys.argv[1:], [
            ('--i3d_weights', video, 'only applies to videos (FVD)'),
            ('--inception_weights', not video, 'only applies to images (FID)')])
        if video:
            results, skipped = evaluate_videos(real, fake, dist, args.i3d_weights, args.save_stats, args.batch_size,
                                               args.seed)
        else:
            results, skipped = evaluate_images(real, fake, dist, args.inception_weights, args.save_stats,
                                               args.batch_size, args.num_workers, args.seed)
        if args.paired:  # per pair, beside the distribution metrics (loaded on every rank, scored on rank 0)
            lpips, why = LPIPS_or_why(args.vgg_weights, args.lpips_lin_weights, dist)
            if dist.master:
                results |= evaluate_pairs(args.fake, args.ref, lpips, dist.device)
            if why is not None:
                skipped['paired_lpips'] = why
    if dist.master:
        check_results(results)
        for name, value in results.items():
            print(f"{name:>12s}  {value:.4f}" if isinstance(value, float) else f"{name:>12s}  {value}")
        for name, why in skipped.items():
            print(f"{name:>12s}  skipped: {why}")
        with no_space_is_an_error(os.path.dirname(os.path.abspath(out))), atomic_write(out) as tmp, open(tmp, 'w') as f:
            json.dump({**results, 'skipped': skipped, 'args': vars(args)}, f, indent=2,
                      default=lambda v: v.item() if hasattr(v, 'item') else str(v))  # a numpy number is a number
        print(f"wrote {out}")
    cleanup_distributed()
    return results, skipped


if __name__ == '__main__':
    main()
