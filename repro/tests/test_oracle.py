"""The Gaussian oracle beside the probe, as a specification: on a flat spectrum it is the closed form abar (flow:
(1-t)^2 / ((1-t)^2 + t^2)); on a known diagonal block-DCT spectrum it is the error of the Wiener filter, measured by
Monte Carlo; normalised per channel it cannot see a per-channel scale or offset of the latents, while the LDM's one
scalar normalisation can; and an LDM trained with train_ldm.py --latent_norm channel, with the probe behind it, cannot
see one either."""
import math

import pytest
import torch

from diffusion import Diffusion, Flow
from model import block_dct, block_idct
from repro.probe import PROBE_T, PROBE_T_FLOW, channel_std, gaussian_oracle, oracles



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
    both = oracles(moved, ddpm, PROBE_T)  # what the probe records
    assert both['channel_mean'] == pytest.approx(sum(gaussian_oracle(z, ddpm, PROBE_T, 'channel')) / len(PROBE_T))
    assert oracles(z[..., :4, :4], ddpm, PROBE_T) is None  # no 8x8 block: no block-DCT spectrum (f16, f32 at 64 px)
    ratio = torch.tensor(channel_std(moved)) / torch.tensor(channel_std(z))
    assert ratio.tolist() == pytest.approx([2.0, 0.5, 1.0, 1.0], rel=1e-10)


@pytest.mark.slow
def test_a_channel_normalised_ldm_and_its_probe_cannot_see_a_per_channel_scale_and_offset_of_the_latents(tmp_path):
    """The same tiny autoencoder twice, the second with its latent channels rescaled and offset (a z + b, undone by the
    decoder: the same images, other latents): train_ldm.py --latent_norm channel learns the same LDM on both, so its
    probe, the per-channel oracle and the per-image errors agree to float precision; with one scalar they do not."""
    from PIL import Image
    from repro.probe import diffusability_probe
    from tests.helpers import TINY_AE, run
    from utils.data import DeadLeaves
    from utils.weights import load_checkpoint
    run('train_ae.py', *TINY_AE, '--image_size', '32', '--max_steps', '2', '--out_dir', tmp_path / 'ae')
    ckpt = load_checkpoint(tmp_path / 'ae' / 'ckpt.pt')
    a, b = torch.tensor([2.0, 0.5, 1.0, 3.0]), torch.tensor([3.0, -1.0, 0.5, 3.0])
    for state in [ckpt['model']] + ([ckpt['ema']] if ckpt.get('ema') is not None else []):
        W, bias = state['quant_conv.weight'], state['quant_conv.bias']  # (2C, 2C, 1, 1): the mean's rows, then logvar's
        W[:4] *= a[:, None, None, None]
        bias[:4] = a * bias[:4] + b  # mean -> a mean + b
        bias[4:] += 2 * a.log()  # logvar -> logvar + 2 log a: the posterior sample is a z + b too
        P, post_bias = state['post_quant_conv.weight'], state['post_quant_conv.bias']  # the decoder's first layer
        post_bias -= P[:, :, 0, 0] @ (b / a)  # P' (a z + b) + c' = P z + c
        P /= a[None, :, None, None]
    torch.save(ckpt, tmp_path / 'scaled.pt')
    held = tmp_path / 'heldout'
    held.mkdir()
    for i in range(6):
        x = DeadLeaves(32, train=False)[i][0]
        Image.fromarray(((x + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(held / f'{i}.png')
    probes = {}
    for norm in ('channel', 'scalar'):
        for name, ae in (('ae', tmp_path / 'ae' / 'ckpt.pt'), ('scaled', tmp_path / 'scaled.pt')):
            out = tmp_path / f'ldm_{name}_{norm}'
            run('train_ldm.py', '--ae', ae, '--latent_norm', norm, '--image_size', '32', '--batch_size', '4',
                '--num_workers', '0', '--device', 'cpu', '--max_steps', '3', '--lr', '1e-3', '--ema_decay', '0', '--num_samples', '2',
                '--sample_steps', '2', '--eval_interval', '3', '--ckpt_interval', '3', '--out_dir', out)
            probes[name, norm] = diffusability_probe(str(out / 'ckpt.pt'), str(held), PROBE_T[::3])
    for key, p in probes.items():
        assert p['latent_norm'] == key[1] and len(p['eps_mse_per_image']) == 6 and len(p['channel_std']) == 4
        assert sum(p['eps_mse_per_image']) / 6 == pytest.approx(p['eps_mse_mean'], rel=1e-9)
    ae_c, ae_s, scaled_c, scaled_s = (probes[k] for k in (('ae', 'channel'), ('ae', 'scalar'), ('scaled', 'channel'),
                                                           ('scaled', 'scalar')))
    change = lambda key: (abs(scaled_c[key] / ae_c[key] - 1), abs(scaled_s[key] / ae_s[key] - 1))  # noqa: E731
    assert scaled_c['eps_mse_per_image'] == pytest.approx(ae_c['eps_mse_per_image'], rel=1e-5)
    assert scaled_c['oracle']['channel'] == pytest.approx(ae_c['oracle']['channel'], rel=1e-6)
    assert change('eps_mse_mean')[0] < 1e-5 < 1e-3 < change('eps_mse_mean')[1]  # 3 steps learn enough to tell
    assert change('pixel_mse_mean')[0] < 1e-5 < 1e-2 < change('pixel_mse_mean')[1]
    assert abs(scaled_s['oracle']['scalar_mean'] / ae_s['oracle']['scalar_mean'] - 1) > 0.01
    assert torch.tensor(scaled_c['channel_std']) / torch.tensor(ae_c['channel_std']) == pytest.approx(a, rel=1e-3)
