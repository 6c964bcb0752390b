"""The whole second stage on CPU with tiny models and 16 px images, run as a user runs it (subprocesses):
train_ae.py -> train_ldm.py (UNet on the embedded data, DiT from a latent cache of a labelled folder) -> sample.py.
Asserted: the files each script promises, the ADM npz format, samples that do not depend on the batch size (hence not
on the world size), a latent cache equal to encoding the images, and a resumed run that reproduces an uninterrupted
one exactly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu']


def run(script, *flags):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def losses(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl'))]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A labelled image folder (2 classes x 4 images) and a 1-step autoencoder trained on it by train_ae.py."""
    d = tmp_path_factory.mktemp('ldm')
    rng = np.random.default_rng(0)
    for c, name in enumerate(['cats', 'dogs']):
        os.makedirs(d / 'images' / name)
        for i in range(4):
            img = np.full((16, 16, 3), 60 + 120 * c, np.uint8)
            img[rng.integers(0, 8):, rng.integers(0, 8):] = rng.integers(0, 255, 3)  # a corner block
            Image.fromarray(img).save(d / 'images' / name / f'{i}.png')
    run('train_ae.py', *TINY, '--data', str(d / 'images'), '--out_dir', str(d / 'ae'), '--max_steps', '1',
        '--lpips_weight', '0', '--eval_interval', '1', '--ckpt_interval', '1')
    return d


@pytest.fixture(scope='module')
def trained(workdir):
    """Two 2-step LDMs on the workdir's autoencoder: a UNet on the embedded dead-leaves data (unconditional), latents
    encoded on the fly, and a DiT on the labelled folder (class-conditional) from the latent cache."""
    d, ae = workdir, str(workdir / 'ae' / 'ckpt.pt')
    common = [*TINY, '--ae', ae, '--max_steps', '2', '--num_samples', '4', '--sample_steps', '2', '--log_interval', '1',
              '--eval_interval', '2', '--ckpt_interval', '2']
    run('train_ldm.py', *common, '--out_dir', str(d / 'unet'))
    run('train_ldm.py', *common, '--out_dir', str(d / 'dit'), '--model', 'dit', '--data', str(d / 'images'),
        '--cache_latents', str(d / 'cache'))
    return d


@pytest.mark.slow
def test_both_backbones_train_and_save_what_they_were_made_with(trained):
    d = trained
    for name in ('unet', 'dit'):
        assert os.path.exists(d / name / 'samples_0000002.png') and len(losses(d / name)) == 2
    ckpt = torch.load(d / 'dit' / 'ckpt.pt', weights_only=False)
    assert ckpt['config']['backbone']['num_classes'] == 2 and ckpt['config']['learn_sigma'] and ckpt['step'] == 2
    assert torch.load(d / 'unet' / 'ckpt.pt', weights_only=False)['config']['backbone']['num_classes'] == 0


@pytest.mark.slow
def test_latent_cache_holds_a_posterior_sample_of_each_image_and_its_mirror(trained):
    # E(x) and E(flip(x)) of every image in float16, in a seeded random order (so that a contiguous chunk is a random
    # sample), with the labels of the class folders
    d = trained
    latents, labels = np.load(d / 'cache' / 'latents.npy'), np.load(d / 'cache' / 'labels.npy')
    order = np.random.default_rng(0).permutation(8)  # cache position -> image index (files sorted: cats, dogs)
    assert latents.shape == (8, 2, 4, 4, 4) and latents.dtype == np.float16
    assert labels.tolist() == [int(i >= 4) for i in order] and sorted(labels.tolist()) == [0] * 4 + [1] * 4
    position = int(np.flatnonzero(order == 6)[0])  # dogs/2.png is image 6
    from weights import load_autoencoder
    model = load_autoencoder(str(d / 'ae' / 'ckpt.pt'))
    x = torch.from_numpy(np.asarray(Image.open(d / 'images' / 'dogs' / '2.png'), np.float32) / 127.5 - 1)
    x = x.permute(2, 0, 1)[None]
    with torch.no_grad():
        h = model.quant_conv(model.encoder(torch.cat([x, x.flip(3)])))
    mean, logvar = h.chunk(2, dim=1)  # the posterior sample lies within a few posterior stds of the mean
    z_score = (torch.from_numpy(latents[position]).float() - mean) / (0.5 * logvar.clamp(-30, 20)).exp()
    assert z_score.abs().max() < 6


@pytest.mark.slow
def test_latent_scale_is_the_std_of_one_random_global_batch(trained):
    # LDM's scale_by_std: mean and 1/std of one global batch (4 latents here) drawn at random from the whole cache
    from data import random_subset
    latents = np.load(trained / 'cache' / 'latents.npy')
    ckpt = torch.load(trained / 'dit' / 'ckpt.pt', weights_only=False)
    z = torch.from_numpy(latents[random_subset(latents, 4, 0), 0].astype(np.float64))
    assert ckpt['latent_shift'] == pytest.approx(z.mean().item(), rel=1e-9)
    assert ckpt['latent_scale'] == pytest.approx(1 / z.std(unbiased=False).item(), rel=1e-9)


@pytest.mark.slow
def test_sample_py_writes_adms_npz_from_the_ema_export(trained):
    # class-conditional DiT with guidance and ancestral DDPM, from ema.pt: the npz in ADM's format, the grid, the PNGs
    d = trained
    export = torch.load(d / 'dit' / 'ema.pt', weights_only=False)
    ckpt = torch.load(d / 'dit' / 'ckpt.pt', weights_only=False)
    assert set(export) == {'ema', 'step', 'latent_scale', 'latent_shift', 'config'} and export['step'] == 2
    assert all(torch.equal(export['ema'][k], ckpt['ema'][k]) for k in ckpt['ema'])
    run('sample.py', '--ckpt', str(d / 'dit' / 'ema.pt'), '--num_samples', '3', '--batch_size', '2', '--device',
        'cpu', '--sampler', 'ddpm', '--steps', '3', '--cfg_scale', '2', '--classes', '1', '--out_dir', str(d / 's1'))
    npz = np.load(d / 's1' / 'samples.npz')
    arr = npz['arr_0']
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    assert npz['arr_1'].tolist() == [1, 1, 1] and npz['label_protocol'] == 'random'  # the labels, as ADM's sampler
    assert os.path.exists(d / 's1' / 'grid.png') and len(os.listdir(d / 's1' / 'images')) == 3
    assert np.array_equal(np.asarray(Image.open(d / 's1' / 'images' / '000002.png')), arr[2])


@pytest.mark.slow
def test_sample_py_labels_are_dits_uniform_draws_or_equal_counts(trained):
    # --labels: DiT's uniform draws (seeded by --seed alone, so any batch size gives them) or equal counts per class
    d = trained
    for protocol in ('random', 'balanced'):
        run('sample.py', '--ckpt', str(d / 'dit' / 'ema.pt'), '--num_samples', '8', '--batch_size', '3', '--device',
            'cpu', '--steps', '1', '--seed', '1', '--labels', protocol, '--out_dir', str(d / protocol))
    random_labels, balanced = (np.load(d / p / 'samples.npz') for p in ('random', 'balanced'))
    assert random_labels['label_protocol'] == 'random' and balanced['label_protocol'] == 'balanced'
    uniform = np.random.default_rng(np.random.SeedSequence(1)).choice([0, 1], 8)
    assert random_labels['arr_1'].tolist() == uniform.tolist() and np.bincount(uniform).tolist() == [3, 5]
    assert balanced['arr_1'].tolist() == [0, 1] * 4


@pytest.mark.slow
def test_samples_do_not_depend_on_the_batch_size(trained):
    # per-sample seeds: batch size 1 and 3 give the same images (so does any world size, which only reshards)
    for bs in ('1', '3'):
        run('sample.py', '--ckpt', str(trained / 'unet' / 'ckpt.pt'), '--num_samples', '3', '--batch_size', bs,
            '--device', 'cpu', '--steps', '2', '--eta', '1', '--out_dir', str(trained / f'u{bs}'))
    a1, a3 = (np.load(trained / f'u{bs}' / 'samples.npz')['arr_0'] for bs in ('1', '3'))
    assert np.array_equal(a1, a3) and not np.array_equal(a1[0], a1[1])


@pytest.mark.slow
def test_resume_is_exact(workdir):
    # 4 steps in one go == 2 steps, then --resume to 4: the same losses and the same weights. Class-conditional DiT
    # from images, so label dropout, flips, posterior samples, timesteps and noise all draw random numbers.
    d, ae = workdir, str(workdir / 'ae' / 'ckpt.pt')
    common = [*TINY, '--ae', ae, '--model', 'dit', '--data', str(d / 'images'), '--num_samples', '2',
              '--sample_steps', '2', '--log_interval', '1', '--eval_interval', '100', '--ckpt_interval', '2']
    run('train_ldm.py', *common, '--out_dir', str(d / 'full'), '--max_steps', '4')
    run('train_ldm.py', *common, '--out_dir', str(d / 'half'), '--max_steps', '2')
    run('train_ldm.py', *common, '--out_dir', str(d / 'half'), '--max_steps', '4', '--resume')
    full, half = losses(d / 'full'), losses(d / 'half')
    assert sorted(full) == [1, 2, 3, 4] and full == half
    a, b = (torch.load(d / n / 'ckpt.pt', weights_only=False) for n in ('full', 'half'))
    for key in ('model', 'ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
