"""
The second stage's networks, the denoiser eps_theta(z_t, t, c) of latent diffusion and the encoder tau_theta of its
conditions: the LDM UNet (openaimodel's ResBlocks, plain self-attention where there is no context, SpatialTransformer
cross-attention where there is one, c_concat channels), DiT with adaLN-Zero and the video DiT, and their presets
(build_backbone). Parameter names follow the original checkpoints, so public weights load as they are.
"""
import functools
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Upsample

# ----------------------------------------------------------------------------------------------
# Diffusion backbones: UNet and DiT
# Both backbones map (x_t (B, C, H, W), t (B,) long in [0, T), y (B,) long or None) -> (B, C_out, H, W), the raw
# network output that diffusion.py reads (eps or v, then C variance values when learn_sigma); the UNet also takes
# concat and context (see UNet). Class id num_classes is the null class of classifier-free guidance; in train mode
# LabelEmbedder swaps each label for it with probability class_dropout_prob.

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal features of (possibly fractional) timesteps, as in ADM / LDM / DiT: t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # w_i = max_period^(-i/half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [cos(t w), sin(t w)]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> 2-layer MLP (DiT's TimestepEmbedder; the UNet uses it with LDM's widths)."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class label -> vector. Row num_classes is the learned null ("no label") embedding of classifier-free
    guidance; it exists only when labels are dropped during training (class_dropout_prob > 0), as in DiT."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, y):  # (B,) -> (B, hidden_size)
        if self.training and self.dropout_prob > 0:  # token drop: train the unconditional model jointly (CFG)
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


def check_labels(y, num_classes):
    """One clear sentence when y does not fit the model's conditioning (a user error, not a torch traceback)."""
    if num_classes == 0 and y is not None:
        raise ValueError("this backbone is unconditional (num_classes=0) but class labels y were given; pass y=None.")
    if num_classes > 0 and y is None:
        raise ValueError(f"this backbone is class-conditional ({num_classes} classes) but y is None; pass class ids.")


# ---- LDM UNet (Rombach et al. 2022): CompVis' openaimodel.py UNetModel and attention.py SpatialTransformer, with
# their module names ----

def zero_module(module):
    """Zero-init so that a residual branch starts as the identity and the network starts predicting 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, the time embedding, GroupNorm -> SiLU -> dropout -> zero-init conv, plus the input.
    use_scale_shift_norm: FiLM after the second GroupNorm (ADM); otherwise the embedding is added before it (most LDM
    configs). up / down (LDM's resblock_updown) resample h and x by nearest x2 / 2x2 mean before the first conv."""

    def __init__(self, in_ch, out_ch, emb_dim, num_groups, dropout=0.0, use_scale_shift_norm=True, up=False,
                 down=False):
        super().__init__()
        self.use_scale_shift_norm, self.up, self.down = use_scale_shift_norm, up, down
        self.in_layers = nn.Sequential(nn.GroupNorm(num_groups, in_ch), nn.SiLU(),
                                       nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, (1 + use_scale_shift_norm) * out_ch))
        self.out_layers = nn.Sequential(nn.GroupNorm(num_groups, out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):  # x (B, in_ch, H, W), emb (B, emb_dim)
        h = self.in_layers[:-1](x)
        if self.up or self.down:  # openaimodel's Upsample / Downsample with use_conv=False, on both paths
            h, x = ((F.interpolate(v, scale_factor=2.0, mode="nearest") if self.up else F.avg_pool2d(v, 2))
                    for v in (h, x))
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)  # FiLM: GN(h) (1 + scale) + shift
        else:
            h = self.out_layers(h + e)  # GN(h + emb)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, where the UNet has no context: x + proj_out(attention(qkv(
    GN(x)))). The fused qkv's output rows are split head by head, then into q, k, v (QKVAttentionLegacy)."""

    def __init__(self, ch, heads, num_groups):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(num_groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = zero_module(nn.Conv1d(ch, ch, 1))

    def forward(self, x):  # (B, ch, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x.flatten(2))).view(B, self.heads, -1, H * W).transpose(2, 3)  # (B, heads, HW, 3d)
        h = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))  # softmax(q k^T / sqrt(d)) v, (B, heads, HW, d)
        return x + self.proj_out(h.transpose(2, 3).reshape(B, C, H * W)).view(B, C, H, W)


class CrossAttention(nn.Module):
    """Multi-head attention: queries from x (B, N, dim), keys/values from context (B, M, context_dim) or x itself;
    mask (B, M) bool, True for a real token (at least one per sample): padding gets no weight in the softmax."""

    def __init__(self, dim, heads, dim_head, context_dim=None):
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x, context=None, mask=None):
        context = x if context is None else context
        B, N, M = x.shape[0], x.shape[1], context.shape[1]
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)  # (B, heads, N, dim_head)
        k = self.to_k(context).view(B, M, self.heads, -1).transpose(1, 2)  # (B, heads, M, dim_head)
        v = self.to_v(context).view(B, M, self.heads, -1).transpose(1, 2)
        mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M), broadcast over heads and queries
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q k^T / sqrt(dim_head)) v
        return self.to_out(h.transpose(1, 2).reshape(B, N, -1))


class GEGLU(nn.Module):
    """a * gelu(g), (a, g) = proj(x) (Shazeer 2020): the first half of the transformer blocks' MLP."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x):
        a, g = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(g)


class BasicTransformerBlock(nn.Module):
    """LDM's transformer block: self-attention, cross-attention to the context, GEGLU MLP, each pre-LayerNorm and
    residual."""

    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, heads, dim_head)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, heads, dim_head, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), nn.Module()
        self.ff.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))  # LDM's FeedForward

    def forward(self, x, context, mask=None):  # x (B, N, dim)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff.net(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Cross-attention on a feature map, where the UNet has a context: GroupNorm -> 1x1 conv -> `depth` transformer
    blocks on the H*W tokens -> zero-init 1x1 conv, added to the input."""

    def __init__(self, ch, heads, num_groups, context_dim, depth=1):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, heads, ch // heads, context_dim)
                                                 for _ in range(depth)])
        self.proj_out = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x, context, mask=None):  # x (B, ch, H, W), context (B, M, context_dim), mask (B, M)
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, ch)
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class TimestepEmbedSequential(nn.Sequential):
    """A UNet stage: passes the time embedding to ResBlocks and the context to SpatialTransformers."""

    def forward(self, x, emb, context=None, mask=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The LDM denoiser, with the config keys of LDM's YAMLs. attention_resolutions are downsampling rates (rate r:
    attention on the H/r x W/r maps; the middle block always has it): an AttentionBlock, or with a context_dim a
    SpatialTransformer of transformer_depth blocks. Heads: num_heads, or ch // num_head_channels where that is set.
    Conditioning, as CompVis' DiffusionWrapper feeds it: concat (B, cond_channels, H, W) is stacked onto x_t, and
    context (B, L, context_dim) is cross-attended (context_mask (B, L): True = a real token). A class-conditional
    model (num_classes > 0) makes its context from y: one token, the class embedding (LDM's ClassEmbedder)."""

    def __init__(self, in_channels=4, model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                 attention_resolutions=(2, 4, 8), num_heads=-1, num_head_channels=32, use_scale_shift_norm=True,
                 resblock_updown=False, transformer_depth=1, context_dim=None, cond_channels=0, num_classes=0,
                 class_dropout_prob=0.1, learn_sigma=False, dropout=0.0, num_groups=32):
        super().__init__()
        self.in_channels, self.num_classes, self.learn_sigma = in_channels, num_classes, learn_sigma
        self.cond_channels, self.context_dim = cond_channels, context_dim
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        heads = {c: num_heads if num_head_channels == -1 else c // max(num_head_channels, 1)
                 for c in {model_channels * m for m in channel_mult}}
        for c, n in heads.items():
            if c % num_groups or n < 1 or c % n:
                raise ValueError(f"UNet width {c} must divide into num_groups={num_groups} groups and into heads "
                                 f"(num_heads={num_heads}, num_head_channels={num_head_channels}); change them.")
        if num_classes > 0 and context_dim is None:
            raise ValueError("a class-conditional UNet feeds its label as a context token; give it a context_dim.")
        emb_dim = 4 * model_channels
        self.t_embedder = TimestepEmbedder(emb_dim, frequency_embedding_size=model_channels)
        self.y_embedder = LabelEmbedder(num_classes, context_dim, class_dropout_prob) if num_classes > 0 else None

        def res(cin, cout, **updown):
            return ResBlock(cin, cout, emb_dim, num_groups, dropout, use_scale_shift_norm, **updown)

        def attn(c):
            if context_dim is None:
                return AttentionBlock(c, heads[c], num_groups)
            return SpatialTransformer(c, heads[c], num_groups, context_dim, transformer_depth)

        conv_in = nn.Conv2d(in_channels + cond_channels, model_channels, 3, padding=1)
        # concat's input channels start at zero: loaded from an unconditional model, it computes the same function
        nn.init.zeros_(conv_in.weight.data[:, in_channels:])
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_in)])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                # openaimodel's Downsample, 'op': a stride-2 3x3 conv padded on all sides (the AE's pads right, bottom)
                down = nn.Sequential(OrderedDict(op=nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
                self.input_blocks.append(TimestepEmbedSequential(res(ch, ch, down=True) if resblock_updown else down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):  # one more than on the way down: the downsampling's skip
                layers = [res(ch + chans.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:  # the AE's Upsample is openaimodel's: nearest x2, 3x3 conv
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(num_groups, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

    def forward(self, x, t, y=None, concat=None, context=None, context_mask=None, tokens=None):
        """x (B, C, H, W), t (B,), y (B,) class ids, concat (B, cond_channels, H, W), context (B, L, context_dim),
        context_mask (B, L) bool, tokens (B, L) long -> (B, out_channels, H, W). tokens: a caption or a layout, which
        the model's tau_theta (cond_stage_model, trained with it) turns into the context (learned_conditioning)."""
        check_labels(y, self.num_classes)
        if tokens is not None:
            context = learned_conditioning(self, {'tokens': tokens, 'context_mask': context_mask})['context']
        if x.shape[-2] % self.downsample_factor or x.shape[-1] % self.downsample_factor:
            raise ValueError(f"UNet input {tuple(x.shape[-2:])} must be divisible by {self.downsample_factor} "
                             f"(2 ** (len(channel_mult) - 1)); use a latent size that is.")
        if y is not None and context is not None:
            raise ValueError("a class-conditional UNet makes its context from y; pass y or context, not both.")
        context = self.y_embedder(y)[:, None, :] if y is not None else context  # the class token, (B, 1, context_dim)
        got = (None if concat is None else tuple(concat.shape[1:]), None if context is None else context.shape[-1])
        if got != ((self.cond_channels, *x.shape[-2:]) if self.cond_channels else None, self.context_dim):
            raise ValueError(f"this UNet takes concat (B, {self.cond_channels}, H, W) on x_t's grid and context (B, L, "
                             f"{self.context_dim}) (none where 0 / None), but got {got[0]} and width {got[1]}.")
        emb = self.t_embedder(t)  # (B, 4 * model_channels)
        h = x if concat is None else torch.cat([x, concat], dim=1)  # DiffusionWrapper's cat([x] + c_concat, 1)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, context, context_mask)
            hs.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)  # skip connection
        return self.out(h)


def learned_conditioning(model, cond):
    """CompVis' get_learned_conditioning: a condition dict with 'tokens' (B, L) -> the same with 'context' (B, L, d) =
    tau_theta(tokens) in their place, the padding mask 'context_mask' kept for the UNet's cross-attention. A sampler
    calls it once, so that the encoder does not run again at every step."""
    if cond is None or 'tokens' not in cond:
        return cond
    if getattr(model, 'cond_stage_model', None) is None:
        raise ValueError("this model has no text or layout encoder (tau_theta); it was not trained on --task text or "
                         "layout, so give it no tokens.")
    cond = dict(cond)
    cond['context'] = model.cond_stage_model(cond.pop('tokens'), cond.get('context_mask'))
    return cond


# tau_theta's sizes, by the UNet preset it serves: the BERTEmbedder of LDM's configs (n_embed, n_layer; x-transformers'
# 8 heads of 64), LDM-KL-8-G's (txt2img-1p4B) for presets that name none; a small one for tiny, as wide as its context
TEXT_ENCODER_PRESETS = {
    "txt2img-1p4B": dict(dim=1280, depth=32),
    "text2img256": dict(dim=640, depth=32),
    "layout2img-openimages256": dict(dim=512, depth=16),
    "tiny": dict(dim=64, depth=2, heads=4, dim_head=16),
}

# The project's presets: ldm-64 is the paper's LDM-4 (64x64 latents of an f4 AE, attention on the 32, 16 and 8 px maps)
# with the seed's FiLM (LDM's config adds the embedding: ldm-4); ldm-32 attends on the same map sizes of the 32x32
# latents of f8 AEs (SD-VAE, FLUX.1-AE); tiny is for CPU tests. The others are CompVis' configs key for key
# (configs/latent-diffusion/*.yaml, models/ldm/*/config.yaml). Where LDM's in_channels counts a concatenated condition
# it is cond_channels here (bsr_sr 3 + 3, inpainting_big 3 + 4, semantic_synthesis256 3 + 3); context_dim is the
# width of the class token (cin) or of the text / layout encoder.
_LDM = dict(num_res_blocks=2, use_scale_shift_norm=False)  # UNetModel's default: the embedding is added
_LDM4 = dict(_LDM, model_channels=224, channel_mult=(1, 2, 3, 4), attention_resolutions=(2, 4, 8), num_head_channels=32)
_HEADS8 = dict(num_heads=8, num_head_channels=-1)
UNET_PRESETS = {
    "ldm-64": dict(_LDM4, use_scale_shift_norm=True),
    "ldm-32": dict(_LDM4, use_scale_shift_norm=True, attention_resolutions=(1, 2, 4)),
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), context_dim=64),
    "small": dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(2, 4),
                  context_dim=64),  # 4.95M: 6.5x tiny, for CPU miniatures that need more capacity (not CompVis')
    "ldm-4": _LDM4,  # {celebahq,ffhq,lsun_bedrooms}-ldm-vq-4.yaml = models/ldm/{celeba256,ffhq256,lsun_beds256}
    "lsun_churches-ldm-kl-8": dict(_LDM, **_HEADS8, model_channels=192, channel_mult=(1, 2, 2, 4, 4),
                                   attention_resolutions=(1, 2, 4, 8), use_scale_shift_norm=True, resblock_updown=True),
    "cin-ldm-vq-f8": dict(_LDM, model_channels=256, channel_mult=(1, 2, 4), attention_resolutions=(1, 2, 4),
                          num_head_channels=32, context_dim=512),  # = models/ldm/cin256
    "cin256-v2": dict(_LDM4, model_channels=192, channel_mult=(1, 2, 3, 5), num_heads=1, num_head_channels=-1,
                      context_dim=512),
    "txt2img-1p4B": dict(_LDM, **_HEADS8, model_channels=320, channel_mult=(1, 2, 4, 4),
                         attention_resolutions=(1, 2, 4), context_dim=1280),
    "text2img256": dict(_LDM4, model_channels=192, channel_mult=(1, 2, 3, 5), context_dim=640),
    "layout2img-openimages256": dict(_LDM4, model_channels=128, transformer_depth=3, context_dim=512),
    "bsr_sr": dict(_LDM, model_channels=160, channel_mult=(1, 2, 2, 4), attention_resolutions=(8, 16),
                   num_head_channels=32),
    "inpainting_big": dict(_LDM4, **_HEADS8, model_channels=256, resblock_updown=True),
    "semantic_synthesis256": dict(_LDM, **_HEADS8, model_channels=128, channel_mult=(1, 4, 8),
                                  attention_resolutions=(8, 16, 32)),
}


# ---- tau_theta: the transformer that encodes tokens (a caption or a layout) for cross-attention (LDM Sec. 3.3) ----

class TextEncoderBlock(nn.Module):
    """A pre-LN transformer encoder block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU (x-transformers' Encoder,
    diffusers' LDMBertEncoderLayer)."""

    def __init__(self, dim, heads, dim_head, mlp_ratio=4):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), CrossAttention(dim, heads, dim_head)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x, mask=None):  # x (B, L, dim), mask (B, L) bool or None
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TextEncoder(nn.Module):
    """tau_theta of LDM's text-to-image (and layout-to-image) models, trained jointly with the UNet: LDM's BERTEmbedder,
    i.e. x-transformers' TransformerWrapper(Encoder) (diffusers ports it as LDMBertModel; weights.ldmbert_to_ours maps
    its keys). Token embeddings plus learned positions, depth pre-LN blocks, a final LayerNorm: tokens (B, L) ->
    (B, L, dim), the context the UNet cross-attends to. LDM-KL-8-G's is dim 1280, depth 32, 8 heads of 64."""

    def __init__(self, vocab_size, max_length=77, dim=1280, depth=32, heads=8, dim_head=64):
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_length, dim)  # learned absolute positions
        self.blocks = nn.ModuleList(TextEncoderBlock(dim, heads, dim_head) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens, mask=None):  # tokens (B, L) long, L <= max_length; mask (B, L) bool -> (B, L, dim)
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"{tokens.shape[1]} tokens are more than this encoder's {self.max_length} positions; "
                             f"tokenize with max_length {self.max_length}.")
        x = self.token_embedding(tokens) + self.position_embedding.weight[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


# ---- DiT (Peebles & Xie 2023), parameter names of facebookresearch/DiT models.py ----

def modulate(x, shift, scale):  # adaLN: LN(x) * (1 + scale(c)) + shift(c), per token
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def get_1d_sincos_pos_embed(dim, pos):
    """pos (N,) -> (N, dim) float64: [sin(pos w), cos(pos w)], w_i = 10000^(-i/(dim/2)) (MAE / DiT)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim, grid_h, grid_w):
    """MAE / DiT fixed 2D sin-cos position embedding -> (grid_h * grid_w, embed_dim), row-major over the patches.
    The first half of the channels encodes the column (w) index and the second half the row index, as the official
    code does (its meshgrid puts w first)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([get_1d_sincos_pos_embed(embed_dim // 2, cols.flatten()),
                     get_1d_sincos_pos_embed(embed_dim // 2, rows.flatten())], dim=1)
    return emb.float()


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (timm's PatchEmbed as used by DiT)."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x):  # (B, C, H, W) -> (B, H/p * W/p, hidden_size)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """timm's Attention as used by DiT: fused qkv projection with bias, scaled dot-product attention, projection."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, N, dim)
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def frame_attention(attn, x, num_frames, axis):
    """Self-attention over a video's tokens x (B, N, D), N = num_frames * S in frame-major order: over all N tokens
    ('full'), within each frame ('spatial': B * T groups of S tokens) or across frames at each patch position
    ('temporal': B * S groups of T tokens), the factorised attention of Latte (Ma et al. 2024)."""
    if axis == "full":
        return attn(x)
    B, N, D = x.shape
    T, S = num_frames, N // num_frames
    if axis == "spatial":
        return attn(x.reshape(B * T, S, D)).reshape(B, N, D)
    x = x.reshape(B, T, S, D).transpose(1, 2).reshape(B * S, T, D)  # (B * S, T, D)
    return attn(x).reshape(B, S, T, D).transpose(1, 2).reshape(B, N, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: the conditioning c regresses shift, scale and a gate for each branch.
    An image DiT attends over all tokens; VideoDiT sets num_frames and attn_axis for factorised attention."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.num_frames, self.attn_axis = 1, "full"

    def forward(self, x, c):  # x (B, N, D), c (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa.unsqueeze(1) * frame_attention(self.attn, h, self.num_frames, self.attn_axis)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):  # (B, N, D) -> (B, N, p * p * out_channels)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer. input_size is the latent size, an int or (H, W) (the position embedding is fixed to it).
    With learn_sigma the output has 2 * in_channels channels: eps (or v) first, then the variance values."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        H, W = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if H % patch_size or W % patch_size or hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"DiT needs input_size {(H, W)} divisible by patch_size {patch_size} and hidden_size "
                             f"{hidden_size} divisible by num_heads {num_heads} and by 4; pick sizes that divide.")
        self.input_size, self.patch_size, self.in_channels = (H, W), patch_size, in_channels
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        grid = (H // patch_size, W // patch_size)
        pos_embed = get_2d_sincos_pos_embed(hidden_size, *grid)[None]  # (1, N, D), fixed as in the official code
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.grad_checkpointing = False  # recompute each block in the backward pass: less memory, ~1/3 more compute
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight  # initialise the patch projection like a Linear
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the model starts predicting 0
        for block in self.blocks:
            zero_module(block.adaLN_modulation[-1])
        zero_module(self.final_layer.adaLN_modulation[-1])
        zero_module(self.final_layer.linear)

    def unpatchify(self, x):  # (B, N, p * p * C_out) -> (B, C_out, H, W)
        p, c = self.patch_size, self.out_channels
        h, w = self.input_size[0] // p, self.input_size[1] // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def embed_tokens(self, x):  # (B, C, H, W) -> tokens with their position embedding (B, N, D)
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"DiT was built for {self.input_size} latents but got {tuple(x.shape[-2:])}; "
                             f"build it with input_size matching the autoencoder's latent size.")
        return self.x_embedder(x) + self.pos_embed

    def forward(self, x, t, y=None, concat=None, context=None, context_mask=None):  # (B, C, H, W), (B,), (B,) or None
        if concat is not None or context is not None:  # the UNet's conditioning inputs; DiT has only y
            raise ValueError("DiT is conditioned on class labels y only; use the UNet for concat or context inputs.")
        check_labels(y, self.num_classes)
        x = self.embed_tokens(x)  # (B, N, D)
        c = self.t_embedder(t)  # (B, D)
        if y is not None:
            c = c + self.y_embedder(y)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


class VideoDiT(DiT):
    """DiT on video latents (B, C, T, H, W) with the image DiT's blocks and parameter names. Patches are (pt, p, p):
    the pt frames of a patch are stacked on the channels, so the default pt = 1 cuts each frame as the image DiT does.
    Position of a token: the image DiT's 2-D sin-cos embedding of its patch plus a 1-D sin-cos embedding of its frame,
    shifted so that frame 0 gets zero; the temporal table is fixed and not saved, so an image DiT checkpoint loads
    (load_state_dict, strict) into the video model with the same latent size and pt = 1, and with T = 1 the two
    compute the same function. attention='full' attends over all T/pt * H/p * W/p tokens; 'alternating' makes
    even blocks spatial (within a frame) and odd blocks temporal (across frames), Latte's factorised variant."""

    def __init__(self, input_size=32, num_frames=16, patch_size=2, temporal_patch_size=1, in_channels=4,
                 learn_sigma=True, attention="full", **kw):
        pt = temporal_patch_size
        if pt < 1 or num_frames % pt or attention not in ("full", "alternating"):
            raise ValueError(f"VideoDiT needs num_frames {num_frames} divisible by temporal_patch_size {pt} and "
                             f"attention 'full' or 'alternating' (got {attention!r}).")
        super().__init__(input_size=input_size, patch_size=patch_size, in_channels=in_channels * pt,
                         learn_sigma=learn_sigma, **kw)  # the pt frames of a patch are its channels
        self.in_channels, self.out_channels = in_channels, self.out_channels // pt
        self.num_frames, self.temporal_patch_size, self.attention = num_frames, pt, attention
        hidden_size = self.pos_embed.shape[-1]
        frames = num_frames // pt
        temporal = get_1d_sincos_pos_embed(hidden_size, torch.arange(frames))
        temporal = (temporal - temporal[:1]).float()  # e(t) - e(0): frame 0 is placed exactly as an image
        self.register_buffer("temporal_embed", temporal[None, :, None], persistent=False)  # (1, T/pt, 1, D)
        for i, block in enumerate(self.blocks):
            block.num_frames = frames
            block.attn_axis = "full" if attention == "full" else ("spatial", "temporal")[i % 2]

    def embed_tokens(self, x):  # (B, C, T, H, W) -> (B, T/pt * H/p * W/p, D), frame-major
        if x.ndim != 5 or x.shape[2] != self.num_frames:
            raise ValueError(f"VideoDiT was built for {self.num_frames}-frame latents (B, C, T, H, W) but got shape "
                             f"{tuple(x.shape)}; build it with num_frames matching the video latents.")
        B, C, T, H, W = x.shape
        pt = self.temporal_patch_size
        x = x.reshape(B, C, T // pt, pt, H, W).permute(0, 2, 3, 1, 4, 5).reshape(B * T // pt, pt * C, H, W)
        x = super().embed_tokens(x)  # (B * T/pt, S, D), with the spatial position embedding
        x = x.reshape(B, T // pt, -1, x.shape[-1]) + self.temporal_embed
        return x.reshape(B, -1, x.shape[-1])

    def unpatchify(self, x):  # (B, N, p * p * pt * C_out) -> (B, C_out, T, H, W); a token's outputs are (p, p, pt, C)
        p, pt, c = self.patch_size, self.temporal_patch_size, self.out_channels
        f, h, w = self.num_frames // pt, self.input_size[0] // p, self.input_size[1] // p
        x = x.reshape(x.shape[0], f, h, w, p, p, pt, c)
        return torch.einsum("nfhwpqsc->ncfshpwq", x).reshape(x.shape[0], c, f * pt, h * p, w * p)


def DiT_XL_2(cls=DiT, **kw): return cls(depth=28, hidden_size=1152, patch_size=2, num_heads=16, **kw)
def DiT_XL_4(cls=DiT, **kw): return cls(depth=28, hidden_size=1152, patch_size=4, num_heads=16, **kw)
def DiT_XL_8(cls=DiT, **kw): return cls(depth=28, hidden_size=1152, patch_size=8, num_heads=16, **kw)
def DiT_L_2(cls=DiT, **kw): return cls(depth=24, hidden_size=1024, patch_size=2, num_heads=16, **kw)
def DiT_L_4(cls=DiT, **kw): return cls(depth=24, hidden_size=1024, patch_size=4, num_heads=16, **kw)
def DiT_L_8(cls=DiT, **kw): return cls(depth=24, hidden_size=1024, patch_size=8, num_heads=16, **kw)
def DiT_B_2(cls=DiT, **kw): return cls(depth=12, hidden_size=768, patch_size=2, num_heads=12, **kw)
def DiT_B_4(cls=DiT, **kw): return cls(depth=12, hidden_size=768, patch_size=4, num_heads=12, **kw)
def DiT_B_8(cls=DiT, **kw): return cls(depth=12, hidden_size=768, patch_size=8, num_heads=12, **kw)
def DiT_S_2(cls=DiT, **kw): return cls(depth=12, hidden_size=384, patch_size=2, num_heads=6, **kw)
def DiT_S_4(cls=DiT, **kw): return cls(depth=12, hidden_size=384, patch_size=4, num_heads=6, **kw)
def DiT_S_8(cls=DiT, **kw): return cls(depth=12, hidden_size=384, patch_size=8, num_heads=6, **kw)
def DiT_tiny_2(cls=DiT, **kw): return cls(depth=2, hidden_size=64, patch_size=2, num_heads=2, **kw)  # CPU tests and smoke runs


DIT_PRESETS = {
    "DiT-XL/2": DiT_XL_2, "DiT-XL/4": DiT_XL_4, "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2, "DiT-L/4": DiT_L_4, "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2, "DiT-B/4": DiT_B_4, "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2, "DiT-S/4": DiT_S_4, "DiT-S/8": DiT_S_8,
    "tiny": DiT_tiny_2,
}
VIDEO_DIT_PRESETS = {name: functools.partial(preset, VideoDiT) for name, preset in DIT_PRESETS.items()}


def build_backbone(model, preset, latent_size, in_channels, num_classes, learn_sigma, class_dropout_prob=0.1,
                   num_frames=None, cond_channels=0, context_dim=None, text_encoder=None):
    """The one place train_ldm.py and sample.py build a denoiser: model 'unet' | 'dit', a preset name of that family;
    num_frames builds the video DiT of that preset for (B, C, num_frames, H, W) latents. The UNet takes cond_channels
    of concat beside x_t, and cross-attends to context tokens of width context_dim, or else, when num_classes > 0, to
    the class token (of the preset's context_dim, or 512 as LDM's ClassEmbedder). text_encoder {'vocab_size',
    'max_length'} gives the UNet a tau_theta (TextEncoder, sized by TEXT_ENCODER_PRESETS) whose width is its context's."""
    if model == "dit" and text_encoder:
        raise ValueError("DiT has no cross-attention, which text and layouts need (LDM Sec. 3.3; a PixArt-style DiT "
                         "would be an extension); train --task text or layout with --model unet.")
    if model == "dit" and (cond_channels or context_dim):
        raise ValueError("DiT is conditioned on class labels only; use --model unet for concat or context inputs.")
    if num_frames is not None:
        if model != "dit" or preset not in VIDEO_DIT_PRESETS:
            raise ValueError(f"video latents (num_frames={num_frames}) need --model dit and a preset from "
                             f"{sorted(VIDEO_DIT_PRESETS)}; got {model!r} / {preset!r}.")
        return VIDEO_DIT_PRESETS[preset](input_size=latent_size, num_frames=num_frames, in_channels=in_channels,
                                         num_classes=num_classes, class_dropout_prob=class_dropout_prob,
                                         learn_sigma=learn_sigma)
    presets = {"unet": UNET_PRESETS, "dit": DIT_PRESETS}.get(model)
    if presets is None or preset not in presets:
        names = sorted(presets) if presets else []
        raise ValueError(f"unknown backbone {model!r} / preset {preset!r}; choose the model 'unet' or 'dit' and a "
                         f"preset from {names or sorted(UNET_PRESETS) + sorted(DIT_PRESETS)}.")
    common = dict(in_channels=in_channels, num_classes=num_classes, class_dropout_prob=class_dropout_prob,
                  learn_sigma=learn_sigma)
    if model == "unet":
        cfg = dict(presets[preset], cond_channels=cond_channels)
        tau = dict(TEXT_ENCODER_PRESETS.get(preset, TEXT_ENCODER_PRESETS["txt2img-1p4B"]), **text_encoder) \
            if text_encoder else None
        context_dim = tau["dim"] if tau else context_dim
        cfg["context_dim"] = context_dim or (cfg.get("context_dim", 512) if num_classes > 0 else None)
        net = UNet(**cfg, **common)
        if tau:
            net.cond_stage_model = TextEncoder(**tau)  # trained jointly with the UNet (cond_stage_trainable)
        return net
    return presets[preset](input_size=latent_size, **common)


def apply_model(model, x, t, cond=None):
    """The one place a condition reaches the denoiser, as CompVis' DiffusionWrapper: cond is conditioning.get_input's
    dict, whose keys are the backbone's inputs ('concat' -> the UNet's concat, torch.cat([x_t, c_concat], 1); 'y' the
    class labels); None values are left out. A plain tensor (or None) is the class labels, as before conditioning.
    training_loss and the samplers call it as model(x_t, t, cond) through functools.partial(apply_model, model)."""
    if not isinstance(cond, dict):
        return model(x, t, cond)
    return model(x, t, **{k: v for k, v in cond.items() if v is not None})
