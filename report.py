"""
The report of reproduce.py, from its numbers alone: out_dir/report.json (every number the run measured) ->
out_dir/report.md (tables, plots and a verdict whose sentences are computed from the numbers) and the figures beside
it. reproduce.py calls it at the end of a run; to re-plot or re-word the report without re-running anything:

  python report.py out/reproduce
"""
import os
import json
import argparse
import statistics

# -----------------------------------------------------------------------------
# statistics and the verdict: sentences computed from the numbers


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(name, base, se, lower_is_better=True):
    """One sentence on a per-seed paired comparison. A difference counts only when every seed agrees on its sign and
    the mean paired difference exceeds the larger of the two arms' seed spreads (with one seed: never)."""
    (mb, sb), (ms, ss) = mean_std(base), mean_std(se)
    diffs = [s - b for b, s in zip(base, se)]
    change = 100 * (ms - mb) / abs(mb) if mb else float('nan')
    seeds = ', '.join(f"{b:.4g} -> {s:.4g}" for b, s in zip(base, se))
    clear = len(diffs) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)) and \
        abs(statistics.mean(diffs)) > max(sb, ss)
    if not clear:
        why = 'one seed cannot show a spread' if len(diffs) == 1 else "no difference beyond the seeds' spread"
        return f"{name}: baseline {mb:.4g} ± {sb:.2g}, SE {ms:.4g} ± {ss:.2g} ({change:+.1f}%): {why} (seeds: {seeds})."
    verb = 'lowered' if ms < mb else 'raised'
    good = (ms < mb) == lower_is_better
    return (f"{name}: SE {verb} it by {abs(change):.1f}% ({mb:.4g} ± {sb:.2g} -> {ms:.4g} ± {ss:.2g}; seeds: {seeds}), "
            f"{'better' if good else 'worse'} beyond the seeds' spread.")


def pairs(video):
    """Fig. 1's comparisons (reference arm, SE arm, label): video adds the SE fine-tune against its control."""
    return [('baseline', 'se', '')] + ([('control', 'se_ft', 'fine-tuned: ')] if video else [])


def sample_keys(fig1, video):
    """(the SWD keys, every sample metric) of Fig. 1's curves: SWD average and per scale (video: video SWD, frames,
    motion), plus FID (FVD) where the weights existed."""
    last = fig1['ldm']['baseline'][0]['curve'][-1]
    if video:  # the weight-free video SWD (its frame and motion halves), and FVD where the I3D weights exist
        swd_keys = ['video_swd', 'swd_frames', 'swd_motion']
        return swd_keys, swd_keys + (['fvd'] if 'fvd' in last else [])
    swd_keys = ['swd_avg'] + sorted((k for k in last if k.startswith('swd_') and k[4:].isdigit()), key=lambda k: -int(k[4:]))
    return swd_keys, swd_keys + (['fid'] if 'fid' in last else [])


def final(fig1, arm, key):
    return [s['curve'][-1][key] for s in fig1['ldm'][arm]]


def average(fig1, arm, key):
    return [statistics.mean(p[key] for p in s['curve']) for s in fig1['ldm'][arm]]


def verdict(report):
    """The sentences of the verdict: per pair of Fig. 1's arms, the AE measurements and the sample metrics at the last
    LDM step and averaged over the evaluations (convergence)."""
    config, fig1 = report['config'], report['fig1']
    video = config['num_frames'] > 1
    _, gen_keys = sample_keys(fig1, video)
    ae_metric = lambda arm, key: [m[key] for m in fig1['autoencoders'][arm]]  # noqa: E731
    out = []
    for ref, se, label in pairs(video):
        out += [compare(f'{label}hf_share of posterior means', ae_metric(ref, 'hf_share'), ae_metric(se, 'hf_share')),
                compare(f'{label}hf_share of posterior samples (what the LDM learns)', ae_metric(ref, 'hf_share_sample'),
                        ae_metric(se, 'hf_share_sample'))]
        if video:
            out.append(compare(f'{label}temporal hf of the latents', ae_metric(ref, 'temporal_hf'),
                               ae_metric(se, 'temporal_hf')))
        out.append(compare(f'{label}reconstruction PSNR', ae_metric(ref, 'psnr'), ae_metric(se, 'psnr'),
                           lower_is_better=False))
        out += [compare(f"{label}{k} of samples at the last LDM step", final(fig1, ref, k), final(fig1, se, k))
                for k in gen_keys]
        out += [compare(f"{label}{k} averaged over the {config['sizes']['ldm_evals']} LDM evaluations (convergence)",
                        average(fig1, ref, k), average(fig1, se, k)) for k in gen_keys]
    return out


def hf_series(rows):
    """hf_share of posterior means, of samples, and of RGB on the latent grid, over a sweep's AEs (in order)."""
    return {'posterior means': [m['hf_share'] for m in rows.values()],
            'posterior samples': [m['hf_share_sample'] for m in rows.values()],
            'RGB on the latent grid': [m['rgb_hf_share'] for m in rows.values()]}


def trend(xs, ys):
    """'rises' / 'falls' when ys is monotone in xs, else 'is not monotone'."""
    if all(b > a for a, b in zip(ys, ys[1:])):
        return 'rises'
    if all(b < a for a, b in zip(ys, ys[1:])):
        return 'falls'
    return 'is not monotone'

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


def plot_convergence(fig1, keys, out_dir, what):
    """Fig. 1: the sample metrics `keys` (SWD average and per scale; video: video SWD, frames, motion) vs LDM steps,
    mean ± std over seeds as a band, one line per arm; the references as horizontal lines."""
    curves, references = fig1['ldm'], fig1['references']
    fig, axes = plt().subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for arm, color in zip(curves, ('tab:blue', 'tab:orange', 'tab:green', 'tab:red')):
            steps = [p['step'] for p in curves[arm][0]['curve']]
            values = [[s['curve'][i][key] for s in curves[arm]] for i in range(len(steps))]
            m = [statistics.mean(v) for v in values]
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.plot(steps, m, 'o-', color=color, label=f"{arm} latents")
            ax.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.2)
            ax.axhline(references[f"{arm} AE reconstructions"][key], color=color, ls=':', label=f"{arm} AE reconstructions")
        ax.axhline(references['real'][key], color='black', ls='--', label=f"a second draw of real {what}")
        ax.set(xlabel='LDM training steps', ylabel=f"{key} (lower is better)", title=key.replace('swd_', 'SWD '))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save(fig, out_dir, 'fig1_convergence.png')


def plot_spectra(rows, out_dir, name, title):
    """Profiles of several AEs (means solid, samples dotted) with RGB on the latent grid (dashed)."""
    fig, ax = plt().subplots(figsize=(6.5, 4))
    for label, m in rows.items():
        line, = ax.plot(m['profile'], label=f"{label} mean (hf {m['hf_share']:.3f})")
        ax.plot(m['profile_sample'], ':', color=line.get_color(), label=f"{label} sample (hf {m['hf_share_sample']:.3f})")
    first = next(iter(rows.values()))
    ax.plot(first['rgb_profile'], '--', color='black', label=f"RGB on the latent grid (hf {first['rgb_hf_share']:.3f})")
    ax.set(yscale='log', xlabel='zigzag index (low -> high frequency)', ylabel='RMS coefficient / RMS centred DC',
           title=title)
    ax.legend(fontsize=6)
    return save(fig, out_dir, name)


def plot_temporal(rows, out_dir, name):
    """Video: the temporal spectrum of each AE's latents (DCT along the latent frames, each channel's AC profile over
    its mean) with RGB on the same grid (dashed)."""
    fig, ax = plt().subplots(figsize=(5.5, 3.8))
    for label, m in rows.items():
        k = range(1, len(m['temporal_profile']) + 1)
        ax.plot(k, m['temporal_profile'], 'o-', label=f"{label} (temporal hf {m['temporal_hf']:.3f})")
    first = next(iter(rows.values()))
    ax.plot(k, first['rgb_temporal_profile'], 'o--', color='black',
            label=f"RGB on the latent grid (temporal hf {first['rgb_temporal_hf']:.3f})")
    ax.set(xlabel='temporal DCT frequency k (latent frames)', ylabel='mean |coefficient| / channel mean',
           title='Temporal spectrum of the latents (white noise: flat at 1)')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, out_dir, name)


def plot_sweep(xs, series, xlabel, out_dir, name, log_x=False, psnr=None):
    """hf_share (and optionally PSNR) against a swept setting."""
    fig, axes = plt().subplots(1, 2 if psnr else 1, figsize=(9 if psnr else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    for label, ys in series.items():
        ax.plot(xs, ys, '--' if label.startswith('RGB') else 'o-', label=label)
    ax.set(xlabel=xlabel, ylabel='hf_share (AC energy in zigzag 32..63)', xscale='symlog' if log_x else 'linear')
    if log_x:
        ax.set_xscale('symlog', linthresh=min(x for x in xs if x > 0))
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
    for arm, values in fig5.items():
        ax.plot(pct, values, 'o-', label=f"{arm} latents")
    ax.set(xlabel='% of latent DCT coefficients erased (highest first)', ylabel='PSNR vs input (dB)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, out_dir, 'fig5_erasure.png')

# -----------------------------------------------------------------------------
# the markdown


def ae_table(rows, video):
    """One row per AE; video adds the temporal hf ratio of the latents and of RGB on their grid."""
    temporal = ['temporal hf', 'RGB temporal hf'] if video else []
    lines = ["| autoencoder | hf_share means | hf_share samples | RGB hf_share | " + ''.join(f"{c} | " for c in temporal) +
             "PSNR | bicubic at latent grid | margin | AE train s |", "|---" * (8 + len(temporal)) + "|"]
    for label, m in rows.items():
        margin = m['psnr'] - m['bicubic_psnr']
        cells = f"{m['temporal_hf']:.4f} | {m['rgb_temporal_hf']:.4f} | " if video else ''
        lines.append(f"| {label} | {m['hf_share']:.4f} | {m['hf_share_sample']:.4f} | {m['rgb_hf_share']:.4f} | {cells}"
                     f"{m['psnr']:.2f} | {m['bicubic_psnr']:.2f} | {margin:+.2f} dB{'' if margin >= 3 else ' (< 3 dB)'} | "
                     f"{m['ae_train_seconds']:.0f} |")
    return lines


def fig1_markdown(report, out_dir):
    c, fig1 = report['config'], report['fig1']
    sizes, video = c['sizes'], c['num_frames'] > 1
    what = 'clips' if video else 'images'
    aes, curves, references = fig1['autoencoders'], fig1['ldm'], fig1['references']
    swd_keys, gen_keys = sample_keys(fig1, video)
    short_of_target = [f"{arm} seed {s}" for arm in aes for s, m in enumerate(aes[arm]) if m['psnr'] - m['bicubic_psnr'] < 3]
    skipped = {k: why for arm in curves for s in curves[arm] for p in s['curve'] for k, why in p['skipped'].items()}
    seed0_rows = {arm: aes[arm][0] for arm in aes}  # the AEs of seed 0: the spectra plots
    finetune_text = (f"; se_ft and control: the baseline fine-tuned {sizes['ft_steps']} more steps with and without SE"
                     if video else '')
    md = ["## Fig. 1: LDM convergence on baseline vs SE latents", "",
          f"{'The two arms from scratch' if video else 'Both arms'}: the same preset, recipe, data order and "
          f"{sizes['ae_steps']} AE steps (the SE arm, se_weight "
          f"{c['se_weight']:g}, pays one extra decoder pass per step)"
          f"{finetune_text}, "
          f"then the same {'video ' if video else ''}DiT, {sizes['ldm_steps']} steps, "
          f"sampled ({sizes['num_samples']} DDIM samples, {sizes['sample_steps']} steps, the same seed) and scored at "
          f"{sizes['ldm_evals']} evenly spaced steps. Bands: ± std over {c['seeds']} LDM seed(s) on {c['ae_seeds']} AE "
          f"seed(s).", ""]
    for seed in range(c['ae_seeds']):
        md += ae_table({f"{arm} seed {seed}": aes[arm][seed] for arm in aes}, video)[2 if seed else 0:]
    md += ["", ("Every AE beats bicubic at its latent grid by at least 3 dB." if not short_of_target else
                f"Short of the 3 dB target over bicubic: {', '.join(short_of_target)}."), ""]
    if video:
        md += [f"![spatial spectra]({plot_spectra(seed0_rows, out_dir, 'spectra_spatial.png', 'Spatial spectrum of the latent frames')})",
               "", f"![temporal spectra]({plot_temporal(seed0_rows, out_dir, 'spectra_temporal.png')})", ""]
    md += [f"![Fig. 1]({plot_convergence(fig1, swd_keys, out_dir, what)})", "",
           "| arm | " + " | ".join(f"{k} final" for k in gen_keys) + " | LDM train s |", "|---" * (len(gen_keys) + 2) + "|"]
    for arm in curves:
        cells = [f"{mean_std(final(fig1, arm, k))[0]:.2f} ± {mean_std(final(fig1, arm, k))[1]:.2f}" for k in gen_keys]
        md.append(f"| {arm} | " + " | ".join(cells) + f" | {statistics.mean(s['ldm_train_seconds'] for s in curves[arm]):.0f} |")
    for name, m in references.items():  # the same metrics of real images and of the AEs' reconstructions (seed 0)
        md.append(f"| reference: {name} | " + " | ".join(f"{m[k]:.2f}" if k in m else '-' for k in gen_keys) + " | |")
    md += [""] + [f"- {k} not measured: {why}" for k, why in sorted(skipped.items())]
    md += ["", f"The reference rows score a second draw of real {what} (from the training stream) and each seed-0 AE's "
           f"reconstructions of it against the same held-out {what}, with the same counts: the first is what a perfect "
           "generator gets, the second what a perfect LDM on that AE's latents can get."]
    md += ["", f"Samples at the last step (seed 0{', first frames above middle frames' if video else ''}):", "",
           "| " + " | ".join(curves) + " |", "|---" * len(curves) + "|",
           "| " + " | ".join(f"![{arm}]({curves[arm][0]['curve'][-1]['grid']})" for arm in curves) + " |", "",
           "### Verdict (computed from the numbers above)", "",
           "A difference counts only when every seed agrees on its sign and the mean paired difference exceeds the larger "
           "of the two arms' seed standard deviations.", ""] + [f"- {v}" for v in verdict(report)] + [""]
    return md


def sweep_markdown(report, out_dir):
    """Figures 2-5, those the run made."""
    c, video, md = report['config'], report['config']['num_frames'] > 1, []
    sizes = c['sizes']
    if 'fig5' in report:
        md += ["## Fig. 5: erasing the latents' high frequencies", "",
               "PSNR of the decoded image after zeroing the highest p% of every 8x8 latent block's DCT coefficients (seed 0). "
               "Strip: per image, rows RGB (its own blocks), baseline, SE; columns 0, 25, 50, 75% erased.", "",
               f"![Fig. 5 curves]({plot_erasure(report['fig5'], out_dir)})", "", "![Fig. 5 strip](fig5_strip.png)", "",
               "| erased | " + " | ".join(f"{10 * k}%" for k in range(10)) + " |", "|---" * 11 + "|"]
        md += [f"| {arm} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for arm, values in report['fig5'].items()]
        md += [""]
    if 'fig2' in report:
        xs, rows = report['fig2']['z_channels'], report['fig2']['autoencoders']
        series = hf_series(rows)
        md += ["## Fig. 2: latent channels", "", f"AEs identical but for z_channels (seed 0, {sizes['ae_steps']} steps).", "",
               f"![Fig. 2 spectra]({plot_spectra(rows, out_dir, 'fig2_spectra.png', 'Fig. 2: spectra vs latent channels')})", "",
               f"![Fig. 2]({plot_sweep(xs, series, 'z_channels', out_dir, 'fig2_channels.png')})", ""] + ae_table(rows, video) + [
               "", f"- hf_share of posterior means {trend(xs, series['posterior means'])} with channels "
               f"({', '.join(f'{v:.4f}' for v in series['posterior means'])}); of samples "
               f"{trend(xs, series['posterior samples'])} "
               f"({', '.join(f'{v:.4f}' for v in series['posterior samples'])}). The paper: it rises.", ""]
    if 'fig3' in report:
        xs, rows = report['fig3']['kl_weights'], report['fig3']['autoencoders']
        series = hf_series(rows)
        md += ["## Fig. 3: KL weight", "", f"AEs identical but for kl_weight (seed 0, {sizes['ae_steps']} steps).", "",
               f"![Fig. 3 spectra]({plot_spectra(rows, out_dir, 'fig3_spectra.png', 'Fig. 3: spectra vs KL weight')})", "",
               f"![Fig. 3]({plot_sweep(xs, series, 'kl_weight', out_dir, 'fig3_kl.png', log_x=True)})", ""] + ae_table(rows, video) + [
               "", f"- hf_share of posterior samples {trend(xs, series['posterior samples'])} with the KL weight "
               f"({', '.join(f'{v:.4f}' for v in series['posterior samples'])}); of means "
               f"{trend(xs, series['posterior means'])} ({', '.join(f'{v:.4f}' for v in series['posterior means'])}). "
               "The paper: KL noise adds high frequencies to the samples.", ""]
    if 'fig4' in report:
        xs = report['fig4']['se_weights']
        scratch, tuned = report['fig4']['scratch'], report['fig4']['finetune']
        series = {'from scratch (means)': [m['hf_share'] for m in scratch.values()],
                  'from scratch (samples)': [m['hf_share_sample'] for m in scratch.values()],
                  'fine-tuned (means)': [m['hf_share'] for m in tuned.values()],
                  'fine-tuned (samples)': [m['hf_share_sample'] for m in tuned.values()],
                  'RGB on the latent grid': [m['rgb_hf_share'] for m in scratch.values()]}
        psnr = {'from scratch': [m['psnr'] for m in scratch.values()], 'fine-tuned': [m['psnr'] for m in tuned.values()],
                'bicubic at latent grid': [m['bicubic_psnr'] for m in scratch.values()]}
        md += ["## Fig. 4: SE strength", "",
               f"se_weight swept from scratch ({sizes['ae_steps']} steps) and as the paper's fine-tune of the se_weight-0 "
               f"baseline ({sizes['ft_steps']} more steps; se_weight 0 is the control for the extra steps). Seed 0.", "",
               f"![Fig. 4]({plot_sweep(xs, series, 'se_weight', out_dir, 'fig4_se.png', psnr=psnr)})", ""]
        md += ae_table({**{f"scratch se {float(w):g}": m for w, m in scratch.items()},
                        **{f"fine-tune se {float(w):g}": m for w, m in tuned.items()}}, video)
        md += ["", f"- From scratch, hf_share of means {trend(xs, series['from scratch (means)'])} with se_weight "
               f"({', '.join(f'{v:.4f}' for v in series['from scratch (means)'])}), PSNR "
               f"{trend(xs, psnr['from scratch'])} ({', '.join(f'{v:.2f}' for v in psnr['from scratch'])} dB).",
               f"- Fine-tuned, hf_share of means {trend(xs, series['fine-tuned (means)'])} "
               f"({', '.join(f'{v:.4f}' for v in series['fine-tuned (means)'])}), PSNR "
               f"{trend(xs, psnr['fine-tuned'])} ({', '.join(f'{v:.2f}' for v in psnr['fine-tuned'])} dB). "
               "The paper: SE lowers the high frequencies at a small PSNR cost.", ""]
    return md


def markdown(report, out_dir):
    """report.md's lines; the figures are written into out_dir on the way."""
    c = report['config']
    sizes, video = c['sizes'], c['num_frames'] > 1
    what = 'clips' if video else 'images'
    clips = f", {c['num_frames']}-frame clips" if video else ''
    md = ["# Scale equivariance in miniature: " + ("the video experiment" if video else "the paper's figures"), "",
          f"Run: {'smoke sizes (checks the pipeline only; the numbers mean nothing)' if c['smoke'] else 'default sizes'}, "
          f"data: {c['data'] or 'embedded dead leaves'}{' (random crops)' if c['random_crop'] else ''}, "
          f"{c['seeds']} seed(s) for Fig. 1{clips}, hardware: {report['hardware']}, torch {report['torch']}.",
          f"Wall time of the run: {report['wall_seconds'] / 60:.1f} min (reused artefacts cost nothing).", "",
          "Sizes: " + ', '.join(f"{k} {v}" for k, v in sizes.items()) +
          f"; AE preset {c['ae_preset']}, z_channels {c['z_channels']}, kl_weight {c['kl_weight']:g}, "
          f"LDM {c['ldm_model']} {c['ldm_preset'] or '(tiny)'}, EMA {c['ldm_ema_decay']}.", "",
          "hf_share is spectrum.py's offset-free measure: the share of AC energy in zigzag coefficients 32..63 of 8x8 block "
          "DCTs, averaged over channels (white noise 0.508); lower = closer to smooth images. Samples are posterior "
          "samples, what the LDM is trained on; means are the posterior means. Every AE is measured on the same "
          f"{sizes['num_eval']} held-out {what}, next to bicubic down-and-up at its latent grid"
          f"{' (every frame; generous: it keeps all frames, the latent 1 in 4)' if video else ''}.", ""]
    if video:
        md += ["Video: hf_share is that of every latent frame, over all of them (an 8x8 latent frame is one DCT block); "
               "temporal hf is spectrum.temporal_hf_ratio, the mean |DCT coefficient| along the latent frames in the upper "
               "half of the temporal frequencies, over each channel's mean AC amplitude (white noise in time: 1; lower = "
               "smoother in time). RGB is pooled to the latents' (t, h, w) grid.", ""]
    return md + fig1_markdown(report, out_dir) + sweep_markdown(report, out_dir)


def write_report(out_dir):
    """out_dir/report.json -> out_dir/report.md and its figures. Returns the markdown."""
    with open(os.path.join(out_dir, 'report.json')) as f:
        report = json.load(f)
    md = '\n'.join(markdown(report, out_dir))
    with open(os.path.join(out_dir, 'report.md'), 'w') as f:
        f.write(md)
    return md


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('out_dir', nargs='?', default='out/reproduce', help="a reproduce.py run's --out_dir")
    out_dir = parser.parse_args().out_dir
    if not os.path.isfile(os.path.join(out_dir, 'report.json')):
        parser.exit(2, f"error: {out_dir} holds no report.json; pass the --out_dir of a reproduce.py run.\n")
    print(write_report(out_dir))
    print(f"\nwrote {os.path.join(out_dir, 'report.md')}")
