"""
LPIPS v0.1 with a VGG16 trunk (Zhang et al. 2018), the perceptual loss of LDM's autoencoder training and of the
autoencoder evaluation. Named perceptual.py, not lpips.py, so that it does not shadow the `lpips` package the tests
compare it against.
"""
import torch
import torch.nn as nn

from utils.weights import fetch_weights

VGG16_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
LPIPS_LIN_URL = 'https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth'


class ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the input statistics of ImageNet VGG ((x - shift) / scale, constants of LPIPS)."""

    def __init__(self):
        super().__init__()
        self.register_buffer('shift', torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer('scale', torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class VGG16Slices(nn.Module):
    """vgg16().features cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the five feature maps LPIPS compares.
    Submodules keep their index in vgg16().features (slice2.4 is features.4), as in the LPIPS package."""

    cuts = (0, 4, 9, 16, 23, 30)

    def __init__(self, features):
        super().__init__()
        for s in range(5):
            part = nn.Sequential()
            for i in range(self.cuts[s], self.cuts[s + 1]):
                part.add_module(str(i), features[i])
            setattr(self, f'slice{s + 1}', part)

    def forward(self, x):
        outs = []
        for s in range(1, 6):
            x = getattr(self, f'slice{s}')(x)
            outs.append(x)
        return outs


class NetLinLayer(nn.Module):
    """LPIPS's learned per-channel weights w_l: a bias-free 1x1 conv to one channel. The conv sits at index 1 so the
    keys match the v0.1 weight file (lin0.model.1.weight), where index 0 was a training-time Dropout."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


LPIPS_MIN_SIZE = 16  # VGG16 halves the image four times before relu5_3; below 16 px a feature map is empty


class LPIPS(nn.Module):
    """LPIPS v0.1 with a VGG16 trunk (Zhang et al. 2018), the perceptual loss of LDM. With unit-normalised features
    f_l (B, C_l, H_l, W_l): d(x, y) = sum_l mean_{h,w} sum_c w_lc (f_l(x) - f_l(y))^2. Frozen and in eval mode.
    Weights: local files if given, else downloaded / cached (pretrained=True), else random (tests)."""

    channels = (64, 128, 256, 512, 512)

    def __init__(self, vgg_weights=None, lin_weights=None, pretrained=True):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        from torchvision.models import vgg  # here, not at the top: importing torchvision costs seconds at every start
        features = vgg.make_layers(vgg.cfgs['D'])  # = vgg16().features
        if vgg_weights is not None or pretrained:
            sd = fetch_weights(vgg_weights, VGG16_URL, 'vgg16-397923af.pth', 'LPIPS')
            sd = {k[len('features.'):]: v for k, v in sd.items() if k.startswith('features.')}  # drop the classifier
            if set(sd) != set(features.state_dict()):
                raise ValueError(f"{vgg_weights or VGG16_URL} is not a torchvision VGG16 state dict (keys "
                                 f"features.0.weight ... features.28.bias)")
            features.load_state_dict(sd)
        self.net = VGG16Slices(features)
        for l, c in enumerate(self.channels):
            setattr(self, f'lin{l}', NetLinLayer(c))
        if lin_weights is not None or pretrained:
            sd = fetch_weights(lin_weights, LPIPS_LIN_URL, 'lpips_v0.1_vgg.pth', 'LPIPS')
            keys = [f'lin{l}.model.1.weight' for l in range(len(self.channels))]
            if not all(k in sd for k in keys):
                raise ValueError(f"{lin_weights or LPIPS_LIN_URL} is not an LPIPS v0.1 VGG weight file (keys "
                                 f"lin0.model.1.weight ... lin4.model.1.weight)")
            self.load_state_dict({k: sd[k] for k in keys}, strict=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x, y):
        """x, y (B, 3, H, W) in [-1, 1] -> (B,) distances; gradients flow to the inputs only."""
        B = x.shape[0]
        d = 0.0
        for l, f in enumerate(self.net(self.scaling_layer(torch.cat([x, y])))):  # one VGG pass for both images
            # f / |f| over channels; eps under the sqrt keeps the gradient finite where a ReLU map is all zero
            f = f * torch.rsqrt(f.pow(2).sum(dim=1, keepdim=True) + 1e-20)
            diff = (f[:B] - f[B:]).pow(2)  # (B, C_l, H_l, W_l)
            d = d + getattr(self, f'lin{l}')(diff).mean(dim=(1, 2, 3))  # w_l . diff averaged over positions -> (B,)
        return d
