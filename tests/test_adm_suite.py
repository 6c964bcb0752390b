"""ADM's suite end to end: our FID Inception (inception.py) against torch-fidelity's with identical random weights (TF1's
resize, pool_3, the 1008 logits, IS and the layer sFID reads), and eval_fid.py on ADM's reference-batch format (images
with precomputed statistics, statistics alone, our own --save_stats), each number against its function in metrics.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import sources
import eval_fid
from evaluation.inception import InceptionV3FID, resize_bilinear_tf1
from evaluation.metrics import (feature_statistics, inception_score, kernel_inception_distance, precision_recall, sfid_features,
                     to_uint8)
from tests.test_eval import CPU, disk_images, random_fid_inception_state, spread_logits

fidelity_inception = pytest.importorskip('torch_fidelity.feature_extractor_inceptionv3')
fidelity_resize = pytest.importorskip('torch_fidelity.interpolate_compat_tensorflow')
fidelity_isc = pytest.importorskip('torch_fidelity.metric_isc')


def test_tf1_resize_samples_at_i_times_scale_and_equals_torch_fidelity():
    """TF1's resize_bilinear (align_corners=False) samples output pixel i at i * n_in / n_out: a ramp comes out as that
    position, held at the last pixel. torch-fidelity's port of it is bit-exact on CPU, and ours equals it bit for bit;
    pytorch-fid's resize (half-pixel centres) differs by whole grey levels on noise, which is why the protocols differ."""
    ramp = torch.arange(7.).expand(1, 1, 7, 7)  # x[..., j] = j
    position = torch.arange(299, dtype=torch.float32) * torch.tensor(7 / 299, dtype=torch.float32)
    assert torch.equal(resize_bilinear_tf1(ramp, 299)[0, 0, 5], position.clamp(max=6))
    g = torch.Generator().manual_seed(0)
    for h, w in ((256, 256), (17, 40), (299, 299), (512, 384)):
        x = torch.rand(2, 3, h, w, generator=g) * 255
        theirs = fidelity_resize.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert torch.equal(resize_bilinear_tf1(x, 299), theirs)
    half_pixel = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    assert (half_pixel - theirs).abs().max() > 10


@pytest.mark.slow
def test_inception_features_logits_and_is_equal_torch_fidelity(tmp_path):
    """One forward pass gives pool_3, the logits without bias and the sFID features; with identical random weights
    (torch-fidelity's parameter names are ours, so its file loads as it is) they equal torch-fidelity's, read through
    eval_fid's collection of a samples array as the CLI reads it."""
    state = random_fid_inception_state()
    images = to_uint8(disk_images(4, 48, seed=0)).permute(0, 2, 3, 1).numpy()  # (4, 48, 48, 3), as in arr_0
    ours = InceptionV3FID().eval()
    ours.load_state_dict(state)
    spread_logits(state, eval_fid.collect(sources.ImageArray(images), CPU, 4, 0, 'test', ours)[0]['pool3'])
    ours.load_state_dict(state)
    torch.save(state, tmp_path / 'w.pth')
    theirs = fidelity_inception.FeatureExtractorInceptionV3('inception-v3-compat', ['2048', 'logits_unbiased'],
                                                            feature_extractor_weights_path=str(tmp_path / 'w.pth'))
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in state.items()}
    mixed_6d = []
    theirs.Mixed_6d.register_forward_hook(lambda module, inputs, output: mixed_6d.append(output))

    features = eval_fid.collect(sources.ImageArray(images), CPU, 3, 0, 'test', ours)[0]  # batches of 3 and 1
    with torch.no_grad():
        pool3, logits = theirs(torch.from_numpy(images).permute(0, 3, 1, 2))  # uint8 in, as torch-fidelity takes it
    spatial = sfid_features(mixed_6d[0])  # ADM's mixed_6/conv[..., :7], channels last
    # float32 error is relative to the largest value, and for the logits, dot products over 2048 terms whose sum cancels
    # (the rows are orthogonal to the common part), to the product of the norms |w_j| |pool3_i| that bounds them
    scale = {'pool3': pool3.abs().max(), 'spatial': spatial.abs().max(),
             'logits': state['fc.weight'].norm(dim=1).max() * pool3.norm(dim=1).max()}
    for name, ref in (('pool3', pool3), ('logits', logits), ('spatial', spatial)):
        assert features[name].shape == ref.shape
        assert (features[name] - ref).abs().max() < 1e-5 * scale[name], name
        assert (ref - ref.mean(0)).abs().max() > 0.05 * ref.abs().max(), name  # the images differ: the input is seen
    is_theirs = fidelity_isc.isc_features_to_metric(logits, splits=1, shuffle=False)['inception_score_mean']
    is_ours = inception_score(features['logits'])
    assert is_ours - 1 == pytest.approx(is_theirs - 1, rel=1e-5) and is_ours > 1.5


@pytest.mark.slow
def test_cli_reads_adm_reference_batches_statistics_files_and_writes_its_own(tmp_path, capsys):
    """--ref as ADM distributes it (images arr_0 with precomputed mu, sigma, mu_s, sigma_s): FID and sFID from the file's
    statistics, as ADM's evaluator reads them, precision/recall and KID from its images; a statistics file alone gives
    FID (and sFID when it holds mu_s, sigma_s) and says in one sentence what it cannot give; --save_stats writes all four."""
    real = to_uint8(disk_images(8, 32, seed=2)).permute(0, 2, 3, 1).numpy()
    flat = np.broadcast_to(np.arange(3, dtype=np.uint8)[:, None, None, None] * 100, (3, 32, 32, 3))
    fake = np.concatenate([real[:3], flat])  # 3 of the reference images and 3 flat ones: precision != recall
    np.savez(tmp_path / 'fake.npz', arr_0=fake)
    np.savez(tmp_path / 'real.npz', arr_0=real)
    state = random_fid_inception_state()
    net = InceptionV3FID().eval()
    net.load_state_dict(state)
    f_fake, f_real = (eval_fid.collect(sources.ImageArray(a), CPU, 50, 0, 'test', net)[0] for a in (fake, real))
    spread_logits(state, torch.cat([f_fake['pool3'], f_real['pool3']]))
    torch.save(state, tmp_path / 'w.pth')
    fake_logits = f_fake['pool3'] @ state['fc.weight'].T  # pool_3 does not depend on the classifier
    flags = ['--inception_weights', tmp_path / 'w.pth', '--num_workers', 0, '--device', 'cpu', '--overwrite']
    cli = lambda *argv: eval_fid.main(list(map(str, (*argv, *flags, '--out', tmp_path / 'o.json'))))  # noqa: E731

    cli('--ref', tmp_path / 'real.npz', '--save_stats', tmp_path / 'ours.npz')
    with np.load(tmp_path / 'ours.npz') as f:
        saved = dict(f)
    assert set(saved) == {'mu', 'sigma', 'mu_s', 'sigma_s'}
    for keys, feature in ((('mu', 'sigma'), 'pool3'), (('mu_s', 'sigma_s'), 'spatial')):
        for value, expected in zip((saved[k] for k in keys), feature_statistics(f_real[feature])):
            assert np.abs(value - expected).max() <= 1e-6 * np.abs(expected).max()

    # ADM's format: the reference images with statistics that are not theirs (those of the fake set), so that FID and
    # sFID are 0 only if the file's statistics are the ones used, while precision, recall and KID come from the images
    fake_stats, fake_stats_s = feature_statistics(f_fake['pool3']), feature_statistics(f_fake['spatial'])
    np.savez(tmp_path / 'adm.npz', arr_0=real, mu=fake_stats[0], sigma=fake_stats[1], mu_s=fake_stats_s[0],
             sigma_s=fake_stats_s[1])
    capsys.readouterr()
    results, skipped = cli('--fake', tmp_path / 'fake.npz', '--ref', tmp_path / 'adm.npz')
    table = capsys.readouterr().out
    assert skipped == {} and all(f"{name:>12s}  " in table for name in ('fid', 'sfid', 'is', 'precision', 'recall', 'kid'))
    # 0 up to the square roots of the rank-deficient covariances' rounding-level eigenvalues (6 samples, 2048 dimensions)
    assert abs(results['fid']) < 1e-5 * np.trace(fake_stats[1]) and abs(results['sfid']) < 1e-5 * np.trace(fake_stats_s[1])
    assert (results['precision'], results['recall']) == precision_recall(f_real['pool3'], f_fake['pool3'])
    assert results['precision'] != results['recall']  # so the order of the sets (ADM's: reference, sample) is tested
    shuffled = f_real['pool3'][np.random.default_rng(0).permutation(8)]  # the reference as SWD's cut reads it (seed 0)
    kid = kernel_inception_distance(f_fake['pool3'], shuffled)  # KID's subsets depend on the order
    assert (results['kid'], results['kid_std']) == pytest.approx(kid, rel=1e-9)
    assert results['is'] == pytest.approx(inception_score(fake_logits), rel=1e-5) and results['is'] > 1.2

    # a statistics file alone, in pytorch-fid's format (mu, sigma): FID; sFID, precision/recall and KID say why not
    np.savez(tmp_path / 'pool_only.npz', mu=fake_stats[0], sigma=fake_stats[1])
    results, skipped = cli('--fake', tmp_path / 'fake.npz', '--ref', tmp_path / 'pool_only.npz')
    assert abs(results['fid']) < 1e-5 * np.trace(fake_stats[1]) and 'is' in results
    assert set(skipped) == {'sfid', 'precision', 'kid', 'swd'} and 'mu_s' in skipped['sfid']
    assert all(why.count('. ') == 0 and why.endswith('.') for why in skipped.values())
    assert '--ref is a statistics file' in skipped['kid']
