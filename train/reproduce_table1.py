"""Reproduce Table 1 of Wu & Peek 2020 on the mock survey: train the five published models and
write ``train/table1.md`` with their validation RMSE (and its bootstrap interval, resampling the
validation objects) beside the paper's, and two non-image rows on the same split: a
gradient-boosting model on aperture photometry (``galspec_batch.baselines``) and the training mean.

    python train/reproduce_table1.py --work /tmp/table1 [--n 3000] [--size 64] [--epochs E]
                                     [--batch-size B] [--models NAME ...] [--threads T]
    python train/reproduce_table1.py --work DIR --store S.zarr --labels L.parquet   # own data

Without --store/--labels it first simulates a mock survey (``simulate_survey``), trains the
spectrum VAE on its spectra and encodes them into the labels table, all inside --work. Each model
trains with its config ``train/<model>.toml`` (the paper's recipe); --epochs and --batch-size
override every config, to fit a small machine, and the table says so. Re-running resumes: finished
steps and finished models are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from galspec_batch.baselines import COLOUR, MEAN, compare_baselines
from galspec_batch.catalog.joins import match_rows
from galspec_batch.checkpoint import load_checkpoint, read_split
from galspec_batch.metrics import BOOTSTRAP_LEVEL, bootstrap_ci
from galspec_batch.store import open_store
from galspec_batch.training import TrainSettings, fit, read_training_labels, split_indices
from galspec_batch.training.data import ImageSource

HERE = Path(__file__).parent
COLOUR_ROW = "colour model (gradient boosting on aperture photometry)"
MEAN_ROW = "training mean"
PAPER_ORDER = ["xresnet18-hybrid", "xresnet18", "xresnet18-deconv", "simple-cnn", "simple-deconv"]
TRAIN_ORDER = ["simple-cnn", "simple-deconv", "xresnet18", "xresnet18-hybrid", "xresnet18-deconv"]


def load_config(name: str) -> tuple[TrainSettings, dict]:
    cfg = tomllib.loads((HERE / f"{name}.toml").read_text())
    paper = cfg.pop("paper")
    return TrainSettings(**cfg), paper


def make_data(work: Path, n: int, size: int, vae_epochs: int, seed: int) -> tuple[Path, Path]:
    from galspec_batch.simulate.survey import simulate_survey
    from galspec_batch.spectral_vae import VAESettings, encode_spectra_table, train_vae

    store, spectra, vae, labels = (work / "store.zarr", work / "spectra.parquet", work / "vae",
                                   work / "labels.parquet")
    if not store.exists():
        print(f"simulating {n} galaxies at {size} px ...", flush=True)
        print(simulate_survey(store, spectra, n, image_size=size, seed=seed), flush=True)
    if not vae.exists():
        print("training the spectrum VAE ...", flush=True)
        train_vae(spectra, vae, n_latent=6, settings=VAESettings(epochs=vae_epochs, seed=seed), progress=True)
    if not labels.exists():
        encode_spectra_table(vae, spectra, labels)
    return store, labels


def cnn_interval(checkpoint: Path, store: Path, labels: Path) -> tuple[float, float]:
    """Bootstrap interval of a checkpoint's validation RMSE (dropout off, as training scores it)."""
    ck = load_checkpoint(checkpoint)
    _, val_ids = read_split(checkpoint)
    s, lab = open_store(store), read_training_labels(labels)
    source = ImageSource(s, match_rows(s.object_id, val_ids, "the store"))
    y = lab.values[match_rows(lab.object_id, val_ids, "the labels")].astype(np.float64)
    net = ck.net.eval()
    with torch.no_grad():
        batches = (np.arange(a, min(a + 256, len(source))) for a in range(0, len(source), 256))
        pred = np.concatenate([net.predict(torch.from_numpy(source.get(b)))[0].double().numpy()
                               for b in batches])
    sq = (pred - (y - net.target_mean.double().numpy()) / net.target_std.double().numpy()) ** 2
    low, high = bootstrap_ci(lambda idx: float(np.sqrt(sq[idx].mean())), len(sq))
    return float(low), float(high)


def write_table(path: Path, rows: list[dict], meta: dict) -> None:
    done = [r for r in rows if r.get("val_rmse") is not None]
    colour = meta["baselines"][COLOUR_ROW][0]
    mock_order = [r["model"] for r in sorted(done, key=lambda r: r["val_rmse"])]
    paper_order = [r["model"] for r in sorted(done, key=lambda r: r["paper"]["val_rmse"])]
    lines = [
        "# Table 1 on the mock survey",
        "",
        f"Data: mock survey (`simulate_survey`, seed {meta['seed']}), {meta['n_objects']} galaxies at "
        f"{meta['size']} x {meta['size']} px ({meta['n_train']} train / {meta['n_val']} validation, "
        f"fixed-seed 80/20 split); labels: 6 latents of the spectrum VAE trained on the mock spectra, "
        "z-scored with the training split.",
        f"Training: the paper's recipe (RAdam + LookAhead, one-cycle, wd 0.01, D4 augmentation, no dropout)"
        f" with {meta['overrides']}. Paper: 60k Pan-STARRS galaxies at 224 px, 10 epochs (50 in brackets).",
        f"Machine: {meta['machine']}; total training time {meta['minutes']:.1f} min.",
        f"Intervals: the central {BOOTSTRAP_LEVEL:.1%} of 1000 bootstrap resamplings of the validation "
        "objects (1-sigma error bars; the models share the split, so their differences are better "
        "determined than the intervals suggest).",
        "",
        "| model | params | paper val RMSE | mock val RMSE (last epoch) [interval] | mock best (epoch) "
        "| epochs | train img/s | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["paper"]
        paper = f"{p['val_rmse']:.3f}"
        if "val_rmse_50_epochs" in p:
            paper += f" ({p['val_rmse_50_epochs']:.3f})"
        if r.get("val_rmse") is None:
            lines.append(f"| {r['model']} | {p['params']:,} | {paper} | not run | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['params']:,} | {paper} | {r['val_rmse']:.3f} "
            f"[{r['low']:.3f}, {r['high']:.3f}] "
            f"| {r['best_val_rmse']:.3f} ({r['best_epoch']}) | {r['epochs']} | {r['img_per_s']:.0f} "
            f"| {r['minutes']:.1f} |"
        )
    for name, (v, lo, hi) in meta["baselines"].items():
        lines.append(f"| {name} | | | {v:.3f} [{lo:.3f}, {hi:.3f}] | | | | |")
    lines += [
        "",
        "Validation RMSE here is over the whole validation split; fastai (the paper) averaged per-batch "
        "RMSEs, which reads slightly lower.",
        "",
        f"Ordering, best first. Paper: {' < '.join(paper_order)}. Mock: {' < '.join(mock_order)}.",
        f"Trained models that beat the colour model: "
        f"{', '.join(r['model'] for r in done if r['val_rmse'] < colour) or 'none'}.",
        "",
    ]
    if meta.get("notes"):
        lines += ["## Notes", "", meta["notes"], ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="Directory for data and runs.")
    ap.add_argument("--store", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--n", type=int, default=6000, help="Mock galaxies to simulate.")
    ap.add_argument("--size", type=int, default=64, help="Cutout size in pixels.")
    ap.add_argument("--vae-epochs", type=int, default=100)
    ap.add_argument("--epochs", type=int, help="Override every config's epochs.")
    ap.add_argument("--batch-size", type=int, help="Override every config's batch size.")
    ap.add_argument("--models", nargs="*", default=PAPER_ORDER)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0, help="Mock survey seed.")
    ap.add_argument("--out", type=Path, default=HERE / "table1.md")
    ap.add_argument("--machine", default="CPU", help="Described in the table.")
    ap.add_argument("--notes", default="", help="Text for a Notes section under the table.")
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    if (args.store is None) != (args.labels is None):
        sys.exit("give both --store and --labels, or neither")
    store, labels = ((args.store, args.labels) if args.store
                     else make_data(args.work, args.n, args.size, args.vae_epochs, args.seed))
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v}
    rows = {name: {"model": name, "paper": load_config(name)[1]} for name in PAPER_ORDER}
    baselines = non_image_rows(store, labels)
    for name in sorted(args.models, key=TRAIN_ORDER.index):  # cheapest first; table after each
        settings = dataclasses.replace(load_config(name)[0], **overrides)
        row = rows[name]
        print(f"== {name}: {settings}", flush=True)
        t0 = time.perf_counter()
        result = fit(store, labels, args.work / "runs" / name, settings, threads=args.threads)
        last = result.metrics[-1]
        minutes = sum(m["seconds"] for m in result.metrics) / 60
        net = load_checkpoint(result.best).net
        low, high = cnn_interval(result.last, store, labels)
        row.update(val_rmse=last["val_rmse"], low=low, high=high, best_val_rmse=result.best_val_rmse,
                   best_epoch=result.best_epoch, epochs=len(result.metrics),
                   params=sum(p.numel() for p in net.cnn.parameters()),
                   img_per_s=float(np.mean([m["img_per_s"] for m in result.metrics])), minutes=minutes)
        print(f"   {name}: val_rmse {last['val_rmse']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        _write(args, store, labels, overrides, list(rows.values()), baselines)
    _write(args, store, labels, overrides, list(rows.values()), baselines)
    print(f"wrote {args.out}")


def non_image_rows(store: Path, labels: Path) -> dict[str, tuple[float, float, float]]:
    """Validation RMSE over the latents [interval] of the colour and mean models, on the split the
    CNNs use, fitted on its training part."""
    first = load_config(PAPER_ORDER[0])[0]
    lab = read_training_labels(labels)
    tr, va = split_indices(lab.object_id, first.val_fraction, first.seed)
    print("fitting the colour model on aperture photometry ...", flush=True)
    rep = compare_baselines(store, labels, lab.object_id[tr], lab.object_id[va], seed=first.seed)
    print(rep, flush=True)
    return {row: (rep.latent_rmse[m], *rep.latent_interval[m])
            for row, m in ((COLOUR_ROW, COLOUR), (MEAN_ROW, MEAN))}


def _write(args, store: Path, labels: Path, overrides: dict, rows: list[dict],
           baselines: dict[str, tuple[float, float, float]]) -> None:
    first = load_config(PAPER_ORDER[0])[0]
    s = open_store(store)
    lab = read_training_labels(labels)
    tr, va = split_indices(lab.object_id, first.val_fraction, first.seed)
    described = ", ".join(f"{k} {v}" for k, v in overrides.items()) or "the configs' epochs and batch size"
    meta = {
        "seed": args.seed, "n_objects": len(lab.object_id), "size": s.image_shape[0], "n_train": len(tr),
        "n_val": len(va), "overrides": described, "machine": args.machine,
        "minutes": sum(r.get("minutes", 0.0) for r in rows),
        "baselines": baselines, "notes": args.notes,
    }
    write_table(args.out, rows, meta)


if __name__ == "__main__":
    main()
