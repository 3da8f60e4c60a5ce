"""What each worker holds: the model, loaded once per process, and the batch predictor.

A Dask worker plugin loads the model when the worker starts; tasks find it in a per-process
cache keyed by the model spec, so in-process runs (``cluster="none"``) use the same code.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
from distributed import WorkerPlugin

from galspec_batch import defaults as D
from galspec_batch.checkpoint import load_checkpoint
from galspec_batch.errors import InputError
from galspec_batch.mc import head_parameters, mc_predict
from galspec_batch.options import PredictOptions

_PREDICTORS: dict[ModelSpec, Predictor] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a predictor in any process; ``model_hash`` is the checkpoint's
    as the coordinator saw it (a checkpoint changed since is refused)."""

    checkpoint: str
    model_hash: str
    config_hash: str
    options: PredictOptions
    torch_threads: int = 0  # 0: leave torch's default
    std_scale: tuple[float, ...] | None = None  # per-target calibration of the spread
    flux_scale: tuple[float, ...] | None = None  # per-band factors onto the model's flux scale


class Predictor:
    """Images in, predictive distributions out: each target's mean and calibrated spread (and its
    parts), in the targets' units."""

    def __init__(self, spec: ModelSpec):
        from galspec_batch.engines import create_engine

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.checkpoint = load_checkpoint(spec.checkpoint, device="cpu")
        found = (self.checkpoint.model_hash, self.checkpoint.config.value_hash())
        if found != (spec.model_hash, spec.config_hash):
            raise InputError(f"checkpoint {spec.checkpoint} changed since this run began (its weights or "
                             "config.json differ from the run's)")
        net = self.checkpoint.net
        opts = spec.options
        self.device = torch.device(opts.device)
        self.engine = create_engine(opts.engine, net, device=opts.device, precision=opts.precision)
        weight, bias, self.p = head_parameters(net.head)
        self.weight, self.bias = weight.to(self.device), bias.to(self.device)
        self.head, self.n_targets = net.head_kind, net.n_out
        self.target_mean = net.target_mean.detach().to(self.device, torch.float32)
        self.target_std = net.target_std.detach().to(self.device, torch.float32)
        self.std_scale = (torch.ones_like(self.target_std) if spec.std_scale is None
                          else torch.tensor(spec.std_scale, dtype=torch.float32, device=self.device))
        self._copy_stream = None
        self.flux_scale = None
        if spec.flux_scale is not None:
            factors = torch.tensor(spec.flux_scale, dtype=torch.float32, device=self.device)
            self.flux_scale = factors.view(1, -1, 1, 1)

    @property
    def asynchronous(self) -> bool:
        """Whether ``launch`` returns before the work is done (a GPU), for the feed."""
        return self.device.type == "cuda"

    @property
    def pin(self) -> bool:
        """Whether the feed's host buffers should be page-locked (a GPU)."""
        return self.device.type == "cuda"

    def upload(self, images: torch.Tensor) -> torch.Tensor:
        """Host images, as the store keeps them (float16 halves the bytes read and copied), onto
        the device: on a GPU a copy on a stream of its own, which the compute stream waits for (the
        copy of the next batch overlaps this one's compute); on the CPU the tensor itself."""
        if self.device.type != "cuda":
            return images
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            x = images.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # the allocator must not reuse x's memory before compute is done with it
        return x

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        """To float32 by torch (on the GPU, or with vector instructions: 3.7x numpy's ``astype``)."""
        x = x.float()
        return x if self.flux_scale is None else x * self.flux_scale

    @torch.inference_mode()
    def launch(self, x: torch.Tensor, object_id: np.ndarray) -> tuple[list[str], torch.Tensor]:
        """Start the network and the MC head on uploaded images; returns the outputs' names and the
        outputs still on the device, stacked [parts, N, n_targets] (see ``fetch``). On the CPU the
        network sees sub-batches of ``CPU_COMPUTE_BATCH`` (a batch of 256 at 224 px spends most of
        its extra time in page faults); a GPU takes the whole batch."""
        n = max(len(x), 1)  # an empty batch is one (empty) step
        step = n if self.device.type == "cuda" else D.CPU_COMPUTE_BATCH
        features = torch.cat([self.engine.features(self._float(x[a:a + step])).float()
                              for a in range(0, n, step)])
        out = mc_predict(
            features, torch.from_numpy(object_id), self.weight, self.bias, self.p,
            T=self.spec.options.mc_samples, seed=self.spec.options.seed, head=self.head,
        )
        names = ["mean", *(k for k in out if k != "mean")]
        scaled = [out["mean"] * self.target_std + self.target_mean]
        scaled += [out[k] * self.target_std * self.std_scale for k in names[1:]]
        return names, torch.stack(scaled)

    def fetch(self, launched: tuple[list[str], torch.Tensor]) -> dict[str, np.ndarray]:
        """float32 [N, n_targets] arrays of launched work (one copy back, which waits for it):
        ``mean``, the calibrated 1-sigma ``std`` and its parts ``std_epistemic`` and (a gaussian
        head) ``std_aleatoric``, as :func:`mc_predict` names them."""
        names, stacked = launched
        return dict(zip(names, stacked.cpu().numpy(), strict=True))

    def predict(self, images: np.ndarray, object_id: np.ndarray) -> dict[str, np.ndarray]:
        """Images in, results out, in one call (see ``launch`` and ``fetch``)."""
        return self.fetch(self.launch(self.upload(torch.from_numpy(images)), object_id))


def get_predictor(spec: ModelSpec) -> Predictor:
    """The predictor for ``spec`` in this process, built on first use."""
    if spec not in _PREDICTORS:
        _PREDICTORS.clear()  # one model per worker at a time
        _PREDICTORS[spec] = Predictor(spec)
    return _PREDICTORS[spec]


_LAST_TRIM = [0.0]


def trim_freed_memory(interval: float = D.TRIM_INTERVAL_S) -> bool:
    """Hand the heap memory that glibc keeps after it is freed back to the system (``malloc_trim``),
    at most every ``interval`` seconds. Between batches of 224 px cutouts (activations of tens of
    MB) what glibc kept grew a 10,240-cutout run's resident memory by a fifth from its first to its
    last third; trimming every 5 s halves that growth and lowers the peak by a tenth at no
    measurable cost, where every second cost about 4% (bench_memory.py). Returns whether it trimmed."""
    libc, now = _libc(), time.monotonic()
    if libc is None or now - _LAST_TRIM[0] < interval:
        return False
    _LAST_TRIM[0] = now
    libc.malloc_trim(0)
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def undo_malloc_trim() -> bool:
    """Give malloc back the thresholds it would choose itself, where ``MALLOC_TRIM_THRESHOLD_`` fixed
    them. Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which also stops
    glibc from raising its mmap threshold: each freed activation goes back to the system and the
    next one page-faults in again, and torch's CPU inference ran at 0.31x (602 against 1,915
    cutouts/s, simple-cnn at 64 px, 2 threads). The values are glibc's own ceiling for them (mmap
    32 MiB, trim twice that). Returns whether they were set (glibc only)."""
    libc = _libc()
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))


class ModelPlugin(WorkerPlugin):
    """Dask worker plugin: load the model when the worker starts (and after a restart)."""

    name = "galspec-model"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def setup(self, worker) -> None:
        # Ctrl-C reaches every process of the terminal's group: the coordinator stops the workers,
        # which should not each print a traceback of their own
        with contextlib.suppress(ValueError):  # only a process's main thread may set it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        undo_malloc_trim()
        if self.spec.options.device.startswith("cuda") and "CUDA_VISIBLE_DEVICES" in os.environ:
            torch.cuda.set_device(0)  # dask-cuda gives each worker one visible GPU
        get_predictor(self.spec)

    def teardown(self, worker) -> None:
        _PREDICTORS.pop(self.spec, None)
