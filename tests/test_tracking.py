"""Experiment tracking: --tensorboard in both training scripts writes the scalars of log.jsonl and the preview grids to
TensorBoard event files; without the package it is one sentence naming it, and nothing imports it unless asked."""
import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from utils import common
from tests.helpers import TINY_AE, read_log, run


def events(log_dir):
    """{tag: {step: value}} of the scalars and {tag: {step: (H, W, 3) uint8}} of the images in a TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={'scalars': 0, 'images': 0}).Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()['scalars']}
    images = {tag: {e.step: np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
                    for e in acc.Images(tag)} for tag in acc.Tags()['images']}
    return scalars, images


def test_tensorboard_absent_is_one_sentence_naming_the_package(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'tensorboard' else real_find_spec(name, *a))
    with pytest.raises(SystemExit) as e:
        common.Logger(str(tmp_path), True, tensorboard=True)
    assert str(e.value) == "error: --tensorboard needs the tensorboard package; pip install tensorboard."
    common.Logger(str(tmp_path), True).log(1, loss=0.5)  # without the flag the package is never asked for
    assert read_log(tmp_path)[0]['loss'] == 0.5


def test_logger_writes_the_log_rows_and_images_and_a_resume_replaces_later_steps(tmp_path):
    pytest.importorskip('tensorboard')
    logger = common.Logger(str(tmp_path), True, tensorboard=True)
    for step in (1, 2, 3):
        logger.log(step, loss=1.0 / step, lr=1e-4, note='text is not a scalar')
    grid = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(grid).save(tmp_path / 'grid.png')
    logger.image('samples', str(tmp_path / 'grid.png'), 2)
    resumed = common.Logger(str(tmp_path), True, tensorboard=True, step=2)  # resumed from the checkpoint of step 2
    resumed.log(3, loss=0.25, lr=1e-4)
    scalars, images = events(tmp_path / 'tensorboard')
    assert set(scalars) == {'loss', 'lr'}
    assert scalars['loss'] == {1: 1.0, 2: 0.5, 3: 0.25}  # step 3 of the first run is gone, as in log.jsonl
    assert np.array_equal(images['samples'][2], grid)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A 2-step train_ae.py run and a 2-step train_ldm.py run on its autoencoder, both with --tensorboard."""
    pytest.importorskip('tensorboard')
    d = tmp_path_factory.mktemp('tracking')
    run('train_ae.py', *TINY_AE, '--max_steps', 2, '--eval_interval', 2, '--out_dir', d / 'ae', '--tensorboard')
    run('train_ldm.py', '--image_size', 16, '--batch_size', 2, '--num_workers', 0, '--device', 'cpu', '--ae',
        d / 'ae' / 'ckpt.pt', '--max_steps', 2, '--log_interval', 1, '--eval_interval', 2, '--ckpt_interval', 2,
        '--num_samples', 4, '--sample_steps', 2, '--out_dir', d / 'ldm', '--tensorboard')
    return d


@pytest.mark.slow
@pytest.mark.parametrize('script, out, preview', [('train_ae.py', 'ae', 'recon'), ('train_ldm.py', 'ldm', 'samples')])
def test_training_scripts_log_every_scalar_of_log_jsonl_and_the_preview_grid(runs, script, out, preview):
    scalars, images = events(runs / out / 'tensorboard')
    rows = read_log(runs / out)
    expected = {(k, r['step']): v for r in rows for k, v in r.items() if isinstance(v, float) and k != 'time'}
    assert len(expected) > 5 and {(k, s) for k in scalars for s in scalars[k]} == set(expected)
    for (k, step), v in expected.items():
        assert scalars[k][step] == pytest.approx(v, rel=1e-6)  # event files hold float32
    png = next(f for f in sorted(os.listdir(runs / out)) if f.startswith(preview) and f.endswith('.png'))
    assert np.array_equal(images[preview][2], np.asarray(Image.open(runs / out / png).convert('RGB')))
