"""
The report of reproduce.py, from its numbers alone: out_dir/report.json (every number the run measured) ->
out_dir/report.md (tables, plots, sample grids and a verdict whose sentences are computed from the numbers) and the
figures beside it. reproduce.py calls it at the end of a run; to re-plot or re-word a report without re-running:

  python repro/reproduce.py --replot --out_dir out/reproduce

The statistics. Every comparison is paired: a run fine-tunes a baseline with SE and without (the control), with the
same data order and seed, and trains the same LDM on each, so d = SE - control removes what the pair shares. Its
units say what a p value is about. Runs of one baseline differ only by seed: a test over them is about that one
fine-tune. A claim about autoencoders needs baselines as units, and one about images needs images as units:
  per_baseline  d_b, the mean of d over baseline b's runs (and images); Student's paired t-test of mean(d_b) = 0 over
                the baselines, two-sided, with its 95% confidence interval and the exact sign-flip test's p (which
                cannot go below 2 / 2^n); not available with one baseline
  per_image     d_{b,i}, the probe's paired difference on held-out image i, averaged over baseline b's runs
  bootstrap     a hierarchical bootstrap of mean(d_{b,i}): baselines resampled, then images within each; its 95%
                percentile interval and two-sided p
The verdict says SE moved a probe number only when the per_baseline test and the bootstrap both reject at ALPHA, the
same way; set-level numbers (HF shares, PSNR) have the per_baseline test alone (over seeds with one baseline, and
said so). tests/test_report.py simulates both rules on data with no effect (they fire at most 5% of the time, within
Monte-Carlo error) and with one (their power grows with the units). The bootstrap alone is not enough: with 3
baselines to resample it fired 25% of the time on no effect when SE acts on each baseline a little differently.
"""
import os
import json
import math
import itertools
import statistics

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000                   # the hierarchical bootstrap's resamples (seeded)
ARM_NAMES = {'control': 'control', 'se': 'SE', 'se_st': 'SE in space and time'}  # the video run has both SE arms


def arms(report):
    """The arms of a run, the control first: ('control', 'se'), and 'se_st' in the video run."""
    return list(report['autoencoders'])


def unit(report):
    return 'clips' if report['config'].get('num_frames', 1) > 1 else 'images'


def treated(report):
    return [arm for arm in arms(report) if arm != 'control']

# -----------------------------------------------------------------------------
# statistics and the verdict: sentences computed from the numbers


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_test(treated, control):
    """d_i = treated_i - control_i over n seeds. Student's paired t-test: t = mean(d) / (sd(d) / sqrt(n)) with n - 1
    degrees of freedom, its two-sided p and the 95% confidence interval of mean(d); the exact sign-flip test: the share
    of the 2^n sign patterns of d whose |mean| reaches the observed one. -> dict."""
    from scipy.stats import t as student_t
    d = [a - b for a, b in zip(treated, control)]
    n, mean = len(d), statistics.mean(d)
    p_t, ci = float('nan'), (float('nan'), float('nan'))
    if n >= 2:
        se = statistics.stdev(d) / math.sqrt(n)
        p_t = float(2 * student_t.sf(abs(mean) / se, n - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
        half = float(student_t.ppf(1 - ALPHA / 2, n - 1)) * se
        ci = (mean - half, mean + half)
    import numpy as np
    flips = np.array(list(itertools.product((1, -1), repeat=n))) @ np.array(d) / n  # the mean under every sign pattern
    p_flip = float(np.mean(np.abs(flips) >= abs(mean) - 1e-12 * (1 + abs(mean))))
    base = statistics.mean(control)
    return {'n': n, 'mean_diff': mean, 'rel_diff': mean / base if base else float('nan'), 'p_t': p_t, 'ci95': ci,
            'p_signflip': p_flip, 'significant': bool(p_t < ALPHA)}


def numbers(control, se, test, unit):
    """The numbers behind a paired comparison over `unit` (e.g. '3 baselines'), for a sentence."""
    (mc, sc), (ms, ss) = mean_std(control), mean_std(se)
    return (f"control {mc:.4g} ± {sc:.2g} -> SE {ms:.4g} ± {ss:.2g} ({100 * test['rel_diff']:+.1f}%; paired t-test "
            f"over {unit} p = {test['p_t']:.3g}, 95% CI of the difference [{test['ci95'][0]:.3g}, "
            f"{test['ci95'][1]:.3g}], sign-flip p = {test['p_signflip']:.3g})")


def compare(name, control, se, lower_is_better=True, arm='se', unit='seeds'):
    """One sentence on a paired comparison of an SE arm with its control over units (seeds, or baselines), and the
    test behind it."""
    test = paired_test(se, control)
    name = name if arm == 'se' else f"{ARM_NAMES[arm]}: {name}"
    said = numbers(control, se, test, f"{test['n']} {unit}")
    if test['n'] < 2:
        return f"{name}: {said}: one unit has no spread to test against.", test
    if not test['significant']:
        return f"{name}: no difference at alpha = {ALPHA} ({said}).", test
    verb = 'lowered' if statistics.mean(se) < statistics.mean(control) else 'raised'
    good = (verb == 'lowered') == lower_is_better
    return f"{name}: SE {verb} it, {'better' if good else 'worse'}, at alpha = {ALPHA} ({said}).", test


def by_baseline(values, baselines):
    """values, baselines: one per run -> the mean of each baseline's runs, baselines in the order first seen."""
    ids = list(dict.fromkeys(baselines))
    return [statistics.mean(v for v, b in zip(values, baselines) if b == i) for i in ids]


def hierarchical_bootstrap(d, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """d (B baselines, N images): paired per-image differences. Each resample draws B baselines with replacement, then
    N images with replacement within each drawn baseline, and takes the mean: the spread of mean(d) over both levels.
    -> {'mean_diff', 'ci95' (percentile), 'p' (two-sided: twice the smaller tail at 0), 'resamples'}."""
    import numpy as np
    d = np.asarray(d, dtype=np.float64)
    rng = np.random.default_rng(seed)
    b = rng.integers(d.shape[0], size=(resamples, d.shape[0]))  # (R, B) drawn baselines
    i = rng.integers(d.shape[1], size=(resamples, d.shape[0], d.shape[1]))  # (R, B, N) images drawn within each
    means = d[b[..., None], i].mean(axis=(1, 2))  # (R,)
    tail = min(np.sum(means <= 0), np.sum(means >= 0))
    return {'mean_diff': float(d.mean()), 'ci95': tuple(np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2]).tolist()),
            'p': float(min(1.0, 2 * (tail + 1) / (resamples + 1))), 'resamples': resamples}


def two_level_test(control, se, baselines):
    """control, se: per run, the paired per-image values of one probe number on the same held-out images; baselines:
    per run, the baseline it fine-tuned. -> {'per_baseline': paired_test over baselines (or {'n': 1, 'available':
    False}), 'per_seed': paired_test over the runs of one baseline (when there is one), 'per_image': the per-image
    differences, 'bootstrap': hierarchical_bootstrap, 'significant': both tests reject, the same way}."""
    import numpy as np
    control, se = np.asarray(control, dtype=np.float64), np.asarray(se, dtype=np.float64)  # (runs, N)
    ids = list(dict.fromkeys(baselines))
    runs_of = [[r for r, b in enumerate(baselines) if b == i] for i in ids]
    d = np.stack([(se[rs] - control[rs]).mean(0) for rs in runs_of])  # (B, N): d_{b,i}
    base = float(control.mean())
    per_image = {'n_images': d.shape[1], 'n_baselines': d.shape[0], 'mean_diff': float(d.mean()),
                 'rel_diff': float(d.mean() / base) if base else float('nan'), 'sd': float(d.std(ddof=1)),
                 'share_lower': float(np.mean(d < 0))}
    boot = hierarchical_bootstrap(d)
    out = {'per_image': per_image, 'bootstrap': boot}
    if len(ids) >= 2:
        out['per_baseline'] = paired_test([se[rs].mean() for rs in runs_of], [control[rs].mean() for rs in runs_of])
        agree = np.sign(out['per_baseline']['mean_diff']) == np.sign(boot['mean_diff'])
        out['significant'] = bool(out['per_baseline']['significant'] and boot['p'] < ALPHA and agree)
    else:
        out['per_baseline'] = {'n': 1, 'available': False}
        out['per_seed'] = paired_test(list(se.mean(1)), list(control.mean(1)))
        out['significant'] = False
    return out


def guard_failures(report):
    """The LDMs whose samples fail the guard (probe.guard_ldm, metrics.sample_guard), as 'objective arm run' strings."""
    units = report.get('runs') or [{'baseline': None, 'seed': s} for s in range(len(report['autoencoders']['control']))]
    label = lambda u: f"seed {u['seed']}" + (f" of baseline {u['baseline'][:8]}" if u['baseline'] else '')  # noqa: E731
    return [f"{objective} {arm} {label(u)}" for objective, runs in report['ldm'].items() for arm in arms(report)
            for u, run in zip(units, runs[arm]) if not run['probe'][-1]['guard']['ok']]


REGION_KEYS = ['regions', 'covered', 'median_area']  # metrics.region_stats: near-uniform regions an image, the share
# they cover, the median region's share of its image


def sample_keys(report):
    """The sample metrics each LDM was scored by: SWD (average, per scale) and FID / KID where Inception existed; for
    clips the video SWD and FVD."""
    first = next(iter(report['ldm'].values()))['control'][0]['samples']
    if 'video_swd' in first:  # clips: eval_fid.py's video SWD (frames and motion), FVD where I3D existed
        return [k for k in ('video_swd', 'swd_frames', 'swd_motion', 'fvd') if k in first]
    swd = ['swd_avg'] + sorted((k for k in first if k.startswith('swd_') and k[4:].isdigit()), key=lambda k: -int(k[4:]))
    return swd + [k for k in ('fid', 'kid') if k in first]


def run_baselines(report):
    """The baseline each Fig. 1 run fine-tuned, one per run (the index into each arm's lists): report['runs'] where the
    run recorded it, else the one baseline of the config."""
    if 'runs' in report:
        return [r['baseline'] for r in report['runs']]
    return [report['config']['baseline_sha256']] * len(report['autoencoders']['control'])


def compare_units(name, control, se, baselines, lower_is_better=True, arm='se'):
    """compare() over the units the runs support: baselines (their seeds averaged) where there are several, else the
    seeds of the one baseline, said so."""
    if len(set(baselines)) > 1:
        return compare(name, by_baseline(control, baselines), by_baseline(se, baselines), lower_is_better, arm,
                       unit='baselines')
    return compare(name, control, se, lower_is_better, arm, unit='seeds of one baseline')


def compare_two_level(name, control, se, baselines, lower_is_better=True, arm='se'):
    """One sentence on a probe number with per-image values: control, se are per run lists of per-image values. SE
    moved it only when baselines and images as units both say so (two_level_test); with one baseline, what the seeds
    and its images say, and that nothing follows about autoencoders."""
    two = two_level_test(control, se, baselines)
    name = name if arm == 'se' else f"{ARM_NAMES[arm]}: {name}"
    image, boot = two['per_image'], two['bootstrap']
    images = (f"over {image['n_images']} held-out images x {image['n_baselines']} baseline(s): mean per-image "
              f"difference {image['mean_diff']:+.3g} ({100 * image['rel_diff']:+.1f}%), SE lower on "
              f"{image['share_lower']:.0%} of them; hierarchical bootstrap 95% CI [{boot['ci95'][0]:.3g}, "
              f"{boot['ci95'][1]:.3g}], p = {boot['p']:.3g}")
    means = lambda runs: [statistics.mean(r) for r in runs]  # noqa: E731
    if not two['per_baseline'].get('available', True):
        seeds = two['per_seed']
        said = numbers(means(control), means(se), seeds, f"{seeds['n']} seeds of one baseline")
        sentence = (f"{name}: the baseline-level test is not available (n = 1 baseline), so nothing follows about "
                    f"autoencoders; about this fine-tune: {said}; {images}.")
        return sentence, {**seeds, **two, 'unit': 'seeds of one baseline'}
    test = two['per_baseline']
    said = numbers(by_baseline(means(control), baselines), by_baseline(means(se), baselines), test,
                   f"{test['n']} baselines")
    if not two['significant']:
        return (f"{name}: no difference that both baselines and images as units support at alpha = {ALPHA} ({said}; "
                f"{images})."), {**test, **two, 'unit': 'baselines'}
    verb = 'lowered' if test['mean_diff'] < 0 else 'raised'
    good = (verb == 'lowered') == lower_is_better
    return (f"{name}: SE {verb} it, {'better' if good else 'worse'}, with baselines and with images as units at "
            f"alpha = {ALPHA} ({said}; {images})."), {**test, **two, 'unit': 'baselines'}


def two_level(report):
    """two_level_test of every probe number with per-image values, SE arm against control: {objective: {arm: {key:
    test}}}, key 'eps_mse' or 'pixel_mse' (each image's mean over the noise levels)."""
    out, baselines = {}, run_baselines(report)
    for objective, runs in report['ldm'].items():
        for arm in treated(report):
            last = lambda a, key: [run['probe'][-1][key] for run in runs[a]]  # noqa: E731
            out.setdefault(objective, {})[arm] = {
                key: two_level_test(last('control', f'{key}_per_image'), last(arm, f'{key}_per_image'), baselines)
                for key in ('eps_mse', 'pixel_mse')
                if all(f'{key}_per_image' in run['probe'][-1] for a in ('control', arm) for run in runs[a])}
    return out


def verdict(report):
    """The verdict's sentences: the autoencoders' spectra and PSNR, then per objective the probe, its Gaussian oracle
    under both normalisations, and the samples (these only when every LDM passes the guard). -> [(sentence, test)]."""
    aes, out = report['autoencoders'], []
    failed = guard_failures(report)
    baselines = run_baselines(report)
    for arm in treated(report):
        ae = lambda key: ([m[key] for m in aes['control']], [m[key] for m in aes[arm]], baselines)  # noqa: E731
        out += [compare_units('hf_share of posterior means', *ae('hf_share'), arm=arm),
                compare_units('hf_share of posterior samples (what the LDM learns)', *ae('hf_share_sample'), arm=arm),
                compare_units('hf_energy_share of posterior means', *ae('hf_energy_share'), arm=arm),
                compare_units('hf_energy_share of posterior samples', *ae('hf_energy_share_sample'), arm=arm)]
        out += [compare_units(what, *ae(key), arm=arm) for key, what in VIDEO_HF if key in aes['control'][0]]
        out += [compare_units('reconstruction PSNR', *ae('psnr'), lower_is_better=False, arm=arm)]
        for objective, runs in report['ldm'].items():
            final = lambda a, key: [run['probe'][-1][key] for run in runs[a]]  # noqa: E731
            for key, what in (('eps_mse', 'probe eps-MSE, mean over noise levels (the primary metric)'),
                              ('pixel_mse', 'probe pixel MSE of the decoded x0 prediction, mean over noise levels')):
                name = f"{objective} LDM: {what}"
                if all(f'{key}_per_image' in run['probe'][-1] for a in ('control', arm) for run in runs[a]):
                    out += [compare_two_level(name, final('control', f'{key}_per_image'), final(arm, f'{key}_per_image'),
                                              baselines, arm=arm)]
                else:  # a report of a probe that kept no per-image numbers
                    out += [compare_units(name, final('control', f'{key}_mean'), final(arm, f'{key}_mean'), baselines,
                                          arm=arm)]
            if all(run['probe'][-1].get('oracle') for a in ('control', arm) for run in runs[a]):
                oracle = lambda a, norm: [run['probe'][-1]['oracle'][f'{norm}_mean'] for run in runs[a]]  # noqa: E731
                both = [compare_units(f"{objective} LDM: Gaussian oracle eps-MSE, latents normalised {how}",
                                      oracle('control', norm), oracle(arm, norm), baselines, arm=arm)
                        for norm, how in (('scalar', 'by one scalar as the LDM'),
                                          ('channel', 'per channel (no channel scale can move it)'))]
                (_, scalar), (_, channel) = both
                survives = scalar['significant'] and channel['significant'] and \
                    (scalar['mean_diff'] > 0) == (channel['mean_diff'] > 0)
                out += both + [(f"{objective} LDM: SE's effect on the oracle {'survives' if survives else 'does not survive'} "
                                f"per-channel normalisation (one scalar {100 * scalar['rel_diff']:+.2f}%, p = "
                                f"{scalar['p_t']:.3g}; per channel {100 * channel['rel_diff']:+.2f}%, p = "
                                f"{channel['p_t']:.3g}).", {'survives': survives, 'scalar': scalar, 'channel': channel})]
            if not any(f.startswith(objective + ' ') for f in failed):
                out += [compare_units(f"{objective} LDM: {k} of its samples", [r['samples'][k] for r in runs['control']],
                                      [r['samples'][k] for r in runs[arm]], baselines, arm=arm) for k in sample_keys(report)
                        if all(k in r['samples'] for a in arms(report) for r in runs[a])]
    if len(report['ldm']) > 1 and 'se' in aes:  # the same experiment under DDPM and rectified flow: does SE move the probe one way?
        probe = {o: next(t for sentence, t in out if sentence.startswith(f"{o} LDM: probe eps-MSE")) for o in report['ldm']}
        signs = {o: '+' if t['mean_diff'] > 0 else '-' for o, t in probe.items()}
        agree = len(set(signs.values())) == 1
        each = ', '.join(f"{o} {100 * t['rel_diff']:+.1f}% (p = {t['p_t']:.3g})" for o, t in probe.items())
        way = 'the same way' if agree else 'in opposite directions'
        out.append((f"Across objectives: SE moved the probe eps-MSE {way} ({each}).",
                    {'same_sign': agree, **{o: t for o, t in probe.items()}}))
    return [(sentence, test) for sentence, test in out]

# -----------------------------------------------------------------------------
# figures: each written into out_dir, its file name returned for the markdown


def plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as pyplot
    return pyplot


def save(fig, out_dir, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=120)
    plt().close(fig)
    return name


def band(ax, xs, rows, label, color, style='o-'):
    """mean ± std over seeds (rows: one list per seed) as a line and a band."""
    m = [statistics.mean(v) for v in zip(*rows)]
    sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*rows)]
    ax.plot(xs, m, style, color=color, label=label)
    ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.2)


def plot_probe(report, objective, out_dir):
    """The probe at the last LDM step against the noise level, per arm (± std over seeds), and its summary against
    the LDM's training steps (convergence)."""
    runs = report['ldm'][objective]
    fig, axes = plt().subplots(1, 3, figsize=(13, 3.6))
    # each arm its own colour, marker and dash, so that a curve lying on another stays visible
    for arm, color, style in zip(arms(report), ('tab:blue', 'tab:orange', 'tab:green'), ('o-', 's--', '^:')):
        levels = runs[arm][0]['probe'][-1]['levels']
        band(axes[0], levels, [r['probe'][-1]['eps_mse'] for r in runs[arm]], f"{arm} latents", color, style)
        band(axes[1], levels, [r['probe'][-1]['pixel_mse'] for r in runs[arm]], f"{arm} latents", color, style)
        steps = [p['step'] for p in runs[arm][0]['probe']]
        band(axes[2], steps, [[p['eps_mse_mean'] for p in r['probe']] for r in runs[arm]], f"{arm} latents", color,
             style)
    xlabel = 'flow time t (1 = noise)' if objective == 'flow' else 'DDPM timestep t'
    axes[0].set(xlabel=xlabel, ylabel='eps-MSE', yscale='log', title='denoising error on held-out latents')
    axes[1].set(xlabel=xlabel, ylabel='pixel MSE of decoded x0 prediction', yscale='log', title='in pixels')
    axes[2].set(xlabel='LDM training steps', ylabel='eps-MSE, mean over levels', title='convergence')
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, out_dir, f'fig1_probe_{objective}.png')


def plot_spectra(rows, out_dir, name, title):
    """Profiles of several AEs (means solid, samples dotted) with RGB on the latent grid (dashed)."""
    fig, ax = plt().subplots(figsize=(6.5, 4))
    markers = 'osd^v<>p*hx+'  # every AE its own marker, so that curves lying on each other stay distinguishable
    for i, (label, m) in enumerate(rows.items()):
        line, = ax.plot(m['profile'], marker=markers[i % len(markers)], markevery=(i, len(rows) + 4), markersize=4,
                        label=f"{label} mean (hf {m['hf_share']:.3f})")
        ax.plot(m['profile_sample'], ':', color=line.get_color(), label=f"{label} sample (hf {m['hf_share_sample']:.3f})")
    first = next(iter(rows.values()))
    ax.plot(first['rgb_profile'], '--', color='black', label=f"RGB on the latent grid (hf {first['rgb_hf_share']:.3f})")
    ax.set(yscale='log', xlabel='zigzag index (low -> high frequency)', ylabel='RMS coefficient / RMS centred DC',
           title=title)
    ax.legend(fontsize=6)
    return save(fig, out_dir, name)


def rgb_noise_markdown(report, out_dir):
    """The RGB + noise reference: how much Gaussian noise the held-out images on the latent grid need to be as
    high-frequency as each arm's latents, and the curve it is read from."""
    if 'rgb_noise' not in report:
        return []
    r = report['rgb_noise']
    fig, ax = plt().subplots(figsize=(5.5, 3.6))
    ax.plot([s for s in r['sigmas'] if s > 0], [h for s, h in zip(r['sigmas'], r['hf_share']) if s > 0], 'k-',
            label='RGB on the latent grid + noise')
    cells = []
    for i, (arm, sigmas) in enumerate(r['equivalent_sigma'].items()):
        ms = aes_of(report, arm)
        share = statistics.mean(m['hf_share'] for m in ms)
        ax.axhline(share, ls='--', color=f'C{i}', label=f"{arm} latents (hf {share:.3f})")
        known = [s for s in sigmas if s is not None]
        cells.append(f"{arm} {statistics.mean(known):.3g}" if known else f"{arm} beyond the curve")
    ax.set(xscale='log', xlabel='noise std / channel std', ylabel='hf_share')
    ax.legend(fontsize=7)
    name = save(fig, out_dir, 'rgb_noise.png')
    return [f"RGB + noise (the paper's noised-RGB spectrum): the held-out {unit(report)} on the latent grid reach each "
            f"latent's hf_share at a noise std (relative to each channel's std, mean over runs) of: "
            + "; ".join(cells) + ".", "", f"![RGB + noise]({name})", ""]


def aes_of(report, arm):
    """The measured autoencoders of an arm of Fig. 1, or the baselines before fine-tuning."""
    return report.get('baselines', [report.get('baseline')]) if arm == 'baseline' else report['autoencoders'][arm]


def plot_sweep(xs, series, xlabel, out_dir, name, log_x=False, psnr=None):
    """HF shares (and optionally PSNR) against a swept setting."""
    fig, axes = plt().subplots(1, 2 if psnr else 1, figsize=(9 if psnr else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    for label, ys in series.items():
        ax.plot(xs, ys, '--' if label.startswith('RGB') else 'o-', label=label)
    ax.set(xlabel=xlabel, ylabel='HF share (AC energy in zigzag 32..63)')
    for panel in axes[0] if log_x else ():  # both panels on the same axis
        panel.set_xscale('symlog', linthresh=min(x for x in xs if x > 0))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if psnr:
        for label, ys in psnr.items():
            axes[0][1].plot(xs, ys, '--' if 'bicubic' in label else 'o-', label=label)
        axes[0][1].set(xlabel=xlabel, ylabel='reconstruction PSNR (dB)')
        axes[0][1].legend(fontsize=7)
        axes[0][1].grid(alpha=0.3)
    return save(fig, out_dir, name)


def plot_erasure(fig5, out_dir):
    fig, ax = plt().subplots(figsize=(5.5, 3.8))
    pct = [10 * k for k in range(10)]
    for arm, curves in fig5.items():
        ax.plot(pct, curves['latent'], 'o-', label=f"{arm} latents (8x8 tiles)")
    rgb = next(iter(fig5.values()))['rgb']
    ax.plot(pct[1:], rgb[1:], 'o--', color='black', label='RGB (tiles of the same image region)')
    ax.set(xlabel='% of DCT coefficients erased (highest first)', ylabel='PSNR vs input (dB)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, out_dir, 'fig5_erasure.png')

# -----------------------------------------------------------------------------
# the markdown


def pm(values, fmt='.4f'):
    """mean ± std over seeds (the mean alone for one seed)."""
    m, s = mean_std(values)
    return f"{m:{fmt}} ± {s:.2g}" if len(values) > 1 else f"{m:{fmt}}"


AE_COLUMNS = [('hf_share', 'hf_share means'), ('hf_share_sample', 'hf_share samples'),
              ('hf_energy_share', 'hf_energy means'), ('hf_energy_share_sample', 'hf_energy samples'),
              ('rgb_hf_share', 'RGB hf_share'), ('rgb_hf_energy_share', 'RGB hf_energy'), ('psnr', 'PSNR'),
              ('bicubic_psnr', 'bicubic at latent grid')]
# video: the temporal HF measures of spectrum.py, of the latent and of RGB on the latent grid
VIDEO_HF = [('temporal_hf_ratio', 'temporal hf_ratio of posterior means'),
            ('temporal_hf_energy_share', 'temporal hf_energy_share of posterior means')]
VIDEO_COLUMNS = [('temporal_hf_ratio', 'temporal hf_ratio'), ('rgb_temporal_hf_ratio', 'RGB temporal hf_ratio'),
                 ('temporal_hf_energy_share', 'temporal hf_energy'), ('rgb_temporal_hf_energy_share', 'RGB temporal hf_energy')]


def ae_table(rows):
    """rows: {label: [measurements per seed]} -> markdown lines, mean ± std over seeds, the margin over bicubic."""
    columns = AE_COLUMNS + [c for c in VIDEO_COLUMNS if c[0] in next(iter(rows.values()))[0]]
    lines = ["| autoencoder | " + " | ".join(c for _, c in columns) + " | margin |", "|---" * (len(columns) + 2) + "|"]
    for label, ms in rows.items():
        cells = [pm([m[k] for m in ms], '.2f' if 'psnr' in k else '.4f') for k, _ in columns]
        margin = statistics.mean(m['psnr'] - m['bicubic_psnr'] for m in ms)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {margin:+.2f} dB |")
    return lines


def oracle_markdown(report, objective):
    """The Gaussian oracle beside the trained probe, in both normalisations, and each arm's channel stds: what the
    spectrum alone predicts, and whether it survives a normalisation that no channel scale can move."""
    runs = report['ldm'][objective]
    last = {arm: [r['probe'][-1] for r in runs[arm]] for arm in arms(report)}
    if not all(p.get('oracle') for rows in last.values() for p in rows):
        return []
    norm = last['control'][0]['latent_norm']
    md = [f"Gaussian oracle: the exact eps-MSE of the best denoiser of a Gaussian latent with each arm's block-DCT "
          f"variances per (channel, coefficient) on the held-out latents, mean over the probe's levels; the latents "
          f"normalised by one scalar and per channel. These LDMs normalise by: **latent_norm: {norm}**. Channel stds: "
          f"each channel's std over the held-out latents, over their RMS (seed 0), and their coefficient of variation "
          f"(mean over runs), which only the one scalar normalisation sees."
          + (" Normalised per channel, the trained probe cannot be moved by a channel scale the decoder absorbs: an SE "
             "effect on it survives channel normalisation by construction, and the oracle's two columns say how much "
             "of it the spectrum alone predicts, with and without." if norm == 'channel' else
             " Normalised by one scalar, the trained probe sees the channels' relative scales: rerun with "
             "--latent_norm channel to ask whether an SE effect survives channel normalisation."), "",
          "| arm | trained probe eps-MSE | oracle, one scalar | oracle, per channel | channel stds / RMS (seed 0) | "
          "channel std CV |", "|---" * 6 + "|"]
    for arm, rows in last.items():
        cv = [statistics.pstdev(p['channel_std']) / statistics.mean(p['channel_std']) for p in rows]
        std = rows[0]['channel_std']
        rms = math.sqrt(statistics.mean(x * x for x in std))
        md.append(f"| {arm} | {pm([p['eps_mse_mean'] for p in rows])} | {pm([p['oracle']['scalar_mean'] for p in rows])}"
                  f" | {pm([p['oracle']['channel_mean'] for p in rows])} | {' '.join(f'{x / rms:.2f}' for x in std)} | "
                  f"{pm(cv, '.3f')} |")
    return md + [""]


def two_level_markdown(report, objective):
    """The probe's two-level statistics: baselines as units, images as units, and the rule that needs both."""
    tests = two_level(report).get(objective, {})
    if not any(tests.values()):
        return []
    md = ["Two-level statistics of the probe (SE minus control; per_baseline: paired t-test over baselines, their seeds "
          "averaged; per_image: each held-out image's difference, averaged over its baseline's runs; bootstrap: "
          "baselines resampled, then images within each). SE moved a number only where both reject the same way.", "",
          "| arm | probe number | per_baseline: n, mean diff, p | per_image: images, mean diff, SE lower on | "
          "bootstrap 95% CI, p | both |", "|---" * 6 + "|"]
    for arm, by_key in tests.items():
        for key, t in by_key.items():
            b, i, boot = t['per_baseline'], t['per_image'], t['bootstrap']
            if b.get('available', True):
                base = f"{b['n']}, {b['mean_diff']:+.3g}, p = {b['p_t']:.3g}"
            else:
                base = f"not available (n = 1); over {t['per_seed']['n']} seeds of it: p = {t['per_seed']['p_t']:.3g}"
            md.append(f"| {arm} | {key} | {base} | {i['n_images']}, {i['mean_diff']:+.3g} ({100 * i['rel_diff']:+.1f}%), "
                      f"{i['share_lower']:.0%} | [{boot['ci95'][0]:.3g}, {boot['ci95'][1]:.3g}], p = {boot['p']:.3g} | "
                      f"{'yes' if t['significant'] else 'no'} |")
    return md + [""]


def fig1_markdown(report, out_dir):
    c, sizes, aes = report['config'], report['config']['sizes'], report['autoencoders']
    files = c.get('baselines', [{'file': c['baseline'], 'sha256': c['baseline_sha256']}])
    seeds = len(aes['control']) // len(files)
    md = ["## Fig. 1: does SE make the latents easier to diffuse?", "",
          f"{len(files)} independently pretrained baseline(s) ("
          f"{', '.join(os.path.basename(b['file']) + ' ' + b['sha256'][:8] for b in files)}), each fine-tuned "
          f"{sizes['ft_steps']} steps with SE (se_weight {c['se_weight']:g}, the authors' {c['se_down']} operator) and "
          f"without (control), {seeds} seed(s) each; each pair shares its data order and seed. Measured on "
          f"{report['data']['heldout']} held-out {unit(report)} (mean ± std over the {len(aes['control'])} runs):", ""]
    md += ae_table({'baselines (before fine-tuning)': report.get('baselines', [report['baseline']]),
                    **{arm: aes[arm] for arm in arms(report)}})
    md += ["", f"![spectra]({plot_spectra({arm: aes[arm][0] for arm in arms(report)}, out_dir, 'fig1_spectra.png', 'Latent spectra, seed 0')})", ""]
    md += rgb_noise_markdown(report, out_dir)
    keys = sample_keys(report) if report['ldm'] else []
    for objective, runs in report['ldm'].items():
        first = runs['control'][0]['probe'][-1]
        show = sorted({0, len(first['levels']) // 3, 2 * len(first['levels']) // 3, len(first['levels']) - 1})
        md += [f"### The {objective} LDM on each arm's latents", "",
               f"{c['ldm_model']} {c['ldm_preset']}, lr {c['ldm_lr']:g}, EMA {c['ldm_ema_decay']} with warm-up, "
               f"{sizes['ldm_steps']} steps at batch {sizes['ldm_batch_size']}; the probe on {first['num_images']} "
               f"held-out latents with fixed noise, at the last step:", "",
               f"![probe]({plot_probe(report, objective, out_dir)})", "",
               "| probe | " + " | ".join(f"t = {first['levels'][i]:g}" for i in show) + " | mean over levels |",
               "|---" * (len(show) + 2) + "|"]
        for key, what in (('eps_mse', 'eps-MSE'), ('pixel_mse', 'pixel MSE')):
            for arm in arms(report):
                rows = [r['probe'][-1] for r in runs[arm]]
                md.append(f"| {what}, {arm} | " + " | ".join(pm([r[key][i] for r in rows]) for i in show) +
                          f" | {pm([r[key + '_mean'] for r in rows])} |")
        keys = keys + [k for k in REGION_KEYS if k in runs['control'][0]['samples']]  # shown, not tested: nearer real is better
        md += ["", "| samples | " + " | ".join(keys) + " | guard: sample std / data std (min-max) | saturated |",
               "|---" * (len(keys) + 3) + "|"]
        for arm in arms(report):
            guards = [r['probe'][-1]['guard'] for r in runs[arm]]
            ratios = [x for g in guards for x in g['std_ratio']]
            md.append(f"| {arm} | " + " | ".join(pm([r['samples'][k] for r in runs[arm]], '.3g') for k in keys) +
                      f" | {min(ratios):.2f}-{max(ratios):.2f} | {max(g['saturated'] for g in guards):.1%} |")
        for name, m in report['references'].items():
            md.append(f"| reference: {'a second draw of held-out ' + unit(report) if name == 'real' else name + ' AE reconstructions'}"
                      f" | " + " | ".join(f"{m[k]:.3g}" if k in m else '-' for k in keys) + " | | |")
        if 'covered' in keys:
            md += ["", "regions, covered, median_area: the recognisability measure (metrics.region_stats), the "
                   "near-uniform connected regions an image, the share of it they cover and the median region's share "
                   "of its image, computed alike on samples, the held-out draw and the reconstructions; nearer the "
                   "held-out draw is better. It counts flat areas, not their outlines: look at the grids for whole "
                   "shapes."]
        md += [""] + oracle_markdown(report, objective) + two_level_markdown(report, objective)
        real = report.get('references_grid', 'references/real/grid.png')
        md += ["", "Samples at the last step, seed 0 (and the held-out data):", "",
               "| " + " | ".join(ARM_NAMES[a] for a in arms(report)) + " | held-out |", "|---" * (len(arms(report)) + 1) + "|",
               "| " + " | ".join(f"![{a}]({runs[a][0]['grid']})" for a in arms(report)) + f" | ![held-out]({real}) |", ""]
    if not c['smoke']:
        md += ["### Verdict (paired over runs, alpha = 0.05)", ""] + [f"- {s}" for s, _ in verdict(report)] + [""]
    return md


def sweep_markdown(report, out_dir):
    """Figures 2-5, those the run made."""
    sizes, md = report['config']['sizes'], []
    if 'fig5' not in report:  # the video run: Fig. 1 only
        return md
    md += ["## Fig. 5: erasing high frequencies", "",
           "PSNR of the decoded image after zeroing the highest p% of every 8x8 latent tile's DCT coefficients, and of "
           "the image after the same in tiles of the same region (8f x 8f pixels), seed 0. Strip: per image, rows RGB, "
           "control, SE; columns 0, 25, 50, 75% erased.", "",
           f"![Fig. 5]({plot_erasure(report['fig5'], out_dir)})", "", "![Fig. 5 strip](fig5_strip.png)", ""]
    hf = lambda rows: {'hf_share (means)': [m['hf_share'] for m in rows.values()],  # noqa: E731
                       'hf_share (samples)': [m['hf_share_sample'] for m in rows.values()],
                       'hf_energy_share (means)': [m['hf_energy_share'] for m in rows.values()],
                       'hf_energy_share (samples)': [m['hf_energy_share_sample'] for m in rows.values()],
                       'RGB hf_share': [m['rgb_hf_share'] for m in rows.values()]}
    psnr = lambda rows: {'PSNR': [m['psnr'] for m in rows.values()],  # noqa: E731
                         'bicubic at the latent grid': [m['bicubic_psnr'] for m in rows.values()]}
    for key, title, what, xs_key, log_x in (
            ('fig2', 'Fig. 2: latent channels', f"the baseline's family and recipe from scratch, {sizes['sweep_steps']} "
             "steps, but for z_channels", 'z_channels', False),
            ('fig3', 'Fig. 3: KL weight', f"the baseline's family and recipe from scratch, {sizes['sweep_steps']} "
             "steps, but for kl_weight (hf_share of posterior samples against means shows the KL noise)",
             'kl_weights', True),
            ('fig4', 'Fig. 4: SE strength', f"fine-tunes of the baseline ({sizes['ft_steps']} steps) but for se_weight",
             'se_weights', False)):
        if key not in report:
            continue
        rows = report[key]['autoencoders'] if key != 'fig4' else report[key]['finetune']
        xs = report[key][xs_key]
        md += [f"## {title}", "", f"Autoencoders identical but for one setting: {what}. Seed 0.", "",
               f"![{key}]({plot_sweep(xs, hf(rows), xs_key, out_dir, key + '.png', log_x, psnr(rows))})", "",
               f"![{key} spectra]({plot_spectra(rows, out_dir, key + '_spectra.png', title)})", ""]
        md += ae_table({f"{xs_key[:-1] if xs_key.endswith('s') else xs_key} {x:g}": [m] for x, m in zip(xs, rows.values())})
        md += [""]
    return md


def markdown(report, out_dir):
    """report.md's lines; the figures are written into out_dir on the way."""
    c, sizes = report['config'], report['config']['sizes']
    failed = guard_failures(report)
    if c['smoke']:  # a smoke run checks that the pipeline runs end to end; its numbers carry no result
        first = ("**Smoke run: toy sizes that check the pipeline end to end. Its numbers mean nothing, and it draws no "
                 "verdict.**")
    elif not report['ldm']:
        first = ""
    else:
        first = (f"**The LDMs of {', '.join(failed)} have not learned to sample** (sample latent std off by more than 2x, "
                 f"or more than 10% saturated pixels): no comparison is drawn from their samples; the probe still "
                 f"compares their denoisers." if failed else "Every LDM passed the sample guard (sample latent std within "
                 "0.5-2x of the data's per channel, at most 10% saturated pixels), so their samples are compared too.")
    if not report['ldm']:
        first += ("\n\n" if first else "") + ("**--skip_ldm: the autoencoders and their spectra alone; no LDM was "
                                               "trained, so no probe or samples.**")
    md = [first, "", "# Scale equivariance in miniature", "",
          f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if c['smoke'] else 'default sizes'}; "
          f"data: {c['data'] or ('embedded textured moving dead leaves, ' + str(c['num_frames']) + ' frames' if unit(report) == 'clips' else 'embedded ' + c.get('dataset', 'textured') + ' dead leaves')}{' (random crops)' if c['random_crop'] else ''}"
          f"{', held out: ' + c['val_data'] if c['val_data'] else ''}: {report['data']['train']} "
          f"{'training clips cached per LDM (the autoencoders train on the endless training stream)' if unit(report) == 'clips' else 'training images or files'}, "
          f"{report['data']['heldout']} + {report['data']['heldout2']} held-out {unit(report)} (two disjoint draws of one "
          f"protocol); hardware: {report['hardware']}, {report['jobs']} job(s) at a time, torch {report['torch']}; "
          f"wall time {report['wall_seconds'] / 60:.1f} min (reused artefacts cost nothing)"
          + (", of which in the scripts (summed over parallel jobs): " + ', '.join(
              f"{k} {v / 60:.1f} min" for k, v in report['child_seconds'].items()) if report.get('child_seconds') else '')
          + ".", "",
          "Sizes: " + ', '.join(f"{k} {v}" for k, v in sizes.items()) + ". Autoencoders: L1 + KL (1e-6); no LPIPS "
          "(VGG weights are not assumed) and no GAN (more steps than a CPU budget).", "",
          "hf_share is spectrum.py's offset- and scale-free measure: the share of AC energy in zigzag coefficients 32..63 "
          "of 8x8 block DCTs, averaged over channels (white noise 0.508; smooth images near 0); hf_energy_share takes the "
          "share of the energy summed over channels, which a rotation of the channels (invisible to an LDM that "
          "normalises by one scalar) cannot change. Samples are posterior samples, what the LDM learns.", ""]
    return md + fig1_markdown(report, out_dir) + sweep_markdown(report, out_dir) + ablations_markdown(report, out_dir)


ABLATION_NAMES = {'se_detach': 'SE, z detached (trains the decoder alone)', 'se_f2': 'SE, factor 2 only',
                  'se_f4': 'SE, factor 4 only', 'dct_cut': "the authors' DCT cut", 'hf_reg': "the authors' HF penalty",
                  'se_long': 'SE, 5x longer'}


def ablation_arms(report):
    """--ablations' arms: (name, spec, its control's measures per run, the arm's measures per run), the control being
    Fig. 1's or one fine-tuned as long."""
    aes = report['ablations']['autoencoders']
    for arm, spec in report['ablations']['arms'].items():
        control = report['autoencoders']['control'] if spec['control'] == 'control' else aes[spec['control']]
        yield arm, spec, control, aes[arm]


def plot_ablations(report, out_dir):
    """Why SE moves the HF, as a figure: each arm's relative change in hf_share and hf_energy_share against its own
    control, one dot per run (a baseline and a seed) and a bar at their mean; Fig. 1's SE arm first, for reference."""
    rows = [('SE (Fig. 1)', report['autoencoders']['control'], report['autoencoders']['se'])]
    rows += [(ABLATION_NAMES.get(arm, arm), control, treated) for arm, _, control, treated in ablation_arms(report)]
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(10, 1.2 + 0.45 * len(rows)), sharey=True)
    for ax, key in zip(axes, ('hf_share', 'hf_energy_share')):
        for y, (_, control, arm) in enumerate(rows):
            change = [100 * (a[key] - c[key]) / c[key] for c, a in zip(control, arm)]
            ax.barh(y, statistics.mean(change), color='tab:blue' if y else 'tab:grey', alpha=0.5)
            ax.plot(change, [y] * len(change), 'k.')
        ax.axvline(0, color='black', lw=0.8)
        ax.set_xlabel(f'{key}: change against its control (%)')
    axes[0].set_yticks(range(len(rows)), [name for name, _, _ in rows])
    axes[0].invert_yaxis()
    return save(fig, out_dir, 'ablations.png')


def ablations_markdown(report, out_dir):
    """--ablations: each arm against its control (the Fig. 1 control, or one fine-tuned as long), paired over the
    units the runs support, on the held-out spectra and PSNR, and as a figure (plot_ablations)."""
    if 'ablations' not in report:
        return []
    baselines = run_baselines(report)
    units = 'baselines' if len(set(baselines)) > 1 else 'seeds of one baseline'
    keys = [('hf_share', 'hf_share'), ('hf_energy_share', 'hf_energy_share'), ('psnr', 'PSNR')]
    md = ["## Ablations: each fine-tune against its control", "",
          f"Every run's baseline fine-tuned once more per arm, with the same seed and data order as its control; "
          f"measured on the held-out {unit(report)} as Fig. 1's arms. Each cell: control -> arm (relative "
          f"difference; paired t-test over {units}).", "",
          "| arm | steps | " + " | ".join(name for _, name in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for arm, spec, control, treated in ablation_arms(report):
        cells = []
        for key, _ in keys:
            c, a = [m[key] for m in control], [m[key] for m in treated]
            if len(set(baselines)) > 1:
                c, a = by_baseline(c, baselines), by_baseline(a, baselines)
            t = paired_test(a, c)
            cells.append(f"{statistics.mean(c):.4g} -> {statistics.mean(a):.4g} ({100 * t['rel_diff']:+.1f}%, "
                         f"p = {t['p_t']:.2g})")
        md.append(f"| {ABLATION_NAMES.get(arm, arm)} | {spec['steps']} | " + " | ".join(cells) + " |")
    return md + ["", f"![each arm against its control, one dot per run]({plot_ablations(report, out_dir)})", ""]


def write_report(out_dir):
    """out_dir/report.json -> out_dir/report.md and its figures. Returns the markdown."""
    with open(os.path.join(out_dir, 'report.json')) as f:
        report = json.load(f)
    md = '\n'.join(markdown(report, out_dir))
    with open(os.path.join(out_dir, 'report.md'), 'w') as f:
        f.write(md)
    return md


def plot_f_sweep(result, out_dir):
    """LDM's Fig. 7 in miniature: for each factor f one point, sample SWD against sampling throughput and the probe's
    pixel error against training throughput, with the trivial reference (a second held-out draw) as a line."""
    rows = result['factors']
    fig, axes = plt().subplots(1, 2, figsize=(10, 4))
    panels = [(axes[0], 'sample_images_per_second', lambda r: r['samples'].get('swd_avg'),
               'sampling throughput (images/s, DDIM 50 steps, decoded)', 'SWD of samples (lower is better)'),
              (axes[1], 'train_images_per_second', lambda r: r['probe']['pixel_mse_mean'],
               'training throughput (latents/s)', 'probe: pixel MSE of the decoded x0 prediction')]
    for ax, x_key, y_of, xlabel, ylabel in panels:
        points = [(r[x_key], y_of(r), r['f']) for r in rows if y_of(r) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', color='C0')
        for x, y, f in points:
            ax.annotate(f'f{f}', (x, y), textcoords='offset points', xytext=(4, 4))
        ax.set_xscale('log')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    real = result['references'].get('real', {}).get('swd_avg')
    if real is not None:
        axes[0].axhline(real, color='gray', ls='--', label='a second held-out draw')
        axes[0].legend()
    return save(fig, out_dir, 'f_sweep.png')


def write_f_sweep_report(out_dir):
    """out_dir/f_sweep.json (reproduce.py --f_sweep) -> out_dir/f_sweep.md and f_sweep.png. Returns the markdown."""
    with open(os.path.join(out_dir, 'f_sweep.json')) as f:
        result = json.load(f)
    c, fs, refs = result['config'], result['config']['f_sweep'], result['references']
    md = ["# LDM's downsampling factor f in miniature (Rombach et al., Sec. 4.1, Fig. 6 and 7)", "",
          f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if c['smoke'] else 'default sizes'}; "
          f"{c['data'] or 'embedded textured dead leaves'} at {c['sizes']['image_size']} px: {result['data']['train']} "
          f"training images, {result['data']['heldout']} + {result['data']['heldout2']} held-out. Each autoencoder "
          f"(model.py mini-f*, f1: pixels) trained {fs['ae_steps']} steps from scratch (L1 + KL 1e-6, batch 8); each "
          f"LDM is the tiny DiT (patch 2), {fs['ldm_steps']} steps of batch {fs['ldm_batch_size']} at lr "
          f"{c['ldm_lr']:g}, the same for every f. Hardware: {result['hardware']}, {result['jobs']} job(s) at a time "
          f"(throughputs are of one thread beside the other job); wall time {result['wall_seconds'] / 60:.1f} min.", "",
          f"![quality against throughput]({plot_f_sweep(result, out_dir)})", "",
          "| f | latent (C x h x w) | pixels / latent numbers | AE PSNR | bicubic at the latent grid | probe eps-MSE | "
          "probe pixel MSE | guard | SWD of samples | SWD of the AE's reconstructions | train latents/s | "
          "sampled images/s |", "|" + "---|" * 12]
    for r in result['factors']:
        rec = refs.get(f"f{r['f']}", refs.get('real', {})).get('swd_avg') if r['f'] > 1 else refs.get('real', {}).get('swd_avg')
        swd = r['samples'].get('swd_avg')
        md.append(f"| f{r['f']} | {' x '.join(map(str, r['latent_shape']))} | {r['compression']:.0f} | "
                  + ('lossless | - | ' if r['f'] == 1 else f"{r['psnr']:.2f} | {r['bicubic_psnr']:.2f} | ")
                  + f"{r['probe']['eps_mse_mean']:.4f} | {r['probe']['pixel_mse_mean']:.4f} | "
                  f"{'ok' if r['probe']['guard']['ok'] else 'failed'} | {'-' if swd is None else f'{swd:.2f}'} | "
                  f"{'-' if rec is None else f'{rec:.2f}'} | {r['train_images_per_second']:.0f} | "
                  f"{r['sample_images_per_second']:.1f} |")
    real = refs.get('real', {}).get('swd_avg')
    md += ["", f"References: a second held-out draw scores an SWD of {'-' if real is None else f'{real:.2f}'} (a perfect "
           "generator); each AE's reconstructions of it, what a perfect LDM on its latents would score. The probe's "
           "eps-MSE is in each latent space (not comparable across f); its pixel MSE, of the decoded x0 prediction "
           "averaged over 12 noise levels, is. Sample grids:", ""]
    md += [f"- f{r['f']}: ![f{r['f']}]({r['grid']})" for r in result['factors']]
    md = '\n'.join(md)
    with open(os.path.join(out_dir, 'f_sweep.md'), 'w') as f:
        f.write(md)
    return md

