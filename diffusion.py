"""
Gaussian diffusion in discrete time, as LDM (Rombach et al. 2022) and DiT (Peebles & Xie 2023) use it on latents:
the noise schedule, the forward process q(x_t | x_0), the training loss, and three samplers, ancestral DDPM
(Ho et al. 2020, Algorithm 2), DDIM (Song et al. 2021) and PLMS (PNDM's pseudo linear multistep, Liu et al. 2022, which
LDM's txt2img --plms runs), all with classifier-free guidance (Ho & Salimans 2022). DDIM and PLMS take ADM's timesteps
or LDM's (spaced_timesteps, sampling_steps).

Symbols are the papers': beta_t, alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s, eps the noise, x0 the clean latent.
Timesteps are 0-based indices t in [0, T) (index t is the paper's t + 1), which is also what the networks are fed.

The network output is eps (LDM Algorithm 1) or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022), followed,
for learn_sigma models (DiT), by C "variance values" v_var in [-1, 1] that interpolate the log variance between beta_t
and the posterior variance beta~_t (improved DDPM, Nichol & Dhariwal 2021, eq. 15). Those are trained with L_vlb on a
stopped-gradient mean (L_hybrid = L_simple + L_vlb, their lambda = 0.001 times T = 1000 terms) and used by p_sample.
DDIM, being deterministic at eta = 0, ignores them.

Beside it, rectified flow in continuous time (class Flow), as SiT (Ma et al. 2024), SD3 (Esser et al. 2024) and
FLUX train the same backbones: x_t = (1 - t) x0 + t eps with t in [0, 1] running from data (t = 0) to noise (t = 1),
the velocity u = dx_t/dt = eps - x0, the time distributions of SD3 (uniform or logit-normal, with its shift), and
SiT's samplers: Euler and Heun on the ODE dx/dt = v(x, t) from t = 1 to 0, and Euler-Maruyama on its SDE.

Samplers take model_fn(x_t, t) -> raw network output, so guidance (cfg_model_fn) and conditioning live outside them;
t is what the network is fed (a timestep index for Diffusion, 1000 t for Flow).
Run nothing here directly: train_ldm.py trains with training_loss and sample.py calls the samplers.
"""
import math

import numpy as np
import torch

from utils.cli import DIFFUSION_LOSSES, FLOW_PREDICTIONS, SCHEDULE_BETAS, SPACINGS, TIME_SAMPLINGS  # the flags' names

# ----------------------------------------------------------------------------------------------
# schedule


def beta_schedule(name, T=1000, beta_start=None, beta_end=None):
    """The schedules of the papers we follow, as float64 (T,), each under the name of what it is:
    linear         DDPM / ADM / DiT: beta linear from 1e-4 to 0.02
    ldm_linear     LDM's own configs (linear_start 0.0015, linear_end 0.0195): linear in sqrt(beta)
    scaled_linear  Stable Diffusion's (0.00085 .. 0.012, linear in sqrt(beta)), diffusers' name for it
    beta_start, beta_end move the endpoints beta_1, beta_T (CompVis' linear_start, linear_end) and keep the rule; None
    keeps the schedule's own (cli.SCHEDULE_BETAS)."""
    if name not in SCHEDULE_BETAS:
        raise ValueError(f"unknown noise schedule {name!r}; use 'linear' (DDPM/ADM/DiT), 'ldm_linear' (LDM) or "
                         f"'scaled_linear' (Stable Diffusion).")
    b0, b1 = SCHEDULE_BETAS[name]
    b0, b1 = b0 if beta_start is None else beta_start, b1 if beta_end is None else beta_end
    if not 0 < b0 <= b1 < 1:
        raise ValueError(f"the betas must rise within (0, 1), got beta_start {b0} and beta_end {b1}.")
    if name == "linear":
        return torch.linspace(b0, b1, T, dtype=torch.float64)  # beta_t = b0 + t (b1 - b0) / (T - 1)
    return torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2  # sqrt(beta_t) linear (CompVis 'linear')


def spaced_timesteps(T, steps, spacing='even'):
    """The `steps` timesteps a sampler visits, ascending, as ADM's respacing (space_timesteps) picks them, which DiT
    uses too, so our numbers at N steps are comparable with theirs, or as LDM picks them:
    even  ADM's "N": index k is round(k (T-1)/(N-1)), accumulated in float64 as ADM does, so ties round alike;
          from 0 to T-1, and N = T is the full chain
    ddim  ADM's "ddimN": every stride-th index from 0, for the integer stride that gives exactly N (0, 20, ..., 980
          for N = 50 of T = 1000); not every N has one
    ldm   CompVis' make_ddim_timesteps 'uniform': every c-th index from 1, c = T // N (1, 21, ..., 981 for 50 of 1000),
          diffusers' "leading" spacing with steps_offset=1; refused where that is not N timesteps below T (CompVis
          would then make more, or index past T). Its samplers end on timestep 0, not on clean data (sampling_steps)"""
    if not 1 <= steps <= T:
        raise ValueError(f"the number of sampling steps must be between 1 and T={T}, got {steps}.")
    if spacing == 'ldm':
        c = T // steps
        ts = torch.arange(1, T, c)  # "add one to get the final alpha values right" (CompVis): 0, c, ... shifted by 1
        if len(ts) != steps:
            raise ValueError(f"LDM's spacing, timesteps 1, 1 + c, ... below {T} with c = {T} // {steps} = {c}, gives "
                             f"{len(ts)} of them, not {steps}; choose a number of steps that divides {T} (such as 50 "
                             f"or 250), or another spacing.")
        return ts
    if spacing == 'ddim':
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == steps:
                return torch.arange(0, T, stride)
        raise ValueError(f"no integer stride gives exactly {steps} of {T} timesteps (ADM's ddimN spacing); choose "
                         f"another number of steps or the even spacing.")
    if spacing != 'even':
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}.")
    frac_stride = (T - 1) / (steps - 1) if steps > 1 else 1
    ts, cur = [], 0.0
    for _ in range(steps):
        ts.append(round(cur))  # Python's round: half to even, as ADM's
        cur += frac_stride
    return torch.tensor(ts)


def sampling_steps(T, steps, spacing='even'):
    """The steps of the DDIM and PLMS samplers, [(t, t_prev), ...] from noise to data over spaced_timesteps: each
    timestep steps to the one below it, and the lowest to t_prev = -1 (abar = 1: clean data), or under LDM's spacing to
    timestep 0, whose abar_0 < 1 (CompVis' alphas_prev[0] = alphas_cumprod[0], diffusers' set_alpha_to_one=False)."""
    ts = spaced_timesteps(T, steps, spacing).tolist()
    ts_prev = [0 if spacing == 'ldm' else -1] + ts[:-1]
    return list(zip(ts, ts_prev))[::-1]


def sdedit_steps(steps, strength):
    """How many of a sampler's `steps` SDEdit runs at `strength` in [0, 1]: diffusers' img2img pipelines' init_timestep,
    min(int(steps * strength), steps); the start is the input noised to the first of them (Diffusion.sdedit_start).
    Strength 1 starts from the noisiest timestep, 0 returns the input."""
    if not 0 <= strength <= 1:
        raise ValueError(f"the SDEdit strength is a share of the sampling steps, in [0, 1], got {strength}.")
    return min(int(steps * strength), steps)


def sample_generators(seed, indices):
    """One noise generator per sample i: numpy's PCG64 seeded with SeedSequence(seed, spawn_key=(i,)), numpy's way to
    make independent streams. Its 128-bit state keeps every (seed, i) pair apart; a torch CPU generator keeps only the
    low 32 bits of its seed, so a formula such as seed * 2**32 + i gave every seed the same noise. (Not
    SeedSequence([seed, i]): it drops trailing zero words, so [2**32, 0] and [0, 1] give the same stream.)"""
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))) for i in indices]


def randn(shape, generator, device):
    """Standard normal noise. generator may be a list with one generator per sample (torch.Generator, or numpy's from
    sample_generators), so that every sample's noise depends on its own seed only (sample.py's results then do not
    depend on the batch size or world size)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample.")
        return torch.stack([torch.from_numpy(g.standard_normal(shape[1:], dtype=np.float32))
                            if isinstance(g, np.random.Generator) else torch.randn(shape[1:], generator=g, device=g.device)
                            for g in generator]).to(device)
    return torch.randn(shape, generator=generator, device=device if generator is None else generator.device).to(device)


def mean_flat(x):  # (B, ...) -> (B,)
    return x.mean(dim=list(range(1, x.ndim)))


def pointwise_loss(error, loss_type):
    """The training loss of each element of `error` = prediction - target: its square (l2) or magnitude (l1), as
    CompVis' get_loss does before the mean."""
    return error.abs() if loss_type == 'l1' else error ** 2


class Diffusion:
    """The schedule's tables live on `device` (float64), so gathering a timestep's coefficients never syncs a GPU."""

    def __init__(self, schedule="linear", T=1000, prediction="eps", learn_sigma=False, device="cpu", beta_start=None,
                 beta_end=None, loss_type="l2"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction {prediction!r}; use 'eps' or 'v'.")
        if loss_type not in DIFFUSION_LOSSES:
            raise ValueError(f"unknown loss type {loss_type!r}; use one of {', '.join(DIFFUSION_LOSSES)}.")
        self.schedule, self.T, self.prediction, self.learn_sigma = schedule, T, prediction, learn_sigma
        self.loss_type = loss_type
        self.betas = beta_schedule(schedule, T, beta_start, beta_end)  # (T,) float64
        self.abar = torch.cumprod(1.0 - self.betas, dim=0)  # abar_t = prod_{s<=t} (1 - beta_s)
        self.abar_from_minus_one = torch.cat([torch.ones(1, dtype=torch.float64), self.abar])  # (T + 1,)
        abar_prev = self.abar_from_minus_one[:-1]
        var_tilde = self.betas * (1 - abar_prev) / (1 - self.abar)  # beta~_t (DDPM eq. 7); 0 at t = 0
        # log beta~_t with the t = 0 entry replaced by t = 1's, so that eq. 15 stays finite there (as ADM)
        self.log_var_tilde_clipped = torch.log(torch.cat([var_tilde[1:2], var_tilde[1:]]))
        self.log_betas = self.betas.log()
        for name in ("betas", "abar", "abar_from_minus_one", "log_var_tilde_clipped", "log_betas"):
            setattr(self, name, getattr(self, name).to(device))

    # ---- per-timestep coefficients, gathered as (B, 1, 1, 1) in x's dtype and device ----

    def _at(self, a, t, x):
        return a[t.to(a.device)].to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def _abar(self, t, x):  # abar at t, with abar_{-1} = 1 (the "previous" of the last step is clean data)
        return self._at(self.abar_from_minus_one, t + 1, x)

    # ---- forward process and the network's parameterisation ----

    def q_sample(self, x0, t, noise):
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise  # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (DDPM eq. 4)

    def split_output(self, out):
        """Raw network output -> (eps or v prediction, variance values or None)."""
        if self.learn_sigma:
            return out.chunk(2, dim=1)
        return out, None

    def eps_x0(self, pred, x_t, t):
        """The network's prediction -> (eps, x0) at timestep t."""
        a = self._abar(t, x_t)
        if self.prediction == "eps":
            return pred, (x_t - (1 - a).sqrt() * pred) / a.sqrt()  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(1 - abar) x_t + sqrt(abar) v,
        #                                            x0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return (1 - a).sqrt() * x_t + a.sqrt() * pred, a.sqrt() * x_t - (1 - a).sqrt() * pred

    def flow_time(self):
        """(T,) float64: each timestep's rectified-flow time of the same noise level. Scaled to unit signal, DDPM's
        x_t / sqrt(abar) = x0 + sigma eps with sigma = sqrt((1 - abar) / abar), and Flow's x_t / (1 - t) = x0 +
        t / (1 - t) eps, so equal sigma means t = sigma / (1 + sigma) = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)).
        It rises with the timestep. sample.py reads --cfg_interval, given in t, through it for DDPM models."""
        a = self.abar
        return (1 - a).sqrt() / (a.sqrt() + (1 - a).sqrt())  # t = sigma / (1 + sigma)

    def q_posterior(self, x0, x_t, t, t_prev):
        """q(x_prev | x_t, x0) = N(mu~, beta~ I) between any two timesteps t_prev < t of the (respaced) chain.
        Returns mu~, beta~ and the chain's beta_t = 1 - abar_t / abar_prev (DDPM eq. 6-7)."""
        a, a_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        beta = 1 - a / a_prev
        mean = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t  # mu~_t
        var = beta * (1 - a_prev) / (1 - a)  # beta~_t
        return mean, var, beta

    @staticmethod
    def learned_log_var(var_values, log_beta, log_var_tilde):
        frac = (var_values + 1) / 2  # network output in [-1, 1] -> [0, 1]
        return frac * log_beta + (1 - frac) * log_var_tilde  # log Sigma = v log beta + (1 - v) log beta~ (iDDPM 15)

    # ---- training ----

    def training_loss(self, model, x0, y=None, t=None, noise=None):
        """Per-sample loss (B,). L_simple = ||eps - eps_theta(x_t, t)||^2 (LDM Algorithm 1 / DDPM eq. 14), or the same
        on v, or with loss_type 'l1' |eps - eps_theta| (CompVis' loss_type, which LDM's inpainting config sets); plus
        L_vlb for learn_sigma models. t and noise are drawn when not given."""
        B = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.T, (B,), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        pred, var_values = self.split_output(model(x_t, t, y))
        a = self._abar(t, x0)
        target = noise if self.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0  # v target
        loss = mean_flat(pointwise_loss(pred.float() - target.float(), self.loss_type))
        if var_values is not None:
            loss = loss + self.vlb_terms(pred.detach(), var_values, x0, x_t, t)
        return loss

    def vlb_terms(self, pred, var_values, x0, x_t, t):
        """L_t of the variational bound in bits per dimension, training the variance only (the mean gets a stopped
        gradient, improved DDPM section 3.1): KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0, and the
        Gaussian decoder NLL -log p(x0 | x_1) at t = 0 (continuous, as latents are not 8-bit data)."""
        pred, var_values = pred.to(x0.dtype), var_values.to(x0.dtype)  # mixed-precision output, fp32 latents
        _, x0_hat = self.eps_x0(pred, x_t, t)
        mean_p, _, _ = self.q_posterior(x0_hat, x_t, t, t - 1)
        mean_q, var_q, _ = self.q_posterior(x0, x_t, t, t - 1)
        log_var_q = self._at(self.log_var_tilde_clipped, t, x0)
        log_var_p = self.learned_log_var(var_values, self._at(self.log_betas, t, x0), log_var_q)
        # KL(N(mu_q, var_q) || N(mu_p, var_p)) = 1/2 (log var_p - log var_q + (var_q + (mu_q - mu_p)^2) / var_p - 1)
        kl = 0.5 * (log_var_p - log_var_q + (var_q + (mean_q - mean_p) ** 2) * torch.exp(-log_var_p) - 1)
        # -log N(x0; mu_p, var_p), the decoder term at t = 0
        nll = 0.5 * (math.log(2 * math.pi) + log_var_p + (x0 - mean_p) ** 2 * torch.exp(-log_var_p))
        return torch.where(t == 0, mean_flat(nll), mean_flat(kl)) / math.log(2.0)

    # ---- samplers ----

    @torch.no_grad()
    def p_sample(self, model_fn, x_t, t, t_prev, generator=None):
        """One ancestral step x_t -> x_{t_prev} (DDPM Algorithm 2 on the respaced chain):
        x_prev = mu~(x0_theta, x_t) + sigma z, z ~ N(0, I); sigma^2 = beta~ (fixed) or eq. 15 (learned); no noise at the
        last step, where mu~ = x0_theta."""
        B = x_t.shape[0]
        # timesteps made on the device: a host-to-device copy here would stall the GPU at every step
        t_b, t_prev_b = (torch.full((B,), s, dtype=torch.long, device=x_t.device) for s in (t, t_prev))
        pred, var_values = self.split_output(model_fn(x_t, t_b))
        _, x0 = self.eps_x0(pred, x_t, t_b)
        mean, var, beta = self.q_posterior(x0, x_t, t_b, t_prev_b)
        if t_prev < 0:
            return mean
        log_var = var.log() if var_values is None else self.learned_log_var(var_values, beta.log(), var.log())
        return mean + (0.5 * log_var).exp() * randn(x_t.shape, generator, x_t.device)

    def replace_known(self, x_t, t, known, generator=None):
        """LDM's p_sample_loop(mask, x0), the training-free inpainting of any model: before each step the known region
        of x_t is replaced by a fresh draw of q(x_t | x0), x_t <- k q_sample(x0, t, eps) + (1 - k) x_t, eps ~ N(0, I).
        known: None (nothing replaced) or (x0, k), k = 1 where x0 is known."""
        if known is None:
            return x_t
        x0, keep = known
        t_b = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        return keep * self.q_sample(x0, t_b, randn(x_t.shape, generator, x_t.device)) + (1 - keep) * x_t

    def sdedit_start(self, x0, noise, t):
        """SDEdit's start (Meng et al. 2022; diffusers' img2img pipelines): x0 noised to timestep t, q_sample."""
        return self.q_sample(x0, torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device), noise)

    @torch.no_grad()
    def ddpm_sample(self, model_fn, x_T, steps=None, generator=None, spacing='even', known=None, x0=None, strength=1.0):
        """Ancestral sampling from x_T ~ N(0, I) over `steps` timesteps (all T by default), spaced as ADM/DiT do.
        known: inpaint by replacement (replace_known). x0: SDEdit, only the last sdedit_steps(steps, strength)
        timesteps, from x0 noised with x_T to the first of them (x0 itself when there are none)."""
        if spacing == 'ldm':  # CompVis' ancestral sampler walks the whole chain; 'ldm' is its DDIM's and PLMS's
            raise ValueError("LDM's spacing is for the DDIM and PLMS samplers; sample DDPM with the even or ddim "
                             "spacing.")
        ts = spaced_timesteps(self.T, steps or self.T, spacing).tolist()
        x = x_T
        if x0 is not None:
            ts = ts[:sdedit_steps(len(ts), strength)]
            x = self.sdedit_start(x0, x_T, ts[-1]) if ts else x0
        for i in range(len(ts) - 1, -1, -1):
            x = self.replace_known(x, ts[i], known, generator)
            x = self.p_sample(model_fn, x, ts[i], ts[i - 1] if i > 0 else -1, generator)
        return x

    @torch.no_grad()
    def ddim_step(self, model_fn, x_t, t, t_prev, eta=0.0, generator=None):
        """One DDIM step x_t -> x_{t_prev} (Song et al. eq. 12 with sigma of eq. 16):
        x_prev = sqrt(abar_prev) x0_theta + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z,
        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)."""
        B = x_t.shape[0]
        t_b, t_prev_b = (torch.full((B,), s, dtype=torch.long, device=x_t.device) for s in (t, t_prev))
        pred, _ = self.split_output(model_fn(x_t, t_b))
        eps, x0 = self.eps_x0(pred, x_t, t_b)
        a, a_prev = self._abar(t_b, x_t), self._abar(t_prev_b, x_t)
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * randn(x_t.shape, generator, x_t.device)
        return x_prev

    @torch.no_grad()
    def ddim_sample(self, model_fn, x_T, steps=50, eta=0.0, generator=None, spacing='even', known=None, x0=None,
                    strength=1.0):
        """DDIM from x_T ~ N(0, I) over `steps` timesteps spaced as ADM/DiT do; eta = 0 is deterministic, eta = 1 ~
        DDPM. spacing='ddim' is ADM's ddimN (its DDIM results use it), 'ldm' LDM's DDIMSampler (diffusers'
        DDIMScheduler(steps_offset=1, set_alpha_to_one=False)), which ends on timestep 0. known: inpaint by replacement
        (replace_known), as CompVis' DDIMSampler with mask and x0. x0: SDEdit, only the last
        sdedit_steps(steps, strength) steps, from x0 noised with x_T to the first one's timestep, as diffusers'
        img2img (CompVis' img2img.py noises to the next timestep up, one step off)."""
        pairs, x = sampling_steps(self.T, steps, spacing), x_T
        if x0 is not None:
            pairs = pairs[len(pairs) - sdedit_steps(len(pairs), strength):]
            x = self.sdedit_start(x0, x_T, pairs[0][0]) if pairs else x0
        for t, t_prev in pairs:
            x = self.replace_known(x, t, known, generator)
            x = self.ddim_step(model_fn, x, t, t_prev, eta, generator)
        return x

    @torch.no_grad()
    def plms_step(self, model_fn, x_t, t, t_prev, old_eps):
        """One step x_t -> x_{t_prev} of PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022) as LDM's
        PLMSSampler takes it: DDIM's eta = 0 step (PNDM's transfer, eq. 9) with eps' from the Adams-Bashforth formula of
        the order that old_eps, the eps of the last steps (newest last), allows. Without any, the first step is a pseudo
        improved Euler (Heun) step, with a second evaluation at t_prev. -> (x_prev, eps of this step)."""
        def eps_at(x, s):  # the network's eps at timestep s (v models: eps = sqrt(1 - abar) x + sqrt(abar) v)
            s_b = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
            return self.eps_x0(self.split_output(model_fn(x, s_b))[0], x, s_b)[0]

        def transfer(e):  # x_prev = sqrt(abar_prev) (x_t - sqrt(1 - abar_t) e) / sqrt(abar_t) + sqrt(1 - abar_prev) e
            a, a_prev = (self._abar(torch.full((1,), s, device=x_t.device), x_t) for s in (t, t_prev))
            return a_prev.sqrt() * (x_t - (1 - a).sqrt() * e) / a.sqrt() + (1 - a_prev).sqrt() * e

        eps = eps_at(x_t, t)
        if not old_eps:
            eps_prime = (eps + eps_at(transfer(eps), t_prev)) / 2  # e' = (e(x_t, t) + e(x~_prev, t_prev)) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2  # 2nd order: e' = (3 e - e_{-1}) / 2, e_{-k} the eps k steps ago
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12  # 3rd: (23 e - 16 e_{-1} + 5 e_{-2}) / 12
        else:  # 4th order: e' = (55 e - 59 e_{-1} + 37 e_{-2} - 9 e_{-3}) / 24
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        return transfer(eps_prime), eps

    @torch.no_grad()
    def plms_sample(self, model_fn, x_T, steps=50, spacing='ldm'):
        """PLMS from x_T ~ N(0, I) over `steps` timesteps (LDM's --plms; diffusers' PNDMScheduler(skip_prk_steps=True)):
        deterministic, steps + 1 network evaluations. It combines eps, also for v models (diffusers combines v)."""
        if steps < 2:
            raise ValueError("PLMS's first step evaluates the network at the next timestep; give it at least 2 steps.")
        x, old_eps = x_T, []
        for t, t_prev in sampling_steps(self.T, steps, spacing):
            x, eps = self.plms_step(model_fn, x, t, t_prev, old_eps)
            old_eps = (old_eps + [eps])[-3:]  # the eps of the last three steps, as CompVis' old_eps
        return x


# ----------------------------------------------------------------------------------------------
# rectified flow


def time_shift(t, shift):
    """SD3's resolution-dependent time shift (Esser et al. 2024), t' = s t / (1 + (s - 1) t): it fixes 0 and 1
    and for s > 1 moves every t toward noise (SD3's s = sqrt(m / n) for m pixels against the n of its base resolution;
    FLUX's time_shift(mu, 1, t) is the same map with s = e^mu). Shifts compose by multiplying,
    time_shift(time_shift(t, a), b) = time_shift(t, a b), so 1 / s undoes s. LightningDiT's timestep_shift 0.3 acts on
    its time 1 - t; here it is s = 1 / 0.3."""
    return shift * t / (shift * t + (1 - t))  # = s t / (1 + (s - 1) t), in the form that gives exactly 1 at t = 1


class Flow:
    """Rectified flow (SD3; SiT's Linear interpolant) in continuous time t in [0, 1], t = 0 data, t = 1 noise:
    x_t = (1 - t) x0 + t eps, whose velocity dx_t/dt = eps - x0 the network learns, in expectation:
    v(x, t) = E[eps - x0 | x_t = x]. Sampling integrates dx/dt = v(x, t) from x_1 ~ N(0, I) at t = 1 down to t = 0.

    prediction     what the network outputs: 'velocity' v (SiT's default), 'x0' or 'noise' eps; the loss is the MSE to
                   that target, unweighted, as SiT trains its velocity and noise models (in velocity units an x0 loss
                   weighs t^2, a noise loss (1 - t)^2)
    time_sampling  the training's time density before the shift: 'uniform' (SiT) or 'logit_normal' (SD3's, with
                   logit_mean m and logit_std s)
    time_shift     SD3's shift s of every time, in training and in the samplers' grid alike (1: none)
    loss_type      'l2' (SiT, SD3) or 'l1' (the elementwise |F_theta - target|, as Diffusion's loss_type)
    The backbone is built without learn_sigma: a flow has no variance to learn."""

    TIME_SCALE = 1000.0

    def __init__(self, prediction='velocity', time_sampling='uniform', logit_mean=0.0, logit_std=1.0, time_shift=1.0,
                 loss_type='l2'):
        if prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"unknown flow prediction {prediction!r}; use one of {', '.join(FLOW_PREDICTIONS)}.")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; use one of {', '.join(TIME_SAMPLINGS)}.")
        if not logit_std > 0:
            raise ValueError(f"the logit-normal's logit_std must be positive, got {logit_std}.")
        if not time_shift > 0:
            raise ValueError(f"the time shift must be positive (1 for none), got {time_shift}.")
        if loss_type not in DIFFUSION_LOSSES:
            raise ValueError(f"unknown loss type {loss_type!r}; use one of {', '.join(DIFFUSION_LOSSES)}.")
        self.loss_type = loss_type
        self.prediction, self.time_sampling, self.time_shift = prediction, time_sampling, time_shift
        self.logit_mean, self.logit_std = logit_mean, logit_std
        # A noise prediction holds no velocity at t = 1, where x_t = eps makes v = (eps - x_t) / (1 - t) a 0/0: as SiT
        # does for its non-velocity models (train_eps = sample_eps = 1e-3), times stop 1e-3 short of it, in training
        # and sampling. (SiT also stops short of t = 0; no sampler here evaluates the network there.)
        self.t_max = 1 - 1e-3 if prediction == 'noise' else 1.0

    def network_time(self, t):
        """What the network is fed for time t: 1000 t, as FLUX (timestep_embedding's time_factor) and SD3 (timestep =
        1000 sigma) feed theirs. The sinusoidal embedders of DiT and the UNet were built for timesteps 0..999: fed
        1000 t they see the same range under either objective, and the same backbone serves both. (SiT feeds t
        itself; its fastest frequency then turns by 1 radian over the whole of [0, 1].)"""
        return self.TIME_SCALE * t

    # ---- the forward process, the parameterisations and the times ----

    @staticmethod
    def _bc(t, x):  # (B,) -> (B, 1, ..., 1) in x's float type (at least float32), to broadcast against x
        return t.to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)).view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0, t, noise):
        t = self._bc(t, x0)
        return (1 - t) * x0 + t * noise  # x_t = (1 - t) x0 + t eps   (SD3's a_t = 1 - t, b_t = t)

    def target(self, x0, noise):
        """What the network is trained to output."""
        if self.prediction == 'velocity':
            return noise - x0  # u = dx_t/dt = eps - x0
        return x0 if self.prediction == 'x0' else noise

    def velocity_x0_eps(self, pred, x_t, t):
        """The network's prediction at time t (B,) -> (v, x0, eps), each from x_t = (1 - t) x0 + t eps, v = eps - x0."""
        t = self._bc(t, x_t)
        if self.prediction == 'velocity':
            v = pred
            return v, x_t - t * v, x_t + (1 - t) * v  # x0 = x_t - t v, eps = x_t + (1 - t) v
        if self.prediction == 'x0':
            x0 = pred
            eps = (x_t - (1 - t) * x0) / t  # eps = (x_t - (1 - t) x0) / t
            return eps - x0, x0, eps  # v = (x_t - x0) / t
        eps = pred
        x0 = (x_t - t * eps) / (1 - t)  # x0 = (x_t - t eps) / (1 - t)
        return eps - x0, x0, eps  # v = (eps - x_t) / (1 - t)

    def sample_time(self, B, device, generator=None):
        """Training times t ~ pi(t), (B,) float32: tau uniform on [0, 1], or logit-normal, tau = sigmoid(m + s n) with
        n ~ N(0, 1), of density pi_ln(tau; m, s) = exp(-(logit(tau) - m)^2 / (2 s^2)) / (s sqrt(2 pi) tau (1 - tau))
        (SD3's; m = 0, s = 1 was its best); then t = t_max shift(tau), the map the samplers' times go through."""
        if self.time_sampling == 'uniform':
            tau = torch.rand(B, device=device, generator=generator)
        else:
            tau = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(B, device=device, generator=generator))
        return self.t_max * time_shift(tau, self.time_shift)

    def timesteps(self, steps, last_step_size=0.0):
        """The times a sampler visits, (steps + 1,) float64, from t_max down to exactly 0: tau even on [1, 0], then
        t = t_max shift(tau) as in training, so that the grid's points are the quantiles of training's times (for
        uniform tau). With last_step_size h > 0 (SiT's SDE) the last step goes from t = h to 0 and the first
        steps - 1 share what lies above h, evenly in tau."""
        if steps < 1:
            raise ValueError(f"the number of sampling steps must be at least 1, got {steps}.")
        if not 0 <= last_step_size < self.t_max:
            raise ValueError(f"the last step's size must lie in [0, {self.t_max}), got {last_step_size}.")
        if last_step_size > 0:
            tau_h = time_shift(last_step_size / self.t_max, 1 / self.time_shift)  # the tau that lands on t = h
            tau = torch.cat([torch.linspace(1, tau_h, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        else:
            tau = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        return self.t_max * time_shift(tau, self.time_shift)

    # ---- training ----

    def training_loss(self, model, x0, y=None, t=None, noise=None):
        """Per-sample loss (B,): ||F_theta(x_t, t) - target||^2 for the target of `prediction` (the conditional flow
        matching loss of SiT and SD3 with velocity), or |F_theta - target| under loss_type 'l1'; t and noise are drawn
        when not given."""
        if t is None:
            t = self.sample_time(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        pred = model(x_t, self.network_time(t), y)
        if pred.shape != x0.shape:
            raise ValueError(f"the network outputs {tuple(pred.shape[1:])} for inputs {tuple(x0.shape[1:])}; flow "
                             f"matching needs one output per input channel (build the backbone with learn_sigma off).")
        return mean_flat(pointwise_loss(pred.float() - self.target(x0, noise).float(), self.loss_type))

    # ---- samplers: dx/dt = v(x, t) from t = 1 to t = 0 ----

    def predict(self, model_fn, x, t):
        """The network at time t (a float, the same for the whole batch) -> (v, x0, eps) there."""
        t_b = torch.full((x.shape[0],), t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        pred = model_fn(x, self.network_time(t_b))
        if pred.shape != x.shape:
            raise ValueError(f"the network outputs {tuple(pred.shape[1:])} for inputs {tuple(x.shape[1:])}; flow "
                             f"sampling needs one output per input channel (a backbone without learn_sigma).")
        return self.velocity_x0_eps(pred, x, t_b)

    @torch.no_grad()
    def euler_step(self, model_fn, x, t, t_next):
        v, _, _ = self.predict(model_fn, x, t)
        return x + (t_next - t) * v  # x_next = x_t + (t_next - t) v(x_t, t); to t_next = 0 this is x0_theta exactly

    @torch.no_grad()
    def heun_step(self, model_fn, x, t, t_next):
        """Heun's second-order step (EDM Algorithm 1): an Euler step to x~, then the mean of the velocities at both
        ends. The step to t = 0 stays Euler, as in EDM and JiT (still second order overall; 2N - 1 evaluations for N
        steps), since an x0 prediction has no velocity at t = 0. (SiT's Heun, torchdiffeq's heun2, corrects that
        step too, with one more evaluation.)"""
        v, _, _ = self.predict(model_fn, x, t)
        x_euler = x + (t_next - t) * v  # x~ = x_t + (t_next - t) v(x_t, t)
        if t_next == 0:
            return x_euler
        v_next, _, _ = self.predict(model_fn, x_euler, t_next)
        return x + (t_next - t) * 0.5 * (v + v_next)  # x_next = x_t + (t_next - t) (v(x_t, t) + v(x~, t_next)) / 2

    @torch.no_grad()
    def ode_sample(self, model_fn, x_T, steps=50, solver='heun', x0=None, strength=1.0):
        """The probability-flow ODE from x_1 = x_T ~ N(0, I) to t = 0 in `steps` steps of `solver` ('euler', 'heun')
        on the grid of timesteps(). x0: SDEdit, only the last sdedit_steps(steps, strength) steps of that grid, from
        x_t = (1 - t) x0 + t x_T at the first one's time (x0 itself when there are none)."""
        if solver not in ('euler', 'heun'):
            raise ValueError(f"unknown ODE solver {solver!r}; use 'euler' or 'heun'.")
        step = self.euler_step if solver == 'euler' else self.heun_step
        ts = self.timesteps(steps).tolist()
        x = x_T
        if x0 is not None:
            ts = ts[steps - sdedit_steps(steps, strength):]
            x = self.q_sample(x0, torch.full((x0.shape[0],), ts[0], device=x0.device), x_T)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = step(model_fn, x, t, t_next)
        return x

    @torch.no_grad()
    def sde_step(self, model_fn, x, t, t_next, diffusion_norm=1.0, generator=None):
        """One Euler-Maruyama step of SiT's reverse-time SDE, written in SiT's time s = 1 - t, which runs toward the
        data: dx = [-v + w grad log p_t] ds + sqrt(2 w) dW (-v being the velocity in s), with the diffusion coefficient
        w = norm sigma_t = norm t (SiT's sample.py default, diffusion form 'sigma'). Any w >= 0 keeps the marginals
        p_t; w = 0 is the ODE. The step to t = 0 is SiT's last_step 'Mean': the drift without the noise."""
        v, _, eps = self.predict(model_fn, x, t)
        score = -eps / t  # grad log p_t(x) = -E[eps | x_t = x] / t  (Tweedie; sigma_t = t)
        w = diffusion_norm * t  # w_t = norm sigma_t
        ds = t - t_next  # > 0
        mean = x + (-v + w * score) * ds  # x + [-v + w grad log p_t] ds
        if t_next == 0:
            return mean
        return mean + (2 * w * ds) ** 0.5 * randn(x.shape, generator, x.device)  # + sqrt(2 w) dW, dW ~ N(0, ds I)

    @torch.no_grad()
    def sde_sample(self, model_fn, x_T, steps=250, diffusion_norm=1.0, last_step_size=0.04, generator=None):
        """Euler-Maruyama from x_1 = x_T ~ N(0, I) in `steps` evaluations, as SiT's sample_sde with its defaults (250
        steps, diffusion form 'sigma' of norm 1, last step 'Mean' of size 0.04): steps - 1 noisy steps down to
        t = 0.04, then the mean step to t = 0. generator: as for Diffusion's samplers (one per sample)."""
        ts = self.timesteps(steps, last_step_size).tolist()
        x = x_T
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = self.sde_step(model_fn, x, t, t_next, diffusion_norm, generator)
        return x


def process_from_config(config, device='cpu'):
    """The diffusion process, Diffusion or Flow, that a train_ldm.py checkpoint's config was trained with, for the
    samplers and the probe. A checkpoint older than a key keeps the behaviour of its day: no beta_start/beta_end is the
    schedule's own endpoints, no diffusion_loss is l2, no objective is DDPM."""
    loss_type = config.get('diffusion_loss', 'l2')
    if config.get('objective') == 'flow':
        return Flow(**{k: config[k] for k in ('prediction', 'time_sampling', 'logit_mean', 'logit_std', 'time_shift')},
                    loss_type=loss_type)
    return Diffusion(config['schedule'], prediction=config['prediction'], learn_sigma=config['learn_sigma'],
                     device=device, beta_start=config.get('beta_start'), beta_end=config.get('beta_end'),
                     loss_type=loss_type)


# ----------------------------------------------------------------------------------------------
# conditioning and classifier-free guidance


def cfg_model_fn(model, y, cfg_scale, guided_channels=None, interval=None, null=None):
    """model_fn(x_t, t) for class-conditional sampling with classifier-free guidance: one doubled batch with the
    labels and the null class num_classes, then eps~ = eps(x_t, null) + s (eps(x_t, y) - eps(x_t, null)) on the
    prediction channels (v, x0 and the flow's velocity are affine in eps at a given x_t and t, so guiding any of them
    is the same); variance values come from the conditional half.
    guided_channels=3 guides only the first 3 latent channels and leaves the rest conditional, as DiT's sampler does
    (forward_with_cfg, "for exact reproducibility"): needed to compare with DiT's published FIDs, not otherwise.
    interval=(lo, hi), in the network's time input t (a timestep index, or Flow.network_time of a flow time), guides
    only where lo <= t <= hi and returns the conditional prediction elsewhere (guidance in a limited interval,
    Kynkaanniemi et al. 2024; LightningDiT's cfg_interval_start c is the flow interval [0, 1 - c]).
    s = 1 returns the conditional prediction (plain conditional sampling needs no doubled batch: use model(x, t, y)).
    y: the labels (B,), or a condition dict with them under 'y', whose other inputs both halves share.
    null: the unconditional inputs that replace cond's, for text and layouts the context (and mask) of "" or of a
    negative prompt, eps~ = eps(x_t, "") + s (eps(x_t, c) - eps(x_t, "")) as LDM's txt2img; default: y's null class."""
    cond = dict(y) if isinstance(y, dict) else {'y': y}  # a condition dict (conditioning.get_input's) or the labels
    if null is None:
        num_classes = model.num_classes
        if num_classes == 0 or model.y_embedder.embedding_table.num_embeddings == num_classes:
            raise ValueError("classifier-free guidance needs a class-conditional model trained with label dropout "
                             "(class_dropout_prob > 0); sample this model with --cfg_scale 1.")
        null = {'y': torch.full_like(cond['y'], num_classes)}
    null = {**cond, **null}  # spatial inputs ('concat') stay: only y, or the text's context, is replaced
    both = {k: torch.cat([cond[k], null[k]]) for k in cond if cond[k] is not None}

    def model_fn(x, t):
        out = model(torch.cat([x, x]), torch.cat([t, t]), **both)  # as model.apply_model feeds a condition dict
        cond, uncond = out.chunk(2)
        G = x.shape[1] if guided_channels is None else min(guided_channels, x.shape[1])
        guided = uncond[:, :G] + cfg_scale * (cond[:, :G] - uncond[:, :G])  # eps~ = eps_null + s (eps_y - eps_null)
        if interval is not None:  # per sample, so no timestep leaves the device
            inside = ((t >= interval[0]) & (t <= interval[1])).view(-1, *([1] * (x.ndim - 1)))
            guided = torch.where(inside, guided, cond[:, :G])
        return torch.cat([guided, cond[:, G:]], dim=1)

    return model_fn
