"""Video data: PyAV clips with seeking and strides, counted skips of bad videos, the embedded moving dead leaves."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from utils.data import BadVideo, DeadLeaves, VideoFolder, read_clip

av = pytest.importorskip('av')


def write_video(path, n, codec='mpeg4', rate=10, pts=None, size=32):
    """n frames whose grey level is 8 * frame index; `pts` (ms) overrides the constant frame rate."""
    with av.open(str(path), 'w') as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = 'yuv420p'
        stream.gop_size = 4  # key frames every 4 frames: seeking lands before the clip and must decode forward
        if codec == 'mpeg4':
            stream.bit_rate = 4_000_000
        if pts is not None:
            stream.time_base = Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * i, np.uint8), format='rgb24')
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def levels(frames):
    return [round(np.asarray(f, dtype=np.float32).mean() / 8) for f in frames]


def test_clip_seeks_to_its_start_and_keeps_the_stride(tmp_path):
    write_video(tmp_path / 'a.mp4', 30)
    assert levels(read_clip(str(tmp_path / 'a.mp4'), 5, 3, start=11)) == [11, 14, 17, 20, 23]
    assert levels(read_clip(str(tmp_path / 'a.mp4'), 4, 1, start=0)) == [0, 1, 2, 3]
    starts = {levels(read_clip(str(tmp_path / 'a.mp4'), 3, 2, rng=np.random.default_rng(s)))[0] for s in range(20)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 25  # random starts, all inside the video


def test_bad_videos_are_counted_skips_and_all_bad_is_one_sentence(tmp_path):
    root = tmp_path / 'videos'
    root.mkdir()
    write_video(root / 'a_short.mp4', 5)                                   # shorter than a 9-frame clip
    write_video(root / 'b_vfr.mkv', 12, codec='ffv1', pts=[0, 100, 200, 250, 400, 500, 700, 800, 900, 1000, 1100, 1200])
    (root / 'c_noise.mp4').write_bytes(np.random.default_rng(0).bytes(5000))  # undecodable
    write_video(root / 'd_good.mp4', 20)
    good = (root / 'd_good.mp4').read_bytes()
    (root / 'e_truncated.mp4').write_bytes(good[:len(good) // 3])
    with av.open(str(root / 'f_audio.mkv'), 'w') as out:                   # zero video streams
        stream = out.add_stream('pcm_s16le', rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono')
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    ds = VideoFolder(str(root), 16, num_frames=9, train=False)
    assert len(ds) == 6
    x, _, skipped = ds.load(0)  # a, b, c are bad: the clip comes from d, and a (this item's own file) is counted
    assert skipped == 1 and x.shape == (3, 9, 16, 16) and x.min() >= -1 and x.max() <= 1
    x, _, skipped = ds.load(4)  # e and f are bad, and the search wraps around to d
    assert skipped == 1 and x.shape == (3, 9, 16, 16)
    # over an epoch each bad file is counted once (counting the files each search passed over gave 3+2+1+0+2+1 = 9)
    assert [ds.load(i)[2] for i in range(6)] == [1, 1, 1, 0, 1, 1]
    for name, reason in (('a_short.mp4', 'fewer than'), ('b_vfr.mkv', 'variable frame rate'),
                         ('f_audio.mkv', 'no video stream')):  # each skip for its own reason
        with pytest.raises(BadVideo, match=reason):
            read_clip(str(root / name), 9, 1, start=0)
    (root / 'd_good.mp4').unlink()
    with pytest.raises(SystemExit, match='none of the 5 videos'):
        VideoFolder(str(root), 16, num_frames=9).load(0)


def test_moving_dead_leaves_are_deterministic_and_move(tmp_path):
    ds = DeadLeaves(16, seed=3, num_frames=9)
    a, b, c = ds[5][0], ds[5][0], ds[6][0]
    assert a.shape == (3, 9, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(DeadLeaves(16, seed=3, train=False, num_frames=9)[5][0], a)  # held out: another stream
    # consecutive frames differ (motion), but less than two clips do (textured leaves moving ~1 px a frame at 16 px
    # make the frame-to-frame change about 0.45 of the clip-to-clip one)
    step = (a[:, 1:] - a[:, :-1]).abs().mean()
    assert 0.005 < step < 0.6 * (a - c).abs().mean()
