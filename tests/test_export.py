"""export.py: a small random autoencoder written in each format and read back by the tool that format is for
(diffusers' AutoencoderKL and AutoencoderKLCogVideoX, FLUX.1's parameter names, our own loader) encodes and decodes
as ours does; what a format cannot hold is refused in one sentence."""
import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import export
from model import Autoencoder, make_ae_config
from video_model import VIDEO_AE_PRESETS, VideoAutoencoder
from utils.weights import load_ae_state_dict

diffusers = pytest.importorskip('diffusers')


def random_weights(module, seed):
    """Weights away from the default init (GroupNorm scales != 1, biases != 0), so a mis-mapped tensor cannot hide."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def write_checkpoint(path, preset, overrides, video=False):
    """A train_ae.py checkpoint (its keys as weights.read_autoencoder reads them) whose EMA weights differ from its raw ones.
    -> the autoencoder with the EMA weights."""
    cfg = make_ae_config(preset, overrides, VIDEO_AE_PRESETS if video else None)
    build = VideoAutoencoder if video else Autoencoder
    raw, ema = random_weights(build(cfg), 0), random_weights(build(cfg), 1)
    torch.save({'model': raw.state_dict(), 'ema': ema.state_dict(), 'config': {
        'preset': preset, 'ae_config': asdict(cfg), 'num_frames': 9 if video else 1, 'image_size': 16}}, path)
    return ema


def check_same_coding(ours, theirs, x, latent_mean, decoded):
    """encode (posterior mean) and decode of `theirs` equal ours to 1e-5."""
    with torch.no_grad():
        mean, _ = ours.encode(x, sample=False)
        torch.testing.assert_close(latent_mean(theirs, x), mean, atol=1e-5, rtol=0)
        z = torch.randn_like(mean)
        torch.testing.assert_close(decoded(theirs, z), ours.decode(z), atol=1e-5, rtol=0)
        assert mean.std() > 0.05 and ours.decode(z).std() > 0.05  # not a degenerate output


def diffusers_mean(m, x):
    return m.encode(x).latent_dist.mean


def diffusers_decode(m, z):
    return m.decode(z).sample


def test_diffusers_autoencoderkl_round_trip(tmp_path):
    # the tiny preset: quant convs, GroupNorm(8), z = 4; written with its EMA weights
    ours = write_checkpoint(tmp_path / 'ckpt.pt', 'tiny', None)
    export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', 'diffusers', '--out', str(tmp_path / 'vae')])
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / 'vae').eval()
    assert set(load_file(tmp_path / 'vae' / 'diffusion_pytorch_model.safetensors')) == set(theirs.state_dict())
    assert theirs.config.scaling_factor == 1.0 and theirs.config.shift_factor is None  # no published value for 'tiny'
    check_same_coding(ours, theirs, torch.rand(2, 3, 16, 16) * 2 - 1, diffusers_mean, diffusers_decode)


def flux_parameter_names(ch, ch_mult, num_res_blocks):
    """The state-dict names of FLUX.1's AutoEncoder (black-forest-labs/flux, src/flux/modules/autoencoder.py) for its
    AutoEncoderParams: Encoder/Decoder with down[i].block[j] / up[i].block[j], nin_shortcut where the width changes,
    down[i].downsample / up[i].upsample, mid.block_1, mid.attn_1 (norm, q, k, v, proj_out), mid.block_2, norm_out,
    conv_out; no quant convs."""
    names = []

    def layer(prefix):
        names.extend([f'{prefix}.weight', f'{prefix}.bias'])

    def resnet(prefix, c_in, c_out):
        for n in ('norm1', 'conv1', 'norm2', 'conv2') + (('nin_shortcut',) if c_in != c_out else ()):
            layer(f'{prefix}.{n}')

    def mid(prefix, c):
        resnet(f'{prefix}.mid.block_1', c, c)
        for n in ('norm', 'q', 'k', 'v', 'proj_out'):
            layer(f'{prefix}.mid.attn_1.{n}')
        resnet(f'{prefix}.mid.block_2', c, c)

    widths = [ch * m for m in ch_mult]
    layer('encoder.conv_in')
    c = ch
    for i, w in enumerate(widths):
        for j in range(num_res_blocks):
            resnet(f'encoder.down.{i}.block.{j}', c, w)
            c = w
        if i != len(widths) - 1:
            layer(f'encoder.down.{i}.downsample.conv')
    mid('encoder', c)
    layer('encoder.norm_out'), layer('encoder.conv_out'), layer('decoder.conv_in')
    mid('decoder', c)
    for i in reversed(range(len(widths))):
        for j in range(num_res_blocks + 1):
            resnet(f'decoder.up.{i}.block.{j}', c, widths[i])
            c = widths[i]
        if i != 0:
            layer(f'decoder.up.{i}.upsample.conv')
    layer('decoder.norm_out'), layer('decoder.conv_out')
    return set(names)


def test_flux_layout_round_trip(tmp_path):
    # FLUX.1's structure (no quant convs, z = 16, GroupNorm(32)) at a test's width
    overrides = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
    ours = write_checkpoint(tmp_path / 'ckpt.pt', 'flux', overrides)
    export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', 'flux', '--out', str(tmp_path / 'ae.safetensors')])
    sd = load_file(tmp_path / 'ae.safetensors')
    assert set(sd) == flux_parameter_names(32, (1, 2, 2), 1)
    # our loader reads it back to the same weights
    back = load_ae_state_dict(Autoencoder(make_ae_config('flux', overrides)), sd)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in back.state_dict().items())
    with safe_open(tmp_path / 'ae.safetensors', 'pt') as f:  # FLUX's AutoEncoderParams, which its code needs
        params = json.loads(f.metadata()['ae_params'])
    assert params == dict(resolution=16, in_channels=3, ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1,
                          z_channels=16, scale_factor=0.3611, shift_factor=0.1159)
    # diffusers' own converter of LDM / FLUX files (from_single_file) reads it as we do; its config from our export
    export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', 'diffusers', '--out', str(tmp_path / 'config')])
    theirs = diffusers.AutoencoderKL.from_single_file(str(tmp_path / 'ae.safetensors'), config=str(tmp_path / 'config'),
                                                      local_files_only=True).eval()
    assert theirs.config.scaling_factor == 0.3611 and theirs.config.shift_factor == 0.1159
    check_same_coding(ours, theirs, torch.rand(2, 3, 16, 16) * 2 - 1, diffusers_mean, diffusers_decode)


def test_cogvideox_round_trip(tmp_path):
    # CogVideoX's structure (norms over the chunk, no quant convs, 4x in time) at the video 'tiny' preset's width
    ours = write_checkpoint(tmp_path / 'ckpt.pt', 'tiny', dict(norm='clip', z_channels=4), video=True)
    export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', 'cogvideox', '--out', str(tmp_path / 'vae'),
                 '--scaling_factor', '0.7'])
    theirs = diffusers.AutoencoderKLCogVideoX.from_pretrained(tmp_path / 'vae').eval()
    assert set(load_file(tmp_path / 'vae' / 'diffusion_pytorch_model.safetensors')) == set(theirs.state_dict())
    assert theirs.config.scaling_factor == 0.7 and theirs.config.temporal_compression_ratio == 4
    check_same_coding(ours, theirs, torch.rand(1, 3, 9, 16, 16) * 2 - 1, diffusers_mean, diffusers_decode)


@pytest.mark.parametrize('preset, overrides, video, fmt, message', [
    ('tiny', {'regularizer': 'vq'}, False, 'flux', 'it is a VQ autoencoder'),
    ('tiny', {'regularizer': 'vq', 'use_quant_conv': False}, False, 'diffusers', 'VQModel always has quant convs'),
    ('tiny', None, False, 'flux', "FLUX.1's autoencoder has no quant convs"),
    ('flux', dict(ch=32, ch_mult=(1, 2, 2), norm_groups=8), False, 'flux', 'fixes GroupNorm at 32 groups'),
    ('small', dict(ch_mult=(2, 2)), False, 'diffusers', 'ch_mult must start with 1'),
    ('tiny', None, False, 'cogvideox', 'is an image autoencoder'),
    ('tiny', None, True, 'diffusers', 'is a video autoencoder; write it with --format cogvideox'),
    ('tiny', None, True, 'cogvideox', 'statistics over a whole chunk'),
    ('tiny', dict(norm='clip', chunk_frames=4), True, 'cogvideox', 'encodes 8 frames and decodes 2'),
])
def test_what_a_format_cannot_hold_is_refused(tmp_path, preset, overrides, video, fmt, message):
    write_checkpoint(tmp_path / 'ckpt.pt', preset, overrides, video)
    with pytest.raises(SystemExit, match=message):
        export.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--format', fmt, '--out', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_bad_inputs_are_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match='does not exist'):
        export.main(['--ckpt', str(tmp_path / 'nothing.pt'), '--format', 'flux', '--out', str(tmp_path / 'ae.safetensors')])
    save = {k: v for k, v in Autoencoder(make_ae_config('tiny')).state_dict().items()}
    torch.save(save, tmp_path / 'bare.pt')
    with pytest.raises(SystemExit, match='pass the preset they were made for'):
        export.main(['--ckpt', str(tmp_path / 'bare.pt'), '--format', 'diffusers', '--out', str(tmp_path / 'o')])
    with pytest.raises(SystemExit, match='do not fit this architecture'):
        export.main(['--ckpt', str(tmp_path / 'bare.pt'), '--preset', 'small', '--format', 'diffusers', '--out', str(tmp_path / 'o')])
    export.main(['--ckpt', str(tmp_path / 'bare.pt'), '--preset', 'tiny', '--format', 'diffusers', '--out', str(tmp_path / 'o')])
    with pytest.raises(SystemExit, match='already exists; pass --overwrite'):
        export.main(['--ckpt', str(tmp_path / 'bare.pt'), '--preset', 'tiny', '--format', 'diffusers', '--out', str(tmp_path / 'o')])
