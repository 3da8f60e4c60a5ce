"""Random dihedral (D4) augmentation: the 8 flips and 90-degree rotations of a square image."""

from __future__ import annotations

import torch

N_D4 = 8


def d4_transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of D4 applied to images [..., H, W]: rotate k % 4 quarter turns, then
    flip left-right when k >= 4. Element 0 is the identity."""
    y = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def d4_elements(h: int, w: int) -> tuple[int, ...]:
    """The D4 elements that keep an [h, w] image's shape: all 8 when square, else 0, 2, 4, 6."""
    return tuple(range(N_D4)) if h == w else (0, 2, 4, 6)


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of a batch [N, B, H, W] under its own random D4 element (all bands alike).

    Non-square images only get the 4 elements that keep their shape (identity, rot180, flips).
    One gather of every pixel, in the pixel order of each image's element.
    """
    n, b, h, w = x.shape
    base = torch.arange(h * w).view(h, w)
    orders = torch.stack([d4_transform(base, k).reshape(-1) for k in d4_elements(h, w)])
    index = orders[torch.randint(len(orders), (n,), generator=generator)].to(x.device)
    return x.flatten(2).gather(2, index[:, None, :].expand(n, b, h * w)).view_as(x)
