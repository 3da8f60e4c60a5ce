"""Training throughput of the model zoo on this machine, and the cost of network deconvolution.

    python bench/bench_models.py [--batch 32] [--size 64] [--iters 5] [--threads 1] [--clock cpu]
                                 [--parts models layers isqrt]

Times are medians over the iterations. The default clock is this process's CPU time on one thread,
which a machine shared with other jobs inflates far less than wall-clock time; `--clock wall`
with more threads measures what a dedicated machine would see.

Part 1: images per second of a training step (forward + backward, batch 32 at 64 px by default)
for every registered model, and of inference (eval, no grad), with and without folding.
Part 2: one layer's training step, DeconvConv2d against Conv2d + BatchNorm2d of the same shape.
Part 3: the layer's Newton-Schulz inverse square root, forward + backward, by covariance size: the
reference's loop (15 products, autograd through them) against the library's two ways (12 products;
the same polynomial through eigh with its exact gradient), and which one `auto` takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from galspec_batch.models import DeconvConv2d, create_model, fold_deconv, isqrt_newton_schulz, list_models
from galspec_batch.models.isqrt import SPECTRAL_MIN_SIZE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import reference_isqrt  # noqa: E402

# (in_ch, out_ch, stride, groups, input size): layers of the xresnet18 family at 64 px input
LAYERS = [(5, 32, 2, 1, 64), (32, 32, 1, 1, 32), (64, 64, 1, 64, 16), (64, 64, 1, 1, 16),
          (128, 128, 1, 1, 8), (256, 256, 1, 1, 4)]


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def seconds_per_call(fn: Callable[[], object], iters: int) -> float:
    fn()  # warm-up (allocations, first-call dispatch)
    times = []
    for _ in range(iters):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return step


def bench_models(batch: int, size: int, iters: int) -> None:
    print(f"\nModels: batch {batch} at {size} px, {iters} iterations, {torch.get_num_threads()} threads, "
          f"{'CPU' if clock is time.process_time else 'wall'} clock")
    print(f"{'model':<18}{'params':>11}{'train img/s':>13}{'vs xresnet18':>14}{'eval img/s':>12}"
          f"{'folded img/s':>14}")
    x = torch.randn(batch, 5, size, size)
    rows = {}
    for name in list_models():
        model = create_model(name).train()
        train = batch / seconds_per_call(train_step(model, x), iters)
        model.eval()
        folded = fold_deconv(model)
        with torch.no_grad():
            evals = batch / seconds_per_call(lambda m=model: m(x), iters)
            folds = batch / seconds_per_call(lambda m=folded: m(x), iters)
        rows[name] = (sum(p.numel() for p in model.parameters()), train, evals, folds)
    base = rows["xresnet18"][1]
    for name, (params, train, evals, folds) in rows.items():
        print(f"{name:<18}{params:>11,}{train:>13.1f}{train / base:>14.2f}{evals:>12.1f}{folds:>14.1f}")


def bench_layers(batch: int, iters: int) -> None:
    print(f"\nOne layer, training step (forward + backward), batch {batch}, 3x3 kernels")
    print(f"{'layer':<28}{'conv+BN ms':>11}{'deconv ms':>11}{'ratio':>8}{'cov size':>10}")
    for ni, nf, stride, groups, size in LAYERS:
        x = torch.randn(batch, ni, size, size, requires_grad=True)
        plain = nn.Sequential(nn.Conv2d(ni, nf, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(nf))
        deconv = DeconvConv2d(ni, nf, 3, stride, 1, groups=groups)
        t_plain = seconds_per_call(lambda m=plain, x=x: m(x).sum().backward(), iters)
        t_deconv = seconds_per_call(lambda m=deconv, x=x: m(x).sum().backward(), iters)
        cov = f"{deconv.num_features}" + (f"x{groups}" if groups > 1 else "")
        label = f"{ni}->{nf} s{stride} g{groups} @{size}px"
        print(f"{label:<28}{1e3 * t_plain:>11.2f}{1e3 * t_deconv:>11.2f}{t_deconv / t_plain:>8.1f}{cov:>10}")


def bench_isqrt(iters: int) -> None:
    print("\nNewton-Schulz inverse square root (5 iterations), forward + backward, ms")
    print(f"{'covariance':<14}{'reference':>11}{'products':>10}{'spectral':>10}{'auto':>10}"
          f"{'x reference':>13}")
    g = torch.Generator().manual_seed(0)
    for shape in [(45,), (64, 9, 9), (64, 72, 72), (128,), (288,), (576,)]:
        n = shape[-1]
        x = torch.randn(*shape[:-2], 4 * n, n, generator=g)
        cov = x.mT @ x / (4 * n) + 1e-5 * torch.eye(n)

        def call(fn: Callable[[torch.Tensor], torch.Tensor], cov: torch.Tensor = cov) -> Callable[[], None]:
            def run() -> None:
                a = cov.clone().requires_grad_()
                fn(a).sum().backward()
            return run

        times = [seconds_per_call(call(fn), iters) for fn in (
            lambda a: reference_isqrt(a, 5), lambda a: isqrt_newton_schulz(a, 5, "products"),
            lambda a: isqrt_newton_schulz(a, 5, "spectral"))]
        auto = "spectral" if n >= SPECTRAL_MIN_SIZE else "products"
        label = "x".join(map(str, shape[:-2])) + (" x " if len(shape) > 2 else "") + f"{n}x{n}"
        best = times[2] if auto == "spectral" else times[1]
        print(f"{label:<14}{1e3 * times[0]:>11.2f}{1e3 * times[1]:>10.2f}{1e3 * times[2]:>10.2f}{auto:>10}"
              f"{times[0] / best:>13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--parts", nargs="+", choices=["models", "layers", "isqrt"],
                        default=["models", "layers", "isqrt"])
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if "models" in args.parts:
        bench_models(args.batch, args.size, args.iters)
    if "layers" in args.parts:
        bench_layers(args.batch, max(args.iters, 10))
    if "isqrt" in args.parts:
        bench_isqrt(max(args.iters, 10))


if __name__ == "__main__":
    main()
