"""Specification of the video parts: VideoDiT is the image DiT when T = 1 (an image checkpoint loads into it), its
factorised attention attends exactly within frames / across frames, and its (pt, p, p) patches keep frames apart.
FVD's I3D equals cd-fvd's (piergiaj's port) under identical random weights, with the same preprocessing; the video
SWD moves when motion is broken or frames are blurred; eval_fid.py scores video .npz files; the video writers keep
frames in order."""
import numpy as np
import pytest
import torch

import eval_fid
from evaluation import i3d
from evaluation import metrics
from evaluation import swd
from denoiser import DIT_PRESETS, VIDEO_DIT_PRESETS, DiT, VideoDiT, build_backbone, frame_attention, get_1d_sincos_pos_embed
from tests.test_backbones import perturbed

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3)


def test_image_dit_checkpoint_loads_into_video_dit_and_computes_the_same_function_at_one_frame():
    torch.manual_seed(0)
    image = perturbed(DiT(**TINY))
    video = VideoDiT(num_frames=1, **TINY).eval()
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=True)  # same names, same shapes
    assert not missing and not unexpected
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 3])  # 3: the null class
    with torch.no_grad():
        assert torch.allclose(video(x[:, :, None], t, y)[:, :, 0], image(x, t, y), atol=1e-6)


def test_temporal_embedding_is_sincos_shifted_to_zero_at_frame_zero():
    m = VideoDiT(num_frames=5, **TINY)
    e = get_1d_sincos_pos_embed(32, torch.arange(5))
    assert torch.allclose(m.temporal_embed[0, :, 0], (e - e[0]).float())
    assert torch.equal(m.temporal_embed[0, 0], torch.zeros(1, 32))
    assert "temporal_embed" not in m.state_dict()  # fixed, so image checkpoints need not carry it


def test_frame_attention_groups_tokens_within_frames_and_across_frames():
    torch.manual_seed(0)
    attn = perturbed(VideoDiT(num_frames=3, **TINY)).blocks[0].attn
    B, T, S, D = 2, 3, 4, 32
    x = torch.randn(B, T * S, D)
    frames = x.view(B, T, S, D)
    with torch.no_grad():
        full = frame_attention(attn, x, T, "full")
        spatial = frame_attention(attn, x, T, "spatial").view(B, T, S, D)
        temporal = frame_attention(attn, x, T, "temporal").view(B, T, S, D)
        assert torch.allclose(full, attn(x))
        for f in range(T):  # spatial: each frame alone
            assert torch.allclose(spatial[:, f], attn(frames[:, f]), atol=1e-6)
        for s in range(S):  # temporal: each patch position through time alone
            assert torch.allclose(temporal[:, :, s], attn(frames[:, :, s]), atol=1e-6)


@pytest.mark.parametrize("attention, pt, mixes", [("full", 1, True), ("alternating", 1, False),
                                                  ("alternating", 2, False)])
def test_a_frame_chunk_sees_other_frames_only_through_attention_across_frames(attention, pt, mixes):
    # depth 1: with 'alternating' the only block is spatial, so the first pt output frames (one token chunk) depend on
    # the first pt input frames alone; full attention mixes them with every frame. Checks the (pt, p, p) fold/unfold.
    torch.manual_seed(0)
    m = perturbed(VideoDiT(num_frames=4, temporal_patch_size=pt, attention=attention, **dict(TINY, depth=1)))
    x, t, y = torch.randn(1, 4, 4, 8, 8), torch.tensor([10]), torch.tensor([1])
    x2 = x.clone()
    x2[:, :, pt:] += torch.randn_like(x2[:, :, pt:])  # change every frame after the first chunk
    with torch.no_grad():
        out, out2 = m(x, t, y), m(x2, t, y)
    assert out.shape == (1, 8, 4, 8, 8)  # learn_sigma: eps and variance channels
    assert (out[:, :, pt:] - out2[:, :, pt:]).abs().max() > 1e-3
    assert ((out[:, :, :pt] - out2[:, :, :pt]).abs().max() > 1e-3) == mixes


def test_every_image_preset_has_a_video_preset_with_the_same_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        for name, preset in DIT_PRESETS.items():
            image = preset(input_size=16, num_classes=10)
            video = VIDEO_DIT_PRESETS[name](input_size=16, num_frames=5, num_classes=10)
            assert {k: v.shape for k, v in image.state_dict().items()} == \
                   {k: v.shape for k, v in video.state_dict().items()}
    m = build_backbone("dit", "tiny", 8, 4, num_classes=0, learn_sigma=False, num_frames=5)
    assert isinstance(m, VideoDiT) and m(torch.randn(1, 4, 5, 8, 8), torch.tensor([1])).shape == (1, 4, 5, 8, 8)
    with pytest.raises(ValueError, match="video latents"):
        build_backbone("unet", "ldm-32", 8, 4, 0, False, num_frames=5)
    with pytest.raises(ValueError, match="5-frame latents"):
        m(torch.randn(1, 4, 4, 8, 8), torch.tensor([1]))


@pytest.mark.slow
def test_i3d_features_equal_cd_fvd_i3d_with_identical_random_weights(tmp_path):
    pytorch_i3d = pytest.importorskip("cdfvd.third_party.i3d.pytorch_i3d")
    torch.manual_seed(0)
    ref = pytorch_i3d.InceptionI3d(400, in_channels=3)
    with torch.no_grad():  # He init and perturbed BatchNorm statistics keep the 400 logits O(1): a real comparison
        for m in ref.modules():
            if isinstance(m, torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.8, 1.25)
                m.weight.uniform_(0.8, 1.2), m.bias.normal_(0, 0.1)
    torch.save(ref.state_dict(), tmp_path / i3d.I3D_WEIGHTS_FILE)
    ours = i3d.load_i3d(str(tmp_path / i3d.I3D_WEIGHTS_FILE))  # the same names: loads strictly
    x = torch.rand(1, 3, i3d.FVD_NUM_FRAMES, 224, 224) * 2 - 1
    with torch.no_grad():
        expected = ref.eval()(x)
    got = ours(x)
    assert got.shape == expected.shape == (1, 400) and expected.std() > 0.5
    assert (got - expected).abs().max() < 1e-5


def test_fvd_preprocessing_equals_cd_fvd_and_crops_the_centre_of_wide_videos():
    i3d_utils = pytest.importorskip("cdfvd.third_party.i3d.utils")
    torch.manual_seed(0)
    videos = torch.randint(0, 256, (2, 17, 24, 24, 3), dtype=torch.uint8)  # (B, T, H, W, 3), one frame too many
    expected = i3d_utils.preprocess_i3d(videos[:, :16].numpy())  # (B, 3, 16, 224, 224) in [-1, 1]
    got = i3d.fvd_preprocess(videos.permute(0, 1, 4, 2, 3).float() / 127.5 - 1)
    assert got.shape == expected.shape == (2, 3, 16, 224, 224)
    assert (got - expected).abs().max() < 1e-5
    wide = torch.cat([torch.full((1, 16, 3, 24, 12), -1.0), videos[:1, :16].permute(0, 1, 4, 2, 3).float() / 127.5 - 1,
                      torch.full((1, 16, 3, 24, 12), 1.0)], dim=-1)  # 24 x 48: the square video between two bars
    inner = (slice(None),) * 4 + (slice(8, -8),)  # away from where the bars bleed in through the bilinear kernel
    assert (i3d.fvd_preprocess(wide)[inner] - got[:1][inner]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="16-frame clips"):
        i3d.fvd_preprocess(torch.zeros(1, 8, 3, 24, 24))


def test_i3d_weights_missing_offline_is_one_sentence_naming_the_file_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(i3d, "I3D_WEIGHTS_URL", "file:///nonexistent/" + i3d.I3D_WEIGHTS_FILE)
    for path in (None, str(tmp_path / "nope.pt")):
        with pytest.raises(FileNotFoundError) as e:
            i3d.load_i3d(path)
        msg = str(e.value)
        assert i3d.I3D_WEIGHTS_FILE in msg and "--i3d_weights" in msg and msg.count(". ") == 0


def moving_crops(first_index, n=12, frames=6, size=32, seed=0):
    """n videos (n, T, 3, size, size) in [-1, 1]: a size x size window gliding over a 2 * size px dead-leaves image at
    a random constant velocity of 1 to 3 px per frame along each axis, so frames share content and move smoothly."""
    from utils.data import dead_leaves
    rng = torch.Generator().manual_seed(seed + first_index)
    videos = []
    for i in range(first_index, first_index + n):
        image = torch.from_numpy(dead_leaves(seed, i, 2 * size)).permute(2, 0, 1) * 2 - 1  # (3, 2 size, 2 size)
        v = torch.randint(1, 4, (2,), generator=rng) * (torch.randint(0, 2, (2,), generator=rng) * 2 - 1)
        y0, x0 = size // 2 - frames // 2 * v[0], size // 2 - frames // 2 * v[1]  # the window stays inside
        videos.append(torch.stack([image[:, y0 + t * v[0]:y0 + t * v[0] + size, x0 + t * v[1]:x0 + t * v[1] + size]
                                   for t in range(frames)]))
    return torch.stack(videos)


@pytest.mark.slow
def test_video_swd_moves_when_motion_is_broken_and_when_frames_are_blurred():
    real, other = moving_crops(0), moving_crops(1000)  # two samples of one distribution
    base = swd.video_swd(real, other)
    assert swd.video_swd(real[:2], real[:2]) == {"swd_frames": 0.0, "swd_motion": 0.0, "video_swd": 0.0}
    shuffled = other[:, [0, 3, 1, 4, 2, 5]]  # no two neighbours stay neighbours
    frozen = other[:, :1].expand_as(other)
    for name, broken in (("shuffled", shuffled), ("frozen", frozen)):  # the same frames (or a subset), wrong motion
        d = swd.video_swd(real, broken)
        assert d["swd_motion"] > 2 * base["swd_motion"], (name, d, base)
        assert d["swd_frames"] < 1.1 * base["swd_frames"], (name, d, base)  # appearance alone does not change
    blurred = swd._binomial_blur(swd._binomial_blur(other.flatten(0, 1))).view_as(other)
    d = swd.video_swd(real, blurred)
    assert d["swd_frames"] > 1.25 * base["swd_frames"] and d["video_swd"] > 2 * base["video_swd"], (d, base)
    with pytest.raises(ValueError, match="one shape"):
        swd.video_swd(real, other[:, :5])


def save_videos(path, videos):
    """(N, T, 3, H, W) in [-1, 1] -> a samples .npz of uint8 (N, T, H, W, 3), as sample.py writes."""
    np.savez(path, arr_0=metrics.to_uint8(videos).permute(0, 1, 3, 4, 2).numpy())
    return str(path)


def test_cli_scores_videos_with_the_video_swd_and_says_why_fvd_is_skipped_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(i3d, "I3D_WEIGHTS_URL", "file:///nonexistent/" + i3d.I3D_WEIGHTS_FILE)
    real, fake = moving_crops(0, n=4), moving_crops(1000, n=4)
    real_npz, fake_npz = save_videos(tmp_path / "real.npz", real), save_videos(tmp_path / "fake.npz", fake)
    results, skipped = eval_fid.main(["--fake", fake_npz, "--real", real_npz, "--device", "cpu"])
    assert i3d.I3D_WEIGHTS_FILE in skipped["fvd"] and "--i3d_weights" in skipped["fvd"]
    expected = swd.video_swd(metrics.to_uint8(real), metrics.to_uint8(fake))  # the CLI reads uint8 files
    assert results["num_fake"] == results["swd_videos"] == 4
    assert all(abs(results[k] - expected[k]) < 1e-6 * expected[k] for k in expected)


@pytest.mark.slow
def test_cli_saves_fvd_statistics_once_and_scores_against_them(tmp_path):
    torch.manual_seed(0)
    torch.save(i3d.I3D().state_dict(), tmp_path / "i3d.pt")  # random weights: the plumbing, not the numbers
    videos = torch.rand(2, i3d.FVD_NUM_FRAMES, 3, 16, 16) * 2 - 1
    npz, stats = save_videos(tmp_path / "real.npz", videos), str(tmp_path / "fvd_ref.npz")
    flags = ["--i3d_weights", str(tmp_path / "i3d.pt"), "--device", "cpu"]
    eval_fid.main(["--real", npz, "--save_stats", stats] + flags)
    with np.load(stats) as f:
        assert f["mu"].shape == (400,) and f["sigma"].shape == (400, 400)
    results, skipped = eval_fid.main(["--fake", stats, "--real", stats,  # 400-d statistics are scored as video
                                      "--out", str(tmp_path / "scores.json")])
    assert abs(results["fvd"]) < 1e-6 and "video_swd" in skipped and "fid" not in results


def test_video_writers_keep_frames_in_order_and_the_preview_shows_first_and_middle_frames(tmp_path):
    import av
    from PIL import Image
    from utils.common import save_video_grid, tile_videos, write_mp4
    T, H, W = 6, 18, 23  # odd width: padded to even for yuv420p
    ramp = np.linspace(0, 1, W)[None, None, :, None] * np.linspace(0.5, 1, H)[None, :, None, None]
    videos = np.stack([(ramp * (40 + 30 * np.arange(T))[:, None, None, None] + [0, 20 * i, 60]).astype(np.uint8)
                       for i in range(3)])  # (3, T, H, W, 3): smooth frames that brighten over time
    write_mp4(videos[0], str(tmp_path / "v.mp4"), fps=4)
    with av.open(str(tmp_path / "v.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (T, H, W + 1, 3)
    assert np.abs(decoded[:, :, :W].astype(float) - videos[0]).mean() < 3  # near-lossless, frames in order
    assert np.abs(decoded[:, :, W].astype(float) - videos[0][:, :, -1]).mean() < 3  # padding: the last column
    grid = tile_videos(videos, nrow=2)
    assert grid.shape == (T, 2 * H + 2, 2 * W + 2, 3)
    assert np.array_equal(grid[:, H + 2:, :W], videos[2]) and not grid[:, H + 2:, W + 2:].any()  # empty cell black
    mp4, gif, png = save_video_grid(videos, str(tmp_path), fps=4)
    column = tile_videos(videos, nrow=1)  # int(sqrt(3)) = 1 clip per row
    frames = np.asarray(Image.open(png).convert("RGB"))  # PNG: exact
    assert np.array_equal(frames[:3 * H + 4], column[0]) and np.array_equal(frames[3 * H + 6:], column[T // 2])
    with Image.open(gif) as g:
        assert g.n_frames == T and g.size == (W, 3 * H + 4)
    with av.open(mp4) as container:
        assert sum(1 for _ in container.decode(video=0)) == T
