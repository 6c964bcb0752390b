"""The whole second stage on CPU with tiny models and 16 px images, run as a user runs it (subprocesses):
train_ae.py -> train_ldm.py (UNet on the embedded data, DiT from a latent cache of a labelled folder, the same DiT under
rectified flow) -> sample.py. Asserted: the files each script promises, the ADM npz format, samples that do not depend
on the batch size (hence not on the world size), a latent cache equal to encoding the images, guidance confined to
--cfg_interval, and, under either objective, a resumed run that reproduces an uninterrupted one exactly and two DDP
processes that keep identical weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import run as run_script, train_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu']


def run(script, *flags):
    # one thread, as tests.helpers.run: the threads a script takes follow the idle cores (cli.set_cpu_threads), and
    # two runs with different thread counts round their sums differently, which an exact-resume test must not see
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def with_random_weights(ckpt, out):
    """A copy of the export `ckpt` whose EMA weights are perturbed at random, so that (unlike a 2-step DiT, whose
    adaLN-Zero output is still ~0) its output depends on the label and guidance shows."""
    export = torch.load(ckpt, weights_only=True)
    g = torch.Generator().manual_seed(0)
    export['ema'] = {k: v + 0.3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                     for k, v in export['ema'].items()}
    torch.save(export, out)
    return str(out)


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
    """Three 2-step LDMs on the workdir's autoencoder: a UNet on the embedded dead-leaves data (unconditional), latents
    encoded on the fly, and a DiT on the labelled folder (class-conditional) from the latent cache, trained as DDPM and
    as a rectified flow (logit-normal times, shift 2)."""
    d, ae = workdir, str(workdir / 'ae' / 'ckpt.pt')
    common = [*TINY, '--ae', ae, '--max_steps', '2', '--num_samples', '4', '--sample_steps', '2', '--log_interval', '1',
              '--eval_interval', '2', '--ckpt_interval', '2']
    run('train_ldm.py', *common, '--out_dir', str(d / 'unet'))
    run('train_ldm.py', *common, '--out_dir', str(d / 'dit'), '--model', 'dit', '--data', str(d / 'images'),
        '--cache_latents', str(d / 'cache'))
    run('train_ldm.py', *common, '--out_dir', str(d / 'dit_flow'), '--model', 'dit', '--data', str(d / 'images'),
        '--cache_latents', str(d / 'cache'), '--objective', 'flow', '--time_sampling', 'logit_normal', '--time_shift', '2')
    return d


@pytest.mark.slow
def test_both_backbones_train_and_save_what_they_were_made_with(trained):
    d = trained
    for name in ('unet', 'dit'):
        assert os.path.exists(d / name / 'samples_0000002.png') and len(losses(d / name)) == 2
    ckpt = torch.load(d / 'dit' / 'ckpt.pt', weights_only=True)
    assert ckpt['config']['backbone']['num_classes'] == 2 and ckpt['config']['learn_sigma'] and ckpt['step'] == 2
    assert torch.load(d / 'unet' / 'ckpt.pt', weights_only=True)['config']['backbone']['num_classes'] == 0
    # the same DiT as a rectified flow: no learned variance, and the objective and Flow's arguments on record
    flow = torch.load(d / 'dit_flow' / 'ema.pt', weights_only=True)['config']
    assert os.path.exists(d / 'dit_flow' / 'samples_0000002.png') and len(losses(d / 'dit_flow')) == 2
    assert not flow['learn_sigma'] and not flow['backbone']['learn_sigma'] and flow['schedule'] is None
    assert {k: flow[k] for k in ('objective', 'prediction', 'time_sampling', 'logit_mean', 'logit_std', 'time_shift')} == {
        'objective': 'flow', 'prediction': 'velocity', 'time_sampling': 'logit_normal', 'logit_mean': 0.0,
        'logit_std': 1.0, 'time_shift': 2.0}
    ddpm = torch.load(d / 'dit' / 'ema.pt', weights_only=True)['config']
    assert ddpm['objective'] == ddpm['prediction'] == 'eps' and ddpm['time_shift'] is None


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
    from utils.weights import load_autoencoder
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
    from utils.data import random_subset
    latents = np.load(trained / 'cache' / 'latents.npy')
    ckpt = torch.load(trained / 'dit' / 'ckpt.pt', weights_only=True)
    z = torch.from_numpy(latents[random_subset(latents, 4, 0), 0].astype(np.float64))
    assert ckpt['latent_shift'] == pytest.approx(z.mean().item(), rel=1e-9)
    assert ckpt['latent_scale'] == pytest.approx(1 / z.std(unbiased=False).item(), rel=1e-9)


@pytest.mark.slow
def test_sample_py_writes_adms_npz_from_the_ema_export(trained):
    # class-conditional DiT with guidance and ancestral DDPM, from ema.pt: the npz in ADM's format, the grid, the PNGs
    d = trained
    export = torch.load(d / 'dit' / 'ema.pt', weights_only=True)
    ckpt = torch.load(d / 'dit' / 'ckpt.pt', weights_only=True)
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
    a1, a3 = (np.load(trained / f'u{bs}' / 'samples.npz')['arr_0'].astype(int) for bs in ('1', '3'))
    # the same images up to the last bit of uint8: a CPU convolution may pick another algorithm for another batch
    # size, and a float difference of 1e-7 can flip one rounding (seen: 0.04% of the values, by 1 level)
    assert np.abs(a1 - a3).max() <= 1 and (a1 != a3).mean() < 1e-3 and not np.array_equal(a1[0], a1[1])


@pytest.mark.slow
@pytest.mark.parametrize('objective', [[], ['--objective', 'flow', '--time_sampling', 'logit_normal']],
                         ids=['eps', 'flow'])
def test_resume_is_exact(workdir, objective):
    # 4 steps in one go == 2 steps, then --resume to 4: the same losses and the same weights. Class-conditional DiT
    # from images, so label dropout, flips, posterior samples, timesteps (or flow times) and noise all draw random
    # numbers.
    d, ae = workdir, str(workdir / 'ae' / 'ckpt.pt')
    name = objective[1] if objective else 'eps'
    common = [*TINY, '--ae', ae, '--model', 'dit', '--data', str(d / 'images'), '--num_samples', '2',
              '--sample_steps', '2', '--log_interval', '1', '--eval_interval', '100', '--ckpt_interval', '2', *objective]
    run('train_ldm.py', *common, '--out_dir', str(d / f'full_{name}'), '--max_steps', '4')
    run('train_ldm.py', *common, '--out_dir', str(d / f'half_{name}'), '--max_steps', '2')
    run('train_ldm.py', *common, '--out_dir', str(d / f'half_{name}'), '--max_steps', '4', '--resume')
    full, half = losses(d / f'full_{name}'), losses(d / f'half_{name}')
    assert sorted(full) == [1, 2, 3, 4] and full == half
    a, b = (torch.load(d / f'{n}_{name}' / 'ckpt.pt', weights_only=True) for n in ('full', 'half'))
    for key in ('model', 'ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


@pytest.mark.slow
def test_flow_model_samples_with_its_own_family_and_guides_only_inside_the_interval(trained):
    # a flow checkpoint is sampled by Heun (the default) or SiT's SDE; guidance over the whole of [0, 1] is
    # guidance everywhere, and an interval that holds none of the sampler's times is no guidance at all
    d = trained
    ckpt = with_random_weights(d / 'dit_flow' / 'ema.pt', d / 'flow_random.pt')

    def sample(name, *flags, num_samples=3, batch_size=3):
        out = run('sample.py', '--ckpt', ckpt, '--num_samples', str(num_samples), '--batch_size', str(batch_size),
                  '--device', 'cpu', '--steps', '3', '--classes', '1', '--out_dir', str(d / name), *map(str, flags))
        return out, np.load(d / name / 'samples.npz')['arr_0']
    out, heun = sample('f_heun')
    assert 'heun 3 steps (5 evaluations), time shift 2' in out
    _, guided = sample('f_cfg', '--cfg_scale', 4)
    _, whole = sample('f_cfg_all', '--cfg_scale', 4, '--cfg_interval', '0,1')
    _, nowhere = sample('f_cfg_none', '--cfg_scale', 4, '--cfg_interval', '0,0.01')  # Heun's last time above 0: > 0.01
    assert np.array_equal(whole, guided) and not np.array_equal(guided, heun)
    assert np.abs(nowhere.astype(int) - heun).max() <= 1  # the conditional half of a doubled batch: equal up to rounding
    # the SDE's noise is per sample, so its samples do not depend on the batch size either
    _, sde1 = sample('f_sde1', '--sampler', 'sde', batch_size=1)
    _, sde3 = sample('f_sde3', '--sampler', 'sde')
    assert np.array_equal(sde1, sde3) and not np.array_equal(sde1[0], sde1[1])


@pytest.mark.slow
def test_ddpm_cfg_interval_is_the_same_noise_levels(trained):
    # for a DDPM model --cfg_interval is read in the flow time of equal noise level: [0, 1] holds every timestep
    d = trained
    ckpt = with_random_weights(d / 'dit' / 'ema.pt', d / 'ddpm_random.pt')
    flags = ['--num_samples', '2', '--device', 'cpu', '--steps', '3', '--cfg_scale', '4']
    run('sample.py', '--ckpt', ckpt, *flags, '--out_dir', str(d / 'd_cfg'))
    run('sample.py', '--ckpt', ckpt, *flags, '--cfg_interval', '0,1', '--out_dir', str(d / 'd_cfg_all'))
    run('sample.py', '--ckpt', ckpt, *flags[:-2], '--out_dir', str(d / 'd_plain'))
    a, b, plain = (np.load(d / n / 'samples.npz')['arr_0'] for n in ('d_cfg', 'd_cfg_all', 'd_plain'))
    assert np.array_equal(a, b) and not np.array_equal(a, plain)
    p = run_script('sample.py', '--ckpt', ckpt, *flags, '--cfg_interval', '0,0.005', '--out_dir', d / 'd_none',
                   check=False)  # DiT's linear schedule starts at t = 0.0099
    assert p.returncode != 0 and 'no timestep of the linear schedule has a noise level in --cfg_interval 0,0.005' in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['eps', 'flow'])
def test_ddp_two_processes_keep_identical_weights(workdir, tmp_path, objective):
    # two gloo processes with gradient accumulation, class-conditional DiT: every rank ends with the same weights
    d, ae = workdir, workdir / 'ae' / 'ckpt.pt'
    run_script('train_ldm.py', *TINY, '--ae', ae, '--model', 'dit', '--data', d / 'images', '--objective', objective,
               '--max_steps', 2, '--grad_accum', 2, '--num_samples', 2, '--sample_steps', 2, '--log_interval', 1,
               '--out_dir', tmp_path, torchrun=2)
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert log[-1]['rank_checksum_diff'] == 0.0 and sorted(train_rows(tmp_path)) == [1, 2]
