"""CPU benchmark of head-only MC dropout against the naive way, and of the body engines.

    python bench/bench_mc.py [--models simple-cnn,xresnet18] [--n 64] [--size 64] [--T 32]
                             [--threads 1] [--clock cpu] [--no-compile]

Part 1, galaxies per second with T dropout samples each: (a) the naive way, fp32 eager with T full
forward passes (dropout on), against (b) head-only MC: the body once (eager engine) and T samples
of the dropout head (galspec_batch.mc); the ratio b / a is the speed-up (target >= 20x at T=32).
Part 2, body throughput (features only) of the eager, onnxruntime and compile engines, fp32.

Times are medians over --iters runs after a warm-up. The default clock is this process's CPU
time, which other jobs on a shared machine inflate far less than wall-clock time (onnxruntime
runs with as many threads as torch, so its time is counted too); `--clock wall` for a
dedicated machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from galspec_batch.engines import create_engine  # noqa: E402
from galspec_batch.mc import head_parameters, mc_naive, mc_predict  # noqa: E402
from galspec_batch.models import create_model  # noqa: E402

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def rate(fn, n: int, iters: int, clock) -> float:
    """Galaxies per second: n over the median time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        start = clock()
        fn()
        times.append(clock() - start)
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="simple-cnn,xresnet18")
    ap.add_argument("--n", type=int, default=64, help="galaxies per batch")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (about a minute per model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    print(f"CPU, {args.threads} thread(s), {args.clock} clock, batch {args.n} at {args.size}x{args.size}, "
          f"T={args.T}")
    print(f"\n{'model':12s} {'naive gal/s':>12s} {'head-only gal/s':>16s} {'speed-up':>9s}")
    bodies = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        net = create_model(name, dropout=0.2).eval()
        x = torch.randn(args.n, 5, args.size, args.size)
        ids = torch.arange(args.n)
        eager = create_engine("eager", net)
        weight, bias, p = head_parameters(net.head)

        def head_only(eager=eager, x=x, ids=ids, weight=weight, bias=bias, p=p, head=net.head_kind):
            return mc_predict(eager.features(x), ids, weight, bias, p, T=args.T, seed=0, head=head)

        naive = rate(lambda net=net, x=x: mc_naive(net, x, args.T), args.n, args.iters, clock)
        ours = rate(head_only, args.n, args.iters, clock)
        print(f"{name:12s} {naive:12.1f} {ours:16.1f} {ours / naive:8.1f}x", flush=True)
        bodies[name] = (net, x)

    print(f"\n{'model':12s} {'engine':12s} {'body gal/s':>11s} {'setup s':>8s}")
    for name, (net, x) in bodies.items():
        for engine_name in ("eager", "onnxruntime") + (() if args.no_compile else ("compile",)):
            start = time.perf_counter()
            engine = create_engine(engine_name, net)
            engine.features(x[:2])  # export / compile happens on the first call
            setup = time.perf_counter() - start
            body = rate(lambda e=engine, x=x: e.features(x), args.n, args.iters, clock)
            print(f"{name:12s} {engine_name:12s} {body:11.1f} {setup:8.1f}", flush=True)


if __name__ == "__main__":
    main()
