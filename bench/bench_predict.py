"""CPU benchmark of batch prediction, all in one run (ratios against baselines measured here):

- end to end (store -> catalog, MC dropout T=32), a process's first run and a second one (whose
  imports, hats' 1.5 s among them, and first calls are paid, as the forward rates' are), and the
  rate per cutout once a run's fixed costs are paid (from warm runs on N/2 and N), against
  (a) the naive way: fp32 eager with T full forward passes, and
  (b) forward + MC alone: the run's own predictor (float conversion, the CPU's compute
      sub-batches, the network, the head-only MC, the scaling) on the images already in memory
      as the store keeps them;
- the decoding of the store alone (the cores' time a run spends on it besides the network);
- peak memory of an end-to-end run at N and at 10N cutouts (separate processes; not with
  --no-memory).

    python bench/bench_predict.py [--model xresnet18] [--n 1024] [--size 64] [--codec zstd]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_tiny_checkpoint, make_tiny_store  # noqa: E402

from galspec_batch.checkpoint import load_checkpoint  # noqa: E402
from galspec_batch.mc import mc_naive  # noqa: E402
from galspec_batch.options import PredictOptions  # noqa: E402
from galspec_batch.predict import predict_catalog  # noqa: E402
from galspec_batch.predict.worker import ModelSpec, Predictor  # noqa: E402
from galspec_batch.store import open_store  # noqa: E402
from galspec_batch.store.format import CODECS  # noqa: E402
from galspec_batch.store.reader import batch_groups  # noqa: E402


def _rate(n: int, fn, repeat: int = 3) -> float:
    """Items/s of ``fn`` after a warm-up: the best of ``repeat`` timings (a short timing is easily
    disturbed by anything else on 2 cores)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def forward_rates(ckpt_path: Path, store_path: Path, engine: str, batch: int, T: int) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    net = ckpt.net
    spec = ModelSpec(str(ckpt_path), ckpt.model_hash, ckpt.config.value_hash(),
                     PredictOptions(engine=engine, batch_size=batch, mc_samples=T))
    predictor = Predictor(spec)
    store = open_store(store_path)
    n = min(len(store), 16 * batch)
    images = store.read(slice(0, n), dtype=None).images  # as stored (float16), as the run feeds them
    ids = store.object_id[:n]

    def forward_mc():
        for a in range(0, n, batch):
            predictor.predict(images[a:a + batch], ids[a:a + batch])

    def forward_single():
        with torch.inference_mode():
            for a in range(0, n, batch):
                net(torch.from_numpy(images[a:a + batch]).float())

    n_naive = min(n, batch)

    def naive():
        mc_naive(net, torch.from_numpy(images[:n_naive]).float(), T=T)

    groups = batch_groups([(0, len(store))], batch)
    buffer = np.empty((batch, *images.shape[1:]), images.dtype)

    def decode():
        for g in groups:
            store.read_group(g, None, buffer)

    return {
        "forward_mc": _rate(n, forward_mc),
        "forward_single_eager": _rate(n, forward_single),
        "naive": _rate(n_naive, naive, repeat=1),
        "decode": _rate(len(store), decode),
    }


def end_to_end(ckpt: Path, store: Path, out: Path, engine: str, batch: int, T: int, cluster) -> float:
    return a_run(ckpt, store, out, engine, batch, T, cluster)[0]


def a_run(ckpt: Path, store: Path, out: Path, engine: str, batch: int, T: int, cluster
          ) -> tuple[float, float]:
    """Galaxies/s of one run and its seconds."""
    s = predict_catalog(store, ckpt, out, PredictOptions(engine=engine, batch_size=batch, mc_samples=T),
                        cluster=cluster, progress=False, overwrite=True)
    return s.objects / s.seconds, s.seconds


def marginal(ckpt: Path, stores: tuple[Path, Path], out: Path, engine: str, batch: int, T: int
             ) -> tuple[float, float]:
    """The in-process run's rate once its fixed costs are paid, from warm runs on N/2 and N cutouts
    (best of two each): (N - N/2) / (t_N - t_N/2); and the fixed seconds a run adds besides."""
    n = [len(open_store(s)) for s in stores]
    t = [min(a_run(ckpt, s, out, engine, batch, T, "none")[1] for _ in range(2)) for s in stores]
    rate = (n[1] - n[0]) / (t[1] - t[0])
    return rate, t[1] - n[1] / rate


def end_to_end_dask(ckpt: Path, store: Path, out: Path, engine: str, batch: int, T: int
                    ) -> tuple[float, float]:
    """Galaxies/s on a local Dask cluster started beforehand (its start-up is returned apart)."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - t0
        return end_to_end(ckpt, store, out, engine, batch, T, client), startup


RSS_CHILD = """
import sys, threading
import numpy as np
from galspec_batch.options import PredictOptions
from galspec_batch.predict import predict_catalog
def status(key):
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key))
if sys.argv[7:] == ['notrim']:  # bench_memory --no-trim: the heap is never trimmed
    import galspec_batch.predict.task as task
    task.trim_freed_memory = lambda: False
rss, done = [], threading.Event()
def sample():
    while not done.wait(0.02):
        rss.append(status('VmRSS'))
threading.Thread(target=sample, daemon=True).start()
predict_catalog(sys.argv[1], sys.argv[2], sys.argv[3], PredictOptions(engine=sys.argv[4],
                batch_size=int(sys.argv[5]), mc_samples=int(sys.argv[6])), cluster='none', progress=False,
                overwrite=True)
done.set()
rss = rss or [status('VmRSS')]
third = max(1, len(rss) // 3)
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
print(status('VmHWM'), np.percentile(rss, 99), np.median(rss[:third]), np.median(rss[-third:]))
"""


def rss_child(args: list[str]) -> tuple[float, float, float, float]:
    """One end-to-end in-process prediction in a fresh process: its peak resident memory (VmHWM),
    the 99th percentile of its resident memory sampled every 0.02 s (the peak of a long run meets
    more rare coincidences of a batch's temporaries), and its median over the run's first and last
    third; MiB."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, *args], capture_output=True, text=True, check=True)
    peak, p99, early, late = (float(v) / 1024 for v in out.stdout.split()[-4:])
    return peak, p99, early, late


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xresnet18")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--mc", type=int, default=32)
    ap.add_argument("--engine", default="eager")
    ap.add_argument("--codec", choices=CODECS, default="zstd", help="the store's (default: the default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory part (its 10N store)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    store = make_tiny_store(tmp / "s.zarr", n=a.n, size=a.size, width=3.0, codec=a.codec)
    ckpt = make_tiny_checkpoint(tmp / "ck", model=a.model, size=a.size)
    print(f"# {a.model}, {a.size}x{a.size} px, N={a.n}, batch {a.batch}, MC T={a.mc}, engine {a.engine}, "
          f"codec {a.codec}, torch threads {torch.get_num_threads()}, "
          f"{len(open_store(store).partitions())} partitions")
    r = forward_rates(ckpt, store, a.engine, a.batch, a.mc)
    e2e_none = end_to_end(ckpt, store, tmp / "c1", a.engine, a.batch, a.mc, "none")
    e2e_warm = end_to_end(ckpt, store, tmp / "c1b", a.engine, a.batch, a.mc, "none")
    half = make_tiny_store(tmp / "s2.zarr", n=a.n // 2, size=a.size, width=3.0, seed=2, codec=a.codec)
    slope, fixed = marginal(ckpt, (half, store), tmp / "c1c", a.engine, a.batch, a.mc)
    e2e_local, startup = end_to_end_dask(ckpt, store, tmp / "c2", a.engine, a.batch, a.mc)
    rows = [
        ("naive: fp32 eager, T full passes", r["naive"]),
        ("forward alone: single pass, no MC", r["forward_single_eager"]),
        (f"forward alone: body + head-only MC T={a.mc}", r["forward_mc"]),
        ("end to end, in-process (cluster=none)", e2e_none),
        ("  the same again (imports and first calls paid)", e2e_warm),
        ("  per cutout once paid: warm runs at N/2 and N", slope),
        ("end to end, local Dask cluster (2 workers x 1 thread)", e2e_local),
    ]
    print(f"{'':48s} {'galaxies/s':>12s} {'x naive':>9s} {'x forward+MC':>13s}")
    for name, v in rows:
        print(f"{name:48s} {v:12,.0f} {v / r['naive']:9.1f} {v / r['forward_mc']:13.2f}")
    print(f"(a warm in-process run's fixed cost besides: {fixed:.2f} s; "
          f"the Dask cluster took {startup:.1f} s to start, not counted above; the model loads in the run)")
    bound = 1 / (1 / r["forward_mc"] + 1 / r["decode"])
    print(f"decoding the store alone: {r['decode']:,.0f} cutouts/s ({a.codec}, the reader's threads); "
          f"forward + MC and decoding one after the other: {bound:,.0f}/s, "
          f"x{bound / r['forward_mc']:.2f} forward + MC")
    result = {"rates": dict(rows), "decode": r["decode"], "fixed_s": fixed}
    if not a.no_memory:
        store10 = make_tiny_store(tmp / "s10.zarr", n=10 * a.n, size=a.size, width=3.0, seed=1, codec=a.codec)
        mem_n, *_ = rss_child([str(store), str(ckpt), str(tmp / "m1"), a.engine, str(a.batch), str(a.mc)])
        mem_10n, *_ = rss_child([str(store10), str(ckpt), str(tmp / "m10"), a.engine, str(a.batch),
                                   str(a.mc)])
        print(f"peak RSS of an in-process run: N={a.n}: {mem_n:.0f} MiB, 10N={10 * a.n}: {mem_10n:.0f} MiB "
              f"(ratio {mem_10n / mem_n:.2f})")
        result["mem_mib"] = [mem_n, mem_10n]
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
