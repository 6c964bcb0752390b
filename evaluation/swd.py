"""
The multi-scale sliced Wasserstein distance (SWD) of Progressive GANs (Karras et al. 2018), for images and, as a
weight-free video metric, for clips (their frames, and their frame differences for motion). It needs no pretrained
weights, so it also works offline.
"""
import numpy as np
import torch
import torch.nn.functional as F

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
