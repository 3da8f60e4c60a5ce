"""The Newton-Schulz inverse square root of network deconvolution, computed two ways.

`n` coupled Newton-Schulz iterations on `A / ||A||_F` compute a fixed polynomial `p_n` of that
matrix (every iterate is a polynomial in it). The reference evaluates it with 3 matrix products an
iteration and lets autograd differentiate through all of them: 15 products forward and 30 backward
for the default 5 iterations. For a symmetric matrix the same polynomial can be applied to its
eigenvalues instead, `V p_n(L) V^T`, and differentiated exactly with the Daleckii-Krein formula,
whose divided differences of `p_n` follow the same recursion as the iterates (no division, so equal
eigenvalues are no special case). On the CPU one `eigh` of a 576 x 576 matrix costs about 8
products, so the spectral way takes about a third of the time there; on a GPU products are nearly
free and `eigh` is not, so they stay. Both compute the same function; they differ by round-off.
"""

from __future__ import annotations

import torch

# The smallest matrix the CPU computes spectrally: below it the products are as cheap
# (bench/bench_models.py --isqrt measures both ways at each size).
SPECTRAL_MIN_SIZE = 128


def _scalar_iterates(lam: torch.Tensor, n_iter: int) -> torch.Tensor:
    """`p_n` at each eigenvalue: the coupled recursion on scalars."""
    y, z = lam, torch.ones_like(lam)
    for _ in range(n_iter):
        t = 0.5 * (3.0 - z * y)
        y, z = y * t, t * z
    return z


def _divided_differences(lam: torch.Tensor, n_iter: int) -> torch.Tensor:
    """`(p_n(x) - p_n(w)) / (x - w)` for every pair of eigenvalues (`p_n'(x)` where x == w).

    The divided difference of a product is `D(fg) = Df g(x) + f(w) Dg`, so the recursion for the
    iterates carries over term by term without ever dividing.
    """
    x, w = lam[..., :, None], lam[..., None, :]
    yx, yw = x, w
    zx, zw = torch.ones_like(x), torch.ones_like(w)
    dy, dz = torch.ones_like(x * w), torch.zeros_like(x * w)
    for _ in range(n_iter):
        tx, tw = 0.5 * (3.0 - zx * yx), 0.5 * (3.0 - zw * yw)
        dt = -0.5 * (dz * yx + zw * dy)
        dy, dz = dy * tx + yw * dt, dt * zx + tw * dz
        yx, yw, zx, zw = yx * tx, yw * tw, tx * zx, tw * zw
    return dz


class _SpectralNewtonSchulz(torch.autograd.Function):
    """`p_n(A)` for symmetric `A` [..., n, n] through `eigh`, with its exact gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, n_iter: int) -> torch.Tensor:  # type: ignore[override]
        lam, vecs = torch.linalg.eigh(a)
        ctx.save_for_backward(lam, vecs)
        ctx.n_iter = n_iter
        return (vecs * _scalar_iterates(lam, n_iter)[..., None, :]) @ vecs.mT

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        lam, vecs = ctx.saved_tensors
        inner = _divided_differences(lam, ctx.n_iter) * (vecs.mT @ grad @ vecs)
        return vecs @ inner @ vecs.mT, None


def _products(a: torch.Tensor, n_iter: int) -> torch.Tensor:
    """The coupled iterations as matrix products, less the ones by the identity (the first
    iteration's) and the last iteration's unused `y`: 12 products for 5 iterations, not 15."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a, eye
    for i in range(n_iter):
        t = 0.5 * (3.0 * eye - (y if i == 0 else z @ y))
        if i < n_iter - 1:
            y = y @ t
        z = t if i == 0 else t @ z
    return z


def isqrt_newton_schulz(a: torch.Tensor, n_iter: int, method: str = "auto") -> torch.Tensor:
    """Approximate inverse square root of symmetric positive definite matrices `a` [..., n, n].

    Coupled Newton-Schulz iterations on `a / ||a||_F` (Frobenius norm, so that they converge);
    differentiable. Five iterations are approximate, more converge quadratically. `method`:
    "products" (the iterations as written), "spectral" (the same polynomial through `eigh`) or
    "auto" (spectral on the CPU from SPECTRAL_MIN_SIZE up).
    """
    if method not in ("auto", "products", "spectral"):
        raise ValueError(f"unknown Newton-Schulz method {method!r}")
    n = a.shape[-1]
    norm = a.flatten(-2).norm(dim=-1)[..., None, None]
    if method == "auto":
        method = "spectral" if a.device.type == "cpu" and n >= SPECTRAL_MIN_SIZE else "products"
    if method == "spectral":
        z = _SpectralNewtonSchulz.apply(a / norm, n_iter)
    else:
        z = _products(a / norm, n_iter)
    return z / norm.sqrt()
