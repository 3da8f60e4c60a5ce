"""The eager engine: the folded body in plain PyTorch (low precision and channels-last on a GPU)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Engine, FeatureGraph, check_images, check_precision, resolve_device


class EagerEngine(Engine):
    """Runs the body as it is, in batches of at most ``max_batch`` images.

    ``channels_last`` (default: on for a GPU) stores images and activations as NHWC, the layout
    cuDNN's fastest half-precision convolutions use.
    """

    name = "eager"

    def __init__(self, net: nn.Module, *, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None, max_batch: int = 1024) -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.max_batch = int(max_batch)
        module = FeatureGraph(net, check_precision(precision)).to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self._forward = self._wrap(module)

    def _wrap(self, module: nn.Module):
        return module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x)
        outs = []
        with torch.inference_mode():
            for chunk in x.split(self.max_batch) if len(x) else [x]:
                # move first, then widen: a float16 batch crosses PCIe at half the bytes
                chunk = chunk.to(self.device, non_blocking=True).float()
                if self.channels_last:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                outs.append(self._forward(chunk).float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)
