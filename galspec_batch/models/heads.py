"""What a head's outputs mean, and the losses that train them.

A ``gaussian`` head predicts, for each of ``n`` targets, a mean and a variance: ``2n`` outputs,
the means first, then ``softplus(raw) + VAR_FLOOR`` as the variance (the aleatoric part of the
predictive distribution, in z-scored units). It is trained with the beta-NLL of Seitzer et al.
(2022): the Gaussian negative log-likelihood of each object weighted by its own (detached)
variance to the power beta, which keeps the NLL from trading a poor mean for a large variance
on hard objects (beta = 0 is the plain NLL, beta = 1 has the gradient of the MSE for the mean).
A ``point`` head predicts only the ``n`` means and is trained on the RMSE (Wu & Peek 2020).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from galspec_batch import defaults as D
from galspec_batch.errors import UsageError, did_you_mean

HEADS = ("gaussian", "point")
LOSS_HEAD = {"beta-nll": "gaussian", "rmse": "point"}  # each training loss and the head it trains
VAR_FLOOR = 1e-4  # z-scored units: a predicted std below 1% of the population's is not credible


def check_head(kind: str) -> str:
    if kind not in HEADS:
        raise UsageError(f"unknown head {kind!r}; expected one of {', '.join(HEADS)}."
                         + did_you_mean(kind, HEADS))
    return kind


def head_width(kind: str, n_targets: int) -> int:
    """The number of outputs of a ``kind`` head for ``n_targets`` targets."""
    return 2 * n_targets if check_head(kind) == "gaussian" else n_targets


def split_head(out: torch.Tensor, kind: str, n_targets: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean, variance) of raw head outputs ``[..., head_width]``; the variance is None for a point
    head."""
    if out.shape[-1] != head_width(kind, n_targets):
        raise ValueError(f"a {kind} head for {n_targets} targets has {head_width(kind, n_targets)} outputs, "
                         f"got {out.shape[-1]}")
    if kind == "point":
        return out, None
    return out[..., :n_targets], F.softplus(out[..., n_targets:]) + VAR_FLOOR


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean((pred - target) ** 2))


def beta_nll(mean: torch.Tensor, var: torch.Tensor, target: torch.Tensor, beta: float = D.BETA_NLL
             ) -> torch.Tensor:
    """The beta-NLL (see the module docstring), averaged over objects and targets."""
    nll = 0.5 * (torch.log(var) + (target - mean) ** 2 / var)
    return torch.mean(nll * var.detach() ** beta) if beta else torch.mean(nll)


def head_loss(out: torch.Tensor, target: torch.Tensor, loss: str, beta: float = D.BETA_NLL
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, predicted means) of raw head outputs against z-scored targets."""
    kind = LOSS_HEAD[loss]
    mean, var = split_head(out, kind, target.shape[-1])
    if var is None:
        return rmse(mean, target), mean
    return beta_nll(mean, var, target, beta), mean
