"""
The I3D network of FVD (Unterthiner et al. 2018), its Kinetics-400 weights and the preprocessing of cd-fvd / TATS /
VideoGPT, so that our FVD numbers are theirs.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.cli import I3D_WEIGHTS_FILE, I3D_WEIGHTS_URL
from utils.weights import fetch_weights

# ----------------------------------------------------------------------------------------------
# FVD (Unterthiner et al. 2018): the Frechet distance between I3D (Carreira & Zisserman 2017) Kinetics-400 logits of
# real and generated 16-frame clips. Network, weights and preprocessing are those of cd-fvd (Ge et al. 2024), TATS and
# VideoGPT: DeepMind's RGB Kinetics-400 I3D in piergiaj's PyTorch port; the first 16 frames; each frame's shorter side
# resized bilinearly to 224 and centre-cropped (StyleGAN-V's crop; a plain resize for square videos); values
# 2 x / 255 - 1 in [-1, 1], as the original TF code; the 400 logits averaged over time are the features.

FVD_NUM_FRAMES = 16
FVD_RESOLUTION = 224


def _pad_same(x, kernel, stride):
    """TensorFlow's 'SAME' padding of x (B, C, T, H, W) for a kernel and stride over (T, H, W); the odd pixel at the end."""
    pad = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        total = max(k - (size % s or s), 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


def _max_pool_same(x, kernel, stride):
    # zero padding acts as TF's -inf padding here: every pooled tensor comes out of a ReLU
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d with 'SAME' padding, then BatchNorm and ReLU; the logits layer is a biased conv alone."""
    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


class InceptionModule3D(nn.Module):
    """Inception-v1 block inflated to 3-D: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1x1."""
    def __init__(self, in_channels, widths):  # widths of b0, b1a, b1b, b2a, b2b, b3b
        super().__init__()
        w = widths
        self.b0 = Unit3D(in_channels, w[0])
        self.b1a, self.b1b = Unit3D(in_channels, w[1]), Unit3D(w[1], w[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_channels, w[3]), Unit3D(w[3], w[4], (3, 3, 3))
        self.b3b = Unit3D(in_channels, w[5])

    def forward(self, x):
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D with the module names of piergiaj's port, so i3d_pretrained_400.pt loads as it is:
    videos (B, 3, T, 224, 224) in [-1, 1], T >= 9 -> (B, 400) Kinetics-400 logits averaged over time."""
    def __init__(self, num_classes=400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.Mixed_3b = InceptionModule3D(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule3D(256, (128, 128, 192, 32, 96, 64))
        self.Mixed_4b = InceptionModule3D(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule3D(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule3D(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule3D(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule3D(528, (256, 160, 320, 32, 128, 128))
        self.Mixed_5b = InceptionModule3D(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule3D(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, num_classes, logits=True)

    def forward(self, x):
        x = _max_pool_same(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))  # (B, 64, T/2, 56, 56)
        x = _max_pool_same(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))  # (B, 192, T/2, 28, 28)
        x = _max_pool_same(self.Mixed_3c(self.Mixed_3b(x)), (3, 3, 3), (2, 2, 2))  # (B, 480, T/4, 14, 14)
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))  # (B, 832, T/8, 7, 7)
        x = self.Mixed_5c(self.Mixed_5b(x))  # (B, 1024, T/8, 7, 7)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T/8 - 1, 1, 1); dropout is off at evaluation
        return self.logits(x).mean(dim=(2, 3, 4))  # logits averaged over time: (B, 400)


def fvd_preprocess(videos):
    """
    videos (B, T, 3, H, W) in [-1, 1], T >= 16 -> I3D input (B, 3, 16, 224, 224) in [-1, 1]: the first 16 frames,
    each frame's shorter side resized to 224 (bilinear, no antialiasing, as the TF and PyTorch FVD codes) and
    centre-cropped. Resizing is linear with weights summing to 1, so it commutes with uint8 -> 2 x / 255 - 1.
    """
    B, T, C, H, W = videos.shape
    if T < FVD_NUM_FRAMES:
        raise ValueError(f"FVD is measured on {FVD_NUM_FRAMES}-frame clips and these videos have {T} frames; "
                         f"generate longer videos, or use the weight-free video SWD.")
    R = FVD_RESOLUTION
    size = (R, max(R, math.ceil(W * R / H))) if H <= W else (max(R, math.ceil(H * R / W)), R)  # shorter side -> R
    x = F.interpolate(videos[:, :FVD_NUM_FRAMES].reshape(-1, C, H, W).float(), size=size, mode='bilinear',
                      align_corners=False)
    top, left = (size[0] - R) // 2, (size[1] - R) // 2
    x = x[:, :, top:top + R, left:left + R]
    return x.reshape(B, FVD_NUM_FRAMES, C, R, R).transpose(1, 2)  # (B, 3, 16, 224, 224)


def load_i3d(path=None, device='cpu'):
    """
    The FVD I3D with its Kinetics-400 weights, from `path` or else from their canonical URL through torch hub's cache
    (weights.fetch_weights): FileNotFoundError when neither works, ValueError when the file is not those weights.
    """
    state = fetch_weights(path, I3D_WEIGHTS_URL, I3D_WEIGHTS_FILE, 'the FVD I3D', '--i3d_weights')
    net = I3D()
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"{path or I3D_WEIGHTS_FILE} is not the Kinetics-400 I3D state dict of {I3D_WEIGHTS_URL}; "
                         f"pass that file as --i3d_weights.") from None
    return net.eval().requires_grad_(False).to(device)


@torch.no_grad()
def i3d_features(i3d, videos):
    """videos (B, T, 3, H, W) in [-1, 1] -> (B, 400) float32 FVD features on the network's device."""
    device = next(i3d.parameters()).device
    return i3d(fvd_preprocess(videos.to(device))).float()
