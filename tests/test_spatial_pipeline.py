"""Each spatial task as a user runs it (subprocesses, tiny models, 16 px): train_ldm.py --task -> a resumed run equal to
an uninterrupted one -> sample.py --task --input -> eval_fid.py --paired; the unconditional UNet sampled beyond its
training size and by replacement inpainting; and every bad input of a task ends in one sentence."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils import data
from tests.helpers import run
from utils.weights import load_autoencoder

TINY = ['--image_size', '16', '--batch_size', '4', '--num_workers', '0', '--device', 'cpu']
TASK_FLAGS = {'sr': ['--sr_factor', '4', '--degradation', 'bsr_light'], 'inpaint': ['--masks', 'mixed', '--mask_area',
              '0.2,0.6'], 'semantic': []}


def losses(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, 'log.jsonl'))]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A 1-step tiny autoencoder (f4) and, from held-out dead leaves, the inputs of each task with their targets."""
    d = tmp_path_factory.mktemp('spatial')
    run('train_ae.py', *TINY, '--out_dir', d / 'ae', '--max_steps', '1', '--lpips_weight', '0', '--eval_interval', '1',
        '--ckpt_interval', '1')
    for sub in ('sr', 'inpaint', 'semantic', 'target'):
        os.makedirs(d / 'in' / sub)
    for i in range(3):
        img, seg = data.dead_leaves(99, i, 16, segmentation=True)
        u8 = (img * 255).round().astype(np.uint8)
        Image.fromarray(u8).save(d / 'in' / 'target' / f'{i}.png')
        Image.fromarray(u8).save(d / 'in' / 'inpaint' / f'{i}.png')
        mask = np.zeros((16, 16), np.uint8)
        mask[3:11, 5:13] = 255
        Image.fromarray(mask).save(d / 'in' / 'inpaint' / f'{i}_mask.png')
        Image.fromarray(seg.astype(np.uint8)).save(d / 'in' / 'semantic' / f'{i}_label.png')
        Image.fromarray(np.asarray(Image.fromarray(u8).resize((4, 4), Image.BICUBIC))).save(d / 'in' / 'sr' / f'{i}.png')
    return d


def train(d, name, *flags, check=True):
    common = [*TINY, '--ae', d / 'ae' / 'ckpt.pt', '--num_samples', '2', '--sample_steps', '2', '--log_interval', '1',
              '--eval_interval', '100', '--ckpt_interval', '2']
    return run('train_ldm.py', *common, '--out_dir', d / name, *flags, check=check)


@pytest.mark.slow
@pytest.mark.parametrize('task', ['sr', 'inpaint', 'semantic'])
def test_each_task_trains_resumes_exactly_samples_and_is_scored(workdir, task):
    d, flags = workdir, ['--task', task, *TASK_FLAGS[task]]
    train(d, f'{task}_full', *flags, '--max_steps', '4')
    train(d, f'{task}_half', *flags, '--max_steps', '2')
    train(d, f'{task}_half', *flags, '--max_steps', '4', '--resume')
    full, half = losses(d / f'{task}_full'), losses(d / f'{task}_half')
    assert sorted(full) == [1, 2, 3, 4] and full == half
    a, b = (torch.load(d / f'{task}_{n}' / 'ckpt.pt', weights_only=True) for n in ('full', 'half'))
    assert all(torch.equal(a['ema'][k], b['ema'][k]) for k in a['ema'])
    assert a['config']['conditioning']['task'] == task and a['config']['backbone']['cond_channels'] > 0

    # a resume with another task, or its settings, is one sentence
    other = 'inpaint' if task != 'inpaint' else 'sr'
    p = train(d, f'{task}_half', '--task', other, '--max_steps', '6', '--resume', check=False)
    assert p.returncode != 0 and p.stderr.strip().startswith('error:') and 'Traceback' not in p.stderr

    out = d / f'{task}_samples'
    run('sample.py', '--ckpt', d / f'{task}_full' / 'ema.pt', '--input', d / 'in' / task, '--steps', '2',
        '--device', 'cpu', '--out_dir', out)
    names = sorted(os.listdir(out / 'images'))
    assert names == ['0.png', '1.png', '2.png']
    arr = np.load(out / 'samples.npz')['arr_0']
    assert arr.shape == (3, 16, 16, 3)  # SR: 4 px inputs x 4
    if task == 'inpaint':  # the composite: outside the hole, the input's pixels exactly
        for n in names:
            x, y = (np.asarray(Image.open(p)) for p in (out / 'images' / n, d / 'in' / 'inpaint' / n))
            hole = np.asarray(Image.open(d / 'in' / 'inpaint' / n.replace('.png', '_mask.png'))) >= 128
            assert np.array_equal(x[~hole], y[~hole]) and not np.array_equal(x[hole], y[hole])
    p = run('eval_fid.py', '--paired', '--fake', out / 'images', '--ref', d / 'in' / 'target', '--num_workers', '0',
            '--device', 'cpu', '--out', d / f'{task}_metrics.json')
    metrics = json.load(open(d / f'{task}_metrics.json'))
    assert metrics['num_pairs'] == 3 and 5 < metrics['paired_psnr'] < 100 and -1 <= metrics['paired_ssim'] <= 1


@pytest.mark.slow
def test_an_unconditional_unet_samples_beyond_its_training_size_and_inpaints_by_replacement(workdir):
    d = workdir
    run('train_ldm.py', *TINY[:1], '32', *TINY[2:], '--model', 'unet', '--ae', d / 'ae' / 'ckpt.pt', '--max_steps', '1',
        '--num_samples', '1', '--sample_steps', '1', '--eval_interval', '100', '--out_dir', d / 'uncond32')
    for H, W in ((64, 64), (96, 64)):
        out = d / f'uncond_{H}x{W}'
        run('sample.py', '--ckpt', d / 'uncond32' / 'ema.pt', '--num_samples', '2', '--steps', '2', '--device', 'cpu',
            '--H', H, '--W', W, '--out_dir', out)
        assert np.load(out / 'samples.npz')['arr_0'].shape == (2, H, W, 3)
    # a checkpoint made before tasks (no 'conditioning' in its config) samples as the unconditional model it is
    old = torch.load(d / 'uncond32' / 'ema.pt', weights_only=True)
    del old['config']['conditioning']
    torch.save(old, d / 'old.pt')
    for ckpt, out in ((d / 'uncond32' / 'ema.pt', d / 'new_samples'), (d / 'old.pt', d / 'old_samples')):
        run('sample.py', '--ckpt', ckpt, '--num_samples', '2', '--steps', '2', '--device', 'cpu', '--out_dir', out)
    assert np.array_equal(*(np.load(d / n / 'samples.npz')['arr_0'] for n in ('new_samples', 'old_samples')))
    out = d / 'replace'
    run('sample.py', '--ckpt', d / 'uncond32' / 'ema.pt', '--task', 'inpaint', '--inpaint_mode', 'replace', '--input',
        d / 'in' / 'inpaint', '--steps', '2', '--sampler', 'ddpm', '--device', 'cpu', '--out_dir', out)
    x, y = (np.asarray(Image.open(p)) for p in (out / 'images' / '0.png', d / 'in' / 'inpaint' / '0.png'))
    hole = np.asarray(Image.open(d / 'in' / 'inpaint' / '0_mask.png')) >= 128
    assert np.array_equal(x[~hole], y[~hole])


def one_sentence(p, *words):
    assert p.returncode != 0 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith('error:') and all(w in line for w in words), line


@pytest.mark.slow
def test_bad_inputs_of_a_task_are_one_sentence(workdir, tmp_path):
    d = workdir
    train(d, 'sr_bad', '--task', 'sr', '--max_steps', '1')
    train(d, 'inpaint_bad', '--task', 'inpaint', '--max_steps', '1')
    train(d, 'semantic_bad', '--task', 'semantic', '--max_steps', '1')
    sample = lambda ckpt, folder, *flags: run('sample.py', '--ckpt', d / ckpt / 'ema.pt', '--input', folder, '--steps',  # noqa: E731
                                               '1', '--device', 'cpu', '--out_dir', tmp_path / 'out', '--overwrite',
                                               *flags, check=False)
    bad = tmp_path / 'bad'
    os.makedirs(bad)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(bad / 'a.png')  # x4 = 12, not a multiple of 8
    one_sentence(sample('sr_bad', bad), 'multiple of 8')
    for f in os.listdir(bad):
        os.remove(bad / f)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(bad / 'a.png')
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(bad / 'a_mask.png')
    one_sentence(sample('inpaint_bad', bad), 'a_mask.png', "image's size")
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(bad / 'a_mask.png')
    one_sentence(sample('inpaint_bad', bad), 'not binary')
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(bad / 'b.png')
    one_sentence(sample('inpaint_bad', bad), '1 file(s)', 'b')
    os.remove(bad / 'b.png')
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(bad / 'c_label.png')
    one_sentence(sample('semantic_bad', bad), 'c_label.png', 'never saw')
    one_sentence(sample('sr_bad', bad, '--task', 'semantic'), 'trained for --task sr')
    one_sentence(sample('sr_bad', bad, '--inpaint_mode', 'replace'), 'inpaint_mode')
    one_sentence(run('sample.py', '--ckpt', d / 'sr_bad' / 'ema.pt', '--device', 'cpu', '--out_dir', tmp_path / 'o2',
                     check=False), '--input DIR')
    one_sentence(train(d, 'dit_task', '--task', 'sr', '--model', 'dit', '--max_steps', '1', check=False), '--model unet')
    train(d, 'dit', '--model', 'dit', '--max_steps', '1')
    one_sentence(run('sample.py', '--ckpt', d / 'dit' / 'ema.pt', '--H', '32', '--device', 'cpu', '--out_dir',
                     tmp_path / 'o3', check=False), 'position embedding')
    one_sentence(train(d, 'cache_task', '--task', 'inpaint', '--cache_latents', tmp_path / 'cache', '--cache_size', '4',
                       '--max_steps', '1', check=False), '--cache_latents')
    one_sentence(train(d, 'sr_flag', '--sr_factor', '2', '--max_steps', '1', check=False), '--sr_factor', '--task sr')
    one_sentence(train(d, 'sr_odd', '--task', 'sr', '--sr_factor', '3', '--max_steps', '1', check=False), 'multiple')


@pytest.mark.slow
def test_sdedit_edits_each_input_and_at_strength_0_returns_its_reconstruction(workdir, tmp_path):
    d = workdir
    train(d, 'sdedit', '--model', 'unet', '--max_steps', '1')
    sample = lambda out, *flags, check=True: run('sample.py', '--ckpt', d / 'sdedit' / 'ema.pt', '--input',  # noqa: E731
                                                 d / 'in' / 'target', '--steps', '4', '--device', 'cpu', '--out_dir',
                                                 tmp_path / out, *flags, check=check)
    sample('s0', '--strength', '0')
    ae = load_autoencoder(str(d / 'ae' / 'ckpt.pt'))
    for n in ('0', '1', '2'):
        x = torch.from_numpy(np.asarray(Image.open(d / 'in' / 'target' / f'{n}.png'), np.float32) / 127.5 - 1)
        with torch.no_grad():
            rec = ae.decode(ae.encode(x.permute(2, 0, 1)[None], False)[0])[0]
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        got = np.asarray(Image.open(tmp_path / 's0' / 'images' / f'{n}.png'), np.float32)
        assert np.abs(got - rec).max() <= 1  # the latent normalisation undone, up to rounding
    for sampler in ('ddim', 'ddpm'):
        sample(f's_{sampler}', '--strength', '0.5', '--sampler', sampler)
        edited = np.load(tmp_path / f's_{sampler}' / 'samples.npz')['arr_0']
        assert edited.shape == (3, 16, 16, 3) and not np.array_equal(edited, np.load(tmp_path / 's0' / 'samples.npz')['arr_0'])
    one_sentence(run('sample.py', '--ckpt', d / 'sdedit' / 'ema.pt', '--strength', '0.5', '--device', 'cpu',
                     '--out_dir', tmp_path / 'b1', check=False), '--input DIR')
    one_sentence(sample('b2', '--strength', '0.5', '--sampler', 'plms', check=False), 'plms')
    one_sentence(sample('b3', '--strength', '0.5', '--H', '32', check=False), '--strength')
    p = sample('b4', '--strength', '1.5', check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith('--strength: must be >= 0 and <= 1, got 1.5')
    one_sentence(sample('b5', check=False), '--input', '--strength')
    train(d, 'sdedit_sr', '--task', 'sr', '--max_steps', '1')
    one_sentence(run('sample.py', '--ckpt', d / 'sdedit_sr' / 'ema.pt', '--input', d / 'in' / 'target', '--strength',
                     '0.5', '--device', 'cpu', '--out_dir', tmp_path / 'b6', check=False), 'no task', '--task sr')
    train(d, 'sdedit_dit', '--model', 'dit', '--max_steps', '1')
    big = tmp_path / 'big'
    os.makedirs(big)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(big / 'a.png')
    one_sentence(run('sample.py', '--ckpt', d / 'sdedit_dit' / 'ema.pt', '--input', big, '--strength', '0.5',
                     '--device', 'cpu', '--out_dir', tmp_path / 'b7', check=False), 'training size', '16x16')
