"""
The light measurements every script shares, one definition each: PSNR and SSIM of images in [-1, 1], the 8-bit
rounding of an image file (to_uint8), the two trivial references of an autoencoder (RGB on its latent grid, and bicubic
down-and-up at that grid, the reconstruction it must beat), and the statistics and Frechet distance of a feature set
(FID, FVD). Only torch and numpy at import: training an autoencoder imports this file, while the networks that make
features (inception.py, i3d.py) stay apart and scipy is imported by the one function that needs it.
"""
import numpy as np
import torch
import torch.nn.functional as F

from model import causal_time_pool, from_frames, to_frames

PSNR_MAX = 100.0  # dB; a lossless match (MSE 0) is reported as this, not inf, so that means and JSON stay finite


def psnr(x, y):
    """Per-image PSNR in dB, (B,), of x, y (B, C, H, W) in [-1, 1], measured on [0, 1] with peak 1 (the same number as
    on [0, 255] with peak 255): 10 log10(1 / MSE). Identical images give PSNR_MAX."""
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
    and blown up again (bicubic), clamped to [-1, 1]. It stores 3 numbers per latent position. Clips are measured
    frame by frame (pass their frames, as (B*T, 3, H, W))."""
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
    import scipy.linalg  # here, not at the top: training imports this file and must not load scipy
    w, v = scipy.linalg.eigh(sigma1)
    sqrt_sigma1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    tr_covmean = np.sqrt(np.clip(scipy.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()  # Tr (S1 S2)^(1/2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
