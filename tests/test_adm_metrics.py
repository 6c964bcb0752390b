"""ADM's sample metrics and KID (metrics.py, "ADM's sample metrics"): equal to torch-fidelity's on the same features,
equal to a brute-force reading of ADM's evaluator where the two differ (float16 distances), and closed forms."""
import numpy as np
import pytest
import torch
from torchvision.models.inception import InceptionC

from evaluation.metrics import inception_score, kernel_inception_distance, precision_recall, sfid_features

fidelity_kid = pytest.importorskip('torch_fidelity.metric_kid')
fidelity_prc = pytest.importorskip('torch_fidelity.metric_prc')
fidelity_isc = pytest.importorskip('torch_fidelity.metric_isc')


def features(n, d=64, seed=0, scale=1.0):
    """Non-negative features with a low-rank structure, as pool_3's (ReLU outputs, averaged): (n, d) float64."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).gamma(0.5, 1.0, (8, d))  # shared by every call, so that sets overlap
    return torch.from_numpy(rng.dirichlet(np.full(8, 0.5), n) @ basis * scale)

# ---------------------------------------------------------------------------------------------- KID


@pytest.mark.parametrize('n_fake, n_real, subset_size', [(300, 250, 100), (120, 150, 120)])
def test_kid_equals_torch_fidelity(n_fake, n_real, subset_size):
    fake, real = features(n_fake, seed=1, scale=1.1), features(n_real, seed=2)
    ours = kernel_inception_distance(fake, real, num_subsets=20, subset_size=subset_size, seed=2020)
    ref = fidelity_kid.kid_features_to_metric(fake, real, kid_subsets=20, kid_subset_size=subset_size, rng_seed=2020,
                                              verbose=False)
    assert ours[0] == pytest.approx(ref['kernel_inception_distance_mean'], rel=1e-10, abs=1e-14)
    assert ours[1] == pytest.approx(ref['kernel_inception_distance_std'], rel=1e-10, abs=1e-14)
    assert ours[0] > 10 * ours[1] / np.sqrt(20)  # the two sets differ, so the test compares a real signal


def test_kid_with_fewer_samples_than_the_subset_size_uses_the_smaller_set_whole():
    fake, real = features(40, seed=1, scale=1.1), features(60, seed=2)
    ours = kernel_inception_distance(fake, real, num_subsets=5, subset_size=1000)
    ref = fidelity_kid.kid_features_to_metric(fake, real, kid_subsets=5, kid_subset_size=40, rng_seed=2020, verbose=False)
    assert ours[0] == pytest.approx(ref['kernel_inception_distance_mean'], rel=1e-10)


def test_kid_is_unbiased_mmd2_closed_form_in_one_dimension():
    """With D = 1, k(x, y) = (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1, so for independent draws
    MMD^2(P, Q) = (m3_P - m3_Q)^2 + 3 (m2_P - m2_Q)^2 + 3 (m1_P - m1_Q)^2 with m_j the raw moments. U(0, 1) against
    U(0.5, 1.5): the moments differ by 1/2, 3/4 and 1, so MMD^2 = 3/4 + 27/16 + 1 = 3.4375; P against P: 0."""
    rng = np.random.default_rng(0)
    x, y, x2 = rng.random((2000, 1)), rng.random((2000, 1)) + 0.5, rng.random((2000, 1))
    shifted, std = kernel_inception_distance(y, x, num_subsets=20, subset_size=1000)
    assert shifted == pytest.approx(3.4375, rel=0.06) and std < 0.2  # 20 subsets of 1000: a few % of sampling error
    same, std_same = kernel_inception_distance(x2, x, num_subsets=20, subset_size=1000)
    assert abs(same) < 0.002 and std_same < 0.003  # unbiased: no positive offset for equal distributions

# ---------------------------------------------------------------------------------------------- precision / recall


def test_precision_recall_in_float32_equals_torch_fidelity():
    """torch-fidelity's k-NN precision and recall are ADM's definition (k = 3, the point itself excluded, a point on the
    boundary inside) with Euclidean rather than squared distances (the same order) in the features' precision; ours
    with float16=False and float64 features. Small blocks exercise the batching."""
    real, fake = features(300, seed=1), features(260, seed=2, scale=1.15)
    ours = precision_recall(real, fake, float16=False, batch_size=64)
    ref = fidelity_prc.prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                              verbose=False)  # torch-fidelity: features_1 generated, features_2 real
    assert ours == pytest.approx((ref['precision'], ref['recall']), abs=1e-7)  # its fractions are float32
    assert 0.1 < ours[0] < 0.99 and 0.1 < ours[1] < 0.99  # neither saturated: a real comparison


def adm_float16_brute_force(real, fake, k=3):
    """ADM's evaluator read directly: squared distances in float16 (its DistanceBlock: inputs, |u|^2, u.v and the sums
    rounded to float16, here computed in float64 first), full matrices, the (k+1)-th smallest of each row as radius."""
    f16 = np.float16

    def dist(u, v):
        u, v = u.astype(f16).astype(np.float64), v.astype(f16).astype(np.float64)
        nu = ((u * u).astype(f16).astype(np.float64)).sum(1).astype(f16)
        nv = ((v * v).astype(f16).astype(np.float64)).sum(1).astype(f16)
        uv = (u @ v.T).astype(f16)
        return np.maximum((nu[:, None] - f16(2) * uv) + nv[None], f16(0)).astype(np.float32)

    r_real, r_fake = (np.sort(dist(a, a), axis=1)[:, k] for a in (real, fake))
    d = dist(real, fake)
    return (d <= r_real[:, None]).any(0).mean(), (d <= r_fake[None]).any(1).mean()


def test_precision_recall_in_float16_equals_adm_brute_force():
    """ADM computes its distances in float16 (tf.cast to float16, float32 only if an entry overflows); that rounding
    changes which points lie on a ball's boundary, so ADM's numbers are not torch-fidelity's. Ours with float16=True
    against the brute-force reading above."""
    real, fake = features(300, seed=1, scale=4), features(260, seed=2, scale=4.6)
    ours = precision_recall(real, fake, batch_size=64)
    assert ours == pytest.approx(adm_float16_brute_force(real.numpy(), fake.numpy()), abs=1e-12)
    assert ours != precision_recall(real, fake, float16=False)  # at this scale float16 changes the result


def test_precision_recall_closed_forms():
    real = features(200, seed=1)
    for f16 in (True, False):
        assert precision_recall(real, real.clone(), float16=f16) == (1.0, 1.0)  # every point is inside its own ball
        assert precision_recall(real, real + 100, float16=f16) == (0.0, 0.0)  # far apart: no ball reaches the other set
    # 1-D, k = 1: the real balls have squared radius 1 (0, 1, 2, 3); 0.5 and 1.9 lie in them, 5 does not (4 > 1);
    # the fake radii are 1.4^2, 1.4^2 and 3.1^2, and every real point lies within one of them
    real, fake = torch.tensor([[0.], [1.], [2.], [3.]]), torch.tensor([[0.5], [1.9], [5.]])
    assert precision_recall(real, fake, k=1) == pytest.approx((2 / 3, 1.0))
    with pytest.raises(ValueError, match='need more than 3 samples in each set, got 4 real and 3 generated'):
        precision_recall(real, fake)

# ---------------------------------------------------------------------------------------------- Inception Score


def test_inception_score_equals_torch_fidelity():
    """ADM cuts the samples in order into splits of 5000; torch-fidelity shuffles them into `splits` equal parts. Without
    the shuffle and with N a multiple of the split size, the two agree; a remainder is its own split in ADM."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(350, 1008, generator=g, dtype=torch.float64) * 4
    ref = fidelity_isc.isc_features_to_metric(logits[:300], splits=3, shuffle=False)['inception_score_mean']
    assert inception_score(logits[:300], split_size=100) == pytest.approx(ref, rel=1e-12)
    parts = [fidelity_isc.isc_features_to_metric(p, splits=1, shuffle=False)['inception_score_mean']
             for p in logits.split(100)]  # 100, 100, 100, 50
    assert inception_score(logits, split_size=100) == pytest.approx(np.mean(parts), rel=1e-12)


def test_inception_score_closed_forms():
    assert inception_score(torch.zeros(100, 1008), split_size=50) == pytest.approx(1.0)  # p(y|x) = p(y): KL = 0
    # confident and spread evenly over C classes: KL(p(y|x) || p(y)) = log C, IS = C
    for C in (1, 8, 1008):  # each divides the split size
        logits = torch.full((2 * 1008, 1008), -1e4)
        logits[torch.arange(2 * 1008), torch.arange(2 * 1008) % C] = 0
        assert inception_score(logits, split_size=1008) == pytest.approx(C, rel=1e-9)

# ---------------------------------------------------------------------------------------------- sFID features


def test_sfid_features_are_adms_slice_of_mixed_6d():
    """ADM: spatial = graph['mixed_6/conv:0'][..., :7] (NHWC), then reshape([N, -1]). mixed_6/conv is Mixed_6d's 1x1
    branch, the first of the block's concatenated outputs, so Mixed_6d's output channels 0-6 are its channels 0-6."""
    torch.manual_seed(0)
    block = InceptionC(768, channels_7x7=160).eval()  # Mixed_6d's shape (pytorch-fid's FIDInceptionC only changes the pool)
    x = torch.randn(2, 768, 17, 17)
    with torch.no_grad():
        out, branch1x1 = block(x), block.branch1x1(x)  # (2, 768, 17, 17), (2, 192, 17, 17)
    feats = sfid_features(out)
    assert feats.shape == (2, 2023)
    nhwc = branch1x1.permute(0, 2, 3, 1).numpy()  # as TF holds mixed_6/conv:0
    assert np.array_equal(feats.numpy(), nhwc[..., :7].reshape(2, -1))
    assert feats[1, (5 * 17 + 3) * 7 + 6] == branch1x1[1, 6, 5, 3]  # feature (h * 17 + w) * 7 + c
