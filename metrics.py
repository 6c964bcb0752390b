"""
The light image metrics every script shares: PSNR and SSIM of images in [-1, 1]. Only torch: training an autoencoder
imports this file, while the Inception network, FID (scipy) and SWD stay in eval_fid.py, which imports these.
"""
import numpy as np
import torch
import torch.nn.functional as F


def psnr(x, y):
    """Per-image PSNR in dB, (B,), of x, y (B, C, H, W) in [-1, 1], measured on [0, 1] with peak 1 (the same number as
    on [0, 255] with peak 255): 10 log10(1 / MSE). Identical images give inf."""
    mse = ((x.double() - y.double()) / 2).pow(2).flatten(1).mean(1)  # / 2 maps a [-1, 1] difference to [0, 1]
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size=11, sigma=1.5):
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (11, 11), sums to 1


def ssim(x, y):
    """
    Per-image SSIM (Wang et al. 2004), (B,), of x, y (B, C, H, W) in [-1, 1], computed on [0, 1] (L = 1):
    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, local statistics under an 11 x 11 Gaussian window with sigma 1.5, over 'valid'
    windows only (no padding, as Wang et al. and scikit-image), averaged over windows and then over channels.
    """
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM's 11 x 11 window needs images of at least 11 pixels, got {tuple(x.shape[-2:])}.")
    C1, C2 = 0.01 ** 2, 0.03 ** 2
    x, y = (x.double() + 1) / 2, (y.double() + 1) / 2  # float64: the variances below are differences of moments
    C = x.shape[1]
    window = _gaussian_window().to(x.device).expand(C, 1, 11, 11)
    filt = lambda t: F.conv2d(t, window, groups=C)  # noqa: E731  local mean under the window
    mu_x, mu_y = filt(x), filt(y)
    var_x, var_y = filt(x * x) - mu_x ** 2, filt(y * y) - mu_y ** 2
    cov_xy = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + C1) * (2 * cov_xy + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2))
    return ssim_map.mean(dim=(1, 2, 3))

# ----------------------------------------------------------------------------------------------
# ADM's sample metrics on Inception features (openai/guided-diffusion, evaluations/evaluator.py), and KID. The features
# come from the FID Inception (TF's 2015-12-05 graph): pool_3 (N, 2048), the 1008-way logits, and the spatial features
# below. Equations in the terms of the papers; "as ADM" marks where the evaluator's code decides a detail.

def sfid_features(mixed_6d):
    """
    sFID's features (Nash et al. 2021, as ADM's evaluator takes them) from the output of Mixed_6d, (N, 768, 17, 17) ->
    (N, 2023). ADM reads the tensor "mixed_6/conv:0" of TF's 2015 graph and keeps its first 7 channels. In that graph
    mixed, mixed_1, mixed_2 are torchvision's Mixed_5b-5d (pytorch-fid's FIDInceptionA), mixed_3 is Mixed_6a,
    mixed_4 ... mixed_7 are Mixed_6b ... Mixed_6e (FIDInceptionC), mixed_8 is Mixed_7a and mixed_9, mixed_10 are
    Mixed_7b, 7c (FIDInceptionE); inside a block, "conv" is the 1x1 branch and tower, tower_1, tower_2 the others.
    So "mixed_6/conv" is Mixed_6d.branch1x1 (1x1 conv, batch norm, ReLU: (N, 192, 17, 17)), and since the block
    concatenates branch1x1 first, its first 7 channels are Mixed_6d's output channels 0-6. TF's tensors are NHWC and
    ADM flattens them as they are, so the 7 x 17 x 17 = 2023 features are ordered channels-last: feature
    (h * 17 + w) * 7 + c. The Frechet distance does not depend on that order as long as both sets share it, but
    ADM's reference batches store mu_s and sigma_s in it.
    """
    return mixed_6d[:, :7].permute(0, 2, 3, 1).flatten(1)  # (N, 17, 17, 7) -> (N, 2023)


def inception_score(logits, split_size=5000):
    """
    Inception Score (Salimans et al. 2016) of the 1008-way logits (N, 1008), as ADM's evaluator computes it:
    IS = exp(E_x KL(p(y|x) || p(y))), with p(y|x) = softmax(logits) and p(y) the mean of p(y|x) over a split. ADM takes
    the logits as pool_3 @ W, W the weights of the graph's softmax/logits/MatMul *without its bias* (pytorch-fid's
    fc.weight; torch-fidelity's 'logits_unbiased'). The samples are cut, in their order, into splits of split_size
    (a shorter remainder is a split of its own): 10 splits for 50K samples, 1 below 5000. Returns the mean over
    splits (ADM reports no spread).
    """
    p = torch.as_tensor(logits).double().softmax(dim=1)  # p(y|x), (N, 1008); ADM: float32
    scores = []
    for part in p.split(split_size):
        p_y = part.mean(dim=0)  # p(y) over the split
        # E_x KL(p(y|x) || p(y)) = E_x sum_y p(y|x) (log p(y|x) - log p(y)), with 0 log 0 = 0 (ADM's log would give nan)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return sum(scores) / len(scores)


def kernel_inception_distance(fake, real, num_subsets=100, subset_size=1000, seed=2020):
    """
    KID (Binkowski et al. 2018) of two feature sets (N, D), (M, D): the unbiased estimate of MMD^2 with the polynomial
    kernel k(x, y) = (x.y / D + 1)^3 on random subsets of m = min(subset_size, N, M) samples from each set,
      MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,
    -> (mean, std) over num_subsets subsets. Subsets are drawn as torch-fidelity draws them (numpy's RandomState(seed),
    a fake subset then a real one, without replacement), so with its defaults (100 subsets of 1000, seed 2020) the
    numbers are torch-fidelity's. Fewer samples than subset_size: subsets of all of the smaller set (Binkowski's code;
    torch-fidelity refuses). Computed in float64.
    """
    fake, real = torch.as_tensor(fake).double(), torch.as_tensor(real).double()
    m, D = min(subset_size, len(fake), len(real)), fake.shape[1]
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(fake)} and {len(real)}.")
    rng = np.random.RandomState(seed)
    kernel = lambda a, b: (a @ b.T / D + 1) ** 3  # noqa: E731  k(x, y) = (x.y / D + 1)^3
    mmd2 = []
    for _ in range(num_subsets):
        x = fake[torch.from_numpy(rng.choice(len(fake), m, replace=False))]
        y = real[torch.from_numpy(rng.choice(len(real), m, replace=False))]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        off_diagonal = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
        mmd2.append((off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / m ** 2).item())
    return float(np.mean(mmd2)), float(np.std(mmd2))


def pairwise_sq_distances(u, v, float16=True):
    """
    ADM's DistanceBlock: D_ij = max(|u_i|^2 - 2 u_i.v_j + |v_j|^2, 0), squared Euclidean distances of u (N, D) and
    v (M, D) -> (N, M). ADM evaluates it in float16 and falls back to float32 only when a float16 entry overflows;
    float16=True rounds to float16 where ADM's graph does (the inputs, |u|^2, u.v and each sum; products and sums
    accumulate in float32, as GPU kernels do). float16=False computes it in the inputs' precision.
    """
    if float16:
        h = lambda t: t.half().float()  # noqa: E731  one rounding to float16
        u16, v16 = h(u), h(v)
        norm_u, norm_v = h(h(u16 * u16).sum(1)), h(h(v16 * v16).sum(1))
        d = h(h(norm_u[:, None] - h(2 * h(u16 @ v16.T))) + norm_v[None]).clamp_min(0)
        if torch.isfinite(d).all():
            return d
        u, v = u.float(), v.float()
    return ((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None]).clamp_min(0)


def manifold_radii(features, k=3, batch_size=10000, float16=True):
    """
    The radius of each feature's ball in the k-NN manifold estimate (Kynkaanniemi et al. 2019): r_i = the squared
    distance from phi_i to its k-th nearest neighbour in the set, (N,) (the (k+1)-th smallest distance in its row, the
    first being phi_i itself). As ADM's ManifoldEstimator (k = 3): rows of batch_size features against all features,
    columns in blocks of batch_size, no clamping of large radii.
    """
    return torch.cat([torch.cat([pairwise_sq_distances(rows, cols, float16) for cols in features.split(batch_size)], 1)
                      .kthvalue(k + 1, dim=1).values for rows in features.split(batch_size)])


def precision_recall(real, fake, k=3, batch_size=10000, float16=True):
    """
    Improved precision and recall (Kynkaanniemi et al. 2019) of pool_3 features, as ADM's evaluator computes them. Each
    set's manifold is the union of the balls B(phi_i, r_i) around its features (manifold_radii);
      precision = (1/M) sum_j 1[exists i: |fake_j - real_i|^2 <= r_i^real]  (fake features on the real manifold),
      recall    = (1/N) sum_i 1[exists j: |real_i - fake_j|^2 <= r_j^fake]  (real features on the fake manifold).
    Distances in blocks of batch_size x batch_size (ADM's row and column batch sizes, 10000), in float16 as ADM
    (pairwise_sq_distances). real (N, D), fake (M, D) -> (precision, recall).
    """
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision and recall with k = {k} neighbours need more than {k} samples in each set, got "
                         f"{len(real)} real and {len(fake)} generated; evaluate more samples.")
    r_real, r_fake = manifold_radii(real, k, batch_size, float16), manifold_radii(fake, k, batch_size, float16)
    real_in = torch.zeros(len(real), dtype=torch.bool, device=real.device)  # real_i on the fake manifold
    fake_in = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)  # fake_j on the real manifold
    for a in range(0, len(real), batch_size):
        for b in range(0, len(fake), batch_size):
            d = pairwise_sq_distances(real[a:a + batch_size], fake[b:b + batch_size], float16)  # (rows, cols)
            real_in[a:a + batch_size] |= (d <= r_fake[None, b:b + batch_size]).any(dim=1)
            fake_in[b:b + batch_size] |= (d <= r_real[a:a + batch_size, None]).any(dim=0)
    return fake_in.double().mean().item(), real_in.double().mean().item()
