"""Training throughput of the full training step, as `galspec train` runs it, before and after this
project's speed work, side by side in one process, on the CPU.

    python bench/bench_training.py [--batch 32 128] [--size 64] [--iters 4] [--threads 2]
                                   [--models ...] [--variants before after bf16 channels-last compile]

One step = D4 augmentation + preprocessing (asinh, z-score) + forward + beta-NLL + backward +
RAdam/LookAhead step + one-cycle step. Variants, each its own copy of the model from one seed:

- before: the previous D4 augmentation and the previous statistics of the deconvolution layers
  (the covariance and 15 Newton-Schulz matrix products, autograd through all of them), kept here;
- after: the library as it is (fp32, the default of `galspec train`);
- bf16: `TrainSettings(precision="bf16")`, bfloat16 autocast (run by default only where the CPU has
  native bfloat16 arithmetic, avx512_bf16 or AMX);
- channels-last, compile: `after` with channels-last tensors, or with `torch.compile` of the forward
  and loss (its compile time is printed), measured to decide against them.

Steps of the variants are interleaved and timed on the wall clock and on this process's CPU clock
(medians), so a load that comes and goes hits them alike; ratios are against `before` of the same
run. The deconvolution cost is each deconvolution model's step time over its BatchNorm twin's.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from galspec_batch.models import GalspecNet, create_model, deconv
from galspec_batch.models.heads import head_loss
from galspec_batch.training import default_max_lr, make_one_cycle, make_optimizer
from galspec_batch.training.augment import d4_elements, d4_transform, random_d4
from galspec_batch.training.loop import train_autocast

TWINS = {"xresnet18-hybrid": "xresnet18", "xresnet18-deconv": "xresnet18", "simple-deconv": "simple-cnn"}
MODELS = ["simple-cnn", "xresnet18", "xresnet18-hybrid", "xresnet18-deconv"]
VARIANTS = ["before", "after", "bf16", "channels-last", "compile"]
N_TARGETS = 7  # 6 latents and z


def reference_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The previous D4: a Python loop over the elements drawn, indexing and scattering each."""
    choices = torch.tensor(d4_elements(*x.shape[-2:]))
    ks = choices[torch.randint(len(choices), (x.shape[0],), generator=generator)]
    out = torch.empty_like(x)
    for k in ks.unique().tolist():
        idx = torch.nonzero(ks == k).flatten()
        out[idx] = d4_transform(x[idx], k)
    return out


def reference_isqrt(a: torch.Tensor, n_iter: int) -> torch.Tensor:
    """The previous Newton-Schulz: the reference's loop, 3 products an iteration."""
    norm = a.flatten(-2).norm(dim=-1)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    y, z = a / norm, eye
    for _ in range(n_iter):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / norm.sqrt()


class ReferenceGram:
    """The previous covariance: autograd through the product (two products backward)."""

    @staticmethod
    def apply(x: torch.Tensor) -> torch.Tensor:
        return x.mT @ x


@contextlib.contextmanager
def previous_deconv(active: bool) -> Iterator[None]:
    """The deconvolution layers compute their statistics the previous way inside this block."""
    current = deconv.isqrt_newton_schulz, deconv._Gram
    if active:
        deconv.isqrt_newton_schulz, deconv._Gram = reference_isqrt, ReferenceGram
    try:
        yield
    finally:
        deconv.isqrt_newton_schulz, deconv._Gram = current


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (avx512_bf16 or AMX), as /proc/cpuinfo says."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def make_step(name: str, variant: str, batch: int, size: int) -> Callable[[], float]:
    """A training step of model ``name`` in ``variant``, on fixed random data; returns the loss."""
    torch.manual_seed(0)
    net = GalspecNet(create_model(name, n_out=N_TARGETS), torch.ones(5), torch.zeros(5), torch.ones(5),
                     torch.zeros(N_TARGETS), torch.ones(N_TARGETS)).train()
    before = variant == "before"
    memory_format = torch.channels_last if variant == "channels-last" else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    lr = default_max_lr(name)
    opt = make_optimizer(net, lr)
    sched = make_one_cycle(opt, lr, total_steps=1000)
    x, y = torch.randn(batch, 5, size, size), torch.randn(batch, N_TARGETS)
    gen = torch.Generator().manual_seed(0)
    augment = reference_d4 if before else random_d4
    precision = "bf16" if variant == "bf16" else "fp32"

    def loss_of(images: torch.Tensor) -> torch.Tensor:
        with train_autocast(images.device.type, precision):
            out = net(images.contiguous(memory_format=memory_format))
        return head_loss(out.float(), y, "beta-nll")[0]

    forward = torch.compile(loss_of) if variant == "compile" else loss_of

    def step() -> float:
        with previous_deconv(before):
            loss = forward(augment(x, gen))
            opt.zero_grad()
            loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    return step


def bench(name: str, variants: list[str], batch: int, size: int, iters: int
          ) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of each variant, steps interleaved."""
    steps = {}
    for v in variants:
        steps[v] = make_step(name, v, batch, size)
        start = time.perf_counter()
        steps[v]()  # warm-up (and compilation)
        if v == "compile":
            print(f"  {name} batch {batch}: compile and first step {time.perf_counter() - start:.1f} s")
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(iters):
        for v in variants:
            w, c = time.perf_counter(), time.process_time()
            steps[v]()
            wall[v].append(time.perf_counter() - w)
            cpu[v].append(time.process_time() - c)
    return {v: (statistics.median(wall[v]), statistics.median(cpu[v])) for v in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="default: before, after, and bf16 where the CPU has native bfloat16")
    args = parser.parse_args()
    variants = args.variants or ["before", "after"] + ["bf16"] * cpu_has_native_bf16()
    if "before" not in variants:
        variants = ["before", *variants]
    torch.set_num_threads(args.threads)
    print(f"Full training step at {args.size} px, {args.iters} interleaved steps a variant (medians), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16: {cpu_has_native_bf16()}")
    with open("/proc/loadavg") as fh:
        print(f"load average at start: {' '.join(fh.read().split()[:3])}")
    head = "".join(f"{v + ' img/s':>20}" for v in variants)
    print(f"{'model':<18}{'batch':>6}{head}   wall (CPU-clock) ratios to before; deconv cost vs BN twin")
    for batch in args.batch:
        times = {name: bench(name, variants, batch, args.size, args.iters) for name in args.models}
        for name, t in times.items():
            base_w, base_c = t["before"]
            cells = "".join(f"{batch / w:>9.1f} x{base_w / w:.2f}({base_c / c:.2f})" for w, c in t.values())
            twin = TWINS.get(name)
            cost = ""
            if twin in times:
                cost = "  " + " ".join(f"{v} x{t[v][0] / times[twin][v][0]:.2f}" for v in ("before", "after"))
            print(f"{name:<18}{batch:>6}{cells}{cost}")
    with open("/proc/loadavg") as fh:
        print(f"load average at end: {' '.join(fh.read().split()[:3])}")


if __name__ == "__main__":
    main()
