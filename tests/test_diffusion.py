"""Specification of diffusion.py: the schedules' closed forms, the forward marginals, the parameterisations, the
training targets, the variational bound, and the samplers, which with the exact denoiser of a one-point data set
must reproduce the forward marginals q(x_t | x*) at every step and end exactly on x*."""
import math

import pytest
import torch

from diffusion import Diffusion, beta_schedule, cfg_model_fn, randn, spaced_timesteps
from denoiser import DiT


def test_schedules_closed_form():
    b = beta_schedule("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    for name, (first, last) in {"ldm_linear": (0.0015, 0.0195), "scaled_linear": (0.00085, 0.012)}.items():
        s = beta_schedule(name, 1000)  # LDM's configs and Stable Diffusion's, both linear in sqrt(beta)
        assert s[0].item() == pytest.approx(first) and s[-1].item() == pytest.approx(last)
        assert torch.allclose(s.sqrt().diff(), s.sqrt().diff()[0].expand(999))
    # every beta in closed form, t by t in Python floats: beta_t = b_0 + t (b_T - b_0) / (T - 1) for DDPM's linear
    # schedule, beta_t = (sqrt(b_0) + t (sqrt(b_T) - sqrt(b_0)) / (T - 1))^2 for LDM's and Stable Diffusion's
    for name, (b0, b1, root) in {"linear": (1e-4, 0.02, False), "ldm_linear": (0.0015, 0.0195, True),
                                  "scaled_linear": (0.00085, 0.012, True)}.items():
        s = beta_schedule(name, 1000).tolist()
        for t in (0, 1, 137, 500, 998, 999):
            if root:
                expected = (b0 ** 0.5 + t * (b1 ** 0.5 - b0 ** 0.5) / 999) ** 2
            else:
                expected = b0 + t * (b1 - b0) / 999
            assert s[t] == pytest.approx(expected, rel=1e-12), (name, t)
    # and the reference implementation: diffusers' DDPMScheduler, whose 'scaled_linear' is LDM's rule (in float32)
    from diffusers import DDPMScheduler
    for name, (b0, b1, kind) in {"linear": (1e-4, 0.02, "linear"), "ldm_linear": (0.0015, 0.0195, "scaled_linear"),
                                  "scaled_linear": (0.00085, 0.012, "scaled_linear")}.items():
        ref = DDPMScheduler(num_train_timesteps=1000, beta_start=b0, beta_end=b1, beta_schedule=kind).betas
        torch.testing.assert_close(beta_schedule(name, 1000).float(), ref, rtol=1e-5, atol=0)
    d = Diffusion("linear")
    assert torch.all(d.abar.diff() < 0)
    assert d.abar[-1] < 1e-4  # x_T is (almost) pure noise
    assert torch.allclose(d.abar, torch.cumprod(1 - b, 0))
    with pytest.raises(ValueError, match="unknown noise schedule"):
        beta_schedule("cosine")


def adm_space_timesteps(T, section_counts):
    """ADM's respacing rule (guided-diffusion respace.py space_timesteps), restated from its description for this test:
    "ddimN" is range(0, T, stride) for the first integer stride giving N steps; otherwise T is cut into len(counts)
    near-equal sections, and section i of `size` steps takes counts[i] indices at a float stride (size-1)/(count-1),
    accumulated and rounded."""
    if section_counts.startswith("ddim"):
        n = int(section_counts[4:])
        return next(sorted(range(0, T, i)) for i in range(1, T) if len(range(0, T, i)) == n)
    counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        stride = (size - 1) / (count - 1) if count > 1 else 1
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def test_spaced_timesteps_are_adms_and_dits():
    assert torch.equal(spaced_timesteps(1000, 1000), torch.arange(1000))
    # tables DiT and ADM use: DiT samples with "250" (DDPM), ADM's DDIM results with "ddim25", "ddim50", "ddim100"
    assert spaced_timesteps(1000, 50, "ddim").tolist() == list(range(0, 1000, 20))
    assert spaced_timesteps(1000, 25, "ddim").tolist() == list(range(0, 1000, 40))
    assert spaced_timesteps(1000, 10).tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    for n in range(1, 1001):  # every count: ADM's "N" exactly, ties and float accumulation included
        assert spaced_timesteps(1000, n).tolist() == adm_space_timesteps(1000, str(n)), n
    for n in (10, 20, 25, 27, 50, 100, 200, 250, 500):
        assert spaced_timesteps(1000, n, "ddim").tolist() == adm_space_timesteps(1000, f"ddim{n}"), n
    with pytest.raises(ValueError, match="no integer stride"):
        spaced_timesteps(1000, 400, "ddim")  # strides 2 and 3 give 500 and 334


@pytest.mark.parametrize("schedule", ["linear", "ldm_linear", "scaled_linear"])
def test_q_sample_marginals(schedule):
    # x_t | x0 ~ N(sqrt(abar_t) x0, (1 - abar_t) I) over many draws
    torch.manual_seed(0)
    d = Diffusion(schedule)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 1.5)
    for t in [0, 100, 500, 999]:
        tt = torch.full((n,), t)
        xt = d.q_sample(x0, tt, torch.randn_like(x0))
        abar = d.abar[t].item()
        se = math.sqrt((1 - abar) / n)
        assert abs(xt.mean().item() - math.sqrt(abar) * 1.5) < 5 * se
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.02, abs=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_parameterisation_inverts(prediction):
    # From the exact eps (or v) the network would output, eps_x0 recovers both eps and x0.
    torch.manual_seed(0)
    d = Diffusion("linear", prediction=prediction)
    x0, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, eps)
    a = d.abar[t].float().view(-1, 1, 1, 1)
    pred = eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
    eps_hat, x0_hat = d.eps_x0(pred, xt, t)
    assert torch.allclose(eps_hat, eps, atol=1e-4)
    assert torch.allclose(x0_hat, x0, atol=2e-3)  # x0 at t=999 divides by sqrt(abar) ~ 6e-3


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_loss_is_zero_for_the_true_target(prediction):
    torch.manual_seed(0)
    d = Diffusion("scaled_linear", prediction=prediction)
    x0, noise = torch.randn(6, 4, 4, 4), torch.randn(6, 4, 4, 4)
    t = torch.randint(0, 1000, (6,))
    a = d.abar[t].float().view(-1, 1, 1, 1)
    target = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    oracle = lambda x_t, t_, y: target  # noqa: E731
    assert d.training_loss(oracle, x0, t=t, noise=noise).abs().max() < 1e-10
    wrong = lambda x_t, t_, y: target + 0.5  # noqa: E731  mean squared error of a constant offset
    assert torch.allclose(d.training_loss(wrong, x0, t=t, noise=noise), torch.full((6,), 0.25))


def one_point_oracle(d, x_star, learn_sigma=False, var_values=None):
    """Exact denoiser for data = {x_star}: eps*(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t) (or its v)."""
    def model_fn(x_t, t):
        a = d.abar[t.cpu()].float().view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x_star) / (1 - a).sqrt()
        out = eps if d.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x_star
        if learn_sigma:
            out = torch.cat([out, var_values.expand_as(out)], dim=1)
        return out
    return model_fn


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddpm50", "ddim", "ddim_eta1", "ddpm_learned"])
def test_samplers_preserve_marginals_and_end_on_the_data_point(sampler, prediction):
    # With one data point x*, q(x_{t-1} | x_t) = q(x_{t-1} | x_t, x*) exactly, so a correct ancestral step with the
    # exact denoiser maps samples of q(x_t | x*) to samples of q(x_{t-1} | x*); DDIM keeps the marginals for any eta.
    # So: start from q(x_t | x*) up to 20 steps before the end, step down to the second-to-last timestep and compare
    # moments (small t, where a wrong mean or variance shows most), then check that the full chain returns x*.
    torch.manual_seed(0)
    learn_sigma = sampler == "ddpm_learned"
    d = Diffusion("linear", prediction=prediction, learn_sigma=learn_sigma)
    n, x_star = 20_000, torch.tensor([0.7, -1.3]).view(1, 2, 1, 1)
    model_fn = one_point_oracle(d, x_star, learn_sigma, var_values=torch.tensor(0.3))
    steps = {"ddpm": 1000, "ddpm50": 50, "ddim": 20, "ddim_eta1": 20, "ddpm_learned": 50}[sampler]
    ts = spaced_timesteps(1000, steps).tolist()
    start = min(20, len(ts) - 1)
    x = d.q_sample(x_star.expand(n, 2, 1, 1), torch.full((n,), ts[start]), torch.randn(n, 2, 1, 1))
    for i in range(start, 1, -1):
        if sampler.startswith("ddpm"):
            x = d.p_sample(model_fn, x, ts[i], ts[i - 1])
        else:
            x = d.ddim_step(model_fn, x, ts[i], ts[i - 1], eta=1.0 if sampler == "ddim_eta1" else 0.0)
    abar = d.abar[ts[1]].item()
    mean, std = x.mean(0).flatten(), x.std(0).flatten()
    expected_std = math.sqrt(1 - abar)
    assert torch.allclose(mean, math.sqrt(abar) * x_star.flatten(), atol=5 * expected_std / math.sqrt(n))
    if not learn_sigma:  # learned variance values != -1 do not give beta~, by design
        assert torch.allclose(std, torch.full_like(std, expected_std), rtol=0.025)  # 5 standard errors
    x_T = torch.randn(8, 2, 1, 1)
    if sampler.startswith("ddpm"):
        sample = d.ddpm_sample(model_fn, x_T, steps=steps)
    else:
        sample = d.ddim_sample(model_fn, x_T, steps=steps, eta=1.0 if sampler == "ddim_eta1" else 0.0)
    assert torch.allclose(sample, x_star.expand_as(sample), atol=1e-4)


def test_ddim_eta0_is_deterministic_and_ddpm_uses_the_generator():
    d = Diffusion("linear")
    model_fn = lambda x, t: 0.1 * x  # noqa: E731
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    a = d.ddim_sample(model_fn, x_T, steps=10, eta=0.0)
    assert torch.equal(a, d.ddim_sample(model_fn, x_T, steps=10, eta=0.0))
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    b1 = d.ddpm_sample(model_fn, x_T, steps=10, generator=g(5))
    assert torch.equal(b1, d.ddpm_sample(model_fn, x_T, steps=10, generator=g(5)))
    assert not torch.equal(b1, d.ddpm_sample(model_fn, x_T, steps=10, generator=g(6)))


def test_per_sample_generators_make_noise_independent_of_batching():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = randn((4, 3, 2, 2), gens([10, 11, 12, 13]), "cpu")
    part = randn((2, 3, 2, 2), gens([12, 13]), "cpu")
    assert torch.equal(full[2:], part)


def test_vlb_is_zero_at_the_true_posterior_and_positive_elsewhere():
    # KL(q(x_{t-1} | x_t, x0) || p) vanishes when p's mean is the exact posterior mean (exact eps) and its variance
    # is beta~_t (variance value -1 in eq. 15); any other variance costs bits.
    torch.manual_seed(0)
    d = Diffusion("linear", learn_sigma=True)
    x0, noise = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    t = torch.tensor([1, 10, 200, 600, 999])  # float64: at t = 1 the KL divides by beta~ ~ 1e-4
    xt = d.q_sample(x0, t, noise)
    kl_opt = d.vlb_terms(noise, -torch.ones_like(x0), x0, xt, t)
    assert kl_opt.abs().max() < 1e-9
    kl_other = d.vlb_terms(noise, torch.zeros_like(x0), x0, xt, t)
    assert torch.all(kl_other > 0) and kl_other[0] > 1e-2  # beta and beta~ differ most at small t
    # t = 0: Gaussian decoder NLL, closed form with mean = x0 exactly and log variance log beta~_1
    t0 = torch.zeros(5, dtype=torch.long)
    xt0 = d.q_sample(x0, t0, noise)
    nll = d.vlb_terms(noise, -torch.ones_like(x0), x0, xt0, t0)
    expected = 0.5 * (math.log(2 * math.pi) + d.log_var_tilde_clipped[0].item()) / math.log(2)
    assert torch.allclose(nll, torch.full((5,), expected, dtype=torch.float64), atol=1e-6)


def test_learn_sigma_loss_trains_variance_through_vlb_only():
    # L_vlb sees a stopped-gradient mean: the eps channels' gradient is that of L_simple alone.
    torch.manual_seed(0)
    d_hybrid, d_simple = Diffusion("linear", learn_sigma=True), Diffusion("linear")
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([5, 300, 900])
    out = torch.randn(3, 4, 4, 4, requires_grad=True)
    d_hybrid.training_loss(lambda *_: out, x0, t=t, noise=noise).sum().backward()
    g_hybrid = out.grad.clone()
    out.grad = None
    d_simple.training_loss(lambda *_: out[:, :2], x0, t=t, noise=noise).sum().backward()
    assert torch.allclose(g_hybrid[:, :2], out.grad[:, :2])
    assert g_hybrid[:, 2:].abs().sum() > 0


def tiny_conditional_dit(**kw):
    torch.manual_seed(0)
    m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5, **kw)
    with torch.no_grad():  # leave adaLN-Zero: a zero network would make every guidance identity trivial
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_cfg_guidance_formula():
    m = tiny_conditional_dit(learn_sigma=True)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([3, 400, 999]), torch.tensor([0, 4, 2])
    with torch.no_grad():
        cond, uncond = m(x, t, y), m(x, t, torch.full_like(y, 5))
        s1, s0, s3 = (cfg_model_fn(m, y, s)(x, t) for s in (1.0, 0.0, 3.0))
    assert torch.allclose(s1, cond, atol=1e-5)  # scale 1 == the conditional prediction
    assert torch.allclose(s0[:, :4], uncond[:, :4], atol=1e-5)  # scale 0 == unconditional
    assert torch.allclose(s3[:, :4], uncond[:, :4] + 3 * (cond[:, :4] - uncond[:, :4]), atol=1e-5)
    assert torch.allclose(s3[:, 4:], cond[:, 4:], atol=1e-5)  # variance values from the conditional branch
    # DiT's sampler guides only the first 3 of the 4 channels; the 4th and the variances stay conditional
    with torch.no_grad():
        dit = cfg_model_fn(m, y, 3.0, guided_channels=3)(x, t)
    assert torch.allclose(dit[:, :3], s3[:, :3], atol=1e-6) and torch.allclose(dit[:, 3:], cond[:, 3:], atol=1e-5)
    assert not torch.allclose(dit[:, 3], s3[:, 3], atol=1e-3)


def test_cfg_guidance_formula_on_text():
    """Guidance on text: eps~ = eps(x_t, "") + s (eps(x_t, c) - eps(x_t, "")), with the null context that of the empty
    caption (LDM's txt2img), fed as tau_theta's context once (model.learned_conditioning) or as tokens."""
    from denoiser import build_backbone, learned_conditioning
    from utils.tokenizer import ByteTokenizer
    torch.manual_seed(0)
    m = build_backbone('unet', 'tiny', 8, 4, 0, False, text_encoder={'vocab_size': 259, 'max_length': 16})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised output convs would make every branch equal
    m.eval()
    tok = ByteTokenizer()
    c = dict(zip(('tokens', 'context_mask'), tok.encode(["a red disk", "a blue rectangle", "x"], 16)))
    u = dict(zip(('tokens', 'context_mask'), tok.encode([""] * 3, 16)))
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([3, 400, 999])
    with torch.no_grad():
        cond, uncond = m(x, t, **c), m(x, t, **u)
        for s in (0.0, 1.0, 4.0):
            guided = cfg_model_fn(m, learned_conditioning(m, c), s, null=learned_conditioning(m, u))(x, t)
            assert torch.allclose(guided, uncond + s * (cond - uncond), atol=1e-5)
            assert torch.allclose(cfg_model_fn(m, c, s, null=u)(x, t), guided, atol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-3)


def test_cfg_needs_a_null_class():
    m = tiny_conditional_dit(class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="label dropout"):
        cfg_model_fn(m, torch.tensor([1]), 2.0)
