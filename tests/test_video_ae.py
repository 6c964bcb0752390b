"""The causal 3D video autoencoder: equality with diffusers' CogVideoX VAE, causality, chunking, images as 1 frame."""
import pytest
import torch

from video_model import VideoAEConfig, VideoAutoencoder
from utils.weights import load_ae_state_dict

SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4)  # CogVideoX's layout with 3 levels: f4, 4x time


def test_loads_diffusers_cogvideox_vae_and_matches_it():
    diffusers = pytest.importorskip('diffusers')
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLCogVideoX(
        down_block_types=('CogVideoXDownBlock3D',) * 3, up_block_types=('CogVideoXUpBlock3D',) * 3,
        block_out_channels=(32, 64, 64), latent_channels=4, layers_per_block=1, temporal_compression_ratio=4).eval()
    with torch.no_grad():  # move every norm and bias off its default init, so a mis-mapped key cannot hide
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = load_ae_state_dict(VideoAutoencoder(VideoAEConfig(**SMALL, norm='clip')), ref.state_dict()).eval()
    for T in (9, 17):  # 17 frames: two encoder chunks (9 + 8) and two decoder chunks (3 + 2), with conv caches
        x = torch.rand(1, 3, T, 16, 16) * 2 - 1
        with torch.no_grad():
            z_ref = ref.encode(x).latent_dist.mean
            x_ref = ref.decode(z_ref).sample
            z, _ = ours.encode(x, sample=False)
            x_rec = ours.decode(z)
        assert z.shape == (1, 4, 1 + (T - 1) // 4, 4, 4) and x_rec.shape == x.shape
        assert (z - z_ref).abs().max() < 1e-4 and (x_rec - x_ref).abs().max() < 1e-4
        assert x_ref.std() > 0.1  # not a degenerate output


def test_latent_frame_depends_on_no_future_frame():
    torch.manual_seed(0)
    ae = VideoAutoencoder(VideoAEConfig(**SMALL, norm='frame')).eval()
    x = torch.rand(1, 3, 13, 8, 8) * 2 - 1
    with torch.no_grad():
        z, _ = ae.encode(x, sample=False)  # (1, 4, 4, 2, 2): latent frame j sees input frames 0 .. 4j
        x_rec = ae.decode(z)  # decoded in chunks of 3 + 1 latent frames
        assert x_rec.shape == x.shape
        for j in range(1, 4):
            x2 = x.clone()
            x2[:, :, 4 * j - 3:] = torch.rand_like(x2[:, :, 4 * j - 3:])  # change frames after 4(j-1)
            z2, _ = ae.encode(x2, sample=False)
            assert torch.allclose(z2[:, :, :j], z[:, :, :j], atol=1e-6) and not torch.allclose(z2[:, :, j], z[:, :, j])
            z3 = z.clone()
            z3[:, :, j:] = torch.randn_like(z3[:, :, j:])  # decoder: frames before 4j - 3 see no latent from j on
            x3 = ae.decode(z3)
            assert torch.allclose(x3[:, :, :4 * j - 3], x_rec[:, :, :4 * j - 3], atol=1e-6)
            assert not torch.allclose(x3[:, :, 4 * j - 3:], x_rec[:, :, 4 * j - 3:])


def test_chunked_coding_equals_whole_clip_with_per_frame_norms():
    torch.manual_seed(0)
    whole = VideoAutoencoder(VideoAEConfig(**SMALL, chunk_frames=16, chunk_latents=4)).eval()
    chunked = VideoAutoencoder(VideoAEConfig(**SMALL, chunk_frames=4, chunk_latents=1)).eval()
    chunked.load_state_dict(whole.state_dict())
    x = torch.rand(1, 3, 17, 8, 8) * 2 - 1
    with torch.no_grad():
        z, _ = whole.encode(x, sample=False)
        z_c, _ = chunked.encode(x, sample=False)  # five chunks of 1 + 4 + 4 + 4 + 4 frames
        assert (z - z_c).abs().max() < 1e-5
        assert (whole.decode(z) - chunked.decode(z)).abs().max() < 1e-5


def test_an_image_is_a_one_frame_video():
    torch.manual_seed(0)
    ae = VideoAutoencoder(VideoAEConfig(**SMALL)).eval()
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z, kl = ae.encode(img, sample=False)
        z_v, kl_v = ae.encode(img[:, :, None], sample=False)
        assert z.shape == (2, 4, 4, 4) and torch.equal(z, z_v[:, :, 0]) and kl == kl_v
        assert torch.equal(ae.decode(z), ae.decode(z_v)[:, :, 0]) and ae.decode(z).shape == img.shape
    with pytest.raises(ValueError, match='1 \\+ 4k frames'):
        ae.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match='do not fit'):
        load_ae_state_dict(ae, {'encoder.conv_in.conv.weight': torch.zeros(1)})


def test_temporal_spectrum_is_offset_free_scale_free_and_sees_slow_change():
    from utils.spectral import temporal_amplitude, temporal_spectrum, temporal_hf_ratio
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 3, 17, 8, 8, generator=g)
    slow = noise.cumsum(dim=2)  # a random walk in time: a 1/f^2 power spectrum, like natural video
    a, b = torch.tensor([3.0, -0.5, 20.0])[None, :, None, None, None], torch.tensor([5.0, -7.0, 100.0])[None, :, None, None, None]
    for x in (noise, slow):  # a per-channel affine map of the latent changes nothing, neither does channel order
        ref = temporal_spectrum(temporal_amplitude(x))
        assert torch.allclose(temporal_spectrum(temporal_amplitude(a * x + b)), ref, atol=1e-9)
        assert temporal_hf_ratio(temporal_amplitude(x[:, [2, 0, 1]])) == pytest.approx(temporal_hf_ratio(temporal_amplitude(x)))
    assert temporal_hf_ratio(temporal_amplitude(noise)) == pytest.approx(1.0, abs=0.05)  # white in time: flat
    assert temporal_hf_ratio(temporal_amplitude(slow)) < 0.5


def test_spectrum_cli_on_a_video_autoencoder(tmp_path):
    import json
    from dataclasses import asdict
    from evaluation import metrics
    import spectrum
    from utils import spectral
    from video_model import VIDEO_AE_PRESETS
    cfg = VIDEO_AE_PRESETS['tiny']
    torch.save({'model': VideoAutoencoder(cfg).state_dict(), 'config': {'preset': 'tiny', 'ae_config': asdict(cfg)}},
               tmp_path / 'ckpt.pt')
    spectrum.main(['--ckpt', str(tmp_path / 'ckpt.pt'), '--label', 'ae', '--num_frames', '9', '--image_size', '32',
                   '--num_images', '2', '--batch_size', '2', '--device', 'cpu', '--out_dir', str(tmp_path / 'out')])
    r = json.load(open(tmp_path / 'out' / 'spectrum_video.json'))['video']
    assert set(r) == {'ae', 'RGB for ae', 'RGB full'}
    assert len(r['ae']['spatial_hf_share_per_frame']) == 3 and len(r['ae']['temporal_spectrum']) == 2  # 9 -> 3 frames
    assert len(r['RGB full']['temporal_spectrum']) == 8 and 0 < r['RGB full']['temporal_hf_ratio'] < 1
    # every number is what its definition gives on the same held-out clips, recomputed here from the checkpoint
    from utils.data import DeadLeaves
    from model import to_frames
    from utils.weights import load_autoencoder
    clips = torch.stack([DeadLeaves(32, seed=0, train=False, num_frames=9)[i][0] for i in range(2)])  # (2, 3, 9, 32, 32)
    with torch.no_grad():
        ae = load_autoencoder(str(tmp_path / 'ckpt.pt'), video=True)
        z, _ = ae.encode(clips, sample=False)  # (2, 16, 3, 8, 8)
        frames, rec = to_frames(clips), to_frames(ae.decode(z).clamp(-1, 1))
    rgb = metrics.rgb_on_latent_grid(clips, z.shape, temporal_levels=2)  # (2, 3, 3, 8, 8)
    expected = {'reconstruction_psnr': metrics.psnr(rec, frames).mean().item(),  # every frame of every clip
                'bicubic_psnr': metrics.psnr(metrics.bicubic_at_latent_grid(frames, 4), frames).mean().item(),
                'hf_share': spectral.hf_share(z), 'temporal_hf_ratio': spectral.temporal_hf_ratio(spectral.temporal_amplitude(z))}
    assert {k: r['ae'][k] for k in expected} == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}
    assert r['RGB for ae']['hf_share'] == pytest.approx(spectral.hf_share(rgb), rel=1e-6)
    assert r['RGB for ae']['temporal_hf_ratio'] == pytest.approx(spectral.temporal_hf_ratio(spectral.temporal_amplitude(rgb)), rel=1e-6)
    assert r['RGB full']['temporal_hf_ratio'] == pytest.approx(spectral.temporal_hf_ratio(spectral.temporal_amplitude(clips)), rel=1e-6)
    assert r['ae']['spatial_hf_share_per_frame'] == pytest.approx([spectral.hf_share(z[:, :, t]) for t in range(3)], rel=1e-6)


def test_temporal_hf_energy_share_is_invariant_to_an_orthogonal_mixing_of_channels_and_orders_slow_and_fast():
    """The temporal energy-weighted HF share, like the spatial one, sees through a rotation of the channels (which a
    scalar-normalised LDM cannot see), a common scale and per-channel offsets; white noise in time scores the share of
    its upper frequencies, a slowly changing signal far less."""
    from utils.spectral import temporal_energy, temporal_hf_energy_share
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 9, 4, 4, generator=g, dtype=torch.float64)
    slow = torch.cumsum(z, dim=2)  # a random walk: energy at low temporal frequencies
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    for x in (z, slow):
        mixed = 3.0 * torch.einsum('dc,bcthw->bdthw', q, x) + torch.randn(1, 6, 1, 1, 1, generator=g, dtype=torch.float64)
        assert temporal_hf_energy_share(temporal_energy(mixed)) == pytest.approx(
            temporal_hf_energy_share(temporal_energy(x)), rel=1e-9)
    white = temporal_hf_energy_share(temporal_energy(torch.randn(64, 4, 9, 8, 8, generator=g)))
    assert white == pytest.approx(4 / 8, abs=0.03)  # k = 5..8 of k = 1..8 for T = 9
    assert temporal_hf_energy_share(temporal_energy(slow)) < 0.5 * white


def test_train_ae_and_spectrum_measure_bicubic_on_clips_by_the_one_definition(tmp_path):
    """train_ae.py's val_psnr_bicubic and spectrum.py's bicubic_psnr are the same number on the same clips: each clip's
    mean frame PSNR of metrics.bicubic_at_latent_grid, averaged over clips (whatever the batch split)."""
    import spectrum
    from utils.data import DeadLeaves, random_subset
    from evaluation.metrics import bicubic_at_latent_grid, psnr
    from tests.helpers import read_log, run
    from video_model import VIDEO_AE_PRESETS, VideoAutoencoder
    run('train_ae.py', '--num_frames', 9, '--image_size', 32, '--max_steps', 1, '--num_eval', 3, '--eval_interval', 1,
        '--batch_size', 1, '--num_workers', 0, '--lpips_weight', 0, '--disc_weight', 0, '--out_dir', tmp_path)
    logged = [r for r in read_log(tmp_path) if 'val_psnr_bicubic' in r][-1]['val_psnr_bicubic']
    held = DeadLeaves(32, seed=0, train=False, num_frames=9)
    x = torch.stack([held[i][0] for i in random_subset(held, 3, 0)])
    frames = torch.stack([psnr(bicubic_at_latent_grid(x[:, :, t], 4), x[:, :, t]) for t in range(9)], 1)
    assert logged == pytest.approx(frames.mean().item(), abs=1e-5)
    ae = VideoAutoencoder(VIDEO_AE_PRESETS['mini']).eval()
    class Clips(torch.utils.data.Dataset):  # the same clips, as a data.py dataset
        def __len__(self):
            return len(x)

        def load(self, i):
            return x[i], 0, 0
    dataset = Clips()
    result = spectrum.analyse_video(dataset, {'ae': ae}, 3, batch_size=2, device=torch.device('cpu'))
    assert result['video']['ae']['bicubic_psnr'] == pytest.approx(logged, abs=1e-5)
