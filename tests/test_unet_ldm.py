"""The UNet is LDM's: each preset named after a CompVis config has that config's parameter count (the paper's LDM-4:
274M), and under a key map the UNet computes what diffusers' UNet2DModel (plain self-attention) and
UNet2DConditionModel (SpatialTransformer cross-attention) compute, with random weights."""
import pytest
import torch

from denoiser import UNET_PRESETS, AttentionBlock, SpatialTransformer, UNet
from tests.test_backbones import perturbed

# Parameters of CompVis' UNetModel built from each YAML's unet_config (ldm/modules/diffusionmodules/openaimodel.py),
# counted on the meta device; LDM's in_channels is in_channels + cond_channels here, and the conditioning encoders
# (ClassEmbedder, BERTEmbedder) are not part of the UNet.
LDM_COUNTS = {  # preset: (in_channels, cond_channels, parameters)
    "ldm-4": (3, 0, 274_056_163), "lsun_churches-ldm-kl-8": (4, 0, 294_966_916), "cin-ldm-vq-f8": (4, 0, 394_984_196),
    "cin256-v2": (3, 0, 400_920_579), "txt2img-1p4B": (4, 0, 872_300_484), "text2img256": (3, 0, 403_623_939),
    "layout2img-openimages256": (3, 0, 246_277_379), "bsr_sr": (3, 3, 113_622_563),
    "inpainting_big": (3, 4, 387_245_827), "semantic_synthesis256": (3, 3, 215_229_315),
}


def count(preset, in_channels, cond_channels=0):
    with torch.device("meta"):  # no memory, even for the 872M txt2img UNet
        m = UNet(in_channels=in_channels, cond_channels=cond_channels, **UNET_PRESETS[preset])
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("preset", sorted(LDM_COUNTS))
def test_presets_have_the_parameters_of_ldm_configs(preset):
    in_channels, cond_channels, expected = LDM_COUNTS[preset]
    assert count(preset, in_channels, cond_channels) == expected


def test_ldm4_is_the_papers_274m_and_film_costs_one_more_embedding_projection_per_resblock():
    assert abs(count("ldm-4", 3) / 274e6 - 1) < 0.01  # LDM's hyper-parameter tables: LDM-4, 274M
    # ldm-64 is LDM-4 with FiLM (the seed's choice): emb_layers emit scale and shift, 2 out_ch instead of out_ch
    emb_dim, widths = 4 * 224, [224 * m for m in (1, 2, 3, 4)]
    out_chs = 2 * widths + [widths[-1]] * 2 + 3 * widths  # 2 ResBlocks down, 2 in the middle, 3 up, per level
    assert count("ldm-64", 3) - count("ldm-4", 3) == sum(emb_dim * c + c for c in out_chs)


def test_attention_is_plain_without_context_and_starts_as_the_identity():
    # LDM: AttentionBlock where the UNet has no context, SpatialTransformer where it has one. The AttentionBlock adds
    # a zero-init proj_out to x: with every other weight random it is the identity at initialisation
    torch.manual_seed(0)
    for context_dim, kind in ((8, SpatialTransformer), (None, AttentionBlock)):  # the last: AttentionBlocks
        m = UNet(in_channels=4, **dict(UNET_PRESETS["tiny"], context_dim=context_dim))
        blocks = [b for b in m.modules() if isinstance(b, (AttentionBlock, SpatialTransformer))]
        assert len(blocks) == 4 and all(isinstance(b, kind) for b in blocks)  # level 1 down, middle, 2 x level 1 up
    for b in blocks:
        with torch.no_grad():
            for name, p in b.named_parameters():
                p.add_(0 if name.startswith("proj_out") else torch.randn_like(p))
        x = torch.randn(2, b.norm.num_channels, 4, 6)
        assert torch.equal(b(x), x)


def ours_to_diffusers(model, levels, num_res_blocks):
    """Our state dict (CompVis' names) -> diffusers'. input_blocks hold, level by level, num_res_blocks stages
    [ResBlock, attention] and then a downsampler (none after the last level); output_blocks num_res_blocks + 1 stages
    per level, coarse to fine, the last of each level but the finest ending with an upsampler. A SpatialTransformer
    has the names of diffusers' Transformer2DModel already; a plain AttentionBlock becomes an Attention."""
    sd, out = model.state_dict(), {}
    res = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
           "out_layers.3": "conv2", "skip_connection": "conv_shortcut", "op": "conv", "conv": "conv"}

    def copy(ours, theirs, module):
        for k, v in sd.items():
            if not k.startswith(ours + "."):
                continue
            name = k[len(ours) + 1:]
            if hasattr(module, "qkv"):  # the fused qkv's rows are [q; k; v] head by head (QKVAttentionLegacy)
                v = v.flatten(1) if v.ndim == 3 else v  # Conv1d (C_out, C_in, 1) -> Linear (C_out, C_in)
                if name.startswith("qkv."):
                    for i, part in enumerate(("to_q", "to_k", "to_v")):
                        out[f"{theirs}.{part}.{name[4:]}"] = v.unflatten(0, (module.heads, 3, -1))[:, i].flatten(0, 1)
                    continue
                name = name.replace("norm.", "group_norm.").replace("proj_out.", "to_out.0.")
            elif module is not None and not hasattr(module, "proj_in"):  # a ResBlock or a resampling conv
                prefix, wb = name.rsplit(".", 1)
                name = f"{res[prefix]}.{wb}"
            out[f"{theirs}.{name}"] = v

    copy("t_embedder.mlp.0", "time_embedding.linear_1", None)
    copy("t_embedder.mlp.2", "time_embedding.linear_2", None)
    copy("input_blocks.0.0", "conv_in", None)
    copy("out.0", "conv_norm_out", None)
    copy("out.2", "conv_out", None)
    for level in range(levels):
        for j in range(num_res_blocks):
            i = 1 + level * (num_res_blocks + 1) + j
            for k, name in enumerate(("resnets", "attentions")[:len(model.input_blocks[i])]):
                copy(f"input_blocks.{i}.{k}", f"down_blocks.{level}.{name}.{j}", model.input_blocks[i][k])
        if level < levels - 1:
            i = (level + 1) * (num_res_blocks + 1)
            copy(f"input_blocks.{i}.0", f"down_blocks.{level}.downsamplers.0", model.input_blocks[i][0])
    for k, name in enumerate(("resnets.0", "attentions.0", "resnets.1")):
        copy(f"middle_block.{k}", f"mid_block.{name}", model.middle_block[k])
    for i, block in enumerate(model.output_blocks):
        up, j = divmod(i, num_res_blocks + 1)
        for k, layer in enumerate(block):
            attention = hasattr(layer, "qkv") or hasattr(layer, "proj_in")
            name = "resnets" if k == 0 else "attentions" if attention else "upsamplers"
            copy(f"output_blocks.{i}.{k}", f"up_blocks.{up}.{name}.{0 if name == 'upsamplers' else j}", layer)
    return out


@pytest.mark.parametrize("film", [False, True])
def test_unet_equals_diffusers_unet2dmodel(film):
    """Plain self-attention (no context). Additive embedding with strided-conv / nearest+conv resampling, and FiLM with
    LDM's resblock_updown (ResnetBlock2D(down/up=True), diffusers' downsample_type / upsample_type 'resnet'). Levels
    with attention are Attn*Block2D; a 2-level model with attention at rate 1 and at rate 2 covers both."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = dict(model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=2, num_head_channels=16, num_groups=8,
               attention_resolutions=(2, 4), use_scale_shift_norm=film, resblock_updown=film)
    ours = perturbed(UNet(in_channels=3, cond_channels=2, learn_sigma=True, **cfg))
    resample = "resnet" if film else "conv"
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if film else ("DownBlock2D", "UpBlock2D")
    ref = diffusers.UNet2DModel(
        in_channels=5, out_channels=6, block_out_channels=(32, 64, 96), layers_per_block=2, attention_head_dim=16,
        down_block_types=(plain_down, "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", plain_up), norm_num_groups=8, attn_norm_num_groups=8,
        resnet_time_scale_shift="scale_shift" if film else "default", downsample_type=resample,
        upsample_type=resample).eval()
    ref.load_state_dict(ours_to_diffusers(ours, levels=3, num_res_blocks=2), strict=True)
    x, c, t = torch.randn(2, 3, 16, 24), torch.randn(2, 2, 16, 24), torch.tensor([3, 917])
    with torch.no_grad():
        expected = ref(torch.cat([x, c], dim=1), t).sample
        got = ours(x, t, concat=c)
    assert got.shape == expected.shape == (2, 6, 16, 24)
    assert (got - expected).abs().max() < 1e-5


def test_unet_with_context_equals_diffusers_unet2dconditionmodel():
    """SpatialTransformers of depth 2 cross-attending to 5 context tokens, 2 of them padding under the mask
    (diffusers' encoder_attention_mask). diffusers' attention_head_dim of this class is the number of heads per level
    (a naming it keeps for compatibility): num_head_channels 16 gives 2 heads at 32 channels and 4 at 64."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ours = perturbed(UNet(in_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_head_channels=16,
                          num_groups=8, attention_resolutions=(1,), use_scale_shift_norm=False, transformer_depth=2,
                          context_dim=24))
    ref = diffusers.UNet2DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, transformer_layers_per_block=2, norm_num_groups=8).eval()
    ref.load_state_dict(ours_to_diffusers(ours, levels=2, num_res_blocks=1), strict=True)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3, 917]), torch.randn(2, 5, 24)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask.float()).sample
        got = ours(x, t, context=ctx, context_mask=mask)
        assert (got - expected).abs().max() < 1e-5
        unmasked = ours(x, t, context=ctx)
    assert not torch.allclose(unmasked[0], got[0], atol=1e-4)  # the mask was in force in sample 0
