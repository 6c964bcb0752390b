"""Specification of text and layout conditioning (LDM Sec. 3.3): tau_theta (model.TextEncoder) equals diffusers'
LDMBertModel, LDM's BERTEmbedder, weight for weight; the tokenizers equal the `tokenizers` / `transformers`
references; captions and layouts come from the embedded generator without changing its images; caption dropout and
classifier-free guidance on text follow their formulas."""
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
