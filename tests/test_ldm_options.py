"""The options of LDM's equations and configs (issue 34, item 5), each a closed form on a tiny input and, run as a user
runs the scripts, recorded in the checkpoint and refused on a resume with another value:
  train_ae.py  --rec_loss l1|l2 (eq. 1's L_rec), --disc_loss hinge|vanilla (taming's vanilla_d_loss, eq. 3's GAN)
  train_ldm.py --diffusion_loss l2|l1 (CompVis' loss_type), --beta_start/--beta_end (linear_start/linear_end),
               --lr_warmup N (LambdaLinearScheduler's warm-up)"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import diffusion
import model
from utils.cli import SCHEDULE_BETAS
from diffusion import Diffusion, Flow, beta_schedule, process_from_config
from tests.test_bad_inputs import TINY_AE, TINY_LDM, run_script

# ----------------------------------------------------------------------------------------------
# closed forms


def test_pixel_loss_is_l1_or_l2_per_pixel():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).view(1, 1, 2, 2)
    x_rec = torch.zeros_like(x)
    assert model.pixel_loss(x, x_rec) == pytest.approx((0 + 1 + 2 + 1) / 4)  # mean |x - D(z)|, the default
    assert model.pixel_loss(x, x_rec, 'l2') == pytest.approx((0 + 1 + 4 + 1) / 4)  # mean (x - D(z))^2
    with pytest.raises(ValueError, match='unknown reconstruction loss'):
        model.pixel_loss(x, x_rec, 'l3')


def test_vanilla_d_loss_is_tamings_closed_form():
    real, fake = torch.tensor([0.0, 2.0, -1.5]), torch.tensor([-1.0, 3.0])
    # taming: 0.5 * (mean(softplus(-logits_real)) + mean(softplus(logits_fake))), softplus(l) = log(1 + e^l)
    expected = 0.5 * (sum(math.log1p(math.exp(-r)) for r in real.tolist()) / 3 +
                      sum(math.log1p(math.exp(f)) for f in fake.tolist()) / 2)
    assert model.vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    # the GAN's binary cross-entropy: real images labelled 1, reconstructions 0
    bce = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones(3)) +
                 F.binary_cross_entropy_with_logits(fake, torch.zeros(2)))
    torch.testing.assert_close(model.vanilla_d_loss(real, fake), bce)
    assert model.DISC_LOSSES == {'hinge': model.hinge_d_loss, 'vanilla': model.vanilla_d_loss}


@pytest.mark.parametrize('prediction', ['eps', 'v'])
def test_diffusion_loss_l1_is_the_mean_absolute_error(prediction):
    torch.manual_seed(0)
    d1, d2 = (Diffusion('ldm_linear', prediction=prediction, loss_type=k) for k in ('l1', 'l2'))
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 400, 999])
    a = d1.abar[t].float().view(-1, 1, 1, 1)
    target = noise if prediction == 'eps' else a.sqrt() * noise - (1 - a).sqrt() * x0
    offset = torch.tensor([0.5, -1.5]).view(1, 2, 1, 1)  # channel errors of +0.5 and -1.5
    wrong = lambda x_t, t_, y: target + offset  # noqa: E731
    torch.testing.assert_close(d1.training_loss(wrong, x0, t=t, noise=noise), torch.full((3,), (0.5 + 1.5) / 2))
    torch.testing.assert_close(d2.training_loss(wrong, x0, t=t, noise=noise), torch.full((3,), (0.25 + 2.25) / 2))
    with pytest.raises(ValueError, match='unknown loss type'):
        Diffusion(loss_type='huber')


def test_flow_loss_l1_is_the_mean_absolute_error():
    x0, noise = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    t = torch.tensor([0.3, 0.8])
    offset = torch.tensor([0.5, -1.5]).view(1, 2, 1, 1)
    wrong = lambda x_t, t_, y: noise - x0 + offset  # noqa: E731  the velocity eps - x0, off by the offset
    torch.testing.assert_close(Flow(loss_type='l1').training_loss(wrong, x0, t=t, noise=noise), torch.full((2,), 1.0))
    torch.testing.assert_close(Flow().training_loss(wrong, x0, t=t, noise=noise), torch.full((2,), 1.25))


def test_beta_endpoints_move_and_keep_the_rule():
    for name, (b0, b1) in SCHEDULE_BETAS.items():  # the defaults are the schedules of before, bit for bit
        assert torch.equal(beta_schedule(name), beta_schedule(name, beta_start=b0, beta_end=b1))
    # LDM's bsr_sr config (0.0015, 0.0155) and inpainting/layout/semantic (0.0015, 0.0205), both sqrt-linear
    from diffusers import DDPMScheduler
    for b0, b1 in ((0.0015, 0.0155), (0.0015, 0.0205)):
        s = beta_schedule('ldm_linear', beta_start=b0, beta_end=b1)
        assert s[0].item() == pytest.approx(b0, rel=1e-12) and s[-1].item() == pytest.approx(b1, rel=1e-12)
        assert torch.allclose(s.sqrt().diff(), s.sqrt().diff()[0].expand(999))
        ref = DDPMScheduler(beta_start=b0, beta_end=b1, beta_schedule='scaled_linear').betas
        torch.testing.assert_close(s.float(), ref, rtol=1e-5, atol=0)
    lin = beta_schedule('linear', beta_start=0.001, beta_end=0.01)  # DDPM's rule: linear in beta
    assert lin[0].item() == pytest.approx(0.001) and lin[-1].item() == pytest.approx(0.01)
    assert torch.allclose(lin.diff(), lin.diff()[0].expand(999))
    with pytest.raises(ValueError, match='the betas must rise'):
        beta_schedule('ldm_linear', beta_start=0.02, beta_end=0.01)


def test_a_checkpoint_config_rebuilds_its_process():
    config = {'objective': 'eps', 'schedule': 'ldm_linear', 'prediction': 'eps', 'learn_sigma': False,
              'beta_start': 0.0015, 'beta_end': 0.0205, 'diffusion_loss': 'l1'}
    d = process_from_config(config)
    assert torch.equal(d.betas, beta_schedule('ldm_linear', beta_start=0.0015, beta_end=0.0205))
    assert d.loss_type == 'l1'
    old = {k: config[k] for k in ('schedule', 'prediction', 'learn_sigma')}  # a checkpoint from before the options
    d = process_from_config(old)
    assert torch.equal(d.betas, beta_schedule('ldm_linear')) and d.loss_type == 'l2'
    flow = process_from_config({'objective': 'flow', 'prediction': 'velocity', 'time_sampling': 'uniform',
                                'logit_mean': 0.0, 'logit_std': 1.0, 'time_shift': 2.0, 'diffusion_loss': 'l1'})
    assert isinstance(flow, Flow) and flow.loss_type == 'l1' and flow.time_shift == 2.0

# ----------------------------------------------------------------------------------------------
# the scripts: what the options do in a run, what the checkpoint records, and resumes with another value


def log_rows(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return {r['step']: r for r in map(json.loads, f) if 'loss' in r}


def refused(outcome, pattern):
    assert outcome.code not in (0, None), outcome.stdout[-2000:]
    assert '\n' not in outcome.message and 'Traceback' not in outcome.message
    assert outcome.message.startswith('error: --resume cannot continue the run exactly'), outcome.message
    assert pattern in outcome.message, outcome.message


@pytest.mark.slow
def test_train_ae_rec_loss_and_disc_loss(tmp_path, monkeypatch):
    # the run's pixel terms and discriminator losses, recorded as they are computed, against their closed forms
    pixel_calls, disc_calls = [], []
    pixel_loss, vanilla_d_loss = model.pixel_loss, model.vanilla_d_loss

    def recording_pixel_loss(x, x_rec, rec_loss='l1'):
        pixel_calls.append((rec_loss, ((x - x_rec) ** 2).mean().item()))
        return pixel_loss(x, x_rec, rec_loss)

    def recording_vanilla(real, fake):
        disc_calls.append((0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean()).item(), -fake.mean().item()))
        return vanilla_d_loss(real, fake)

    monkeypatch.setattr(model, 'pixel_loss', recording_pixel_loss)
    monkeypatch.setitem(model.DISC_LOSSES, 'vanilla', recording_vanilla)
    out = tmp_path / 'ae'
    args = TINY_AE + ['--image_size', 32, '--max_steps', 2, '--disc_start', 0, '--out_dir', out]
    o = run_script('train_ae.py', args + ['--rec_loss', 'l2', '--disc_loss', 'vanilla'])
    assert o.code == 0, o.message
    rows = log_rows(out)
    assert [k for k, _ in pixel_calls] == ['l2', 'l2'] and len(disc_calls) == 2  # one of each per step
    for step in (1, 2):  # without LPIPS, the logged rec term is the MSE; d the vanilla loss
        assert rows[step]['rec'] == pytest.approx(pixel_calls[step - 1][1], rel=1e-5)
        assert rows[step]['d'] == pytest.approx(disc_calls[step - 1][0], rel=1e-5)
        # the generator's loss stays taming's -E[D(x_rec)] (not the non-saturating E[softplus(-D(x_rec))]): the same
        # logits, since the discriminator step sees the same joint batch with the same weights
        assert rows[step]['g'] == pytest.approx(disc_calls[step - 1][1], rel=1e-5)
    config = torch.load(out / 'ckpt.pt', weights_only=True)['config']
    assert (config['rec_loss'], config['disc_loss']) == ('l2', 'vanilla')
    resume = args + ['--resume', '--max_steps', 3]
    refused(run_script('train_ae.py', resume + ['--disc_loss', 'vanilla']), 'rec_loss l2 -> l1')
    refused(run_script('train_ae.py', resume + ['--rec_loss', 'l2']), 'disc_loss vanilla -> hinge')


@pytest.mark.slow
def test_train_ldm_betas_loss_and_warmup(tmp_path, monkeypatch):
    ae = tmp_path / 'ae'
    o = run_script('train_ae.py', TINY_AE + ['--max_steps', 1, '--out_dir', ae])
    assert o.code == 0, o.message
    loss_types, pointwise_loss = [], diffusion.pointwise_loss  # the elementwise loss each training step computes
    monkeypatch.setattr(diffusion, 'pointwise_loss',
                        lambda error, kind: loss_types.append(kind) or pointwise_loss(error, kind))
    out = tmp_path / 'ldm'
    args = TINY_LDM + ['--ae', ae / 'ckpt.pt', '--out_dir', out]
    given = ['--beta_start', 0.0015, '--beta_end', 0.0155, '--diffusion_loss', 'l1', '--lr_warmup', 4, '--lr', 1e-3]
    o = run_script('train_ldm.py', args + given + ['--max_steps', 5])
    assert o.code == 0, o.message
    assert loss_types == ['l1'] * 5
    o = run_script('train_ldm.py', args[:-1] + [tmp_path / 'flow', '--objective', 'flow', '--diffusion_loss', 'l1',
                                                 '--max_steps', 1])
    assert o.code == 0, o.message
    assert loss_types == ['l1'] * 6  # and the flow's loss too
    rows = log_rows(out)
    # LambdaLinearScheduler, f_start 1e-6, f_max 1: the n-th update (n = 0, 1, ..) takes lr (1e-6 + (1 - 1e-6) n / N)
    for step, f in {1: 1e-6, 2: 1e-6 + (1 - 1e-6) / 4, 4: 1e-6 + (1 - 1e-6) * 3 / 4, 5: 1.0}.items():
        assert rows[step]['lr'] == pytest.approx(1e-3 * f, rel=1e-9), step
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    config = ckpt['config']
    assert (config['beta_start'], config['beta_end'], config['diffusion_loss'], config['lr_warmup']) == (
        0.0015, 0.0155, 'l1', 4)
    # what sample.py and probe.py rebuild from it: the schedule the run trained with (bsr_sr's)
    bsr_sr = beta_schedule('ldm_linear', beta_start=0.0015, beta_end=0.0155)
    assert torch.equal(process_from_config(config).betas, bsr_sr)
    sampled, plms_sample = [], Diffusion.plms_sample  # and sample.py samples with that schedule
    monkeypatch.setattr(Diffusion, 'plms_sample', lambda self, *a, **k: sampled.append((self.betas, k)) or
                        plms_sample(self, *a, **k))
    o = run_script('sample.py', ['--ckpt', out / 'ema.pt', '--sampler', 'plms', '--steps', 4, '--num_samples', 2,
                                 '--device', 'cpu', '--out_dir', tmp_path / 'samples'])
    assert o.code == 0, o.message
    assert 'plms 4 steps (ldm spacing), 5 evaluations' in o.stdout and (tmp_path / 'samples' / 'samples.npz').exists()
    (betas, kwargs), = sampled
    assert torch.equal(betas, bsr_sr) and (kwargs['steps'], kwargs['spacing']) == (4, 'ldm')
    for flag, value, change in (('--beta_end', 0.0205, 'beta_end 0.0155 -> 0.0205'),
                                ('--beta_start', 0.001, 'beta_start 0.0015 -> 0.001'),
                                ('--diffusion_loss', 'l2', 'diffusion_loss l1 -> l2'),
                                ('--lr_warmup', 8, 'lr_warmup 4 -> 8')):
        changed = [value if given[i - 1] == flag else v for i, v in enumerate(given)]
        refused(run_script('train_ldm.py', args + changed + ['--resume', '--max_steps', 6]), change)
    # a checkpoint from before the options resumes with their defaults, the behaviour it was trained with
    for key in ('beta_start', 'beta_end', 'diffusion_loss', 'lr_warmup'):
        del config[key]
    torch.save(ckpt, out / 'ckpt.pt')
    o = run_script('train_ldm.py', args + ['--resume', '--max_steps', 6, '--lr', 1e-3])
    assert o.code == 0, o.message
    assert log_rows(out)[6]['lr'] == pytest.approx(1e-3)
