"""
FLOP counts of the project's networks, written out from their architectures (DiT's way), for MFU.

Convention: 1 multiply-add = 2 FLOPs, counting the matrix products and convolutions only (linear layers, convs and the
two products of attention, q k^T and A v), as fvcore and torch.utils.flop_counter.FlopCounterMode do; norms,
activations, biases and softmax are left out. DiT's paper reports multiply-adds ("Gflops" from fvcore): DiT-XL/2 at
256 px (32x32x4 latents) is 118.6 G multiply-adds, i.e. dit_flops(...) = 237.2 GFLOP per image forward.
A training step costs 3x the forward (the backward computes gradients for activations and weights, 2x the forward).
tests/test_flops.py checks every formula against FlopCounterMode.
"""


def linear(n_tokens, d_in, d_out):
    return 2 * n_tokens * d_in * d_out


def conv(k, c_in, c_out, h_out, w_out):
    return 2 * k * k * c_in * c_out * h_out * w_out


def attention(n_q, n_k, dim):  # q k^T and A v, summed over heads: dim = heads * head_dim
    return 2 * 2 * n_q * n_k * dim


def dit_flops(input_size, patch_size, in_channels, hidden_size, depth, mlp_ratio=4.0, learn_sigma=True,
              frequency_embedding_size=256, **_):
    """Forward FLOPs of one DiT sample (model.DiT with the same arguments)."""
    H, W = (input_size, input_size) if isinstance(input_size, int) else input_size
    N, D, p = (H // patch_size) * (W // patch_size), hidden_size, patch_size
    out_channels = 2 * in_channels if learn_sigma else in_channels
    hidden = int(D * mlp_ratio)
    block = (linear(1, D, 6 * D)                         # adaLN modulation from c
             + linear(N, D, 3 * D) + attention(N, N, D)  # qkv, softmax(q k^T / sqrt(d)) v
             + linear(N, D, D)                           # attention output projection
             + linear(N, D, hidden) + linear(N, hidden, D))  # MLP
    return (conv(p, in_channels, D, H // p, W // p)      # patch embedding
            + linear(1, frequency_embedding_size, D) + linear(1, D, D)  # timestep MLP
            + depth * block
            + linear(1, D, 2 * D) + linear(N, D, p * p * out_channels))  # final adaLN + linear


def dit_config(model):
    """The arguments of dit_flops for a built model.DiT."""
    block = model.blocks[0]
    return dict(input_size=model.input_size, patch_size=model.patch_size, in_channels=model.in_channels,
                hidden_size=block.attn.qkv.in_features, depth=len(model.blocks),
                mlp_ratio=block.mlp.fc1.out_features / block.attn.qkv.in_features, learn_sigma=model.learn_sigma,
                frequency_embedding_size=model.t_embedder.frequency_embedding_size)


def _resnet_block(c_in, c_out, h, w):
    return conv(3, c_in, c_out, h, w) + conv(3, c_out, c_out, h, w) + (conv(1, c_in, c_out, h, w) if c_in != c_out else 0)


def _attn_block(c, h, w, cfg):
    """model.AttnBlock (q, k, v, proj_out 1x1 convs and one head over h*w positions); nothing for attn_type 'none'."""
    return 4 * conv(1, c, c, h, w) + attention(h * w, h * w, c) if getattr(cfg, 'attn_type', 'vanilla') == 'vanilla' else 0


def _mid_block(c, h, w, cfg):
    return 2 * _resnet_block(c, c, h, w) + _attn_block(c, h, w, cfg)


def _has_attention(cfg, level):
    return cfg.resolution // 2 ** level in getattr(cfg, 'attn_resolutions', ())  # CompVis', as model.Encoder


def ae_encoder_flops(cfg, H, W):
    """Forward FLOPs of Autoencoder.encode for one H x W image (model.AEConfig cfg), quant_conv included."""
    widths = [cfg.ch * m for m in cfg.ch_mult]
    total, c, h, w = conv(3, cfg.in_channels, cfg.ch, H, W), cfg.ch, H, W
    for i, width in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            total += _resnet_block(c, width, h, w) + (_attn_block(width, h, w, cfg) if _has_attention(cfg, i) else 0)
            c = width
        if i != len(widths) - 1:
            h, w = h // 2, w // 2
            total += conv(3, c, c, h, w)  # stride-2 downsampling conv
    moments = 2 * cfg.z_channels if cfg.regularizer == 'kl' else cfg.z_channels
    total += _mid_block(c, h, w, cfg) + conv(3, c, moments, h, w)
    if cfg.use_quant_conv:
        total += conv(1, moments, moments, h, w)
    if cfg.regularizer == 'vq':
        total += linear(h * w, cfg.z_channels, cfg.n_embed)  # distances to the codebook
    return total


def ae_decoder_flops(cfg, h, w):
    """Forward FLOPs of Autoencoder.decode for one h x w latent, post_quant_conv included."""
    widths = [cfg.ch * m for m in cfg.ch_mult]
    c = widths[-1]
    total = conv(1, cfg.z_channels, cfg.z_channels, h, w) if cfg.use_quant_conv else 0
    total += conv(3, cfg.z_channels, c, h, w) + _mid_block(c, h, w, cfg)
    for i in reversed(range(len(widths))):
        for _ in range(cfg.num_res_blocks + 1):
            total += _resnet_block(c, widths[i], h, w) + (_attn_block(widths[i], h, w, cfg) if _has_attention(cfg, i) else 0)
            c = widths[i]
        if i != 0:
            h, w = 2 * h, 2 * w
            total += conv(3, c, c, h, w)  # nearest x2, then a 3x3 conv
    return total + conv(3, c, cfg.out_ch, h, w)


def ae_flops(cfg, H, W):
    """Forward FLOPs of encode + decode for one H x W image."""
    f = 2 ** (len(cfg.ch_mult) - 1)
    return ae_encoder_flops(cfg, H, W) + ae_decoder_flops(cfg, H // f, W // f)


# Dense peak FLOP/s of each device for the dtypes we train in (vendor data sheets, without sparsity). MFU is
# measured against these.
PEAK_FLOPS = {
    'H100 SXM': {'bfloat16': 989e12, 'float16': 989e12, 'tf32': 494e12},
    'H100 PCIe': {'bfloat16': 756e12, 'float16': 756e12, 'tf32': 378e12},
    'H200': {'bfloat16': 989e12, 'float16': 989e12, 'tf32': 494e12},
    'A100': {'bfloat16': 312e12, 'float16': 312e12, 'tf32': 156e12},
}


def device_peak_flops(device_name, dtype):
    """Peak FLOP/s for torch.cuda.get_device_name() and the autocast dtype ('float32' trains in TF32), or None."""
    key = 'tf32' if dtype == 'float32' else dtype
    name = device_name.upper()
    if 'H100' in name:
        return PEAK_FLOPS['H100 PCIe' if 'PCIE' in name else 'H100 SXM'][key]
    for gpu in ('H200', 'A100'):
        if gpu in name:
            return PEAK_FLOPS[gpu][key]
    return None
