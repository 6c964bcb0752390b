"""The VQ-regularised LDM as CompVis runs it: the diffusion model learns the latent before quantisation and decoding
quantises (VQModelInterface); CompVis' vq-f4, vq-f4-noattn and vq-f8 layouts equal diffusers' VQModel with random
weights; export.py writes a VQModel that diffusers loads; the codebook's perplexity is CompVis' measure_perplexity; and
train_ae.py -> train_ldm.py -> sample.py on a tiny VQ autoencoder trains on pre-quantisation latents and quantises
when it decodes."""
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

import export
from model import AE_PRESETS, Autoencoder, codebook_usage, decode_first_stage, encode_first_stage, make_ae_config
from tests.helpers import TINY_AE, read_log, run
from utils.weights import load_ae_state_dict

diffusers = pytest.importorskip('diffusers')


def diffusers_vqmodel(cfg, seed=0):
    """diffusers' VQModel with the structure of our config `cfg` (CompVis' ddconfig), weights perturbed at random."""
    attn = [cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(len(cfg.ch_mult))]
    torch.manual_seed(seed)
    ref = diffusers.VQModel(
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
        down_block_types=['AttnDownEncoderBlock2D' if a else 'DownEncoderBlock2D' for a in attn],
        up_block_types=['AttnUpDecoderBlock2D' if a else 'UpDecoderBlock2D' for a in reversed(attn)],
        latent_channels=cfg.z_channels, num_vq_embeddings=cfg.n_embed, norm_num_groups=cfg.norm_groups,
        mid_block_add_attention=cfg.attn_type == 'vanilla')
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref.eval()


@pytest.mark.parametrize('preset', ['vq-f4', 'vq-f4-noattn', 'vq-f8'])
def test_compvis_vq_layouts_equal_diffusers_vqmodel(preset):
    """CompVis' structure at a quarter of its width (attention where its config puts it) loads diffusers' VQModel
    weights and encodes and decodes as VQModel does: encode = the latent before quantisation, decode quantises."""
    cfg = make_ae_config(preset, dict(ch=32, n_embed=64))
    ref = diffusers_vqmodel(cfg)
    ours = load_ae_state_dict(Autoencoder(cfg).eval(), ref.state_dict())
    ours, ref = ours.double(), ref.double()  # float64: the comparison sees the structure, not rounding
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        h = encode_first_stage(ours, x)
        torch.testing.assert_close(h, ref.encode(x).latents, atol=1e-5, rtol=0)
        torch.testing.assert_close(decode_first_stage(ours, h), ref.decode(h).sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(decode_first_stage(ours, h, force_not_quantize=True),
                                   ref.decode(h, force_not_quantize=True).sample, atol=1e-5, rtol=0)
        assert (decode_first_stage(ours, h) - ours.decode(h)).abs().mean() > 0.05  # quantising changes the image


def test_compvis_vq_key_layout_and_sizes():
    """The full-size presets have CompVis' parameter names (attention inside level 3 of vq-f8: 256 / 2^3 = 32 px, one
    block after each ResnetBlock, 2 in the encoder and 3 in the decoder; none at all in vq-f4-noattn) and as many
    parameters as diffusers' VQModel with the same config."""
    vq_f8 = Autoencoder(AE_PRESETS['vq-f8']).state_dict()
    for k in ['encoder.down.3.attn.1.q.weight', 'decoder.up.3.attn.2.proj_out.weight', 'encoder.mid.attn_1.k.weight',
              'quant_conv.weight', 'post_quant_conv.weight']:
        assert k in vq_f8, k
    assert vq_f8['quantize.embedding.weight'].shape == (16384, 4)
    assert not any(k.startswith(('encoder.down.2.attn', 'decoder.up.2.attn')) for k in vq_f8)
    assert not any('attn' in k for k in Autoencoder(AE_PRESETS['vq-f4-noattn']).state_dict())
    for preset in ('vq-f4', 'vq-f8'):
        cfg = AE_PRESETS[preset]
        assert sum(v.numel() for v in Autoencoder(cfg).state_dict().values()) == \
            sum(v.numel() for v in diffusers_vqmodel(cfg).state_dict().values())


def test_diffusion_latent_is_before_quantisation_and_decoding_absorbs_quantisation():
    torch.manual_seed(0)
    ae = Autoencoder(make_ae_config('tiny', dict(regularizer='vq', n_embed=16))).eval()
    with torch.no_grad():
        ae.quantize.embedding.weight.normal_()
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        h = encode_first_stage(ae, x)
        z_q, _ = ae.encode(x)
        assert (h - z_q).abs().max() > 0.1  # not the quantised latent
        torch.testing.assert_close(ae.quantize(h)[0], z_q)  # whose quantisation it is
        # decoding quantises: h moved halfway to its codes (Voronoi cells are convex: the nearest codes stay the same)
        # decodes to the same image
        moved = h + 0.5 * (z_q - h)
        assert torch.equal(ae.quantize.nearest(moved), ae.quantize.nearest(h))
        # (the straight-through z + (z_q - z) rounds z_q in its last float bits, which the decoder carries: 1e-5)
        torch.testing.assert_close(decode_first_stage(ae, moved), ae.decode(z_q), atol=1e-5, rtol=0)


def test_codebook_usage_is_compvis_measure_perplexity():
    """perplexity = exp(entropy of the code shares): n for n codes used equally, 1 for one code; usage counts codes."""
    assert codebook_usage(torch.arange(8).repeat(3), 16) == pytest.approx((8.0, 8))
    assert codebook_usage(torch.full((5, 2), 3), 16) == pytest.approx((1.0, 1))
    idx = torch.tensor([0, 0, 0, 1])  # shares 3/4, 1/4
    p = np.array([0.75, 0.25])
    assert codebook_usage(idx, 4) == pytest.approx((np.exp(-(p * np.log(p)).sum()), 2))


def test_export_writes_a_vqmodel_diffusers_loads(tmp_path):
    cfg = make_ae_config('tiny', dict(regularizer='vq', n_embed=32, attn_resolutions=(8,), resolution=16))
    ours = Autoencoder(cfg).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert any('.attn.' in k for k in ours.state_dict())  # level 1 (16 / 2 = 8 px) has attention
    torch.save({'model': ours.state_dict(), 'config': {'preset': 'tiny', 'ae_config': asdict(cfg), 'image_size': 16}},
               tmp_path / 'ckpt.pt')
    export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', 'diffusers', '--out', str(tmp_path / 'vq')])
    theirs = diffusers.VQModel.from_pretrained(tmp_path / 'vq').eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        h = encode_first_stage(ours, x)
        torch.testing.assert_close(theirs.encode(x).latents, h, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.decode(h).sample, decode_first_stage(ours, h), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_vq_train_ae_ldm_sample_trains_before_and_decodes_after_quantisation(tmp_path):
    """train_ae.py (tiny VQ, 2 steps) logs the codebook's perplexity; train_ldm.py caches and learns latents that are not
    codebook rows (before quantisation); sample.py's images are the decodings of the quantised sample latents."""
    run('train_ae.py', *TINY_AE, '--regularizer', 'vq', '--n_embed', '16', '--max_steps', '2', '--out_dir', tmp_path / 'ae')
    rows = [r for r in read_log(tmp_path / 'ae') if 'perplexity' in r]
    assert rows and all(1 <= r['perplexity'] <= r['codebook_usage'] <= 16 for r in rows)
    ae_path = str(tmp_path / 'ae' / 'ckpt.pt')
    run('train_ldm.py', '--ae', ae_path, '--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device',
        'cpu', '--max_steps', '2', '--num_samples', '4', '--sample_steps', '2', '--eval_interval', '2',
        '--ckpt_interval', '2', '--cache_latents', tmp_path / 'cache', '--cache_size', '8', '--out_dir', tmp_path / 'ldm')
    from repro.probe import load_ldm
    model, process, config, shift, scale, ae = load_ldm(str(tmp_path / 'ldm' / 'ema.pt'))
    assert config['vq_latents'] == 'pre_quantization'
    cached = torch.from_numpy(np.load(tmp_path / 'cache' / 'latents.npy').astype(np.float32)).flatten(0, 1)  # (2N, C, h, w)
    with torch.no_grad():
        z_q = ae.quantize(cached)[0]
    assert ((cached - z_q).pow(2).sum(1) > 1e-4).float().mean() > 0.9  # nearly no cached vector is a codebook row
    run('sample.py', '--ckpt', tmp_path / 'ldm' / 'ema.pt', '--num_samples', '2', '--sampler', 'ddim', '--steps', '2',
        '--spacing', 'ddim', '--device', 'cpu', '--out_dir', tmp_path / 'samples')
    samples = np.load(tmp_path / 'samples' / 'samples.npz')['arr_0'].astype(np.float32)  # (2, 16, 16, 3)
    # the same two samples in this process: sample.py's noise of (seed 0, i) and its deterministic DDIM
    from diffusion import randn, sample_generators
    from evaluation.metrics import to_uint8
    with torch.no_grad():
        x_T = randn((2, *cached.shape[1:]), sample_generators(0, [0, 1]), 'cpu')
        z = process.ddim_sample(lambda x, t: model(x, t, None), x_T, steps=2, eta=0.0,
                                generator=sample_generators(0, [0, 1]), spacing='ddim') / scale + shift
        decoded = {q: to_uint8(decode_first_stage(ae, z, force_not_quantize=not q)).permute(0, 2, 3, 1).float().numpy()
                   for q in (True, False)}
    assert np.abs(samples - decoded[True]).mean() < 0.5 < np.abs(samples - decoded[False]).mean()
    # an LDM of an earlier train_ldm.py learned the quantised latents (its config has no 'vq_latents'): sample.py
    # decodes its latents as they are, as it did, and train_ldm.py refuses to resume it on other latents
    shutil.copytree(tmp_path / 'ldm', tmp_path / 'old')
    for name in ('ckpt.pt', 'ema.pt'):
        ckpt = torch.load(tmp_path / 'old' / name, weights_only=True)
        del ckpt['config']['vq_latents']
        torch.save(ckpt, tmp_path / 'old' / name)
    run('sample.py', '--ckpt', tmp_path / 'old' / 'ema.pt', '--num_samples', '2', '--sampler', 'ddim', '--steps', '2',
        '--spacing', 'ddim', '--device', 'cpu', '--out_dir', tmp_path / 'old_samples')
    samples = np.load(tmp_path / 'old_samples' / 'samples.npz')['arr_0'].astype(np.float32)
    assert np.abs(samples - decoded[False]).mean() < 0.5 < np.abs(samples - decoded[True]).mean()
    refused = run('train_ldm.py', '--ae', ae_path, '--image_size', '16', '--batch_size', '4', '--num_workers', '0',
                  '--device', 'cpu', '--max_steps', '3', '--out_dir', tmp_path / 'old', '--resume', check=False)
    assert refused.returncode != 0 and 'trained on the quantised latents' in refused.stderr
    assert 'Traceback' not in refused.stderr
