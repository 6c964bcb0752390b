"""
Evaluation metrics, in one file with metrics.py (PSNR, SSIM: the light ones training also uses), so that every number
in the experiments is measured the same way:

  - FID (Heusel et al. 2017) with the Inception-v3 of TensorFlow's 2015-12-05 graph as ported by pytorch-fid, the
    network published FIDs are measured with: 2048-d pool3 features after a bilinear resize to 299 x 299.
  - The multi-scale sliced Wasserstein distance (SWD) of Progressive GANs (Karras et al. 2018), which needs no
    pretrained weights and so also works offline: one number per Laplacian-pyramid level.
  - For an autoencoder: PSNR, SSIM, LPIPS and rFID (the FID between images and their reconstructions), plus SWD.
  - For videos: FVD (Unterthiner et al. 2018) with the Kinetics-400 I3D, as cd-fvd / TATS / VideoGPT measure it, and
    a weight-free video SWD (frames, and frame differences for motion).

Generated samples against a reference set (a folder, a samples .npz as sample.py writes, or a statistics .npz):
  python eval_fid.py --fake samples.npz --real /path/to/images --image_size 256
  python eval_fid.py --fake samples.npz                          # reference: the embedded dead-leaves set
  python eval_fid.py --real /path/to/images --image_size 256 --save_stats ref.npz   # cache the reference statistics
  torchrun --nproc_per_node=8 eval_fid.py --fake samples.npz --real ref.npz         # feature extraction over 8 GPUs
Videos (uint8 (N, T, H, W, 3) in arr_0, as sample.py writes them): FVD needs T >= 16, the video SWD T >= 2:
  python eval_fid.py --fake video_samples.npz --real real_videos.npz
  python eval_fid.py --real real_videos.npz --save_stats fvd_ref.npz              # then --real fvd_ref.npz
  python eval_fid.py --fake video_samples.npz --real /kinetics/val --image_size 64 --num_frames 17   # a video folder
An autoencoder's reconstructions of a dataset (the embedded one when --data is omitted):
  python eval_fid.py --ae out/ckpt.pt --image_size 64
Every number printed also goes into a JSON file (--out); a metric that cannot run says why, there and on screen.
"""
import os
import json
import math
import argparse

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as torch_dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE
from tqdm import tqdm

from common import (checked, select_device, die, setup_distributed, cleanup_distributed, refuse_to_overwrite,
                    no_space_is_an_error)
from data import (IMAGE_EXTENSIONS, UNREADABLE, VIDEO_EXTENSIONS, VideoFolder, list_files, make_dataset,
                  open_first_readable, random_subset)
from metrics import psnr, ssim

# ----------------------------------------------------------------------------------------------
# FID Inception: the TF 2015-12-05 graph, as pytorch-fid ports it onto torchvision's blocks

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_FILE = os.path.basename(FID_WEIGHTS_URL)


def _avg_pool_3x3(x):
    # TF's average pool leaves the zero padding out of the mean; torchvision's default counts it
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class FIDInceptionE(InceptionE):
    """The last two blocks of the graph: Mixed_7b pools by average (without padding), Mixed_7c by max, a quirk of the
    2015 graph that the FID definition inherits."""
    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionV3FID(nn.Module):
    """
    Inception-v3 as frozen in TF's 2015-12-05 graph, the network FID is defined with (1008 classes, the FIDInception
    blocks above). Attribute names are torchvision's, which are the names in pytorch-fid's weights file, so that file
    loads with strict=True. forward(x): x (B, 3, H, W) in [-1, 1] -> pool3 features (B, 2048).
    """
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the classifier: FID never uses it, it is here so the released file loads strictly

    def forward(self, x):
        # pytorch-fid resizes [0, 1] images and then maps them to [-1, 1]; both steps are affine, so the order is free
        x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # pool3: (B, 2048)


def load_inception(path=None, device='cpu'):
    """
    The FID Inception with pytorch-fid's weights, from `path` or else from the canonical release through torch hub's
    cache (downloaded once). Raises FileNotFoundError, one sentence naming the file and the flag, when neither works.
    """
    if path is None:
        try:
            state = torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, map_location='cpu', check_hash=True,
                                                       progress=False, weights_only=True)
        except OSError:  # URLError (offline) is an OSError
            cache = os.path.join(torch.hub.get_dir(), 'checkpoints')
            raise FileNotFoundError(
                f"the FID Inception weights {FID_WEIGHTS_FILE} are not in {cache} and could not be downloaded from "
                f"{FID_WEIGHTS_URL}; download that file and pass it as --inception_weights PATH.") from None
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--inception_weights {path} does not exist; pass the path of pytorch-fid's "
                                    f"{FID_WEIGHTS_FILE} (from {FID_WEIGHTS_URL}).")
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # random bytes, a truncated download
            raise ValueError(f"--inception_weights {path} could not be read as torch weights ({type(e).__name__}); "
                             f"pass pytorch-fid's {FID_WEIGHTS_FILE}.") from None
    net = InceptionV3FID()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise ValueError(f"{path or FID_WEIGHTS_FILE} does not hold the FID Inception's weights; pass pytorch-fid's "
                         f"{FID_WEIGHTS_FILE} with --inception_weights.") from None
    return net.eval().requires_grad_(False).to(device)

# ----------------------------------------------------------------------------------------------
# Frechet distance

def feature_statistics(features):
    """features (N, D) -> (mu (D,), sigma (D, D)) in float64, as pytorch-fid: sample mean and unbiased covariance."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError(f"a covariance needs at least 2 images, got {len(features)}; evaluate more images.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """
    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.
    The trace of the matrix square root comes from a symmetric eigen-decomposition, not scipy.linalg.sqrtm as in
    pytorch-fid: S1 S2 = S1^(1/2) (S1^(1/2) S2 S1^(1/2)) S1^(-1/2) is similar to the symmetric PSD matrix
    M = S1^(1/2) S2 S1^(1/2), so Tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i(M)). This needs no eps offset for near-singular
    covariances and gives no imaginary parts (eigenvalues that round below zero are clipped to zero); it is the same
    number as pytorch-fid's, about 5x faster at D = 2048.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"the two statistics have different dimensions ({mu1.shape[0]} and {mu2.shape[0]}); "
                         f"both must come from the same Inception layer.")
    w, v = scipy.linalg.eigh(sigma1)
    sqrt_sigma1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()  # Tr (S1 S2)^(1/2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)

# ----------------------------------------------------------------------------------------------
# Multi-scale sliced Wasserstein distance (Karras et al. 2018, appendix D; ProGAN's metrics/sliced_wasserstein.py)

SWD_NHOOD = 7              # a descriptor is one 7x7 neighbourhood of one pyramid level, 3 channels: 147 numbers
SWD_NHOODS_PER_IMAGE = 128
SWD_DIR_REPEATS = 4        # 4 x 128 random unit directions = 512 projections per level, as ProGAN
SWD_DIRS_PER_REPEAT = 128
SWD_MIN_RES = 16           # the coarsest pyramid level
SWD_MAX_IMAGES = 16384     # ProGAN's count: 2^21 descriptors per level; a larger set gives a seeded random 16384
SWD_SEED = 0               # fixed, so neighbourhoods and directions are the same in every run and numbers compare

# the 5-tap binomial filter [1 4 6 4 1] / 16 in 2-D: the Gaussian of cv2.pyrDown / pyrUp and of ProGAN's code
_BINOMIAL_5x5 = torch.outer(torch.tensor([1., 4., 6., 4., 1.]), torch.tensor([1., 4., 6., 4., 1.])) / 256


def _binomial_blur(x):
    """x (B, C, H, W) convolved with the 5x5 binomial filter; 'reflect' padding is scipy.ndimage's mode='mirror'."""
    C = x.shape[1]
    kernel = _BINOMIAL_5x5.to(x.device, x.dtype).expand(C, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode='reflect'), kernel, groups=C)


def pyr_down(x):
    """Blur and keep every second pixel: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), cv2.pyrDown."""
    return _binomial_blur(x)[:, :, ::2, ::2]


def pyr_up(x, size):
    """Insert zeros between pixels and blur with 4x the filter (the zeros carry 3/4 of the weight), cv2.pyrUp;
    cropped to `size` (H, W) so that odd sizes round-trip."""
    B, C, H, W = x.shape
    up = x.new_zeros(B, C, 2 * H, 2 * W)
    up[:, :, ::2, ::2] = x
    return 4 * _binomial_blur(up)[:, :, :size[0], :size[1]]


def laplacian_pyramid(x, num_levels):
    """x (B, C, H, W) -> [band-pass at H, H/2, ..., low-pass residual at H / 2^(num_levels-1)];
    x = level_0 + up(level_1 + up(level_2 + ...)), exactly."""
    levels = [x]
    for _ in range(1, num_levels):
        levels.append(pyr_down(levels[-1]))
        levels[-2] = levels[-2] - pyr_up(levels[-1], levels[-2].shape[-2:])
    return levels


def swd_resolutions(height, width):
    """Pyramid levels ProGAN uses: the image size, halved while it stays >= 16."""
    res = min(height, width)
    if res < SWD_MIN_RES:
        raise ValueError(f"SWD needs images of at least {SWD_MIN_RES} x {SWD_MIN_RES} pixels, got {height} x {width}.")
    resolutions = []
    while res >= SWD_MIN_RES:
        resolutions.append(res)
        res //= 2
    return resolutions


def swd_descriptors(x, index):
    """
    x (B, 3, H, W) images (any fixed range); index (B,) their positions in their set. Returns, per pyramid level, the
    (B * 128, 3, 7, 7) neighbourhoods at random centres. The centres depend only on (SWD_SEED, index), so a set's
    descriptors do not depend on the batch size or the number of GPUs.
    """
    levels = laplacian_pyramid(x.float(), len(swd_resolutions(*x.shape[-2:])))
    L, n, h = len(levels), SWD_NHOODS_PER_IMAGE, SWD_NHOOD // 2
    u = torch.stack([torch.rand(L, n, 2, generator=torch.Generator().manual_seed(SWD_SEED * 1_000_003 + int(i)))
                     for i in index]).to(x.device)  # (B, L, n, 2) uniform in [0, 1)
    offsets = torch.arange(-h, h + 1, device=x.device)
    out = []
    for l, level in enumerate(levels):
        B, C, H, W = level.shape
        # centres in [h, H - h - 1], so the window stays inside the image (ProGAN: randint(h, H - h))
        cy = h + (u[:, l, :, 0] * (H - 2 * h)).long()  # (B, n)
        cx = h + (u[:, l, :, 1] * (W - 2 * h)).long()
        rows = (cy[:, :, None] + offsets)[:, :, :, None]  # (B, n, 7, 1)
        cols = (cx[:, :, None] + offsets)[:, :, None, :]  # (B, n, 1, 7)
        batch = torch.arange(B, device=x.device)[:, None, None, None]
        patches = level.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, n, 7, 7, C)
        out.append(patches.permute(0, 1, 4, 2, 3).reshape(B * n, C, 2 * h + 1, 2 * h + 1))
    return out


def _normalize_descriptors(desc, ref=None):
    """(N, C, 7, 7) -> (N, C * 49): each channel to zero mean and unit std over this set (ProGAN's
    finalize_descriptors); so SWD compares local structure, not global colour or contrast. With ref, the mean and
    std are those of ref instead."""
    ref = desc if ref is None else ref
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    std = ref.std(dim=(0, 2, 3), keepdim=True, unbiased=False)  # np.std: the population std
    return ((desc - mean) / std).flatten(1)


def _sliced_wasserstein_level(a, b, generator):
    """Mean over 512 random unit directions of the 1-D Wasserstein-1 distance between the projections of the two
    (N, D) descriptor sets; in 1-D, W1 between equal-size samples is the mean |difference| of the sorted values."""
    dists = []
    for _ in range(SWD_DIR_REPEATS):
        dirs = torch.randn(a.shape[1], SWD_DIRS_PER_REPEAT, generator=generator, dtype=torch.float64)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device, a.dtype)  # (D, 128) unit columns
        proj_a, proj_b = _sort_rows(dirs.T @ a.T), _sort_rows(dirs.T @ b.T)  # (128, N) each, sorted along N
        dists.append((proj_a - proj_b).abs().mean().item())
    return float(np.mean(dists))


def _sort_rows(t):
    # torch's CPU sort also builds the permutation and is ~10x slower than numpy's; on a GPU torch's is the fast one
    if t.device.type == 'cpu':
        return torch.from_numpy(np.sort(t.contiguous().numpy(), axis=1))
    return t.sort(dim=1).values


def swd_from_descriptors(desc_a, desc_b, resolutions, joint=False):
    """Per-level descriptor lists of two sets (as swd_descriptors returns, concatenated over the set) ->
    {'swd_<res>': SWD x 1e3 (ProGAN's scale) per level, 'swd_avg': their mean}. joint normalises both sets by the
    statistics of their union instead of each by its own, so that the overall scale of the descriptors counts."""
    generator = torch.Generator().manual_seed(SWD_SEED)
    result = {}
    for res, a, b in zip(resolutions, desc_a, desc_b):
        if a.shape != b.shape:
            raise ValueError(f"SWD compares sets of equal size; got {a.shape[0]} and {b.shape[0]} descriptors.")
        union = torch.cat([a, b]) if joint else None
        a, b = _normalize_descriptors(a, union), _normalize_descriptors(b, union)
        result[f'swd_{res}'] = 1e3 * _sliced_wasserstein_level(a, b, generator)
    result['swd_avg'] = float(np.mean([result[f'swd_{res}'] for res in resolutions]))
    return result


@torch.no_grad()
def sliced_wasserstein(real, fake, batch_size=64):
    """
    Multi-scale sliced Wasserstein distance of Progressive GANs between two image sets real, fake (N, 3, H, W) of equal
    size and resolution (>= 16 px, any fixed value range: descriptors are normalised per set). Parameters are fixed,
    as ProGAN's: a Laplacian pyramid with the 5-tap binomial filter, from the full resolution down to 16 px; 128
    random 7x7 neighbourhoods per image and level; each descriptor channel normalised to zero mean and unit std over
    its set; 4 repeats of 128 random unit directions (512 projections); SWD = mean |sorted projection difference|.
    Returns {'swd_<res>': value x 1e3 for each level res, 'swd_avg': mean over levels}; lower is better, 0 for
    identical sets.
    """
    if real.shape != fake.shape:
        raise ValueError(f"SWD compares sets of equal size and resolution; got {tuple(real.shape)} and {tuple(fake.shape)}.")
    return swd_from_descriptors(_set_descriptors(real, batch_size), _set_descriptors(fake, batch_size),
                                swd_resolutions(*real.shape[-2:]))


def _set_descriptors(images, batch_size):
    """swd_descriptors of a whole set (N, 3, H, W), batch by batch, concatenated per level."""
    per_batch = [swd_descriptors(images[i:i + batch_size], range(i, min(i + batch_size, len(images))))
                 for i in range(0, len(images), batch_size)]
    return [torch.cat(level) for level in zip(*per_batch)]


def _video_descriptors(videos, batch_size, device):
    """Per level, the SWD descriptors of all frames and of all frame differences of videos (N, T, 3, H, W), converted
    to float batch_size videos at a time (so a uint8 set of any size fits); centres are seeded by position in the set."""
    frames, motion = [], []
    for i in range(0, len(videos), batch_size):
        v = videos[i:i + batch_size].to(device).float()  # (b, T, 3, H, W)
        b, T = v.shape[:2]
        frames.append(swd_descriptors(v.flatten(0, 1), range(i * T, (i + b) * T)))
        motion.append(swd_descriptors((v[:, 1:] - v[:, :-1]).flatten(0, 1), range(i * (T - 1), (i + b) * (T - 1))))
    return [torch.cat(level) for level in zip(*frames)], [torch.cat(level) for level in zip(*motion)]


@torch.no_grad()
def video_swd(real, fake, batch_size=16, device='cpu'):
    """
    A weight-free video metric, for offline runs and as a reference beside FVD. real, fake (N, T, 3, H, W) of one shape
    (T >= 2, H, W >= 16, any fixed value range: descriptors are normalised). Returns, x 1e3 and 0 for identical sets:
      'swd_frames': the multi-scale SWD between the sets of all frames, as for images (appearance: blur, colour);
      'swd_motion': the multi-scale SWD between the sets of frame differences x[t+1] - x[t], normalised by the
        statistics of both sets together: per set, frozen video (all differences 0) would be 0 / 0, and the size of
        the motion would not count (temporal structure: frozen, shuffled, too fast or too slow motion);
      'video_swd': their mean.
    """
    if real.shape != fake.shape or real.ndim != 5 or real.shape[1] < 2:
        raise ValueError(f"video SWD compares two sets of videos (N, T >= 2, 3, H, W) of one shape; got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}.")
    resolutions = swd_resolutions(*real.shape[-2:])
    (frames_r, motion_r), (frames_f, motion_f) = (_video_descriptors(v, batch_size, device) for v in (real, fake))
    result = {'swd_frames': swd_from_descriptors(frames_r, frames_f, resolutions)['swd_avg'],
              'swd_motion': swd_from_descriptors(motion_r, motion_f, resolutions, joint=True)['swd_avg']}
    result['video_swd'] = (result['swd_frames'] + result['swd_motion']) / 2
    return result

# ----------------------------------------------------------------------------------------------
# FVD (Unterthiner et al. 2018): the Frechet distance between I3D (Carreira & Zisserman 2017) Kinetics-400 logits of
# real and generated 16-frame clips. Network, weights and preprocessing are those of cd-fvd (Ge et al. 2024), TATS and
# VideoGPT: DeepMind's RGB Kinetics-400 I3D in piergiaj's PyTorch port; the first 16 frames; each frame's shorter side
# resized bilinearly to 224 and centre-cropped (StyleGAN-V's crop; a plain resize for square videos); values
# 2 x / 255 - 1 in [-1, 1], as the original TF code; the 400 logits averaged over time are the features.

I3D_WEIGHTS_URL = 'https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt'
I3D_WEIGHTS_FILE = os.path.basename(I3D_WEIGHTS_URL)
FVD_NUM_FRAMES = 16
FVD_RESOLUTION = 224


def _pad_same(x, kernel, stride):
    """TensorFlow's 'SAME' padding of x (B, C, T, H, W) for a kernel and stride over (T, H, W); the odd pixel at the end."""
    pad = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        total = max(k - (size % s or s), 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


def _max_pool_same(x, kernel, stride):
    # zero padding acts as TF's -inf padding here: every pooled tensor comes out of a ReLU
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d with 'SAME' padding, then BatchNorm and ReLU; the logits layer is a biased conv alone."""
    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


class InceptionModule3D(nn.Module):
    """Inception-v1 block inflated to 3-D: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1x1."""
    def __init__(self, in_channels, widths):  # widths of b0, b1a, b1b, b2a, b2b, b3b
        super().__init__()
        w = widths
        self.b0 = Unit3D(in_channels, w[0])
        self.b1a, self.b1b = Unit3D(in_channels, w[1]), Unit3D(w[1], w[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_channels, w[3]), Unit3D(w[3], w[4], (3, 3, 3))
        self.b3b = Unit3D(in_channels, w[5])

    def forward(self, x):
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D with the module names of piergiaj's port, so i3d_pretrained_400.pt loads as it is:
    videos (B, 3, T, 224, 224) in [-1, 1], T >= 9 -> (B, 400) Kinetics-400 logits averaged over time."""
    def __init__(self, num_classes=400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.Mixed_3b = InceptionModule3D(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule3D(256, (128, 128, 192, 32, 96, 64))
        self.Mixed_4b = InceptionModule3D(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule3D(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule3D(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule3D(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule3D(528, (256, 160, 320, 32, 128, 128))
        self.Mixed_5b = InceptionModule3D(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule3D(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, num_classes, logits=True)

    def forward(self, x):
        x = _max_pool_same(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))  # (B, 64, T/2, 56, 56)
        x = _max_pool_same(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))  # (B, 192, T/2, 28, 28)
        x = _max_pool_same(self.Mixed_3c(self.Mixed_3b(x)), (3, 3, 3), (2, 2, 2))  # (B, 480, T/4, 14, 14)
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))  # (B, 832, T/8, 7, 7)
        x = self.Mixed_5c(self.Mixed_5b(x))  # (B, 1024, T/8, 7, 7)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T/8 - 1, 1, 1); dropout is off at evaluation
        return self.logits(x).mean(dim=(2, 3, 4))  # logits averaged over time: (B, 400)


def fvd_preprocess(videos):
    """
    videos (B, T, 3, H, W) in [-1, 1], T >= 16 -> I3D input (B, 3, 16, 224, 224) in [-1, 1]: the first 16 frames,
    each frame's shorter side resized to 224 (bilinear, no antialiasing, as the TF and PyTorch FVD codes) and
    centre-cropped. Resizing is linear with weights summing to 1, so it commutes with uint8 -> 2 x / 255 - 1.
    """
    B, T, C, H, W = videos.shape
    if T < FVD_NUM_FRAMES:
        raise ValueError(f"FVD is measured on {FVD_NUM_FRAMES}-frame clips and these videos have {T} frames; "
                         f"generate longer videos, or use the weight-free video SWD.")
    R = FVD_RESOLUTION
    size = (R, max(R, math.ceil(W * R / H))) if H <= W else (max(R, math.ceil(H * R / W)), R)  # shorter side -> R
    x = F.interpolate(videos[:, :FVD_NUM_FRAMES].reshape(-1, C, H, W).float(), size=size, mode='bilinear',
                      align_corners=False)
    top, left = (size[0] - R) // 2, (size[1] - R) // 2
    x = x[:, :, top:top + R, left:left + R]
    return x.reshape(B, FVD_NUM_FRAMES, C, R, R).transpose(1, 2)  # (B, 3, 16, 224, 224)


def load_i3d(path=None, device='cpu'):
    """
    The FVD I3D with its Kinetics-400 weights, from `path` or else from their canonical URL through torch hub's cache
    (downloaded once). Raises FileNotFoundError, one sentence naming the file and the flag, when neither works.
    """
    if path is None:
        try:
            state = torch.hub.load_state_dict_from_url(I3D_WEIGHTS_URL, map_location='cpu', progress=False,
                                                       weights_only=True)
        except OSError:  # URLError (offline) is an OSError
            cache = os.path.join(torch.hub.get_dir(), 'checkpoints')
            raise FileNotFoundError(
                f"the FVD I3D weights {I3D_WEIGHTS_FILE} are not in {cache} and could not be downloaded from "
                f"{I3D_WEIGHTS_URL}; download that file and pass it as --i3d_weights PATH.") from None
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--i3d_weights {path} does not exist; pass the path of {I3D_WEIGHTS_FILE} "
                                    f"(from {I3D_WEIGHTS_URL}).")
        state = torch.load(path, map_location='cpu', weights_only=True)
    net = I3D()
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"{path or I3D_WEIGHTS_FILE} is not the Kinetics-400 I3D state dict of {I3D_WEIGHTS_URL}; "
                         f"pass that file as --i3d_weights.") from None
    return net.eval().requires_grad_(False).to(device)


@torch.no_grad()
def i3d_features(i3d, videos):
    """videos (B, T, 3, H, W) in [-1, 1] -> (B, 400) float32 FVD features on the network's device."""
    device = next(i3d.parameters()).device
    return i3d(fvd_preprocess(videos.to(device))).float()


def video_set_features(videos, i3d, dist, batch_size):
    """FVD features (N, 400) float64 numpy of uint8 videos (N, T, H, W, 3): each rank embeds its block, gathered in
    set order."""
    lo, hi, per_rank = _shard(len(videos), dist)
    features = []
    for i in tqdm(range(lo, hi, batch_size), desc='I3D', disable=not dist.master, leave=False):
        v = torch.from_numpy(np.ascontiguousarray(videos[i:min(i + batch_size, hi)])).to(dist.device)
        features.append(i3d_features(i3d, v.permute(0, 1, 4, 2, 3).float() / 127.5 - 1))
    local = torch.cat(features) if features else torch.zeros(0, 400, device=dist.device)
    return _gather_rows(local, per_rank, len(videos), dist).cpu().double().numpy()

# ----------------------------------------------------------------------------------------------
# Image sources: every set is a Dataset of (uint8 (3, H, W) image, 1 if the file was unreadable and a neighbour stands
# in, else 0) with a known .size (H, W); sharded_batches counts the unreadable files into .unreadable

def to_uint8(x):
    """x (..., 3, H, W) in [-1, 1] -> uint8 in [0, 255], rounded as an 8-bit image file would hold it."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class ImageArray(Dataset):
    """A uint8 (N, H, W, 3) array, as in the arr_0 of the .npz files sample.py (and ADM's evaluator) use."""
    unreadable = 0

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
        self.root, self.files = root, list_files(root)
        if not self.files:
            die(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), searched recursively.")
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
        die(f"--real/--fake {path} is a folder of videos; pass --image_size (and --num_frames) for its clips.")
    folder = VideoFolder(path, image_size, num_frames, train=False)
    index = random_subset(folder, limit, seed) if limit is not None else range(len(folder))
    clips, unreadable = [], 0
    for i in tqdm(index, desc=f'reading {path}', dynamic_ncols=True):
        x, _, skipped = folder.load(i)  # (3, T, H, W) in [-1, 1], made from uint8 / 127.5 - 1: exact round trip
        if skipped:
            unreadable += 1
        else:
            clips.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy())
    if unreadable:
        print(f"{path}: left out {unreadable} of {len(index)} videos that gave no {num_frames}-frame clip")
    return np.stack(clips)


def is_video_folder(path):
    """True for a folder with videos and no images in it (searched recursively)."""
    names = [f.lower() for _, _, files in os.walk(path, followlinks=True) for f in files]
    return any(f.endswith(VIDEO_EXTENSIONS) for f in names) and not any(f.endswith(IMAGE_EXTENSIONS) for f in names)


def open_source(path, image_size, limit, seed=0, num_frames=16):
    """--real/--fake -> ('stats', (mu, sigma)) for a statistics .npz, ('videos', uint8 (N, T, H, W, 3) array) for a
    samples .npz of videos or a folder of videos (num_frames-frame clips), else ('images', Dataset); at most `limit`
    images or videos (a seeded random sample when the source holds more)."""
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            die(f"{path} does not exist; pass a folder of images, a samples .npz or a statistics .npz.")
        try:
            with np.load(path) as f:
                contents = {k: f[k] for k in ('mu', 'sigma', 'arr_0') if k in f}
        except Exception as e:  # random bytes, a cut-off file, a pickle
            die(f"{path} could not be read as an .npz file ({type(e).__name__}); pass a samples or statistics .npz "
                f"as sample.py and --save_stats write them.")
        if 'mu' in contents and 'sigma' in contents:
            return 'stats', (contents['mu'], contents['sigma'])
        if 'arr_0' not in contents:
            die(f"{path} holds neither arr_0 (uint8 images) nor mu/sigma (statistics); it is not an evaluation .npz.")
        array = contents['arr_0']
        if array.dtype == np.uint8 and array.ndim == 5 and array.shape[-1] == 3:
            return 'videos', array if limit is None else array[random_subset(array, limit, seed)]
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            die(f"arr_0 of {path} is {array.dtype} {array.shape}, not uint8 (N, H, W, 3) images or (N, T, H, W, 3) "
                f"videos as sample.py writes.")
        images = ImageArray(array)
    elif os.path.isdir(path) and is_video_folder(path):
        return 'videos', read_video_folder(path, image_size, num_frames, limit, seed)
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
    return 'images', images


class _Sample(Subset):
    """The images at `index` of a set, keeping its .size. FID does not depend on the order of a set; SWD takes its first
    SWD_MAX_IMAGES, so a set is shuffled (all of it, seeded) before that cut."""
    unreadable = 0

    def __init__(self, images, index):
        super().__init__(images, index)
        self.size = images.size


def shuffled(images, seed):
    return _Sample(images, np.random.default_rng(seed).permutation(len(images)).tolist())

# ----------------------------------------------------------------------------------------------
# Sharded feature extraction

def _shard(n, dist):
    """Rank r takes the r-th contiguous block of ceil(n / world_size) images; all padding is at the end."""
    per_rank = -(-n // dist.world_size)
    return min(dist.rank * per_rank, n), min((dist.rank + 1) * per_rank, n), per_rank


def _gather_rows(t, rows_per_rank, total, dist):
    """Every rank's rows in rank order, each padded to rows_per_rank for all_gather, padding dropped (it is all at
    the end, since blocks are contiguous and filled in order)."""
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
    loader = DataLoader(Subset(images, range(lo, hi)), batch_size=batch_size, num_workers=num_workers,
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
    on each rank and gathered in set order by finish()."""
    def __init__(self, n, size, dist, inception=None, swd_count=0):
        self.n, self.dist, self.inception, self.swd_count = n, dist, inception, swd_count
        self.resolutions = swd_resolutions(*size) if swd_count > 0 else []
        self.features, self.descriptors = [], [[] for _ in self.resolutions]

    @torch.no_grad()
    def add(self, index, x):
        if self.inception is not None:
            self.features.append(self.inception(x).float())
        keep = index < self.swd_count
        if keep.any():
            for level, d in zip(self.descriptors, swd_descriptors(x[keep.to(x.device)], index[keep])):
                level.append(d)

    def finish(self):
        """-> (features (n, 2048) float64 numpy or None, [descriptors (swd_count * 128, 3, 7, 7) per level] or None)."""
        _, _, per_rank = _shard(self.n, self.dist)
        features = descriptors = None
        if self.inception is not None:
            local = torch.cat(self.features) if self.features else torch.zeros(0, 2048, device=self.dist.device)
            features = _gather_rows(local, per_rank, self.n, self.dist).cpu().double().numpy()
        if self.swd_count > 0:
            k = SWD_NHOOD
            descriptors = []
            for level in self.descriptors:
                local = torch.cat(level) if level else torch.zeros(0, 3, k, k, device=self.dist.device)
                descriptors.append(_gather_rows(local, per_rank * SWD_NHOODS_PER_IMAGE,
                                                self.swd_count * SWD_NHOODS_PER_IMAGE, self.dist))
        return features, descriptors


def collect(images, dist, batch_size, num_workers, desc, inception=None, swd_count=0):
    """Features and descriptors of one image set (see Collector)."""
    collector = Collector(len(images), images.size, dist, inception, swd_count)
    for index, x in sharded_batches(images, dist, batch_size, num_workers, desc):
        collector.add(index, x)
    return collector.finish()

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
    results = {}
    for name, values in per_image.items():
        local = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64, device=dist.device)
        results[name] = _gather_rows(local, per_rank, n, dist).mean().item()
    feats_in, desc_in = inputs.finish()
    feats_rec, desc_rec = recons.finish()
    if inception is not None:
        results['rfid'] = frechet_distance(*feature_statistics(feats_in), *feature_statistics(feats_rec))
    results |= swd_from_descriptors(desc_in, desc_rec, inputs.resolutions)
    return results

# ----------------------------------------------------------------------------------------------
# command line

def _load_on_rank0_first(load, dist):
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


def evaluate_samples(args, dist):
    """FID and SWD of --fake against --real (or the dead-leaves set); --save_stats. -> (results, skipped)."""
    results, skipped = {}, {}
    fake_kind, fake = open_source(args.fake, args.image_size, None, num_frames=args.num_frames) if args.fake else (None, None)
    if args.real is not None:
        real_kind, real = open_source(args.real, args.image_size, args.num_real, args.seed, args.num_frames)
        if any(kind == 'videos' or (kind == 'stats' and np.shape(source[0]) == (400,))
               for kind, source in ((real_kind, real), (fake_kind, fake))):
            return evaluate_videos(args, dist, real_kind, real, fake_kind, fake)
    elif fake_kind == 'videos':
        die("videos are scored against reference videos; pass --real, an .npz of uint8 (N, T, H, W, 3) videos or "
            "their FVD statistics (--save_stats).")
    else:
        size = args.image_size if args.image_size is not None else (fake.size[0] if fake_kind == 'images' else None)
        if size is None:
            die("the dead-leaves reference set needs a resolution; pass --image_size.")
        n = args.num_real if args.num_real is not None else (len(fake) if fake_kind == 'images' else 1000)
        real_kind, real = 'images', DatasetImages(make_dataset(None, size, seed=args.seed, train=False), n, args.seed)

    inception = None
    if 'images' in (real_kind, fake_kind):  # two statistics files need no network
        inception, skipped['fid'] = _load_on_rank0_first(lambda: load_inception(args.inception_weights, dist.device), dist)
        if inception is not None or fake_kind is None:
            del skipped['fid']
    if args.save_stats is not None and inception is None:
        die(f"--save_stats needs the Inception network, and {skipped.get('fid') or 'it was not loaded'}")

    swd_count = 0
    if fake_kind == 'images' and real_kind == 'images':
        if tuple(real.size) != tuple(fake.size):
            skipped['swd'] = (f"SWD compares images of one resolution, and --real is {real.size[0]}x{real.size[1]} "
                              f"while --fake is {fake.size[0]}x{fake.size[1]}; pass --image_size.")
        elif min(real.size) < SWD_MIN_RES:
            skipped['swd'] = f"SWD needs images of at least {SWD_MIN_RES} pixels, these are {real.size[0]}x{real.size[1]}."
        else:
            swd_count = min(len(real), len(fake), SWD_MAX_IMAGES)
    elif fake_kind is not None:
        skipped['swd'] = "SWD needs images, and one of --real/--fake is a statistics file."

    stats, descriptors = {}, {}
    for name, kind, source in (('real', real_kind, real), ('fake', fake_kind, fake)):
        if kind == 'stats':
            stats[name] = source
        elif kind == 'images':
            results[f'num_{name}'] = len(source)
            if 0 < swd_count < len(source):  # SWD's cut is then a random sample (FID ignores the order)
                source = shuffled(source, args.seed)
            features, descriptors[name] = collect(source, dist, args.batch_size, args.num_workers, name,
                                                  inception, swd_count)
            if features is not None:
                stats[name] = feature_statistics(features)

    for name, kind, source in (('real', real_kind, real), ('fake', fake_kind, fake)):
        if kind == 'images':  # unreadable files were replaced by their neighbours: say how many
            results[f'unreadable_{name}'] = source.unreadable
    if args.save_stats is not None and dist.master:
        with no_space_is_an_error(os.path.dirname(os.path.abspath(args.save_stats))):
            np.savez_compressed(args.save_stats, mu=stats['real'][0], sigma=stats['real'][1])
        print(f"saved the Inception statistics of {len(real)} reference images to {args.save_stats}")
    if fake_kind is not None and 'real' in stats and 'fake' in stats and dist.master:
        results['fid'] = frechet_distance(*stats['real'], *stats['fake'])
    if swd_count > 0 and dist.master:
        results['swd_images'] = swd_count
        results |= swd_from_descriptors(descriptors['real'], descriptors['fake'], swd_resolutions(*real.size))
    return results, skipped


def evaluate_videos(args, dist, real_kind, real, fake_kind, fake):
    """FVD (when the I3D weights load) and the weight-free video SWD of --fake videos against --real videos or their
    FVD statistics; --save_stats writes the FVD statistics of --real. -> (results, skipped)."""
    sources = (('real', real_kind, real), ('fake', fake_kind, fake))
    for name, kind, source in sources:
        if kind == 'images':
            die(f"--{name} holds images while the other set holds videos (or FVD statistics); pass videos for both.")
        if kind == 'stats' and np.shape(source[0]) != (400,):
            die(f"the --{name} statistics are {np.shape(source[0])[0]}-d, not the 400 I3D logits of FVD; save video "
                f"statistics with --save_stats from an .npz of videos.")
    results, skipped = {}, {'fvd': None}
    i3d = None
    if 'videos' in (real_kind, fake_kind):  # two statistics files need no network
        i3d, skipped['fvd'] = _load_on_rank0_first(lambda: load_i3d(args.i3d_weights, dist.device), dist)
    short = [f"--{name} has {source.shape[1]}" for name, kind, source in sources
             if kind == 'videos' and source.shape[1] < FVD_NUM_FRAMES]
    if i3d is not None and short:
        i3d, skipped['fvd'] = None, f"FVD is measured on {FVD_NUM_FRAMES}-frame clips and {short[0]} frames."
    if args.save_stats is not None and i3d is None:
        die(f"--save_stats needs the I3D network, and {skipped['fvd']}")

    stats = {}
    for name, kind, source in sources:
        if kind == 'stats':
            stats[name] = source
        elif kind == 'videos':
            results[f'num_{name}'] = len(source)
            if i3d is not None:
                stats[name] = feature_statistics(video_set_features(source, i3d, dist, args.batch_size))
    if args.save_stats is not None and dist.master:
        with no_space_is_an_error(os.path.dirname(os.path.abspath(args.save_stats))):
            np.savez_compressed(args.save_stats, mu=stats['real'][0], sigma=stats['real'][1])
        print(f"saved the FVD statistics of {len(real)} reference videos to {args.save_stats}")
    if fake_kind is not None and 'real' in stats and 'fake' in stats and dist.master:
        results['fvd'] = frechet_distance(*stats['real'], *stats['fake'])

    if fake_kind == 'videos' and real_kind == 'videos':
        T, H, W = fake.shape[1:4]
        if real.shape[1:] != fake.shape[1:]:
            skipped['video_swd'] = (f"video SWD compares videos of one length and size, and --real is "
                                    f"{'x'.join(map(str, real.shape[1:4]))} while --fake is {T}x{H}x{W} (T x H x W).")
        elif min(H, W) < SWD_MIN_RES:
            skipped['video_swd'] = f"video SWD needs frames of at least {SWD_MIN_RES} pixels, these are {H}x{W}."
        elif dist.master:
            n = min(len(real), len(fake), max(2, SWD_MAX_IMAGES // T))  # at most ProGAN's count of frames
            def sample(v):  # n videos (a seeded random subset when there are more), (n, T, 3, H, W) uint8
                return torch.from_numpy(v if n == len(v) else v[random_subset(v, n, args.seed)]).permute(0, 1, 4, 2, 3)
            results['swd_videos'] = n
            results |= video_swd(sample(real), sample(fake), device=dist.device)
    elif fake_kind is not None:
        skipped['video_swd'] = "video SWD needs videos, and one of --real/--fake is a statistics file."
    if skipped['fvd'] is None:
        del skipped['fvd']
    return results, skipped


def evaluate_autoencoder_cli(args, dist):
    """PSNR, SSIM, LPIPS, rFID and SWD of --ae's reconstructions of --data. -> (results, skipped)."""
    from perceptual import LPIPS
    from weights import load_autoencoder
    if args.image_size is None:
        die("--ae needs --image_size, the resolution to reconstruct the dataset at.")
    try:
        dataset = make_dataset(args.data, args.image_size, seed=args.seed, train=False)
    except FileNotFoundError as e:
        die(str(e))
    n = args.num_real if args.num_real is not None else (1000 if args.data is None else len(dataset))
    images = DatasetImages(dataset, min(n, len(dataset)), args.seed)
    try:
        ae = load_autoencoder(args.ae, preset=args.preset, device=dist.device)
    except (FileNotFoundError, ValueError) as e:
        die(str(e))
    if args.image_size % ae.downsample_factor:
        die(f"--image_size {args.image_size} is not divisible by the autoencoder's downsampling factor "
            f"{ae.downsample_factor}; pass a multiple of it.")
    skipped = {}
    inception, skipped['rfid'] = _load_on_rank0_first(lambda: load_inception(args.inception_weights, dist.device), dist)
    lpips, skipped['lpips'] = _load_on_rank0_first(
        lambda: LPIPS(args.vgg_weights, args.lpips_lin_weights).to(dist.device), dist)
    if skipped['lpips'] is not None:
        skipped['lpips'] += '; pass local copies with --vgg_weights and --lpips_lin_weights.'
    skipped = {name: why for name, why in skipped.items() if why is not None}
    results = {'num_images': len(images)}
    results |= evaluate_autoencoder(ae, images, dist, inception, lpips, args.batch_size, args.num_workers)
    results['unreadable_images'] = images.unreadable  # replaced by their neighbours, counted
    return results, skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument('--fake', type=str, default=None, help='generated images: a folder, a samples .npz (uint8 arr_0) or a statistics .npz (mu, sigma); or videos: a samples .npz of uint8 (N, T, H, W, 3) or a folder of videos (--num_frames, --image_size), scored by FVD and the video SWD')
    p.add_argument('--real', type=str, default=None, help='reference images, the same kinds as --fake; omitted: the embedded dead-leaves set (its held-out stream)')
    p.add_argument('--num_real', type=checked(int, lo=1), default=None, help='use a seeded random N of the reference images, or with --ae reconstruct N images (default: all; for the endless dead-leaves set as many as --fake has, else 1000)')
    p.add_argument('--image_size', type=checked(int, lo=1), default=None, help='center-crop and resize folder images to this size as data.py does; also the dead-leaves resolution (default: folders as they are, dead leaves at the --fake resolution)')
    p.add_argument('--num_frames', type=checked(int, lo=2), default=16, help="frames per clip read from a folder of videos (each video's middle clip; default 16, FVD's clip length)")
    p.add_argument('--save_stats', type=str, default=None, help="write the reference set's Inception statistics (I3D for videos) here (mu, sigma: pytorch-fid's format), to pass as --real later")
    p.add_argument('--ae', type=str, default=None, help='evaluate this autoencoder (a train_ae.py checkpoint, or public weights with --preset) on reconstructions of --data')
    p.add_argument('--preset', type=str, default=None, help='AE_PRESETS name for an --ae file that is a public state dict')
    p.add_argument('--data', type=str, default=None, help='with --ae: the image folder to reconstruct at --image_size (default: the embedded dead-leaves set)')
    p.add_argument('--vgg_weights', type=str, default=None, help="with --ae: local torchvision VGG16 weights for LPIPS (default: the torch hub cache)")
    p.add_argument('--lpips_lin_weights', type=str, default=None, help="with --ae: local LPIPS v0.1 linear-head weights, vgg.pth (default: the torch hub cache)")
    p.add_argument('--inception_weights', type=str, default=None, help=f'path of {FID_WEIGHTS_FILE} (default: the torch hub cache, downloaded from the pytorch-fid release)')
    p.add_argument('--i3d_weights', type=str, default=None, help=f'for videos: path of the FVD I3D weights {I3D_WEIGHTS_FILE} (default: the torch hub cache, downloaded from {I3D_WEIGHTS_URL})')
    p.add_argument('--batch_size', type=checked(int, lo=1), default=50, help='images (or videos) per forward pass per process')
    p.add_argument('--num_workers', type=checked(int, lo=0), default=2, help='image-decoding worker processes per process')
    p.add_argument('--seed', type=checked(int, lo=0), default=0, help='seed of the dead-leaves set (SWD neighbourhoods and directions are fixed)')
    p.add_argument('--device', type=select_device, default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--out', type=str, default=None, help='JSON file for every number printed (default: <--fake, --ae or --save_stats path>_metrics.json)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out or --save_stats file')
    args = p.parse_args(argv)

    if args.ae is not None and (args.fake is not None or args.real is not None or args.save_stats is not None):
        die("--ae scores reconstructions of --data, while --fake/--real/--save_stats are for generated images; pass one or the other.")
    if args.ae is None and any(v is not None for v in (args.data, args.preset, args.vgg_weights, args.lpips_lin_weights)):
        die("--data, --preset, --vgg_weights and --lpips_lin_weights go with --ae; to score generated images "
            "against a folder, pass it as --real.")
    if args.ae is None and args.fake is None and args.save_stats is None:
        die("nothing to evaluate; pass --fake (generated images), --ae (an autoencoder) or --save_stats (reference statistics).")
    out = args.out or os.path.splitext((args.fake or args.ae or args.save_stats).rstrip('/'))[0] + '_metrics.json'
    refuse_to_overwrite([out], args.overwrite, flag='--out')
    if args.save_stats is not None:
        refuse_to_overwrite([args.save_stats], args.overwrite, flag='--save_stats')

    dist = setup_distributed(args.device)
    # TF32 convolutions round to a 10-bit mantissa; full float32 keeps the features independent of the GPU generation
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results, skipped = evaluate_autoencoder_cli(args, dist) if args.ae is not None else evaluate_samples(args, dist)
    if dist.master:
        for name, value in results.items():
            print(f"{name:>12s}  {value:.4f}" if isinstance(value, float) else f"{name:>12s}  {value}")
        for name, why in skipped.items():
            print(f"{name:>12s}  skipped: {why}")
        with no_space_is_an_error(os.path.dirname(os.path.abspath(out))), open(out, 'w') as f:
            json.dump({**results, 'skipped': skipped, 'args': vars(args)}, f, indent=2)
        print(f"wrote {out}")
    cleanup_distributed()
    return results, skipped


if __name__ == '__main__':
    main()
