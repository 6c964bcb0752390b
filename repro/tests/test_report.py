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
