"""reproduce_tasks.py --size smoke: the spatial-conditioning miniature at toy sizes runs end to end and writes what it
promises (each task's numbers beside its trivial reference, and a grid of inputs, samples and targets)."""
import json
import os

import pytest

from tests.helpers import run


@pytest.mark.slow
def test_the_tasks_miniature_runs_at_smoke_size_and_reports_each_task_beside_its_trivial_reference(tmp_path):
    run('repro/reproduce_tasks.py', '--size', 'smoke', '--out_dir', tmp_path, '--device', 'cpu')
    report = json.load(open(tmp_path / 'tasks.json'))
    for row in ('model', 'bicubic', 'autoencoder'):
        assert report['sr'][row]['num_pairs'] == 3 and 0 < report['sr'][row]['paired_psnr'] < 100
    # the bicubic upsampling of the LR input is closer to the target than a 2-step model's noise
    assert report['sr']['bicubic']['paired_psnr'] > report['sr']['model']['paired_psnr']
    for bucket in ('40-50%', 'all'):
        assert all(report['inpaint'][bucket][row]['num_pairs'] == 3 for row in ('model', 'fill', 'autoencoder'))
    assert all(0 <= report['semantic'][row][k] <= 1 for row in ('model', 'real', 'autoencoder', 'chance')
               for k in ('colour_agreement', 'region_r2'))
    assert report['semantic']['real']['colour_agreement'] > report['semantic']['chance']['colour_agreement']
    assert all(os.path.isfile(report[t]['grid']) for t in ('sr', 'inpaint', 'semantic'))
    p = run('repro/reproduce_tasks.py', '--tasks', 'semantic', '--data', tmp_path, check=False)
    assert p.returncode != 0 and p.stderr.strip().startswith('error:') and 'Traceback' not in p.stderr


@pytest.mark.slow
def test_with_data_no_held_out_image_is_trained_on(tmp_path):
    """--data: a quarter of the folder is held out and the LDM trains on the rest, never on a held-out image."""
    import numpy as np
    from PIL import Image
    photos = tmp_path / 'photos_in'
    photos.mkdir()
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(photos / f'{i}.png')
    run('repro/reproduce_tasks.py', '--size', 'smoke', '--data', photos, '--tasks', 'sr', '--out_dir', tmp_path / 'out',
        '--device', 'cpu')
    held, train = ({os.path.realpath(p) for p in (tmp_path / 'out' / 'photos' / d).iterdir()} for d in ('heldout', 'train'))
    assert len(held) == 2 and len(train) == 6 and not held & train
    assert json.load(open(tmp_path / 'out' / 'tasks.json'))['sr']['model']['num_pairs'] == 2
