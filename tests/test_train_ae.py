"""Stage 1 training: the SE term, exact resume, atomic checkpoints, DDP, failure handling."""
import os
import math

import pytest
import torch

from tests.helpers import run, read_log, train_rows, TINY_AE


def test_se_weight_zero_adds_nothing_and_nonzero_changes_gradients(tmp_path):
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path / 'base', '--max_steps', 1, '--se_weight', 0)
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path / 'base2', '--max_steps', 1,
                            '--se_weight', 0, '--se_scales', '2')
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path / 'se', '--max_steps', 1, '--se_weight', 0.25)
    b, b2, s = (train_rows(tmp_path / d)[1] for d in ('base', 'base2', 'se'))
    # se_weight 0: the loss is exactly reconstruction + regulariser, whatever the scales
    assert 'se' not in b and b['loss'] == pytest.approx(b['rec'] + b['reg'], rel=1e-6)
    assert b2['grad_norm'] == b['grad_norm'] and b2['loss'] == b['loss']
    # se_weight > 0: same reconstruction at step 1 (same init, data, noise), extra loss, different gradient
    assert s['rec'] == b['rec']
    assert s['loss'] == pytest.approx(b['loss'] + 0.25 * s['se'], rel=1e-5)
    assert s['se'] > 0 and s['grad_norm'] != b['grad_norm']


def test_resume_is_exact(tmp_path):
    args = [*TINY_AE, '--image_size', 32, '--se_weight', 0.25, '--ema_decay', 0.9, '--disc_start', 2]
    run('train_ae.py', *args, '--out_dir', tmp_path / 'full', '--max_steps', 6)
    run('train_ae.py', *args, '--out_dir', tmp_path / 'split', '--max_steps', 3)
    run('train_ae.py', *args, '--out_dir', tmp_path / 'split', '--max_steps', 6, '--resume')
    full, split = train_rows(tmp_path / 'full'), train_rows(tmp_path / 'split')
    for step in (4, 5, 6):  # after the resume: discriminator on, SE scales drawn, KL noise, all identical
        for key in ('loss', 'rec', 'reg', 'se', 'd', 'g', 'grad_norm'):
            assert split[step][key] == full[step][key], (step, key)
    a = torch.load(tmp_path / 'full' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)
    for key in ('model', 'ema', 'disc'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_new_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path, '--max_steps', 1)
    before = (tmp_path / 'ckpt.pt').read_bytes()
    p = run('train_ae.py', *TINY_AE, '--out_dir', tmp_path, '--max_steps', 1, check=False)
    assert p.returncode != 0 and 'already exists' in p.stderr and 'Traceback' not in p.stderr
    assert (tmp_path / 'ckpt.pt').read_bytes() == before


def test_resume_without_checkpoint_is_one_sentence(tmp_path):
    p = run('train_ae.py', *TINY_AE, '--out_dir', tmp_path, '--max_steps', 1, '--resume', check=False)
    assert p.returncode != 0 and 'does not exist' in p.stderr and 'Traceback' not in p.stderr


def test_atomic_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    from utils.common import save_checkpoint
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'step': 1, 'w': torch.ones(3)}, path)

    def dying_save(obj, f, *a, **k):  # a kill in the middle of writing: half the bytes, then death
        f.write(b'\x80\x02partial')
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'step': 2, 'w': torch.zeros(3)}, path)
    monkeypatch.undo()
    ckpt = torch.load(path)
    assert ckpt['step'] == 1 and torch.equal(ckpt['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temp debris


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / 'run'
    run('train_ae.py', *TINY_AE, '--out_dir', out, '--max_steps', 2, '--ckpt_interval', 1)
    before = (out / 'ckpt.pt').read_bytes()
    # the check is deferred to the next log line or checkpoint (no host sync per step): here the final checkpoint
    p = run('train_ae.py', *TINY_AE, '--out_dir', out, '--max_steps', 5, '--resume', '--lr', 1e38,
            '--log_interval', 1000, check=False)
    assert p.returncode != 0 and 'step 5' not in p.stdout
    assert 'the loss became non-finite at step' in p.stderr and 'Traceback' not in p.stderr
    assert (out / 'ckpt.pt').read_bytes() == before


def test_fine_tuning_trains_with_its_gan_and_lpips_size_is_checked_at_start(tmp_path):
    args = [*TINY_AE, '--image_size', 32, '--max_steps', 1]
    run('train_ae.py', *args, '--out_dir', tmp_path / 'base')
    assert 'g' not in train_rows(tmp_path / 'base')[1]  # from scratch: LDM's disc_start 50001
    run('train_ae.py', *args, '--out_dir', tmp_path / 'ft', '--init_from', tmp_path / 'base' / 'ckpt.pt')
    row = train_rows(tmp_path / 'ft')[1]  # fine-tuning: the adversarial loss from step 0, lambda under 1e4 / 3HW
    assert math.isfinite(row['g']) and math.isfinite(row['d']) and 0 <= row['adaptive_w'] <= 1e4 / (3 * 32 * 32)
    p = run('train_ae.py', *args, '--out_dir', tmp_path / 'lpips', '--lpips_weight', 1, '--se_weight', 0.25,
            '--se_scales', '2,4', check=False)  # 32 px / 4 = 8 px: below VGG's 16
    assert p.returncode != 0 and 'LPIPS needs images of at least 16 pixels' in p.stderr and 'Traceback' not in p.stderr


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_parameters(tmp_path):
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path, '--max_steps', 3, '--se_weight', 0.25,
        '--grad_accum', 2, '--disc_start', 1, '--image_size', 32, '--device', 'cpu', torchrun=2)
    log = read_log(tmp_path)
    assert log[-1]['rank_checksum_diff'] == 0.0  # autoencoder and discriminator, SE and GAN both on
    assert math.isfinite(train_rows(tmp_path)[3]['d'])


def test_background_checkpoint_is_a_snapshot_and_a_failed_write_is_reported(tmp_path, monkeypatch):
    from utils.common import CheckpointWriter
    w, weights = CheckpointWriter(), torch.ones(1000)
    w.save({tmp_path / 'a.pt': {'w': weights, 'opt': {'state': [weights * 2]}}})
    weights.zero_()  # training goes on while the file is written: the file must hold the values at save()
    w.wait()
    saved = torch.load(tmp_path / 'a.pt')
    assert torch.equal(saved['w'], torch.ones(1000)) and torch.equal(saved['opt']['state'][0], torch.full((1000,), 2.))

    def broken_disk(*a, **k):  # (a full disk has its own sentence, tested with the bad inputs)
        raise OSError(5, 'Input/output error')
    monkeypatch.setattr(torch, 'save', broken_disk)
    w.save({tmp_path / 'a.pt': {'w': weights}})
    with pytest.raises(SystemExit, match='writing a checkpoint failed .* the previous one is intact'):
        w.wait()
    assert torch.equal(torch.load(tmp_path / 'a.pt')['w'], torch.ones(1000))


def test_non_finite_note_keeps_the_first_bad_step_without_a_host_sync():
    from utils.common import note_non_finite
    first = torch.full((), float('inf'), dtype=torch.float64)
    for step, loss in enumerate([1.0, 2.0, float('nan'), 3.0, float('inf')], start=1):
        first = note_non_finite(first, torch.tensor(loss), step)
    assert first.item() == 3


def test_video_run_resumes_exactly_and_writes_previews(tmp_path):
    args = [*TINY_AE, '--num_frames', 9, '--image_size', 32, '--batch_size', 1, '--se_weight', 0.25, '--se_temporal',
            '--ema_decay', 0.9, '--disc_start', 2, '--eval_interval', 4]
    run('train_ae.py', *args, '--out_dir', tmp_path / 'full', '--max_steps', 4)
    run('train_ae.py', *args, '--out_dir', tmp_path / 'split', '--max_steps', 2)
    run('train_ae.py', *args, '--out_dir', tmp_path / 'split', '--max_steps', 4, '--resume')
    full, split = train_rows(tmp_path / 'full'), train_rows(tmp_path / 'split')
    for step in (3, 4):  # after the resume: frame discriminator on, SE scales drawn, KL noise, all identical
        for key in ('loss', 'rec', 'reg', 'se', 'd', 'g', 'grad_norm'):
            assert split[step][key] == full[step][key], (step, key)
    a = torch.load(tmp_path / 'full' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'split' / 'ckpt.pt', weights_only=True)
    for key in ('model', 'ema', 'disc'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    import av
    with av.open(str(tmp_path / 'full' / 'recon_0000004.mp4')) as mp4:
        assert sum(1 for _ in mp4.decode(video=0)) == 9  # one video frame per clip frame
    evals = [r for r in read_log(tmp_path / 'full') if 'val_psnr' in r]
    assert evals and 'val_psnr_bicubic' in evals[-1] and 'hf_share_latent' in evals[-1]


def test_online_hf_probe_is_spectrum_hf_share_of_the_held_out_latent_means(tmp_path):
    from utils.data import make_dataset
    from utils.weights import load_autoencoder
    from utils.spectral import hf_share
    run('train_ae.py', *TINY_AE, '--image_size', 32, '--out_dir', tmp_path, '--max_steps', 1, '--eval_interval', 1,
        '--dtype', 'float32')
    probe = [r for r in read_log(tmp_path) if 'hf_share_latent' in r][-1]
    x = torch.stack([make_dataset(None, 32, seed=0, train=False)[i][0] for i in range(2)])  # --num_eval 2
    with torch.no_grad():
        z, _ = load_autoencoder(str(tmp_path / 'ckpt.pt')).encode(x, sample=False)  # (2, 4, 8, 8)
    assert probe['hf_share_latent'] == pytest.approx(hf_share(z), rel=1e-5)
    assert probe['hf_share_rgb'] == pytest.approx(hf_share(torch.nn.functional.avg_pool2d(x, 4)), rel=1e-6)


def test_warmup_is_linear_in_the_step(tmp_path):
    run('train_ae.py', *TINY_AE, '--out_dir', tmp_path, '--max_steps', 2, '--lr', 1e-3, '--warmup_steps', 4)
    rows = train_rows(tmp_path)
    assert rows[1]['lr'] == pytest.approx(1e-3 / 4) and rows[2]['lr'] == pytest.approx(2e-3 / 4)  # lr (step + 1) / 4


@pytest.mark.parametrize('frames', [1, 9])
def test_logged_bicubic_reference_is_spectrums_on_the_same_images(tmp_path, frames, capsys):
    # "bicubic at the latent grid" has one definition (metrics.bicubic_at_latent_grid): the number train_ae.py logs for
    # its held-out images (clips) is the one spectrum.py reports for the same images, to the rounding of the sums
    import json
    import spectrum
    video = ['--num_frames', frames, '--batch_size', 1] if frames > 1 else []
    run('train_ae.py', *TINY_AE, '--image_size', 32, *video, '--out_dir', tmp_path / 'ae', '--max_steps', 1,
        '--eval_interval', 1, '--dtype', 'float32')
    logged = [r for r in read_log(tmp_path / 'ae') if 'val_psnr_bicubic' in r][-1]['val_psnr_bicubic']
    spectrum.main(['--ckpt', str(tmp_path / 'ae' / 'ckpt.pt'), '--label', 'ae', '--image_size', '32', '--num_images', '2',
                   '--batch_size', '2', '--num_frames', str(frames), '--device', 'cpu', '--out_dir', str(tmp_path / 's')])
    assert 'nan' not in capsys.readouterr().out  # a row without a measure shows '-' (RGB at full size: temporal only)
    if frames > 1:
        measured = json.load(open(tmp_path / 's' / 'spectrum_video.json'))['video']['ae']['bicubic_psnr']
    else:
        measured = json.load(open(tmp_path / 's' / 'spectrum.json'))['autoencoders']['ae']['bicubic_psnr']
    assert logged == pytest.approx(measured, rel=1e-9) and 10 < logged < 40


def test_a_grid_names_its_rows_in_a_margin_and_leaves_the_images_as_they_were(tmp_path):
    import numpy as np
    from PIL import Image
    from utils.common import save_image_grid
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    save_image_grid(x, tmp_path / 'plain.png', nrow=3)
    save_image_grid(x, tmp_path / 'named.png', nrow=3, row_labels=['input', 'reconstruction'])
    plain, named = (np.asarray(Image.open(tmp_path / f)) for f in ('plain.png', 'named.png'))
    assert named.shape[0] == plain.shape[0] and named.shape[1] > plain.shape[1]
    assert np.array_equal(named[:, -plain.shape[1]:], plain)
    margin = named[:, :named.shape[1] - plain.shape[1]].min(axis=2)
    for row in range(2):  # text in each row's band of the margin
        assert (margin[2 + row * 18:(row + 1) * 18] < 128).any()
