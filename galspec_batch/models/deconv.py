"""Network deconvolution (Ye et al. 2020, ICLR, "Network Deconvolution"), written for this project.

The layer whitens the im2col patches of its input before convolving them: in training it estimates
the patch mean and the inverse square root of the patch covariance from a strided sample of patches
(Newton-Schulz iterations), folds both into the convolution weight and bias, and keeps running
averages of the mean and of the inverse square root (not of the covariance). In eval mode it is
therefore exactly a convolution, which `fold()` returns as a plain `nn.Conv2d`.

Channel blocks follow the reference implementation (`FastDeconv`): with `groups == 1` the
`in_ch * k * k` patch columns are split into `in_ch // block` interleaved blocks (column j belongs to
block j mod (in_ch // block)) that share ONE pooled covariance of size `block * k * k`; with
`groups > 1` each group of consecutive channels gets its own covariance.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .isqrt import isqrt_newton_schulz


class _Gram(torch.autograd.Function):
    """`x^T x` of patch columns [..., M, nf]; backward is one product, `x (g + g^T)`, where autograd
    through the matmul takes two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.mT @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return x @ (grad + grad.mT)


class DeconvConv2d(nn.Module):
    """A 2-d convolution over whitened (deconvolved) input patches; parameters are `weight` and `bias`.

    Defaults are the reference's: eps 1e-5, 5 Newton-Schulz iterations, momentum 0.1, block 64 and
    patch sampling every `sampling_stride * stride` pixels. Square kernels, dilation 1, zero padding.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        eps: float = 1e-5,
        n_iter: int = 5,
        momentum: float = 0.1,
        block: int = 64,
        sampling_stride: int = 3,
    ) -> None:
        super().__init__()
        if in_ch % groups or out_ch % groups:
            raise InputError(
                f"DeconvConv2d: in_ch={in_ch} and out_ch={out_ch} must both be divisible by groups={groups}"
            )
        if min(in_ch, out_ch, kernel_size, stride, groups, block, sampling_stride, n_iter) < 1:
            raise InputError("DeconvConv2d: channels, kernel_size, stride, groups, block, "
                             "sampling_stride and n_iter must be positive")
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        self.eps, self.n_iter, self.momentum = eps, n_iter, momentum
        self.sampling_stride = sampling_stride
        if groups > 1:
            block = in_ch // groups
        elif block >= in_ch:
            block = in_ch
        elif in_ch % block:
            block = math.gcd(block, in_ch)
        self.block = block
        self.n_blocks = in_ch // block
        self.num_features = kernel_size * kernel_size * block

        self.weight = nn.Parameter(torch.empty(out_ch, in_ch // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        nf = self.num_features
        if groups == 1:
            self.register_buffer("running_mean", torch.zeros(nf))
            self.register_buffer("running_deconv", torch.eye(nf))
        else:
            self.register_buffer("running_mean", torch.zeros(nf * groups))
            self.register_buffer("running_deconv", torch.eye(nf).repeat(groups, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same initialisation as `nn.Conv2d` (models re-initialise with Kaiming normal)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
                f"block={self.block}, n_iter={self.n_iter}, sampling_stride={self.sampling_stride}")

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The sampled patch matrix the statistics come from: [M, nf] (groups 1) or [M, groups * nf]."""
        k, c = self.kernel_size, x.shape[1]
        step = self.sampling_stride * self.stride
        if k > 1:
            cols = F.unfold(x, k, padding=self.padding, stride=step).transpose(1, 2).reshape(-1, c * k * k)
        else:
            cols = x.permute(0, 2, 3, 1).reshape(-1, c)[:: step * step]
        if self.groups == 1:
            # column f * n_blocks + g of a patch is feature f of block g; blocks become extra rows
            cols = cols.reshape(-1, self.num_features, self.n_blocks).transpose(1, 2)
            cols = cols.reshape(-1, self.num_features)
        return cols

    def whitening(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch mean and inverse-sqrt covariance of a batch (float32 at least, differentiable)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            cols = self.patches(x.to(dtype))
            mean = cols.mean(0)
            cols = cols - mean
            nf = self.num_features
            if self.groups > 1:
                cols = cols.reshape(-1, self.groups, nf).transpose(0, 1)  # [G, M, nf]
            eye = torch.eye(nf, dtype=dtype, device=x.device)
            cov = _Gram.apply(cols) / cols.shape[-2] + self.eps * eye
            return mean, isqrt_newton_schulz(cov, self.n_iter)

    def _folded(self, mean: torch.Tensor, deconv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight W.D and bias b - (W.D).mean of the equivalent convolution."""
        nf, nb, out = self.num_features, self.n_blocks, self.out_ch
        weight = self.weight.to(deconv.dtype)
        if self.groups == 1:
            w = weight.reshape(out, nf, nb).transpose(1, 2).reshape(-1, nf) @ deconv
            shift = (w @ mean).reshape(out, nb).sum(1)
            w = w.reshape(out, nb, nf).transpose(1, 2)
        else:
            w = weight.reshape(self.groups, out // self.groups, nf) @ deconv
            shift = (w @ mean.reshape(self.groups, nf, 1)).reshape(out)
        bias = -shift if self.bias is None else self.bias.to(deconv.dtype) - shift
        return w.reshape(self.weight.shape), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, deconv = self.whitening(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_deconv.lerp_(deconv.detach().to(self.running_deconv.dtype), self.momentum)
        else:
            mean, deconv = self.running_mean, self.running_deconv
        w, b = self._folded(mean, deconv)
        return F.conv2d(x, w.to(x.dtype), b.to(x.dtype), self.stride, self.padding, 1, self.groups)

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        """The plain convolution this layer is in eval mode (running statistics; math in float64)."""
        w, b = self._folded(self.running_mean.double(), self.running_deconv.double())
        conv = nn.Conv2d(self.in_ch, self.out_ch, self.kernel_size, self.stride, self.padding,
                         groups=self.groups, bias=True, device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        return conv


def fold_deconv(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, in eval mode, with every `DeconvConv2d` replaced by its `fold()`."""
    if isinstance(model, DeconvConv2d):
        return model.fold().eval()
    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DeconvConv2d):
                setattr(parent, name, child.fold())
    return folded
