"""The GPU code paths on CPU, so CI catches breakage without a GPU: a torch.compile'd DiT training step (the model
compiled as train_ldm.py --compile does, with --grad_checkpointing) gives the eager step's loss and
gradients, and the fused EMA update is the textbook formula."""
import copy

import pytest
import torch

from utils.common import update_ema
from diffusion import Diffusion
from denoiser import DiT


def loss_and_grads(model, raw, diffusion, z, y, t, noise):
    loss = diffusion.training_loss(model, z, y, t=t, noise=noise).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in raw.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_compiled_dit_step_equals_eager():
    torch.manual_seed(0)
    eager = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2, num_classes=10,
                class_dropout_prob=0.0).train()
    for block in eager.blocks:  # adaLN-Zero starts as the identity; open the gates so every weight gets a gradient
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(eager.final_layer.linear.weight, std=0.02)
    diffusion = Diffusion('linear', learn_sigma=True)
    z, y = torch.randn(4, 4, 8, 8), torch.randint(0, 10, (4,))
    t, noise = torch.randint(0, 1000, (4,)), torch.randn(4, 4, 8, 8)
    loss_ref, grads_ref = loss_and_grads(eager, eager, diffusion, z, y, t, noise)
    raw = copy.deepcopy(eager)
    raw.zero_grad(set_to_none=True)
    raw.grad_checkpointing = True  # one compilation covers both paths: checkpointed blocks inside a compiled model
    loss, grads = loss_and_grads(torch.compile(raw), raw, diffusion, z, y, t, noise)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-3, atol=1e-5, msg=name)


def test_fused_ema_update_is_the_formula():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.9 * pe + 0.1 * p for pe, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.9)
    for pe, e in zip(ema.parameters(), expected):
        torch.testing.assert_close(pe.detach(), e.detach())
