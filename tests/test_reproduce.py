"""The one-command experiment: the smoke run writes a report with every arm and finite numbers."""
import json
import math

import pytest

from helpers import run


@pytest.mark.slow
def test_smoke_run_writes_a_report_with_every_arm(tmp_path):
    run('reproduce.py', '--smoke', '--out_dir', tmp_path, timeout=900)
    report = json.loads((tmp_path / 'report.json').read_text())
    summary = report['summary']
    assert set(summary) == {'baseline', 'se', 'baseline_ft', 'se_ft'}
    for arm, metrics in summary.items():
        for key in ('hf_ratio', 'rgb_hf_ratio', 'rec_psnr', 'rec_ssim', 'gen_swd_avg', 'ae_train_seconds'):
            assert math.isfinite(metrics[key]['mean']), (arm, key)
    # the arms really differ where they should and agree where they should
    assert summary['baseline']['rgb_hf_ratio'] == summary['se']['rgb_hf_ratio']  # same evaluation images
    assert summary['baseline']['hf_ratio'] != summary['se']['hf_ratio']
    table = (tmp_path / 'report.md').read_text()
    assert all(f'| {arm} |' in table for arm in summary)
    # a second run reuses every artefact and reproduces the numbers exactly
    run('reproduce.py', '--smoke', '--out_dir', tmp_path, timeout=900)
    again = json.loads((tmp_path / 'report.json').read_text())
    assert again['per_seed'] == report['per_seed']
