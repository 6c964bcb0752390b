"""Datasets: the embedded dead-leaves stream and image folders with awkward files."""
import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import DeadLeaves, ImageFolder, make_dataset, random_subset
from utils.common import Loader, Dist
from tests.helpers import run, train_rows, TINY_AE


def test_dead_leaves_is_deterministic_per_seed_and_index():
    a, b = DeadLeaves(32, seed=3), DeadLeaves(32, seed=3)
    assert torch.equal(a[5][0], b[5][0])
    assert not torch.equal(a[5][0], a[6][0])
    assert not torch.equal(a[5][0], DeadLeaves(32, seed=4)[5][0])
    assert not torch.equal(a[5][0], DeadLeaves(32, seed=3, train=False)[5][0])  # held-out stream is disjoint
    x = a[0][0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_dead_leaves_spectrum_decays_like_a_photo():
    """Natural images: block-DCT amplitude falls by more than 10x from the first AC coefficient to the last."""
    from utils.spectral import dct_spectrum
    x = torch.stack([DeadLeaves(64, seed=0)[i][0] for i in range(8)])
    profile = dct_spectrum(x).mean(0)  # (64,) DC-normalised, zigzag order
    assert profile[1] > 10 * profile[63]
    assert (profile[1:8].mean() > profile[8:32].mean() > profile[32:].mean())
    noise = dct_spectrum(torch.rand(8, 3, 64, 64)).mean(0)  # white noise is flat: no such decay
    assert noise[1] < 2 * noise[63]


def _save(img, path):
    img.save(path)
    return path


def test_image_folder_handles_awkward_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    _save(Image.fromarray(rgb), tmp_path / 'a_rgb.png')
    _save(Image.fromarray(rgb[..., 0]), tmp_path / 'b_gray.png')
    _save(Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)])), tmp_path / 'c_rgba.png')
    _save(Image.fromarray(rgb).convert('P', palette=Image.ADAPTIVE), tmp_path / 'd_palette.png')
    _save(Image.fromarray((rng.integers(0, 65536, (40, 50))).astype(np.uint16)), tmp_path / 'e_16bit.png')
    data = (tmp_path / 'a_rgb.png').read_bytes()
    (tmp_path / 'f_truncated.png').write_bytes(data[:len(data) // 2])
    (tmp_path / 'g_not_an_image.jpg').write_bytes(b'hello')
    ds = ImageFolder(str(tmp_path), 16)
    assert len(ds) == 7 and ds.num_classes == 0
    skipped = 0
    for i in range(len(ds)):
        x, y, s = ds.load((i, 123))
        assert x.shape == (3, 16, 16) and torch.isfinite(x).all() and -1 <= x.min() and x.max() <= 1
        skipped += s
    assert skipped == 2  # f and g are unreadable: each is replaced by a readable neighbour and counted once
    sixteen = ds[4][0]  # 16-bit grey is rescaled, not clipped to white
    assert sixteen.std() > 0.1 and sixteen.max() < 1


def test_image_folder_labels_from_subfolders(tmp_path):
    for c in ('cat', 'dog'):
        (tmp_path / c).mkdir()
        for k in range(2):
            Image.new('RGB', (20, 20), (k * 100, 0, 0)).save(tmp_path / c / f'{k}.jpg')
    ds = ImageFolder(str(tmp_path), 8)
    assert ds.classes == ['cat', 'dog'] and sorted(ds[i][1] for i in range(4)) == [0, 0, 1, 1]


def test_random_crop_gives_distinct_crops_deterministically(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(tmp_path / 'p.png')
    ds = make_dataset(str(tmp_path), 32, random_crop=True)
    crops = [ds.load((0, seed))[0] for seed in range(6)]
    assert all(c.shape == (3, 32, 32) for c in crops)
    assert len({c.sum().item() for c in crops}) == 6
    assert torch.equal(ds.load((0, 2))[0], crops[2])


def test_loader_shards_are_disjoint_and_cover_the_epoch(tmp_path):
    for k in range(12):
        Image.new('RGB', (8, 8), (k * 20, 0, 0)).save(tmp_path / f'{k:02d}.png')
    ds = ImageFolder(str(tmp_path), 8, flip=False)
    seen = []
    for rank in range(2):
        loader = Loader(ds, 3, seed=0, dist=Dist(True, rank, rank, 2, torch.device('cpu'), rank == 0), num_workers=0)
        seen += [round(float(v)) for _ in range(2) for v in (next(loader)[0][:, 0, 0, 0] + 1) * 127.5 / 20]
    assert sorted(seen) == list(range(12))


def test_loader_runs_across_epochs_and_resumes_anywhere(tmp_path):
    """One DataLoader serves every epoch (its workers are never restarted); the batches are each epoch's permutation
    in turn, whatever the number of workers, and a loader restored from any state continues the same sequence."""
    for k in range(10):
        Image.new('RGB', (8, 8), (k * 20, 0, 0)).save(tmp_path / f'{k:02d}.png')
    ds = ImageFolder(str(tmp_path), 8, flip=False)
    one = Dist(False, 0, 0, 1, torch.device('cpu'), True)
    ids = lambda x: [round(float(v)) for v in (x[:, 0, 0, 0] + 1) * 127.5 / 20]  # noqa: E731
    loader = Loader(ds, 4, seed=3, dist=one, num_workers=0)  # 2 batches per epoch, 2 images left out
    seq, states = [], []
    for _ in range(7):
        states.append(loader.state_dict())
        seq.append(ids(next(loader)[0]))
    for epoch in range(3):  # each epoch is a fresh permutation of 8 distinct images
        assert len(set(seq[2 * epoch] + seq[2 * epoch + 1])) == 8
    assert seq[0] + seq[1] != seq[2] + seq[3]
    assert states[5] == {'epoch': 2, 'batch_in_epoch': 1, 'unreadable': []}
    with_workers = Loader(ds, 4, seed=3, dist=one, num_workers=2)
    assert [ids(next(with_workers)[0]) for _ in range(7)] == seq
    for k in (3, 4):  # resume mid-epoch and at an epoch boundary
        resumed = Loader(ds, 4, seed=3, dist=one, num_workers=0)
        resumed.load_state_dict(states[k])
        assert [ids(next(resumed)[0]) for _ in range(7 - k)] == seq[k:]


@pytest.mark.parametrize('case', ['missing', 'empty'])
def test_bad_data_folder_is_one_sentence(tmp_path, case):
    path = tmp_path / 'nope'
    if case == 'empty':
        path.mkdir()
        (path / 'readme.txt').write_text('no images here')
    p = run('train_ae.py', *TINY_AE, '--out_dir', tmp_path / 'out', '--max_steps', 1, '--data', path, check=False)
    assert p.returncode != 0 and 'Traceback' not in p.stderr
    assert ('is not a folder' if case == 'missing' else 'holds no images') in p.stderr


def test_training_counts_unreadable_files(tmp_path):
    data = tmp_path / 'data'  # the run's folder outside it: an --out_dir inside --data is refused
    data.mkdir()
    for k in range(4):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / f'{k}.png')
    (data / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path / 'out', '--max_steps', 3, '--data', data)
    rows = train_rows(tmp_path / 'out')
    assert rows[3]['skipped_images'] >= 1


# ---------------------------------------------------------------------------------------------- subsets, latent cache

CPU = Dist(ddp=False, rank=0, local_rank=0, world_size=1, device=torch.device('cpu'), master=True)


def test_random_subset_is_seeded_and_spread_over_the_whole_set():
    class Sorted:  # a class-sorted folder: 100 classes of 100 images
        def __len__(self):
            return 10_000
    idx = random_subset(Sorted(), 500, seed=0)
    assert idx == random_subset(Sorted(), 500, seed=0) and idx != random_subset(Sorted(), 500, seed=1)
    assert len(set(idx)) == 500 and idx == sorted(idx)
    assert len({i // 100 for i in idx}) > 95  # nearly every class, where the first 500 files hold 5
    assert random_subset(DeadLeaves(8), 5, seed=3) == list(range(5))  # every embedded image is already random


def test_latent_cache_is_float16_in_random_order_keyed_on_its_inputs_and_read_in_chunks(tmp_path, monkeypatch):
    from utils import latent_cache
    images = DeadLeaves(8, seed=0)
    encode = lambda x: torch.nn.functional.avg_pool2d(x, 2) * 3  # noqa: E731  a stand-in autoencoder, f = 2
    key = {'ae_sha256': 'aaaa', 'image_size': 8, 'cache_size': 10}
    build = lambda key: latent_cache.build_latent_cache(tmp_path / 'c', images, encode, (3, 4, 4), key, 10, 4, CPU,  # noqa: E731
                                                seed=0, random_crop=False, num_workers=0)
    cache = build(key)
    assert cache.latents.dtype == np.float16 and cache.latents.shape == (10, 2, 3, 4, 4)
    order = np.random.default_rng(0).permutation(10)  # cache position p holds image order[p]
    for p in (0, 7):
        x = images[int(order[p])][0][None]
        torch.testing.assert_close(cache[p][0], encode(x)[0], rtol=2 ** -10, atol=1e-3)  # float16 rounding
        mirror = torch.from_numpy(cache.latents[p, 1].astype(np.float32))
        torch.testing.assert_close(mirror, encode(x.flip(3))[0], rtol=2 ** -10, atol=1e-3)
    assert build(key) is not None  # the same inputs: reused
    with pytest.raises(SystemExit, match=r"made from other inputs \(ae_sha256 'aaaa' there, 'bbbb' now\)"):
        build({**key, 'ae_sha256': 'bbbb'})  # e.g. the autoencoder retrained at the same path
    # an epoch visits every item once, chunk by chunk: shuffled chunks, shuffled inside, each read in one run
    monkeypatch.setattr(cache, 'chunk', 3)
    visit = cache.epoch_order(torch.Generator().manual_seed(0))
    assert sorted(visit) == list(range(10)) and visit != sorted(visit)
    runs, chunk_of = [], [i // 3 for i in visit]
    for c in chunk_of:
        if not runs or runs[-1] != c:
            runs.append(c)
    assert sorted(runs) == [0, 1, 2, 3]  # each chunk is one contiguous run of the epoch


def test_video_latent_cache_holds_each_clip_and_its_mirror_clip(tmp_path):
    from utils import data, latent_cache
    clips = data.DeadLeaves(8, seed=0, num_frames=5)
    encode = lambda x: torch.nn.functional.avg_pool3d(x, (1, 2, 2)) * 3  # noqa: E731  (B, 3, T, 8, 8) -> (B, 3, T, 4, 4)
    cache = latent_cache.build_latent_cache(tmp_path / 'c', clips, encode, (3, 5, 4, 4), {'cache_size': 4}, 4, 3, CPU, seed=0,
                                    random_crop=False, num_workers=0)
    assert cache.latents.shape == (4, 2, 3, 5, 4, 4)
    order = np.random.default_rng(0).permutation(4)
    for p in range(4):
        x = clips[int(order[p])][0][None]  # (1, 3, T, H, W)
        torch.testing.assert_close(cache[p][0], encode(x)[0], rtol=2 ** -10, atol=1e-3)
        mirror = torch.from_numpy(cache.latents[p, 1].astype(np.float32))
        torch.testing.assert_close(mirror, encode(x.flip(-1))[0], rtol=2 ** -10, atol=1e-3)  # mirrored left-right,
        assert not torch.allclose(mirror, encode(x.flip(-2))[0], atol=1e-2)  # not upside down, nor reversed in time
        assert not torch.allclose(mirror, encode(x.flip(-3))[0], atol=1e-2)


def test_leaf_textures_are_one_over_f_noise_and_gratings_below_nyquist():
    """The noise patch has unit variance and a 1/f amplitude spectrum (power ~ f^-2: slope -2 on a log-log plot);
    gratings stay below the output pixel's Nyquist frequency (1/2 cycle per pixel), so none aliases."""
    from utils.data import LeafTextures
    S, supersample = 256, 4
    tex = LeafTextures(np.random.default_rng(0), 1000, S, supersample)
    assert abs(tex.noise.std() - 1) < 1e-5 and abs(tex.noise.mean()) < 1e-5
    power = np.abs(np.fft.rfft2(tex.noise)) ** 2
    fy, fx = np.fft.fftfreq(S)[:, None], np.fft.rfftfreq(S)[None, :]
    f = np.hypot(fy, fx)
    bands = np.exp(np.linspace(np.log(4 / S), np.log(0.4), 8))
    centres = np.sqrt(bands[:-1] * bands[1:])
    means = [power[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bands[:-1], bands[1:])]
    slope = np.polyfit(np.log(centres), np.log(means), 1)[0]
    assert -2.2 < slope < -1.8
    assert (tex.frequency * supersample).max() <= 1 / 3 + 1e-9 < 0.5
    assert set(np.unique(tex.kind)) == {0, 1, 2}  # plain, grating and noise leaves all occur


def test_the_shapes_are_few_large_leaves_whose_colour_maps_the_colour_names_read_back():
    """--dataset shapes: 4-12 leaves, the largest seen covering several percent of the image, and a label map of colour
    names (COLOUR_LABELS) that data.colour_names reads back from the image itself on most pixels, far above another
    image's map: the semantic miniature's measure has a ceiling near 1 and a floor near chance."""
    from utils.data import COLOUR_LABELS, colour_names, dead_leaves
    own, other = [], []
    for i in range(6):
        img, seg = dead_leaves(3, i, 32, segmentation=True, style='shapes')
        _, scene = dead_leaves(3, i, 32, scene=True, style='shapes')
        assert 1 <= len(scene['shapes']) <= 12 and scene['shapes'][0]['area'] > 0.03
        assert seg.min() >= 0 and seg.max() < len(COLOUR_LABELS)
        names = colour_names(torch.from_numpy(img).permute(2, 0, 1) * 2 - 1)
        own.append((names == seg).mean())
        other.append((names == dead_leaves(3, i + 50, 32, segmentation=True, style='shapes')[1]).mean())
    assert np.mean(own) > 0.8 and np.mean(other) < 0.4
    textured = dead_leaves(3, 0, 32, segmentation=True)  # the textured set is drawn as it always was
    assert np.array_equal(textured[0], dead_leaves(3, 0, 32, segmentation=True, style='textured')[0])


def test_max_shapes_caps_the_leaves_and_keeps_the_default_set_as_it_was():
    """dead_leaves(style='shapes', max_shapes=K) draws at most K leaves (the experiments' scenes of one to three
    shapes); with K >= 12, the cap never binds, and the images are the default set's, value for value."""
    from utils.data import dead_leaves
    counts = []
    for i in range(12):
        for k in (1, 3):
            _, scene = dead_leaves(5, i, 32, scene=True, style='shapes', max_shapes=k)
            assert 1 <= len(scene['shapes']) <= k
            counts.append(len(scene['shapes']))
        default = dead_leaves(5, i, 32, style='shapes')
        assert np.array_equal(default, dead_leaves(5, i, 32, style='shapes', max_shapes=12))
    assert max(counts) == 3  # the cap is reached, not merely respected


def test_region_r2_is_one_for_an_image_drawn_in_the_maps_regions_and_near_zero_for_noise():
    """metrics.region_r2: a piecewise-constant image on the map's regions is fully explained, whatever the colours; two
    regions of one label that do not touch are fitted apart; white noise is explained by the regions' share of pixels
    only (about regions / pixels)."""
    from evaluation.metrics import region_r2
    labels = np.zeros((16, 16), np.int64)
    labels[:, 8:] = 1
    labels[:4, :4] = 1  # a second, separate region of label 1
    x = torch.zeros(3, 16, 16)
    x[:, :, 8:], x[:, :4, :4] = 0.5, -0.7  # the two label-1 regions in different colours
    assert region_r2(x, labels) == pytest.approx(1.0)
    noise = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert region_r2(noise, labels) < 0.1
    assert region_r2(torch.zeros(3, 16, 16), labels) == 1.0


def flat_discs(offsets=(0.0, 0.0, 0.0)):
    """A 64 px image of 3 flat discs (radius 10 px) of different colours on a flat background, with a colour offset."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing='ij')
    x = torch.tensor([-0.6, -0.2, 0.2]).view(3, 1, 1).expand(3, 64, 64).clone()
    for (cy, cx), colour in zip([(16, 16), (16, 46), (46, 30)], [(0.8, -0.5, 0.1), (-0.9, 0.6, 0.5), (0.3, 0.3, -0.8)]):
        x[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = torch.tensor(colour).view(3, 1)
    return x + torch.tensor(offsets).view(3, 1, 1)


def test_uniform_regions_count_flat_shapes_and_nothing_in_noise_or_a_smooth_ramp():
    """metrics.uniform_regions, the recognisability measure: 3 flat discs on a flat background are 4 regions (whatever
    the colour offset); white noise has none, and neither has a smooth ramp across the image, whose neighbours differ
    by less than the edge threshold but whose colours span the whole range."""
    from evaluation.metrics import uniform_regions
    areas = uniform_regions(flat_discs())
    # each disc less its edge band of about 2 px: pi 8^2 / 64^2 = 0.049
    assert len(areas) == 4 and 0.5 < areas[0] < 0.8 and all(0.04 < a < 0.077 for a in areas[1:])
    assert uniform_regions(flat_discs((0.1, -0.1, 0.05))) == areas  # an offset the decoder could absorb moves nothing
    assert uniform_regions(torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0)).clamp(-1, 1) / 2) == []
    ramp = torch.linspace(-0.9, 0.9, 64).view(1, 1, 64).expand(3, 64, 64)
    assert uniform_regions(ramp) == []


def test_region_stats_separate_the_shapes_from_textured_leaves_and_ignore_order():
    """metrics.region_stats on held-out images: the shapes' leaves cover several times more of an image than the
    textured leaves' (the gap the measure exists to see), and permuting the images changes nothing."""
    from evaluation.metrics import region_stats
    from utils.data import DeadLeaves
    shapes = torch.stack([DeadLeaves(64, train=False, style='shapes')[i][0] for i in range(8)])
    textured = torch.stack([DeadLeaves(64, train=False)[i][0] for i in range(8)])
    s, t = region_stats(shapes), region_stats(textured)
    assert s['regions'] >= 4 and s['covered'] > 0.3 and s['covered'] > 3 * t['covered'], (s, t)
    assert region_stats(shapes.flip(0)) == s


def test_region_stats_measure_the_same_scenes_alike_at_every_image_size():
    """The thresholds were chosen at 64 px, where a leaf's shading changes by less than the edge threshold from pixel
    to pixel; at 32 px it changes twice as much, and measured natively the shaded leaves broke up (covered 0.35, not
    0.49). uniform_regions resamples every image to REGION_SIZE first, so the same 16 scenes drawn at 32, 64 and 128
    px cover the same share of an image."""
    from evaluation.metrics import region_stats
    from utils.data import DeadLeaves
    scenes = {S: torch.stack([DeadLeaves(S, train=False, style='shapes')[i][0] for i in range(16)]) for S in (32, 64, 128)}
    covered = {S: region_stats(x)['covered'] for S, x in scenes.items()}
    assert abs(covered[32] - covered[64]) < 0.05 and abs(covered[128] - covered[64]) < 0.05, covered
