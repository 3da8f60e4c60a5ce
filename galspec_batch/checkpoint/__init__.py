"""Checkpoints: the trained network (safetensors), its config and its calibration (JSON)."""

from galspec_batch.checkpoint.calibration import Calibration, load_calibration, save_calibration
from galspec_batch.checkpoint.config import ArchConfig, CheckpointConfig, Preprocess
from galspec_batch.checkpoint.files import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    build_net,
    check_finite,
    config_for,
    load_checkpoint,
    model_id,
    read_config,
    read_split,
    save_checkpoint,
    write_checkpoint_files,
    write_split,
)

__all__ = [
    "CALIBRATION_FILE",
    "CONFIG_FILE",
    "SPLIT_FILE",
    "WEIGHTS_FILE",
    "ArchConfig",
    "Calibration",
    "Checkpoint",
    "CheckpointConfig",
    "Preprocess",
    "build_net",
    "check_finite",
    "config_for",
    "load_calibration",
    "load_checkpoint",
    "model_id",
    "read_config",
    "read_split",
    "save_calibration",
    "save_checkpoint",
    "write_checkpoint_files",
    "write_split",
]
