"""The SLURM client commands galspec runs (sbatch, scancel, squeue); failures quote SLURM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from galspec_batch.errors import SlurmError

TIMEOUT_S = 120


def run_slurm(args: list[str], what: str) -> str:
    """Run a SLURM client command; its stdout, or SlurmError with its stderr in one line."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{what} failed: {args[0]} is not on PATH (is this a SLURM login node?)")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what} failed: {args[0]} did not answer in {TIMEOUT_S} s") from None
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
        raise SlurmError(f"{what} failed: {message}")
    return done.stdout


def sbatch(script: Path, *extra: str) -> str:
    """Submit ``script``; the job id."""
    out = run_slurm(["sbatch", "--parsable", *extra, str(script)], "sbatch")
    return out.strip().split(";")[0]


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


def queued_jobs(job_ids: list[str]) -> dict[str, str]:
    """``{job id: state}`` of the given jobs (array tasks as ``ID_I``) still in the queue; {} when
    squeue is missing or fails."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    try:
        out = run_slurm(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], "squeue")
    except SlurmError:
        return {}  # e.g. every id has left the queue: squeue says "Invalid job id specified"
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states
