"""
The report of reproduce.py, from its numbers alone: out_dir/report.json (every number the run measured) ->
out_dir/report.md (tables, plots, sample grids and a verdict whose sentences are computed from the numbers) and the
figures beside it. reproduce.py calls it at the end of a run; to re-plot or re-word a report without re-running:

  python repro/reproduce.py --replot --out_dir out/reproduce

The statistics. Every comparison is paired: seed s fine-tunes the same baseline with SE and without (the control),
with the same data order, and trains the same LDM on each, so d_s = SE_s - control_s removes what the seeds share.
The verdict on each metric is Student's paired t-test of mean(d) = 0, two-sided, at ALPHA; the report gives its p
value, the 95% confidence interval of the mean difference, and the exact sign-flip test's p (which cannot go below
2 / 2^n, so below 0.05 only from 6 seeds). tests/test_report.py simulates the rule on data with no effect (it fires
5% of the time) and with one (its power grows with the seeds).
"""
import os
import json
import math
import itertools
import statistics

ALPHA = 0.05
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


def compare(name, control, se, lower_is_better=True, arm='se'):
    """One sentence on a paired comparison of an SE arm with its control over seeds, and the test behind it."""
    test = paired_test(se, control)
    (mc, sc), (ms, ss) = mean_std(control), mean_std(se)
    name = name if arm == 'se' else f"{ARM_NAMES[arm]}: {name}"
    numbers = (f"control {mc:.4g} ± {sc:.2g} -> SE {ms:.4g} ± {ss:.2g} ({100 * test['rel_diff']:+.1f}%; paired t-test "
               f"over {test['n']} seeds p = {test['p_t']:.3g}, 95% CI of the difference [{test['ci95'][0]:.3g}, "
               f"{test['ci95'][1]:.3g}], sign-flip p = {test['p_signflip']:.3g})")
    if test['n'] < 2:
        return f"{name}: {numbers}: one seed has no spread to test against.", test
    if not test['significant']:
        return f"{name}: no difference at alpha = {ALPHA} ({numbers}).", test
    verb = 'lowered' if ms < mc else 'raised'
    good = (ms < mc) == lower_is_better
    return f"{name}: SE {verb} it, {'better' if good else 'worse'}, at alpha = {ALPHA} ({numbers}).", test


def guard_failures(report):
    """The LDMs whose samples fail the guard (probe.guard_ldm, metrics.sample_guard), as 'objective arm seed s' strings."""
    return [f"{objective} {arm} seed {s}" for objective, runs in report['ldm'].items() for arm in arms(report)
            for s, run in enumerate(runs[arm]) if not run['probe'][-1]['guard']['ok']]


def sample_keys(report):
    """The sample metrics each LDM was scored by: SWD (average, per scale) and FID / KID where Inception existed; for
    clips the video SWD and FVD."""
    first = next(iter(report['ldm'].values()))['control'][0]['samples']
    if 'video_swd' in first:  # clips: eval_fid.py's video SWD (frames and motion), FVD where I3D existed
        return [k for k in ('video_swd', 'swd_frames', 'swd_motion', 'fvd') if k in first]
    swd = ['swd_avg'] + sorted((k for k in first if k.startswith('swd_') and k[4:].isdigit()), key=lambda k: -int(k[4:]))
    return swd + [k for k in ('fid', 'kid') if k in first]


def verdict(report):
    """The verdict's sentences: the autoencoders' spectra and PSNR, then per objective the probe and the samples (these
    only when every LDM passes the guard). -> [(sentence, test)]."""
    aes, out = report['autoencoders'], []
    failed = guard_failures(report)
    for arm in treated(report):
        ae = lambda key: ([m[key] for m in aes['control']], [m[key] for m in aes[arm]])  # noqa: E731
        out += [compare('hf_share of posterior means', *ae('hf_share'), arm=arm),
                compare('hf_share of posterior samples (what the LDM learns)', *ae('hf_share_sample'), arm=arm),
                compare('hf_energy_share of posterior means', *ae('hf_energy_share'), arm=arm),
                compare('hf_energy_share of posterior samples', *ae('hf_energy_share_sample'), arm=arm)]
        out += [compare(what, *ae(key), arm=arm) for key, what in VIDEO_HF if key in aes['control'][0]]
        out += [compare('reconstruction PSNR', *ae('psnr'), lower_is_better=False, arm=arm)]
        for objective, runs in report['ldm'].items():
            final = lambda a, key: [run['probe'][-1][key] for run in runs[a]]  # noqa: E731
            out += [compare(f"{objective} LDM: probe eps-MSE, mean over noise levels (the primary metric)",
                            final('control', 'eps_mse_mean'), final(arm, 'eps_mse_mean'), arm=arm),
                    compare(f"{objective} LDM: probe pixel MSE of the decoded x0 prediction, mean over noise levels",
                            final('control', 'pixel_mse_mean'), final(arm, 'pixel_mse_mean'), arm=arm)]
            if not any(f.startswith(objective + ' ') for f in failed):
                out += [compare(f"{objective} LDM: {k} of its samples", [r['samples'][k] for r in runs['control']],
                                [r['samples'][k] for r in runs[arm]], arm=arm) for k in sample_keys(report)
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


def fig1_markdown(report, out_dir):
    c, sizes, aes = report['config'], report['config']['sizes'], report['autoencoders']
    seeds = len(aes['control'])
    md = ["## Fig. 1: does SE make the latents easier to diffuse?", "",
          f"The baseline ({os.path.basename(c['baseline'])}, sha256 {c['baseline_sha256']}) fine-tuned {sizes['ft_steps']} "
          f"steps with SE (se_weight {c['se_weight']:g}, the authors' {c['se_down']} operator) and without (control), "
          f"{seeds} seeds; each pair shares its data order and seed. Measured on {report['data']['heldout']} held-out "
          f"{unit(report)}:", ""]
    md += ae_table({'baseline (before fine-tuning)': [report['baseline']], **{arm: aes[arm] for arm in arms(report)}})
    md += ["", f"![spectra]({plot_spectra({arm: aes[arm][0] for arm in arms(report)}, out_dir, 'fig1_spectra.png', 'Latent spectra, seed 0')})", ""]
    keys = sample_keys(report)
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
        md += ["", "| samples | " + " | ".join(keys) + " | guard: sample std / data std (min-max) | saturated |",
               "|---" * (len(keys) + 3) + "|"]
        for arm in arms(report):
            guards = [r['probe'][-1]['guard'] for r in runs[arm]]
            ratios = [x for g in guards for x in g['std_ratio']]
            md.append(f"| {arm} | " + " | ".join(pm([r['samples'][k] for r in runs[arm]], '.2f') for k in keys) +
                      f" | {min(ratios):.2f}-{max(ratios):.2f} | {max(g['saturated'] for g in guards):.1%} |")
        for name, m in report['references'].items():
            md.append(f"| reference: {'a second draw of held-out ' + unit(report) if name == 'real' else name + ' AE reconstructions'}"
                      f" | " + " | ".join(f"{m[k]:.2f}" if k in m else '-' for k in keys) + " | | |")
        real = report.get('references_grid', 'references/real/grid.png')
        md += ["", "Samples at the last step, seed 0 (and the held-out data):", "",
               "| " + " | ".join(ARM_NAMES[a] for a in arms(report)) + " | held-out |", "|---" * (len(arms(report)) + 1) + "|",
               "| " + " | ".join(f"![{a}]({runs[a][0]['grid']})" for a in arms(report)) + f" | ![held-out]({real}) |", ""]
    if not c['smoke']:
        md += ["### Verdict (paired over seeds, alpha = 0.05)", ""] + [f"- {s}" for s, _ in verdict(report)] + [""]
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
    else:
        first = (f"**The LDMs of {', '.join(failed)} have not learned to sample** (sample latent std off by more than 2x, "
                 f"or more than 10% saturated pixels): no comparison is drawn from their samples; the probe still "
                 f"compares their denoisers." if failed else "Every LDM passed the sample guard (sample latent std within "
                 "0.5-2x of the data's per channel, at most 10% saturated pixels), so their samples are compared too.")
    md = [first, "", "# Scale equivariance in miniature", "",
          f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if c['smoke'] else 'default sizes'}; "
          f"data: {c['data'] or ('embedded textured moving dead leaves, ' + str(c['num_frames']) + ' frames' if unit(report) == 'clips' else 'embedded textured dead leaves')}{' (random crops)' if c['random_crop'] else ''}"
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
    return md + fig1_markdown(report, out_dir) + sweep_markdown(report, out_dir)


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

