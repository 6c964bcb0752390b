"""
The Inception-v3 of FID (Heusel et al. 2017) and of ADM's evaluator: TensorFlow's 2015-12-05 graph as pytorch-fid ports
it onto torchvision's blocks, the network published FIDs are measured with, and its weights. One forward pass gives
what ADM's suite needs: pool_3 (FID, precision/recall, KID), the spatial features of sFID and the 1008-way logits of
IS, with the graph's own preprocessing (TF1's bilinear resize to 299 x 299, then (x - 128) / 128).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

from utils.cli import FID_WEIGHTS_FILE, FID_WEIGHTS_URL
from evaluation.metrics import sfid_features
from utils.weights import fetch_weights

# ----------------------------------------------------------------------------------------------
# FID Inception: the TF 2015-12-05 graph, as pytorch-fid ports it onto torchvision's blocks

INCEPTION_FEATURES = {'pool3': 2048, 'spatial': 7 * 17 * 17, 'logits': 1008}  # one forward pass's outputs and sizes


def _avg_pool_3x3(x):
    # TF's average pool leaves the zero padding out of the mean; torchvision's default counts it
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class FIDInceptionE(InceptionE):
    """The last two blocks of the graph: Mixed_7b pools by average (without padding), Mixed_7c by max, a quirk of the
    2015 graph that the FID definition inherits."""
    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


def resize_bilinear_tf1(x, size):
    """
    TF1's tf.image.resize_bilinear(align_corners=False), the resize inside the FID graph (its ResizeBilinear node, which
    ADM's evaluator and TTUR's FID feed): output pixel i samples the input at s_i = i * (n_in / n_out), computed in
    float32 as TF does, with no half-pixel offset (torch's align_corners=False, pytorch-fid's resize, samples at
    (i + 0.5) * n_in / n_out - 0.5), so the image shifts by up to half an input pixel; past the last pixel the edge
    repeats.
    Interpolates along x first, then y, in TF's order. x (B, C, H, W) float -> (B, C, size, size).
    """
    def taps(n_in):  # lower and upper neighbour and the weight of the upper one, for each output position
        s = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = s.floor()
        return lo.long(), (lo.long() + 1).clamp(max=n_in - 1), (s - lo).to(x.dtype)
    (y0, y1, dy), (x0, x1, dx) = taps(x.shape[2]), taps(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]  # (B, C, size, W)
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


class InceptionV3FID(nn.Module):
    """
    Inception-v3 as frozen in TF's 2015-12-05 graph, the network FID is defined with (1008 classes, the FIDInception
    blocks above). Attribute names are torchvision's, which are the names in pytorch-fid's weights file (and in
    torch-fidelity's), so that file loads with strict=True.
    forward(x): x (B, 3, H, W) in [-1, 1] -> {'pool3': (B, 2048), 'spatial': (B, 2023), 'logits': (B, 1008)}.
    """
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the graph's softmax layer; IS uses its weight, not its bias (as ADM)

    def forward(self, x):
        # the graph's input is pixel values in [0, 255]; its first nodes resize to 299 and map to (x - 128) / 128
        x = resize_bilinear_tf1((x + 1) * 127.5, 299)
        x = (x - 128) / 128  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d):
            x = block(x)
        spatial = sfid_features(x)  # ADM's mixed_6/conv[..., :7] from Mixed_6d's output (B, 768, 17, 17)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at (B, 2048, 8, 8)
        pool3 = x.mean(dim=(2, 3))  # (B, 2048)
        logits = pool3 @ self.fc.weight.T  # ADM's softmax graph: pool_3 @ W, without the bias
        return {'pool3': pool3, 'spatial': spatial, 'logits': logits}


def load_inception(path=None, device='cpu'):
    """
    The FID Inception with pytorch-fid's weights, from `path` or else from the canonical release through torch hub's
    cache (weights.fetch_weights): FileNotFoundError when neither works, ValueError when the file is not those weights.
    """
    state = fetch_weights(path, FID_WEIGHTS_URL, FID_WEIGHTS_FILE,
                          'the Inception of FID, sFID, IS, precision/recall and KID', '--inception_weights')
    net = InceptionV3FID()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise ValueError(f"{path or FID_WEIGHTS_FILE} does not hold the FID Inception's weights; pass pytorch-fid's "
                         f"{FID_WEIGHTS_FILE} with --inception_weights.") from None
    return net.eval().requires_grad_(False).to(device)
