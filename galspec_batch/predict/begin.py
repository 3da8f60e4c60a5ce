"""Before any partition runs: check store and checkpoint against each other, plan the partitions
and begin (or resume) the catalog with the run's provenance, once, on the coordinator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galspec_batch import code_version
from galspec_batch.catalog import CatalogWriter
from galspec_batch.checkpoint import CheckpointConfig, load_calibration, model_id, read_config
from galspec_batch.errors import InputError
from galspec_batch.options import PredictOptions
from galspec_batch.regions import select_partitions
from galspec_batch.store import CutoutStore, Partition, open_store


@dataclass(frozen=True)
class RunIdentity:
    """What every task of a run needs from the coordinator, so that no task rebuilds the network
    to learn it: the model's hash and id, the store's fingerprint, the calibration scale."""

    model_hash: str
    model_id: str
    n_latents: int
    store_fingerprint: str
    std_scale: tuple[float, ...] | None

    @classmethod
    def from_run_state(cls, run) -> RunIdentity:
        prov = run.provenance
        scale = (prov.get("calibration") or {}).get("scale")
        return cls(prov["model"]["hash"], run.model_id, run.n_latents, run.store_fingerprint,
                   None if scale is None else tuple(float(v) for v in scale))


@dataclass
class Begun:
    """A catalog begun (or resumed) for prediction, with what the run needs."""

    writer: CatalogWriter
    plan: list[tuple[Partition, int]]
    identity: RunIdentity


def value_settings(options: PredictOptions, std_scale: tuple[float, ...] | None) -> dict[str, Any]:
    """The settings whose change changes the catalog's values (``batch_size`` does not, by design);
    a resume must repeat them."""
    return {"mc_samples": options.mc_samples, "seed": options.seed, "precision": options.precision,
            "engine": options.engine, "device": options.device.split(":")[0],
            "calibration": None if std_scale is None else list(std_scale)}


def begin_catalog(store: str | Path, checkpoint: str | Path, out: str | Path, options: PredictOptions, *,
                  overwrite: bool = False, record_resume: bool = True,
                  submitted_by: str | None = None) -> Begun:
    """Check store and checkpoint against each other, plan the partitions, and begin the catalog
    (or resume it) with its provenance. ``galspec submit`` calls this once before its array tasks."""
    from galspec_batch.atomic import file_sha256
    from galspec_batch.checkpoint import WEIGHTS_FILE

    store_obj = open_store(store)
    config = read_config(checkpoint)
    check_compatible(store_obj, config, checkpoint)
    model_hash = file_sha256(Path(checkpoint) / WEIGHTS_FILE)
    calibration = load_calibration(checkpoint, model_hash) if options.calibrate else None
    plan = select_partitions(store_obj, options.region, options.partitions)
    mid = model_id(config, model_hash)
    fingerprint = store_obj.fingerprint()
    provenance = {
        "model": {"id": mid, "hash": model_hash, "checkpoint": str(Path(checkpoint).resolve()),
                  "config": config.to_dict()},
        "store": {"path": str(Path(store).resolve()), "fingerprint": fingerprint,
                  "n_objects": store_obj.n_objects, "survey": store_obj.survey},
        "run": {**options.to_dict(), **({"submitted_by": submitted_by} if submitted_by else {})},
        "code_version": code_version(),
    }
    if calibration is not None:
        provenance["calibration"] = calibration.record()
    scale = None if calibration is None else calibration.scale
    writer = CatalogWriter.begin(
        out, n_latents=config.model.n_out, store_fingerprint=fingerprint, provenance=provenance,
        partition_order=store_obj.partition_order, model_id=mid, overwrite=overwrite,
        plan=[(p.order, p.pixel, n) for p, n in plan], record_resume=record_resume,
        settings=value_settings(options, scale),
    )
    return Begun(writer, plan, RunIdentity(model_hash, mid, config.model.n_out, fingerprint, scale))


def join_catalog(store: str | Path, out: str | Path, options: PredictOptions, only: list[int]) -> Begun:
    """An array task's view of a catalog its coordinator began: the identity comes from the run
    state (no network is built here), the task's options must be the run's, and only the
    partitions ``only`` are planned."""
    from galspec_batch.catalog.state import read_run_state

    run = read_run_state(out)
    identity = RunIdentity.from_run_state(run)
    store_obj = open_store(store)
    plan = select_partitions(store_obj, options.region, options.partitions)
    missing = set(only) - {p.pixel for p, _ in plan}
    if missing:
        raise InputError(f"partitions {sorted(missing)[:5]} are not in the plan of catalog {out}")
    writer = CatalogWriter.begin(
        out, n_latents=identity.n_latents, store_fingerprint=run.store_fingerprint,
        provenance=run.provenance, partition_order=store_obj.partition_order, model_id=identity.model_id,
        plan=[(p.order, p.pixel, n) for p, n in plan], record_resume=False,
        settings=value_settings(options, identity.std_scale if options.calibrate else None),
    )
    share = set(only)
    return Begun(writer, [(p, n) for p, n in plan if p.pixel in share], identity)


def check_compatible(store: CutoutStore, config: CheckpointConfig, checkpoint: str | Path) -> None:
    """Refuse a store whose bands, pixel scale or image size differ from the checkpoint's."""
    if config.bands != store.bands:
        raise InputError(
            f"checkpoint {checkpoint} was trained on bands {''.join(config.bands)} but store {store.path} "
            f"has {''.join(store.bands)}"
        )
    scale = config.pixel_scale
    if scale is not None and abs(scale - store.pixel_scale) > 1e-3 * scale:
        raise InputError(
            f"checkpoint {checkpoint} was trained at {scale}\"/px but store {store.path} has "
            f"{store.pixel_scale}\"/px"
        )
    if config.image_size != store.image_shape:
        raise InputError(
            f"checkpoint {checkpoint} expects {config.image_size} images but store "
            f"{store.path} holds {store.image_shape}"
        )
