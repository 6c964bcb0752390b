"""Spatial conditioning (conditioning.py, model.apply_model, the replacement inpainting of diffusion.py) as a
specification: the SR sampling loop equals diffusers' LDMSuperResolutionPipeline; the degradations, masks and the label
rescaler meet their closed forms; inpainting by replacement keeps the known region on q(x_t | x0); the samplers work
at sizes other than the training size; the dead-leaves label map leaves the images unchanged."""
import functools
import io
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from utils import conditioning
from utils import data
from diffusion import Diffusion, cfg_model_fn, spaced_timesteps
from model import Autoencoder, make_ae_config
from denoiser import apply_model, build_backbone


def perturbed(module, scale=0.1, seed=0):
    """module with every weight moved at random, so that zero-initialised layers (the UNet's last conv, its extra input
    channels) no longer hide the input: its output then depends on x_t, t and the concat."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def test_sr_sampling_loop_equals_diffusers_ldm_super_resolution_pipeline():
    # Our UNet and autoencoder behind thin adapters in diffusers' pipeline (DDIM, leading spacing = our 'ddim', the
    # LDM schedule = diffusers' scaled_linear from 0.0015 to 0.0195), against our DDIM loop with the condition fed by
    # get_input and apply_model, from the same generator's noise: the same images.
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline
    torch.manual_seed(0)
    unet = perturbed(build_backbone('unet', 'tiny', latent_size=8, in_channels=3, num_classes=0, learn_sigma=False,
                                    cond_channels=3))
    ae = perturbed(Autoencoder(make_ae_config('tiny', {'z_channels': 3})), 0.02)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # f4 at x4: latent-sized

    class Adapter(torch.nn.Module):  # what the pipeline reads of a diffusers model besides its call
        device = property(lambda self: next(self.parameters()).device)
        dtype = property(lambda self: next(self.parameters()).dtype)

    class UNetAdapter(Adapter):  # diffusers calls unet(cat([latents, image]), t).sample
        config = types.SimpleNamespace(in_channels=6)

        def __init__(self):
            super().__init__()
            self.net = unet

        def forward(self, sample, t):
            t = t.expand(sample.shape[0]) if t.ndim == 0 else t
            return types.SimpleNamespace(sample=apply_model(self.net, sample[:, :3], t, {'concat': sample[:, 3:]}))

    class VQAdapter(Adapter):
        def __init__(self):
            super().__init__()
            self.ae = ae

        def decode(self, z):
            return types.SimpleNamespace(sample=self.ae.decode(z))

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule='scaled_linear',
                              clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing='leading')
    pipe = LDMSuperResolutionPipeline(vqvae=VQAdapter(), unet=UNetAdapter(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(lr, num_inference_steps=10, eta=0.0, generator=torch.Generator().manual_seed(3), output_type='pt').images

    cfg = conditioning.task_config('sr', sr_factor=4)
    cond = conditioning.get_input(cfg, {'LR_image': lr}, None, (8, 8))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = Diffusion('ldm_linear').ddim_sample(functools.partial(apply_model, unet, cond=cond), x_T, steps=10,
                                                spacing='ddim')
        ours = (ae.decode(z).clamp(-1, 1) + 1) / 2
    assert ours.shape == (2, 3, 32, 32) and theirs.shape == ours.shape
    assert (ours - theirs).abs().max() < 1e-4  # float32 (theirs) against float64 (our) schedule tables
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the LR image matters: the test would see a dropped concat


def test_bicubic_degradation_equals_pils_to_one_8bit_level():
    img = (data.dead_leaves(0, 1, 64) * 255).round().astype(np.uint8)
    for factor in (2, 4):
        pil = np.asarray(Image.fromarray(img).resize((64 // factor,) * 2, Image.BICUBIC), dtype=np.int64)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
        ours = ((conditioning.bicubic_downsample(x, factor) + 1) * 127.5).permute(1, 2, 0).numpy()
        assert np.abs(ours - ours.round()).max() < 1e-4 and np.abs(ours - pil).max() <= 1  # on the 8-bit grid
        assert (np.abs(ours - pil) > 0).mean() < 0.05


def test_bsr_light_is_deterministic_per_seed_and_lands_on_the_lr_size():
    x = torch.from_numpy(data.dead_leaves(0, 2, 32)).permute(2, 0, 1) * 2 - 1
    a, b, c = (conditioning.bsr_light(x, 4, s) for s in ([0, 1], [0, 1], [0, 2]))
    assert a.shape == (3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(conditioning.degrade(x, 4, 'bsr_light', [0, 1]), a)


def test_bsr_blur_kernels_are_normalised_gaussians_and_blur_keeps_a_constant():
    for seed in range(20):
        k = conditioning.gaussian_kernel(np.random.default_rng(seed), 4)
        assert abs(k.sum() - 1) < 1e-12 and (k >= 0).all() and 5 <= k.shape[0] <= 14
        if k.shape[0] % 2:  # odd kernels are centred: the Gaussian is point-symmetric, k(d) = k(-d)
            assert np.allclose(k, k[::-1, ::-1])
    const = torch.full((3, 16, 16), 0.3)
    assert torch.allclose(conditioning.blur(const, np.random.default_rng(0), 4), const, atol=1e-6)
    edge = torch.zeros(3, 16, 16)
    edge[:, :, 8:] = 1
    blurred = conditioning.blur(edge, np.random.default_rng(1), 4)
    assert blurred.min() >= -1e-6 and blurred.max() <= 1 + 1e-6 and torch.allclose(blurred.mean(), edge.mean(), atol=0.05)


def test_bsr_resize_reaches_the_size_and_noise_has_its_level():
    const = torch.full((3, 32, 32), -0.2)
    for seed in range(3):
        out = conditioning.resize_down(const, np.random.default_rng(seed), (8, 8))
        assert out.shape == (3, 8, 8) and torch.allclose(out, torch.full_like(out, -0.2), atol=1e-6)
    big, kinds = torch.zeros(3, 256, 256), set()
    for seed in range(30):  # sigma in {1, 2} / 255 on [0, 1], i.e. {2, 4} / 255 on [-1, 1], of three kinds
        n = conditioning.gaussian_noise(big, np.random.default_rng(seed)) * 255
        corr = torch.corrcoef(n.flatten(1))
        if torch.equal(n[0], n[1]) and torch.equal(n[1], n[2]):
            kind = 'grey'
        elif corr.triu(1).abs().max() < 0.03:
            kind = 'colour'
        else:  # N(0, L^2 U^T D U): every channel's variance at most L^2 = 4^2
            kind = 'correlated'
            assert n.std(dim=(1, 2)).max() < 4.1
        if kind != 'correlated':
            assert min(abs(n.std() - 2), abs(n.std() - 4)) < 0.05
        kinds.add(kind)
    assert kinds == {'grey', 'colour', 'correlated'}
    assert torch.equal(conditioning.gaussian_noise(big, np.random.default_rng(7)),
                       conditioning.gaussian_noise(big, np.random.default_rng(7)))


def test_bsr_jpeg_is_pils_jpeg_at_a_quality_from_80_to_95():
    x = torch.from_numpy(data.dead_leaves(0, 3, 32)).permute(2, 0, 1) * 2 - 1
    out = conditioning.jpeg(x, np.random.default_rng(5))
    q = int(np.random.default_rng(5).integers(80, 96))
    buf = io.BytesIO()
    Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(
        buf, format='JPEG', quality=q)
    ref = torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert 80 <= q <= 95 and torch.equal(out, ref)


@pytest.mark.parametrize('kind', ['thick', 'thin', 'box', 'mixed'])
def test_masks_are_deterministic_binary_and_meet_their_area_bounds(kind):
    area = (0.2, 0.5)
    masks = [conditioning.random_mask(32, 32, kind, [3, s], area) for s in range(8)]
    assert all(m.shape == (1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    assert all(area[0] <= m.mean().item() <= area[1] for m in masks)
    assert torch.equal(masks[0], conditioning.random_mask(32, 32, kind, [3, 0], area))
    assert not all(torch.equal(masks[0], m) for m in masks[1:])
    with pytest.raises(ValueError, match='widen --mask_area'):
        conditioning.random_mask(8, 8, kind, 0, (0.999, 0.9999), tries=5)


def test_inpainting_condition_is_the_masked_latent_and_the_nearest_downsampled_mask():
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    small = conditioning.latent_mask(mask, (4, 4))
    assert torch.equal(small, F.interpolate(mask * 2 - 1, size=(4, 4)))
    assert torch.equal(small, mask[..., ::4, ::4] * 2 - 1)  # nearest at an integer factor: each cell's first pixel
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    masked = conditioning.masked_image(x, mask)
    assert torch.equal(masked[mask.expand_as(x) == 1], torch.full_like(masked[mask.expand_as(x) == 1], -1))
    assert torch.allclose(masked[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0], atol=1e-6)
    encode = lambda v: F.avg_pool2d(v, 4)  # noqa: E731  any encoder: get_input concatenates its output and the mask
    cond = conditioning.get_input(conditioning.task_config('inpaint'), {'image': x, 'mask': mask}, encode, (4, 4))
    assert torch.equal(cond['concat'], torch.cat([encode(masked), small], 1))
    assert conditioning.concat_channels(conditioning.task_config('inpaint'), 3) == 4


def test_replace_mode_keeps_the_known_region_of_x_t_on_q_x_t_given_x0_at_every_step():
    # DDIM with eta 0 draws no noise of its own, so the generator's draws are exactly the replacement's, one per step:
    # redrawing them gives q_sample(x0, t, eps_k), which the known region of each x_t fed to the network must equal.
    d = Diffusion('ldm_linear')
    x0, x_T = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :4] = 1
    seen = []
    model_fn = lambda x, t: seen.append((x.clone(), int(t[0]))) or 0.1 * x  # noqa: E731
    d.ddim_sample(model_fn, x_T, steps=5, generator=torch.Generator().manual_seed(0), known=(x0, keep))
    g = torch.Generator().manual_seed(0)
    assert [t for _, t in seen] == spaced_timesteps(1000, 5).tolist()[::-1]
    for x, t in seen:
        expected = d.q_sample(x0, torch.tensor([t]), torch.randn(x.shape, generator=g))
        assert torch.allclose(x[..., :4], expected[..., :4], atol=1e-6)
        assert not torch.allclose(x[..., 4:], expected[..., 4:])  # the hole runs free
    seen.clear()
    d.ddpm_sample(model_fn, x_T, steps=3, generator=torch.Generator().manual_seed(0), known=(x0, keep))
    assert len(seen) == 3


def test_label_rescaler_is_compvis_spatial_rescaler_and_the_class_share_of_each_cell():
    seg = torch.randint(0, 5, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    onehot = F.one_hot(seg, 5).permute(0, 3, 1, 2).float()
    out = conditioning.spatial_rescale(onehot, (8, 8))
    ref = onehot
    for _ in range(2):  # CompVis' SpatialRescaler(n_stages=2, method='bilinear', multiplier=0.5)
        ref = F.interpolate(ref, scale_factor=0.5, mode='bilinear')
    assert torch.equal(out, ref)
    assert torch.allclose(out, F.avg_pool2d(onehot, 4), atol=1e-6)  # closed form: each class's share of a 4x4 cell
    assert torch.allclose(out.sum(1), torch.ones(2, 8, 8))
    cond = conditioning.get_input(conditioning.task_config('semantic', num_labels=5), {'segmentation': seg}, None, (8, 8))
    assert torch.equal(cond['concat'], out)


def test_dead_leaves_label_map_leaves_the_image_unchanged_and_names_each_pixels_shape_kind():
    for i in range(3):
        img = data.dead_leaves(0, i, 32)
        img2, seg = data.dead_leaves(0, i, 32, segmentation=True)
        assert np.array_equal(img, img2) and seg.shape == (32, 32) and seg.dtype == np.int64
        assert seg.min() >= 0 and seg.max() < len(data.SHAPE_KINDS) and len(np.unique(seg)) >= 2
    item, _, _ = data.DeadLeaves(32, segmentation=True).load(0)
    plain, _, _ = data.DeadLeaves(32).load(0)
    assert torch.equal(item['image'], plain) and item['segmentation'].shape == (32, 32)
    # a flat leaf ('plain') has no texture: within its interior the image varies only by shading and sensor noise,
    # while gratings and 1/f noise vary more
    img, seg = data.dead_leaves(0, 0, 64, segmentation=True)
    inner = F.max_pool2d(torch.from_numpy(seg[None, None] != 1).float(), 5, 1, 2)[0, 0].numpy() == 0
    lap = np.abs(img[1:-1, 1:-1] * 4 - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2] - img[1:-1, 2:]).mean(-1)
    textured = F.max_pool2d(torch.from_numpy(seg[None, None] < 2).float(), 5, 1, 2)[0, 0].numpy() == 0
    assert inner.sum() > 100 and textured.sum() > 100  # this image has both (802 and 1710 pixels)
    assert lap[inner[1:-1, 1:-1]].mean() < 0.5 * lap[textured[1:-1, 1:-1]].mean()


def test_task_data_items_carry_their_seeded_condition_inputs():
    images = data.DeadLeaves(16)
    sr = conditioning.TaskData(images, conditioning.task_config('sr', sr_factor=4), seed=0)
    b, _, _ = sr.load((3, 0))
    assert b['LR_image'].shape == (3, 4, 4) and torch.equal(b['image'], images.load(3)[0])
    inp = conditioning.TaskData(images, conditioning.task_config('inpaint', mask_area=(0.1, 0.6)), seed=0)
    m1, m2, m3 = (inp.load(it)[0]['mask'] for it in ((3, 0), (3, 0), (4, 0)))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3) and 0.1 <= m1.mean() <= 0.6
    sem = conditioning.TaskData(data.DeadLeaves(16, segmentation=True), conditioning.task_config('semantic', num_labels=4), 0)
    assert sem.load(0)[0]['segmentation'].shape == (16, 16)


def test_guidance_with_a_condition_dict_shares_the_concat_and_drops_only_the_label():
    torch.manual_seed(0)
    unet = perturbed(build_backbone('unet', 'tiny', latent_size=8, in_channels=2, num_classes=3, learn_sigma=False,
                                    cond_channels=1))
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 500])
    cond = {'y': torch.tensor([0, 2]), 'concat': torch.randn(2, 1, 8, 8)}
    with torch.no_grad():
        guided = cfg_model_fn(unet, cond, 3.0)(x, t)
        c = apply_model(unet, x, t, cond)
        u = apply_model(unet, x, t, {**cond, 'y': torch.tensor([3, 3])})
    assert torch.allclose(guided, u + 3.0 * (c - u), atol=1e-5)


@pytest.mark.parametrize('size', [8, 16, 24])
def test_samplers_end_on_the_data_point_at_any_latent_size(size):
    # the one-point oracle (tests/test_diffusion.py) at the training size of 8 and at 2x and 3x it: DDIM from any x_T
    # returns x*, as the UNet's convolutional sampling beyond its training size needs
    d = Diffusion('ldm_linear')
    x_star = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))

    def oracle(x_t, t):
        a = d.abar[t.cpu()].float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x_star) / (1 - a).sqrt()
    out = d.ddim_sample(oracle, torch.randn(2, 3, size, size), steps=20)
    assert torch.allclose(out, x_star.expand_as(out), atol=1e-4)
    unet = build_backbone('unet', 'tiny', latent_size=8, in_channels=3, num_classes=0, learn_sigma=False)
    assert unet(torch.randn(1, 3, size, size), torch.tensor([5])).shape == (1, 3, size, size)


def test_labelled_folder_crops_and_flips_image_and_label_map_together(tmp_path):
    # left third label 1 on black, the rest label 2 on white, in a 24 x 20 image: after the resize to 16, the centre
    # crop and a flip, every pixel's label still says whether it is dark or bright (but at the one blended column)
    img, lab = np.full((20, 24, 3), 255, np.uint8), np.full((20, 24), 2, np.uint8)
    img[:, :8], lab[:, :8] = 0, 1
    for i in range(2):
        Image.fromarray(img).save(tmp_path / f'{i}.png')
        Image.fromarray(lab).save(tmp_path / f'{i}_label.png')
    folder = data.make_dataset(str(tmp_path), 16, segmentation=True)
    assert isinstance(folder, data.LabelledFolder) and len(folder) == 2 and folder.num_labels == 3
    flips = set()
    for seed in range(6):
        item, _, _ = folder.load((0, seed))
        x, seg = item['image'].mean(0), item['segmentation']
        assert x.shape == seg.shape == (16, 16) and set(seg.unique().tolist()) == {1, 2}
        clear = (F.max_pool2d((seg == 1).float()[None], 3, 1, 1)[0] == 0) | (F.max_pool2d((seg == 2).float()[None], 3, 1, 1)[0] == 0)
        assert (x[clear & (seg == 1)] < -0.9).all() and (x[clear & (seg == 2)] > 0.9).all()
        flips.add(bool(seg[0, 0] == 2))
    assert flips == {True, False}  # both orientations were drawn
    Image.fromarray(img).save(tmp_path / 'lonely.png')
    with pytest.raises(SystemExit, match='1 of the 3 images .* no label map .*lonely.png'):
        data.LabelledFolder(str(tmp_path), 16)
