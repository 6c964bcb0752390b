"""
The diffusability probe: how well a trained LDM denoises held-out latents, noise level by noise level. It is the
primary metric of reproduce.py, since it is about 40 times less noisy between LDM seeds than the SWD of a few hundred
samples, and asks the paper's question directly: is the SE autoencoder's latent space easier to denoise?

For every held-out image x, z = (E(x) - shift) * scale is its posterior-mean latent normalised as the LDM's training
latents were. At each probed noise level t (DDPM timesteps, or flow times in [0, 1]) z is noised with the same fixed
noise eps for every autoencoder and seed, x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps (flow: (1 - t) z + t eps), and
  eps_mse(t) = mean ||eps_hat(x_t, t) - eps||^2 / d          the denoising loss the LDM was trained on (flow: its eps)
  pixel_mse(t) = mean ||D(x0_hat / scale + shift) - x||^2 / n  the decoded x0 prediction against the image, in [-1, 1]
The summary numbers are their means over the probed levels; eps_mse_per_image keeps each image's mean over levels, the
unit of report.py's image-level statistics. A guard goes with it: the per-channel std of 64 DDIM
(flow: Heun) sample latents over that of the data latents, and the share of saturated pixels in their decoding; an LDM
whose samples are off by more than a factor 2, or more than 10% saturated, has not learned to sample.

Beside the trained denoiser, a prediction from the spectrum alone: gaussian_oracle, the exact MMSE of eps at the same
levels for a Gaussian latent (of known mean) whose covariance is diagonal in the 8x8 block-DCT basis (spectral.py's), with the
held-out latents' own variance per (channel, coefficient), once normalised by one scalar (as the LDM is) and once per
channel. The per-channel one is unchanged by any per-channel scale and offset of the latents; the scalar one sees how
the variance is shared among channels, which channel_std reports.

Video LDMs (train_ldm.py --num_frames) are probed the same way on held-out clips, given as an .npz of uint8
(N, T, H, W, 3) as sample.py writes them; every mean is then over all latent (pixel) values of a clip.

  from repro.probe import diffusability_probe; diffusability_probe('ldm/ckpt.pt', 'heldout_images/', [10, 100, 500, 900])
"""
import numpy as np
import torch

from utils.common import broadcast_latent_norm
from utils.data import ImageFolder
from diffusion import Flow, process_from_config
from evaluation.metrics import sample_guard
from denoiser import build_backbone
from model import decode_first_stage, encode_first_stage
from utils.weights import load_autoencoder, load_checkpoint
from utils.spectral import BlockSpectrum, BLOCK

PROBE_T = [10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 990]   # DDPM timesteps the probe noises to
PROBE_T_FLOW = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98]  # flow times (t = 1 is noise)
LATENT_NORMS = ('scalar', 'channel')  # train_ldm.py --latent_norm: one mean and std over all latents, or per channel
GUARD_SAMPLES = 64
GUARD_STEPS = 50


def load_ldm(path, device='cpu'):
    """A train_ldm.py checkpoint -> (its EMA denoiser in eval mode, its diffusion process (Diffusion or Flow), its
    config, latent shift, latent scale, its autoencoder)."""
    ckpt = load_checkpoint(path, 'ldm')
    config = ckpt['config']
    model = build_backbone(**config['backbone']).to(device).eval()
    model.load_state_dict(ckpt['ema'])
    process = process_from_config(config, device)  # Diffusion or Flow, with the checkpoint's schedule
    video = 'num_frames' in config['backbone']
    shift, scale = (broadcast_latent_norm(ckpt[k], 5 if video else 4, device) for k in ('latent_shift', 'latent_scale'))
    ae = load_autoencoder(config['ae'], preset=config.get('ae_preset'), device=device, video=video)
    return model, process, config, shift, scale, ae


# -----------------------------------------------------------------------------
# the Gaussian oracle: what the spectrum alone predicts of the probe


def standardise(z, latent_norm):
    """z (N, C, [T,] h, w) -> (z - mean) / std in float64, as train_ldm.py's scale_by_std ('scalar': one mean and std
    over every value; 'channel': one per channel), from these latents' own moments."""
    z = z.double()
    dims = [d for d in range(z.dim()) if d != 1] if latent_norm == 'channel' else list(range(z.dim()))
    mean, std = z.mean(dims, keepdim=True), z.std(dims, keepdim=True, unbiased=False)
    return (z - mean) / std


def channel_std(z):
    """z (N, C, [T,] h, w) -> [C floats]: each channel's std over every image and position. The LDM's one scalar
    normalisation keeps their ratios: how the variance is shared among the channels."""
    return z.double().transpose(0, 1).flatten(1).std(1, unbiased=False).tolist()


def coefficient_variances(z, latent_norm):
    """z (N, C, [T,] h, w) -> (C, 64) the variance of each (channel, 8x8 block-DCT coefficient) after standardise:
    spectral.py's E_{c,k}, the DC one centred by the channel's mean."""
    return BlockSpectrum().update(standardise(z, latent_norm)).energy()


def gaussian_oracle(z, process, levels, latent_norm):
    """The exact MMSE of eps at each of `levels` of `process` (Diffusion or Flow) for a Gaussian latent, of the known
    mean, whose covariance is diagonal in the block-DCT basis with the variances s2 of coefficient_variances(z): the
    error of the best possible denoiser of such latents, a prediction of the probe's eps_mse from the spectrum alone.
    For latents that are not Gaussian it is the error of the best denoiser that is linear and diagonal in that basis
    (the Wiener filter), which a trained LDM can beat. The DCT is orthonormal, so eps is white in its basis too and the
    mean over coefficients is the mean over values. -> [MMSE per level]."""
    s2 = coefficient_variances(z, latent_norm)  # (C, 64)
    one, out = torch.ones(1, 1, dtype=torch.float64), []
    for level in levels:
        t = torch.tensor([level], dtype=torch.float32 if isinstance(process, Flow) else torch.long)
        # x_t = alpha z + sigma eps, read off the process's own q_sample (DDPM: sqrt(abar), sqrt(1 - abar); flow: 1 - t, t)
        alpha, sigma = process.q_sample(one, t, 0 * one).item(), process.q_sample(0 * one, t, one).item()
        snr = alpha ** 2 * s2 / sigma ** 2
        out.append((snr / (snr + 1)).mean().item())  # Var(eps | x_t) = a^2 s2 / (a^2 s2 + s^2) = abar s2 / (abar s2 + 1 - abar)
    return out


def oracles(latents, process, levels):
    """gaussian_oracle of the raw latents under each normalisation of LATENT_NORMS, per level and its mean -> dict; None
    where the latent is smaller than one 8x8 DCT block (the f16 and f32 autoencoders of the f sweep)."""
    if min(latents.shape[-2:]) < BLOCK:
        return None
    out = {}
    for norm in LATENT_NORMS:
        mmse = gaussian_oracle(latents, process, levels, norm)
        out |= {norm: mmse, f'{norm}_mean': sum(mmse) / len(mmse)}
    return out


def held_out(path, image_size):
    """The held-out set the probe reads: a folder of images -> (N, 3, H, W), or an .npz of uint8 clips (N, T, H, W, 3)
    -> (N, 3, T, H, W); both in [-1, 1]."""
    if path.endswith('.npz'):
        with np.load(path) as f:
            clips = torch.from_numpy(f['arr_0'])
        return clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    images = ImageFolder(path, image_size, flip=False)
    return torch.stack([images.load(i)[0] for i in range(len(images))])


def predict(model, process, x_t, t):
    """The denoiser's (eps_hat, x0_hat) at level t (B,) under either process."""
    if isinstance(process, Flow):
        _, x0, eps = process.velocity_x0_eps(model(x_t, process.network_time(t), None), x_t, t)
        return eps, x0
    eps_or_v, _ = process.split_output(model(x_t, t, None))
    return process.eps_x0(eps_or_v, x_t, t)


@torch.no_grad()
def diffusability_probe(ckpt, heldout, levels, device='cpu', batch_size=64, noise_seed=0, decoded=None):
    """The probe of the LDM checkpoint `ckpt` on the held-out images or clips `heldout` (see held_out), at each of
    `levels`; decoded: how many of them the pixel error decodes (default all; decoding clips is the probe's cost). ->
    {'levels', 'eps_mse' (per level), 'pixel_mse' (per level), 'eps_mse_mean', 'pixel_mse_mean', 'eps_mse_per_image'
    and 'pixel_mse_per_image' (each image's mean over levels), 'oracle': {'scalar', 'channel': gaussian_oracle per
    level, and their means}, 'channel_std', 'latent_norm' (the LDM's), 'guard': {...}}."""
    model, process, config, shift, scale, ae = load_ldm(ckpt, device)
    x = held_out(heldout, config['image_size']).to(device)  # (N, 3, [T,] H, W)
    latents = torch.cat([encode_first_stage(ae, b, sample=False) for b in x.split(batch_size)])  # (N, C, [t,] h, w)
    z = (latents - shift) * scale  # as the LDM's training latents
    decode = lambda z: decode_first_stage(ae, z, config.get('vq_latents') != 'pre_quantization')  # noqa: E731  as sample.py
    flow = isinstance(process, Flow)
    n_decoded = len(z) if decoded is None else min(decoded, len(z))
    generator = torch.Generator().manual_seed(noise_seed)
    eps_mse, pixel_mse = [], []
    eps_per_image, pixel_per_image = torch.zeros(len(z), dtype=torch.float64), torch.zeros(n_decoded, dtype=torch.float64)
    for level in levels:
        noise = torch.randn(z.shape, generator=generator).to(device)  # the same for every arm: a paired measurement
        errors, seen = [0.0, 0.0], 0
        for zb, nb, xb in zip(z.split(batch_size), noise.split(batch_size), x.split(batch_size)):
            t = torch.full((len(zb),), level, dtype=torch.float32 if flow else torch.long, device=device)
            eps, x0 = predict(model, process, process.q_sample(zb, t, nb), t)
            per_image = (eps.float() - nb).pow(2).flatten(1).mean(1).double().cpu()  # (B,)
            errors[0] += per_image.sum().item()
            eps_per_image[seen:seen + len(zb)] += per_image / len(levels)
            keep = max(0, min(len(zb), n_decoded - seen))  # the first n_decoded items
            if keep:
                x_rec = decode(x0[:keep].float() / scale + shift).clamp(-1, 1)
                per_image = (x_rec - xb[:keep]).pow(2).flatten(1).mean(1).double().cpu()  # (keep,)
                errors[1] += per_image.sum().item()
                pixel_per_image[seen:seen + keep] += per_image / len(levels)
            seen += len(zb)
        eps_mse.append(errors[0] / len(z))
        pixel_mse.append(errors[1] / n_decoded)
    guard = guard_ldm(model, process, z, shift, scale, decode, device)
    return {'levels': list(levels), 'eps_mse': eps_mse, 'pixel_mse': pixel_mse,
            'eps_mse_mean': sum(eps_mse) / len(eps_mse), 'pixel_mse_mean': sum(pixel_mse) / len(pixel_mse),
            'eps_mse_per_image': eps_per_image.tolist(), 'pixel_mse_per_image': pixel_per_image.tolist(),
            'oracle': oracles(latents.cpu(), process, levels), 'channel_std': channel_std(latents),
            'latent_norm': config.get('latent_norm') or ('channel' if torch.is_tensor(scale) else 'scalar'),
            'num_images': len(z), 'num_decoded': n_decoded, 'guard': guard}


def guard_ldm(model, process, z_data, shift, scale, decode, device):
    """Has the LDM learned to sample? GUARD_SAMPLES samples of it (DDIM, or Heun under flow) against the data latents,
    by metrics.sample_guard: the per-channel std ratio and the share of saturated decoded pixels."""
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((GUARD_SAMPLES, *z_data.shape[1:]), generator=generator).to(device)
    model_fn = lambda x, t: model(x, t, None)  # noqa: E731
    if isinstance(process, Flow):
        z = process.ode_sample(model_fn, x_T, GUARD_STEPS, 'heun')
    else:
        z = process.ddim_sample(model_fn, x_T, steps=GUARD_STEPS)
    return sample_guard(z, z_data, decode(z.float() / scale + shift))  # the LDM's own decoding: decode_first_stage
