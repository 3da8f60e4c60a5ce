"""Random dihedral (D4) augmentation: the 8 flips and 90-degree rotations of a square image."""

from __future__ import annotations

import torch

N_D4 = 8


def d4_transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of D4 applied to images [..., H, W]: rotate k % 4 quarter turns, then
    flip left-right when k >= 4. Element 0 is the identity."""
    y = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of a batch [N, B, H, W] under its own random D4 element (all bands alike).

    Non-square images only get the 4 elements that keep their shape (identity, rot180, flips).
    """
    square = x.shape[-1] == x.shape[-2]
    choices = torch.arange(N_D4) if square else torch.tensor([0, 2, 4, 6])
    ks = choices[torch.randint(len(choices), (x.shape[0],), generator=generator)]
    out = torch.empty_like(x)
    for k in ks.unique().tolist():
        idx = torch.nonzero(ks == k).flatten()
        out[idx] = d4_transform(x[idx], k)
    return out
