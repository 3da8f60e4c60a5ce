"""The xresnet18 family of Wu & Peek 2020 (fastai's XResNet, "bag of tricks" ResNet, He et al. 2019).

`xresnet18(c_in, n_out, sa=True, act=Mish, groups=64, reduction=8)` in fastai terms: a stem of three
3x3 convs (32, 32, 64 channels, the first with stride 2) and a 3x3 max-pool, four stages of two
basic blocks (64/128/256/512) whose first conv is grouped (64 groups), squeeze-and-excitation in
every block, simple self-attention in the last block of stage 1, Mish activations, an
AvgPool + 1x1 conv shortcut where the shape changes. Variants put network deconvolution in the
stem (`hybrid`) or in every conv layer (`deconv`, no batch norm anywhere).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from galspec_batch import defaults as D

from .deconv import DeconvConv2d
from .registry import SpectrumNet, register_model

GROUPS = 64
REDUCTION = 8
STEM_WIDTHS = (32, 32, 64)
STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


def conv_layer(ni: int, nf: int, ks: int = 3, stride: int = 1, groups: int = 1, *, deconv: bool = False,
               zero_bn: bool = False, act: nn.Module | None = None) -> nn.Sequential:
    """conv -> BN -> act (fastai ConvLayer); a deconvolution layer (with bias) replaces conv + BN."""
    if deconv:
        layers: list[nn.Module] = [DeconvConv2d(ni, nf, ks, stride, ks // 2, groups=groups)]
    else:
        bn = nn.BatchNorm2d(nf)
        nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
        layers = [nn.Conv2d(ni, nf, ks, stride, ks // 2, groups=groups, bias=False), bn]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features: 1x1 conv -> Mish -> 1x1 conv -> sigmoid."""

    def __init__(self, ch: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        hidden = -(-(ch // reduction) // 8) * 8  # fastai: ceil(ch // reduction / 8) * 8
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, hidden, 1), nn.Mish(),
                                  nn.Conv2d(hidden, ch, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SimpleSelfAttention(nn.Module):
    """x + gamma * (x x^T) conv(x) over flattened pixels (fastai), gamma starting at 0."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        conv = nn.Conv1d(ch, ch, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        out = torch.bmm(torch.bmm(flat, flat.transpose(1, 2)), self.conv(flat))
        return (self.gamma * out + flat).view_as(x)


class ResBlock(nn.Module):
    """Basic residual block: grouped 3x3 conv, 3x3 conv (zero-init BN), SE, optional self-attention."""

    def __init__(self, ni: int, nf: int, stride: int, *, sa: bool, deconv: bool) -> None:
        super().__init__()
        path = [conv_layer(ni, nf, 3, stride, GROUPS, deconv=deconv, act=nn.Mish()),
                conv_layer(nf, nf, 3, deconv=deconv, zero_bn=True),
                SqueezeExcite(nf)]
        if sa:
            path.append(SimpleSelfAttention(nf))
        self.convpath = nn.Sequential(*path)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
        if ni != nf:
            shortcut.append(conv_layer(ni, nf, 1, deconv=deconv))
        self.idpath = nn.Sequential(*shortcut)
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convpath(x) + self.idpath(x))


def xresnet_body(in_bands: int, *, stem_deconv: bool, body_deconv: bool) -> nn.Sequential:
    """Stem, max-pool, the four stages, global average pool and flatten."""
    widths = (in_bands, *STEM_WIDTHS)
    stem = [conv_layer(widths[i], widths[i + 1], 3, 2 if i == 0 else 1, deconv=stem_deconv, act=nn.Mish())
            for i in range(3)]
    stages = []
    ni = STEM_WIDTHS[-1]
    for i, (nf, n_blocks) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE, strict=True)):
        blocks = [ResBlock(ni if j == 0 else nf, nf, 2 if (i > 0 and j == 0) else 1,
                           sa=(i == 0 and j == n_blocks - 1), deconv=body_deconv)
                  for j in range(n_blocks)]
        stages.append(nn.Sequential(*blocks))
        ni = nf
    return nn.Sequential(*stem, nn.MaxPool2d(3, 2, 1), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())


# The attention's x x^T sums over every pixel of a stage-1 map (3136 at 224 px), and the product
# with conv(x) over 64 channels of those sums: O(1) activations already pass float16's 65504.
FP32_LAYERS = (SimpleSelfAttention,)


def init_cnn(model: nn.Module) -> None:
    """fastai's init_cnn: Kaiming-normal conv and linear weights, zero biases (BN and attention
    are initialised where they are built)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, DeconvConv2d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _create_xresnet(name: str, in_bands: int, n_out: int, dropout: float, head: str, *,
                    stem_deconv: bool, body_deconv: bool) -> SpectrumNet:
    body = xresnet_body(in_bands, stem_deconv=stem_deconv, body_deconv=body_deconv)
    model = SpectrumNet(name, body, STAGE_WIDTHS[-1], in_bands, n_out, dropout, head)
    init_cnn(model)
    return model


@register_model("xresnet18", fp32_layers=FP32_LAYERS)
def xresnet18(in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
              dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    return _create_xresnet("xresnet18", in_bands, n_out, dropout, head, stem_deconv=False, body_deconv=False)


@register_model("xresnet18-hybrid", fp32_layers=FP32_LAYERS)
def xresnet18_hybrid(in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
                     dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    return _create_xresnet("xresnet18-hybrid", in_bands, n_out, dropout, head, stem_deconv=True,
                           body_deconv=False)


@register_model("xresnet18-deconv", max_lr=0.003, fp32_layers=FP32_LAYERS)
def xresnet18_deconv(in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
                     dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    return _create_xresnet("xresnet18-deconv", in_bands, n_out, dropout, head, stem_deconv=True,
                           body_deconv=True)
