"""Before any partition runs, once, on the coordinator: check store and checkpoint against each
other, resolve ``--engine auto``, plan the partitions, and begin (resume, or reopen for repair)
the catalog with the run's provenance. Array tasks ``join`` what the coordinator began."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from galspec_batch import code_version
from galspec_batch.atomic import file_sha256
from galspec_batch.catalog import CatalogWriter, Outputs, paths
from galspec_batch.catalog.state import RunState, read_run_state
from galspec_batch.checkpoint import WEIGHTS_FILE, load_calibration, model_id, read_config
from galspec_batch.errors import InputError, UsageError
from galspec_batch.options import PredictOptions
from galspec_batch.predict.compat import check_compatible
from galspec_batch.regions import select_partitions
from galspec_batch.store import Partition, open_store


@dataclass(frozen=True)
class RunIdentity:
    """What every task of a run needs from the coordinator, so that no task rebuilds the network
    to learn it: the model's hash and id, the store's fingerprint, the calibration scale and the
    flux factors."""

    model_hash: str
    config_hash: str
    model_id: str
    outputs: Outputs
    store_fingerprint: str
    std_scale: tuple[float, ...] | None
    flux_scale: tuple[float, ...] | None
    nu: tuple[float, ...] | None = None  # the calibration's t shapes (the catalog's metadata)

    @classmethod
    def from_run_state(cls, run: RunState) -> RunIdentity:
        def floats(v):
            return None if v is None else tuple(float(x) for x in v)

        return cls(run.provenance["model"]["hash"], run.settings["model_config"], run.model_id, run.outputs,
                   run.store_fingerprint, floats(run.settings.get("calibration")),
                   floats(run.settings.get("flux_scale")), floats(run.settings.get("calibration_nu")))


@dataclass
class Begun:
    """A catalog begun (or resumed) for prediction, with what the run needs; ``options`` hold the
    engine that runs (``auto`` resolved)."""

    writer: CatalogWriter
    plan: list[tuple[Partition, int]]
    identity: RunIdentity
    options: PredictOptions


def value_settings(options: PredictOptions, identity: RunIdentity) -> dict[str, Any]:
    """The settings whose change changes the catalog's values; a resume must repeat them.
    ``options.engine`` is the resolved engine. The MC masks do not depend on the batch, but the
    CPU kernels of a convolution do pick their summation order by batch shape: xresnet18 gave one
    latent in 9,000 different in its last bit at batch 7 and 32, so ``batch_size`` is one of them."""
    def listed(v):
        return None if v is None else list(v)

    return {"mc_samples": options.mc_samples, "seed": options.seed, "precision": options.precision,
            "engine": options.engine, "batch_size": options.batch_size,
            "device": options.device.split(":")[0],
            "calibration": listed(identity.std_scale), "calibration_nu": listed(identity.nu),
            "flux_scale": listed(identity.flux_scale),
            "model_config": identity.config_hash}


def _recorded(out: str | Path, overwrite: bool) -> RunState | None:
    return read_run_state(out) if paths.run_state_file(out).exists() and not overwrite else None


def begin_catalog(store: str | Path, checkpoint: str | Path, out: str | Path, options: PredictOptions, *,
                  overwrite: bool = False, record_resume: bool = True, threads: int = 0,
                  submitted_by: str | None = None) -> Begun:
    """Check store and checkpoint against each other, plan the partitions, and begin the catalog
    (or resume it, or reopen a damaged one) with its provenance. ``galspec submit`` calls this once
    before its array tasks. ``threads`` is what each worker will use (for the engine choice)."""
    store_obj = open_store(store)
    config = read_config(checkpoint)
    flux_scale = check_compatible(store_obj, config, checkpoint, rescale_flux=options.rescale_flux,
                                  allow_survey_mismatch=options.allow_survey_mismatch)
    model_hash = file_sha256(Path(checkpoint) / WEIGHTS_FILE)
    calibration = load_calibration(checkpoint, model_hash) if options.calibrate else None
    if calibration is not None and calibration.targets != config.targets:
        raise InputError(f"the calibration.json of checkpoint {checkpoint} is for "
                         f"{list(calibration.targets)} but the network predicts {list(config.targets)}; "
                         "rerun galspec calibrate")
    plan = select_partitions(store_obj, options.region, options.partitions)
    mid = model_id(config, model_hash)
    fingerprint = store_obj.fingerprint()
    outputs = Outputs(len(config.latent_names), config.redshift, config.model.head == "gaussian")
    identity = RunIdentity(model_hash, config.value_hash(), mid, outputs, fingerprint,
                           None if calibration is None else calibration.scale, flux_scale,
                           None if calibration is None else calibration.nu)
    _check_engine(options)
    options = replace(options, engine=_resolve_engine(options, _recorded(out, overwrite), checkpoint,
                                                      store_obj.image_shape, threads))
    provenance = {
        "model": {"id": mid, "hash": model_hash, "checkpoint": str(Path(checkpoint).resolve()),
                  "config": config.to_dict()},
        "store": {"path": str(Path(store).resolve()), "fingerprint": fingerprint,
                  "n_objects": store_obj.n_objects, "survey": store_obj.survey},
        "run": {**options.to_dict(), **({"submitted_by": submitted_by} if submitted_by else {})},
        "code_version": code_version(),
    }
    # an uncalibrated catalog says so: its spreads are the network's own, not calibrated
    provenance["calibrated"] = calibration is not None
    provenance["calibration"] = None if calibration is None else calibration.record()
    writer = CatalogWriter.begin(
        out, outputs=outputs, store_fingerprint=fingerprint, provenance=provenance,
        partition_order=store_obj.partition_order, model_id=mid, overwrite=overwrite,
        plan=[(p.order, p.pixel, n) for p, n in plan], record_resume=record_resume,
        settings=value_settings(options, identity), layout=options.layout,
    )
    return Begun(writer, plan, identity, options)


def _check_engine(options: PredictOptions) -> None:
    """Refuse an engine that cannot run here before anything is written."""
    from galspec_batch.engines import list_engines, unavailable_reason

    if options.engine != "auto":
        reason = unavailable_reason(options.engine, options.device)
        if reason is not None:
            raise UsageError(f"--engine {options.engine} cannot run on {options.device}: {reason}; engines "
                             f"that can: {', '.join(list_engines(options.device))}")


def _resolve_engine(options: PredictOptions, recorded: RunState | None, checkpoint: str | Path,
                    image_shape: tuple[int, int], threads: int) -> str:
    """``auto`` becomes one engine for the whole run: the one a resumed run began with, else the
    choice of :func:`galspec_batch.engines.choose_engine` (cached per model, device and shape)."""
    if options.engine != "auto":
        return options.engine
    if recorded is not None and recorded.settings.get("engine") not in (None, "auto"):
        return recorded.settings["engine"]
    from galspec_batch.checkpoint import load_checkpoint
    from galspec_batch.engines import choose_engine

    ckpt = load_checkpoint(checkpoint)
    return choose_engine(ckpt.net, device=options.device, precision=options.precision,
                         input_shape=(len(ckpt.bands), *image_shape), threads=threads,
                         cache_key=ckpt.model_hash)


def join_catalog(store: str | Path, out: str | Path, options: PredictOptions, only: list[int]) -> Begun:
    """An array task's view of a catalog its coordinator began: the identity comes from the run
    state (no network is built here), the task's options must be the run's (``auto`` means the
    run's engine), and only the partitions ``only`` are planned."""
    run = read_run_state(out)
    identity = RunIdentity.from_run_state(run)
    options = replace(options, engine=options.engine if options.engine != "auto" else run.settings["engine"])
    store_obj = open_store(store)
    plan = select_partitions(store_obj, options.region, options.partitions)
    missing = set(only) - {p.pixel for p, _ in plan}
    if missing:
        raise InputError(f"partitions {sorted(missing)[:5]} are not in the plan of catalog {out}")
    if not options.calibrate and identity.std_scale is not None:
        identity = replace(identity, std_scale=None, nu=None)
    writer = CatalogWriter.begin(
        out, outputs=identity.outputs, store_fingerprint=run.store_fingerprint,
        provenance=run.provenance, partition_order=store_obj.partition_order, model_id=identity.model_id,
        plan=[(p.order, p.pixel, n) for p, n in plan], record_resume=False,
        settings=value_settings(options, identity),
    )
    share = set(only)
    return Begun(writer, [(p, n) for p, n in plan if p.pixel in share], identity, options)
