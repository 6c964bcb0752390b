"""LDM's downsampling-factor ablation: CompVis' kl-f4, kl-f16 and kl-f32 layouts (attention inside the levels of
attn_resolutions) equal diffusers' AutoencoderKL with random weights; train_ae.py's --ch_mult and --attn_resolutions
build that structure; train_ldm.py --ae none diffuses the pixels themselves; and reproduce.py --f_sweep at smoke size
measures every factor by the project's one definition of each number."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from evaluation.metrics import PSNR_MAX, bicubic_at_latent_grid, psnr
from model import AE_PRESETS, Autoencoder, make_ae_config
from tests.helpers import TINY_AE, run
from utils.weights import load_ae_state_dict, load_checkpoint

diffusers = pytest.importorskip('diffusers')


def diffusers_kl(cfg, seed=0):
    """diffusers' AutoencoderKL with the structure of our config `cfg` (CompVis' ddconfig), weights perturbed at random."""
    attn = [cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(len(cfg.ch_mult))]
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKL(
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
        down_block_types=['AttnDownEncoderBlock2D' if a else 'DownEncoderBlock2D' for a in attn],
        up_block_types=['AttnUpDecoderBlock2D' if a else 'UpDecoderBlock2D' for a in reversed(attn)],
        latent_channels=cfg.z_channels, norm_num_groups=cfg.norm_groups)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref.eval()


@pytest.mark.parametrize('preset, levels_with_attention', [('kl-f4', []), ('kl-f16', [4]), ('kl-f32', [4, 5])])
def test_compvis_kl_layouts_equal_diffusers_autoencoderkl(preset, levels_with_attention):
    """CompVis' structure at a quarter of its width (ch 32; its ch_mult, z channels and attention levels) loads
    diffusers' weights and gives the same posterior mean and decoding."""
    cfg = make_ae_config(preset, dict(ch=32))
    ours = Autoencoder(cfg).eval()
    assert sorted({int(k.split('.')[2]) for k in ours.state_dict() if k.startswith('encoder.down.') and '.attn.' in k}) \
        == levels_with_attention  # 256 / 2^i in attn_resolutions: kl-f16 [16] -> level 4, kl-f32 [16, 8] -> 4, 5
    ref = diffusers_kl(cfg)
    load_ae_state_dict(ours, ref.state_dict())
    ours, ref = ours.double(), ref.double()  # float64: the comparison sees the structure, not rounding
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        mean, _ = ours.encode(x, sample=False)
        assert mean.shape == (2, cfg.z_channels, 64 // ours.downsample_factor, 64 // ours.downsample_factor)
        # (diagonal_gaussian rounds the moments to float32, as the models run under autocast)
        torch.testing.assert_close(mean.double(), ref.encode(x).latent_dist.mean, atol=1e-5, rtol=0)
        z = torch.randn_like(mean.double())
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-5, rtol=0)


def test_mini_f_presets_follow_compvis_channels():
    """The sweep's presets: f = 2^(levels - 1) and the latent channels of CompVis' KL first stages (f2: 2)."""
    for f, z in [(2, 2), (4, 3), (8, 4), (16, 16), (32, 64)]:
        ae = Autoencoder(AE_PRESETS[f'mini-f{f}'])
        assert (ae.downsample_factor, ae.cfg.z_channels) == (f, z)
    assert (AE_PRESETS['kl-f4'].z_channels, AE_PRESETS['sd'].z_channels, AE_PRESETS['kl-f16'].z_channels,
            AE_PRESETS['kl-f32'].z_channels) == (3, 4, 16, 64)


@pytest.mark.parametrize('preset', ['mini-f32', 'vq-f4-noattn'])
def test_flops_count_attention_where_compvis_puts_it(preset):
    """bench/flops.py's analytic count equals torch's for attention inside levels (mini-f32: levels 4 and 5) and for
    none at all (vq-f4-noattn, at a quarter of its width)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
    from flops import ae_decoder_flops, ae_encoder_flops
    cfg = make_ae_config(preset, dict(ch=32, n_embed=64) if preset.startswith('vq') else None)
    ae = Autoencoder(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # attention as two matmuls, which the counter sees
        z, _ = ae.encode(x, sample=False)
        for fn, flops in [(lambda: ae.encode(x, sample=False), ae_encoder_flops(cfg, 64, 64)),
                          (lambda: ae.decode(z), ae_decoder_flops(cfg, *z.shape[-2:]))]:
            with FlopCounterMode(display=False) as counter:
                fn()
            assert counter.get_total_flops() == flops  # one image


def test_train_ae_ch_mult_and_attn_resolutions_build_compvis_levels(tmp_path):
    """--ch_mult 1,2,2,2 at 16 px gives f8; --attn_resolutions 4 puts attention in the level whose features are 4 px
    (level 2: 16 / 2^2), after each of its ResnetBlocks (1 in the encoder, 2 in the decoder), and nowhere else."""
    run('train_ae.py', *TINY_AE, '--ch_mult', '1,2,2,2', '--attn_resolutions', '4', '--max_steps', '1',
        '--out_dir', tmp_path / 'ae')
    ckpt = load_checkpoint(str(tmp_path / 'ae' / 'ckpt.pt'), 'train_ae.py')
    cfg = ckpt['config']['ae_config']
    assert (tuple(cfg['ch_mult']), tuple(cfg['attn_resolutions']), cfg['resolution']) == ((1, 2, 2, 2), (4,), 16)
    attn = sorted({re.match(r'(.*\.attn\.\d+)\.', k)[1] for k in ckpt['model'] if '.attn.' in k})
    assert attn == ['decoder.up.2.attn.0', 'decoder.up.2.attn.1', 'encoder.down.2.attn.0']
    bad = run('train_ae.py', *TINY_AE, '--attn_resolutions', '5', '--max_steps', '1', '--out_dir', tmp_path / 'bad',
              check=False)
    assert bad.returncode != 0 and 'a size no level has' in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.slow
def test_f_sweep_smoke_measures_every_factor_by_one_definition(tmp_path):
    """reproduce.py --f_sweep --smoke for f1 (pixels) and f16: the f1 LDM trains on the images themselves (its cache holds
    8-bit pixels and their mirror images); each AE's PSNR and bicubic reference are metrics.psnr's of the held-out
    images; the table and figure are written."""
    run('repro/reproduce.py', '--f_sweep', '--smoke', '--image_size', 32, '--f_factors', '1,16', '--out_dir', tmp_path,
        timeout=1800)
    result = json.loads((tmp_path / 'f_sweep.json').read_text())
    f1, f16 = result['factors']
    assert (f1['f'], f1['latent_shape'], f1['compression'], f1['psnr']) == (1, [3, 32, 32], 1.0, PSNR_MAX)
    assert (f16['f'], f16['latent_shape'], f16['compression']) == (16, [16, 2, 2], 48.0)
    from repro.probe import held_out
    x = held_out(str(tmp_path / 'data' / 'heldout'), 32)
    assert f16['bicubic_psnr'] == pytest.approx(psnr(bicubic_at_latent_grid(x, 16), x).mean().item(), rel=1e-6)
    for r in (f1, f16):
        assert np.isfinite(r['probe']['pixel_mse_mean']) and r['train_images_per_second'] > 0
        assert r['sample_images_per_second'] > 0 and 'swd_avg' in r['samples']
    assert set(result['references']) == {'real', 'f16'}
    pixels = np.load(tmp_path / 'f_sweep' / 'ldm_f1' / 'latent_cache' / 'latents.npy').astype(np.float32)  # (N, 2, 3, 32, 32)
    assert np.abs((pixels + 1) * 127.5 - np.round((pixels + 1) * 127.5)).max() < 0.15  # on the 8-bit grid
    np.testing.assert_array_equal(pixels[:, 1], pixels[:, 0, :, :, ::-1])  # each image and its mirror image
    assert (tmp_path / 'f_sweep.png').exists() and '| f16 | 16 x 2 x 2 | 48 |' in (tmp_path / 'f_sweep.md').read_text()
