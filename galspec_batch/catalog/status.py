"""Where a catalog stands, from its own state alone (no store needed): partitions done, pending
and failed (and, for a SLURM submission, running and queued), with a table to print."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from galspec_batch.catalog import paths, publish, state
from galspec_batch.catalog.extension import check_extension
from galspec_batch.errors import GalspecError, first_line

STATES = ("done", "running", "queued", "pending", "failed", "damaged")


@dataclass(frozen=True)
class CatalogStatus:
    """Partitions (pixels at ``partition_order``) and objects by state; ``damaged`` partitions have
    a file that fails its done marker (size, rows or sha256; the reason is in ``failures``);
    ``jobs`` are SLURM jobs still in the queue (job id -> state), when it was submitted there."""

    catalog: Path
    complete: bool
    partition_order: int
    partitions: dict[str, list[int]]
    objects: dict[str, int]
    planned: int | None
    objects_planned: int | None
    failures: dict[str, str]
    jobs: dict[str, str] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return len(self.partitions.get(kind, ()))

    def with_tasks(self, task_state: dict[int, str], jobs: dict[str, str]) -> CatalogStatus:
        """This status with the given not-done partitions shown as ``running`` or ``queued``."""
        parts = {k: list(v) for k, v in self.partitions.items()}
        objs = dict(self.objects)
        per_pixel = self._objects_per_pixel()
        for pixel, kind in task_state.items():
            for old in ("pending", "failed", "damaged"):
                if pixel in parts.get(old, []):
                    parts[old].remove(pixel)
                    parts.setdefault(kind, []).append(pixel)
                    n = per_pixel.get(pixel, 0)
                    objs[old] = objs.get(old, 0) - n
                    objs[kind] = objs.get(kind, 0) + n
        return replace(self, partitions=parts, objects=objs, jobs=jobs)

    def _objects_per_pixel(self) -> dict[int, int]:
        run = state.read_run_state(self.catalog)
        return {p: n for o, p, n in run.plan or () if o == self.partition_order and n >= 0}

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON values (``galspec status --json``)."""
        planned_pending = self.count("pending") if self.planned is not None else None
        return {
            "complete": self.complete,
            "partition_order": self.partition_order,
            "planned": self.planned,
            **{kind: self.count(kind) for kind in STATES if kind != "pending"},
            "pending": planned_pending,
            "objects_done": self.objects.get("done", 0),
            "objects_planned": self.objects_planned,
            "failures": self.failures,
            "jobs": self.jobs,
        }

    def render(self) -> tuple[Any, list[str]]:
        """A rich table of partitions by state, and one line per queued job and per failure."""
        from rich.table import Table

        if self.complete:
            state_text = "complete"
        elif paths.complete_file(self.catalog).exists() or self.count("damaged"):
            state_text = "damaged: rerun `galspec predict` with the same settings to repair it"
        else:
            state_text = "in progress"
        table = Table(title=f"{self.catalog}: {state_text}")
        columns = (("partitions", "left"), ("count", "right"), ("objects", "right"), ("Npix", "left"))
        for name, justify in columns:
            table.add_column(name, justify=justify)
        for kind in STATES:
            pix = sorted(self.partitions.get(kind, []))
            if not pix and kind in ("running", "queued", "damaged"):
                continue
            shown = ",".join(str(p) for p in pix[:8]) + (",..." if len(pix) > 8 else "")
            count = str(len(pix)) if kind != "pending" or self.planned is not None else "?"
            table.add_row(kind, count, str(self.objects.get(kind, 0)), shown)
        lines = [f"job {job}: {s}" for job, s in sorted(self.jobs.items())]
        damaged = set(self.partitions.get("damaged", []))
        lines += [f"{'damaged' if int(name.rsplit('=', 1)[1]) in damaged else 'failed'} {name}: {error}"
                  for name, error in self.failures.items()]
        return table, lines


def catalog_status(path: str | Path) -> CatalogStatus:
    """Progress of a catalog from its run state, done markers and partition files, every file
    re-hashed against its marker: a catalog is complete only when it is whole."""
    path = Path(path)
    run = state.read_run_state(path)
    planned = run.planned()
    expected = {(o, p): n for o, p, n in run.plan or ()}
    pixels = planned if planned is not None else state.list_markers(path, paths.DONE_DIR)
    failed_msgs = state.read_failed(path)
    parts: dict[str, list[int]] = {}
    objs: dict[str, int] = {}
    damage: dict[tuple[int, int], str] = {}
    for o, p in pixels:
        marker = state.read_done(path, o, p)
        why = state.check_partition(path, o, p, checksum=True)
        if why is None and marker is not None:
            kind, n = "done", marker.n_rows
        else:
            n = max(expected.get((o, p), 0), 0)
            kind = "failed" if (o, p) in failed_msgs else "pending"
            if marker is not None and paths.work_file(path, o, p).exists():
                kind, damage[(o, p)] = "damaged", why
        parts.setdefault(kind, []).append(p)
        objs[kind] = objs.get(kind, 0) + n
    done = {(run.partition_order, p) for p in parts.get("done", [])}
    failures = {f"Norder={o} Npix={p}": msg
                for (o, p), msg in sorted({**failed_msgs, **damage}.items()) if (o, p) not in done}
    objects_planned = None
    if run.plan is not None and all(n >= 0 for *_, n in run.plan):
        objects_planned = sum(n for *_, n in run.plan)
    complete = (paths.complete_file(path).exists() and not any(parts.get(k) for k in STATES if k != "done")
                and not publish.check_published(path, publish.read_manifest(path)))
    return CatalogStatus(path, complete, run.partition_order, parts, objs,
                         None if planned is None else len(planned), objects_planned, failures)


def verify_catalog(path: str | Path) -> list[str]:
    """Every problem of a catalog, one line each: a planned partition that is missing, unfinished
    or damaged (its bytes differ from the sha256 in its done marker), a finished catalog whose
    published files are missing or differ from what finalize published, or a damaged derived
    extension. Empty when the catalog is whole."""
    path = Path(path)
    st = catalog_status(path)
    order = st.partition_order
    problems = []
    for kind in ("damaged", "failed", "pending"):
        for pixel in sorted(st.partitions.get(kind, [])):
            why = st.failures.get(f"Norder={order} Npix={pixel}") or state.check_partition(path, order, pixel)
            problems.append(f"{kind} Norder={order} Npix={pixel}: {why}")
    if not problems:
        if not paths.complete_file(path).exists():
            problems.append(f"not finished: every partition is written, but {paths.complete_file(path)} is "
                            "not (run `galspec finalize`, or rerun `galspec predict`)")
        else:
            problems += publish.check_published(path, publish.read_manifest(path))
        try:
            state.read_schema(path)
        except GalspecError as exc:
            problems.append(first_line(exc))
    damage = check_extension(path)
    if damage is not None:
        problems.append(f"{damage} (rerun `galspec decode --write-back --overwrite`)")
    return problems
