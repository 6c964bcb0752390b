"""The sample guard and the CPU recipe of train_ldm.py: the guard's statistic is a closed form that fires on noise and
not on data, and the README's CPU example says which recipe it took and when its samples fail the guard."""
import json
import os
import re

import pytest
import torch

from evaluation.metrics import GUARD_SATURATED, GUARD_STD_RATIO, sample_guard
from tests.helpers import ROOT, run


def test_guard_passes_data_like_samples_and_fails_noise_and_saturation():
    g = torch.Generator().manual_seed(0)
    z_data = torch.randn(64, 4, 8, 8, generator=g)
    x_ok = torch.rand(16, 3, 32, 32, generator=g) * 1.8 - 0.9  # inside (-1, 1)
    ok = sample_guard(torch.randn(16, 4, 8, 8, generator=g), z_data, x_ok)
    assert ok['ok'] and all(0.9 < r < 1.1 for r in ok['std_ratio']) and ok['saturated'] == 0
    loud = sample_guard(3 * torch.randn(16, 4, 8, 8, generator=g), z_data, x_ok)  # a sampler that blows up
    assert not loud['ok'] and min(loud['std_ratio']) > GUARD_STD_RATIO[1]
    quiet = sample_guard(0.1 * torch.randn(16, 4, 8, 8, generator=g), z_data, x_ok)  # collapsed samples
    assert not quiet['ok'] and max(quiet['std_ratio']) < GUARD_STD_RATIO[0]
    x_sat = x_ok.clone()
    x_sat[:, :, :8] = 1.0  # a quarter of the pixels at the edge of the range
    sat = sample_guard(torch.randn(16, 4, 8, 8, generator=g), z_data, x_sat)
    assert not sat['ok'] and sat['saturated'] == pytest.approx(0.25) and sat['saturated'] > GUARD_SATURATED


def test_guard_ignores_what_the_latent_normalisation_makes_arbitrary():
    # a per-channel offset and scale applied to samples and data alike (the autoencoder's own, which the LDM's
    # normalisation removes) leaves every ratio as it was
    g = torch.Generator().manual_seed(1)
    z, z_data, x = torch.randn(16, 4, 8, 8, generator=g), torch.randn(64, 4, 8, 8, generator=g), torch.zeros(1, 3, 8, 8)
    a, b = torch.tensor([0.1, 3.0, 1.0, 7.0]).view(1, 4, 1, 1), torch.tensor([5.0, -2.0, 0.0, 1.0]).view(1, 4, 1, 1)
    torch.testing.assert_close(torch.tensor(sample_guard(a * z + b, a * z_data + b, x)['std_ratio']),
                               torch.tensor(sample_guard(z, z_data, x)['std_ratio']), rtol=1e-5, atol=0)


def readme_cpu_example():
    """The train_ldm.py command of the README's CPU example, as a list of arguments."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        line = next(line for line in f if line.startswith('python train_ldm.py') and 'assets/' in line)
    return line.split('#')[0].split()[2:]


def test_the_readme_cpu_example_takes_the_cpu_recipe_and_says_when_samples_fail_the_guard(tmp_path):
    argv = readme_cpu_example()
    out = tmp_path / 'ldm'
    argv[argv.index('--out_dir') + 1] = str(out)
    # the README's command at a smoke size: 2 steps cannot make samples that pass the guard
    p = run('train_ldm.py', *argv, '--max_steps', 2, '--batch_size', 8, '--eval_interval', 2, '--num_samples', 4)
    recipe = next(line for line in p.stdout.splitlines() if 'on a CPU (--device auto), the recipe' in line)
    assert '--model dit --preset tiny' in recipe and '--lr 0.001' in recipe and '--ema_warmup' in recipe
    assert re.search(r'the samples at step 2 fail the guard: latent std [\d.]+-[\d.]+ of the data', p.stdout)
    config = json.loads((out / 'config.json').read_text())
    assert config['lr'] == 1e-3 and config['ema_decay'] == 0.999 and config['cache_latents'] == str(out / 'latent_cache')
    assert config['cache_size'] == 16  # the latents 2 steps of 8 draw, not the 2000 of a full run
    guard = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines() if 'guard_ok' in line]
    assert len(guard) == 1 and guard[0]['guard_ok'] == 0


def test_the_cpu_recipe_yields_to_every_flag_given(tmp_path):
    # (CI's machines have no GPU: there --device auto is a CPU, as on the machine the README's example targets)
    # --lr given: kept; --model unet given: the DiT preset is not forced on it, and no sweep covers it, which it says
    p = run('train_ldm.py', '--ae', os.path.join(ROOT, 'assets', 'baseline_mini.safetensors'), '--model', 'unet',
            '--out_dir', tmp_path / 'ldm', '--max_steps', 1, '--batch_size', 4, '--eval_interval', 5, '--image_size', 32)
    assert 'no CPU sweep covers --model unet --preset tiny, so --lr stays 0.0001' in p.stdout
    config = json.loads((tmp_path / 'ldm' / 'config.json').read_text())
    assert config['model'] == 'unet' and config['preset'] == 'tiny' and config['lr'] == 1e-4
    assert config['ema_decay'] == 0.999 and config['ema_warmup']
    assert config['objective'] == 'v' and '--objective v' in p.stdout  # a UNet on a CPU predicts v (train_ldm.py says why)


def test_device_cpu_keeps_the_flags_own_defaults(tmp_path):
    # the recipe fills in what is left to the machine; --device cpu, asked for by name, runs the defaults as they are
    run('train_ldm.py', '--ae', os.path.join(ROOT, 'assets', 'baseline_mini.safetensors'), '--out_dir', tmp_path / 'ldm',
        '--max_steps', 1, '--batch_size', 4, '--eval_interval', 5, '--image_size', 32, '--device', 'cpu')
    config = json.loads((tmp_path / 'ldm' / 'config.json').read_text())
    assert config['model'] == 'unet' and config['lr'] == 1e-4 and config['cache_latents'] is None
