"""Before/after of the CPU feed, in one process (issue 15's causes 1 and 4):

- float16 cutouts to float32: numpy's ``astype`` (the reader's old path) against torch's ``.float()``
  (the predictor's now);
- the preprocessing (NaN to 0, asinh, z-score) over the whole batch, as one graph (before, and
  still under torch.compile or an export) against slices that stay in cache (after, eager CPU);
- the forward pass on a read batch of ``--batch`` whole (before) against sub-batches of
  ``defaults.CPU_COMPUTE_BATCH`` (after), with system time and page faults of each;
- end to end in-process (``galspec predict --cluster none``) with both settings.

    OMP_NUM_THREADS=2 python bench/bench_feed.py [--model xresnet18] [--size 224] [--n 256]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_tiny_checkpoint, make_tiny_store  # noqa: E402

from galspec_batch import defaults as D  # noqa: E402
from galspec_batch.checkpoint import load_checkpoint  # noqa: E402
from galspec_batch.engines import create_engine  # noqa: E402
from galspec_batch.models import net as net_module  # noqa: E402
from galspec_batch.options import PredictOptions  # noqa: E402
from galspec_batch.predict import predict_catalog  # noqa: E402
from galspec_batch.store import open_store  # noqa: E402


def timed(fn) -> tuple[float, float, int]:
    """Wall seconds, system seconds and minor page faults of ``fn()``."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xresnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mc", type=int, default=32)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    store = make_tiny_store(tmp / "s.zarr", n=a.n, size=a.size, width=3.0)
    ckpt = make_tiny_checkpoint(tmp / "ck", model=a.model, size=a.size)
    print(f"# {a.model}, {a.size} px, N={a.n}, read batch {a.batch}, compute batch {D.CPU_COMPUTE_BATCH}, "
          f"MC T={a.mc}, torch threads {torch.get_num_threads()}")

    f16 = open_store(store).read(slice(0, min(a.n, a.batch)), dtype=None).images
    k = len(f16)
    t_np = min(timed(lambda: f16.astype(np.float32))[0] for _ in range(3))
    t_torch = min(timed(lambda: torch.from_numpy(f16).float())[0] for _ in range(3))
    print(f"float16 -> float32: numpy astype {k / t_np:,.0f} cutouts/s, torch .float() {k / t_torch:,.0f} "
          f"(x{t_np / t_torch:.2f})")

    net = load_checkpoint(ckpt).net
    x16 = torch.from_numpy(f16)
    blocked = min(timed(lambda: net.preprocess(x16))[0] for _ in range(3))
    eager_cpu = net_module._tracing
    net_module._tracing = lambda: True  # the graph path, as torch.compile and the exports see it
    graph = min(timed(lambda: net.preprocess(x16))[0] for _ in range(3))
    net_module._tracing = eager_cpu
    print(f"preprocessing: whole batch {k / graph:,.0f} cutouts/s, in cache-sized slices {k / blocked:,.0f} "
          f"(x{graph / blocked:.2f})")

    eng = create_engine("eager", net)
    x = torch.from_numpy(f16).float()
    step = D.CPU_COMPUTE_BATCH
    with torch.inference_mode():
        eng.features(x[:step])  # warm-up
        whole = timed(lambda: eng.features(x))
        split = timed(lambda: [eng.features(x[i:i + step]) for i in range(0, k, step)])
    for name, (wall, sys_t, faults) in ((f"forward, batch {k} whole", whole),
                                        (f"forward, sub-batches of {step}", split)):
        print(f"{name:32s} {k / wall:8,.1f} cutouts/s  system {sys_t:5.1f} s  page faults {faults:,}")
    print(f"forward: sub-batches x{whole[0] / split[0]:.2f} of the whole batch")

    rates = {}
    for name, compute in (("before (compute batch = read batch)", a.batch), ("after", step)):
        D.CPU_COMPUTE_BATCH = compute
        opts = PredictOptions(engine="eager", batch_size=a.batch, mc_samples=a.mc)
        wall, sys_t, faults = timed(lambda o=opts, c=compute: predict_catalog(
            store, ckpt, tmp / f"c{c}", o, cluster="none", progress=False, overwrite=True))
        rates[name] = a.n / wall
        print(f"end to end, {name:36s} {a.n / wall:8,.1f} galaxies/s  system {sys_t:5.1f} s  "
              f"page faults {faults:,}")
    before, after = rates.values()
    print(f"end to end: x{after / before:.2f}")


if __name__ == "__main__":
    main()
