"""Specification of the diffusion backbones in model.py: DiT equals diffusers' DiTTransformer2DModel under an explicit
key mapping, adaLN-Zero and the zero-init convs make the networks start as the identity / predict 0, the sin-cos
position embedding and timestep features have their closed forms, label dropout swaps in the null class, and both
backbones compute each sample on its own grid in unusual configurations (non-square, not powers of 2)."""
import math

import pytest
import torch

from denoiser import DIT_PRESETS, UNET_PRESETS, AttentionBlock, DiT, ResBlock, SpatialTransformer, UNet, build_backbone, get_2d_sincos_pos_embed, timestep_embedding


def perturbed(module, std=0.05):
    """Random weights everywhere (except the fixed position embedding): zero-initialised gates would hide bugs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "pos_embed":
                p.add_(torch.randn_like(p) * std)
    return module.eval()


def ours_to_diffusers(sd, depth):
    """Our (official DiT) state dict -> diffusers DiTTransformer2DModel's. diffusers gives every block its own copy of
    the timestep and label embedders (AdaLayerNormZero.emb); the final layer reuses block 0's."""
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(depth):
        b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
        for wb in ("weight", "bias"):
            out[o + f"norm1.emb.timestep_embedder.linear_1.{wb}"] = sd[f"t_embedder.mlp.0.{wb}"]
            out[o + f"norm1.emb.timestep_embedder.linear_2.{wb}"] = sd[f"t_embedder.mlp.2.{wb}"]
            out[o + f"norm1.linear.{wb}"] = sd[b + f"adaLN_modulation.1.{wb}"]
            q, k, v = sd[b + f"attn.qkv.{wb}"].chunk(3, dim=0)  # fused qkv rows are [q; k; v]
            out[o + f"attn1.to_q.{wb}"], out[o + f"attn1.to_k.{wb}"], out[o + f"attn1.to_v.{wb}"] = q, k, v
            out[o + f"attn1.to_out.0.{wb}"] = sd[b + f"attn.proj.{wb}"]
            out[o + f"ff.net.0.proj.{wb}"] = sd[b + f"mlp.fc1.{wb}"]
            out[o + f"ff.net.2.{wb}"] = sd[b + f"mlp.fc2.{wb}"]
        out[o + "norm1.emb.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
    return out


def test_dit_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    depth, heads, head_dim, num_classes = 2, 2, 16, 10
    ours = perturbed(DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=heads * head_dim, depth=depth,
                         num_heads=heads, num_classes=num_classes, learn_sigma=True))
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8, num_layers=depth,
        sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_eps=1e-6).eval()
    for block in ref.transformer_blocks:
        # diffusers' DiT divides the frequency exponent by (half - 1); the official DiT (and ours) by half
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    missing, unexpected = ref.load_state_dict(ours_to_diffusers(ours.state_dict(), depth), strict=True)
    assert not missing and not unexpected
    assert torch.allclose(ref.pos_embed.pos_embed, ours.pos_embed, atol=1e-6)  # same fixed 2D sin-cos table
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 417, 999]), torch.tensor([1, 9, 10])  # 10: the null class
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    assert expected.shape == got.shape == (3, 8, 8, 8)
    assert (got - expected).abs().max() < 1e-4


def test_dit_blocks_are_the_identity_at_init_and_the_model_predicts_zero():
    # adaLN-Zero: gates regressed by zero-initialised layers, so x + 0 * attn(...) + 0 * mlp(...) = x
    torch.manual_seed(0)
    m = DIT_PRESETS["tiny"](input_size=8, in_channels=4, num_classes=3)
    x, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    for block in m.blocks:
        assert torch.equal(block(x, c), x)
    out = m(torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([0, 2]))
    assert torch.equal(out, torch.zeros_like(out))


def test_unet_resblocks_attention_and_output_start_as_identity_and_zero():
    torch.manual_seed(0)
    m = UNet(in_channels=4, num_classes=3, **UNET_PRESETS["tiny"])
    blocks = [mod for mod in m.modules() if isinstance(mod, (ResBlock, SpatialTransformer))]
    assert any(isinstance(b, SpatialTransformer) for b in blocks)
    emb, ctx = torch.randn(2, m.t_embedder.mlp[2].out_features), torch.randn(2, 1, 64)
    for b in blocks:
        ch = b.in_layers[0].num_channels if isinstance(b, ResBlock) else b.norm.num_channels
        x = torch.randn(2, ch, 4, 4)
        out = b(x, emb) if isinstance(b, ResBlock) else b(x, ctx)
        assert torch.allclose(out, b.skip_connection(x) if isinstance(b, ResBlock) else x)
    out = m(torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([0, 2]))
    assert torch.equal(out, torch.zeros_like(out))


def test_unet_film_is_scale_shift_after_the_second_groupnorm():
    # h = GN(h) * (1 + scale) + shift: with the emb layer forced to scale = -1 and shift = s the block's second
    # half sees the constant s, whatever the input
    torch.manual_seed(0)
    b = perturbed(ResBlock(8, 8, emb_dim=6, num_groups=4))
    with torch.no_grad():
        b.emb_layers[1].weight.zero_()
        b.emb_layers[1].bias.copy_(torch.cat([-torch.ones(8), torch.full((8,), 0.3)]))  # (scale, shift)
    emb = torch.randn(2, 6)
    x1, x2 = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    r1, r2 = b(x1, emb) - b.skip_connection(x1), b(x2, emb) - b.skip_connection(x2)
    assert torch.allclose(r1, r2, atol=1e-6)


def test_unet_attention_resolutions_are_downsampling_rates():
    # ldm-32 mapping: rates (1, 2, 4) on 32x32 latents put attention on the 32, 16 and 8 px maps, plus the middle.
    cfg = dict(UNET_PRESETS["ldm-32"], model_channels=32, num_res_blocks=1)
    m = UNet(in_channels=4, **cfg).eval()
    sizes = []
    for mod in m.modules():
        if isinstance(mod, (AttentionBlock, SpatialTransformer)):  # unconditional: AttentionBlocks
            mod.register_forward_hook(lambda _m, inp, _o: sizes.append(inp[0].shape[-1]))
    with torch.no_grad():
        m(torch.randn(1, 4, 32, 32), torch.tensor([10]))
    assert sorted(set(sizes)) == [4, 8, 16, 32]
    assert sizes.count(4) == 1  # only the middle block attends at 4x4 (rate 8 is not listed)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 37.5])
    e = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    assert torch.allclose(e, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1), atol=1e-5)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_pos_embed_matches_official_numpy_and_separates_rows_and_columns():
    np = pytest.importorskip("numpy")

    def official(embed_dim, grid_size):  # facebookresearch/DiT get_2d_sincos_pos_embed, verbatim in substance
        def one_d(d, pos):
            omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)
        grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
        return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)

    assert torch.allclose(get_2d_sincos_pos_embed(32, 4, 4), torch.from_numpy(official(32, 4)).float(), atol=1e-6)
    e = get_2d_sincos_pos_embed(16, 3, 5).view(3, 5, 16)  # non-square grid: first half columns, second half rows
    assert torch.allclose(e[0, :, :8], e[2, :, :8]) and torch.allclose(e[:, 1, 8:], e[:, 4, 8:])
    assert not torch.allclose(e[:, 0, :8], e[:, 1, :8])


@pytest.mark.parametrize("model_name", ["unet", "dit"])
def test_label_dropout_swaps_in_the_null_class(model_name):
    torch.manual_seed(0)
    m = perturbed(build_backbone(model_name, "tiny", 8, 4, num_classes=3, learn_sigma=False, class_dropout_prob=1.0))
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        null = m(x, t, torch.full_like(y, 3))
        assert not torch.allclose(m(x, t, y), null, atol=1e-4)  # eval: labels are used as given
        m.train()
        assert torch.allclose(m(x, t, y), null, atol=1e-6)  # train with p = 1: every label dropped


def test_odd_configurations_compute_each_sample_on_its_own_grid():
    # non-square latents, sizes that are not powers of 2, channel widths that are not monotone: a reshape that mixes
    # height and width, or samples of a batch, keeps the shapes but breaks these
    torch.manual_seed(0)
    u = perturbed(UNet(in_channels=3, model_channels=48, channel_mult=(1, 3, 2), num_res_blocks=1,
                       attention_resolutions=(2,), num_head_channels=24, num_groups=16, learn_sigma=True, num_classes=0))
    d = perturbed(DiT(input_size=(8, 12), patch_size=4, in_channels=3, hidden_size=48, depth=1, num_heads=3,
                      num_classes=0, learn_sigma=False))
    t = torch.tensor([1, 500, 999])
    with torch.no_grad():
        for m, x, channels in ((u, torch.randn(3, 3, 12, 20), 6), (d, torch.randn(3, 3, 8, 12), 3)):
            out = m(x, t)
            assert out.shape == (3, channels, *x.shape[-2:])  # learn_sigma: eps and the variance values
            for i in range(3):  # each sample's output is its own: nothing leaks across the batch
                torch.testing.assert_close(m(x[i:i + 1], t[i:i + 1])[0], out[i], atol=1e-5, rtol=1e-5)
    # the DiT's (8, 12) latents are a 2 x 3 grid of 4 x 4 patches, row-major: the tokens of one row share the row half
    # of the position embedding, those of one column the column half, and no two tokens share both
    col, row = d.pos_embed[0].view(2, 3, 48).split(24, dim=-1)
    assert torch.equal(row, row[:, :1].expand(2, 3, 24)) and torch.equal(col, col[:1].expand(2, 3, 24))
    assert len({tuple(e.tolist()) for e in d.pos_embed[0]}) == 6
    # a 16-channel conditional DiT-S/8 (FLUX-AE latents) reads its label: another class gives another prediction
    d16 = perturbed(DIT_PRESETS["DiT-S/8"](input_size=16, in_channels=16, num_classes=7))
    x16 = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        a, b = d16(x16, torch.tensor([5]), torch.tensor([6])), d16(x16, torch.tensor([5]), torch.tensor([2]))
    assert a.shape == (1, 32, 16, 16) and not torch.allclose(a, b)


def test_unpatchify_inverts_patchify():
    # unpatchify((B, N, p*p*C) tokens laid out as the patch conv reads them) recovers the image
    d = DiT(input_size=(4, 6), patch_size=2, in_channels=3, hidden_size=16, depth=1, num_heads=1, num_classes=0,
            learn_sigma=False)
    x = torch.randn(2, 3, 4, 6)
    tokens = x.view(2, 3, 2, 2, 3, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, 12)  # (B, h*w, p*p*C), (p, q, c) order
    assert torch.equal(d.unpatchify(tokens), x)


def test_user_errors_are_one_sentence():
    d = DIT_PRESETS["tiny"](input_size=8, in_channels=4, num_classes=0)
    with pytest.raises(ValueError, match="built for"):
        d(torch.randn(1, 4, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        d(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))
    u = UNet(in_channels=4, num_classes=2, **UNET_PRESETS["tiny"])
    with pytest.raises(ValueError, match="divisible"):
        u(torch.randn(1, 4, 9, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="class-conditional"):
        u(torch.randn(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("unet", "DiT-S/2", 8, 4, 0, False)


def test_preset_sizes():
    # the parameter counts of DiT's Table 1 (S 33M, B 130M, L 458M, XL 675M) at 32x32x4 latents and 1000 classes;
    # built on the meta device, so even XL/2 costs no memory
    paper = {"DiT-S/2": 33.0, "DiT-B/2": 130.0, "DiT-L/2": 458.0, "DiT-XL/2": 675.0}
    with torch.device("meta"):
        for name, millions in paper.items():
            m = DIT_PRESETS[name](input_size=32, in_channels=4, num_classes=1000)
            count = sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6
            assert math.isclose(count, millions, rel_tol=0.01), (name, count)
