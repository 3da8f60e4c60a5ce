"""The small baselines of Wu & Peek 2020: three conv layers, global pooling, a linear head.

simple-cnn: conv-BN-ReLU 32 (stride 2, pad 1), 32 (stride 2, pad 1), 64 (pad 1).
simple-deconv: the same with deconvolution layers (with bias, padding 0) and ReLU, no BN.
"""

from __future__ import annotations

from torch import nn

from galspec_batch import defaults as D

from .deconv import DeconvConv2d
from .registry import SpectrumNet, register_model
from .xresnet import init_cnn

WIDTHS = (32, 32, 64)
STRIDES = (2, 2, 1)


def simple_body(in_bands: int, *, deconv: bool) -> nn.Sequential:
    """The three conv layers, global average pool and flatten."""
    layers: list[nn.Module] = []
    ni = in_bands
    for nf, stride in zip(WIDTHS, STRIDES, strict=True):
        if deconv:
            layers += [DeconvConv2d(ni, nf, 3, stride, padding=0), nn.ReLU()]
        else:
            layers += [nn.Conv2d(ni, nf, 3, stride, padding=1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
        ni = nf
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _create_simple(name: str, in_bands: int, n_out: int, dropout: float, head: str, *, deconv: bool
                   ) -> SpectrumNet:
    body = simple_body(in_bands, deconv=deconv)
    model = SpectrumNet(name, body, WIDTHS[-1], in_bands, n_out, dropout, head)
    init_cnn(model)
    return model


@register_model("simple-cnn")
def simple_cnn(in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
               dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    return _create_simple("simple-cnn", in_bands, n_out, dropout, head, deconv=False)


@register_model("simple-deconv")
def simple_deconv(in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
                  dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    return _create_simple("simple-deconv", in_bands, n_out, dropout, head, deconv=True)
