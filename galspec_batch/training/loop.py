"""The training loop: fit a CNN from a cutout store and a labels table, resumable and fine-tunable.

Output directory::

    out/
      last/        checkpoint after the latest epoch, plus trainer_state.{json,safetensors}
                   (optimiser, LookAhead, one-cycle and metrics), all renamed into place at once
      best/        checkpoint of the epoch with the lowest validation RMSE, with its
                   calibration.json (fitted on the validation split when training ends)
      metrics.csv  one row per epoch

Targets: the latents, and the redshift where the labels carry it, z-scored with the training
split's mean and std. Loss: the beta-NLL of a gaussian head (``loss="beta-nll"``) or the RMSE of
a point head (``"rmse"``, the paper's recipe; :mod:`galspec_batch.models.heads`). ``val_rmse`` is
the RMSE of the latents over the whole validation split (fastai reports the batch-size-weighted
mean of per-batch RMSEs, which is a little lower); ``train_rmse`` the batch-weighted mean of the
training batches' RMSE of the latents' means under augmentation and dropout, as fastai reports it;
:mod:`galspec_batch.training.validation` lists the other metrics.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, file_sha256, read_json
from galspec_batch.calibrate import MIN_SPLIT, CalibrationFit
from galspec_batch.catalog.joins import match_rows
from galspec_batch.checkpoint import (
    load_checkpoint,
    read_split,
    save_checkpoint,
    write_checkpoint_files,
    write_split,
)
from galspec_batch.columns import REDSHIFT
from galspec_batch.errors import InputError, UsageError
from galspec_batch.labels import Labels
from galspec_batch.models import GalspecNet, create_model, model_entry
from galspec_batch.models.heads import LOSS_HEAD, head_loss, rmse
from galspec_batch.options import check_device
from galspec_batch.progress import Progress
from galspec_batch.store import CutoutStore, open_store

from .augment import random_d4
from .data import (
    ImageSource,
    iter_batches,
    leave_out_quarantined,
    n_batches,
    read_training_labels,
    split_indices,
)
from .optim import flatten_state, make_one_cycle, make_optimizer, unflatten_state
from .preprocess import MAX_SAMPLE_OBJECTS, fit_preprocess
from .validation import TrainingDiverged, calibrate_checkpoint, validation_metrics

LAST, BEST, METRICS_FILE = "last", "best", "metrics.csv"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
FINE_TUNE_LR_FACTOR = 0.1


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained; the defaults are the paper's recipe (dropout aside: the paper used
    0, but MC-dropout uncertainties need p > 0 in the head)."""

    model: str | None = None  # None only when fine-tuning (taken from the checkpoint)
    epochs: int = D.TRAIN_EPOCHS
    batch_size: int = D.TRAIN_BATCH_SIZE
    max_lr: float | None = None  # None: 0.03 (0.003 for xresnet18-deconv), a tenth when fine-tuning
    weight_decay: float = 0.01
    pct_start: float = 0.25
    dropout: float = D.HEAD_DROPOUT
    val_fraction: float = D.VAL_FRACTION
    seed: int = D.SEED
    augment: bool = True
    loss: str | None = None  # None: D.LOSS (the checkpoint's when fine-tuning)
    beta: float = D.BETA_NLL
    redshift: bool | None = None  # None: where the labels carry z (the checkpoint's when fine-tuning)
    precision: str = D.TRAIN_PRECISION  # the training step's arithmetic (D.TRAIN_PRECISIONS)


@dataclass
class TrainResult:
    out: Path
    metrics: list[dict[str, float]]
    best_val_rmse: float
    best_epoch: int
    calibration: CalibrationFit | None = None  # fitted on the validation split of the best epoch
    uncalibrated: str | None = None  # why there is no calibration, when there is none
    left_out: np.ndarray | None = None  # ids of labelled objects left out: the store quarantined them
    last: Path = field(init=False)
    best: Path = field(init=False)

    def __post_init__(self) -> None:
        self.last, self.best = self.out / LAST, self.out / BEST


def default_max_lr(model: str, fine_tune: bool = False) -> float:
    """The registry's max learning rate of ``model`` (divided by 10 for fine-tuning)."""
    lr = model_entry(model).max_lr
    return lr * FINE_TUNE_LR_FACTOR if fine_tune else lr


def _net_device(net: torch.nn.Module) -> torch.device:
    """The device a network's parameters live on."""
    return next(net.parameters()).device


def _training_device(device: str) -> torch.device:
    """``--device`` checked: a CPU, or a CUDA GPU torch can see."""
    dev = torch.device(check_device(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA GPU here")
    return dev


def train_autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast context of a training step's forward pass at ``precision`` on ``device_type``."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def _torch_settings(threads: int | None):
    """Deterministic algorithms and an optional thread count, restored afterwards."""
    old_det, old_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def fit(
    store: str | os.PathLike | CutoutStore,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    settings: TrainSettings,
    *,
    init: str | os.PathLike | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    max_ram_bytes: int = 4 << 30,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune from checkpoint ``init``) and write checkpoints into ``out``.

    A run whose ``out`` already holds a partial run with the same settings and data resumes after
    its last finished epoch; one with other settings is refused unless ``overwrite``. ``device``
    ("cpu", "cuda", "cuda:N") is where the steps run; the images stay in host memory and go over
    batch by batch, and every random draw is made on the CPU, so a run may resume on another device.
    """
    dev = _training_device(device)
    store = store if isinstance(store, CutoutStore) else open_store(store)
    out = Path(out)
    if settings.epochs < 1 or settings.batch_size < 1:
        raise InputError(
            f"--epochs and --batch-size must be positive, got {settings.epochs} and {settings.batch_size}"
        )
    lab, quarantined = leave_out_quarantined(read_training_labels(labels), store)
    if lab.object_id.size < 2:
        raise InputError(f"labels table {labels} has {lab.object_id.size} rows once the objects the store "
                         "quarantined are left out; training needs at least 2")
    rows = match_rows(store.object_id, lab.object_id, f"the store {store.path}")
    tr, va = split_indices(lab.object_id, settings.val_fraction, settings.seed)

    base = load_checkpoint(init) if init is not None else None
    tr, va, base_trained = _keep_base_training_out_of_validation(lab.object_id, tr, va, init)
    settings = _resolve_settings(settings, base, store, lab, init)
    names, values = lab.targets(settings.redshift)
    identity = {
        "settings": asdict(settings),
        "store_fingerprint": store.fingerprint(),
        "labels_sha256": file_sha256(labels),
        "init_model_hash": base.model_hash if base else None,
    }
    state = _read_state(out, identity, overwrite)

    with _torch_settings(threads), Progress(progress) as bar:
        load = bar.task("loading images", len(rows))
        train_src = ImageSource(store, rows[tr], max_ram_bytes, progress=load)
        val_src = ImageSource(store, rows[va], max_ram_bytes, progress=load)
        y_train, y_val = values[tr], values[va]
        target_mean = y_train.astype(np.float64).mean(axis=0)
        target_std = y_train.astype(np.float64).std(axis=0)
        if not (np.isfinite(target_std) & (target_std > 0)).all():
            raise InputError(
                f"targets {[n for n, s in zip(names, target_std, strict=True) if s <= 0]} are "
                f"constant over the training split of {labels}; cannot z-score them"
            )
        z_train = ((y_train - target_mean) / target_std).astype(np.float32)
        z_val = ((y_val - target_mean) / target_std).astype(np.float32)

        torch.manual_seed(settings.seed)
        if base is not None:
            cnn = base.net.cnn
            pp = asdict(base.config.preprocess)
        else:
            cnn = create_model(settings.model, in_bands=len(store.bands), n_out=len(names),
                               dropout=settings.dropout, head=LOSS_HEAD[settings.loss])
            pp = fit_preprocess(train_src.sample(MAX_SAMPLE_OBJECTS, settings.seed), settings.seed)
        net = GalspecNet(cnn, pp["softening"], pp["mean"], pp["std"], target_mean, target_std).to(dev)

        steps = n_batches(len(train_src), settings.batch_size, drop_last=True)
        opt = make_optimizer(net, settings.max_lr, settings.weight_decay)
        sched = make_one_cycle(opt, settings.max_lr, settings.epochs * steps, settings.pct_start)
        metrics: list[dict[str, float]] = []
        if state is not None:
            _restore(out / LAST, net, opt, sched)
            metrics = state["metrics"]
        config = {
            "bands": list(store.bands),
            "image_size": list(store.image_shape),
            "pixel_scale": store.pixel_scale,
            "survey": store.survey,
            "flux_unit": store.attrs.flux_unit,
            "zero_points": _zero_points(store),
            "targets": names,
            "data": {
                "store": str(store.path), "store_fingerprint": identity["store_fingerprint"],
                "labels": str(labels), "labels_sha256": identity["labels_sha256"],
                "n_train": int(len(tr)), "n_val": int(len(va)),
                "n_quarantined_left_out": int(quarantined.size),
            },
        }
        if base is not None:
            config["init"] = {"checkpoint": str(init), "model_hash": base.model_hash}

        split = (np.union1d(lab.object_id[tr], base_trained), lab.object_id[va])
        for epoch in range(len(metrics), settings.epochs):
            record = _run_epoch(net, opt, sched, train_src, z_train, val_src, z_val, settings, epoch,
                                names, bar)
            metrics.append(record)
            best = min(metrics, key=lambda m: m["val_rmse"])
            config["training"] = {
                **asdict(settings), "device": dev.type, "epochs_done": epoch + 1,
                "val_rmse": record["val_rmse"], "best_val_rmse": best["val_rmse"],
                "best_epoch": int(best["epoch"]),
            }
            if best is record:  # best first: a kill before `last` lands only repeats this epoch
                save_checkpoint(out / BEST, net, config, overwrite=True, split=split)
            _write_last(out / LAST, net, config, opt, sched, {"identity": identity, "metrics": metrics},
                        split)
            _write_metrics(out / METRICS_FILE, metrics)
            z = f" val_z_nmad {record['val_z_nmad']:.4f}" if "val_z_nmad" in record else ""
            bar.log(
                f"epoch {epoch + 1}/{settings.epochs}: train_rmse {record['train_rmse']:.4f} "
                f"val_rmse {record['val_rmse']:.4f}{z} ({record['img_per_s']:.0f} img/s)"
            )
            if on_epoch_end is not None:
                on_epoch_end(record)

        calibration, why = None, None
        if LOSS_HEAD[settings.loss] == "point" and settings.dropout == 0:
            why = "a point head without dropout (--loss rmse --dropout 0) predicts no spread to calibrate"
        else:
            calibration = calibrate_checkpoint(out / BEST, val_src, lab.object_id[va],
                                               y_val.astype(np.float64), settings.seed)
            if calibration is None:
                why = (f"{len(va)} validation objects are too few to calibrate on (need {2 * MIN_SPLIT}); "
                       "predictions will say so until galspec calibrate runs")
        if why:
            bar.log(f"NOT CALIBRATED: {why}")

    best = min(metrics, key=lambda m: m["val_rmse"])
    return TrainResult(out, metrics, best["val_rmse"], int(best["epoch"]), calibration, why, quarantined)


def _zero_points(store: CutoutStore) -> list[float] | None:
    """The store's zero points in band order, or None when any is unknown."""
    zps = [store.attrs.zero_points[b] for b in store.bands]
    return None if None in zps else zps


def _resolve_settings(settings: TrainSettings, base, store: CutoutStore, lab: Labels, init) -> TrainSettings:
    """Fill in the model, loss, targets and learning rate; check a fine-tuning checkpoint fits."""
    if settings.loss not in (None, *LOSS_HEAD):
        raise UsageError(f"unknown --loss {settings.loss!r}; expected one of {', '.join(LOSS_HEAD)}")
    if settings.precision not in D.TRAIN_PRECISIONS:
        raise UsageError(f"unknown --precision {settings.precision!r}; expected one of "
                         f"{', '.join(D.TRAIN_PRECISIONS)}")
    if base is None:
        if settings.model is None:
            raise UsageError("no model given: name one (e.g. --model xresnet18-hybrid) or --init a "
                             "checkpoint")
        model, dropout = settings.model, settings.dropout
        model_entry(model)  # an unknown name is refused before any data is read
        loss = settings.loss or D.LOSS
        redshift = lab.z is not None if settings.redshift is None else settings.redshift
    else:
        model, dropout = base.config.model.name, base.net.dropout
        if settings.model not in (None, model):
            raise InputError(f"checkpoint {init} is a {model!r} model, not {settings.model!r}")
        if base.bands != tuple(store.bands):
            raise InputError(
                f"checkpoint {init} was trained on {len(base.bands)} bands {''.join(base.bands)} but the "
                f"store {store.path} has {len(store.bands)} bands {''.join(store.bands)}"
            )
        loss = next(k for k, v in LOSS_HEAD.items() if v == base.net.head_kind)
        if settings.loss not in (None, loss):
            raise InputError(f"checkpoint {init} has a {base.net.head_kind} head, trained with --loss {loss}")
        redshift = base.config.redshift
        if settings.redshift not in (None, redshift):
            does = "predicts" if redshift else "does not predict"
            raise InputError(f"checkpoint {init} {does} the redshift")
        if len(base.latent_names) != len(lab.names):
            raise InputError(f"checkpoint {init} predicts {len(base.latent_names)} latents but the labels "
                             f"have {len(lab.names)}")
    if redshift and lab.z is None:
        raise InputError(f"the labels have no {REDSHIFT} column to train the redshift on; pass --no-redshift "
                         "or encode the labels again (galspec vae encode writes it)")
    max_lr = settings.max_lr if settings.max_lr is not None else default_max_lr(model, base is not None)
    return TrainSettings(**{**asdict(settings), "model": model, "dropout": dropout, "max_lr": max_lr,
                            "loss": loss, "redshift": redshift})


def _run_epoch(net, opt, sched, train_src, z_train, val_src, z_val, settings: TrainSettings,
               epoch: int, names: list[str], bar) -> dict[str, float]:
    # every random draw of an epoch derives from (seed, epoch), so a resumed run repeats it exactly
    torch.manual_seed(settings.seed * 1_000_003 + epoch)
    order_gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    aug_gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch + 500_000)
    t0 = time.perf_counter()
    net.train()
    task = bar.task(f"epoch {epoch + 1}/{settings.epochs}",
                    n_batches(len(train_src), settings.batch_size, drop_last=True))
    latents = [i for i, n in enumerate(names) if n != REDSHIFT]
    device = _net_device(net)
    total_loss = total_rmse = 0.0
    seen = 0
    for step, (x, y) in enumerate(iter_batches(train_src, z_train, settings.batch_size, order_gen,
                                                drop_last=True)):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if settings.augment:
            x = random_d4(x, aug_gen)
        with train_autocast(device.type, settings.precision):
            out = net(x)  # contiguous: channels-last trained at 0.3-0.5x here (bench_training.py)
        loss, mean = head_loss(out.float(), y, settings.loss, settings.beta)
        value = loss.item()
        if not math.isfinite(value):
            raise _diverged(epoch, f"at batch {step + 1} the loss is {value}", settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total_loss += value * len(x)
        total_rmse += rmse(mean[:, latents].detach(), y[:, latents]).item() * len(x)
        seen += len(x)
        task(1)
    seconds = time.perf_counter() - t0
    try:
        validation = validation_metrics(net, val_src, z_val, names)
    except TrainingDiverged as exc:
        raise _diverged(epoch, str(exc), settings) from None
    return {
        "epoch": epoch + 1,
        "train_loss": total_loss / max(seen, 1),
        "train_rmse": total_rmse / max(seen, 1),
        **validation,
        "lr": opt.param_groups[0]["lr"],
        "seconds": seconds,
        "img_per_s": seen / seconds if seconds > 0 else 0.0,
    }


def _diverged(epoch: int, what: str, settings: TrainSettings) -> TrainingDiverged:
    """Nothing of a diverged epoch is saved: the output keeps the epochs before it."""
    return TrainingDiverged(f"training diverged in epoch {epoch + 1}: {what}; nothing of that epoch was "
                            f"kept: lower --lr (now {settings.max_lr:g}) and rerun with --overwrite")


# -- resume state ---------------------------------------------------------------------------
def _read_state(out: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    state_file = out / LAST / STATE_JSON
    if overwrite:
        for name in (LAST, BEST):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / METRICS_FILE).unlink(missing_ok=True)
        return None
    if not state_file.exists():
        if (out / LAST).exists() or (out / METRICS_FILE).exists():
            raise InputError(
                f"{out} holds a run without resume state; pass --overwrite to replace it"
            )
        return None
    state = read_json(state_file)
    # a run written before a setting existed ran with that setting's default
    state["identity"]["settings"] = {**asdict(TrainSettings()), **state["identity"]["settings"]}
    if state["identity"] != identity:
        old, new = state["identity"], identity
        diff = [k for k in new if old.get(k) != new[k]]
        if "settings" in diff:
            diff += [f"{k}={old['settings'].get(k)!r}->{v!r}" for k, v in new["settings"].items()
                     if old["settings"].get(k) != v]
        raise InputError(
            f"{out} holds a run with other settings or data ({', '.join(diff)}); use a new output "
            "directory or pass --overwrite to start again"
        )
    return state


def _keep_base_training_out_of_validation(object_id: np.ndarray, tr: np.ndarray, va: np.ndarray,
                                          init: str | os.PathLike | None
                                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, ids the base network trained on): when fine-tuning, objects the base
    checkpoint trained on move from the validation split to the training one (the network has seen
    them, so they would flatter the validation scores and shrink the calibration), and the split
    this run records counts them as trained."""
    split = read_split(init) if init is not None else None
    if split is None:
        return tr, va, np.empty(0, np.int64)
    seen = np.isin(object_id[va], split[0])
    if seen.all():
        raise InputError(f"every validation object was in the training split of --init {init}; "
                         "use other labels or another --seed")
    return np.sort(np.concatenate([tr, va[seen]])), va[~seen], split[0]


def _write_last(path: Path, net: GalspecNet, config: dict, opt, sched, state: dict[str, Any],
                split: tuple[np.ndarray, np.ndarray]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_state({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tensors)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.mkdir()
        write_checkpoint_files(tmp, net, config)
        write_split(tmp, *split)
        save_file(tensors, tmp / STATE_TENSORS)
        (tmp / STATE_JSON).write_text(json.dumps({**state, "trainer": flat}, indent=1) + "\n")


def _restore(path: Path, net: GalspecNet, opt, sched) -> None:
    net.load_state_dict(load_checkpoint(path).net.state_dict(), strict=True)
    state = read_json(path / STATE_JSON)
    trainer = unflatten_state(state["trainer"], load_file(path / STATE_TENSORS))
    opt.load_state_dict(trainer["optimizer"])
    sched.load_state_dict(trainer["scheduler"])


def _write_metrics(path: Path, metrics: list[dict[str, float]]) -> None:
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
