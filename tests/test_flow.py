"""Specification of diffusion.py's rectified flow (Flow): x_t = (1 - t) x0 + t eps with t = 0 data and t = 1 noise.

For data x0 ~ N(mu, Sigma) everything has a closed form. x_t ~ N((1 - t) mu, S_t) with S_t = (1 - t)^2 Sigma + t^2 I,
and the velocity u = eps - x0 is jointly Gaussian with it, Cov(u, x_t) = C_t = t I - (1 - t) Sigma, so the field the
loss is minimised by is v*(x, t) = E[u | x_t = x] = -mu + C_t S_t^-1 (x - (1 - t) mu), with conditional variance
lambda / ((1 - t)^2 lambda + t^2) along each eigenvalue lambda of Sigma. Plugged in as the network, it must: give the
least training loss, of that closed form; carry x_1 ~ N(0, I) to N(mu, Sigma) under Euler and Heun with errors of
first and second order in the step, through the forward marginals at every step; and under SiT's SDE, end on the law
its Euler-Maruyama chain must have, which tends to the data's as the steps shrink.
"""
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from diffusion import FLOW_PREDICTIONS, Flow, cfg_model_fn, time_shift

D = 3
MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
_A = torch.tensor([[1.2, 0.3, -0.4], [0.0, 0.9, 0.5], [0.7, -0.2, 0.3]], dtype=torch.float64)
SIGMA = _A @ _A.T + 0.1 * torch.eye(D, dtype=torch.float64)  # eigenvalues spread over an order of magnitude
LAM, Q = torch.linalg.eigh(SIGMA)


def optimal_field(flow):
    """The network that has learned the data N(MU, SIGMA) exactly: model(x_t, 1000 t, y) -> the v*, x0* or eps* of
    flow.prediction, from x0* = x - t v*, eps* = x + (1 - t) v*. It reads t from the network's time input, so a flow
    that fed the network anything but network_time(t) would get another field."""
    def model(x, t_in, y=None):  # x (B, D, 1, 1), t_in (B,)
        t = (t_in.double() / flow.TIME_SCALE).view(-1, 1)
        x_ = x.flatten(1).double()
        gain = (t - (1 - t) * LAM) / ((1 - t) ** 2 * LAM + t ** 2)  # C_t S_t^-1 in Sigma's eigenbasis
        v = -MU + ((x_ - (1 - t) * MU) @ Q * gain) @ Q.T
        out = {'velocity': v, 'x0': x_ - t * v, 'noise': x_ + (1 - t) * v}[flow.prediction]
        return out.view_as(x).to(x.dtype)
    return model


def sampled_law(sample, t_start=None):
    """A deterministic sampler's output law: it is affine for an affine field, x -> A x + b, so pushing 0 and the unit
    vectors through it gives its law exactly, with no Monte Carlo error: N(b, A A^T) from x ~ N(0, I), or from the
    forward marginal at t_start, N((1 - t) MU, S_t), when given."""
    probes = torch.cat([torch.zeros(1, D), torch.eye(D)]).double().view(-1, D, 1, 1)
    out = sample(probes).flatten(1)
    b, A = out[0], (out[1:] - out[0]).T
    if t_start is None:
        return b, A @ A.T
    t = t_start
    return A @ ((1 - t) * MU) + b, A @ ((1 - t) ** 2 * SIGMA + t ** 2 * torch.eye(D, dtype=torch.float64)) @ A.T


def law_error(mean, cov, t=0.0):
    """Distance of N(mean, cov) from the forward marginal at t, N((1 - t) MU, S_t) (t = 0: the data)."""
    S_t = (1 - t) ** 2 * SIGMA + t ** 2 * torch.eye(D, dtype=torch.float64)
    return ((mean - (1 - t) * MU).norm() + (cov - S_t).norm()).item()


def slope(steps, errors):
    """The order p of errors ~ C steps^-p, fitted on a log-log scale."""
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# ---- the parameterisations and the loss ----


def test_parameterisations_are_exact_inverses():
    # x_t = (1 - t) x0 + t eps has u = dx_t/dt = eps - x0; from each prediction of the exact target, velocity_x0_eps
    # returns (u, x0, eps), and any of the three handed to a flow of another prediction gives the same triple back.
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 3, 3, generator=g).double(), torch.randn(5, 4, 3, 3, generator=g).double()
    t = torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0], dtype=torch.float64)
    flow = Flow()
    x_t = flow.q_sample(x0, t, eps)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[-1], eps[-1])  # t = 0 is data, t = 1 is noise
    h = 1e-3
    assert torch.allclose((flow.q_sample(x0, t + h, eps) - x_t) / h, eps - x0, atol=1e-9)  # u = dx_t/dt
    inner = slice(1, 4)  # x0 has no velocity at t = 0, noise none at t = 1
    x0, eps, t, x_t = x0[inner], eps[inner], t[inner], x_t[inner]
    for p in FLOW_PREDICTIONS:
        fp = Flow(p)
        v, x0_p, eps_p = fp.velocity_x0_eps(fp.target(x0, eps), x_t, t)
        for a, b in ((v, eps - x0), (x0_p, x0), (eps_p, eps)):
            assert torch.allclose(a, b, atol=1e-12)
        for q in FLOW_PREDICTIONS:
            fq = Flow(q)
            pred_q = {'velocity': v, 'x0': x0_p, 'noise': eps_p}[q]
            for a, b in zip(fq.velocity_x0_eps(pred_q, x_t, t), (v, x0_p, eps_p)):
                assert torch.allclose(a, b, atol=1e-12), (p, q)


def least_loss(flow):
    """E over training's t of the optimal field's loss: per eigenvalue the conditional variance of u,
    lambda / ((1 - t)^2 lambda + t^2), times the target's weight in velocity units (1, t^2 for x0, (1 - t)^2 for
    noise), averaged over the D dimensions; t = t_max tau with tau uniform."""
    weight = {'velocity': lambda t: 1.0, 'x0': lambda t: t ** 2, 'noise': lambda t: (1 - t) ** 2}[flow.prediction]
    per_dim = [scipy.integrate.quad(lambda tau: weight(flow.t_max * tau) * lam / ((1 - flow.t_max * tau) ** 2 * lam
                                                                                  + (flow.t_max * tau) ** 2), 0, 1)[0]
               for lam in LAM.tolist()]
    return sum(per_dim) / D


def test_least_loss_of_velocity_has_its_closed_form():
    # with uniform t the integral is elementary: int_0^1 lambda / ((1 - t)^2 lambda + t^2) dt = pi/2 sqrt(lambda)
    assert least_loss(Flow()) == pytest.approx(math.pi / 2 * LAM.sqrt().mean().item(), rel=1e-9)


@pytest.mark.parametrize("prediction", FLOW_PREDICTIONS)
def test_optimal_field_has_the_least_training_loss(prediction):
    # The loss of v* averages to its closed form, and any other field F = v* + delta pays exactly E||delta||^2 more:
    # u - v* is orthogonal to every function of (x_t, t). Same t and noise for all fields, so the difference is sharp.
    flow = Flow(prediction)
    n = 100_000
    torch.manual_seed(0)
    x0 = (MU + torch.randn(n, D, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T).view(n, D, 1, 1)
    t, noise = flow.sample_time(n, 'cpu').double(), torch.randn_like(x0)
    oracle = optimal_field(flow)
    best = flow.training_loss(oracle, x0, t=t, noise=noise)
    se = best.std().item() / math.sqrt(n)
    assert abs(best.mean().item() - least_loss(flow)) < 5 * se
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # delta(x, t) = (R x + r)(c0 + c1 t): random, smooth, depending on both
        R, r, c = (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.2 for shape in ((D, D), (D,), (2,)))
        def delta(x, t_in, R=R, r=r, c=c):
            return ((x.flatten(1) @ R.T + r) * (c[0] + c[1] * t_in.view(-1, 1) / flow.TIME_SCALE)).view_as(x)

        def perturbed(x, t_in, y=None, delta=delta):
            return oracle(x, t_in) + delta(x, t_in)
        excess = flow.training_loss(perturbed, x0, t=t, noise=noise) - best
        x_t = flow.q_sample(x0, t, noise)
        expected = (delta(x_t, flow.network_time(t)) ** 2).flatten(1).mean(1)  # ||delta||^2 / D, per sample
        assert excess.mean() > 0
        cross = excess - expected  # -2 (target - F*) . delta / D: mean zero
        assert abs(cross.mean().item()) < 5 * cross.std().item() / math.sqrt(n)


def test_loss_refuses_a_learn_sigma_network():
    x0 = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="learn_sigma"):
        Flow().training_loss(lambda x, t, y: torch.cat([x, x], dim=1), x0)


# ---- time sampling and the shift ----


def test_logit_normal_times_follow_sd3s_density():
    # pi_ln(t; m, s) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t)): the histogram of 200k draws against
    # the density integrated over each bin (chi-square), and the draws against its CDF Phi((logit t - m) / s) (KS).
    m, s = 0.5, 0.8  # not the defaults, so that a swapped or ignored m or s shows
    flow = Flow(time_sampling='logit_normal', logit_mean=m, logit_std=s)
    t = flow.sample_time(200_000, 'cpu', generator=torch.Generator().manual_seed(0)).double().numpy()

    def density(t):
        return np.exp(-(np.log(t / (1 - t)) - m) ** 2 / (2 * s ** 2)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))
    edges = np.linspace(0, 1, 21)
    expected = np.array([scipy.integrate.quad(density, a, b)[0] for a, b in zip(edges[:-1], edges[1:])])
    assert expected.sum() == pytest.approx(1, abs=1e-8)
    observed = np.histogram(t, edges)[0]
    assert scipy.stats.chisquare(observed, expected * len(t)).pvalue > 1e-3
    assert scipy.stats.kstest(t, lambda t: scipy.stats.norm.cdf((np.log(t / (1 - t)) - m) / s)).pvalue > 1e-3
    # and uniform is uniform
    u = Flow().sample_time(200_000, 'cpu', generator=torch.Generator().manual_seed(0)).double().numpy()
    assert scipy.stats.kstest(u, 'uniform').pvalue > 1e-3


def test_time_shift_is_sd3s_and_fluxs():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = 3.0
    assert torch.allclose(time_shift(t, s), s * t / (1 + (s - 1) * t))  # SD3: t_m = s t_n / (1 + (s - 1) t_n)
    assert time_shift(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)  # s > 1 moves times toward noise
    inner = t[1:-1]
    flux = lambda mu, t: math.exp(mu) / (math.exp(mu) + (1 / t - 1))  # noqa: E731  FLUX's time_shift(mu, 1, t)
    assert torch.allclose(time_shift(inner, s), flux(math.log(s), inner))
    assert torch.allclose(time_shift(time_shift(t, 2.0), 1.5), time_shift(t, 3.0))  # shifts multiply
    assert torch.allclose(time_shift(time_shift(t, s), 1 / s), t)  # so 1 / s undoes s
    # LightningDiT shifts its time 1 - t by 0.3: the same as shifting t by 1 / 0.3
    assert torch.allclose(1 - time_shift(1 - t, 0.3), time_shift(t, 1 / 0.3))
    for s in (0.1, 0.3, 1 / 0.3, 3.0):  # the ends stay exact in floating point, so a sampler starts on t = 1 itself
        assert time_shift(torch.tensor(1.0, dtype=torch.float64), s) == 1 and time_shift(torch.tensor(0.0), s) == 0


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_shift_moves_training_and_sampling_times_alike(time_sampling):
    # training draws t = shift(tau); the samplers' grid is shift of an even tau grid. Undoing the shift (1 / s) gives
    # back the unshifted draws and the even grid: the sampler spends its steps where training spent its samples.
    s = 3.0
    shifted, plain = Flow(time_sampling=time_sampling, time_shift=s), Flow(time_sampling=time_sampling)
    t = shifted.sample_time(100_000, 'cpu', generator=torch.Generator().manual_seed(0)).double()
    t0 = plain.sample_time(100_000, 'cpu', generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(time_shift(t, 1 / s), t0, atol=1e-6)
    if time_sampling == 'uniform':  # P(t <= x) = shift(x, 1/s): the grid's points are the quantiles of training's t
        assert scipy.stats.kstest(t.numpy(), lambda x: time_shift(x, 1 / s)).pvalue > 1e-3
    grid = shifted.timesteps(16)
    assert grid[0] == 1 and grid[-1] == 0
    assert torch.allclose(time_shift(grid, 1 / s), torch.linspace(1, 0, 17, dtype=torch.float64))
    # noise prediction stops short of t = 1 (SiT's 1e-3) in both
    noise = Flow('noise', time_shift=s)
    assert noise.timesteps(16)[0] == pytest.approx(1 - 1e-3) and noise.sample_time(10_000, 'cpu').max() <= 1 - 1e-3
    # SiT's SDE grid: the last step goes from t = 0.04 to 0 whatever the shift
    sde_grid = shifted.timesteps(10, last_step_size=0.04)
    assert len(sde_grid) == 11 and sde_grid[-2].item() == pytest.approx(0.04) and sde_grid[-1] == 0


# ---- ODE samplers ----


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_and_heun_reach_the_data_at_first_and_second_order(prediction, shift):
    flow = Flow(prediction, time_shift=shift)
    oracle = optimal_field(flow)
    steps = [16, 32, 64, 128]
    for solver, order in (("euler", 1), ("heun", 2)):
        errors = [law_error(*sampled_law(lambda x: flow.ode_sample(oracle, x, n, solver))) for n in steps]
        assert all(a > b for a, b in zip(errors, errors[1:])), (solver, errors)
        assert slope(steps, errors) == pytest.approx(order, abs=0.15), (solver, errors)
    assert errors[-1] < 2e-3  # Heun at 128 steps


def test_noise_prediction_reaches_the_data_up_to_its_start_offset():
    # Noise prediction starts at t = 1 - 1e-3 (SiT's), from N(0, I) in place of the marginal there: an error of
    # O(1e-3) that no step count removes. From the true marginal at that time, Heun converges at second order again.
    flow = Flow('noise')
    oracle = optimal_field(flow)
    heun = lambda n: lambda x: flow.ode_sample(oracle, x, n, 'heun')  # noqa: E731
    from_prior = [law_error(*sampled_law(heun(n))) for n in (64, 256)]
    assert from_prior[1] < 0.02 and from_prior[1] > 0.5 * from_prior[0]
    steps = [16, 32, 64, 128]
    exact_start = [law_error(*sampled_law(heun(n), t_start=flow.t_max)) for n in steps]
    assert slope(steps, exact_start) == pytest.approx(2, abs=0.15) and exact_start[-1] < 1e-3, exact_start


def test_heun_keeps_the_forward_marginals_at_every_shifted_step():
    # with the exact field the ODE carries q(x_t) to q(x_t'), so at each point of the shifted grid the chain holds the
    # marginal training drew at that time: sampling with the shift undoes training with it. (The last, Euler, step
    # makes most of the error at the end, 5e-3 here.)
    flow = Flow(time_shift=3.0)
    oracle, ts = optimal_field(flow), flow.timesteps(64).tolist()
    for i in (8, 32, 48, 63):
        def partial(x):
            for t, t_next in zip(ts[:i], ts[1:i + 1]):
                x = flow.heun_step(oracle, x, t, t_next)
            return x
        assert law_error(*sampled_law(partial), t=ts[i]) < 2e-3, ts[i]


def test_evaluations_and_the_last_step():
    # Euler: N evaluations; Heun: 2N - 1, its step to t = 0 being Euler (EDM); an Euler step to t = 0 returns x0_theta
    flow, calls = Flow(), []
    oracle = optimal_field(flow)
    counting = lambda x, t: calls.append(t) or oracle(x, t)  # noqa: E731
    x = torch.randn(4, D, 1, 1, dtype=torch.float64)
    flow.ode_sample(counting, x, 10, 'euler')
    assert len(calls) == 10
    calls.clear()
    flow.ode_sample(counting, x, 10, 'heun')
    assert len(calls) == 19 and calls[-1][0].item() == pytest.approx(flow.network_time(0.1))
    t = 0.3
    _, x0, _ = flow.predict(oracle, x, t)
    assert torch.allclose(flow.euler_step(oracle, x, t, 0.0), x0, atol=1e-12)


# ---- SiT's SDE ----


def sde_law(flow, steps, last_step_size, norm=1.0, noise=2.0):
    """The exact law of SiT's Euler-Maruyama chain for the affine field v*, from N(0, I): each step
    x' = x + [-v + w grad log p] ds + sqrt(2 w ds) z with w = norm t, grad log p = -eps*/t, eps* = x + (1 - t) v*,
    is x' = M x + c + sqrt(2 w ds) z, so m' = M m + c and P' = M P M^T + 2 w ds I (no noise in the step to t = 0).
    noise != 2 gives the chain of a wrong noise variance, noise w ds."""
    I = torch.eye(D, dtype=torch.float64)
    ts = flow.timesteps(steps, last_step_size).tolist()
    m, P = torch.zeros(D, dtype=torch.float64), I.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        G = Q @ torch.diag((t - (1 - t) * LAM) / ((1 - t) ** 2 * LAM + t ** 2)) @ Q.T  # v* = G x + c_v
        c_v = -MU - (1 - t) * G @ MU
        w, ds = norm * t, t - t_next
        M = I + ds * (-G - w / t * (I + (1 - t) * G))
        c = ds * (-c_v - w / t * (1 - t) * c_v)
        m, P = M @ m + c, M @ P @ M.T + (noise * w * ds * I if t_next > 0 else 0)
    return m, P


def test_sde_sampler_has_the_law_of_sits_chain():
    # The sampler's samples against the law its chain must have, to Monte Carlo error (5 standard errors). At 8 steps
    # the discretisation still shows the diffusion coefficient, so the test tells SiT's w = t from w = t / 2, and
    # the noise 2 w ds that keeps p_t from a w ds that does not.
    flow = Flow()
    n, steps = 60_000, 8
    g = torch.Generator().manual_seed(0)
    x = flow.sde_sample(optimal_field(flow), torch.randn(n, D, 1, 1, generator=g).double(), steps, generator=g)
    x = x.flatten(1)
    m, P = sde_law(flow, steps, 0.04)
    se_mean = (P.diagonal() / n).sqrt()
    assert torch.all((x.mean(0) - m).abs() < 5 * se_mean)
    se_cov = ((P.diagonal()[:, None] * P.diagonal()[None] + P ** 2) / n).sqrt()
    assert torch.all((torch.cov(x.T) - P).abs() < 5 * se_cov)
    for wrong in (sde_law(flow, steps, 0.04, norm=0.5), sde_law(flow, steps, 0.04, noise=1.0)):
        assert ((wrong[1] - P).abs() / se_cov).max() > 8


def test_sde_chains_law_tends_to_the_data():
    # its mean is exact, and its covariance error is of first order in the step (weak order 1 of Euler-Maruyama; h = 0),
    # and within 1.5% of Sigma at SiT's defaults (250 steps, last step 0.04)
    flow = Flow()
    assert (sde_law(flow, 50, 0.04)[0] - MU).norm() < 1e-12
    steps = [50, 100, 200, 400]
    errors = [(sde_law(flow, n, 0.0)[1] - SIGMA).norm().item() for n in steps]
    assert slope(steps, errors) == pytest.approx(1, abs=0.2), errors
    assert (sde_law(flow, 250, 0.04)[1] - SIGMA).norm() < 0.015 * SIGMA.norm()


def test_sde_uses_the_generator():
    flow = Flow()
    model = optimal_field(flow)
    x = torch.randn(3, D, 1, 1)
    a = flow.sde_sample(model, x, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, flow.sde_sample(model, x, 10, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(a, flow.sde_sample(model, x, 10, generator=torch.Generator().manual_seed(6)))


# ---- guidance in an interval ----


def test_cfg_interval_guides_only_inside():
    from tests.test_diffusion import tiny_conditional_dit
    m = tiny_conditional_dit()
    flow = Flow()
    x, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 4, 2, 1])
    t = flow.network_time(torch.tensor([0.05, 0.2, 0.6, 0.61]))  # LightningDiT's interval [0, 1 - c], here c = 0.4
    lo, hi = flow.network_time(0.2), flow.network_time(0.6)
    with torch.no_grad():
        cond = m(x, t, y)
        everywhere = cfg_model_fn(m, y, 4.0)(x, t)
        interval = cfg_model_fn(m, y, 4.0, interval=(lo, hi))(x, t)
    inside = torch.tensor([False, True, True, False])  # endpoints included
    assert torch.allclose(interval[inside], everywhere[inside], atol=1e-6)
    assert torch.allclose(interval[~inside], cond[~inside], atol=1e-6)
    assert not torch.allclose(everywhere[~inside], cond[~inside], atol=1e-3)


@pytest.mark.parametrize('schedule', ['linear', 'ldm_linear', 'scaled_linear'])
def test_ddpm_timesteps_flow_time_has_the_same_noise_level(schedule):
    # sample.py's --cfg_interval for DDPM models: timestep k and its flow time t_k, scaled to unit signal, hold the same
    # mixture x0 + sigma eps: Flow's x_t / (1 - t) equals DDPM's x_t / sqrt(abar), for the same x0 and eps
    from diffusion import Diffusion
    d, flow = Diffusion(schedule), Flow()
    t_k = d.flow_time()
    x0, eps = torch.randn(6, D, dtype=torch.float64), torch.randn(6, D, dtype=torch.float64)
    k = torch.tensor([0, 1, 100, 500, 900, 999])
    ddpm = d.q_sample(x0, k, eps) / d.abar[k, None].sqrt()
    rf = flow.q_sample(x0, t_k[k], eps) / (1 - t_k[k, None])
    assert torch.allclose(ddpm, rf, rtol=1e-12, atol=1e-12)
    assert (t_k.diff() > 0).all() and 0 < t_k[0] < 0.2 and 0.9 < t_k[-1] < 1  # a range of [0, 1], rising with k


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_sdedit_starts_on_the_grid_and_the_one_point_field_returns_the_input(solver):
    # sample.py --strength on a flow: the last int(steps * strength) steps of the grid, from (1 - t) x0 + t eps at the
    # first one's time; for data = {x*}, v(x, t) = (x - x*) / t carries every start straight back to x*
    flow = Flow(time_shift=3.0)
    x_star, noise = torch.tensor([0.7, -1.3]).view(1, 2, 1, 1).expand(4, 2, 1, 1), torch.randn(4, 2, 1, 1)
    times = []
    def field(x, t_in):
        t = t_in.float().view(-1, 1, 1, 1) / 1000
        times.append(float(t.flatten()[0]))
        return (x - x_star) / t
    grid = flow.timesteps(20).tolist()
    x = flow.ode_sample(field, noise, 20, solver, x0=x_star, strength=0.25)
    torch.testing.assert_close(x, x_star, rtol=0, atol=1e-5)
    assert times[0] == pytest.approx(grid[15], rel=1e-6)  # int(20 * 0.25) = 5 steps: grid[15] -> ... -> 0
    assert len(times) == (5 if solver == 'euler' else 9)
    assert torch.equal(flow.ode_sample(field, noise, 20, solver, x0=noise, strength=0.0), noise)
