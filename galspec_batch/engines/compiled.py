"""The ``compile`` engine: the eager body under ``torch.compile`` (Inductor).

The batch axis is compiled as dynamic, so the last, smaller batch of a partition does not trigger
a recompilation. The first call compiles (tens of seconds on a CPU, less on a GPU); later calls
in the same process reuse the compiled code.
"""

from __future__ import annotations

import torch
from torch import nn

from .eager import EagerEngine


class CompiledEngine(EagerEngine):
    """:class:`EagerEngine` with the body compiled by ``torch.compile``."""

    name = "compile"

    def _wrap(self, module: nn.Module):
        return torch.compile(module, dynamic=True)
