"""LDM's samplers (issue 34, item 4): DDIM on LDM's timesteps (CompVis' make_ddim_timesteps with its +1 offset, and
abar_prev = abar_0 at the last step) and PLMS (CompVis' PLMSSampler), each held equal, step for step on the same model
function, to diffusers' DDIMScheduler(steps_offset=1, set_alpha_to_one=False) and PNDMScheduler(skip_prk_steps=True);
and, with the exact denoiser of a one-point data set, each keeps the forward marginals q(x_t | x*) at every step."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from diffusion import Diffusion, sampling_steps, spaced_timesteps
from tests.test_diffusion import one_point_oracle

# LDM's own schedule (linear_start 0.0015, linear_end 0.0195, linear in sqrt(beta)) is diffusers' 'scaled_linear'
LDM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule='scaled_linear')
# ADM's ddimN timesteps (0, 20, ..., 980) down to clean data are diffusers' defaults on DDPM's linear schedule
ADM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule='linear')


def toy_model(x, t):
    """A smooth eps (or v) of (x_t, t) that is far from linear in either, so that a sampler which calls it at another
    timestep, or combines its outputs otherwise, ends elsewhere. t: (B,) timesteps."""
    s = t.float().view(-1, 1, 1, 1) / 1000
    w = torch.linspace(0.5, 1.5, x.shape[1]).view(1, -1, 1, 1)
    return torch.tanh(w * x) * (1 - s) + 0.3 * torch.sin(3 * s + x)


def batch_t(x, t):
    return torch.full((x.shape[0],), int(t), dtype=torch.long)


def test_ldm_spacing_is_compvis_make_ddim_timesteps_and_diffusers_leading_with_offset_1():
    assert spaced_timesteps(1000, 50, 'ldm').tolist() == list(range(1, 1000, 20))  # 1, 21, ..., 981
    for n in (1, 2, 4, 10, 20, 25, 40, 50, 100, 125, 200, 250, 333, 500, 999):
        ours = spaced_timesteps(1000, n, 'ldm').tolist()
        c = 1000 // n
        if 1000 % n == 0:  # CompVis' make_ddim_timesteps('uniform'), restated: range(0, T, T // N) + 1
            assert ours == [t + 1 for t in range(0, 1000, c)], n
        ref = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, **LDM_SCHEDULE)
        ref.set_timesteps(n)
        assert ours == ref.timesteps.flip(0).tolist(), n
    # the last step goes to timestep 0, not to clean data; ADM's spacings end on clean data (-1)
    assert sampling_steps(1000, 4, 'ldm') == [(751, 501), (501, 251), (251, 1), (1, 0)]
    assert sampling_steps(1000, 4, 'ddim')[-1] == (0, -1)
    for n in (30, 300, 1000):  # CompVis would make 31, 334 and 1000 (one past T) timesteps: refused, not changed
        with pytest.raises(ValueError, match=f"gives .* of them, not {n}; choose a number of steps that divides"):
            spaced_timesteps(1000, n, 'ldm')


@pytest.mark.parametrize('prediction', ['eps', 'v'])
@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_ddim_on_ldm_spacing_is_diffusers_ddim_step_for_step(prediction, eta):
    d = Diffusion('ldm_linear', prediction=prediction)
    ref = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                        prediction_type='epsilon' if prediction == 'eps' else 'v_prediction', **LDM_SCHEDULE)
    ref.set_timesteps(50)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = sampling_steps(1000, 50, 'ldm')
    assert [t for t, _ in steps] == ref.timesteps.tolist()  # 981, 961, ..., 1
    g_ours, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x, x_ref = x_T, x_T
    for (t, t_prev), t_ref in zip(steps, ref.timesteps):
        x_before = x
        x = d.ddim_step(toy_model, x, t, t_prev, eta=eta, generator=g_ours)
        x_ref = ref.step(toy_model(x_ref, batch_t(x_ref, t_ref)), t_ref, x_ref, eta=eta, generator=g_ref).prev_sample
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=2e-5)  # the same trajectory, step by step
    if eta == 0:
        torch.testing.assert_close(d.ddim_sample(toy_model, x_T, steps=50, spacing='ldm'), x_ref, rtol=1e-5, atol=2e-5)
        # a last step to clean data (abar_prev = 1, ADM's convention) would end elsewhere: the test can tell them apart
        assert (d.ddim_step(toy_model, x_before, 1, -1) - x_ref).abs().max() > 1e-2


def plms_trajectory(d, x_T, steps, spacing):
    """Our PLMS, step by step: the state after each step, and every (t) the network was called at."""
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return toy_model(x, t)

    x, old_eps, states = x_T, [], []
    for t, t_prev in sampling_steps(1000, steps, spacing):
        x, eps = d.plms_step(model_fn, x, t, t_prev, old_eps)
        old_eps = (old_eps + [eps])[-3:]
        states.append(x)
    return states, calls


@pytest.mark.parametrize('spacing', ['ldm', 'ddim'])
def test_plms_is_diffusers_pndm_without_prk_steps_step_for_step(spacing):
    # LDM's timesteps ending on timestep 0 are PNDMScheduler(steps_offset=1, set_alpha_to_one=False); ADM's ending on
    # clean data are its defaults. diffusers takes the warm-up (pseudo improved Euler) as two calls of step(): the
    # first a DDIM step with e(x_t, t) to a provisional x~, the second (at t_prev, on x~) averages e(x~, t_prev) in
    # and steps from x_t again. Its states after the calls 1, 2, ..., N are ours after steps 1, 2, ..., N.
    d = Diffusion('ldm_linear' if spacing == 'ldm' else 'linear')
    settings = (dict(steps_offset=1, set_alpha_to_one=False, **LDM_SCHEDULE) if spacing == 'ldm' else
                dict(steps_offset=0, set_alpha_to_one=True, **ADM_SCHEDULE))
    ref = PNDMScheduler(skip_prk_steps=True, **settings)
    steps = 20
    ref.set_timesteps(steps)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    states, calls = plms_trajectory(d, x_T, steps, spacing)
    assert calls == ref.timesteps.tolist()  # steps + 1 evaluations at the same timesteps: 951, 901, 901, 851, ...
    x_ref, ref_states = x_T, []
    for t in ref.timesteps:
        x_ref = ref.step(toy_model(x_ref, batch_t(x_ref, t)), t, x_ref).prev_sample
        ref_states.append(x_ref)
    for i, (x, x_ref) in enumerate(zip(states, ref_states[1:])):
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=2e-5, msg=lambda m: f'step {i}: {m}')
    torch.testing.assert_close(d.plms_sample(toy_model, x_T, steps, spacing), ref_states[-1], rtol=1e-5, atol=2e-5)
    # DDIM on the same timesteps is another sampler: PLMS's multistep eps' must have changed the trajectory
    assert (d.ddim_sample(toy_model, x_T, steps, spacing=spacing) - ref_states[-1]).abs().max() > 1e-3


def test_plms_needs_two_steps():
    with pytest.raises(ValueError, match='at least 2 steps'):
        Diffusion('linear').plms_sample(toy_model, torch.zeros(1, 1, 2, 2), steps=1)
    with pytest.raises(ValueError, match="LDM's spacing is for the DDIM and PLMS samplers"):
        Diffusion('linear').ddpm_sample(toy_model, torch.zeros(1, 1, 2, 2), steps=10, spacing='ldm')


@pytest.mark.parametrize('prediction', ['eps', 'v'])
@pytest.mark.parametrize('sampler', ['ddim_ldm', 'ddim_ldm_eta1', 'plms_ldm', 'plms_ddim', 'plms_even'])
def test_ldm_samplers_preserve_marginals_and_end_on_the_data_point(sampler, prediction):
    # the one-point oracle of test_diffusion.py: with data = {x*} and the exact denoiser, DDIM keeps q(x_t | x*) at
    # every step for any eta, and so does PLMS, whose eps' combines eps that are all the same along an exact DDIM
    # trajectory. So from q(x_t | x*) at the 20th-last timestep, the chain's second-to-last state has the moments of
    # q(x_{t_1} | x*). The whole chain ends on x* (ADM's spacings) or, under LDM's, on timestep 0's marginal:
    # sqrt(abar_0) x* + sqrt(1 - abar_0) eps, with eps the noise in x_T (deterministic at eta = 0).
    torch.manual_seed(0)
    kind, spacing = sampler.split('_')[:2]
    eta = 1.0 if sampler.endswith('eta1') else 0.0
    d = Diffusion('ldm_linear', prediction=prediction)
    n, x_star = 20_000, torch.tensor([0.7, -1.3]).view(1, 2, 1, 1)
    model_fn = one_point_oracle(d, x_star)
    steps = sampling_steps(1000, 50, spacing)
    t_start = steps[-20][0]
    x = d.q_sample(x_star.expand(n, 2, 1, 1), torch.full((n,), t_start), torch.randn(n, 2, 1, 1))
    old_eps = []
    for t, t_prev in steps[-20:-1]:  # down to the second-to-last timestep
        if kind == 'ddim':
            x = d.ddim_step(model_fn, x, t, t_prev, eta=eta)
        else:
            x, eps = d.plms_step(model_fn, x, t, t_prev, old_eps)
            old_eps = (old_eps + [eps])[-3:]
    abar = d.abar[steps[-1][0]].item()
    mean, std = x.mean(0).flatten(), x.std(0).flatten()
    expected_std = math.sqrt(1 - abar)
    assert torch.allclose(mean, math.sqrt(abar) * x_star.flatten(), atol=5 * expected_std / math.sqrt(n))
    assert torch.allclose(std, torch.full_like(std, expected_std), rtol=0.025)  # 5 standard errors
    x_T = torch.randn(8, 2, 1, 1)
    if kind == 'ddim':
        sample = d.ddim_sample(model_fn, x_T, steps=50, eta=eta, spacing=spacing)
    else:
        sample = d.plms_sample(model_fn, x_T, steps=50, spacing=spacing)
    if spacing != 'ldm':
        assert torch.allclose(sample, x_star.expand_as(sample), atol=1e-4)
        return
    a0, aT = d.abar[0].item(), d.abar[steps[0][0]].item()
    noise_level = math.sqrt(1 - a0)  # 0.039: LDM's samplers stop here, one step short of clean data
    if eta == 0:
        eps = (x_T - math.sqrt(aT) * x_star) / math.sqrt(1 - aT)
        torch.testing.assert_close(sample, math.sqrt(a0) * x_star + noise_level * eps, rtol=1e-4, atol=1e-4)
    else:  # fresh noise at every step, the last included (CompVis' sigma_t > 0 there): off x* by about noise_level
        assert 0.5 * noise_level < (sample - math.sqrt(a0) * x_star).std() < 2 * noise_level


# ---- SDEdit (sample.py --strength): the last int(steps * strength) steps from the input, noised ----

@pytest.mark.parametrize('prediction', ['eps', 'v'])
@pytest.mark.parametrize('strength', [0.3, 0.75, 1.0])
def test_sdedit_is_diffusers_img2img_step_for_step(prediction, strength):
    # StableDiffusionImg2ImgPipeline: init_timestep = min(int(steps * strength), steps), timesteps[steps - init:], the
    # latent noised by scheduler.add_noise to the first of them, then the scheduler's steps
    d = Diffusion('ldm_linear', prediction=prediction)
    ref = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                        prediction_type='epsilon' if prediction == 'eps' else 'v_prediction', **LDM_SCHEDULE)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    init = min(int(50 * strength), 50)
    ts = ref.timesteps[50 - init:]
    x_ref = ref.add_noise(x0, noise, ts[:1])
    for t in ts:
        x_ref = ref.step(toy_model(x_ref, batch_t(x_ref, t)), t, x_ref).prev_sample
    calls = []
    def recording(x, t):
        calls.append(int(t[0]))
        return toy_model(x, t)
    x = d.ddim_sample(recording, noise, steps=50, spacing='ldm', x0=x0, strength=strength)
    assert calls == ts.tolist()  # the same timesteps, from the same start
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize('sampler', ['ddim', 'ddpm'])
def test_sdedit_with_the_exact_denoiser_returns_its_input_and_strength_0_runs_nothing(sampler):
    # data = {x*}: from any noised copy of x*, the exact denoiser's DDIM (eta 0) and ancestral chains end on x* itself
    d = Diffusion('ldm_linear', prediction='v')
    x_star, noise = torch.tensor([0.7, -1.3]).view(1, 2, 1, 1), torch.randn(4, 2, 1, 1)
    oracle = one_point_oracle(d, x_star)
    run = d.ddim_sample if sampler == 'ddim' else d.ddpm_sample
    for strength in (0.02, 0.5, 1.0):
        torch.testing.assert_close(run(oracle, noise, steps=50, x0=x_star.expand(4, 2, 1, 1), strength=strength),
                                   x_star.expand(4, 2, 1, 1), rtol=0, atol=1e-4)
    never = lambda x, t: pytest.fail('strength 0 evaluates the network')  # noqa: E731
    x0 = torch.randn(4, 2, 1, 1)
    assert torch.equal(run(never, noise, steps=50, x0=x0, strength=0.0), x0)
    assert torch.equal(run(never, noise, steps=50, x0=x0, strength=0.019), x0)  # int(50 * 0.019) = 0 steps
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        run(oracle, noise, steps=50, x0=x0, strength=1.5)
