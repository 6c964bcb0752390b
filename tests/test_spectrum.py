"""The spectral tools of spectral.py and spectrum.py: the block DCT, the zigzag order, the offset-free spectrum and hf_share,
erasure and PSNR, and the CLI end to end on two tiny random-init autoencoders."""
import json
import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from evaluation import metrics
import spectrum
from evaluation.metrics import psnr
from model import block_dct, block_idct, dct_matrix, zigzag
from model import cut_dct_high_frequencies
from utils.spectral import BlockSpectrum, dct_spectrum, hf_share

# libjpeg's jpeg_natural_order: the k-th coefficient in zigzag order is at row-major position JPEG_ZIGZAG[k]
JPEG_ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10,
    17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36,
    29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46,
    53, 60, 61, 54, 47, 55, 62, 63,
]


def smooth_images(B, C, size, seed=0, cells=8):
    """Low-pass images in [-0.8, 0.8]: random values on a coarse grid, bicubically upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B, C, cells, cells, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return F.interpolate(coarse, size=(size, size), mode='bicubic', align_corners=True).clamp(-0.8, 0.8)

# -----------------------------------------------------------------------------
# block DCT and zigzag

@pytest.mark.parametrize('n', [8, 5])
def test_dct_matrix_is_orthonormal(n):
    D = dct_matrix(n)
    torch.testing.assert_close(D @ D.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_block_dct_equals_scipy_dct_ii_ortho_per_block():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    X = block_dct(x)  # (2, 3, 2, 3, 8, 8)
    assert X.shape == (2, 3, 2, 3, 8, 8)
    ref = scipy.fft.dctn(x[1, 2, 8:16, 16:24].numpy(), type=2, norm='ortho')  # block row 1, column 2
    np.testing.assert_allclose(X[1, 2, 1, 2].numpy(), ref, atol=1e-12)


def test_block_dct_inverse_and_parseval():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    X = block_dct(x)
    torch.testing.assert_close(block_idct(X), x, atol=1e-12, rtol=0)  # x = D^T (D x D^T) D
    torch.testing.assert_close(X.pow(2).sum(), x.pow(2).sum(), atol=1e-9, rtol=0)  # orthonormal: energy kept


def test_block_dct_crops_partial_blocks_at_bottom_right():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 19, 21, dtype=torch.float64)
    X = block_dct(x)
    assert X.shape == (1, 1, 2, 2, 8, 8)
    torch.testing.assert_close(block_idct(X), x[..., :16, :16], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match='at least 8x8'):
        block_dct(torch.zeros(1, 1, 4, 16))


def test_zigzag_is_the_jpeg_order():
    assert zigzag().tolist() == JPEG_ZIGZAG

# -----------------------------------------------------------------------------
# spectrum and hf_share

def test_white_noise_closed_form():
    # an orthonormal transform of i.i.d. N(0, s^2) is i.i.d. N(0, s^2): every E_k = s^2, so S = 1 flat and the AC share
    # of the 32 coefficients 32..63 among the 63 AC ones is 32/63. Centring DC by the sample mean of N blocks leaves
    # E_0 = s^2 (1 - 1/N) in expectation; with N = 16384 that is within the sampling error.
    torch.manual_seed(0)
    x = 3 * torch.randn(64, 3, 128, 128, dtype=torch.float64) + 5  # 16384 blocks per channel, any offset and scale
    s = dct_spectrum(x)
    assert s.shape == (3, 64) and s[:, 0].eq(1).all()
    assert (s[:, 1:] - 1).abs().max() < 0.05  # RMS over 16384 samples: relative error ~ 1/sqrt(2 * 16384) = 0.6%
    assert hf_share(x) == pytest.approx(32 / 63, abs=0.005)


def test_spectrum_and_hf_share_are_invariant_to_per_channel_affine_maps():
    torch.manual_seed(0)
    x = smooth_images(6, 4, 32).double() + 0.1 * torch.randn(6, 4, 32, 32, dtype=torch.float64)
    a = torch.tensor([1.0, -3.0, 0.01, 250.0], dtype=torch.float64).view(1, 4, 1, 1)
    b = torch.tensor([0.0, 7.0, -0.5, 1e3], dtype=torch.float64).view(1, 4, 1, 1)
    y = a * x + b  # z_c -> a_c z_c + b_c
    torch.testing.assert_close(dct_spectrum(y), dct_spectrum(x), rtol=1e-7, atol=1e-9)
    assert hf_share(y) == pytest.approx(hf_share(x), rel=1e-9)
    # ...while the channels themselves differ, so the test is not vacuous
    assert not torch.allclose(dct_spectrum(x)[0], dct_spectrum(x)[1])


def test_smooth_images_decay_steeply_and_hf_share_orders_smooth_mixed_noise():
    torch.manual_seed(0)
    smooth = smooth_images(32, 3, 64)
    profile = dct_spectrum(smooth).mean(0)
    # band means fall with frequency: first AC diagonals > middle > upper half
    low, mid, high = profile[1:6].mean(), profile[6:32].mean(), profile[32:].mean()
    assert low > 3 * mid and mid > 3 * high
    noise = torch.randn_like(smooth)
    r_smooth, r_mixed, r_noise = hf_share(smooth), hf_share(smooth + 0.1 * noise), hf_share(noise)
    assert r_smooth < r_mixed < r_noise
    assert r_smooth < 0.01 * r_noise


def test_linear_ramp_has_only_odd_horizontal_frequencies():
    # x[i, j] = j within a block: even about its centre after removing the mean -> only v odd in row u = 0 survive
    x = torch.arange(16, dtype=torch.float64).repeat(16, 1)[None, None] + 1  # (1, 1, 16, 16), rises left to right
    X = block_dct(x)[0, 0].abs().mean(dim=(0, 1))  # (8, 8)
    nonzero = (X > 1e-9).nonzero().tolist()
    assert nonzero == [[0, 0], [0, 1], [0, 3], [0, 5], [0, 7]]


def test_video_latents_fold_time_into_batch():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 16, 16)  # (B, C, T, H, W)
    frames = z.permute(0, 2, 1, 3, 4).reshape(6, 4, 16, 16)
    torch.testing.assert_close(dct_spectrum(z), dct_spectrum(frames))


def test_batched_accumulation_equals_the_one_shot_spectrum():
    # the CLI feeds BlockSpectrum batch by batch; its sums make the centred DC and the shares exact for any split
    torch.manual_seed(0)
    x = torch.randn(10, 4, 16, 16, dtype=torch.float64) * 2 + 0.3
    acc = BlockSpectrum()
    for chunk in x.split(4):  # batches of 4, 4, 2
        acc.update(chunk)
    torch.testing.assert_close(acc.profile(), dct_spectrum(x), atol=1e-12, rtol=0)
    assert acc.hf_share() == pytest.approx(hf_share(x), rel=1e-12)


def test_energy_matches_a_direct_computation_with_scipy():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 16, 8, dtype=torch.float64) + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    blocks = x.numpy().reshape(3, 2, 2, 8, 1, 8).transpose(1, 0, 2, 4, 3, 5).reshape(2, 6, 8, 8)  # (C, N, 8, 8)
    X = scipy.fft.dctn(blocks, type=2, norm='ortho', axes=(-2, -1)).reshape(2, 6, 64)[..., JPEG_ZIGZAG]
    X[..., 0] -= X[..., 0].mean(1, keepdims=True)  # centre DC by the channel's mean over all blocks
    E = (X ** 2).mean(1)  # (C, 64)
    np.testing.assert_allclose(BlockSpectrum().update(x).energy().numpy(), E, rtol=1e-10)
    np.testing.assert_allclose(hf_share(x), (E[:, 32:].sum(1) / E[:, 1:].sum(1)).mean(), rtol=1e-10)

# -----------------------------------------------------------------------------
# erasure and PSNR

@pytest.mark.parametrize('p', [0.1, 0.5, 0.9])
def test_erasure_keeps_exactly_the_first_zigzag_coefficients(p):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    n_keep = int((1 - p) * 64)  # the authors' rounding (cut_dct2d_high_freqs)
    X = block_dct(x).flatten(-2)[..., zigzag()]
    Y = block_dct(cut_dct_high_frequencies(x, 8, p)).flatten(-2)[..., zigzag()]
    torch.testing.assert_close(Y[..., :n_keep], X[..., :n_keep], atol=1e-12, rtol=0)
    assert Y[..., n_keep:].abs().max() < 1e-12
    # Parseval: the squared error is exactly the energy of the erased coefficients
    mse = (cut_dct_high_frequencies(x, 8, p) - x).pow(2).sum()
    torch.testing.assert_close(mse, X[..., n_keep:].pow(2).sum(), atol=1e-9, rtol=0)


def test_erasure_leaves_the_partial_border_untouched():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 19, 21)
    y = cut_dct_high_frequencies(x, 8, 0.5)
    assert torch.equal(y[..., 16:, :], x[..., 16:, :]) and torch.equal(y[..., :, 16:], x[..., :, 16:])
    assert not torch.allclose(y[..., :16, :16], x[..., :16, :16])


def test_erasing_nothing_is_bitwise_the_input():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    assert torch.equal(cut_dct_high_frequencies(x, 8, 0.0), x)


def test_bicubic_reference_keeps_constants_and_loses_fine_detail():
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(metrics.bicubic_at_latent_grid(flat, 4), flat)
    smooth = smooth_images(2, 3, 32, cells=4).float()
    noisy = (smooth + 0.3 * torch.randn_like(smooth)).clamp(-1, 1)
    p = lambda x: psnr(metrics.bicubic_at_latent_grid(x, 4), x).mean()
    assert p(smooth) > p(noisy) + 10  # the grid keeps smooth images and drops pixel noise


def test_psnr_closed_form():
    x = torch.zeros(2, 3, 8, 8)
    torch.testing.assert_close(psnr(x + 0.02, x), torch.full((2,), 10 * math.log10(4 / 0.02 ** 2), dtype=torch.float64))
    assert psnr(x, x).eq(metrics.PSNR_MAX).all()  # lossless is capped, not inf, so JSON stays finite


def test_psnr_falls_strictly_with_the_fraction_erased_for_a_smooth_image():
    x = smooth_images(4, 3, 64, seed=1).float()
    curve = [psnr(cut_dct_high_frequencies(x, 8, p).clamp(-1, 1), x).mean().item() for p in spectrum.ERASE_FRACTIONS]
    assert curve[0] == metrics.PSNR_MAX
    assert all(a > b for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] > 20  # a smooth image lives in its lowest frequencies

# -----------------------------------------------------------------------------
# the CLI on two tiny random-init autoencoders

def _save_tiny_ae(path, seed):
    from model import AE_PRESETS, Autoencoder
    torch.manual_seed(seed)
    ae = Autoencoder(AE_PRESETS['tiny'])
    torch.save({'model': ae.state_dict(), 'config': {'preset': 'tiny'}}, path)


@pytest.mark.slow  # 2 AEs x 10 erasure levels x 2 batches of decodes: ~10-30 s on a shared CPU
def test_cli_on_two_tiny_checkpoints_writes_plots_and_consistent_json(tmp_path):
    from utils.data import make_dataset
    from utils.weights import load_autoencoder
    a, b = tmp_path / 'a.pt', tmp_path / 'b.pt'
    _save_tiny_ae(a, 0)
    _save_tiny_ae(b, 1)
    out = tmp_path / 'out'
    spectrum.main(['--ckpt', str(a), f'--ckpt={b}', '--label', 'base', '--label', 'se', '--num_images', '4',
                   '--image_size', '32', '--batch_size', '3', '--device', 'cpu', '--rgb_pool', '2', '--out_dir', str(out)])
    assert (out / 'spectrum.png').stat().st_size > 0 and (out / 'erasure.png').stat().st_size > 0
    result = json.loads((out / 'spectrum.json').read_text())

    def numbers(o):
        if isinstance(o, dict):
            return [v for k, v in o.items() if k != 'args' for v in numbers(v)]
        if isinstance(o, list):
            return [v for e in o for v in numbers(e)]
        return [o] if isinstance(o, (int, float)) and not isinstance(o, bool) else []
    assert all(math.isfinite(v) for v in numbers(result))
    assert set(result['autoencoders']) == {'base', 'se'}
    assert set(result['rgb']) == {'RGB 32x32', 'RGB 16x16', 'RGB 8x8'}  # full size, --rgb_pool 2, the f4 latent

    # the same numbers, recomputed in one shot on the same 4 held-out images
    x = torch.stack([make_dataset(None, 32, seed=0, train=False)[i][0] for i in range(4)])
    ae = load_autoencoder(str(b), device='cpu')
    with torch.no_grad():
        z, _ = ae.encode(x, sample=False)
        x_rec = ae.decode(z).clamp(-1, 1)
    r = result['autoencoders']['se']
    assert r['latent_resolution'] == [8, 8] and r['rgb_reference'] == 'RGB 8x8'
    assert r['hf_share'] == pytest.approx(hf_share(z), rel=1e-5)
    assert result['rgb']['RGB 8x8']['hf_share'] == pytest.approx(hf_share(F.avg_pool2d(x, 4)), rel=1e-5)
    assert r['hf_share_vs_rgb'] == pytest.approx(r['hf_share'] / r['rgb_hf_share'])
    # posterior samples carry the KL noise on top of the means (at init the noise std is 1: nearly white)
    assert r['posterior_sample']['hf_share'] > r['hf_share']
    # erasing 0% is the plain reconstruction
    assert r['erasure_psnr'][0] == r['reconstruction_psnr'] == pytest.approx(psnr(x_rec, x).mean().item(), rel=1e-6)
    # the trivial reference beside it: bicubic down and up by f = 4 on the same images
    assert r['bicubic_psnr'] == pytest.approx(psnr(metrics.bicubic_at_latent_grid(x, 4), x).mean().item(), rel=1e-6)
    assert result['rgb_erasure_psnr'][0] == metrics.PSNR_MAX
    assert all(a > b for a, b in zip(result['rgb_erasure_psnr'], result['rgb_erasure_psnr'][1:]))


def test_cli_rejects_a_label_count_that_does_not_match(tmp_path):
    with pytest.raises(SystemExit, match='one label per checkpoint'):
        spectrum.main(['--ckpt', 'a.pt', '--ckpt', 'b.pt', '--label', 'only_one', '--out_dir', str(tmp_path)])


def test_cli_names_a_missing_checkpoint_in_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match='does not exist'):
        spectrum.main(['--ckpt', str(tmp_path / 'missing.pt'), '--num_images', '1', '--image_size', '32',
                       '--device', 'cpu', '--out_dir', str(tmp_path / 'out')])


def test_noised_hf_share_rises_from_the_images_own_to_white_noise_and_inverts():
    """spectral.noised_hf_share, the RGB + noise reference: at sigma 0 it is the images' own hf_share, it rises with the
    noise toward white noise's 32/63, a per-channel scale changes nothing (sigma is relative to each channel's std),
    and equivalent_sigma reads the noise level back from a share on the curve."""
    from utils.spectral import equivalent_sigma, noised_hf_share
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.randn(16, 3, 4, 4, generator=g), size=32, mode='bicubic', align_corners=False)
    sigmas = [0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    shares = noised_hf_share(smooth, sigmas)
    assert shares[0] == pytest.approx(hf_share(smooth)) and shares[0] < 0.01
    assert all(a < b for a, b in zip(shares, shares[1:])) and shares[-1] == pytest.approx(32 / 63, abs=0.01)
    scaled = smooth * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1)
    assert noised_hf_share(scaled, sigmas) == pytest.approx(shares, rel=1e-6)
    fine = [0.01 * k for k in range(101)]
    target = noised_hf_share(smooth, [0.37], seed=0)[0]
    assert equivalent_sigma(fine, noised_hf_share(smooth, fine), target) == pytest.approx(0.37, abs=0.01)
    assert equivalent_sigma(sigmas, shares, 0.9) is None
