"""
The light measurements every script shares, one definition each: PSNR and SSIM of images in [-1, 1], the 8-bit
rounding of an image file (to_uint8), the two trivial references of an autoencoder (RGB on its latent grid, and bicubic
down-and-up at that grid, the reconstruction it must beat), and the measurements of feature sets: their statistics and
Frechet distance (FID, FVD), ADM's IS, precision/recall and sFID features, and KID. Only torch and numpy at import: training an autoencoder imports this file, while the networks that make
features (inception.py, i3d.py) stay apart and scipy is imported by the one function that needs it.
"""
import numpy as np
import torch
import torch.nn.functional as F

from model import causal_time_pool, from_frames, to_frames

PSNR_MAX = 100.0  # dB; a lossless match (MSE 0) is reported as this, not inf, so that means and JSON stay finite


def psnr(x, y):
    """Per-image PSNR in dB, (B,), of x, y (B, C, H, W) in [-1, 1], measured on [0, 1] with peak 1 (the same number as
    on [0, 255] with peak 255): 10 log10(1 / MSE). Identical images give PSNR_MAX. Clips (B, C, T, H, W): each clip's
    mean over its frames of the frame PSNR, so that a clip's number is the frames' number whoever measures it."""
    if x.dim() == 5:
        return psnr(to_frames(x), to_frames(y)).view(x.shape[0], x.shape[2]).mean(1)
    mse = ((x.double() - y.double()) / 2).pow(2).flatten(1).mean(1)  # / 2 maps a [-1, 1] difference to [0, 1]
    return (10 * torch.log10(1 / mse)).clamp(max=PSNR_MAX)


def _gaussian_window(size=11, sigma=1.5):
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (11, 11), sums to 1


def ssim(x, y):
    """
    Per-image SSIM (Wang et al. 2004), (B,), of x, y (B, C, H, W) in [-1, 1], computed on [0, 1] (L = 1):
    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, local statistics under an 11 x 11 Gaussian window with sigma 1.5, over 'valid'
    windows only (no padding, as Wang et al. and scikit-image), averaged over windows and then over channels.
    """
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM's 11 x 11 window needs images of at least 11 pixels, got {tuple(x.shape[-2:])}.")
    C1, C2 = 0.01 ** 2, 0.03 ** 2
    x, y = (x.double() + 1) / 2, (y.double() + 1) / 2  # float64: the variances below are differences of moments
    C = x.shape[1]
    window = _gaussian_window().to(x.device).expand(C, 1, 11, 11)
    filt = lambda t: F.conv2d(t, window, groups=C)  # noqa: E731  local mean under the window
    mu_x, mu_y = filt(x), filt(y)
    var_x, var_y = filt(x * x) - mu_x ** 2, filt(y * y) - mu_y ** 2
    cov_xy = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + C1) * (2 * cov_xy + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2))
    return ssim_map.mean(dim=(1, 2, 3))


def region_r2(x, labels):
    """How much of an image's colour variance the regions of a label map explain: the R^2 of the best piecewise-constant
    fit of x (3, H, W) on the connected regions of labels (H, W) int (each label's 4-connected components), 1 - SS_within
    / SS_total, in [0, 1]. Invariant to the colour of each region: it asks whether an image is drawn in the map's
    regions, not in which colours. A uniform image gives 1 (nothing to explain)."""
    from scipy import ndimage
    labels = np.asarray(labels)
    regions, offset = np.zeros(labels.shape, np.int64), 0
    for value in np.unique(labels):
        parts, n = ndimage.label(labels == value)
        regions[parts > 0] = parts[parts > 0] + offset
        offset += n
    v = x.double().reshape(x.shape[0], -1)  # (C, H*W)
    ids = torch.from_numpy(regions.reshape(-1))
    count = torch.bincount(ids, minlength=offset + 1).double()
    means = torch.stack([torch.bincount(ids, weights=c, minlength=offset + 1) for c in v]) / count.clamp_min(1)
    within, total = (v - means[:, ids]).pow(2).sum(), (v - v.mean(1, keepdim=True)).pow(2).sum()
    return 1.0 if total == 0 else float(1 - within / total)


# the recognisability measure's thresholds, on colours in [0, 1]: chosen on held-out images of both embedded sets
# (64 px) so that the shapes' leaves count (6.4 regions covering 47% of an image) and textured leaves, white noise and
# smooth colour clouds mostly do not (2.6 / 6%, 0 / 0%, 0.8 / 1%). They hold at that size: a leaf's shading changes
# by twice as much per pixel at half the size, so every image is measured resampled to REGION_SIZE px.
REGION_EDGE_TOL, REGION_UNIFORM_TOL, REGION_MIN_AREA, REGION_SIZE = 0.03, 0.06, 0.01, 64


def uniform_regions(x, edge_tol=REGION_EDGE_TOL, uniform_tol=REGION_UNIFORM_TOL, min_area=REGION_MIN_AREA):
    """The near-uniform connected regions of an image x (3, H, W) in [-1, 1]: the flat areas a viewer sees as objects.
    It does not check their outlines: irregular flat regions count as discs and rectangles do (docs/results.md).
    The image is first resampled (bilinear, antialiased when shrinking) so that its shorter side is REGION_SIZE, the
    size the thresholds were chosen at, and a shape is then measured alike at every image size. After a 3x3 binomial
    blur (which the light texture and sensor noise of a real image do not survive), a pixel is an edge where any
    channel differs from a 4-neighbour's by more than edge_tol (colours in [0, 1]). The 4-connected components of the
    other pixels that cover at least min_area of the image and whose colour std (the mean over channels) is at most
    uniform_tol are the regions: a mottled sample has no large component, and a smooth colour cloud has one whose
    colours vary too much. -> their areas as shares of the image, largest first."""
    from scipy import ndimage
    x = x.double()[None]
    scale = REGION_SIZE / min(x.shape[-2:])
    if scale != 1:
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=scale < 1)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = (k[:, None] * k[None]).div(16).expand(x.shape[1], 1, 3, 3)
    v = F.conv2d(F.pad((x + 1) / 2, (1, 1, 1, 1), mode='replicate'), k, groups=x.shape[1])[0].numpy()
    cut_x, cut_y = np.abs(np.diff(v, axis=2)).max(0) > edge_tol, np.abs(np.diff(v, axis=1)).max(0) > edge_tol
    edge = np.zeros(v.shape[1:], bool)
    edge[:, 1:] |= cut_x
    edge[:, :-1] |= cut_x
    edge[1:] |= cut_y
    edge[:-1] |= cut_y
    parts, n = ndimage.label(~edge)
    areas = []
    for i in range(1, n + 1):
        inside = parts == i
        if inside.mean() >= min_area and v[:, inside].std(1).mean() <= uniform_tol:
            areas.append(float(inside.mean()))
    return sorted(areas, reverse=True)


def region_stats(images):
    """uniform_regions over a set of images (N, 3, H, W) in [-1, 1], computed alike on samples, held-out images and
    reconstructions: {'regions': the mean count per image, 'covered': the mean share of an image they cover,
    'median_area': the median region's share of its image (0 when none)}. Invariant to the order of the images."""
    per_image = [uniform_regions(x) for x in images]
    areas = [a for r in per_image for a in r]
    return {'regions': float(np.mean([len(r) for r in per_image])), 'covered': float(np.mean([sum(r) for r in per_image])),
            'median_area': float(np.median(areas)) if areas else 0.0}


def to_uint8(x):
    """x in [-1, 1] (images or clips, any layout) -> uint8 in [0, 255], rounded as an 8-bit image file would hold it."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

# ----------------------------------------------------------------------------------------------
# The trivial references of an autoencoder with an f-times smaller latent grid


def rgb_on_latent_grid(x, latent_shape, temporal_levels=0):
    """RGB on the grid of a latent of shape (..., [t,] h, w): images x (B, 3, H, W) average-pooled to (h, w); clips
    x (B, 3, T, H, W) halved in time `temporal_levels` times as the video encoder halves them (causal_time_pool: pairs
    averaged, the first frame apart), then every frame average-pooled. The RGB reference of every latent spectrum."""
    if x.dim() == 5:
        for _ in range(temporal_levels):
            x = causal_time_pool(x)
        return from_frames(F.adaptive_avg_pool2d(to_frames(x), tuple(latent_shape[-2:])), x.shape[0])
    return F.adaptive_avg_pool2d(x, tuple(latent_shape[-2:]))


def bicubic_at_latent_grid(x, f):
    """The trivial autoencoder an f-times-downsampling one must beat: x (B, 3, H, W) shrunk by f (antialiased bicubic)
    and blown up again (bicubic), clamped to [-1, 1]. It stores 3 numbers per latent position. Clips (B, 3, T, H, W)
    are shrunk frame by frame and keep every frame: generous, since a video latent keeps 1 frame in 4. train_ae.py and
    spectrum.py both measure psnr(bicubic_at_latent_grid(x, f), x), on images and clips alike."""
    if x.dim() == 5:
        return from_frames(bicubic_at_latent_grid(to_frames(x), f), x.shape[0])
    small = F.interpolate(x, scale_factor=1 / f, mode='bicubic', antialias=True, align_corners=False)
    return F.interpolate(small, size=x.shape[-2:], mode='bicubic', align_corners=False).clamp(-1, 1)

# ----------------------------------------------------------------------------------------------
# Frechet distance (FID and FVD)

def feature_statistics(features):
    """features (N, D) -> (mu (D,), sigma (D, D)) in float64, as pytorch-fid: sample mean and unbiased covariance."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError(f"a covariance needs at least 2 images, got {len(features)}; evaluate more images.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """
    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.
    The trace of the matrix square root comes from symmetric eigen-decompositions, not scipy.linalg.sqrtm as in
    pytorch-fid: with S1 = V diag(w) V^T, S1 S2 is similar to the symmetric PSD matrix
    M = diag(w)^(1/2) V^T S2 V diag(w)^(1/2), so Tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i(M)); directions with w <= 0
    (rounding in the null space of a rank-deficient covariance) contribute nothing and are dropped, which makes M as
    small as the rank of S1. This needs no eps offset for near-singular covariances and gives no imaginary parts
    (eigenvalues that round below zero are clipped to zero); it is the same number as pytorch-fid's, about 5x faster at
    D = 2048.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"the two statistics have different dimensions ({mu1.shape[0]} and {mu2.shape[0]}); "
                         f"both must come from the same Inception layer.")
    import scipy.linalg  # here, not at the top: training imports this file and must not load scipy
    w, v = scipy.linalg.eigh(sigma1)
    w, v = w[w > 0], v[:, w > 0]
    m = np.sqrt(w)[:, None] * (v.T @ sigma2 @ v) * np.sqrt(w)[None]  # diag(w)^(1/2) V^T S2 V diag(w)^(1/2)
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()  # Tr (S1 S2)^(1/2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)

# ----------------------------------------------------------------------------------------------
# ADM's sample metrics on Inception features (openai/guided-diffusion, evaluations/evaluator.py), and KID. The features
# come from the FID Inception (TF's 2015-12-05 graph): pool_3 (N, 2048), the 1008-way logits, and the spatial features
# below. Equations in the terms of the papers; "as ADM" marks where the evaluator's code decides a detail.

def sfid_features(mixed_6d):
    """
    sFID's features (Nash et al. 2021, as ADM's evaluator takes them) from the output of Mixed_6d, (N, 768, 17, 17) ->
    (N, 2023). ADM reads the tensor "mixed_6/conv:0" of TF's 2015 graph and keeps its first 7 channels. In that graph
    mixed, mixed_1, mixed_2 are torchvision's Mixed_5b-5d (pytorch-fid's FIDInceptionA), mixed_3 is Mixed_6a,
    mixed_4 ... mixed_7 are Mixed_6b ... Mixed_6e (FIDInceptionC), mixed_8 is Mixed_7a and mixed_9, mixed_10 are
    Mixed_7b, 7c (FIDInceptionE); inside a block, "conv" is the 1x1 branch and tower, tower_1, tower_2 the others.
    So "mixed_6/conv" is Mixed_6d.branch1x1 (1x1 conv, batch norm, ReLU: (N, 192, 17, 17)), and since the block
    concatenates branch1x1 first, its first 7 channels are Mixed_6d's output channels 0-6. TF's tensors are NHWC and
    ADM flattens them as they are, so the 7 x 17 x 17 = 2023 features are ordered channels-last: feature
    (h * 17 + w) * 7 + c. The Frechet distance does not depend on that order as long as both sets share it, but
    ADM's reference batches store mu_s and sigma_s in it.
    """
    return mixed_6d[:, :7].permute(0, 2, 3, 1).flatten(1)  # (N, 17, 17, 7) -> (N, 2023)


def inception_score(logits, split_size=5000):
    """
    Inception Score (Salimans et al. 2016) of the 1008-way logits (N, 1008), as ADM's evaluator computes it:
    IS = exp(E_x KL(p(y|x) || p(y))), with p(y|x) = softmax(logits) and p(y) the mean of p(y|x) over a split. ADM takes
    the logits as pool_3 @ W, W the weights of the graph's softmax/logits/MatMul *without its bias* (pytorch-fid's
    fc.weight; torch-fidelity's 'logits_unbiased'). The samples are cut, in their order, into splits of split_size
    (a shorter remainder is a split of its own): 10 splits for 50K samples, 1 below 5000. Returns the mean over
    splits (ADM reports no spread).
    """
    p = torch.as_tensor(logits).double().softmax(dim=1)  # p(y|x), (N, 1008); ADM: float32
    scores = []
    for part in p.split(split_size):
        p_y = part.mean(dim=0)  # p(y) over the split
        # E_x KL(p(y|x) || p(y)) = E_x sum_y p(y|x) (log p(y|x) - log p(y)), with 0 log 0 = 0 (ADM's log would give nan)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return sum(scores) / len(scores)


def kernel_inception_distance(fake, real, num_subsets=100, subset_size=1000, seed=2020):
    """
    KID (Binkowski et al. 2018) of two feature sets (N, D), (M, D): the unbiased estimate of MMD^2 with the polynomial
    kernel k(x, y) = (x.y / D + 1)^3 on random subsets of m = min(subset_size, N, M) samples from each set,
      MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,
    -> (mean, std) over num_subsets subsets. Subsets are drawn as torch-fidelity draws them (numpy's RandomState(seed),
    a fake subset then a real one, without replacement), so with its defaults (100 subsets of 1000, seed 2020) the
    numbers are torch-fidelity's. Fewer samples than subset_size: subsets of all of the smaller set (Binkowski's code;
    torch-fidelity refuses). Computed in float64.
    """
    fake, real = torch.as_tensor(fake).double(), torch.as_tensor(real).double()
    m, D = min(subset_size, len(fake), len(real)), fake.shape[1]
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(fake)} and {len(real)}.")
    rng = np.random.RandomState(seed)
    kernel = lambda a, b: (a @ b.T / D + 1) ** 3  # noqa: E731  k(x, y) = (x.y / D + 1)^3
    mmd2 = []
    for _ in range(num_subsets):
        x = fake[torch.from_numpy(rng.choice(len(fake), m, replace=False))]
        y = real[torch.from_numpy(rng.choice(len(real), m, replace=False))]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        off_diagonal = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
        mmd2.append((off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / m ** 2).item())
    return float(np.mean(mmd2)), float(np.std(mmd2))


def pairwise_sq_distances(u, v, float16=True):
    """
    ADM's DistanceBlock: D_ij = max(|u_i|^2 - 2 u_i.v_j + |v_j|^2, 0), squared Euclidean distances of u (N, D) and
    v (M, D) -> (N, M). ADM evaluates it in float16 and falls back to float32 only when a float16 entry overflows;
    float16=True rounds to float16 where ADM's graph does (the inputs, |u|^2, u.v and each sum; products and sums
    accumulate in float32, as GPU kernels do). float16=False computes it in the inputs' precision.
    """
    if float16:
        h = lambda t: t.half().float()  # noqa: E731  one rounding to float16
        u16, v16 = h(u), h(v)
        norm_u, norm_v = h(h(u16 * u16).sum(1)), h(h(v16 * v16).sum(1))
        d = h(h(norm_u[:, None] - h(2 * h(u16 @ v16.T))) + norm_v[None]).clamp_min(0)
        if torch.isfinite(d).all():
            return d
        u, v = u.float(), v.float()
    return ((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None]).clamp_min(0)


def manifold_radii(features, k=3, batch_size=10000, float16=True):
    """
    The radius of each feature's ball in the k-NN manifold estimate (Kynkaanniemi et al. 2019): r_i = the squared
    distance from phi_i to its k-th nearest neighbour in the set, (N,) (the (k+1)-th smallest distance in its row, the
    first being phi_i itself). As ADM's ManifoldEstimator (k = 3): rows of batch_size features against all features,
    columns in blocks of batch_size, no clamping of large radii.
    """
    return torch.cat([torch.cat([pairwise_sq_distances(rows, cols, float16) for cols in features.split(batch_size)], 1)
                      .kthvalue(k + 1, dim=1).values for rows in features.split(batch_size)])


def precision_recall(real, fake, k=3, batch_size=10000, float16=True):
    """
    Improved precision and recall (Kynkaanniemi et al. 2019) of pool_3 features, as ADM's evaluator computes them. Each
    set's manifold is the union of the balls B(phi_i, r_i) around its features (manifold_radii);
      precision = (1/M) sum_j 1[exists i: |fake_j - real_i|^2 <= r_i^real]  (fake features on the real manifold),
      recall    = (1/N) sum_i 1[exists j: |real_i - fake_j|^2 <= r_j^fake]  (real features on the fake manifold).
    Distances in blocks of batch_size x batch_size (ADM's row and column batch sizes, 10000), in float16 as ADM
    (pairwise_sq_distances). real (N, D), fake (M, D) -> (precision, recall).
    """
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision and recall with k = {k} neighbours need more than {k} samples in each set, got "
                         f"{len(real)} real and {len(fake)} generated; evaluate more samples.")
    r_real, r_fake = manifold_radii(real, k, batch_size, float16), manifold_radii(fake, k, batch_size, float16)
    real_in = torch.zeros(len(real), dtype=torch.bool, device=real.device)  # real_i on the fake manifold
    fake_in = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)  # fake_j on the real manifold
    for a in range(0, len(real), batch_size):
        for b in range(0, len(fake), batch_size):
            d = pairwise_sq_distances(real[a:a + batch_size], fake[b:b + batch_size], float16)  # (rows, cols)
            real_in[a:a + batch_size] |= (d <= r_fake[None, b:b + batch_size]).any(dim=1)
            fake_in[b:b + batch_size] |= (d <= r_real[a:a + batch_size, None]).any(dim=0)
    return fake_in.double().mean().item(), real_in.double().mean().item()


GUARD_STD_RATIO = (0.5, 2.0)  # a sample latent channel's std over the data's, outside which samples are off
GUARD_SATURATED = 0.1         # the largest share of decoded pixels at or beyond [-1, 1] that samples may have


def sample_guard(z, z_data, x):
    """Has an LDM learned to sample? The per-channel std of sample latents z (B, C, ...) over that of data latents
    z_data (N, C, ...), and the share of their decoded pixels x at or beyond [-1, 1]. ok: every ratio within
    GUARD_STD_RATIO and at most GUARD_SATURATED saturated. A trivial reference: pure noise decoded fails it at once."""
    per_channel = lambda v: v.float().transpose(0, 1).flatten(1).std(1)  # noqa: E731  over all but the channel
    ratio = (per_channel(z) / per_channel(z_data).clamp_min(1e-12)).tolist()
    saturated = ((x <= -1) | (x >= 1)).float().mean().item()
    lo, hi = GUARD_STD_RATIO
    return {'std_ratio': ratio, 'saturated': saturated,
            'ok': bool(all(lo <= r <= hi for r in ratio) and saturated <= GUARD_SATURATED)}
