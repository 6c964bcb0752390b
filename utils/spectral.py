"""
The spectral measures of Skorokhodov et al. (ICML 2025), shared by spectrum.py, train_ae.py and the report: the 8x8
block-DCT energy of images or latents in zigzag order, and the temporal DCT of clips. The transforms themselves (block_dct,
zigzag, cut_dct_high_frequencies) are in model.py, where SE's DCT variants use them.

The definitions. For a set of images or latents x (B, C, H, W), let X_{c,n,k} be coefficient k of block n of channel
c, over all N blocks of all images, and mu_c = mean_n X_{c,n,0} the channel's mean DC (8 x its mean value). Then
  E_{c,0} = mean_n (X_{c,n,0} - mu_c)^2,   E_{c,k} = mean_n X_{c,n,k}^2  (k >= 1)      energy per coefficient
  S_{c,k} = sqrt(E_{c,k} / E_{c,0})                                                    dct_spectrum: 1 at DC
  hf_share = mean_c  sum_{k=32}^{63} E_{c,k} / sum_{k=1}^{63} E_{c,k}                   the one scalar
  hf_energy_share = sum_c sum_{k=32}^{63} E_{c,k} / sum_c sum_{k=1}^{63} E_{c,k}          energy-weighted
All three are invariant to a per-channel offset x_c -> x_c + b_c: an offset moves only the DC coefficient (the DCT of
a constant), which is centred by mu_c or left out. S and hf_share are also invariant to a per-channel scale a_c (it
multiplies every E_{c,k} by a_c^2, which cancels in each ratio), and hf_energy_share to any orthogonal mixing of the
channels (sum_c E_{c,k} is the squared length of a vector that a rotation keeps) and a common scale: the symmetries of
an LDM that normalises its latents by one scalar, which sees neither a rotation of the channels nor a common scale but
does see their relative scales. Latent offsets and scales are arbitrary (FLUX's are 0.1159 and 0.3611). RGB on the
latent grid goes through exactly the same functions.
Reference values: white noise has E_{c,k} = sigma^2 for every k (an orthonormal transform of i.i.d. noise is i.i.d.),
so S = 1 and hf_share = 32/63 = 0.508; smooth images put nearly all their AC energy in the first coefficients and score
near 0. The means are over the whole measured set, so a spectrum accumulated batch by batch (BlockSpectrum) is exact.

  dct_spectrum(x)  (C, 64) S_{c,k} above, zigzag order
  hf_share(x)      the AC energy share of zigzag coefficients 32..63, averaged over channels
  hf_energy_share(x)  the same share of the energy summed over channels
The erasure test of Fig. 5 uses model.cut_dct_high_frequencies, the low-pass SE's DCT cut uses too.
"""
import torch

from model import block_dct, dct_matrix, to_frames, zigzag

BLOCK = 8                                         # JPEG's block size, the paper's
HF_START = 32                                     # hf_share: zigzag coefficients 32..63, the upper half


# -----------------------------------------------------------------------------
# the spectrum and its one scalar

class BlockSpectrum:
    """Running sums over the 8x8 blocks of a set of images or latents, fed batch by batch; the definitions in the
    module docstring, computed from them, are exact for any split into batches."""
    def __init__(self):
        # blocks per channel; sum_n (X_{c,n,0} - shift_c); sum_n X_{c,n,k}^2 with the DC entry also taken about shift_c,
        # the first batch's mean DC, so that centring a large offset does not subtract two huge numbers
        self.n, self.shift, self.dc_sum, self.energy_sum = 0, None, 0.0, 0.0

    def update(self, x):
        """x (B, C, H, W) or video (B, C, T, H, W), cropped to multiples of 8. Returns self."""
        x = to_frames(x).double()  # bf16 from autocast, or TF32 matmuls, would blur the small high-frequency energies
        X = block_dct(x).flatten(-2)[..., zigzag().to(x.device)]  # (B, C, H/8, W/8, 64) in zigzag order
        X = X.transpose(0, 1).flatten(1, 3)  # (C, N, 64)
        if self.shift is None:
            self.shift = X[..., 0].mean(1)  # (C,)
        X = torch.cat([X[..., :1] - self.shift.to(X.device)[:, None, None], X[..., 1:]], dim=-1)
        self.n += X.shape[1]
        self.dc_sum = self.dc_sum + X[..., 0].sum(1).cpu()
        self.energy_sum = self.energy_sum + X.pow(2).sum(1).cpu()
        return self

    def energy(self):
        """(C, 64) E_{c,k}: mean squared coefficient, the DC one centred by the channel's mean DC mu_c."""
        e = self.energy_sum / self.n
        e[:, 0] = e[:, 0] - (self.dc_sum / self.n) ** 2  # E_0 = mean (X_0 - s)^2 - (mu - s)^2 = mean (X_0 - mu)^2
        return e.clamp_min(0)

    def profile(self):
        """(C, 64) S_{c,k} = sqrt(E_{c,k} / E_{c,0}): RMS amplitude relative to the centred DC, 1 at k = 0."""
        e = self.energy()
        return (e / e[:, :1].clamp_min(torch.finfo(e.dtype).tiny)).sqrt()

    def hf_share(self):
        """mean_c sum_{k>=32} E_{c,k} / sum_{k>=1} E_{c,k}: the AC energy share of the upper half of the zigzag order."""
        ac = self.energy()[:, 1:]  # (C, 63), k = 1..63
        return (ac[:, HF_START - 1:].sum(1) / ac.sum(1).clamp_min(torch.finfo(ac.dtype).tiny)).mean().item()

    def hf_energy_share(self):
        """sum_c sum_{k>=32} E_{c,k} / sum_c sum_{k>=1} E_{c,k}: the same share of the energy summed over channels,
        unchanged by an orthogonal mixing of the channels (which hf_share's per-channel ratios are not)."""
        ac = self.energy()[:, 1:].sum(0)  # (63,), k = 1..63, summed over channels
        return (ac[HF_START - 1:].sum() / ac.sum().clamp_min(torch.finfo(ac.dtype).tiny)).item()

    def stats(self):
        """The numbers we report: per-channel profiles, their mean and std across channels, and both HF shares."""
        s = self.profile()
        return dict(per_channel=s.tolist(), mean=s.mean(0).tolist(), std=s.std(0, unbiased=False).tolist(),
                    hf_share=self.hf_share(), hf_energy_share=self.hf_energy_share())


def dct_spectrum(x):
    """x (B, C, H, W), or video (B, C, T, H, W) with T folded into B -> (C, 64): S_{c,k} of the module docstring,
    per channel, in zigzag order; entry 0 is 1. Invariant to per-channel shifts and scales."""
    return BlockSpectrum().update(x).profile()


def hf_share(x):
    """The one scalar: the share of AC energy in zigzag coefficients 32..63, averaged over channels. White noise:
    32/63; smooth images: near 0; an RGB image pooled to the latent size is the reference for an autoencoder."""
    return BlockSpectrum().update(x).hf_share()


def hf_energy_share(x):
    """The share of AC energy in zigzag coefficients 32..63 of the energy summed over channels (see BlockSpectrum)."""
    return BlockSpectrum().update(x).hf_energy_share()

def noised_hf_share(x, sigmas, seed=0):
    """The RGB + noise reference (the paper's spectrum of noised RGB): hf_share of x + sigma * std_c * eps for each
    sigma, with eps ~ N(0, I) one fixed draw and std_c each channel's std over the set, so that sigma is a
    signal-to-noise ratio whatever the channels' scales. From x's own hf_share at sigma = 0 it rises toward white
    noise's 32/63. -> [hf_share per sigma]."""
    x = x.double()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    std = x.transpose(0, 1).flatten(1).std(1).view(1, -1, *([1] * (x.dim() - 2)))
    return [hf_share(x + s * std * eps) for s in sigmas]


def equivalent_sigma(sigmas, shares, share):
    """The noise level at which the curve (sigmas, shares) of noised_hf_share reaches `share`, by linear interpolation
    on the rising curve: how much noise RGB needs to be as high-frequency as a latent. None outside the curve."""
    for (s0, h0), (s1, h1) in zip(zip(sigmas, shares), zip(sigmas[1:], shares[1:])):
        if min(h0, h1) <= share <= max(h0, h1):
            return s0 if h1 == h0 else s0 + (share - h0) / (h1 - h0) * (s1 - s0)
    return None

# -----------------------------------------------------------------------------
# video: the spatial spectrum per latent frame, and a temporal spectrum along the frames

def temporal_ac(x):
    """x (B, C, T, H, W) -> its DCT-II along time at the AC frequencies k = 1 .. T-1, (B, C, T-1, H, W), in float64. DC
    (k = 0) is left out: a channel's offset lives there alone."""
    x = x.double()
    return torch.einsum('kt,bcthw->bckhw', dct_matrix(x.shape[2], x.device, x.dtype)[1:], x)


def temporal_amplitude(x):
    """x (B, C, T, H, W) -> (C, T-1): mean |DCT-II coefficient| along time, over every batch element and pixel, per
    channel, for the temporal frequencies k = 1 .. T-1."""
    return temporal_ac(x).abs().mean(dim=(0, 3, 4))


def temporal_energy(x):
    """x (B, C, T, H, W) -> (C, T-1): mean squared DCT-II coefficient along time, per channel, k = 1 .. T-1."""
    return temporal_ac(x).pow(2).mean(dim=(0, 3, 4))


def temporal_hf_energy_share(energy):
    """(C, T-1) temporal AC energies -> the share of the energy summed over channels in the upper half of the AC
    frequencies (k > (T-1)/2): the temporal hf_energy_share, unchanged by an orthogonal mixing of the channels."""
    e = energy.sum(0)
    return (e[(len(e) + 1) // 2:].sum() / e.sum().clamp_min(torch.finfo(e.dtype).tiny)).item()


def temporal_spectrum(amplitude):
    """(C, T-1) temporal AC amplitudes -> each channel's profile divided by its mean: invariant to a per-channel affine
    map a * z + b of the latent (b only moves DC, a cancels), so latents and RGB compare. White noise: flat at 1."""
    return amplitude / amplitude.mean(dim=1, keepdim=True).clamp_min(torch.finfo(amplitude.dtype).tiny)


def temporal_hf_ratio(amplitude):
    """The temporal scalar: the mean temporal_spectrum over the upper half of the AC frequencies (k > (T-1)/2) and
    over channels. 1 for white noise in time; below 1 when the signal changes slowly, as natural video does."""
    profile = temporal_spectrum(amplitude)
    return profile[:, (profile.shape[1] + 1) // 2:].mean().item()
