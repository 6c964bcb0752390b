"""The UNet's conditioning inputs, as CompVis' DiffusionWrapper feeds them: concat stacked onto x_t (whose new input
channels start at zero, so a conditional UNet loaded from an unconditional one is the same function) and context
tokens that the SpatialTransformers cross-attend to (a set: their order does not matter, their content does, and
padding under context_mask is invisible)."""
import pytest
import torch

from denoiser import UNET_PRESETS, SpatialTransformer, UNet, build_backbone
from tests.test_backbones import perturbed

TINY = dict(UNET_PRESETS["tiny"], context_dim=None)


def test_concat_channels_start_at_zero_so_a_loaded_unconditional_model_is_unchanged():
    torch.manual_seed(0)
    uncond = perturbed(UNet(in_channels=4, **TINY))
    cond = UNet(in_channels=4, cond_channels=3, **TINY).eval()
    state = cond.state_dict()
    for k, v in uncond.state_dict().items():  # the conv_in weight is (out, 4 + 3, 3, 3): its first 4 inputs are x_t's
        state[k] = v if state[k].shape == v.shape else torch.cat([v, state[k][:, 4:]], dim=1)
    cond.load_state_dict(state)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 800])
    with torch.no_grad():
        expected = uncond(x, t)
        assert torch.equal(cond(x, t, concat=torch.randn(2, 3, 8, 8)), expected)
        cond.input_blocks[0][0].weight[:, 4:].add_(0.1)  # once trained, the concat changes the prediction
        assert not torch.allclose(cond(x, t, concat=torch.randn(2, 3, 8, 8)), expected, atol=1e-4)


def test_cross_attention_reads_context_as_a_set_and_ignores_masked_padding():
    torch.manual_seed(0)
    m = perturbed(UNet(in_channels=4, **dict(TINY, context_dim=16)))
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3, 800]), torch.randn(2, 5, 16)
    with torch.no_grad():
        out = m(x, t, context=ctx)
        assert torch.allclose(m(x, t, context=ctx[:, torch.randperm(5)]), out, atol=1e-5)  # permuted tokens
        changed = ctx.clone()
        changed[1, 2] = torch.randn(16)
        moved = m(x, t, context=changed)
        assert torch.allclose(moved[0], out[0], atol=1e-6)  # sample 0's context is untouched
        assert not torch.allclose(moved[1], out[1], atol=1e-4)  # one token of sample 1 changed: sample 1 changes
        padded = torch.cat([ctx, 100 * torch.randn(2, 3, 16)], dim=1)  # 3 padding tokens of large junk
        mask = torch.tensor([[True] * 5 + [False] * 3] * 2)
        assert torch.allclose(m(x, t, context=padded, context_mask=mask), out, atol=1e-5)
        assert not torch.allclose(m(x, t, context=padded), out, atol=1e-4)  # without the mask they are attended to


def test_context_changes_nothing_at_init_through_the_zero_proj_out():
    # every weight random but the zero-initialised proj_out: the block adds 0 to x whatever the context, so the
    # conditional and the null (all-zero) context give the same output
    torch.manual_seed(0)
    st = SpatialTransformer(32, heads=2, num_groups=8, context_dim=12)
    with torch.no_grad():
        for name, p in st.named_parameters():
            if not name.startswith("proj_out"):
                p.add_(torch.randn_like(p))
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(st(x, torch.randn(2, 3, 12)), st(x, torch.zeros(2, 3, 12)))
    assert torch.equal(st(x, torch.randn(2, 3, 12)), x)


def test_class_labels_are_one_context_token():
    # y feeds the cross-attention as the one-token context y_embedder(y): a context model with the same weights that
    # is given that token computes the same
    torch.manual_seed(0)
    m = perturbed(build_backbone("unet", "tiny", 8, 4, num_classes=3, learn_sigma=False))
    c = build_backbone("unet", "tiny", 8, 4, num_classes=0, learn_sigma=False, context_dim=64).eval()
    assert c.load_state_dict(m.state_dict(), strict=False).unexpected_keys == ["y_embedder.embedding_table.weight"]
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 800]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(m(x, t, y), c(x, t, context=m.y_embedder(y)[:, None]))


def test_conditioning_inputs_that_do_not_fit_are_one_sentence():
    m = UNet(in_channels=4, cond_channels=2, **dict(TINY, context_dim=16))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match="this UNet takes"):
        m(x, t, context=torch.randn(1, 2, 16))  # no concat
    with pytest.raises(ValueError, match="this UNet takes"):
        m(x, t, concat=torch.randn(1, 2, 4, 4), context=torch.randn(1, 2, 16))  # not on x_t's grid
    with pytest.raises(ValueError, match="this UNet takes"):
        m(x, t, concat=torch.randn(1, 2, 8, 8))  # no context
    with pytest.raises(ValueError, match="this UNet takes"):
        m(x, t, concat=torch.randn(1, 2, 8, 8), context=torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="context_dim"):
        UNet(in_channels=4, num_classes=3, **TINY)
    with pytest.raises(ValueError, match="DiT"):
        build_backbone("dit", "tiny", 8, 4, 0, False, cond_channels=3)
    d = build_backbone("dit", "tiny", 8, 4, 0, False)
    with pytest.raises(ValueError, match="DiT"):
        d(x, t, context=torch.randn(1, 2, 16))
