"""repro/restoration.py as a user runs it: tiny LDMs on latents and on pixels, restored at strengths 0, 0.5 and 1."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import run
from utils import data
from utils.weights import load_autoencoder

TINY = ['--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu']


@pytest.mark.slow
def test_restoration_scores_each_strength_against_its_reference_and_strength_0_is_the_reconstruction(tmp_path):
    d = tmp_path
    run('train_ae.py', *TINY, '--out_dir', d / 'ae', '--max_steps', '1', '--lpips_weight', '0', '--eval_interval', '1',
        '--ckpt_interval', '1')
    common = [*TINY, '--model', 'unet', '--max_steps', '1', '--num_samples', '1', '--sample_steps', '1',
              '--eval_interval', '100']
    run('train_ldm.py', *common, '--ae', d / 'ae' / 'ckpt.pt', '--out_dir', d / 'latent')
    run('train_ldm.py', *common, '--ae', 'none', '--objective', 'flow', '--out_dir', d / 'pixels')
    os.makedirs(d / 'held')
    for i in range(3):
        Image.fromarray((data.dead_leaves(7, i, 16, style='shapes') * 255).round().astype(np.uint8)).save(d / 'held' / f'{i}.png')
    run('repro/restoration.py', '--ckpt', d / 'latent' / 'ema.pt', '--ckpt', d / 'pixels' / 'ema.pt', '--input',
        d / 'held', '--strengths', '0,0.5,1', '--show', '2', '--out_dir', d / 'out')
    report = json.load(open(d / 'out' / 'restoration.json'))
    latent, pixels = (report['models'][n]['rows'] for n in ('latent', 'pixels'))
    assert [r['strength'] for r in latent] == [r['strength'] for r in pixels] == [0, 0.5, 1]
    # strength 0 runs no step: the autoencoder's reconstruction, and on pixels the input itself
    x = np.stack([np.asarray(Image.open(d / 'held' / f'{i}.png')) for i in range(3)])
    ae = load_autoencoder(str(d / 'ae' / 'ckpt.pt'))
    with torch.no_grad():
        rec = ae.decode(ae.encode(torch.from_numpy(x).float().permute(0, 3, 1, 2) / 127.5 - 1, False)[0])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert latent[0]['psnr'] == pytest.approx(10 * np.log10(255 ** 2 / ((rec - x) ** 2).mean()), abs=0.05)
    assert pixels[0]['psnr'] is None  # equal to the input
    # the reference exists where a step runs from a start that still holds the data, and only there
    assert [r['identity_psnr'] is None for r in latent] == [r['identity_psnr'] is None for r in pixels] == [True, False, True]
    assert all(r['regions'].keys() == report['input_regions'].keys() for r in latent + pixels)
    assert Image.open(d / 'out' / 'restoration.png').size == (90 + 2 * (2 * 96 + 12), 24 + 4 * (96 + 4))
    assert 'exact' in open(d / 'out' / 'restoration.md').read()
    p = run('repro/restoration.py', '--ckpt', d / 'latent' / 'ema.pt', '--input', d / 'held', '--strengths', '0.5,2',
            '--out_dir', d / 'bad', check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith('error: --strengths must lie in [0, 1]')
