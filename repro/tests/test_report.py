"""The statistics of reproduce.py's verdict as a specification: the paired t-test and the sign-flip test agree with
their textbook forms, the rule fires on noise at its nominal rate and gains power with seeds; and the measurements it
reads are invariant to what is arbitrary (channel rotations, shifts)."""
import math

import numpy as np
import pytest
import torch

from repro.report import ALPHA, compare, paired_test


def test_paired_t_test_is_scipys_and_the_sign_flip_test_is_its_enumeration():
    from scipy.stats import ttest_rel
    rng = np.random.default_rng(0)
    control = rng.normal(size=5)
    se = control + rng.normal(0.3, 0.5, size=5)
    test = paired_test(list(se), list(control))
    assert test['p_t'] == pytest.approx(ttest_rel(se, control).pvalue, rel=1e-10)
    d = se - control
    lo, hi = test['ci95']
    assert (lo + hi) / 2 == pytest.approx(d.mean()) and lo < d.mean() < hi
    # all 32 sign patterns of d: those whose |mean| reaches |mean(d)|
    flips = np.array(np.meshgrid(*[[1, -1]] * 5)).reshape(5, -1).T
    assert test['p_signflip'] == pytest.approx(np.mean(np.abs((flips * d).mean(1)) >= abs(d.mean()) - 1e-12))
    # with n seeds the sign-flip p can go no lower than 2 / 2^n: 0.25 at 3 seeds
    assert paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])['p_signflip'] == 0.25


def test_verdict_rule_fires_on_noise_at_alpha_and_gains_power_with_seeds():
    """Simulated seeds with no true effect (SE and control drawn alike, with a shared per-seed component as the paired
    design has): the rule declares a difference at most ALPHA of the time (within Monte-Carlo error); with a true
    effect of one standard deviation of the paired differences its power grows with the seeds. The old rule ("every
    seed agrees and the difference exceeds the spread") declared one 32% of the time at 2 seeds."""
    rng = np.random.default_rng(1)
    trials = 2000
    def rate(n, effect):
        hits = 0
        for _ in range(trials):
            shared = rng.normal(0, 3, n)  # what a seed's pair has in common: data order, LDM initialisation
            control, se = shared + rng.normal(0, 1, n), shared + rng.normal(0, 1, n) + effect * math.sqrt(2)
            hits += paired_test(list(se), list(control))['significant']
        return hits / trials
    mc = 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)  # three Monte-Carlo standard errors
    for n in (2, 3, 5):
        assert rate(n, 0.0) <= ALPHA + mc
    power = [rate(n, 1.0) for n in (3, 5, 10)]
    assert power[0] < power[1] < power[2] and power[2] > 0.7


def test_compare_says_which_way_and_whether_it_is_significant():
    control = [1.00, 1.10, 0.90, 1.05]
    sentence, test = compare('eps-MSE', control, [c - 0.2 for c in control])
    assert test['significant'] and 'SE lowered it, better' in sentence and 'p = ' in sentence
    sentence, test = compare('PSNR', control, [c - 0.2 for c in control], lower_is_better=False)
    assert 'lowered it, worse' in sentence
    sentence, test = compare('eps-MSE', control, [1.02, 1.04, 0.95, 1.08])
    assert not test['significant'] and sentence.startswith('eps-MSE: no difference at alpha')


def test_hf_energy_share_is_invariant_to_rotating_channels_while_hf_share_is_not():
    """An LDM that normalises its latents by one scalar cannot see an orthogonal mixing of the channels; the
    energy-weighted share cannot either. The per-channel mean hf_share changes, as the issue measured on a rotated
    block PCA."""
    from utils.spectral import hf_energy_share, hf_share
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(8, 2, 40, 40, generator=g, dtype=torch.float64), 9, 1)
    z = torch.cat([smooth * 3, torch.randn(8, 2, 32, 32, generator=g, dtype=torch.float64) * 0.5], 1)  # 2 smooth, 2 rough
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    rotated = torch.einsum('ij,bjhw->bihw', q, z) + torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)[:, None, None]
    assert hf_energy_share(rotated) == pytest.approx(hf_energy_share(z), rel=1e-9)
    assert hf_energy_share(2.5 * z) == pytest.approx(hf_energy_share(z), rel=1e-9)  # a common scale
    assert abs(hf_share(rotated) - hf_share(z)) > 0.05


def test_ema_warmup_follows_its_formula():
    """With warm-up, after n updates toward a constant model the EMA keeps prod_i decay_i of its initial weights; at
    decay 0.999 and 2000 steps that is ~0.1%, where plain decay keeps 13.5%."""
    from utils.common import ema_decay, update_ema
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    ema.weight.data.fill_(1.0)
    model.weight.data.fill_(0.0)
    for step in range(2000):
        update_ema(ema, model, ema_decay(0.999, step, warmup=True))
    kept = math.prod(min(0.999, (1 + n) / (10 + n)) for n in range(2000))
    assert ema.weight.item() == pytest.approx(kept, rel=1e-4) and kept < 0.002
    assert 0.999 ** 2000 == pytest.approx(0.135, abs=1e-3)
    assert ema_decay(0.999, 5) == 0.999 and ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)


def two_level_draw(rng, baselines, images, tau, effect=0.0, seeds=1):
    """One experiment of the two-level design: per baseline a level both arms share and an SE effect drawn around
    `effect` with spread tau (how SE acts differs by autoencoder); per image a difficulty every run shares; per run
    and image, noise. -> (control, se, baselines) as two_level_test takes them."""
    v = rng.normal(0, 1, images)
    control, se, ids = [], [], []
    for b in range(baselines):
        level, u = rng.normal(0, 2), rng.normal(effect, tau)
        for _ in range(seeds):
            control.append(level + v + rng.normal(0, 0.5, images))
            se.append(level + u + v + rng.normal(0, 0.5, images))
            ids.append(f'baseline{b}')
    return control, se, ids


def test_the_two_level_rule_fires_on_no_effect_at_most_alpha_where_the_bootstrap_alone_would_not():
    """No effect on average over autoencoders, but SE acts on each baseline a little differently (tau) and images
    differ: the verdict's rule (the per-baseline t-test and the hierarchical bootstrap both reject, the same way)
    fires at most ALPHA of the time within Monte-Carlo error. The bootstrap alone, with 3 baselines to resample, fires
    far more often: that is why the rule needs both. With a true effect the rule gains power with baselines."""
    from repro.report import two_level_test
    rng = np.random.default_rng(2)
    draws = 300
    mc = 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)
    tests = [two_level_test(*two_level_draw(rng, 3, 32, tau=0.5)) for _ in range(draws)]
    assert np.mean([t['significant'] for t in tests]) <= ALPHA + mc
    assert np.mean([t['bootstrap']['p'] < ALPHA for t in tests]) > ALPHA + mc
    power = [np.mean([two_level_test(*two_level_draw(rng, b, 32, tau=0.5, effect=1.0))['significant']
                      for _ in range(100)]) for b in (3, 6)]
    assert power[0] < power[1] and power[1] > 0.8


def test_the_two_level_test_takes_baselines_as_units_and_says_when_there_is_one():
    """Per baseline: the paired t-test of the baselines' mean differences (a baseline's seeds averaged first). With one
    baseline that test is not available and the rule never fires; the runs are then seeds of that baseline, tested as
    such, and the bootstrap is over its images alone: its interval is the mean's normal interval."""
    from repro.report import two_level_test
    rng = np.random.default_rng(3)
    control, se, ids = two_level_draw(rng, 3, 16, tau=0.5, effect=0.2, seeds=2)
    test = two_level_test(control, se, ids)
    means = [(np.mean(se[r:r + 2]), np.mean(control[r:r + 2])) for r in (0, 2, 4)]
    assert test['per_baseline'] == paired_test([m[0] for m in means], [m[1] for m in means])
    assert test['per_image']['n_images'] == 16 and test['per_image']['n_baselines'] == 3
    control, se, ids = two_level_draw(rng, 1, 400, tau=0.0, effect=0.1, seeds=3)
    test = two_level_test(control, se, ids)
    assert test['per_baseline'] == {'n': 1, 'available': False} and not test['significant']
    assert test['per_seed'] == paired_test(list(np.mean(se, 1)), list(np.mean(control, 1)))
    d = np.mean(np.subtract(se, control), 0)  # (400,) per-image differences, the seeds averaged
    lo, hi = test['bootstrap']['ci95']
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert lo == pytest.approx(d.mean() - half, abs=0.15 * half) and hi == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert test['bootstrap']['p'] < ALPHA  # an effect of 0.1 against per-image noise of 0.41 / sqrt(3) on 400 images


def synthetic_report(rng, baselines, seeds, images=24, effect=-0.05):
    """A report.json of Fig. 1 as reproduce.py writes it, with the numbers the verdict reads drawn at random: `seeds`
    runs of each of `baselines` baselines; SE lowers the probe's per-image eps-MSE by `effect` on average."""
    control, se, ids = two_level_draw(rng, baselines, images, tau=0.01, effect=effect, seeds=seeds)
    keys = ('hf_share', 'hf_share_sample', 'hf_energy_share', 'hf_energy_share_sample', 'psnr')
    ae = lambda: {k: float(rng.uniform(0.1, 0.3)) for k in keys}  # noqa: E731
    def probe(values):
        values = list(1 + 0.1 * np.asarray(values))
        return {'eps_mse_mean': float(np.mean(values)), 'pixel_mse_mean': float(np.mean(values)) / 2,
                'eps_mse_per_image': values, 'pixel_mse_per_image': [v / 2 for v in values],
                'oracle': {'scalar_mean': float(rng.uniform(0.3, 0.4)), 'channel_mean': float(rng.uniform(0.3, 0.4))},
                'channel_std': list(rng.uniform(0.5, 2, 4)), 'latent_norm': 'scalar', 'guard': {'ok': True}}
    return {'config': {'baseline_sha256': ids[0]}, 'runs': [{'baseline': b, 'seed': s % seeds} for s, b in enumerate(ids)],
            'autoencoders': {'control': [ae() for _ in ids], 'se': [ae() for _ in ids]},
            'ldm': {'eps': {'control': [{'probe': [probe(c)], 'samples': {}} for c in control],
                            'se': [{'probe': [probe(s)], 'samples': {}} for s in se]}}}


def test_the_verdict_claims_a_probe_effect_only_with_baselines_and_images_as_units():
    """Three baselines with a clear effect: the probe sentence says SE lowered it with both units, and report.json's
    two_level holds per_baseline, per_image and bootstrap; the oracle is compared in both normalisations. One baseline
    with three seeds and the same effect: the sentence says the baseline-level test is not available and claims
    nothing about autoencoders; set-level numbers are tested over the seeds of that one baseline, and say so."""
    from repro.report import oracle_markdown, two_level, two_level_markdown, verdict
    rng = np.random.default_rng(4)
    report = synthetic_report(rng, baselines=3, seeds=1, effect=-1.0)
    sentences = dict(verdict(report))
    probe = next(s for s in sentences if s.startswith('eps LDM: probe eps-MSE'))
    assert 'SE lowered it, better, with baselines and with images as units' in probe
    assert sentences[probe]['per_baseline']['n'] == 3 and sentences[probe]['significant']
    assert any(s.startswith('eps LDM: Gaussian oracle eps-MSE, latents normalised per channel') for s in sentences)
    survival = next(t for s, t in sentences.items() if s.startswith("eps LDM: SE's effect on the oracle"))
    assert survival['survives'] == (survival['scalar']['significant'] and survival['channel']['significant'])
    assert any('hf_share of posterior means' in s and 'over 3 baselines' in s for s in sentences)
    tests = two_level(report)['eps']['se']
    assert set(tests) == {'eps_mse', 'pixel_mse'} and {'per_baseline', 'per_image', 'bootstrap'} <= set(tests['eps_mse'])
    md = '\n'.join(oracle_markdown(report, 'eps') + two_level_markdown(report, 'eps'))
    assert 'latent_norm: scalar' in md and '| se | eps_mse | 3, ' in md

    report = synthetic_report(rng, baselines=1, seeds=3, effect=-1.0)
    sentences = dict(verdict(report))
    probe = next(s for s in sentences if s.startswith('eps LDM: probe eps-MSE'))
    assert 'the baseline-level test is not available (n = 1 baseline)' in probe and 'SE lowered' not in probe
    assert not sentences[probe]['significant'] and sentences[probe]['bootstrap']['p'] < ALPHA
    assert any('hf_share of posterior means' in s and 'over 3 seeds of one baseline' in s for s in sentences)
    assert 'not available (n = 1)' in '\n'.join(two_level_markdown(report, 'eps'))
