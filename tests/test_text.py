"""Specification of text and layout conditioning (LDM Sec. 3.3): tau_theta (model.TextEncoder) equals diffusers'
LDMBertModel, LDM's BERTEmbedder, weight for weight; the tokenizers equal the `tokenizers` / `transformers`
references; captions and layouts come from the embedded generator without changing its images; caption dropout and
classifier-free guidance on text follow their formulas."""
import json

import numpy as np
import pytest
import torch

from model import TextEncoder
from weights import ldmbert_to_ours, load_strictly


def ldmbert(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8):
    """A small diffusers LDMBertModel with random weights everywhere (LayerNorms too), in eval mode."""
    pld = pytest.importorskip("diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion")
    cfg = pld.LDMBertConfig(vocab_size=vocab_size, max_position_embeddings=max_length, encoder_layers=depth,
                            encoder_ffn_dim=4 * dim, encoder_attention_heads=heads, head_dim=dim_head, d_model=dim)
    torch.manual_seed(0)
    ref = pld.LDMBertModel(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref


def tokens_and_mask(B=3, L=12, vocab_size=50):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, vocab_size, (B, L), generator=g)
    mask = torch.arange(L)[None] < torch.tensor([L, 7, 3])[:B, None]  # (B, L): True = a real token
    return tokens.masked_fill(~mask, 0), mask


def test_text_encoder_equals_ldmbert():
    """Our tau_theta with an LDMBertModel's weights (weights.ldmbert_to_ours) computes LDMBertModel's output, with and
    without a padding mask, and the map covers every weight (load_strictly)."""
    ref = ldmbert()
    ours = TextEncoder(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8).eval()
    load_strictly(ours, ldmbert_to_ours(ref.state_dict()), "LDMBertModel's weights", "")
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        for m in (None, mask):
            expected = ref(tokens, attention_mask=None if m is None else m.long(), return_dict=True).last_hidden_state
            got = ours(tokens, m)
            assert got.shape == (3, 12, 32)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # a prefix of the positions: a shorter sequence sees the first L learned positions
        torch.testing.assert_close(ours(tokens[:, :5]), ref(tokens[:, :5], return_dict=True).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_text_encoder_weights_into_ldmbert():
    """The other direction: our randomly initialised encoder's weights, renamed back, make LDMBertModel compute ours."""
    torch.manual_seed(2)
    ours = TextEncoder(vocab_size=50, max_length=12, dim=32, depth=2, heads=4, dim_head=8).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref = ldmbert()
    names = {next(iter(ldmbert_to_ours({k: None}))): k for k in ref.state_dict() if not k.startswith('to_logits')}
    sd = ref.state_dict()
    sd.update({names[k]: v for k, v in ours.state_dict().items()})
    ref.load_state_dict(sd)
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens, mask), ref(tokens, attention_mask=mask.long(), return_dict=True)
                                   .last_hidden_state, atol=1e-5, rtol=1e-5)


def test_text_encoder_refuses_too_many_tokens():
    enc = TextEncoder(vocab_size=10, max_length=4, dim=8, depth=1, heads=2, dim_head=4)
    with pytest.raises(ValueError, match="more than this encoder's 4 positions"):
        enc(torch.zeros(1, 5, dtype=torch.long))


# -----------------------------------------------------------------------------
# captions and layouts in the data

def test_scene_leaves_the_dead_leaves_image_unchanged():
    """Captions and layouts read the generator's own parameters: the images the other tests compare stay the same."""
    from data import DeadLeaves, dead_leaves
    for seed, index, size in ((0, 0, 16), (3, 7, 32)):
        img, scene = dead_leaves(seed, index, size, scene=True)
        assert np.array_equal(img, dead_leaves(seed, index, size))
        areas = [d['area'] for d in scene['shapes']]
        assert areas == sorted(areas, reverse=True) and 0.9 < sum(areas) <= 1 + 1e-9  # what is seen, once each
        for d in scene['shapes']:
            x0, y0, x1, y1 = d['box']
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and d['area'] <= (x1 - x0) * (y1 - y0) + 1e-9
    plain, captioned = DeadLeaves(16), DeadLeaves(16, annotation='caption')
    item = captioned[5][0]
    assert torch.equal(item['image'], plain[5][0]) and isinstance(item['caption'], str)


def test_caption_and_layout_name_the_largest_shapes():
    from data import LAYOUT_CLASSES, caption, colour_name, layout
    assert [colour_name(h, 0.5) for h in (0.0, 0.97, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6)] == \
        ['red', 'red', 'yellow', 'green', 'cyan', 'blue', 'magenta']
    assert colour_name(1 / 3, 0.1) == 'grey'
    shapes = [{'colour': 'red', 'kind': 'disk', 'area': 0.3, 'box': [0, 0, .5, .5]},
              {'colour': 'blue', 'kind': 'rectangle', 'area': 0.2, 'box': [.5, .5, 1, 1]},
              {'colour': 'green', 'kind': 'disk', 'area': 0.005, 'box': [.1, .1, .2, .2]}]
    scene = {'background': 'cyan', 'shapes': shapes}
    assert caption(scene) == 'a red disk and a blue rectangle on a cyan background'
    assert layout(scene, 8) == [(LAYOUT_CLASSES.index('red disk'), 0, 0, .5, .5),
                                (LAYOUT_CLASSES.index('blue rectangle'), .5, .5, 1, 1)]  # the speck is no object
    assert len(layout(scene, 1)) == 1


def write_images(root, names, size=(24, 12)):
    from PIL import Image
    for n in names:
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / n)


def test_folder_captions_sidecar_and_jsonl_and_missing_named(tmp_path, capsys):
    from data import make_dataset
    write_images(tmp_path, ['a.png', 'b.png', 'c.png'])
    (tmp_path / 'a.txt').write_text('a red disk\n')
    (tmp_path / 'captions.jsonl').write_text(json.dumps({'file': 'b.png', 'caption': 'a blue rectangle'}) + '\n')
    ds = make_dataset(str(tmp_path), 8, annotation='caption')
    assert [ds[i][0]['caption'] for i in range(len(ds))] == ['a red disk', 'a blue rectangle']
    assert 'leaving out 1 of 3 images that have no caption (the first: c.png)' in capsys.readouterr().out
    (tmp_path / 'captions.jsonl').write_text('{"file": "b.png"}\n')
    with pytest.raises(SystemExit, match=r'captions.jsonl line 1 is not a JSON object with .file. and .caption.'):
        make_dataset(str(tmp_path), 8, annotation='caption')


def test_folder_layout_is_cropped_and_flipped_with_the_image(tmp_path):
    from data import boxes_list, crop_boxes, make_dataset
    # a 24 x 12 image: its centre crop is x in [1/4, 3/4]; a box there covers the whole crop
    assert crop_boxes([(0, 0.25, 0.0, 0.75, 1.0), (1, 0.0, 0.0, 0.1, 1.0)], 24, 12, flip=False) == [(0, 0, 0, 1, 1)]
    assert crop_boxes([(0, 0.25, 0.0, 0.5, 0.5)], 24, 12, flip=True) == [(0, 0.5, 0.0, 1.0, 0.5)]
    write_images(tmp_path, ['a.png'])
    row = {'file': 'a.png', 'boxes': [['dog', 0.25, 0.0, 0.5, 0.5], ['cat', 0.5, 0.5, 0.75, 1.0]]}
    (tmp_path / 'layout.jsonl').write_text(json.dumps(row) + '\n')
    ds = make_dataset(str(tmp_path), 8, train=False, annotation='layout', max_objects=3)
    assert ds.layout_classes == ('cat', 'dog')
    assert boxes_list(ds[0][0]['boxes']) == [(1, 0.0, 0.0, 0.5, 0.5), (0, 0.5, 0.5, 1.0, 1.0)]
    row['boxes'][0][3] = 1.5
    (tmp_path / 'layout.jsonl').write_text(json.dumps(row) + '\n')
    with pytest.raises(SystemExit, match='a box of a.png lies outside the image'):
        make_dataset(str(tmp_path), 8, annotation='layout')


# -----------------------------------------------------------------------------
# tau_theta inside the denoiser

def text_unet(vocab_size=259, max_length=16):
    from model import build_backbone
    torch.manual_seed(0)
    net = build_backbone('unet', 'tiny', 8, 4, 0, False, text_encoder={'vocab_size': vocab_size, 'max_length': max_length})
    with torch.no_grad():  # zero-initialised output convs would hide the context
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_tokens_reach_the_unet_through_tau():
    """UNet(tokens) = UNet(context = tau(tokens)), once per sampler (learned_conditioning), and tau trains jointly."""
    from model import learned_conditioning
    from tokenizer import ByteTokenizer
    net = text_unet()
    tokens, mask = ByteTokenizer().encode(["a red disk", "a blue rectangle on a green background"], 16)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    out = net(x, t, tokens=tokens, context_mask=mask)
    cond = learned_conditioning(net, {'tokens': tokens, 'context_mask': mask})
    assert set(cond) == {'context', 'context_mask'}
    torch.testing.assert_close(out, net(x, t, **cond))
    torch.testing.assert_close(out, net(x, t, context=net.cond_stage_model(tokens, mask), context_mask=mask))
    assert not torch.allclose(out[1], net(x, t, tokens=tokens.flip(0), context_mask=mask.flip(0))[1])
    out.square().mean().backward()
    assert net.cond_stage_model.token_embedding.weight.grad.abs().sum() > 0


def test_dit_refuses_text_in_one_sentence():
    from model import build_backbone
    with pytest.raises(ValueError, match="DiT has no cross-attention, which text and layouts need"):
        build_backbone('dit', 'tiny', 8, 4, 0, False, text_encoder={'vocab_size': 259, 'max_length': 16})
