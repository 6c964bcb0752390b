"""The scale-equivariance (SE) regulariser as a specification: L_SE = d(down_s(x), D(down_s(E(x)))) is zero for an
autoencoder that commutes with down_s, is non-zero when x and z are shrunk differently, and is the very number
train_ae.py logs."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from data import make_dataset
from model import SE_DOWNSAMPLING, Autoencoder, make_ae_config, scale_equivariance_loss, se_downsample
from tests.helpers import TINY_AE, run, train_rows


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
    assert l1(down(x, 2, 'avgpool'), ae.decode(down(z, 2, 'bilinear'))) > 1e-3
    assert l1(down(x, 2, 'bilinear'), ae.decode(down(z, 2, 'avgpool'))) > 1e-3
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


def test_unknown_downsampling_is_one_sentence():
    with pytest.raises(ValueError, match='unknown SE downsampling'):
        se_downsample(torch.zeros(1, 3, 8, 8), 2, 'nearest')


def test_logged_se_term_equals_the_formula_recomputed_from_the_checkpoint(tmp_path):
    # VQ (deterministic encoder) and a single SE factor, so step 2's logged term depends only on the weights after
    # step 1, which the step-1 checkpoint holds, and on the second batch of the embedded data
    d = tmp_path / 'ae'
    args = [*TINY_AE, '--out_dir', d, '--regularizer', 'vq', '--se_weight', '0.25', '--se_scales', '2',
            '--se_down', 'bilinear']
    run('train_ae.py', *args, '--max_steps', '1')
    shutil.copy(d / 'ckpt.pt', tmp_path / 'step1.pt')
    run('train_ae.py', *args, '--max_steps', '2', '--resume')
    logged = train_rows(d)[2]['se']

    ckpt = torch.load(tmp_path / 'step1.pt', weights_only=False)
    ae = Autoencoder(make_ae_config(ckpt['config']['preset'], ckpt['config']['ae_config']))
    ae.load_state_dict(ckpt['model'])
    B = ckpt['config']['batch_size']
    data = make_dataset(None, ckpt['config']['image_size'], seed=ckpt['config']['seed'], train=True)
    x = torch.stack([data[i][0] for i in range(B, 2 * B)])  # the loader's second batch of the endless stream
    with torch.no_grad():
        z, _ = ae.encode(x)
        se, _ = scale_equivariance_loss(ae, x, z, 2, l1, 'bilinear')
    assert se.item() == pytest.approx(logged, rel=1e-5)
    assert os.path.exists(d / 'ckpt.pt')
