"""Checkpoint directories: ``model.safetensors`` (weights and buffers) beside ``config.json``
(:class:`CheckpointConfig`), and optionally ``calibration.json``. Loading never unpickles."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from galspec_batch import code_version
from galspec_batch.atomic import atomic_path, file_sha256
from galspec_batch.checkpoint.config import ArchConfig, CheckpointConfig, Preprocess
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.models import GalspecNet, create_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CALIBRATION_FILE = "calibration.json"
SPLIT_FILE = "training-split.parquet"  # the object ids the network trained and validated on
_SPLITS = ("train", "validation")


@dataclass
class Checkpoint:
    net: GalspecNet
    config: CheckpointConfig
    model_hash: str

    @property
    def bands(self) -> tuple[str, ...]:
        return self.config.bands

    @property
    def latent_names(self) -> list[str]:
        return list(self.config.latent_names)

    @property
    def targets(self) -> list[str]:
        return list(self.config.targets)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def model_id(self) -> str:
        """``name@hash12``: the model as catalogs name it."""
        return model_id(self.config, self.model_hash)


def model_id(config: CheckpointConfig, model_hash: str) -> str:
    return f"{config.model.name}@{model_hash[:12]}"


def build_net(config: CheckpointConfig) -> GalspecNet:
    """A freshly initialised GalspecNet with the architecture and buffers named by ``config``."""
    m, pp = config.model, config.preprocess
    cnn = create_model(m.name, in_bands=m.in_bands, n_out=m.n_out, dropout=m.dropout, head=m.head)
    return GalspecNet(cnn, pp.softening, pp.mean, pp.std, config.target_mean, config.target_std)


def _floats(t: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().cpu().tolist())


def config_for(net: GalspecNet, record: dict[str, Any]) -> CheckpointConfig:
    """The config of ``net``: what the network knows (architecture, statistics) plus ``record``,
    which gives bands, image_size and targets and may give pixel_scale, survey, flux_unit,
    zero_points, training, data and init."""
    missing = [k for k in ("bands", "image_size", "targets") if k not in record]
    if missing:
        raise InputError(f"checkpoint config lacks {missing}; expected bands, image_size, targets")
    unknown = set(record) - {"bands", "image_size", "targets", "pixel_scale", "survey", "flux_unit",
                             "zero_points", "training", "data", "init", "code_version"}
    if unknown:
        raise InputError(f"checkpoint config: unknown keys {sorted(unknown)}")
    cnn = net.cnn
    try:
        return CheckpointConfig(
            model=ArchConfig(cnn.model_name, int(cnn.in_bands), int(cnn.n_out), float(cnn.dropout),
                             cnn.head_kind),
            bands=tuple(record["bands"]),
            image_size=tuple(int(v) for v in record["image_size"]),
            targets=tuple(record["targets"]),
            target_mean=_floats(net.target_mean),
            target_std=_floats(net.target_std),
            preprocess=Preprocess(_floats(net.softening), _floats(net.pp_mean), _floats(net.pp_std)),
            code_version=record.get("code_version") or code_version(),
            pixel_scale=record.get("pixel_scale"),
            survey=record.get("survey"),
            flux_unit=record.get("flux_unit"),
            zero_points=None if record.get("zero_points") is None else tuple(record["zero_points"]),
            training=dict(record.get("training") or {}),
            data=dict(record.get("data") or {}),
            init=record.get("init"),
        )
    except ValueError as exc:
        raise InputError(f"checkpoint config: {exc}") from None


def check_finite(net: torch.nn.Module, where: str) -> None:
    """Refuse a network with a NaN or infinite weight or buffer, naming the first one."""
    for name, t in net.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FormatError(f"{where}: {name} holds NaN or infinite values; this network cannot be used")


def save_checkpoint(path: str | os.PathLike, net: GalspecNet, record: dict[str, Any], *,
                    overwrite: bool = True, split: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write ``net`` and its config (see ``config_for``), and the (train, validation) ids of
    ``split``, as a checkpoint directory, atomically."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.mkdir()
        write_checkpoint_files(tmp, net, record)
        if split is not None:
            write_split(tmp, *split)
    return path


def write_checkpoint_files(directory: Path, net: GalspecNet, record: dict[str, Any]) -> CheckpointConfig:
    """Write the two checkpoint files into an existing (temporary) directory; return the config.

    For writers that put more files beside them in one atomic directory (the trainer's resume state).
    """
    config = config_for(net, record)
    check_finite(net, f"checkpoint {directory}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(tensors, Path(directory) / WEIGHTS_FILE, metadata={"format": CheckpointConfig.FORMAT})
    config.write(Path(directory) / CONFIG_FILE)
    return config


def write_split(directory: str | os.PathLike, train_ids: np.ndarray, val_ids: np.ndarray) -> None:
    """Record which objects the network trained and validated on (``SPLIT_FILE``)."""
    ids = np.concatenate([train_ids, val_ids]).astype(np.int64)
    split = np.repeat(np.array(_SPLITS), [len(train_ids), len(val_ids)])
    pq.write_table(pa.table({"object_id": ids, "split": pa.array(split).dictionary_encode()}),
                   Path(directory) / SPLIT_FILE)


def read_split(checkpoint: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """(train ids, validation ids) of a checkpoint, or None where it records none."""
    path = Path(checkpoint) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        ids = table["object_id"].to_numpy().astype(np.int64)
        split = table["split"].combine_chunks().dictionary_decode().to_numpy(zero_copy_only=False)
    except Exception as exc:  # pyarrow's own errors for a damaged file
        raise FormatError(f"{path} is not a readable training split ({exc})") from None
    return ids[split == _SPLITS[0]], ids[split == _SPLITS[1]]


def read_config(path: str | os.PathLike) -> CheckpointConfig:
    """The checkpoint's config.json, checked."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise MissingFileError(
            f"{path} is not a galspec checkpoint: expected a directory with {WEIGHTS_FILE} and {CONFIG_FILE}"
        )
    return CheckpointConfig.read(path / CONFIG_FILE)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from config.json and load its safetensors weights strictly (eval mode);
    weights or buffers that are not finite are refused."""
    path = Path(path)
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    net = build_net(config)
    try:
        state = load_file(weights, device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        raise FormatError(f"{weights} is not a readable safetensors file: {exc}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise FormatError(f"{weights} does not match model {config.model.name!r}: {first}") from None
    check_finite(net, str(weights))
    net.to(device).eval()
    return Checkpoint(net=net, config=config, model_hash=file_sha256(weights))
