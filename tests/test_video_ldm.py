"""The video LDM end to end: train_ae.py --num_frames 5 -> train_ldm.py --num_frames 5 (video DiT, a labelled folder of
videos, split by a resume, as DDPM and as a rectified flow) -> sample.py (MP4s, previews, samples.npz of uint8 clips)."""
import os
import json

import numpy as np
import pytest
import torch

from utils.common import write_mp4
from evaluation.sources import open_source
from tests.helpers import run, train_rows

TINY = ['--image_size', 16, '--num_workers', 0, '--log_interval', 1]


def make_video_folder(root):
    """Two classes (Kinetics' layout), two 8-frame clips each: a square gliding over noise, by class direction."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(('left', 'right')):
        os.makedirs(root / name)
        for k in range(2):
            clip = np.repeat(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8), 8, axis=0)
            for t in range(8):
                x = 2 + (t if c else 7 - t)
                clip[t, 5:11, x:x + 6] = 255
            write_mp4(clip, str(root / name / f'{k}.mp4'))


@pytest.fixture(scope='module')
def video_ae(tmp_path_factory):
    """The labelled folder of videos and a 1-step video autoencoder trained on 5-frame clips of it."""
    d = tmp_path_factory.mktemp('video')
    make_video_folder(d / 'videos')
    run('train_ae.py', *TINY, '--num_frames', 5, '--batch_size', 1, '--max_steps', 1, '--lpips_weight', 0,
        '--eval_interval', 1000, '--ckpt_interval', 1000, '--num_eval', 1, '--out_dir', d / 'ae')
    return d


def train_split_and_whole(d, out, *flags):
    """2 video-DiT steps in one go, and 1 step then --resume to 2: the same loss and weights. -> the whole run's ckpt."""
    ldm = [*TINY, '--num_frames', 5, '--ae', d / 'ae' / 'ckpt.pt', '--model', 'dit', '--preset', 'tiny',
           '--data', d / 'videos', '--batch_size', 2, '--ckpt_interval', 1, '--eval_interval', 2,
           '--num_samples', 2, '--sample_steps', 1, '--ema_decay', 0.5, *flags]
    run('train_ldm.py', *ldm, '--max_steps', 2, '--out_dir', out / 'full')
    run('train_ldm.py', *ldm, '--max_steps', 1, '--out_dir', out / 'split')
    run('train_ldm.py', *ldm, '--max_steps', 2, '--out_dir', out / 'split', '--resume')
    assert train_rows(out / 'split')[2]['loss'] == train_rows(out / 'full')[2]['loss']
    a = torch.load(out / 'full' / 'ckpt.pt', weights_only=True)
    b = torch.load(out / 'split' / 'ckpt.pt', weights_only=True)
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    return a


def test_video_ldm_trains_resumes_exactly_and_samples(video_ae, tmp_path):
    a = train_split_and_whole(video_ae, tmp_path)
    # the class subfolders made it class-conditional, on 5 frames -> 2 latent frames of the 4x temporal AE
    assert a['config']['backbone']['num_classes'] == 2 and a['config']['backbone']['num_frames'] == 2
    assert (tmp_path / 'full' / 'samples_0000002' / 'grid.mp4').exists()

    # per-sample seeds: the clips do not depend on the batch size. The CPU's conv kernels do, in the last bits of a float
    # (about 4e-6 on a decoded clip), which can tip a pixel's 8-bit rounding: at most one level, on a few pixels; a
    # noise shared across a batch would change every pixel
    ckpt = tmp_path / 'full' / 'ema.pt'
    run('sample.py', '--ckpt', ckpt, '--num_samples', 3, '--batch_size', 2, '--steps', 2, '--out_dir', tmp_path / 's2')
    run('sample.py', '--ckpt', ckpt, '--num_samples', 3, '--batch_size', 3, '--steps', 2, '--out_dir', tmp_path / 's3')
    clips = np.load(tmp_path / 's2' / 'samples.npz')['arr_0']
    assert clips.shape == (3, 5, 16, 16, 3) and clips.dtype == np.uint8
    other = np.load(tmp_path / 's3' / 'samples.npz')['arr_0']
    diff = np.abs(clips.astype(int) - other.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99 and not np.array_equal(clips[0], clips[1])
    import av
    with av.open(str(tmp_path / 's2' / 'videos' / '000002.mp4')) as mp4:
        frames = np.stack([f.to_ndarray(format='rgb24') for f in mp4.decode(video=0)])
    assert frames.shape == clips[2].shape  # the MP4 holds the sample's frames, in order, up to H.264's rounding
    assert np.abs(frames.astype(float) - clips[2]).mean() < np.abs(frames.astype(float) - clips[2][::-1]).mean()
    assert sorted(os.listdir(tmp_path / 's2' / 'videos')) == ['000000.mp4', '000001.mp4', '000002.mp4']
    assert all((tmp_path / 's2' / name).exists() for name in ('grid.mp4', 'grid.gif', 'grid_frames.png'))
    # the samples against the folder of videos (FVD skipped offline and for 5 frames; the video SWD measured)
    run('eval_fid.py', '--fake', tmp_path / 's2' / 'samples.npz', '--real', video_ae / 'videos', '--num_frames', 5,
        '--image_size', 16, '--num_workers', 0, '--out', tmp_path / 'metrics.json')
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['swd_videos'] == 3 and metrics['swd_motion'] > 0, metrics
    # a video autoencoder without --num_frames: one sentence, not a state-dict traceback
    p = run('train_ldm.py', *TINY, '--ae', video_ae / 'ae' / 'ckpt.pt', '--out_dir', tmp_path / 'img', check=False)
    assert p.returncode != 0 and 'is a video autoencoder' in p.stderr + p.stdout


def test_video_ldm_under_flow_resumes_exactly_and_samples_by_heun(video_ae, tmp_path):
    # the same VideoDiT as a rectified flow (SD3's logit-normal times, shifted): exact resume, and Heun clips
    a = train_split_and_whole(video_ae, tmp_path, '--objective', 'flow', '--time_sampling', 'logit_normal',
                              '--time_shift', 3)
    assert a['config']['objective'] == 'flow' and not a['config']['backbone']['learn_sigma']
    assert (tmp_path / 'full' / 'samples_0000002' / 'grid.mp4').exists()
    out = run('sample.py', '--ckpt', tmp_path / 'full' / 'ema.pt', '--num_samples', 2, '--steps', 2,
              '--out_dir', tmp_path / 's').stdout
    assert 'heun 2 steps (3 evaluations), time shift 3' in out
    assert np.load(tmp_path / 's' / 'samples.npz')['arr_0'].shape == (2, 5, 16, 16, 3)


def test_video_ldm_bad_inputs_are_one_sentence(tmp_path):
    p = run('train_ldm.py', '--num_frames', 5, '--model', 'unet', '--out_dir', tmp_path / 'o', check=False)
    assert p.returncode != 0 and 'need --model dit' in p.stderr + p.stdout  # the default for video is DiT


def test_eval_reads_the_middle_clip_of_every_readable_video_in_a_folder(tmp_path):
    import av
    make_video_folder(tmp_path)
    (tmp_path / 'left' / 'bad.mp4').write_bytes(np.random.default_rng(1).bytes(2000))  # counted and left out
    kind, clips, _ = open_source(str(tmp_path), 16, None, num_frames=5)
    good = [tmp_path / c / f'{k}.mp4' for c in ('left', 'right') for k in range(2)]
    decoded = []
    for path in good:
        with av.open(str(path)) as f:
            decoded.append(np.stack([frame.to_ndarray(format='rgb24') for frame in f.decode(video=0)])[1:6])
    assert kind == 'videos' and clips.dtype == np.uint8
    assert np.array_equal(clips, np.stack(decoded))  # frames 1..5 of 8: the middle clip, in file order, no duplicate
    kind, some, _ = open_source(str(tmp_path), 16, 2, seed=3, num_frames=5)
    assert some.shape == (2, 5, 16, 16, 3) and all(any(np.array_equal(c, d) for d in decoded) for c in some)


def test_video_ldm_from_a_latent_cache_normalises_each_channel(video_ae, tmp_path):
    from utils.data import random_subset
    run('train_ldm.py', *TINY, '--num_frames', 5, '--ae', video_ae / 'ae' / 'ckpt.pt', '--model', 'dit', '--batch_size', 3,
        '--max_steps', 1, '--cache_latents', tmp_path / 'cache', '--cache_size', 6, '--num_samples', 2,
        '--sample_steps', 1, '--out_dir', tmp_path / 'ldm')
    latents = np.load(tmp_path / 'cache' / 'latents.npy')
    assert latents.shape == (6, 2, 16, 2, 4, 4)  # clips and mirror clips: 16 channels, 5 frames -> 2, 16 px -> 4
    # scale_by_std per channel: mean and 1/std of each channel over one batch drawn at random from the cache
    z = latents[random_subset(latents, 3, 0), 0].astype(np.float64)  # (3, C, T', h, w)
    ckpt = torch.load(tmp_path / 'ldm' / 'ckpt.pt', weights_only=True)
    assert ckpt['latent_shift'] == pytest.approx(z.mean(axis=(0, 2, 3, 4)).tolist(), rel=1e-9)
    assert ckpt['latent_scale'] == pytest.approx((1 / z.std(axis=(0, 2, 3, 4))).tolist(), rel=1e-9)
    assert np.std(ckpt['latent_scale']) > 0  # the channels do differ, so one scalar would not have done
    # samples are decoded with the same per-channel map undone
    run('sample.py', '--ckpt', tmp_path / 'ldm' / 'ema.pt', '--num_samples', 2, '--steps', 1, '--out_dir', tmp_path / 's')
    assert np.load(tmp_path / 's' / 'samples.npz')['arr_0'].shape == (2, 5, 16, 16, 3)
