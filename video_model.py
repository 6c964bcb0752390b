"""
The causal 3D video autoencoder of CogVideoX (Yang et al. 2024): VideoAEConfig, its presets (a tiny one for CPUs and
CogVideoX's own) and VideoAutoencoder. An image is a 1-frame video, so the same model encodes both; the SE loss and
the KL regulariser are the image autoencoder's (model.py), weights.py loads CogVideoX's public weights into it.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ConvAEConfig, causal_time_pool, diagonal_gaussian, from_frames, split_first, to_frames

# ----------------------------------------------------------------------------------------------
# Causal 3D video autoencoder (the VAE of CogVideoX, Yang et al. 2024)
#
# x (B,3,T,H,W) in [-1,1] with T = 1 + 4k -> z (B,z,1+k,H/f,W/f) -> x_rec (B,3,T,H,W). Every 3D conv is causal in time
# (it sees the current and the two previous frames; the first frame is repeated into the past), and time is halved
# by averaging pairs of frames with the first frame kept apart, so an image is a 1-frame video (1 -> 1 latent frame)
# and the same model encodes both. Long clips are encoded in temporal chunks that hand each conv its past frames.
# Module names follow the image AE above; diffusers' AutoencoderKLCogVideoX layout is renamed on load
# (weights.load_ae_state_dict). CogVideoX's VAE has no attention block, and its decoder norms are conditioned on z
# (SpatialNorm3d); we keep both so its public weights load as they are.

@dataclass
class VideoAEConfig(ConvAEConfig):
    ch_mult: tuple = (1, 2, 2, 4)  # spatial factor f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 3
    z_channels: int = 16
    use_quant_conv: bool = False   # 1x1x1 convs on either side of the latent (CogVideoX has none)
    temporal_levels: int = 2       # the first encoder levels (last decoder levels) also halve (double) time: 4x
    norm: str = 'frame'            # GroupNorm statistics per frame (strictly causal) | 'clip': over the whole chunk
    chunk_frames: int = 8          # encoding: input frames per temporal chunk after the first (CogVideoX: 8)
    chunk_latents: int = 2         # decoding: latent frames per chunk after the first (CogVideoX: 2)
    regularizer = 'kl'             # not a field: the video AE is KL-regularised only (as the image AE's default)

VIDEO_AE_PRESETS = {
    # f4 in space, 4x in time, 16 latent channels (12x compression, as the image `tiny`): CPU tests and smoke runs
    'tiny': VideoAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, norm_groups=8),
    # the image `mini` in 3D: f4 in space, 4x in time, 16 latent channels as CogVideoX, 4 channels per norm group (1.9M
    # parameters): reproduce.py's miniature of CogVideoX-AE (32 px x 17 frames -> 16 x 5 x 8 x 8 latents, 10x fewer
    # numbers than pixels), with no shortcut from pixels to the latent
    'mini': VideoAEConfig(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=16, norm_groups=4),
    # CogVideoX-2b/5b's VAE (8x8 in space, 4x in time, z=16). Public latent scale: diffusion runs on z * 1.15258426
    # (2b) or z * 0.7 (5b). Weights: huggingface.co/THUDM/CogVideoX-2b, vae/diffusion_pytorch_model.safetensors.
    # Its GroupNorms take statistics over the whole chunk, so it is causal chunk by chunk, not frame by frame.
    'cogvideox': VideoAEConfig(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=3, z_channels=16, norm='clip'),
}


class CausalConv3d(nn.Module):
    """k x k x k conv, causal in time: the past is padded with the previous chunk's last k-1 frames (from `cache`), or
    at the start of a clip with k-1 copies of the first frame; space is zero-padded. T frames in, T frames out."""

    def __init__(self, in_channels, out_channels, k=3):
        super().__init__()
        self.k = k
        self.conv = nn.Conv3d(in_channels, out_channels, k, padding=(0, k // 2, k // 2))

    def forward(self, x, cache=None):  # x (B, C, T, H, W)
        past = cache.get(self) if cache is not None else None
        if past is None:
            past = x[:, :, :1].expand(-1, -1, self.k - 1, -1, -1)  # repeat the first frame into the past
        x = torch.cat([past, x], dim=2)
        if cache is not None:
            cache[self] = x[:, :, x.shape[2] - (self.k - 1):]  # what the next chunk sees as its past
        return self.conv(x)


class Norm3d(nn.GroupNorm):
    """GroupNorm of a video: statistics per frame (causal) or, as CogVideoX, over all frames of the chunk."""

    def __init__(self, channels, cfg):
        super().__init__(num_groups=cfg.norm_groups, num_channels=channels, eps=1e-6, affine=True)
        self.per_frame = cfg.norm == 'frame'

    def forward(self, x, z=None):  # z: unused, so that Norm3d and SpatialNorm3d are called alike
        return from_frames(super().forward(to_frames(x)), x.shape[0]) if self.per_frame else super().forward(x)


class SpatialNorm3d(nn.Module):
    """The decoder's norm in CogVideoX (MoVQ's spatially conditioned norm, Zheng et al. 2022):
    norm(h) * conv_y(z') + conv_b(z'), with z' the latent resized (nearest) to h's (T, H, W); the first latent frame
    stands for the first frame alone."""

    def __init__(self, channels, cfg):
        super().__init__()
        self.norm = Norm3d(channels, cfg)
        self.conv_y = nn.Conv3d(cfg.z_channels, channels, 1)
        self.conv_b = nn.Conv3d(cfg.z_channels, channels, 1)

    def forward(self, h, z):
        T, H, W = h.shape[2:]
        if T > 1 and T % 2 == 1:
            z = torch.cat([F.interpolate(z[:, :, :1], size=(1, H, W)), F.interpolate(z[:, :, 1:], size=(T - 1, H, W))], 2)
        else:
            z = F.interpolate(z, size=(T, H, W))
        return self.norm(h) * self.conv_y(z) + self.conv_b(z)


class ResnetBlock3d(nn.Module):
    """x + conv2(dropout(silu(norm2(conv1(silu(norm1(x))))))) with causal 3D convs; decoder norms see z."""

    def __init__(self, in_channels, out_channels, cfg, conditioned=False):
        super().__init__()
        def norm(c):
            return SpatialNorm3d(c, cfg) if conditioned else Norm3d(c, cfg)
        self.norm1 = norm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.nin_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, cache=None, z=None):
        h = self.conv1(F.silu(self.norm1(x, z)), cache)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, z))), cache)
        return self.nin_shortcut(x) + h


class Downsample3d(nn.Module):
    """Time (if compress_time): frames 1+2j and 2+2j are averaged, frame 0 kept apart (T = 1 + 2m -> 1 + m).
    Space: the image AE's stride-2 3x3 conv, per frame."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x, clip_start=True):
        if self.compress_time:
            x = causal_time_pool(x, clip_start)
        return from_frames(self.conv(F.pad(to_frames(x), (0, 1, 0, 1))), x.shape[0])


class Upsample3d(nn.Module):
    """Time (if compress_time): every frame but the first is repeated (1 + m -> 1 + 2m). Space: nearest x2 + 3x3 conv."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, clip_start=True):
        if self.compress_time:
            first, rest = split_first(x, clip_start)
            x = torch.cat([first, rest.repeat_interleave(2, dim=2)], dim=2)
        h = F.interpolate(to_frames(x), scale_factor=2.0, mode='nearest')
        return from_frames(self.conv(h), x.shape[0])


class MidBlock3d(nn.Module):
    """Two ResnetBlock3d at the lowest resolution (CogVideoX has no attention here)."""

    def __init__(self, channels, cfg, conditioned=False):
        super().__init__()
        self.block_1 = ResnetBlock3d(channels, channels, cfg, conditioned)
        self.block_2 = ResnetBlock3d(channels, channels, cfg, conditioned)

    def forward(self, x, cache=None, z=None):
        return self.block_2(self.block_1(x, cache, z), cache, z)


class Encoder3d(nn.Module):
    """x (B, 3, T, H, W) -> moments (B, 2*z_channels, 1 + (T-1)/4, H/f, W/f)."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = CausalConv3d(cfg.in_channels, cfg.ch)
        self.down = nn.ModuleList()
        c = cfg.ch
        for i_level, width in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock3d(c, width, cfg))
                c = width
            if i_level != len(widths) - 1:
                level.downsample = Downsample3d(c, compress_time=i_level < cfg.temporal_levels)
            self.down.append(level)
        self.mid = MidBlock3d(c, cfg)
        self.norm_out = Norm3d(c, cfg)
        self.conv_out = CausalConv3d(c, 2 * cfg.z_channels)

    def forward(self, x, cache=None):
        clip_start = not cache  # a chunk without a past starts the clip
        h = self.conv_in(x, cache)
        for i_level, level in enumerate(self.down):
            for block in level.block:
                h = block(h, cache)
            if i_level != len(self.down) - 1:
                h = level.downsample(h, clip_start)
        h = self.mid(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder3d(nn.Module):
    """z (B, z_channels, t, h, w) -> x_rec (B, 3, 1 + 4(t-1), h*f, w*f); every norm is conditioned on z."""

    def __init__(self, cfg):
        super().__init__()
        zc = cfg.z_channels
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c = widths[-1]
        self.conv_in = CausalConv3d(zc, c)
        self.mid = MidBlock3d(c, cfg, conditioned=True)
        up = []  # built coarse to fine, stored so that up[i_level] is level i_level, as in the image AE
        for i_level in reversed(range(len(widths))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock3d(c, widths[i_level], cfg, conditioned=True))
                c = widths[i_level]
            if i_level != 0:  # the coarsest temporal_levels upsamplers also double time
                level.upsample = Upsample3d(c, compress_time=len(widths) - 1 - i_level < cfg.temporal_levels)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = SpatialNorm3d(c, cfg)
        self.conv_out = CausalConv3d(c, cfg.out_ch)

    def forward(self, z, cache=None):
        clip_start = not cache
        h = self.mid(self.conv_in(z, cache), cache, z)
        for i_level in reversed(range(len(self.up))):
            for block in self.up[i_level].block:
                h = block(h, cache, z)
            if i_level != 0:
                h = self.up[i_level].upsample(h, clip_start)
        return self.conv_out(F.silu(self.norm_out(h, z)), cache)


def temporal_chunks(x, first, size):
    """Frames [0, first), then `size` at a time: the chunks CogVideoX encodes (first = 1 + 8) and decodes (1 + 2)."""
    return [x[:, :, :first]] + [x[:, :, s:s + size] for s in range(first, x.shape[2], size)]


class VideoAutoencoder(nn.Module):
    """encode: x (B,3,T,H,W) in [-1,1] with T = 1 + 4k -> (z (B,z,1+k,H/f,W/f), KL); decode: z -> x_rec (B,3,T,H,W).
    An image (B,3,H,W) is a 1-frame video: it gives z (B,z,H/f,W/f) and decodes back to (B,3,H,W)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.norm not in ('frame', 'clip'):
            raise ValueError(f"unknown video AE norm {cfg.norm!r}; use 'frame' or 'clip'.")
        if any((cfg.ch * m) % cfg.norm_groups for m in cfg.ch_mult):
            raise ValueError(f"every level width ch * ch_mult must be a multiple of norm_groups={cfg.norm_groups} for "
                             f"GroupNorm, got ch={cfg.ch}, ch_mult={cfg.ch_mult}.")
        if not 0 <= cfg.temporal_levels < len(cfg.ch_mult) or cfg.chunk_frames % 2 ** cfg.temporal_levels:
            raise ValueError(f"temporal_levels must be below the number of levels ({len(cfg.ch_mult)}) and chunk_frames "
                             f"({cfg.chunk_frames}) a multiple of the temporal factor 2^temporal_levels.")
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.decoder = Decoder3d(cfg)
        moments = 2 * cfg.z_channels
        self.quant_conv = nn.Conv3d(moments, moments, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv3d(cfg.z_channels, cfg.z_channels, 1) if cfg.use_quant_conv else None

    @property
    def downsample_factor(self):
        return 2 ** (len(self.cfg.ch_mult) - 1)

    @property
    def temporal_factor(self):
        return 2 ** self.cfg.temporal_levels

    def last_layer(self):
        return self.decoder.conv_out.conv.weight

    def encode(self, x, sample=True):
        """A posterior sample (or its mean) and the KL, encoding 1 + chunk_frames frames, then chunk_frames at a time."""
        if x.dim() == 4:  # an image: a 1-frame video
            z, kl = self.encode(x[:, :, None], sample)
            return z[:, :, 0], kl
        if (x.shape[2] - 1) % self.temporal_factor:
            raise ValueError(f"a clip needs 1 + {self.temporal_factor}k frames for a temporal factor of "
                             f"{self.temporal_factor}, got {x.shape[2]}.")
        cache = {}  # each causal conv's last input frames, handed from one chunk to the next
        chunks = temporal_chunks(x, 1 + self.cfg.chunk_frames, self.cfg.chunk_frames)
        h = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return diagonal_gaussian(h, sample)

    def decode(self, z):
        """Decodes 1 + chunk_latents latent frames, then chunk_latents at a time."""
        if z.dim() == 4:
            return self.decode(z[:, :, None])[:, :, 0]
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        cache = {}
        chunks = temporal_chunks(z, 1 + self.cfg.chunk_latents, self.cfg.chunk_latents)
        return torch.cat([self.decoder(chunk, cache) for chunk in chunks], dim=2)

    def forward(self, x, sample=True):
        z, kl = self.encode(x, sample)
        return self.decode(z), z, kl
