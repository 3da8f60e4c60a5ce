"""GPU benchmark of head-only MC dropout at 224x224 (one GPU, a few minutes), naive way included.

    python bench/gpu_bench.py [--batches 256,1024] [--T 32] [--skip-compile] [--tensorrt]
                              [--store PATH | --make-store N]

xresnet18 (random weights: speed does not depend on them), 5 bands, 224x224, galaxies per second:
  naive_fp32_eager_mc   the naive way: fp32 eager, T full forward passes with dropout on
  fp32_eager_single     fp32 eager, one forward pass (body + head), no uncertainty
  mc_head_only          the MC head alone: T dropout samples of features already on the GPU
  headonly_fp16_cl_eager  body once (fp16, channels-last, eager) + T head samples
  headonly_fp16_cl_compile  the same with the body under torch.compile
  headonly_fp16_tensorrt    the same with the TensorRT engine (--tensorrt; the build takes minutes)
  h2d_pinned_{fp16,fp32}    host-to-device copies of pinned image batches
  end_to_end_zarr        store -> features -> MC statistics -> host, at the smallest batch size,
                         reading with 8 threads (the store is read once before the timed pass)
  feed_sequential        the predictor (a saved checkpoint, fp16 compile or eager) batch after
                         batch: read, pin a fresh buffer, copy, compute, copy back, in turn
  feed_pipelined         the same through predict/feed.py: reused pinned buffers read ahead, the
                         copy of batch k+1 on its own stream while batch k computes
  predict_catalog        `galspec predict --cluster none` on the same store: the whole command
  train_<model>_<way>    a training step (D4, forward, beta-NLL, backward, RAdam + LookAhead) of
                         xresnet18, the hybrid and xresnet18-deconv at --train-batch: fp32, bf16
                         autocast, bf16 channels-last; for the deconvolution models also with the
                         Newton-Schulz statistics computed spectrally (the CPU's way) instead of
                         by matrix products (the GPU's default), to check that choice
  fit_simple_cnn         `galspec train --device cuda`: one epoch of simple-cnn on the store above
Images for the model rows are already on the GPU; only h2d and end_to_end include the copies.
Prints a table; writes gpu_bench.json under $OUT when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from galspec_batch import defaults as D  # noqa: E402
from galspec_batch.engines import create_engine  # noqa: E402
from galspec_batch.mc import head_parameters, mc_naive, mc_predict  # noqa: E402
from galspec_batch.models import create_model  # noqa: E402

BANDS = 5
SIZE = 224  # --size (a smaller size and --device cpu make a quick smoke test)
DEV = torch.device("cuda")
results: list[dict] = []


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n_objects: int, min_seconds: float = 2.0, max_iters: int = 20) -> float:
    """Galaxies per second of ``fn`` (one warm-up call, then repeats until min_seconds)."""
    fn()
    sync()
    iters, start = 0, time.perf_counter()
    while iters < max_iters and (iters == 0 or time.perf_counter() - start < min_seconds):
        fn()
        sync()
        iters += 1
    return n_objects * iters / (time.perf_counter() - start)


def record(name: str, batch: int, rate: float, **extra) -> None:
    results.append({"name": name, "batch": batch, "galaxies_per_s": rate, **extra})
    print(f"{name:30s} batch {batch:5d}  {rate:10.0f} galaxies/s  {extra or ''}", flush=True)


def headonly(engine, weight, bias, p, T):
    def run(x, ids):
        feats = engine.features(x)
        out = mc_predict(feats, ids, weight, bias, p, T=T, seed=0, head=D.HEAD)
        return out["mean"], out["std"]
    return run


def batch_rows(b, gpu_net, eager32, engines, head, T):
    weight, bias, p = head
    x = torch.randn(b, BANDS, SIZE, SIZE, device=DEV)
    ids = torch.arange(b, device=DEV)
    with torch.inference_mode():
        record("naive_fp32_eager_mc", b, timed(lambda: mc_naive(gpu_net, x, T), b, max_iters=2), T=T)
        record("fp32_eager_single", b, timed(lambda: gpu_net.forward_head(eager32.features(x)), b))
        feats = eager32.features(x)
        mc = lambda: mc_predict(feats, ids, weight, bias, p, T=T, head=D.HEAD)  # noqa: E731
        record("mc_head_only", b, timed(mc, b), T=T)
        for name, engine in engines.items():
            record(name, b, timed(lambda e=engine: headonly(e, weight, bias, p, T)(x, ids), b), T=T)


def model_rows(net, batches, T, skip_compile, use_trt):
    dev = DEV
    weight, bias, p = head_parameters(net.head)
    weight, bias = weight.to(dev), bias.to(dev)
    gpu_net = net.to(dev).eval()
    eager16 = create_engine("eager", net, device=dev, precision="fp16", channels_last=True)
    eager32 = create_engine("eager", net, device=dev, precision="fp32", channels_last=False)
    engines = {"headonly_fp16_cl_eager": eager16}
    if not skip_compile:
        t0 = time.perf_counter()
        engines["headonly_fp16_cl_compile"] = create_engine("compile", net, device=dev, precision="fp16",
                                                            channels_last=True)
        engines["headonly_fp16_cl_compile"].features(torch.randn(batches[0], BANDS, SIZE, SIZE, device=dev))
        print(f"(torch.compile: first call {time.perf_counter() - t0:.0f} s)", flush=True)
    if use_trt:
        t0 = time.perf_counter()
        trt = create_engine("tensorrt", net, device=dev, precision="fp16", max_batch=max(batches))
        trt.features(torch.randn(2, BANDS, SIZE, SIZE, device=dev))
        engines["headonly_fp16_tensorrt"] = trt
        print(f"(TensorRT engine: ready after {time.perf_counter() - t0:.0f} s)", flush=True)
    for b in batches:
        batch_rows(b, gpu_net, eager32, engines, (weight, bias, p), T)
    return engines


def h2d_rows(batch):
    for dtype in (torch.float16, torch.float32):
        host = torch.randn(batch, BANDS, SIZE, SIZE).to(dtype)
        host = host.pin_memory() if DEV.type == "cuda" else host
        rate = timed(lambda h=host: h.to(DEV, non_blocking=True), batch)
        gbs = rate * host[0].numel() * host.element_size() / 1e9
        record(f"h2d_pinned_{str(dtype).split('.')[-1]}", batch, rate, GB_per_s=round(gbs, 1))


def train_rows(batch: int) -> None:
    from galspec_batch.models import GalspecNet, deconv
    from galspec_batch.models.heads import head_loss
    from galspec_batch.training import make_optimizer, random_d4
    from galspec_batch.training.loop import train_autocast

    auto = deconv.isqrt_newton_schulz
    for name in ("xresnet18", "xresnet18-hybrid", "xresnet18-deconv"):
        ways = ["fp32", "bf16", "bf16_cl"] + ["bf16_spectral"] * (name != "xresnet18")
        for way in ways:
            torch.manual_seed(0)
            ones, zeros = torch.ones(BANDS), torch.zeros(BANDS)
            net = GalspecNet(create_model(name, in_bands=BANDS, n_out=7), ones, zeros, ones, torch.zeros(7),
                             torch.ones(7)).to(DEV).train()
            fmt = torch.channels_last if way == "bf16_cl" else torch.contiguous_format
            net = net.to(memory_format=fmt)
            opt = make_optimizer(net, 1e-3)
            x, y = torch.randn(batch, BANDS, SIZE, SIZE, device=DEV), torch.randn(batch, 7, device=DEV)
            gen = torch.Generator().manual_seed(0)
            precision = "fp32" if way == "fp32" else "bf16"

            def step(net=net, opt=opt, x=x, y=y, gen=gen, fmt=fmt, precision=precision) -> None:
                with train_autocast(DEV.type, precision):
                    out = net(random_d4(x, gen).contiguous(memory_format=fmt))
                loss = head_loss(out.float(), y, "beta-nll")[0]
                opt.zero_grad()
                loss.backward()
                opt.step()

            if way == "bf16_spectral":
                deconv.isqrt_newton_schulz = lambda a, n: auto(a, n, "spectral")
            try:
                record(f"train_{name}_{way}", batch, timed(step, batch, min_seconds=1.0, max_iters=10))
            finally:
                deconv.isqrt_newton_schulz = auto


def fit_row(tmp: Path) -> None:
    """One epoch of `fit` on the device, on a small labelled store (tests/test_training.py's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_training import make_store as make_labelled_store
    from test_training import write_labels

    from galspec_batch.checkpoint import load_checkpoint
    from galspec_batch.training import TrainSettings, fit

    store, ids, latents = make_labelled_store(tmp / "train.zarr", n=512)
    labels = write_labels(tmp / "labels.parquet", ids, latents[:, :6], latents[:, 6])
    t0 = time.perf_counter()
    result = fit(store, labels, tmp / "run", TrainSettings(model="simple-cnn", epochs=1, batch_size=64),
                 device=str(DEV), progress=False)
    seconds = time.perf_counter() - t0
    device = load_checkpoint(result.best).config.training["device"]
    record("fit_simple_cnn", 64, 512 / seconds, val_rmse=round(result.best_val_rmse, 3), device=device)


def make_store(path: Path, n: int) -> None:
    import numpy as np

    from galspec_batch.store import create_store

    rng = np.random.default_rng(0)
    with create_store(path, image_shape=(SIZE, SIZE), partition_order=4) as w:
        for start in range(0, n, 512):
            m = min(512, n - start)
            images = rng.normal(0, 1, (m, BANDS, SIZE, SIZE)).astype(np.float16)
            w.append(np.arange(start, start + m), rng.uniform(150, 151, m), rng.uniform(0, 1, m), images)


def end_to_end(store_path: Path, engine, net, batch, T, readers=8):
    from galspec_batch.store import open_store

    store = open_store(store_path)
    weight, bias, p = head_parameters(net.head)
    weight, bias = weight.to(DEV), bias.to(DEV)
    pin = DEV.type == "cuda"
    starts = list(range(0, store.n_objects, batch))

    def read(a):
        b = store.read(slice(a, min(a + batch, store.n_objects)))
        images = torch.from_numpy(b.images)
        return images.pin_memory() if pin else images, torch.from_numpy(b.object_id)

    def run():
        with ThreadPoolExecutor(readers) as pool, torch.inference_mode():
            ahead = deque(pool.submit(read, a) for a in starts[:readers])  # at most `readers` in flight
            for a in starts[readers:] + [None] * readers:
                if not ahead:
                    break
                images, ids = ahead.popleft().result()
                if a is not None:
                    ahead.append(pool.submit(read, a))
                feats = engine.features(images.to(DEV, non_blocking=True))
                out = mc_predict(feats, ids.to(DEV), weight, bias, p, T=T, head=D.HEAD)
                out["mean"].cpu(), out["std"].cpu()

    record("end_to_end_zarr", batch, timed(run, store.n_objects, min_seconds=0, max_iters=1),
           engine=engine.name, n_objects=store.n_objects, readers=readers)


def feed_rows(store_path: Path, tmp: Path, batch: int, T: int, engine: str) -> None:
    """The predictor fed batch after batch against the pipelined feed, and the whole command."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_checkpoint

    from galspec_batch.checkpoint import load_checkpoint
    from galspec_batch.options import PredictOptions
    from galspec_batch.predict import predict_catalog
    from galspec_batch.predict.feed import run_feed
    from galspec_batch.predict.worker import ModelSpec, Predictor
    from galspec_batch.store import open_store
    from galspec_batch.store.reader import batch_groups

    ckpt = make_tiny_checkpoint(tmp / "ckpt", model="xresnet18", size=SIZE)
    ck = load_checkpoint(ckpt)
    opts = PredictOptions(device=str(DEV), engine=engine, precision="fp16" if DEV.type == "cuda" else "fp32",
                          batch_size=batch, mc_samples=T)
    predictor = Predictor(ModelSpec(str(ckpt), ck.model_hash, ck.config.value_hash(), opts))
    store = open_store(store_path)
    groups = batch_groups([(0, store.n_objects)], batch)

    def sequential():
        for g in groups:
            b = store.read_group(g, None)
            images = torch.from_numpy(b.images)
            images = images.pin_memory() if DEV.type == "cuda" else images
            predictor.fetch(predictor.launch(predictor.upload(images), b.object_id))

    def pipelined():
        for _ in run_feed(predictor, store, groups):
            pass

    for name, fn in (("feed_sequential", sequential), ("feed_pipelined", pipelined)):
        fn()  # warm: compile, cudnn autotuning, page cache
        record(name, batch, timed(fn, store.n_objects, min_seconds=0, max_iters=2), engine=engine)
    t0 = time.perf_counter()
    predict_catalog(store_path, ckpt, tmp / "cat", opts, cluster="none", progress=False)
    record("predict_catalog", batch, store.n_objects / (time.perf_counter() - t0), engine=engine,
           n_objects=int(np.int64(store.n_objects)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--tensorrt", action="store_true")
    ap.add_argument("--store", type=Path, help="an existing 224x224 cutout store for the end-to-end row")
    ap.add_argument("--make-store", type=int, default=2048, help="else write one of N objects (0: skip)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train-batch", type=int, default=64, help="0: skip the training rows")
    args = ap.parse_args()
    global SIZE, DEV
    SIZE, DEV = args.size, torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench.py needs a CUDA GPU (or --device cpu --size 32 for a smoke test)")
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(f"{name}  torch {torch.__version__}  cudnn {torch.backends.cudnn.version()}  {SIZE}x{SIZE}")
    net = create_model("xresnet18", in_bands=BANDS, n_out=6, dropout=0.2).eval()
    engines = model_rows(net, batches, args.T, args.skip_compile, args.tensorrt)
    h2d_rows(max(batches))
    if args.train_batch:
        train_rows(args.train_batch)
        with tempfile.TemporaryDirectory() as tmp:
            fit_row(Path(tmp))
    best = engines.get("headonly_fp16_cl_compile") or engines["headonly_fp16_cl_eager"]
    try:
        if args.store is not None:
            end_to_end(args.store, best, net, min(batches), args.T)
        elif args.make_store:
            with tempfile.TemporaryDirectory() as tmp:
                t1 = time.perf_counter()
                make_store(Path(tmp) / "bench.zarr", args.make_store)
                print(f"(wrote a {args.make_store}-object store in {time.perf_counter() - t1:.0f} s)")
                end_to_end(Path(tmp) / "bench.zarr", best, net, min(batches), args.T)
                feed_rows(Path(tmp) / "bench.zarr", Path(tmp), min(batches), args.T,
                          "eager" if args.skip_compile else "compile")
    except ImportError as exc:
        print(f"end_to_end_zarr skipped: {exc}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if os.environ.get("OUT"):
        info = {"device": name, "torch": torch.__version__, "size": SIZE,
                "model": "xresnet18", "results": results}
        (Path(os.environ["OUT"]) / "gpu_bench.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
