"""
The first stage of latent diffusion and its losses, as the papers draw them:
  - the autoencoder of LDM / Stable Diffusion / FLUX.1 (Encoder, Decoder, KL and VQ regularisers, CompVis' presets
    kl-f4..f32 and vq-f4..f16) and the one encode and decode every LDM path uses (encode_first_stage,
    decode_first_stage: a VQ LDM learns the latent before quantisation, and decoding quantises),
  - the scale-equivariance loss of Skorokhodov et al. (se_downsample, scale_equivariance_loss) that makes its latents
    diffusable, with the authors' two DCT-based alternatives (dct_cut_equivariance_loss, latent_hf_penalty) and the
    block DCT they and spectrum.py share,
  - the PatchGAN discriminator with LDM's hinge (or taming's vanilla) loss and adaptive GAN weight.
Parameter names follow the original checkpoints so public weights load as they are (utils/weights.py reads them). The
second stage's networks (UNet, DiT, tau_theta) are in denoiser.py, the causal 3D video autoencoder in video_model.py,
LPIPS in evaluation/perceptual.py.
"""

import math
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# ----------------------------------------------------------------------------------------------
# The autoencoder
#
# LDM's first stage (Rombach et al. 2022; code of CompVis "taming"/"ldm"): x (B,3,H,W) -> z (B,z,H/f,W/f) -> x_rec.
# Module and parameter names are those of the CompVis checkpoints (SD-VAE, FLUX.1 ae.safetensors), so public
# weights load unchanged; diffusers' AutoencoderKL layout is renamed on load (weights.load_ae_state_dict).

@dataclass
class ConvAEConfig:
    """The widths of a conv autoencoder, the image one here and the causal 3D one of video_model.VideoAEConfig."""
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128                  # base width: level i has ch * ch_mult[i] channels
    ch_mult: tuple = (1, 2, 4, 4)  # one entry per resolution; downsample factor f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2        # ResnetBlocks per encoder level (the decoder has one more per level)
    z_channels: int = 4
    use_quant_conv: bool = True    # 1x1 convs on either side of the latent (SD has them, FLUX.1 does not)
    dropout: float = 0.0           # inside every ResnetBlock (0 in all public first stages)
    norm_groups: int = 32          # GroupNorm groups (LDM: 32); narrow presets use fewer, see group_norm


@dataclass
class AEConfig(ConvAEConfig):
    regularizer: str = 'kl'        # 'kl': diagonal Gaussian posterior (KL-reg) | 'vq': vector quantiser (VQ-reg)
    n_embed: int = 8192            # VQ codebook size
    vq_beta: float = 0.25          # VQ commitment weight beta
    attn_resolutions: tuple = ()   # CompVis': an AttnBlock after every ResnetBlock of the levels of these feature sizes
    resolution: int = 256          # CompVis' ddconfig resolution: the image size attn_resolutions count from
    attn_type: str = 'vanilla'     # CompVis': 'none' drops every AttnBlock, the mid-block's too (vq-f4-noattn)

AE_PRESETS = {
    # f4, 0.95M parameters: CPU tests and smoke runs
    'tiny': AEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, norm_groups=8),
    # f4 with 8 latent channels, 0.69M parameters: reproduce.py's miniature of FluxAE (64 px -> 16x16x8 latents, 6x fewer
    # numbers than pixels, several 8x8 DCT blocks per latent; no quant convs, as FLUX.1). A deep network with no
    # shortcut from pixels to latent, so that what SE acts on is learned coding, as in the paper's autoencoders
    'mini': AEConfig(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=8, norm_groups=4, use_quant_conv=False),
    # f8 with a quarter of SD's width: single-GPU ablations
    'small': AEConfig(ch=64, ch_mult=(1, 2, 4, 4), num_res_blocks=1, z_channels=4),
    # Stable Diffusion's VAE (kl-f8). Public latent scale: diffusion runs on z * 0.18215.
    'sd': AEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, use_quant_conv=True),
    # FLUX.1's autoencoder. Public latent scale and shift: diffusion runs on (z - 0.1159) * 0.3611.
    'flux': AEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=16, use_quant_conv=False),
    # CompVis' first stages (latent-diffusion, models/first_stage_models/*/config.yaml; embed_dim = z_channels in each),
    # which load their released weights (--ae_preset); kl-f8 is 'sd' above
    'kl-f4': AEConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3),
    'kl-f16': AEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=16, attn_resolutions=(16,)),
    'kl-f32': AEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, z_channels=64, attn_resolutions=(16, 8)),
    'vq-f4': AEConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, regularizer='vq', n_embed=8192),
    'vq-f4-noattn': AEConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, regularizer='vq',
                             n_embed=8192, attn_type='none'),
    'vq-f8': AEConfig(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, z_channels=4, regularizer='vq', n_embed=16384,
                      attn_resolutions=(32,)),
    'vq-f8-n256': AEConfig(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, z_channels=4, regularizer='vq', n_embed=256,
                           attn_resolutions=(32,)),
    'vq-f16': AEConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=8, regularizer='vq',
                       n_embed=16384, attn_resolutions=(16,)),
    # LDM's f ablation (Sec. 4.1) in miniature, for reproduce.py --f_sweep at 64 px: the mini family (widths 16 * ch_mult,
    # one ResnetBlock a level, GroupNorm(4)) with CompVis' KL first stages' ch_mult, latent channels and attention
    # levels (kl-f4 z3, kl-f8 z4, kl-f16 z16, kl-f32 z64; f2 z2 as the paper's f2 first stage); f1 is train_ldm.py --ae none
    **{f'mini-f{f}': AEConfig(ch=16, ch_mult=mult, num_res_blocks=1, z_channels=z, norm_groups=4, resolution=64,
                              attn_resolutions=attn)
       for f, mult, z, attn in [(2, (1, 2), 2, ()), (4, (1, 2, 4), 3, ()), (8, (1, 2, 4, 4), 4, ()),
                                (16, (1, 1, 2, 2, 4), 16, (4,)), (32, (1, 1, 2, 2, 4, 4), 64, (4, 2))]},
}


def make_ae_config(preset, overrides=None, presets=None):
    """presets[preset] (AE_PRESETS by default, or video_model.VIDEO_AE_PRESETS) with the fields in `overrides` (a dict,
    e.g. a checkpoint's 'ae_config') replaced."""
    presets = AE_PRESETS if presets is None else presets
    if preset not in presets:
        raise ValueError(f"unknown autoencoder preset {preset!r}; choose one of {', '.join(presets)}.")
    config = presets[preset]
    overrides = dict(overrides or {})
    unknown = set(overrides) - {f.name for f in fields(config)}
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} field(s) {', '.join(sorted(unknown))}; valid fields are "
                         f"{', '.join(f.name for f in fields(config))}.")
    for key in ('ch_mult', 'attn_resolutions'):
        if key in overrides:
            overrides[key] = tuple(overrides[key])  # JSON / argparse give lists
    return replace(config, **overrides)


def group_norm(channels, groups=32):
    """LDM's GroupNorm. With as many groups as channels (32 of 32 in a narrow preset) it is an instance norm that erases
    every channel's per-image mean and contrast; the tiny presets keep 4+ channels per group (norm_groups 8) and learn
    faster for it. The group count has no parameters, so weights load whatever it is."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """x + conv2(dropout(silu(norm2(conv1(silu(norm1(x))))))), without the UNet's time embedding."""

    def __init__(self, in_channels, out_channels, dropout=0.0, groups=32):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # the residual needs a learned 1x1 ("network in network") projection only where the width changes
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: x + proj_out(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels, groups=32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v, (B, 1, HW, C)
        h = h[:, 0].transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; padding only right and bottom (0,1,0,1) makes H -> H/2 exactly, as in LDM."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv (no transposed conv, hence no checkerboard artefacts)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def make_attn(channels, groups, attn_type):
    """CompVis' make_attn: an AttnBlock, or nothing for attn_type 'none'."""
    return AttnBlock(channels, groups) if attn_type == 'vanilla' else nn.Identity()


class MidBlock(nn.Module):
    """The lowest-resolution stage of both encoder and decoder: ResnetBlock, global self-attention, ResnetBlock."""

    def __init__(self, channels, dropout, groups=32, attn_type='vanilla'):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = make_attn(channels, groups, attn_type)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> moments (B, 2*z_channels, H/f, W/f) for KL (mean, logvar), or z_channels for VQ."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = cfg.ch
        for i_level, width in enumerate(widths):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c, width, cfg.dropout, cfg.norm_groups))
                c = width
                if cfg.resolution // 2 ** i_level in cfg.attn_resolutions:  # CompVis' curr_res in attn_resolutions
                    level.attn.append(make_attn(c, cfg.norm_groups, cfg.attn_type))
            if i_level != len(widths) - 1:
                level.downsample = Downsample(c)
            self.down.append(level)
        self.mid = MidBlock(c, cfg.dropout, cfg.norm_groups, cfg.attn_type)
        self.norm_out = group_norm(c, cfg.norm_groups)
        out_channels = 2 * cfg.z_channels if cfg.regularizer == 'kl' else cfg.z_channels
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i_block](h)
            if i_level != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> x_rec (B, out_ch, h*f, w*f)."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = MidBlock(c, cfg.dropout, cfg.norm_groups, cfg.attn_type)
        # built coarse to fine, but stored so that up[i_level] is level i_level, as in LDM's checkpoints
        up = []
        for i_level in reversed(range(len(widths))):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c, widths[i_level], cfg.dropout, cfg.norm_groups))
                c = widths[i_level]
                if cfg.resolution // 2 ** i_level in cfg.attn_resolutions:  # the encoder's levels, as CompVis'
                    level.attn.append(make_attn(c, cfg.norm_groups, cfg.attn_type))
            if i_level != 0:
                level.upsample = Upsample(c)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(c, cfg.norm_groups)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(len(self.up))):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h


def diagonal_gaussian(moments, sample=True):
    """KL-reg of LDM. moments (B, 2C, h, w) -> z (B, C, h, w) ~ q(z|x) = N(mean, diag(exp(logvar))), and
    KL(q || N(0, I)) = 0.5 * sum_{C,h,w} (mean^2 + var - 1 - logvar), averaged over the batch."""
    mean, logvar = moments.float().chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite while the encoder is untrained (LDM)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean  # reparameterisation
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()  # (B, C, h, w) or (B, C, t, h, w)
    return z, kl


class VectorQuantizer(nn.Module):
    """VQ-reg of LDM (VQ-VAE, van den Oord et al. 2017): each latent vector is replaced by its nearest codebook row;
    loss = ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2 (codebook + commitment), gradients pass straight through."""

    def __init__(self, n_embed, dim, beta):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)  # taming's init

    def nearest(self, z):
        """z (B, C, H, W) -> the index of each latent vector's nearest codebook row, (B, H, W)."""
        B, C, H, W = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, C).float()  # (B*H*W, C)
        e = self.embedding.weight.float()  # (n_embed, C)
        dist = z_flat.pow(2).sum(1, keepdim=True) - 2.0 * z_flat @ e.t() + e.pow(2).sum(1)  # ||z - e_k||^2, (BHW, K)
        return dist.argmin(dim=1).view(B, H, W)

    def forward(self, z):
        z_q = self.embedding.weight.float()[self.nearest(z)].permute(0, 3, 1, 2)  # (B, C, H, W)
        # taming/LDM's default (legacy=True) puts beta on the codebook term instead; this is the paper's form
        loss = F.mse_loss(z_q, z.detach().float()) + self.beta * F.mse_loss(z.float(), z_q.detach())
        z_q = z + (z_q.to(z.dtype) - z).detach()  # straight-through: forward value z_q, gradient d/dz_q copied to z
        return z_q, loss


def codebook_usage(indices, n_embed):
    """How much of the codebook a batch of code indices uses, as CompVis' measure_perplexity (after karpathy's
    deep-vector-quantization): p_k the share of the latent vectors that chose code k, perplexity = exp(-sum_k p_k log p_k)
    (n_embed when every code is used equally, 1 when one code takes all), usage = the number of codes with p_k > 0."""
    p = torch.bincount(indices.flatten(), minlength=n_embed).double() / indices.numel()  # (n_embed,)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()  # 0 log 0 = 0
    return entropy.exp().item(), int((p > 0).sum())


class Autoencoder(nn.Module):
    """encode: x (B,3,H,W) in [-1,1] -> (z (B,z_channels,H/f,W/f), reg_loss); decode: z -> x_rec (B,3,H,W)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.regularizer not in ('kl', 'vq'):
            raise ValueError(f"unknown regularizer {cfg.regularizer!r}; use 'kl' or 'vq'.")
        if cfg.attn_type not in ('vanilla', 'none'):
            raise ValueError(f"unknown attn_type {cfg.attn_type!r}; use 'vanilla' or 'none'.")
        if any((cfg.ch * m) % cfg.norm_groups for m in cfg.ch_mult):
            raise ValueError(f"every level width ch * ch_mult must be a multiple of norm_groups {cfg.norm_groups} for "
                             f"GroupNorm, got ch={cfg.ch}, ch_mult={cfg.ch_mult}.")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        moments = 2 * cfg.z_channels if cfg.regularizer == 'kl' else cfg.z_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1) if cfg.use_quant_conv else None
        if cfg.regularizer == 'vq':
            self.quantize = VectorQuantizer(cfg.n_embed, cfg.z_channels, cfg.vq_beta)

    @property
    def downsample_factor(self):
        return 2 ** (len(self.cfg.ch_mult) - 1)

    def last_layer(self):
        """The decoder's output conv weight: LDM balances the GAN loss by gradient norms taken at this tensor."""
        return self.decoder.conv_out.weight

    def encode_moments(self, x):
        """The encoder and quant_conv: KL's (mean, logvar) moments (B, 2C, h, w), or VQ's latent before quantisation."""
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def encode(self, x, sample=True):
        """KL: a posterior sample (sample=True) or its mean, and the KL; VQ: the quantised z and the VQ loss."""
        h = self.encode_moments(x)
        if self.cfg.regularizer == 'kl':
            return diagonal_gaussian(h, sample)
        return self.quantize(h)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x, sample=True):
        z, reg_loss = self.encode(x, sample)
        return self.decode(z), z, reg_loss


class IdentityFirstStage(nn.Module):
    """LDM-1, diffusion on pixels (CompVis' IdentityFirstStage): encode and decode are the identity, f = 1, and the
    'latent' has the image's 3 channels (train_ldm.py --ae none)."""
    downsample_factor = 1

    def __init__(self, channels=3):
        super().__init__()
        self.cfg = SimpleNamespace(z_channels=channels, regularizer='none')

    def encode(self, x, sample=True):
        return x, torch.zeros((), device=x.device)

    def decode(self, z):
        return z


def encode_first_stage(ae, x, sample=True):
    """x (B, 3, [T,] H, W) in [-1, 1] -> the latent a diffusion model learns, unnormalised, as CompVis' LatentDiffusion
    takes it: KL, a posterior sample (or its mean, sample=False); VQ, the latent BEFORE quantisation, as
    VQModelInterface.encode returns it ("the quantization layer is absorbed into the decoder"); pixels, x itself."""
    if ae.cfg.regularizer == 'vq':
        return ae.encode_moments(x)
    return ae.encode(x, sample)[0]


def decode_first_stage(ae, z, force_not_quantize=False):
    """A diffusion model's latent (unnormalised) -> the image: VQ quantises it first, as CompVis' VQModelInterface.decode
    with force_not_quantize=False (True: decode z as it is, for LDMs trained on quantised latents); KL and pixels decode
    it as it is."""
    if ae.cfg.regularizer == 'vq' and not force_not_quantize:
        z = ae.quantize(z)[0]
    return ae.decode(z)

# ----------------------------------------------------------------------------------------------
# Video tensors: the per-frame view every 2D operator takes, and causal time pooling (the video encoder's, and the
# temporal SE operator's; video_model.py builds on these)

def to_frames(x):
    """(B, C, T, H, W) -> (B*T, C, H, W): what every 2D (per-frame) operation sees; images (B, C, H, W) pass as they are."""
    if x.dim() == 4:
        return x
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def from_frames(x, B):
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    return x.reshape(B, -1, *x.shape[1:]).transpose(1, 2)


def split_first(x, clip_start):
    """(first frame, the rest) of a chunk that starts the clip, whose first frame stands alone; (nothing, x) for a
    later chunk."""
    return (x[:, :, :1], x[:, :, 1:]) if clip_start else (x[:, :, :0], x)


def causal_time_pool(x, clip_start=True, factor=2):
    """Shrink time by `factor` as a causal video AE does: the first frame of a clip stands alone and the others are
    averaged in groups, (B,C,1+s*m,H,W) -> (B,C,1+m,H,W); a later chunk (B,C,s*m,H,W) -> (B,C,m,H,W). The encoder's
    halving (s = 2), and the temporal SE operator for x and z alike. That is what the authors' comment on their
    temporal_scale_factors intends; their released einops.reduce pattern keeps every frame, so it shrinks no time."""
    first, rest = split_first(x, clip_start)
    return torch.cat([first, rest.unflatten(2, (-1, factor)).mean(3)], dim=2)


# ----------------------------------------------------------------------------------------------
# Scale equivariance (SE), the regulariser of Skorokhodov et al. (ICML 2025), "Improving the Diffusability of
# Autoencoders": decoding a downsampled latent should give the downsampled image, D(down_s(E(x))) ~ down_s(x). It ties
# the latent's spectrum to the image's, so that the latent carries no more high frequency than the image it encodes.
# The authors' code is maybe_compute_scale_equiv_reg in snap-research/alphaflow (src/training/loss.py); every operator
# below says whether it is theirs; cli.SE_DOWNSAMPLING lists their names for the flags.


def se_downsample(t, factor, mode='bilinear'):
    """down_s of images (B, 3, H, W) and latents (B, C, H/f, W/f) alike; a video (B, C, T, H, W) frame by frame.
      'bilinear'     the authors' default ('bil'): F.interpolate(scale_factor=1/s, mode='bilinear', align_corners=True),
                     no antialiasing: the bilinear surface sampled on a grid that keeps the four corners;
      'mean'         the authors' 'mean': the average of every s x s block;
      'antialiased'  not the authors': a bilinear resize with antialiasing (a triangle filter s pixels wide).
    All three are linear and keep constants, so a per-channel affine map of z commutes with them."""
    if t.dim() == 5:
        return from_frames(se_downsample(to_frames(t), factor, mode), t.shape[0])
    if mode == 'bilinear':
        return F.interpolate(t, scale_factor=1 / factor, mode='bilinear', align_corners=True)
    if mode == 'mean':
        return F.avg_pool2d(t, factor)
    if mode == 'antialiased':
        return F.interpolate(t, scale_factor=1 / factor, mode='bilinear', antialias=True, align_corners=False)
    raise ValueError(f"unknown SE downsampling {mode!r}; use 'bilinear', 'mean' or 'antialiased'.")


def scale_equivariance_loss(ae, x, z, factor, distance, mode='bilinear', time_factor=1):
    """L_SE = d(down_s(x), D(down_s(z))), z = E(x) a posterior sample, with `distance` the reconstruction distance of the
    main term (L1 + LPIPS in train_ae.py, or L1 alone with --se_ignore_lpips, the authors' ignore_lpips), as the
    authors apply compute_rec_losses to both. time_factor > 1 also shrinks time in x and z (video). The discriminator
    never sees the small reconstructions. Returns (loss, D(down_s(z)))."""
    x_down, z_down = se_downsample(x, factor, mode), se_downsample(z, factor, mode)
    if time_factor > 1:
        x_down, z_down = causal_time_pool(x_down, factor=time_factor), causal_time_pool(z_down, factor=time_factor)
    x_rec_se = ae.decode(z_down)  # (B, 3, H/s, W/s), video (B, 3, T', H/s, W/s)
    return distance(x_down, x_rec_se), x_rec_se


# The block DCT: the paper's 8x8 block-DCT spectrum (spectrum.py), and the authors' two DCT-based alternatives to SE.

def dct_matrix(n, device=None, dtype=torch.float64):
    """Orthonormal DCT-II matrix D (n, n), so that X = D x and x = D^T X."""
    k = torch.arange(n, device=device, dtype=dtype)[:, None]  # frequency (row)
    i = torch.arange(n, device=device, dtype=dtype)[None, :]  # sample (column)
    D = torch.cos(math.pi * (2 * i + 1) * k / (2 * n))  # D[k, i] = a_k cos(pi (2i + 1) k / 2n)
    D[0] *= math.sqrt(1 / n)  # a_0 = sqrt(1/n)
    D[1:] *= math.sqrt(2 / n)  # a_k = sqrt(2/n), k > 0: rows of unit norm, hence D D^T = I
    return D


def block_dct(x, block=8):
    """2-D DCT-II of every block x block tile: x (..., H, W) -> (..., H//b, W//b, b, b), coefficient [u, v] = (vertical,
    horizontal) frequency. H and W are cropped to multiples of b at the bottom and right: a partial tile has no spectrum."""
    H, W = x.shape[-2] // block, x.shape[-1] // block
    if H == 0 or W == 0:
        raise ValueError(f"the block DCT needs images of at least {block}x{block} pixels, got {tuple(x.shape[-2:])}.")
    x = x[..., :H * block, :W * block]
    x = x.unflatten(-1, (W, block)).unflatten(-3, (H, block)).transpose(-3, -2)  # (..., H, W, b, b)
    D = dct_matrix(block, x.device, x.dtype)
    return D @ x @ D.T  # X = D x D^T


def block_idct(X):
    """Inverse of block_dct: X (..., H//b, W//b, b, b) -> (..., H', W') with H', W' the cropped size."""
    D = dct_matrix(X.shape[-1], X.device, X.dtype)
    x = D.T @ X @ D  # x = D^T X D
    return x.transpose(-3, -2).flatten(-2).flatten(-3, -2)  # (..., H, b, W, b) -> (..., H*b, W*b)


def zigzag(block=8):
    """The block^2 row-major indices u*b + v of a tile in JPEG zigzag order: anti-diagonals u + v = s in turn, walked
    with u rising on odd s and falling on even s, so frequency grows along the order (the authors' zigzag_indices)."""
    cells = sorted(((u, v) for u in range(block) for v in range(block)),
                   key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else -c[0]))
    return torch.tensor([u * block + v for u, v in cells])


def cut_dct_high_frequencies(x, block, cut_ratio):
    """Keep the first int((1 - cut_ratio) * b^2) zigzag coefficients of every b x b tile's DCT and zero the rest, as the
    authors' cut_dct2d_high_freqs(zigzag=True): the one low-pass of the project, for SE's DCT cut and Fig. 5's erasure.
    x (..., H, W); pixels beyond the last whole tile are left as they are (the authors need multiples of b)."""
    if not 0 <= cut_ratio <= 1:
        raise ValueError(f"the cut ratio must lie in [0, 1], got {cut_ratio}.")
    keep = int((1 - cut_ratio) * block * block)
    if keep == block * block:
        return x  # keeping every coefficient is the identity; skipping the round trip makes ratio 0 bitwise exact
    mask = torch.zeros(block * block, device=x.device, dtype=x.dtype)
    mask[zigzag(block)[:keep].to(x.device)] = 1
    x_low = block_idct(block_dct(x, block) * mask.view(block, block))
    if x_low.shape[-2:] == x.shape[-2:]:
        return x_low
    out = x.clone()
    out[..., :x_low.shape[-2], :x_low.shape[-1]] = x_low
    return out


def dct_cut_equivariance_loss(ae, x, z, cut_ratio, distance, block=8):
    """The authors' DCT-cut alternative to downsampling in SE: cut the same share of high frequencies from z, in tiles
    of b, and from x, in tiles of b*f (the same region of the image), and ask D(cut(z)) ~ cut(x). train_ae.py draws
    cut_ratio uniformly in [0, --se_max_cut] every step, as they do. Returns (loss, D(cut(z)))."""
    f = x.shape[-1] // z.shape[-1]
    x_rec = ae.decode(cut_dct_high_frequencies(z, block, cut_ratio))
    return distance(cut_dct_high_frequencies(x, block * f, cut_ratio), x_rec), x_rec


def latent_hf_penalty(z, block=8, power=2.0):
    """The authors' separate high-frequency penalty on the latents (reg_dc_dct2d_high_freqs): the amplitudes |X_uv| of
    every b x b tile's DCT weighted by ((u + v) / (b - 1))^p / 4 and averaged over all of a sample's coefficients, (B,).
    0 for a constant latent (it has only DC, whose weight is 0), and larger the higher its energy sits."""
    amplitude = block_dct(z, block).abs()  # (B, C, [T,] H/b, W/b, b, b)
    u = torch.linspace(0, 1, block, device=z.device, dtype=amplitude.dtype)  # u / (b - 1)
    weight = (u[:, None] + u[None, :] + 1e-16).pow(power) / 4  # ((u + v) / (b - 1))^p / 4, (b, b)
    return (amplitude * weight).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# The PatchGAN discriminator and the adversarial loss of LDM

class NLayerDiscriminator(nn.Module):
    """PatchGAN of pix2pix (Isola et al. 2017) as used by LDM: 4x4 convs, LeakyReLU(0.2); every output logit judges
    one overlapping patch of the input (70x70 pixels for n_layers=3). logits (B, 1, H/2^n - 2, W/2^n - 2)."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_next = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last two convs keep the resolution and only widen the patch
            # no conv bias: BatchNorm's own shift follows (LDM's norm)
            layers += [nn.Conv2d(c, c_next, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_next),
                       nn.LeakyReLU(0.2, True)]
            c = c_next
        layers += [nn.Conv2d(c, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN / pix2pix init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)


def adaptive_gan_weight(rec_loss, g_loss, last_layer, pixels, max_weight=1e4):
    """LDM's balance of the adversarial term: lambda = ||grad_w L_rec|| / (||grad_w L_G|| + 1e-4) at the decoder's last
    layer w, clamped to [0, max_weight]. LDM's L_rec is summed over the 3HW values of an image; ours is their mean, so
    our lambda is LDM's divided by `pixels` = 3HW, and so is the clamp: LDM's 1e4 is 1e4 / 3HW here (0.051 at 256^2)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight / pixels).detach()


def hinge_d_loss(logits_real, logits_fake):
    """L_D = 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real, logits_fake):
    """The original GAN's discriminator loss (LDM eq. 3's log D(x) + log(1 - D(x_rec)), negated) on logits, as taming's
    vanilla_d_loss: L_D = 0.5 * (E[softplus(-D(x))] + E[softplus(D(x_rec))]), softplus(-l) = -log sigmoid(l). The
    generator's loss stays -E[D(x_rec)] under either, as in taming's VQLPIPSWithDiscriminator."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISC_LOSSES = {'hinge': hinge_d_loss, 'vanilla': vanilla_d_loss}  # train_ae.py --disc_loss, taming's disc_loss


def pixel_loss(x, x_rec, rec_loss='l1'):
    """The pixel term of L_rec, averaged over pixels: |x - D(z)| ('l1', LDM's and taming's default) or (x - D(z))^2
    ('l2', LDM eq. 1's L_rec as an MSE; taming's pixelloss 'l2')."""
    if rec_loss not in ('l1', 'l2'):  # cli.REC_LOSSES, the flag's choices
        raise ValueError(f"unknown reconstruction loss {rec_loss!r}; use 'l1' or 'l2'.")
    return ((x - x_rec).abs() if rec_loss == 'l1' else (x - x_rec) ** 2).mean()
