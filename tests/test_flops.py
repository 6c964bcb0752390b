"""The analytic FLOP counts behind the benchmarks' MFU (bench/flops.py) equal torch's own count of the same forward
pass, and DiT-XL/2 is the 118.6 G multiply-adds that the DiT paper reports."""
import os
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
from flops import (PEAK_FLOPS, dit_flops, dit_config, ae_flops, ae_encoder_flops, ae_decoder_flops,  # noqa: E402
                   device_peak_flops)
from denoiser import DiT
from model import Autoencoder, AEConfig, AE_PRESETS  # noqa: E402


def counted(fn):
    # the math backend writes attention as two batched matmuls, which the counter sees on every device (on CPU
    # it does not see inside the fused attention kernel)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_dit_xl2_matches_the_paper():
    # DiT, Table 4: DiT-XL/2 at 256 px = 118.6 Gflops (fvcore multiply-adds) on 32x32x4 latents
    assert dit_flops(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28) / 2 / 1e9 == \
        pytest.approx(118.6, abs=0.05)
    # and the other sizes of that table: S/2 6.06, B/2 23.01, L/2 80.71, XL/4 29.05, XL/8 7.39
    for depth, D, p, gflops in [(12, 384, 2, 6.06), (12, 768, 2, 23.01), (24, 1024, 2, 80.71), (28, 1152, 4, 29.05),
                                (28, 1152, 8, 7.39)]:
        assert dit_flops(32, p, 4, D, depth) / 2 / 1e9 == pytest.approx(gflops, rel=0.01)


@pytest.mark.parametrize('kw', [dict(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=2),
                                dict(input_size=(8, 12), patch_size=4, hidden_size=96, depth=3, num_heads=4,
                                     learn_sigma=False, mlp_ratio=2.0)])
def test_dit_flops_equal_flop_counter(kw):
    model = DiT(in_channels=4, num_classes=10, **kw).eval()
    H, W = model.input_size
    x, t, y = torch.randn(3, 4, H, W), torch.randint(0, 1000, (3,)), torch.randint(0, 10, (3,))
    assert counted(lambda: model(x, t, y)) == 3 * dit_flops(**dit_config(model))


@pytest.mark.parametrize('cfg', [AE_PRESETS['tiny'], AE_PRESETS['mini'],  # mini: no quant convs
                                 AEConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=2, z_channels=16,
                                          use_quant_conv=False)])
def test_ae_flops_equal_flop_counter(cfg):
    ae = Autoencoder(cfg).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        z, _ = ae.encode(x, sample=False)
        assert counted(lambda: ae.encode(x, sample=False)) == 2 * ae_encoder_flops(cfg, 32, 48)
        assert counted(lambda: ae.decode(z)) == 2 * ae_decoder_flops(cfg, *z.shape[-2:])
    assert ae_flops(cfg, 32, 48) == ae_encoder_flops(cfg, 32, 48) + ae_decoder_flops(cfg, *z.shape[-2:])


def test_peak_table():
    # dense tensor-core rates of Ampere and Hopper: fp16 runs at the bf16 rate, TF32 (what float32 training uses) at half
    for gpu, peak in PEAK_FLOPS.items():
        assert peak['float16'] == peak['bfloat16'] and peak['tf32'] == pytest.approx(peak['bfloat16'] / 2, rel=2e-3), gpu
    # the bf16 dense peaks of the data sheets, in TFLOP/s: H100 SXM 989.4, H100 PCIe 756.5, H200 as H100 SXM, A100 312
    sheets = {'H100 SXM': 989.4e12, 'H100 PCIe': 756.5e12, 'H200': 989.4e12, 'A100': 312e12}
    assert {gpu: pytest.approx(v, rel=1e-3) for gpu, v in sheets.items()} == {g: p['bfloat16'] for g, p in PEAK_FLOPS.items()}
    # the names torch.cuda.get_device_name() reports pick their own sheet (a PCIe H100 is not an SXM one), and float32
    # takes the TF32 rate
    names = {'NVIDIA H100 80GB HBM3': 'H100 SXM', 'NVIDIA H100 PCIe': 'H100 PCIe', 'NVIDIA H200': 'H200',
             'NVIDIA A100-SXM4-80GB': 'A100', 'NVIDIA A100 80GB PCIe': 'A100'}
    for name, gpu in names.items():
        assert device_peak_flops(name, 'bfloat16') == PEAK_FLOPS[gpu]['bfloat16']
        assert device_peak_flops(name, 'float32') == PEAK_FLOPS[gpu]['tf32']
    assert device_peak_flops('some other GPU', 'bfloat16') is None  # no MFU rather than a wrong one
