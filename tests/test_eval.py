"""The metrics of eval_fid.py as a specification: the Frechet distance in closed form (and against pytorch-fid's), the
FID Inception's parameter names and missing weights, the Laplacian pyramid against ProGAN's scipy code, SWD's response to blur and noise, PSNR/SSIM closed
forms, the autoencoder evaluation on stand-in autoencoders, and the CLI end to end (one and two processes)."""
import os
import json

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation import sources
import eval_fid
from evaluation import inception
from evaluation import metrics
from evaluation import swd
from eval_fid import evaluate_autoencoder
from evaluation.inception import InceptionV3FID
from evaluation.metrics import feature_statistics, frechet_distance
from evaluation.swd import laplacian_pyramid, sliced_wasserstein, swd_descriptors
from evaluation.metrics import psnr, ssim
from utils.common import Dist
from tests.helpers import run

CPU = Dist(ddp=False, rank=0, local_rank=0, world_size=1, device=torch.device('cpu'), master=True)


def disk_images(n, size, seed):
    """n images in [-1, 1] of a fixed distribution: a flat background with 12 opaque disks of random colour."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    images = torch.empty(n, 3, size, size)
    for i in range(n):
        img = torch.rand(3, 1, 1, generator=g).expand(3, size, size).clone()
        for _ in range(12):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = 2 + torch.rand(1, generator=g).item() * size / 4
            img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = torch.rand(3, 1, generator=g)
        images[i] = img
    return images * 2 - 1


def gaussian_blur(x, sigma=1.0):
    k = torch.exp(-torch.arange(-3, 4.) ** 2 / (2 * sigma ** 2))
    k2 = torch.outer(k, k) / k.sum() ** 2
    return F.conv2d(F.pad(x, (3, 3, 3, 3), mode='reflect'), k2.expand(3, 1, 7, 7), groups=3)


def write_pngs(folder, x):
    """x (N, 3, H, W) in [-1, 1] -> folder/000.png ...; returns the uint8 (N, H, W, 3) array written."""
    os.makedirs(folder, exist_ok=True)
    array = metrics.to_uint8(x).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(array):
        Image.fromarray(a).save(os.path.join(folder, f'{i:03d}.png'))
    return array

# -----------------------------------------------------------------------------
# Frechet distance

def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1, s2 = rng.uniform(0.1, 2, 16), rng.uniform(0.1, 2, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_covariance():
    rng = np.random.default_rng(1)
    D = 12
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    a, b = rng.uniform(0.1, 3, D), rng.uniform(0.1, 3, D)
    mu1, mu2 = rng.standard_normal(D), rng.standard_normal(D)
    # commuting covariances (one eigenbasis): (S1 S2)^(1/2) = Q diag(sqrt(a b)) Q^T
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # non-commuting: against the square root computed independently by scipy's Schur method
    m1, m2 = rng.standard_normal((D, D)), rng.standard_normal((D, D))
    s1, s2 = m1 @ m1.T / D, m2 @ m2.T / D
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((200, 32)), rng.standard_normal((300, 32)) * 1.5 + 0.3
    s1, s2 = feature_statistics(f1), feature_statistics(f2)
    assert abs(frechet_distance(*s1, *s1)) < 1e-9
    assert frechet_distance(*s1, *s2) == pytest.approx(frechet_distance(*s2, *s1), rel=1e-10)
    assert frechet_distance(*s1, *s2) > 1.0


def test_frechet_distance_of_gaussian_samples_approaches_the_closed_form():
    """FID as the CLI computes it (feature_statistics of samples, then the distance) converges to the distance between
    the two Gaussians: with covariances Q diag(a) Q^T and Q diag(b) Q^T, d^2 = |mu1 - mu2|^2 + sum_i (a_i^.5 - b_i^.5)^2."""
    rng = np.random.default_rng(4)
    D, N = 8, 200_000
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    a, b = rng.uniform(0.2, 3, D), rng.uniform(0.2, 3, D)
    mu1, mu2 = rng.standard_normal(D), rng.standard_normal(D)
    x1 = mu1 + (rng.standard_normal((N, D)) * np.sqrt(a)) @ q.T  # ~ N(mu1, Q diag(a) Q^T)
    x2 = mu2 + (rng.standard_normal((N, D)) * np.sqrt(b)) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(*feature_statistics(x1), *feature_statistics(x2)) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_matches_pytorch_fid_on_rank_deficient_statistics():
    """Fewer samples than dimensions (singular covariances): pytorch-fid needs its eps offset, we clip eigenvalues."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(3)
    s1 = feature_statistics(np.abs(rng.standard_normal((10, 64))))
    s2 = feature_statistics(np.abs(rng.standard_normal((12, 64))) + 0.1)
    assert frechet_distance(*s1, *s2) == pytest.approx(calculate_frechet_distance(*s1, *s2), rel=1e-6)

# -----------------------------------------------------------------------------
# FID Inception (against torch-fidelity's: tests/test_adm_suite.py)

def random_fid_inception_state(seed=0):
    """Random weights of the FID Inception under which the features depend on the image: He-initialised convolutions
    (variance 2 / fan_in keeps the activations' scale through the ReLUs; PyTorch's default shrinks them until every
    image gives the same pool_3) and batch norms near the identity with random statistics, so every parameter matters."""
    torch.manual_seed(seed)
    state = InceptionV3FID().state_dict()
    for k, v in state.items():
        if k.endswith('conv.weight'):
            v.normal_(0, np.sqrt(2 / v[0].numel()))
        elif k.endswith('running_mean') or k.endswith('bn.bias'):
            v.normal_(0, 0.05)
        elif k.endswith('running_var') or k.endswith('bn.weight'):
            v.uniform_(0.8, 1.2)
        elif k.startswith('fc.'):
            v.normal_(0, 1)
    return state


def spread_logits(state, pool3):
    """Random pool_3 features share a large common part, which puts every image in one class (IS = 1: a test of
    nothing); the classifier's rows made orthogonal to the mean of these features (N, 2048) let the logits follow each
    image's own part."""
    m = pool3.mean(0) / pool3.mean(0).norm()
    state['fc.weight'] -= (state['fc.weight'] @ m)[:, None] * m[None]


def test_inception_parameter_names_are_the_release_files():
    """The names pytorch-fid's released file has: torchvision's Inception3 with 1008 classes and no aux head."""
    import torchvision
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    ours = InceptionV3FID().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in tv.state_dict().items()}


def test_missing_inception_weights_is_one_sentence_naming_file_and_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        inception.load_inception(str(tmp_path / 'nope.pth'))
    msg = str(e.value)
    assert '--inception_weights' in msg and inception.FID_WEIGHTS_FILE in msg and msg.count('. ') == 0

# -----------------------------------------------------------------------------
# SWD

def progan_laplacian_pyramid(x, num_levels):
    """ProGAN's metrics/sliced_wasserstein.py, transcribed: scipy convolutions with mode='mirror'."""
    g = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256
    down = lambda m: scipy.ndimage.convolve(m, g[None, None], mode='mirror')[:, :, ::2, ::2]  # noqa: E731

    def up(m):
        res = np.zeros((m.shape[0], m.shape[1], m.shape[2] * 2, m.shape[3] * 2), m.dtype)
        res[:, :, ::2, ::2] = m
        return scipy.ndimage.convolve(res, g[None, None] * 4.0, mode='mirror')

    pyramid = [np.float32(x)]
    for _ in range(1, num_levels):
        pyramid.append(down(pyramid[-1]))
        pyramid[-2] -= up(pyramid[-1])
    return pyramid


def test_laplacian_pyramid_matches_progan_and_inverts():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 255
    ours = laplacian_pyramid(x, 2)
    for a, b in zip(ours, progan_laplacian_pyramid(x.numpy().copy(), 2)):  # ProGAN's code writes in place
        assert np.abs(a.numpy() - b).max() < 1e-3  # values up to 255 in float32
    # x = level_0 + up(level_1): the pyramid is a lossless representation
    recon = ours[0] + swd.pyr_up(ours[1], (32, 32))
    assert (recon - x).abs().max() < 1e-3


def test_swd_descriptors_do_not_depend_on_batching():
    x = disk_images(6, 32, seed=0)
    whole = swd_descriptors(x, range(6))
    split = [torch.cat(p) for p in zip(swd_descriptors(x[:2], range(2)), swd_descriptors(x[2:], range(2, 6)))]
    assert len(whole) == 2 and whole[0].shape == (6 * 128, 3, 7, 7) and whole[1].shape == (6 * 128, 3, 7, 7)
    for a, b in zip(whole, split):
        assert torch.equal(a, b)


def test_swd_small_for_one_distribution_and_grows_with_blur_and_noise():
    a, b = disk_images(64, 64, seed=0), disk_images(64, 64, seed=1)
    same = sliced_wasserstein(a, b)
    assert set(same) == {'swd_64', 'swd_32', 'swd_16', 'swd_avg'}
    assert all(v == 0 for v in sliced_wasserstein(a, a).values())
    # another distribution (smooth random fields) is far away at every level
    other = F.interpolate(torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1, size=64,
                          mode='bicubic', align_corners=False)
    far = sliced_wasserstein(a, other)
    for level in ('swd_64', 'swd_32', 'swd_avg'):
        assert same[level] < 0.5 * far[level]
    assert same['swd_16'] < far['swd_16']  # 64 images are few independent samples of a 16 x 16 level
    # blur, paired with the same images: the coarse low-pass level barely moves, the finest band-pass level does
    blurred = sliced_wasserstein(b, gaussian_blur(b, sigma=1.0))
    assert blurred['swd_64'] > 2 * same['swd_64'] and blurred['swd_16'] < 0.2 * blurred['swd_64']
    # noise: the finest level grows far beyond the sampling noise of two draws
    noised = sliced_wasserstein(a, b + 0.2 * torch.randn(b.shape, generator=torch.Generator().manual_seed(3)))
    assert noised['swd_64'] > 4 * same['swd_64']
    assert noised['swd_avg'] > same['swd_avg']

# -----------------------------------------------------------------------------
# PSNR and SSIM

def test_psnr_of_a_constant_offset_is_closed_form():
    torch.manual_seed(0)
    c = 0.05  # offset on [0, 1] -> MSE = c^2 -> PSNR = -20 log10(c) = 26.02 dB
    x = torch.rand(3, 3, 16, 16) * 1.8 - 1
    assert torch.allclose(psnr(x + 2 * c, x), torch.full((3,), -20 * np.log10(c), dtype=torch.float64), atol=1e-5)


def test_ssim_closed_forms():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-6)
    # constant images a, b on [0, 1]: all variances vanish -> SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, C1 = 0.3, 0.6, 0.01 ** 2
    xa, xb = torch.full((1, 3, 16, 16), 2 * a - 1), torch.full((1, 3, 16, 16), 2 * b - 1)
    assert ssim(xa, xb).item() == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-6)
    # same mean, independent noise: only the structure term drops; symmetric
    y = x + 0.3 * torch.randn_like(x)
    assert ssim(x, y).max() < 0.9 and torch.allclose(ssim(x, y), ssim(y, x))

# -----------------------------------------------------------------------------
# autoencoder evaluation on stand-in autoencoders whose metrics are known

class OffsetAE(torch.nn.Module):
    """Reconstructs x + offset exactly (z = x), a stand-in whose PSNR is known in closed form."""
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def encode(self, x, sample=True):
        return x, torch.zeros(())

    def decode(self, z):
        return z + self.offset


def test_evaluate_autoencoder_on_known_reconstructions():
    x = disk_images(8, 32, seed=0) * 0.7  # inside [-0.7, 0.7] so the offset never clips
    images = sources.ImageArray(metrics.to_uint8(x).permute(0, 2, 3, 1).numpy())
    perfect = evaluate_autoencoder(OffsetAE(0.0), images, CPU, batch_size=3)
    assert perfect['psnr'] == metrics.PSNR_MAX and perfect['ssim'] == pytest.approx(1.0, abs=1e-6)  # lossless: capped
    assert perfect['swd_avg'] == 0 and 'lpips' not in perfect and 'rfid' not in perfect
    # an offset of 10 grey levels: MSE = (10 / 255)^2 -> PSNR = 20 log10(25.5) = 28.13 dB
    shifted = evaluate_autoencoder(OffsetAE(2 * 10 / 255), images, CPU, batch_size=3)
    assert shifted['psnr'] == pytest.approx(20 * np.log10(25.5), abs=1e-4)
    assert shifted['ssim'] < 1.0

# -----------------------------------------------------------------------------
# command line

def offline(monkeypatch, tmp_path):
    """No cached weights and no download, whatever machine the tests run on."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(inception, 'FID_WEIGHTS_URL', 'file:///nonexistent/' + inception.FID_WEIGHTS_FILE)


def test_cli_npz_against_folder_reports_swd_and_skips_fid_with_its_reason(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    fake, real = disk_images(10, 32, seed=0), disk_images(12, 32, seed=1)
    fake_u8 = write_pngs(tmp_path / 'fake_png', fake)
    np.savez(tmp_path / 'fake.npz', arr_0=fake_u8)
    real_u8 = write_pngs(tmp_path / 'real' / 'sub', real)  # searched recursively
    out = tmp_path / 'metrics.json'
    eval_fid.main(['--fake', str(tmp_path / 'fake.npz'), '--real', str(tmp_path / 'real'), '--batch_size=4',
                   '--num_workers', '0', '--device', 'cpu', '--out', str(out)])
    with open(out) as f:
        result = json.load(f)
    assert result['num_fake'] == 10 and result['num_real'] == 12 and result['swd_images'] == 10
    # SWD through the batched CLI equals the function on the same (8-bit) images: all 10 fakes, and 10 of the 12
    # reals drawn by the seeded shuffle (never the first files of a class-sorted folder)
    to_float = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    expected = sliced_wasserstein(to_float(real_u8[np.random.default_rng(0).permutation(12)[:10]]), to_float(fake_u8))
    assert expected['swd_avg'] != pytest.approx(sliced_wasserstein(to_float(real_u8[:10]), to_float(fake_u8))['swd_avg'])
    for k in ('swd_32', 'swd_16', 'swd_avg'):
        assert result[k] == pytest.approx(expected[k], rel=1e-6)
    assert 'fid' not in result
    assert inception.FID_WEIGHTS_FILE in result['skipped']['fid'] and '--inception_weights' in result['skipped']['fid']


def test_cli_reference_defaults_to_the_embedded_dataset(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    np.savez(tmp_path / 'samples.npz', arr_0=metrics.to_uint8(disk_images(3, 16, seed=0)).permute(0, 2, 3, 1).numpy())
    results, skipped = eval_fid.main(['--fake', str(tmp_path / 'samples.npz'), '--num_workers', '0', '--device', 'cpu'])
    assert results['num_real'] == 3 and set(results) >= {'swd_16', 'swd_avg'} and 'fid' in skipped
    assert os.path.isfile(tmp_path / 'samples_metrics.json')


def test_cli_user_errors_are_one_sentence(tmp_path):
    for argv, words in ((['--fake', str(tmp_path / 'missing.npz')], 'does not exist'),
                        (['--data', str(tmp_path)], '--ae'),
                        ([], 'nothing to evaluate')):
        with pytest.raises(SystemExit) as e:
            eval_fid.main(argv)
        assert str(e.value).startswith('error: ') and words in str(e.value)
    np.savez(tmp_path / 'bad.npz', arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(SystemExit, match='not uint8'):
        eval_fid.main(['--fake', str(tmp_path / 'bad.npz')])


def test_cli_autoencoder_checkpoint(tmp_path, monkeypatch):
    import model
    from evaluation import perceptual
    offline(monkeypatch, tmp_path)
    monkeypatch.setattr(perceptual, 'VGG16_URL', 'file:///nonexistent/vgg16-397923af.pth')
    torch.manual_seed(0)
    ae = model.Autoencoder(model.AE_PRESETS['tiny'])
    torch.save({'model': ae.state_dict(), 'config': {'preset': 'tiny'}}, tmp_path / 'ae.pt')
    results, skipped = eval_fid.main(['--ae', str(tmp_path / 'ae.pt'), '--image_size', '16', '--num_real', '4',
                                      '--batch_size', '3', '--num_workers', '0', '--device', 'cpu'])
    assert results['num_images'] == 4 and np.isfinite(results['psnr']) and -1 <= results['ssim'] <= 1
    assert {'swd_16', 'swd_avg'} <= set(results) and set(skipped) == {'rfid', 'lpips'}
    assert '--vgg_weights' in skipped['lpips'] and '--lpips_weight 0' not in skipped['lpips']
    with open(tmp_path / 'ae_metrics.json') as f:
        assert json.load(f)['psnr'] == pytest.approx(results['psnr'])


@pytest.mark.slow
def test_cli_two_processes_give_the_single_process_numbers(tmp_path):
    """Sharded extraction + all_gather (gloo on CPU) must reassemble the sets in order, padding and all: every number of
    ADM's suite (random Inception weights) and SWD as one process computes them."""
    np.savez(tmp_path / 'fake.npz', arr_0=metrics.to_uint8(disk_images(7, 32, seed=0)).permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / 'real.npz', arr_0=metrics.to_uint8(disk_images(9, 32, seed=1)).permute(0, 2, 3, 1).numpy())
    torch.save(random_fid_inception_state(), tmp_path / 'w.pth')
    common = ['--fake', tmp_path / 'fake.npz', '--ref', tmp_path / 'real.npz', '--batch_size', '2',
              '--num_workers', '0', '--device', 'cpu', '--inception_weights', tmp_path / 'w.pth']
    run('eval_fid.py', *common, '--out', tmp_path / 'one.json')
    run('eval_fid.py', *common, '--out', tmp_path / 'two.json', torchrun=2)
    one, two = (json.load(open(tmp_path / f)) for f in ('one.json', 'two.json'))
    assert one['swd_images'] == 7 and one['skipped'] == {} and two['skipped'] == {}
    for k in ('fid', 'sfid', 'is', 'precision', 'recall', 'kid', 'swd_32', 'swd_16', 'swd_avg'):
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-9), k
