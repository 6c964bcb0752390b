"""The one-command experiment: the smoke run writes figures 1 and 5 with finite numbers, and a rerun reuses exactly the
artefacts whose settings match and remakes the others. The video smoke run (--num_frames 17) reports the numbers its
artefacts give when recomputed, with spectra in range and its trivial references beside the samples."""
import json
import math

import numpy as np
import pytest
import torch

from data import DeadLeaves, MovingDeadLeaves
from tests.helpers import run
from weights import load_autoencoder


def numbers(o):
    if isinstance(o, dict):
        return [v for v in o.values() for v in numbers(v)]
    if isinstance(o, list):
        return [v for e in o for v in numbers(e)]
    return [o] if isinstance(o, (int, float)) and not isinstance(o, bool) else []


@pytest.mark.slow
def test_smoke_run_writes_figures_and_reuses_only_what_matches(tmp_path):
    args = ['reproduce.py', '--smoke', '--seeds', 1, '--out_dir', tmp_path]
    run(*args, timeout=1800)
    report = json.loads((tmp_path / 'report.json').read_text())
    fig1 = report['fig1']
    assert set(fig1['ldm']) == set(fig1['autoencoders']) == {'baseline', 'se'}
    assert all(math.isfinite(v) for v in numbers(fig1) + numbers(report['fig5']))
    for arm in ('baseline', 'se'):
        (curve,) = [s['curve'] for s in fig1['ldm'][arm]]
        assert [p['step'] for p in curve] == [2, 4]  # --ldm_steps 4 scored at --ldm_evals 2 evenly spaced steps
        assert all('swd_avg' in p for p in curve)
    base, se = fig1['autoencoders']['baseline'][0], fig1['autoencoders']['se'][0]
    assert base['hf_share'] != se['hf_share']  # the arms differ in training...
    assert base['bicubic_psnr'] == se['bicubic_psnr']  # ...and are measured on the same held-out images
    assert len(report['verdict']) >= 3 and all(isinstance(v, str) for v in report['verdict'])
    # the references beside the curves: a second draw of real images (the training stream, not the held-out set the
    # samples are scored against), and that draw through each AE, scored by the same eval_fid.py call
    refs = fig1['references']
    assert set(refs) == {'real', 'baseline AE reconstructions', 'se AE reconstructions'}
    assert all(math.isfinite(m['swd_avg']) for m in refs.values())
    real = np.load(tmp_path / 'references' / 'real' / 'samples.npz')['arr_0']
    drawn = torch.stack([DeadLeaves(64, seed=0, train=True)[i][0] for i in range(len(real))])
    assert np.array_equal(real, ((drawn + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    ae = load_autoencoder(str(tmp_path / 'seed0' / 'ae_z16_kl1e-06_se0' / 'ckpt.pt'))
    with torch.no_grad():
        rec = ae.decode(ae.encode(drawn, sample=False)[0]).clamp(-1, 1)
    made = np.load(tmp_path / 'references' / 'baseline_ae' / 'samples.npz')['arr_0']
    assert np.abs(made.astype(int) - ((rec + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()).max() <= 1
    md = (tmp_path / 'report.md').read_text()
    for name in ('fig1_convergence.png', 'fig5_erasure.png', 'fig5_strip.png'):
        assert f']({name})' in md and (tmp_path / name).stat().st_size > 0
    for sub in ('ae_z16_kl1e-06_se0', 'ldm_z16_kl1e-06_se0.25', 'samples_z16_kl1e-06_se0_0000004'):
        assert (tmp_path / 'seed0' / sub / 'reproduce_settings.json').exists()  # every artefact records its settings

    # a rerun with one sampling setting changed: autoencoders, spectra and LDMs reused, samples and scores remade
    p = run(*args, '--sample_steps', 2, timeout=1800)
    assert 'making' not in ' '.join(l for l in p.stdout.splitlines() if 'ae_' in l or 'ldm_' in l)
    assert p.stdout.count('reusing') >= 4 and 'remaking' in p.stdout and 'settings changed' in p.stdout
    changed = json.loads((tmp_path / 'report.json').read_text())
    assert changed['fig1']['autoencoders'] == fig1['autoencoders']
    assert changed['fig1']['ldm']['se'][0]['curve'] != fig1['ldm']['se'][0]['curve']

    # the same command again: everything reused, the same numbers
    p = run(*args, '--sample_steps', 2, timeout=1800)
    assert 'making' not in p.stdout and '$ ' not in p.stdout  # no script was run
    assert json.loads((tmp_path / 'report.json').read_text())['fig1'] == changed['fig1']


@pytest.mark.slow
def test_video_smoke_run_reports_what_its_artefacts_hold(tmp_path):
    from swd import video_swd
    args = ['reproduce.py', '--num_frames', 17, '--smoke', '--seeds', 1, '--out_dir', tmp_path]
    run(*args, timeout=1800)
    report = json.loads((tmp_path / 'report.json').read_text())
    md = (tmp_path / 'report.md').read_text()
    fig1, arms = report['fig1'], {'baseline', 'se', 'control', 'se_ft'}  # from scratch; the fine-tune and its control
    assert set(fig1['ldm']) == set(fig1['autoencoders']) == arms
    for name in ('fig1_convergence.png', 'spectra_spatial.png', 'spectra_temporal.png'):
        assert f']({name})' in md and (tmp_path / name).stat().st_size > 0
    base = fig1['autoencoders']['baseline'][0]
    for arm in arms:
        (ae,), (ldm,) = fig1['autoencoders'][arm], fig1['ldm'][arm]
        for key in ('hf_share', 'hf_share_sample', 'rgb_hf_share', 'temporal_hf', 'rgb_temporal_hf'):
            assert 0 < ae[key] < 2, (arm, key)  # shares in (0, 1); temporal ratios 1 for white noise in time
        assert 0 < ae['hf_share'] < 1 and len(ae['profile']) == 64 and len(ae['hf_share_per_frame']) == 5
        # 17 frames -> 5 latent frames -> 4 temporal AC frequencies, each channel's profile divided by its mean
        assert len(ae['temporal_profile']) == 4 and np.mean(ae['temporal_profile']) == pytest.approx(1, abs=1e-9)
        assert ae['bicubic_psnr'] == base['bicubic_psnr']  # every arm is measured on the same held-out clips
        assert [p['step'] for p in ldm['curve']] == [2] and (tmp_path / ldm['curve'][0]['grid']).stat().st_size > 0
    assert fig1['autoencoders']['se'][0]['hf_share'] != base['hf_share']  # the arms differ in training
    clips = lambda path: torch.from_numpy(np.load(path)['arr_0']).permute(0, 1, 4, 2, 3)  # noqa: E731 (N, T, 3, H, W)
    real = clips(tmp_path / 'real_clips' / 'real.npz')  # the held-out clips every set is scored against
    real2 = clips(tmp_path / 'references' / 'real' / 'samples.npz')  # a second draw, from the training stream
    assert real.shape == real2.shape == (4, 17, 3, 32, 32) and not any(torch.equal(a, b) for a in real for b in real2)

    # the trivial references, recomputed from the artefacts: a second draw of real clips...
    refs = fig1['references']
    assert set(refs) == {'real'} | {f"{arm} AE reconstructions" for arm in arms}
    # (rel 1e-5: the subprocess's float32 sums run in another order with other thread counts; 3e-9 was seen in CI)
    assert refs['real']['video_swd'] == pytest.approx(video_swd(real, real2)['video_swd'], rel=1e-5)
    assert f"| reference: real | {refs['real']['video_swd']:.2f} |" in md
    # ...is closer to the real clips than the samples of a 2-step LDM on any arm
    assert all(fig1['ldm'][arm][0]['curve'][-1]['video_swd'] > refs['real']['video_swd'] for arm in arms)
    # and the SE AE's reconstructions of that draw are its decoded posterior means
    x = torch.stack([MovingDeadLeaves(32, 17, seed=0, train=True)[i][0] for i in range(4)])  # (N, 3, T, H, W)
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8).transpose(1, 2), real2)
    ae = load_autoencoder(str(tmp_path / 'seed0' / 'ae_z16_kl1e-06_se0.25' / 'ckpt.pt'))
    with torch.no_grad():
        recon = ((ae.decode(ae.encode(x, sample=False)[0]).clamp(-1, 1) + 1) * 127.5).round().transpose(1, 2)
    saved = clips(tmp_path / 'references' / 'se_ae' / 'samples.npz')
    assert (saved.float() - recon).abs().max() <= 1  # up to a rounding step
    assert refs['se AE reconstructions']['video_swd'] == pytest.approx(video_swd(real, saved)['video_swd'], rel=1e-5)
    assert len(report['verdict']) >= 8 and sum(v.startswith('fine-tuned: ') for v in report['verdict']) >= 4

    # the same command again: every artefact reused, the same numbers
    p = run(*args, timeout=1800)
    assert 'making' not in p.stdout and '$ ' not in p.stdout
    assert json.loads((tmp_path / 'report.json').read_text())['fig1'] == fig1
