"""MC-dropout uncertainty from the head alone: run the body once, the dropout head T times.

For a gaussian head (:mod:`galspec_batch.models.heads`) each sample gives a mean and a variance:
the predictive distribution is their mixture, whose variance is the epistemic part (the spread of
the T means) plus the aleatoric part (the mean of the T variances).

The head is Dropout(p) -> Linear, so T samples of it only need the body's features once:
sample t of object n is ``W @ (f_n * keep[n, t] / (1 - p)) + b``. The dropout masks come from a
counter-based hash of (run seed, object_id, t, feature), not from a random generator, so an
object's samples do not depend on which batch it was in, on the batch order or on the device,
and a rerun gives bit-identical rows.

The hash is 32-bit integer mixing ("lowbias32", C. Wellons) carried in int64 tensors, where every
product stays below 2**63 (the constant is split into 16-bit halves): defined behaviour on every
backend, unlike wrapping 64-bit multiplication. Each object gets a 64-bit key (two 32-bit words);
each hashed word gives two 16-bit uniforms ``u``, and a feature is kept when ``u >= p`` (so the
drop rate is p rounded up to a multiple of 2**-16: 0.20001 for p = 0.2; the kept features are
scaled by 1 / (1 - p), as torch's dropout does). Each object's T samples are one small float64
matrix product of its own, so its rows do not depend on the rest of the batch; means, standard
deviations and quantiles are rounded to float32 at the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from galspec_batch.errors import InputError
from galspec_batch.models.heads import split_head
from galspec_batch.options import DEFAULT_MC_SAMPLES

M32 = 0xFFFFFFFF
_KEY_A, _KEY_B, _KEY_COUNTER = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35
_MIX = (0x7FEB352D, 0x846CA68B)
_U_BITS = 16


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x <- x * c mod 2**32, in place, for int64 x in [0, 2**32): no product reaches 2**63."""
    high = (x * (c >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(c & 0xFFFF).add_(high).bitwise_and_(M32)


def mix32_(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 bijection of [0, 2**32), in place on an int64 tensor."""
    x ^= x >> 16
    _mul32_(x, _MIX[0])
    x ^= x >> 15
    _mul32_(x, _MIX[1])
    x ^= x >> 16
    return x


def _mix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * _MIX[0]) & M32
    x ^= x >> 15
    x = (x * _MIX[1]) & M32
    return x ^ (x >> 16)


def _object_keys(object_ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit words per object from (seed, object_id)."""
    lo, hi = object_ids & M32, (object_ids >> 32) & M32
    s_lo, s_hi = seed & M32, (seed >> 32) & M32
    words = []
    for key in (_KEY_A, _KEY_B):
        start = _mix32_int(_mix32_int(key ^ s_lo) ^ s_hi)
        words.append(mix32_(mix32_(lo ^ start) ^ hi))
    return words[0], words[1]


def keep_masks(object_ids: torch.Tensor, n_features: int, p: float, T: int, seed: int = 0) -> torch.Tensor:
    """Dropout keep-masks, bool [N, T, n_features], a pure function of (seed, object_id, t, feature).

    Word j of sample t of an object is ``mix32(((a ^ mix32(t * ceil(F/2) + j ^ K)) + b) mod 2**32)``
    for the object's key (a, b); its low and high 16 bits are the uniforms of features 2j and
    2j + 1, and a feature is kept when its uniform is >= ceil(p * 2**16) / 2**16.
    """
    ids = torch.as_tensor(object_ids, dtype=torch.int64)
    half = (n_features + 1) // 2
    if T * half >= 2**32:
        raise InputError(f"T * n_features = {T * n_features} is too large (must be below 2**33)")
    a, b = _object_keys(ids, int(seed) & (2**64 - 1))
    counter = torch.arange(T * half, dtype=torch.int64, device=ids.device).view(T, half)
    g = mix32_(counter ^ _KEY_COUNTER)
    x = (a.view(-1, 1, 1) ^ g).add_(b.view(-1, 1, 1)).bitwise_and_(M32)
    mix32_(x)
    threshold = math.ceil(p * 2**_U_BITS)  # u >= p  <=>  bits >= ceil(p * 2**16)
    keep = torch.stack([(x & 0xFFFF) >= threshold, (x >> 16) >= threshold], dim=-1)
    return keep.view(ids.shape[0], T, 2 * half)[..., :n_features]


def head_parameters(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight [n_out, F], bias [n_out], p) of a Dropout -> Linear head."""
    drops = [m for m in head.modules() if isinstance(m, nn.Dropout)]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(drops) != 1 or len(linears) != 1:
        raise InputError(f"MC dropout needs a head of one Dropout and one Linear; got {head}")
    bias = linears[0].bias
    if bias is None:
        bias = torch.zeros(linears[0].out_features, device=linears[0].weight.device)
    return linears[0].weight.detach(), bias.detach(), float(drops[0].p)


def _check(features: torch.Tensor, object_ids: torch.Tensor, weight: torch.Tensor, p: float, T: int) -> None:
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise InputError(f"features {tuple(features.shape)} and head weight {tuple(weight.shape)} do not "
                         f"fit: expected [N, F] and [n_out, F]")
    if object_ids.shape != (features.shape[0],):
        raise InputError(f"object_ids has shape {tuple(object_ids.shape)}; expected ({features.shape[0]},)")
    if not 0.0 <= p < 1.0:
        raise InputError(f"dropout p must be in [0, 1), got {p}")
    if T < 2:
        raise InputError(f"MC dropout needs T >= 2 samples for a standard deviation, got T={T}")


def mc_samples(features: torch.Tensor, object_ids: torch.Tensor | np.ndarray, weight: torch.Tensor,
               bias: torch.Tensor, p: float, T: int = DEFAULT_MC_SAMPLES, seed: int = 0) -> torch.Tensor:
    """The T head samples per object, float64 [N, T, n_out] (z-scored units)."""
    ids = torch.as_tensor(object_ids, dtype=torch.int64).to(features.device)
    f = features.to(torch.float64)
    w_t = weight.to(features.device, torch.float64).t()
    b = bias.to(features.device, torch.float64)
    if p == 0.0:  # no dropout: every sample is the deterministic head, exactly
        return (f @ w_t + b).unsqueeze(1).expand(-1, T, -1)
    keep = keep_masks(ids, f.shape[1], p, T, seed).to(torch.float64)
    # sample t = sum_f keep[t, f] * (f_f * W[:, f] / (1 - p)) + b: one [T, F] x [F, n_out] product
    # per object (the same arithmetic whatever the batch); float64, which no TF32 or reduced
    # precision matmul setting touches, costs little next to the masks
    scaled = (f.unsqueeze(2) * w_t).mul_(1.0 / (1.0 - p))
    return torch.bmm(keep, scaled).add_(b)


def mc_predict(
    features: torch.Tensor,
    object_ids: torch.Tensor | np.ndarray,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    p: float,
    T: int = DEFAULT_MC_SAMPLES,
    seed: int = 0,
    quantiles: tuple[float, ...] | list[float] | None = None,
    chunk_elements: int | None = None,
    *,
    head: str,
) -> dict[str, torch.Tensor]:
    """The predictive mean and spread of each target from T dropout samples of the head.

    Returns float32 tensors [N, n_targets] on the features' device, in the head's (z-scored)
    units: ``mean``; ``std_epistemic``, the unbiased spread of the T sampled means; for a gaussian
    ``head`` also ``std_aleatoric``, the root of the mean sampled variance; ``std``, the total
    (the root of the sum of their squares; the epistemic part alone for a point head); and, if
    ``quantiles`` is given, ``quantiles`` [N, len(quantiles), n_targets] of the T sampled means.
    Objects are processed in chunks of about ``chunk_elements`` mask entries (N * T * F) to bound
    memory.
    """
    ids = torch.as_tensor(object_ids, dtype=torch.int64)
    _check(features, ids, head_weight, float(p), int(T))
    if chunk_elements is None:
        chunk_elements = 2**24 if features.device.type == "cuda" else 2**19
    per_chunk = max(1, chunk_elements // (T * features.shape[1]))
    q = None if quantiles is None else torch.tensor(list(quantiles), dtype=torch.float64,
                                                    device=features.device)
    if q is not None and (q.numel() == 0 or bool(((q < 0) | (q > 1)).any())):
        raise InputError(f"quantiles must be a non-empty list of numbers in [0, 1], got {quantiles}")
    width = head_weight.shape[0]
    n_targets = width // 2 if head == "gaussian" else width
    keys = ["mean", "std", "std_epistemic"] + (["std_aleatoric"] if head == "gaussian" else [])
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys + (["quantiles"] if q is not None else [])}
    for start in range(0, features.shape[0], per_chunk):
        s = mc_samples(features[start:start + per_chunk], ids[start:start + per_chunk], head_weight,
                       head_bias, float(p), int(T), seed)
        mu, var = split_head(s, head, n_targets)
        # with p = 0 the samples are identical; a float64 sum of them need not be exact
        epi = mu.std(1, correction=1) if p > 0 else torch.zeros_like(mu[:, 0])
        out["mean"].append(mu.mean(1).float())
        out["std_epistemic"].append(epi.float())
        if var is None:
            out["std"].append(epi.float())
        else:
            ale2 = var.mean(1)
            out["std_aleatoric"].append(ale2.sqrt().float())
            out["std"].append((ale2 + epi**2).sqrt().float())
        if q is not None:
            out["quantiles"].append(torch.quantile(mu, q, dim=1).permute(1, 0, 2).float())
    if features.shape[0] == 0:
        shapes = {k: (0, q.numel(), n_targets) if k == "quantiles" else (0, n_targets) for k in out}
        return {k: torch.empty(shape, device=features.device) for k, shape in shapes.items()}
    return {k: torch.cat(v) for k, v in out.items()}


def mc_naive(net: nn.Module, x: torch.Tensor, T: int = DEFAULT_MC_SAMPLES) -> torch.Tensor:
    """The naive way, for comparison: T full forward passes with the dropout layers on.

    Returns the samples [T, N, n_out]; the network is left in eval mode.
    """
    net.eval()
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    for m in drops:
        m.train()
    try:
        with torch.no_grad():
            return torch.stack([net(x) for _ in range(T)])
    finally:
        for m in drops:
            m.eval()
