"""The paper's optimiser: RAdam + LookAhead ("Ranger", as fastai's ``ranger``) under a one-cycle
schedule (as fastai's ``fit_one_cycle``), and a pickle-free form of their state for resuming.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# fastai ranger: RAdam(mom=0.95, sqr_mom=0.99, eps=1e-6, decoupled wd) + Lookahead(k=6, alpha=0.5)
BETAS = (0.95, 0.99)
EPS = 1e-6
LOOKAHEAD_K = 6
LOOKAHEAD_ALPHA = 0.5
# fastai fit_one_cycle: pct_start 0.25, div 25, div_final 1e5, moms (0.95, 0.85, 0.95), cosine
PCT_START = 0.25
DIV = 25.0
DIV_FINAL = 1e5
MOMS = (0.95, 0.85)


class Lookahead:
    """Every ``k`` steps of the inner optimiser, pull slow weights ``alpha`` of the way towards the
    fast weights and reset the fast weights to them (Zhang et al. 2019)."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = LOOKAHEAD_K,
                 alpha: float = LOOKAHEAD_ALPHA) -> None:
        self.optimizer = optimizer
        self.k, self.alpha = k, alpha
        self.step_count = 0
        self.slow = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        self.step_count += 1
        if self.step_count % self.k:
            return
        fast = [p for g in self.optimizer.param_groups for p in g["params"]]
        for slow, p in zip(self.slow, fast, strict=True):
            slow.add_(p - slow, alpha=self.alpha)
            p.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lookahead": {"k": self.k, "alpha": self.alpha, "step_count": self.step_count,
                          "slow": list(self.slow)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        la = state["lookahead"]
        self.k, self.alpha, self.step_count = la["k"], la["alpha"], la["step_count"]
        with torch.no_grad():
            for slow, saved in zip(self.slow, la["slow"], strict=True):
                slow.copy_(saved)


def make_optimizer(net: nn.Module, lr: float, weight_decay: float = 0.01) -> Lookahead:
    """RAdam with decoupled weight decay, wrapped in LookAhead."""
    params = [p for p in net.parameters() if p.requires_grad]
    radam = torch.optim.RAdam(params, lr=lr / DIV, betas=BETAS, eps=EPS, weight_decay=weight_decay,
                              decoupled_weight_decay=True)
    return Lookahead(radam)


def make_one_cycle(opt: Lookahead, max_lr: float, total_steps: int,
                   pct_start: float = PCT_START) -> torch.optim.lr_scheduler.OneCycleLR:
    """Cosine one-cycle over ``total_steps`` optimiser steps: lr max/25 -> max -> max/1e5,
    beta1 0.95 -> 0.85 -> 0.95. Very short runs are scheduled as if a few steps longer (torch's
    OneCycleLR divides by zero when the warm-up phase is under two steps)."""
    total_steps = max(total_steps, math.ceil(2 / pct_start) + 2)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt.optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
        anneal_strategy="cos", cycle_momentum=True, base_momentum=MOMS[1], max_momentum=MOMS[0],
        div_factor=DIV, final_div_factor=DIV_FINAL / DIV,
    )


# -- pickle-free state: tensors to safetensors, the rest to JSON --------------------------------
def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under a fresh key.

    Dicts become ``{"__dict__": [[key, value], ...]}`` (keys may be ints), tuples
    ``{"__tuple__": [...]}``, tensors ``{"__tensor__": name}``.
    """
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in trainer state")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj
