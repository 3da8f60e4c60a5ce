"""Training throughput of the full training step, as `galspec train` runs it, per model on the CPU.

    python bench/bench_training.py [--batch 128] [--size 64] [--iters 3] [--threads N] [--models ...]

One step = D4 augmentation + preprocessing (asinh, z-score) + forward + RMSE + backward +
RAdam/LookAhead step + one-cycle step. In the same run, the cost of network deconvolution against
BatchNorm is the ratio of each deconvolution model's step time to its BatchNorm twin's
(xresnet18-hybrid and xresnet18-deconv against xresnet18, simple-deconv against simple-cnn).
For single layers, see bench/bench_models.py.
"""

from __future__ import annotations

import argparse
import time

import torch

from galspec_batch.models import GalspecNet, create_model, list_models
from galspec_batch.training import default_max_lr, make_one_cycle, make_optimizer, random_d4
from galspec_batch.training.loop import rmse

TWINS = {"xresnet18-hybrid": "xresnet18", "xresnet18-deconv": "xresnet18", "simple-deconv": "simple-cnn"}


def step_seconds(name: str, batch: int, size: int, iters: int) -> float:
    torch.manual_seed(0)
    net = GalspecNet(create_model(name, dropout=0.0), torch.ones(5), torch.zeros(5), torch.ones(5),
                     torch.zeros(6), torch.ones(6)).train()
    lr = default_max_lr(name)
    opt = make_optimizer(net, lr)
    sched = make_one_cycle(opt, lr, total_steps=10 * (iters + 1))
    x, y = torch.randn(batch, 5, size, size), torch.randn(batch, 6)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = rmse(net(random_d4(x, gen)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=list_models())
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Full training step: batch {args.batch} at {args.size} px, {args.iters} steps, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':<18}{'s/step':>9}{'img/s':>9}{'  deconv cost (step time / BN twin)':<36}")
    times = {name: step_seconds(name, args.batch, args.size, args.iters) for name in args.models}
    for name, t in times.items():
        twin = TWINS.get(name)
        cost = f"  x{t / times[twin]:.2f} vs {twin}" if twin in times else ""
        print(f"{name:<18}{t:>9.3f}{args.batch / t:>9.1f}{cost}")


if __name__ == "__main__":
    main()
