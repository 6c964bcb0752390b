"""
The light image metrics every script shares: PSNR and SSIM of images in [-1, 1]. Only torch: training an autoencoder
imports this file, while the Inception network, FID (scipy) and SWD stay in eval_fid.py, which imports these.
"""
import torch
import torch.nn.functional as F


def psnr(x, y):
    """Per-image PSNR in dB, (B,), of x, y (B, C, H, W) in [-1, 1], measured on [0, 1] with peak 1 (the same number as
    on [0, 255] with peak 255): 10 log10(1 / MSE). Identical images give inf."""
    mse = ((x.double() - y.double()) / 2).pow(2).flatten(1).mean(1)  # / 2 maps a [-1, 1] difference to [0, 1]
    return 10 * torch.log10(1 / mse)


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
