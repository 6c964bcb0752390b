"""The Gaussian oracle beside the probe, as a specification: on a flat spectrum it is the closed form abar (flow:
(1-t)^2 / ((1-t)^2 + t^2)); on a known diagonal block-DCT spectrum it is the error of the Wiener filter, measured by
Monte Carlo; normalised per channel it cannot see a per-channel scale or offset of the latents, while the LDM's one
scalar normalisation can."""
import math

import pytest
import torch

from diffusion import Diffusion, Flow
from model import block_dct, block_idct
from repro.probe import PROBE_T, PROBE_T_FLOW, channel_std, gaussian_oracle



def test_on_a_flat_spectrum_the_oracle_is_abar_and_the_flow_closed_form():
    """Coefficients of +-1 with balanced signs: every (channel, coefficient) has variance exactly 1 and the mean is 0,
    so the MMSE of eps is a / (a + 1 - a) = abar at every DDPM level, and (1-t)^2 / ((1-t)^2 + t^2) under flow."""
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (8, 3, 2, 2, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    z = block_idct(torch.cat([signs, -signs]))  # (16, 3, 16, 16): each coefficient's mean 0, variance 1
    ddpm = Diffusion('linear')
    for norm in ('scalar', 'channel'):
        expected = ddpm.abar[PROBE_T].tolist()
        assert gaussian_oracle(z, ddpm, PROBE_T, norm) == pytest.approx(expected, rel=1e-10, abs=1e-12)
        times = torch.tensor(PROBE_T_FLOW, dtype=torch.float32).tolist()  # the probe's times are float32
        expected = [(1 - t) ** 2 / ((1 - t) ** 2 + t ** 2) for t in times]
        assert gaussian_oracle(z, Flow(), PROBE_T_FLOW, norm) == pytest.approx(expected, rel=1e-10)
    # white noise of unit variance: abar up to the sampling error of its 64 x 3 measured variances
    white = torch.randn(256, 3, 16, 16, generator=g, dtype=torch.float64)
    assert gaussian_oracle(white, ddpm, PROBE_T, 'channel') == pytest.approx(ddpm.abar[PROBE_T].tolist(), abs=3e-3)


def test_the_oracle_is_the_monte_carlo_error_of_the_wiener_filter_on_a_known_spectrum():
    """Gaussian latents drawn coefficient by coefficient with a known 1/f-like variance per (channel, coefficient),
    noised in pixels; the Wiener filter eps_hat = sigma / (alpha^2 s2 + sigma^2) X_t in each coefficient, measured in
    pixels, has the oracle's error within Monte-Carlo error."""
    g = torch.Generator().manual_seed(1)
    u, v = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing='ij')
    s2 = torch.stack([1 / (1 + u + v) ** p for p in (1.0, 2.0, 3.0)]).double()  # (3, 8, 8): smooth to rough channels
    s2 = s2 / s2.mean((1, 2), keepdim=True)  # unit variance per channel: both normalisations leave it as it is
    X = torch.randn(512, 3, 2, 2, 8, 8, generator=g, dtype=torch.float64) * s2[:, None, None].sqrt()
    z = block_idct(X)  # (512, 3, 16, 16)
    ddpm = Diffusion('linear')
    for level, oracle in zip(PROBE_T, gaussian_oracle(z, ddpm, PROBE_T, 'channel')):
        a = ddpm.abar[level].item()
        alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
        eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
        X_t = block_dct(alpha * z + sigma * eps)
        eps_hat = block_idct(sigma / (alpha ** 2 * s2[:, None, None] + sigma ** 2) * X_t)  # E[eps | x_t], per coefficient
        errors = (eps_hat - eps).pow(2).flatten(1).mean(1)  # (512,): one number per latent
        mc = errors.std().item() / math.sqrt(len(errors))
        assert abs(errors.mean().item() - oracle) < 4 * mc + 0.005 * oracle, (level, errors.mean().item(), oracle)


def test_a_per_channel_scale_and_offset_moves_the_scalar_oracle_but_not_the_per_channel_one():
    """What the LDM's one scalar normalisation keeps (how the variance is shared among channels) moves the scalar
    oracle; normalised per channel, the latents z[:, 0] * 2, z[:, 1] * 0.5, z + 3 give the same oracle to float
    precision. channel_std reports the scales themselves."""
    g = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(64, 2, 22, 22, generator=g, dtype=torch.float64), 7, 1)
    z = torch.cat([smooth * 3, torch.randn(64, 2, 16, 16, generator=g, dtype=torch.float64)], 1)  # 2 smooth, 2 rough
    moved = z.clone()
    moved[:, 0] *= 2
    moved[:, 1] *= 0.5
    moved += 3
    ddpm = Diffusion('linear')
    for process, levels in ((ddpm, PROBE_T), (Flow(), PROBE_T_FLOW)):
        before, after = (gaussian_oracle(x, process, levels, 'channel') for x in (z, moved))
        assert after == pytest.approx(before, rel=1e-10)
        before, after = (sum(gaussian_oracle(x, process, levels, 'scalar')) for x in (z, moved))
        assert abs(after / before - 1) > 0.01
    assert gaussian_oracle(z + 3, ddpm, PROBE_T, 'scalar') == pytest.approx(gaussian_oracle(z, ddpm, PROBE_T, 'scalar'))
    assert gaussian_oracle(2.5 * z, ddpm, PROBE_T, 'scalar') == pytest.approx(gaussian_oracle(z, ddpm, PROBE_T, 'scalar'))
    ratio = torch.tensor(channel_std(moved)) / torch.tensor(channel_std(z))
    assert ratio.tolist() == pytest.approx([2.0, 0.5, 1.0, 1.0], rel=1e-10)
