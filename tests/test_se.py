"""The scale-equivariance (SE) regulariser as a specification: L_SE = d(down_s(x), D(down_s(E(x)))) is zero for an
autoencoder that commutes with down_s, is non-zero when x and z are shrunk differently, and is the very number
train_ae.py logs."""
import os
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from utils.data import make_dataset
from utils.cli import SE_DOWNSAMPLING
from model import Autoencoder, block_dct, cut_dct_high_frequencies, dct_cut_equivariance_loss, latent_hf_penalty, make_ae_config, scale_equivariance_loss, se_downsample, causal_time_pool, zigzag
from tests.helpers import TINY_AE, run, train_rows
from utils.weights import load_checkpoint


def l1(a, b):
    return (a - b).abs().mean()


class AffineAE:
    """An exactly scale-equivariant autoencoder: E(x) = A x + b per pixel (a 1x1 conv that mixes channels), D its
    inverse. Linear, constant-preserving downsampling commutes with any per-pixel affine map."""
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
        self.b = torch.randn(3, generator=g, dtype=torch.float64)

    def encode(self, x):
        return torch.einsum('ij,bjhw->bihw', self.A, x) + self.b[:, None, None]

    def decode(self, z):
        return torch.einsum('ij,bjhw->bihw', torch.linalg.inv(self.A), z - self.b[:, None, None])


@pytest.mark.parametrize('mode', SE_DOWNSAMPLING)
@pytest.mark.parametrize('factor', [2, 4])
def test_se_loss_is_zero_for_an_equivariant_autoencoder(mode, factor):
    ae, x = AffineAE(), torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    loss, x_rec_se = scale_equivariance_loss(ae, x, ae.encode(x), factor, l1, mode)
    assert x_rec_se.shape == (2, 3, 16 // factor, 16 // factor)
    assert loss.item() < 1e-12
    # ... and the named function is exactly the formula d(down_s(x), D(down_s(z)))
    z = ae.encode(x)
    assert loss == l1(se_downsample(x, factor, mode), ae.decode(se_downsample(z, factor, mode)))


def test_se_loss_sees_a_wrong_operator_or_factor_on_either_side():
    ae, x = AffineAE(), torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    z = ae.encode(x)
    down = se_downsample
    # the other operator on x, or on z
    assert l1(down(x, 2, 'mean'), ae.decode(down(z, 2, 'bilinear'))) > 1e-3
    assert l1(down(x, 2, 'bilinear'), ae.decode(down(z, 2, 'mean'))) > 1e-3
    # another factor on x, or on z (brought back to the other side's size, as a mistaken resize would)
    to = lambda t, size: F.interpolate(t, size=size, mode='nearest')  # noqa: E731
    assert l1(to(down(x, 4, 'bilinear'), (8, 8)), ae.decode(down(z, 2, 'bilinear'))) > 1e-3
    assert l1(down(x, 2, 'bilinear'), to(ae.decode(down(z, 4, 'bilinear')), (8, 8))) > 1e-3


def test_a_perfect_autoencoder_that_is_not_equivariant_pays_the_se_loss():
    # E rolls the image by one pixel, D rolls it back: a lossless autoencoder (reconstruction loss 0), but a 1-pixel
    # shift at full resolution is half a pixel after down_2, so D(down(E(x))) is not down(x)
    class Rolled:
        def encode(self, x):
            return x.roll(1, dims=-1)

        def decode(self, z):
            return z.roll(-1, dims=-1)
    ae, x = Rolled(), torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    assert torch.equal(ae.decode(ae.encode(x)), x)
    loss, _ = scale_equivariance_loss(ae, x, ae.encode(x), 2, l1)
    assert loss > 1e-2


def _bilinear_align_corners(x, h):
    """The authors' operator written out: output pixel i samples the input at p = i (H - 1) / (h - 1), so the first and
    last pixels sit on the corners, and interpolates linearly between the two nearest pixels, rows then columns."""
    H = x.shape[-1]
    p = torch.arange(h, dtype=x.dtype) * (H - 1) / (h - 1)
    lo = p.floor().long().clamp(max=H - 2)
    w = p - lo
    rows = x[..., lo, :] * (1 - w)[:, None] + x[..., lo + 1, :] * w[:, None]
    return rows[..., lo] * (1 - w) + rows[..., lo + 1] * w


@pytest.mark.parametrize('factor', [2, 4])
def test_each_se_operator_is_its_formula(factor):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    h = 16 // factor
    # 'bilinear', the authors' default: align_corners=True, no antialiasing
    torch.testing.assert_close(se_downsample(x, factor, 'bilinear'), _bilinear_align_corners(x, h), rtol=0, atol=1e-12)
    # 'mean': the average of every s x s block
    blocks = x.unflatten(-1, (h, factor)).unflatten(-3, (h, factor))  # (B, C, h, s, h, s)
    torch.testing.assert_close(se_downsample(x, factor, 'mean'), blocks.mean((-3, -1)), rtol=0, atol=1e-12)
    # 'antialiased' (ours): a triangle filter 2s wide centred between pixels; in the interior, for s = 2, the taps
    # (1, 3, 3, 1) / 8 along each axis
    if factor == 2:
        taps = torch.tensor([1, 3, 3, 1], dtype=x.dtype) / 8
        rows = sum(taps[k] * x[..., 2 * 1 - 1 + k:2 * 1 - 1 + k + 1, :] for k in range(4))  # output row 1
        expected = sum(taps[k] * rows[..., 2 * 1 - 1 + k] for k in range(4))                 # output column 1
        torch.testing.assert_close(se_downsample(x, 2, 'antialiased')[..., 1, 1], expected[..., 0], rtol=0, atol=1e-12)
    # a video is shrunk frame by frame, time untouched
    v = torch.randn(2, 3, 5, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(se_downsample(v, factor, 'bilinear')[:, :, 3], se_downsample(v[:, :, 3], factor, 'bilinear'))


def test_temporal_se_keeps_the_first_frame_and_averages_groups_of_the_rest():
    v = torch.randn(1, 2, 9, 4, 4, dtype=torch.float64)  # 1 + 8 frames
    for s in (2, 4):
        out = causal_time_pool(v, factor=s)
        assert out.shape[2] == 1 + 8 // s
        torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=0)
        for j in range(8 // s):
            torch.testing.assert_close(out[:, :, 1 + j], v[:, :, 1 + s * j:1 + s * (j + 1)].mean(2), rtol=0, atol=1e-12)


def test_the_authors_released_temporal_reduce_keeps_every_frame_where_ours_averages_them():
    """The authors' comment on temporal_scale_factors says the frames after the first are averaged in groups; their
    released einops pattern has the same axes on both sides, so it is the identity and shrinks no time. Ours does what
    the comment says (docs/guide.md, train_ae.py)."""
    import einops
    x = torch.randn(2, 9, 3, 4, 4, dtype=torch.float64)  # their layout (b, t, c, h, w), 1 + 8 frames
    theirs = einops.reduce(x[:, 1:], 'b (t ft) c h w -> b (t ft) c h w', 'mean', ft=2)
    torch.testing.assert_close(theirs, x[:, 1:], rtol=0, atol=0)
    ours = causal_time_pool(x.transpose(1, 2), factor=2).transpose(1, 2)  # ours is (b, c, t, h, w)
    assert ours.shape[1] == 5
    torch.testing.assert_close(ours[:, 1:], einops.reduce(x[:, 1:], 'b (t ft) c h w -> b t c h w', 'mean', ft=2))


@pytest.mark.parametrize('block', [4, 8])
def test_dct_cut_keeps_exactly_the_first_zigzag_coefficients(block):
    x = torch.randn(2, 3, 2 * block, 3 * block, dtype=torch.float64)
    torch.testing.assert_close(cut_dct_high_frequencies(x, block, 0.0), x, rtol=0, atol=1e-12)  # ratio 0: identity
    order = zigzag(block)
    for ratio in (0.1, 0.5, 0.9):
        keep = int((1 - ratio) * block * block)  # the authors' rounding
        X = block_dct(cut_dct_high_frequencies(x, block, ratio), block).flatten(-2)[..., order]
        X0 = block_dct(x, block).flatten(-2)[..., order]
        torch.testing.assert_close(X[..., :keep], X0[..., :keep], rtol=0, atol=1e-10)
        assert X[..., keep:].abs().max() < 1e-10


def test_dct_cut_loss_is_zero_for_an_equivariant_autoencoder_and_cuts_x_at_the_matching_scale():
    ae, x = AffineAE(), torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    loss, _ = dct_cut_equivariance_loss(ae, x, ae.encode(x), 0.5, l1, block=8)  # f = 1: the same tiles in x and z
    assert loss.item() < 1e-12

    class Identity:  # f = 4 from the shapes: x in 32x32 tiles, z in 8x8 tiles, the same share cut from both
        def decode(self, z):
            return z
    x, z = torch.randn(1, 3, 64, 64, dtype=torch.float64), torch.randn(1, 3, 16, 16, dtype=torch.float64)
    seen = {}
    def grab(target, rec):
        seen.update(target=target, rec=rec)
        return torch.zeros(())
    dct_cut_equivariance_loss(Identity(), x, z, 0.25, grab, block=8)
    torch.testing.assert_close(seen['target'], cut_dct_high_frequencies(x, 32, 0.25), rtol=0, atol=0)
    torch.testing.assert_close(seen['rec'], cut_dct_high_frequencies(z, 8, 0.25), rtol=0, atol=0)


def test_latent_hf_penalty_is_zero_for_a_constant_and_grows_with_frequency():
    assert latent_hf_penalty(torch.full((2, 4, 16, 16), 3.0, dtype=torch.float64)).abs().max() < 1e-12
    i = torch.arange(16, dtype=torch.float64)
    penalties = []
    for k in (1, 2, 4, 6):  # a cosine along rows with k half-periods per 8-pixel tile: energy at DCT row k
        z = torch.cos(math.pi * (2 * (i % 8) + 1) * k / 16)[:, None].expand(16, 16)[None, None]
        penalties.append(latent_hf_penalty(z).item())
    assert all(a < b for a, b in zip(penalties, penalties[1:]))
    # the weight is ((u + v) / (b - 1))^p / 4: a pure (u, v) = (k, 0) coefficient of amplitude A gives A (k/7)^p / 4 / 64
    A = block_dct(z)[0, 0, 0, 0, 6, 0].abs().item()
    assert penalties[-1] == pytest.approx(A * (6 / 7) ** 2 / 4 / 64, rel=1e-9)


def test_unknown_downsampling_is_one_sentence():
    with pytest.raises(ValueError, match='unknown SE downsampling'):
        se_downsample(torch.zeros(1, 3, 8, 8), 2, 'nearest')


def test_logged_se_and_hf_terms_equal_their_formulas_recomputed_from_the_checkpoint(tmp_path):
    # VQ (deterministic encoder) and a single SE factor, so step 2's logged term depends only on the weights after
    # step 1, which the step-1 checkpoint holds, and on the second batch of the embedded data
    d = tmp_path / 'ae'
    args = [*TINY_AE, '--out_dir', d, '--regularizer', 'vq', '--se_weight', '0.25', '--se_scales', '2',
            '--se_down', 'bilinear', '--hf_reg_weight', '0.1', '--hf_reg_power', '1.5', '--image_size', '32']
    run('train_ae.py', *args, '--max_steps', '1')
    shutil.copy(d / 'ckpt.pt', tmp_path / 'step1.pt')
    run('train_ae.py', *args, '--max_steps', '2', '--resume')
    logged, logged_hf = train_rows(d)[2]['se'], train_rows(d)[2]['hf_reg']

    ckpt = load_checkpoint(tmp_path / 'step1.pt')
    ae = Autoencoder(make_ae_config(ckpt['config']['preset'], ckpt['config']['ae_config']))
    ae.load_state_dict(ckpt['model'])
    B = ckpt['config']['batch_size']
    data = make_dataset(None, ckpt['config']['image_size'], seed=ckpt['config']['seed'], train=True)
    x = torch.stack([data[i][0] for i in range(B, 2 * B)])  # the loader's second batch of the endless stream
    with torch.no_grad():
        z, _ = ae.encode(x)
        se, _ = scale_equivariance_loss(ae, x, z, 2, l1, 'bilinear')
    assert se.item() == pytest.approx(logged, rel=1e-5)
    assert latent_hf_penalty(z, power=1.5).mean().item() == pytest.approx(logged_hf, rel=1e-5)
    assert os.path.exists(d / 'ckpt.pt')


def test_se_detach_z_trains_the_decoder_alone(tmp_path):
    """train_ae.py --se_detach_z (issue 37's ablation): after one step the encoder equals the control's, which had no
    SE term, and the decoder does not; without the flag SE moves the encoder too."""
    args = [*TINY_AE, '--max_steps', '1', '--se_scales', '2', '--image_size', '16', '--grad_clip', '0']  # the global
    # norm clip would couple the encoder's step to the decoder's gradient
    weights = {}
    for name, extra in (('control', []), ('se', ['--se_weight', '1']), ('detached', ['--se_weight', '1', '--se_detach_z'])):
        run('train_ae.py', *args, *extra, '--out_dir', tmp_path / name)
        weights[name] = load_checkpoint(tmp_path / name / 'ckpt.pt')['model']
    part = lambda name, prefix: torch.cat([v.flatten() for k, v in weights[name].items() if k.startswith(prefix)])  # noqa: E731
    assert torch.allclose(part('detached', 'encoder.'), part('control', 'encoder.'), rtol=0, atol=1e-7)
    assert not torch.allclose(part('se', 'encoder.'), part('control', 'encoder.'), rtol=0, atol=1e-6)
    assert not torch.allclose(part('detached', 'decoder.'), part('control', 'decoder.'), rtol=0, atol=1e-6)
