"""Specification of the first stage (model.py, weights.py, perceptual.py): equality with diffusers'
AutoencoderKL and the lpips package, closed forms of the KL / VQ / hinge losses, and the shapes of every preset."""
import os
import urllib.error

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from utils.common import rng_state
import model
from model import AE_PRESETS, Autoencoder, adaptive_gan_weight, NLayerDiscriminator, VectorQuantizer, diagonal_gaussian, hinge_d_loss, make_ae_config
from evaluation.perceptual import LPIPS, LPIPS_MIN_SIZE
from utils.weights import load_ae_state_dict, load_autoencoder

diffusers = pytest.importorskip('diffusers')
lpips = pytest.importorskip('lpips')


def perturbed(module, std=0.02):
    """Random weights away from the default init: GroupNorm scales != 1 expose any mixed-up norm1/norm2/norm_out."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def diffusers_vae(widths, layers_per_block, latent_channels, quant_convs, norm_groups=32):
    n = len(widths)
    return perturbed(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=widths, layers_per_block=layers_per_block,
        down_block_types=('DownEncoderBlock2D',) * n, up_block_types=('UpDecoderBlock2D',) * n,
        latent_channels=latent_channels, norm_num_groups=norm_groups,
        use_quant_conv=quant_convs, use_post_quant_conv=quant_convs))


# ---------------------------------------------------------------------------------------------- architecture

@pytest.mark.parametrize('name, overrides, diffusers_kw', [
    # SD-VAE structure (quant convs, z=4) at the width of the 'tiny' preset
    ('sd', dict(ch=32, ch_mult=(1, 2, 2)), dict(layers_per_block=2, latent_channels=4, quant_convs=True)),
    # FLUX.1-AE structure (no quant convs, z=16)
    ('flux', dict(ch=32, ch_mult=(1, 2, 2)), dict(layers_per_block=2, latent_channels=16, quant_convs=False)),
])
def test_diffusers_weights_give_identical_outputs(name, overrides, diffusers_kw):
    torch.manual_seed(0)
    ref = diffusers_vae((32, 64, 64), **diffusers_kw)
    ours = Autoencoder(make_ae_config(name, overrides)).eval()
    load_ae_state_dict(ours, ref.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean, _ = ours.encode(x, sample=False)
        mean_ref = ref.encode(x).latent_dist.mean
        assert mean.shape == (2, diffusers_kw['latent_channels'], 8, 8)
        torch.testing.assert_close(mean, mean_ref, atol=1e-4, rtol=0)
        z = torch.randn_like(mean)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-4, rtol=0)


def test_ldm_key_layout():
    keys = Autoencoder(AE_PRESETS['sd']).state_dict().keys()
    for k in ['encoder.conv_in.weight', 'encoder.down.0.block.0.norm1.weight', 'encoder.down.0.downsample.conv.weight',
              'encoder.down.1.block.0.nin_shortcut.weight', 'encoder.mid.block_1.conv1.weight',
              'encoder.mid.attn_1.q.weight', 'encoder.mid.attn_1.proj_out.weight', 'encoder.mid.attn_1.norm.weight',
              'encoder.norm_out.weight', 'encoder.conv_out.weight', 'decoder.conv_in.weight',
              'decoder.mid.block_2.conv2.weight', 'decoder.up.3.upsample.conv.weight', 'decoder.up.0.block.2.conv1.weight',
              'decoder.norm_out.weight', 'decoder.conv_out.weight', 'quant_conv.weight', 'post_quant_conv.weight']:
        assert k in keys, k
    assert 'decoder.up.0.upsample.conv.weight' not in keys  # LDM: the full-resolution level has no upsampler
    assert 'encoder.down.3.downsample.conv.weight' not in keys
    assert 'quantize.embedding.weight' in Autoencoder(make_ae_config('tiny', {'regularizer': 'vq'})).state_dict()


@pytest.mark.parametrize('name, z_channels, f, n_params', [
    ('tiny', 4, 4, None), ('small', 4, 8, None),
    ('sd', 4, 8, 83_653_863),    # = diffusers AutoencoderKL with SD's config
    ('flux', 16, 8, 83_819_683),  # = diffusers AutoencoderKL with FLUX.1's config
])
def test_preset_shapes(name, z_channels, f, n_params):
    torch.manual_seed(0)
    ae = Autoencoder(AE_PRESETS[name]).eval()
    if n_params is not None:
        assert sum(p.numel() for p in ae.parameters()) == n_params
    assert ae.downsample_factor == f
    assert ae.last_layer() is ae.decoder.conv_out.weight
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z, _ = ae.encode(x)
        assert z.shape == (1, z_channels, 32 // f, 32 // f)
        assert ae.decode(z).shape == x.shape


def test_downsample_is_asymmetric_stride_2():
    """Padding (0,1,0,1): output (i, j) sees input rows/cols 2i..2i+2, so output (0, 0) ignores row/col 3 and up."""
    torch.manual_seed(0)
    down = model.Downsample(32)
    x = torch.randn(1, 32, 8, 8, requires_grad=True)
    y = down(x)
    assert y.shape == (1, 32, 4, 4)
    y[0, :, 0, 0].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    assert support[:3, :3].all() and not support[3:].any() and not support[:, 3:].any()


# ---------------------------------------------------------------------------------------------- loading

def test_safetensors_round_trip_through_load_autoencoder(tmp_path):
    torch.manual_seed(0)
    ref = diffusers_vae((32, 64, 64), layers_per_block=1, latent_channels=4, quant_convs=True, norm_groups=8)  # = 'tiny'
    path = tmp_path / 'vae.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = load_autoencoder(str(path), preset='tiny')
    assert not ours.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x, sample=False)[0], ref.encode(x).latent_dist.mean, atol=1e-4, rtol=0)
    # and back out in the LDM layout, as a Stable Diffusion checkpoint would hold it
    sd_ckpt = {'state_dict': {**{f'first_stage_model.{k}': v for k, v in ours.state_dict().items()},
                              'model.diffusion_model.input_blocks.0.0.weight': torch.zeros(1),
                              'first_stage_model.loss.logvar': torch.zeros(())}}
    torch.save(sd_ckpt, tmp_path / 'sd.ckpt')
    again = load_autoencoder(str(tmp_path / 'sd.ckpt'), preset='tiny')
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_train_ae_checkpoint_prefers_ema_and_applies_config(tmp_path):
    torch.manual_seed(0)
    cfg = make_ae_config('tiny', {'z_channels': 8, 'ch_mult': [1, 2]})
    net, ema = Autoencoder(cfg), Autoencoder(cfg)
    ckpt = {'model': net.state_dict(), 'ema': ema.state_dict(),
            'config': {'preset': 'tiny', 'ae_config': {'z_channels': 8, 'ch_mult': [1, 2]}}, 'step': 3,
            'rng': [rng_state()]}  # as train_ae.py saves it: tensors and lists, what weights_only=True reads
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    loaded = load_autoencoder(str(tmp_path / 'ckpt.pt'), preset='sd')  # the checkpoint's own config wins
    assert loaded.cfg.z_channels == 8 and loaded.downsample_factor == 2
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # numpy's own state is an object whose unpickling calls numpy: refused, never read with the pickle fallback of old
    torch.save({**ckpt, 'rng': {'numpy': np.random.get_state()}}, tmp_path / 'old.pt')
    with pytest.raises(ValueError, match=r'old.pt was refused: it holds Python objects \(numpy.*_reconstruct\)'):
        load_autoencoder(str(tmp_path / 'old.pt'))


def test_loading_errors_are_one_sentence(tmp_path):
    flux_like = Autoencoder(make_ae_config('flux', {'ch': 32, 'ch_mult': (1, 2, 2), 'num_res_blocks': 1}))
    with pytest.raises(ValueError, match='pass the preset') as e:
        load_ae_state_dict(Autoencoder(AE_PRESETS['tiny']), flux_like.state_dict())
    assert '\n' not in str(e.value)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_autoencoder(str(tmp_path / 'nope.safetensors'), preset='tiny')
    save_file(Autoencoder(AE_PRESETS['tiny']).state_dict(), str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match='pass the preset'):
        load_autoencoder(str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match='unknown autoencoder preset'):
        make_ae_config('sdxl')
    for name in ('truncated.pt', 'truncated.safetensors'):
        (tmp_path / name).write_bytes(b'not a weights file')
        with pytest.raises(ValueError, match='could not be read'):
            load_autoencoder(str(tmp_path / name), preset='tiny')


# ---------------------------------------------------------------------------------------------- regularisers

def test_kl_closed_form_and_posterior_mean():
    torch.manual_seed(0)
    B, C, H, W = 3, 4, 5, 6
    mu, logvar = 0.7, -1.3
    moments = torch.cat([torch.full((B, C, H, W), mu), torch.full((B, C, H, W), logvar)], dim=1)
    z, kl = diagonal_gaussian(moments, sample=False)
    assert torch.equal(z, torch.full((B, C, H, W), mu))
    expected = 0.5 * C * H * W * (mu ** 2 + torch.exp(torch.tensor(logvar)) - 1 - logvar)  # per image, batch mean
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=0)
    # N(0, I) has zero KL; logvar is clamped to [-30, 20] before use
    assert diagonal_gaussian(torch.zeros(2, 8, 3, 3), sample=False)[1] == 0
    _, kl_big = diagonal_gaussian(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 100.0)], 1))
    torch.testing.assert_close(kl_big, 0.5 * (torch.exp(torch.tensor(20.0)) - 1 - 20))
    # samples: mean mu, std exp(logvar / 2)
    samples, _ = diagonal_gaussian(moments[:1].expand(2000, -1, -1, -1), sample=True)
    torch.testing.assert_close(samples.mean(), torch.tensor(mu), atol=0.01, rtol=0)
    torch.testing.assert_close(samples.std(), torch.exp(torch.tensor(logvar / 2)), rtol=0.01, atol=0)


def test_encode_sample_false_is_deterministic_mean():
    torch.manual_seed(0)
    ae = Autoencoder(AE_PRESETS['tiny']).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = ae.quant_conv(ae.encoder(x))[:, :4]
        z0, _ = ae.encode(x, sample=False)
        z1, _ = ae.encode(x, sample=True)
    assert torch.equal(z0, mean)
    assert not torch.allclose(z1, mean)


def test_vq_codebook_rows_straight_through_and_loss():
    torch.manual_seed(0)
    beta = 0.25
    vq = VectorQuantizer(n_embed=16, dim=3, beta=beta)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    z_q, loss = vq(z)
    # every output vector is the nearest codebook row, found here by brute force
    rows = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = vq.embedding.weight[torch.cdist(rows, vq.embedding.weight).argmin(1)]
    torch.testing.assert_close(z_q.detach().permute(0, 2, 3, 1).reshape(-1, 3), nearest, atol=1e-6, rtol=0)
    # loss = (1 + beta) * mean((z_q - z)^2) in value; its z-gradient is the commitment term only
    torch.testing.assert_close(loss, (1 + beta) * (nearest - rows).pow(2).mean())
    loss.backward(retain_graph=True)
    torch.testing.assert_close(z.grad, beta * 2 * (z - z_q).detach() / z.numel())
    # straight-through: the gradient reaching z_q is copied unchanged to z
    z.grad = None
    g = torch.randn_like(z)
    (z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)


def test_vq_autoencoder_gradient_reaches_encoder():
    torch.manual_seed(0)
    ae = Autoencoder(make_ae_config('tiny', {'regularizer': 'vq', 'n_embed': 32}))
    x_rec, z, reg = ae(torch.rand(2, 3, 16, 16) * 2 - 1)
    codebook = ae.quantize.embedding.weight
    dist = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 4), codebook, compute_mode='donot_use_mm_for_euclid_dist')
    assert dist.min(1).values.max() < 1e-6  # every latent vector is a codebook row
    x_rec.pow(2).mean().backward()  # reconstruction only: the encoder learns through the straight-through copy
    assert ae.encoder.conv_in.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- discriminator

def test_patchgan_shape_receptive_field_and_init():
    torch.manual_seed(0)
    D = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3).eval()
    assert D(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # H / 2^3 - 2
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    D(x)[0, 0, 7, 7].backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70  # pix2pix's 70x70 PatchGAN
    convs = torch.cat([m.weight.flatten() for m in D.modules() if isinstance(m, torch.nn.Conv2d)])
    norms = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 3
    assert abs(convs.mean()) < 1e-3 and abs(convs.std() - 0.02) < 1e-3
    gamma = torch.cat([m.weight for m in norms])
    assert abs(gamma.mean() - 1) < 5e-3 and abs(gamma.std() - 0.02) < 5e-3
    assert all((m.bias == 0).all() for m in norms)


def test_hinge_d_loss_closed_form():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2]
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2]
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    assert hinge_d_loss(torch.ones(4) * 3, -torch.ones(4) * 3) == 0  # margins met: no loss


def test_adaptive_gan_weight_is_ldms_in_per_pixel_units_clamp_included():
    # taming/LDM's calculate_adaptive_weight on its summed loss, next to ours on the per-pixel mean
    def ldm_weight(nll_loss, g_loss, last_layer):
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        return torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4).detach()

    torch.manual_seed(0)
    B, H, W = 2, 8, 8
    pixels = 3 * H * W
    conv = torch.nn.Conv2d(4, 3, 3, padding=1).double()  # the decoder's last layer
    h, x = torch.randn(B, 4, H, W, dtype=torch.float64), torch.randn(B, 3, H, W, dtype=torch.float64)
    probe = torch.randn(3, H, W, dtype=torch.float64)
    for g_scale, clamped in ((1.0, False), (1e-9, True)):  # a vanishing GAN gradient hits LDM's 1e4 cap
        x_rec = conv(h)
        nll = (x - x_rec).abs().sum() / B            # LDM: summed over the 3HW values, mean over the batch
        rec = (x - x_rec).abs().mean()               # ours: the per-pixel mean, nll / 3HW
        g = -g_scale * (x_rec * probe).mean()         # any generator loss, the same in both
        ours, ldm = adaptive_gan_weight(rec, g, conv.weight, pixels), ldm_weight(nll, g, conv.weight)
        assert (ldm == 1e4) == clamped
        assert ours.item() * pixels == pytest.approx(ldm.item(), rel=1e-9)
        # so the generator's gradient is LDM's divided by 3HW, adversarial part included
        ours_grad = torch.autograd.grad(rec + ours * 0.5 * g, conv.weight, retain_graph=True)[0]
        ldm_grad = torch.autograd.grad(nll + ldm * 0.5 * g, conv.weight)[0]
        torch.testing.assert_close(ours_grad * pixels, ldm_grad, rtol=1e-9, atol=0)


def test_lpips_minimum_size():
    net = LPIPS(pretrained=False)
    d = net(torch.zeros(1, 3, LPIPS_MIN_SIZE, LPIPS_MIN_SIZE), torch.ones(1, 3, LPIPS_MIN_SIZE, LPIPS_MIN_SIZE))
    assert d.shape == (1,) and torch.isfinite(d).all() and d != 0
    with pytest.raises(RuntimeError, match='too small'):  # hence train_ae.py's start-up check
        net(torch.zeros(1, 3, LPIPS_MIN_SIZE // 2, LPIPS_MIN_SIZE // 2), torch.ones(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------- LPIPS

@pytest.fixture(scope='module')
def lpips_pair(tmp_path_factory):
    """The lpips package with a random VGG (pnet_rand) and its shipped v0.1 lin weights, and ours given the same."""
    def offline(*args, **kwargs):
        raise AssertionError('the lpips package tried to download weights')
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:  # pnet_rand=True must keep the reference offline
        mp.setattr(torch.hub, 'load_state_dict_from_url', offline)
        mp.setattr(torch.hub, 'download_url_to_file', offline)
        ref = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True, verbose=False).eval()
    vgg = {f'features.{k.split(".", 1)[1]}': v for k, v in ref.net.state_dict().items()}  # slice2.4.w -> features.4.w
    vgg_path = tmp_path_factory.mktemp('lpips') / 'vgg16_random.pth'
    torch.save(vgg, vgg_path)
    lin_path = os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'vgg.pth')
    ours = LPIPS(vgg_weights=str(vgg_path), lin_weights=lin_path, pretrained=False)
    return ref, ours, str(vgg_path)


def test_lpips_equals_reference_package(lpips_pair):
    ref, ours, _ = lpips_pair
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        d = ours(x, y)
        assert d.shape == (2,)
        torch.testing.assert_close(d, ref(x, y).flatten(), atol=1e-5, rtol=0)
        assert (d > 0).all()
        torch.testing.assert_close(ours(y, x), d, atol=1e-6, rtol=0)  # symmetric
        assert (ours(x, x) == 0).all()
    assert all(not p.requires_grad for p in ours.parameters()) and not ours.training


def test_lpips_of_identical_images_is_zero_with_random_weights():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    d = LPIPS(pretrained=False)(x, x)
    assert (d == 0).all()
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_lpips_missing_weights_offline_is_one_clear_sentence(lpips_pair, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    try:
        with pytest.raises(FileNotFoundError) as e:
            LPIPS()
        msg = str(e.value)  # names the file and where it was looked for; the scripts add their flags
        assert 'vgg16-397923af.pth' in msg and str(tmp_path) in msg and '--' not in msg and '\n' not in msg
        with pytest.raises(FileNotFoundError, match='lpips_v0.1_vgg.pth'):
            LPIPS(vgg_weights=lpips_pair[2])
    finally:
        torch.hub.set_dir(old_dir)
    with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
        LPIPS(vgg_weights=str(tmp_path / 'missing.pth'))


@pytest.mark.parametrize('net', ['lpips', 'inception', 'i3d'])
def test_every_weight_download_refuses_an_unreadable_file_in_one_sentence(net, tmp_path, monkeypatch):
    # weights.fetch_weights is the one downloader: a local file and a file in the torch hub cache are both read as
    # tensors only, and a broken one of either is one sentence naming it (I3D's local file once gave a traceback)
    from evaluation import i3d
    from evaluation import inception
    load, file_name = {'lpips': (lambda p: LPIPS(vgg_weights=p, pretrained=p is None), 'vgg16-397923af.pth'),
                       'inception': (inception.load_inception, inception.FID_WEIGHTS_FILE),
                       'i3d': (i3d.load_i3d, i3d.I3D_WEIGHTS_FILE)}[net]
    garbage = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / 'w.pth').write_bytes(garbage)
    with pytest.raises(ValueError, match=r'w\.pth could not be read as torch weights') as e:
        load(str(tmp_path / 'w.pth'))
    assert '\n' not in str(e.value)
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))  # a cache holding a cut-off download
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    (tmp_path / 'hub' / 'checkpoints' / file_name).write_bytes(garbage)
    with pytest.raises(ValueError, match=f'{file_name} in the torch hub cache could not be read .* delete it'):
        load(None)
