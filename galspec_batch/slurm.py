"""SLURM submission: a job array over sky partitions (plus a dependent finalize job), or one
elastic Dask cluster of SLURM jobs (dask-jobqueue), and the status of a submitted catalog.

The job scripts are visible templates in the top-level ``slurm/`` folder (``string.Template``:
``${name}`` placeholders, ``$$`` for a literal ``$``); site settings (account, qos, modules,
extra ``#SBATCH`` lines, throughput) come from a small TOML file, see ``slurm/site.example.toml``.

Each submission is recorded inside the catalog, in ``<catalog>/_slurm/``: ``plan.json`` (the
partitions with their object counts, the options, and every submission with its job ids) and one
``submit-K/`` folder per submission (``tasks.json``: the partitions of each array task, the
rendered scripts). ``galspec status`` and ``galspec submit --resume`` read them back.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from galspec_batch.atomic import write_json
from galspec_batch.errors import GalspecError, InputError, MissingFileError, did_you_mean

TEMPLATE_DIR = Path(__file__).resolve().parent / "slurm_templates"  # linked from the top-level slurm/
ARRAY_TEMPLATE = "array.sbatch.template"
FINALIZE_TEMPLATE = "finalize.sbatch.template"
SITE_ENV = "GALSPEC_SLURM_SITE"
TEMPLATE_ENV = "GALSPEC_SLURM_TEMPLATES"
SUBMIT_DIR = "_slurm"
PLAN_FILE = "plan.json"
TASKS_FILE = "tasks.json"
LOG_DIR = "logs"
PLAN_FORMAT = "galspec-slurm-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Throughput:
    """Galaxies per second for one GPU and for one CPU core, and a fixed start-up time per task.

    ``cpu_core``: xresnet18, 64x64 px, 32 MC samples, eager, measured at 41/s on the 2-core dev
    machine; ``gpu`` is a placeholder until measured on a GPU (see slurm/README.md)."""

    gpu: float = 2000.0
    cpu_core: float = 40.0
    startup_s: float = 60.0


@dataclass(frozen=True)
class SiteConfig:
    """A site's settings (see ``slurm/site.example.toml``); command-line options override them."""

    account: str | None = None
    qos: str | None = None
    partition: str | None = None
    time: str = "01:00:00"
    finalize_time: str = "00:30:00"
    cpus_per_task: int = 1
    mem: str | None = None
    gpus_per_job: int = 0
    gres_name: str = "gpu"
    max_parallel: int = 0
    modules: tuple[str, ...] = ()
    setup: str = ""
    python: str = sys.executable
    extra_sbatch: tuple[str, ...] = ()
    dask_interface: str | None = None
    template: str | None = None
    finalize_template: str | None = None
    throughput: Throughput = field(default_factory=Throughput)

    @classmethod
    def from_dict(cls, d: dict, source: str = "site settings") -> SiteConfig:
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise InputError(f"{source}: unknown key {key!r}.{did_you_mean(key, names)}")
        d = dict(d)
        if "throughput" in d:
            tp_names = [f.name for f in fields(Throughput)]
            for key in d["throughput"]:
                if key not in tp_names:
                    raise InputError(f"{source}: unknown key throughput.{key}.{did_you_mean(key, tp_names)}")
            d["throughput"] = Throughput(**{k: float(v) for k, v in d["throughput"].items()})
        for key in ("modules", "extra_sbatch"):
            if key in d:
                if isinstance(d[key], str) or not isinstance(d[key], list):
                    raise InputError(f"{source}: {key} must be a list of strings, got {d[key]!r}")
                d[key] = tuple(str(x) for x in d[key])
        return cls(**d)


def load_site(path: str | Path | None = None) -> SiteConfig:
    """Site settings from ``path``, else from ``$GALSPEC_SLURM_SITE``, else the defaults."""
    path = path or os.environ.get(SITE_ENV)
    if not path:
        return SiteConfig()
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"site settings file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"site settings file {path} is not valid TOML: {exc}") from None
    return SiteConfig.from_dict(data, source=str(path))


# -- job scripts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything a job array and its finalize job need; ``render_*`` turn it into scripts."""

    catalog: Path
    store: Path
    checkpoint: Path
    n_tasks: int
    plan_file: Path
    region: str | None = None
    job_name: str = "galspec"
    site: SiteConfig = field(default_factory=SiteConfig)
    predict_options: tuple[str, ...] = ()

    @property
    def log_dir(self) -> Path:
        return self.catalog / SUBMIT_DIR / LOG_DIR


def _template(name: str, override: str | None) -> string.Template:
    if override:
        path = Path(override)
    else:
        path = Path(os.environ.get(TEMPLATE_ENV) or TEMPLATE_DIR) / name
    if not path.is_file():
        raise MissingFileError(
            f"SLURM job template {path} does not exist; set `template` in the site TOML or "
            f"${TEMPLATE_ENV} to the folder holding {name}"
        )
    return string.Template(path.read_text())


def _substitute(template: string.Template, values: dict, name: str) -> str:
    try:
        return template.substitute(values)
    except KeyError as exc:
        raise InputError(
            f"job template {name} uses an unknown placeholder ${{{exc.args[0]}}}; known: "
            f"{', '.join(sorted(values))} (write $$ for a literal $)"
        ) from None
    except ValueError as exc:
        raise InputError(f"job template {name}: {exc} (write $$ for a literal $)") from None


def _common_lines(site: SiteConfig) -> list[str]:
    lines = []
    for key, value in (("account", site.account), ("qos", site.qos), ("partition", site.partition)):
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    lines += [f"#SBATCH {line.strip()}" for line in site.extra_sbatch]
    return lines


def _values(spec: JobSpec) -> dict:
    site = spec.site
    array_lines = _common_lines(site)
    if site.mem:
        array_lines.append(f"#SBATCH --mem={site.mem}")
    if site.gpus_per_job:
        array_lines.append(f"#SBATCH --gres={site.gres_name}:{site.gpus_per_job}")
    q = shlex.quote
    options = list(spec.predict_options)
    if spec.region is not None:
        options += ["--region", spec.region]
    return {
        "job_name": spec.job_name,
        "last_task": spec.n_tasks - 1,
        "array_throttle": f"%{site.max_parallel}" if site.max_parallel else "",
        "log_dir": str(spec.log_dir),  # inside double quotes in #SBATCH lines (not shell-parsed)
        "time": site.time,
        "finalize_time": site.finalize_time,
        "cpus_per_task": site.cpus_per_task,
        "sbatch_lines": "\n".join(array_lines),
        "finalize_sbatch_lines": "\n".join(_common_lines(site)),
        "module_lines": "\n".join(f"module load {m}" for m in site.modules),
        "setup": site.setup,
        "python": site.python,
        "store": q(str(spec.store)),
        "checkpoint": q(str(spec.checkpoint)),
        "catalog": q(str(spec.catalog)),
        "plan_file": q(str(spec.plan_file)),
        "task_cluster": "cuda" if site.gpus_per_job > 1 else "none",
        "device": "cuda" if site.gpus_per_job else "cpu",
        "predict_options": " ".join(q(o) for o in options),
    }


def render_array_script(spec: JobSpec) -> str:
    """The job-array script for ``spec``, from the site's or the packaged template."""
    if spec.n_tasks < 1:
        raise InputError(f"a job array needs at least one task, got {spec.n_tasks}")
    return _substitute(_template(ARRAY_TEMPLATE, spec.site.template), _values(spec), ARRAY_TEMPLATE)


def render_finalize_script(spec: JobSpec) -> str:
    """The script of the job that finalizes the catalog after the array."""
    return _substitute(
        _template(FINALIZE_TEMPLATE, spec.site.finalize_template), _values(spec), FINALIZE_TEMPLATE
    )


# -- walltime ----------------------------------------------------------------------------------


def parse_walltime(text: str) -> int:
    """Seconds in a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    text = str(text).strip()
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        d = int(days)
    except ValueError:
        raise InputError(f"bad walltime {text!r}: expected e.g. 30, 01:30:00 or 1-12:00:00") from None
    if "-" in text:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        raise InputError(f"bad walltime {text!r}: expected e.g. 30, 01:30:00 or 1-12:00:00")
    total = ((d * 24 + h) * 60 + m) * 60 + s
    if total <= 0 or min(d, h, m, s) < 0:
        raise InputError(f"bad walltime {text!r}: must be positive")
    return total


def format_seconds(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def estimate_seconds(n_objects: int, site: SiteConfig) -> float:
    """Estimated seconds for one task to predict ``n_objects`` (start-up included)."""
    if site.gpus_per_job:
        rate = site.throughput.gpu * site.gpus_per_job
    else:
        rate = site.throughput.cpu_core * site.cpus_per_task
    return site.throughput.startup_s + n_objects / rate


def check_walltime(counts: dict[int, int], site: SiteConfig, order: int) -> None:
    """Refuse a walltime in which the largest partition cannot be predicted."""
    pixel, n = max(counts.items(), key=lambda kv: kv[1])
    need = estimate_seconds(n, site)
    limit = parse_walltime(site.time)
    if need > limit:
        per = f"{site.gpus_per_job} GPU(s)" if site.gpus_per_job else f"{site.cpus_per_task} CPU core(s)"
        raise InputError(
            f"walltime {site.time} is too short: partition Norder={order}/Npix={pixel} ({n} objects) needs "
            f"about {format_seconds(need)} on {per} (throughput in the site TOML); raise --time"
        )


# -- the plan ----------------------------------------------------------------------------------


def balance(counts: dict[int, int], jobs: int) -> list[list[int]]:
    """Split partitions into at most ``jobs`` tasks of near-equal object count (largest first)."""
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    n_tasks = min(jobs, len(counts))
    loads = [0] * n_tasks
    tasks: list[list[int]] = [[] for _ in range(n_tasks)]
    for pixel, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        i = min(range(n_tasks), key=lambda k: (loads[k], k))
        tasks[i].append(pixel)
        loads[i] += n
    return [sorted(t) for t in tasks]


def plan_partitions(store, region=None, jobs: int = 1, partitions=None) -> list[list[int]]:
    """The partitions of ``store`` that hold objects of ``region``, split into ``jobs`` tasks
    balanced by object count in the region."""
    from galspec_batch.regions import select_partitions

    counts = {p.pixel: n for p, n in select_partitions(store, region, partitions)}
    return balance(counts, jobs)


def task_partitions(plan_file: str | Path, task_index: int) -> list[int]:
    """The partitions of one array task, from a submission's ``tasks.json``."""
    plan_file = Path(plan_file)
    if not plan_file.is_file():
        raise MissingFileError(f"task plan {plan_file} does not exist")
    try:
        tasks = json.loads(plan_file.read_text())["tasks"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{plan_file} is not a galspec task plan ({exc})") from None
    if not 0 <= int(task_index) < len(tasks):
        raise InputError(f"task index {task_index} is outside 0..{len(tasks) - 1} of {plan_file}")
    return [int(p) for p in tasks[int(task_index)]]


def submit_dir(catalog: str | Path) -> Path:
    return Path(catalog) / SUBMIT_DIR


def read_plan(catalog: str | Path) -> dict:
    """The submission record of a catalog (``<catalog>/_slurm/plan.json``)."""
    f = submit_dir(catalog) / PLAN_FILE
    if not f.is_file():
        raise MissingFileError(f"{catalog} has no SLURM submission record ({f} is missing)")
    try:
        plan = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{f} is not valid JSON: {exc}") from None
    if plan.get("format") != PLAN_FORMAT or plan.get("version") != PLAN_VERSION:
        raise InputError(f"{f} is not a version-{PLAN_VERSION} galspec submission record")
    return plan


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- running SLURM commands --------------------------------------------------------------------


class SlurmError(GalspecError, RuntimeError):
    """A SLURM command failed; the message quotes SLURM's own words."""


def run_slurm(args: list[str], what: str) -> str:
    """Run a SLURM client command; its stdout, or SlurmError with its stderr in one line."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{what} failed: {args[0]} is not on PATH (is this a SLURM login node?)")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what} failed: {args[0]} did not answer in 120 s") from None
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


def replace_site(site: SiteConfig, **overrides) -> SiteConfig:
    """``site`` with the given (non-None) command-line overrides."""
    return replace(site, **{k: v for k, v in overrides.items() if v is not None})


def site_dict(site: SiteConfig) -> dict:
    return asdict(site)


def recorded_site(plan: dict) -> SiteConfig:
    """The site settings a catalog was first submitted with."""
    return SiteConfig.from_dict(plan["site"], source="the submission record")


# -- submitting --------------------------------------------------------------------------------


@dataclass
class Submission:
    """A job array over sky partitions: the plan, the scripts and (once submitted) the job ids."""

    catalog: Path
    partition_order: int
    counts: dict[int, int]
    tasks: list[list[int]]
    array_script: str | None
    finalize_script: str
    number: int = 0
    array_job_id: str | None = None
    finalize_job_id: str | None = None
    estimate_s: list[float] = field(default_factory=list)

    def describe(self) -> str:
        """The partition plan, one line per task."""
        total = sum(self.counts.values())
        lines = [
            f"# plan: {total} objects in {len(self.counts)} partitions (order {self.partition_order}) "
            f"-> {len(self.tasks)} array tasks"
        ]
        for i, pixels in enumerate(self.tasks):
            n = sum(self.counts[p] for p in pixels)
            est = f", ~{format_seconds(self.estimate_s[i])}" if self.estimate_s else ""
            lines.append(f"# task {i}: {n} objects{est}: Npix={','.join(str(p) for p in pixels)}")
        return "\n".join(lines)


def _options(mc_samples: int, engine: str, batch_size: int, seed: int) -> dict:
    return {"mc_samples": mc_samples, "engine": engine, "batch_size": batch_size, "seed": seed}


def _predict_args(options: dict, selected: list[int] | None) -> tuple[str, ...]:
    """Options of ``galspec predict`` in every task; ``--partitions`` (the user's selection, not the
    task's share) makes each task plan the same catalog as the submission."""
    args = (
        "--mc-samples", str(options["mc_samples"]), "--engine", str(options["engine"]),
        "--batch-size", str(options["batch_size"]), "--seed", str(options["seed"]),
    )  # fmt: skip
    return args + (("--partitions", ",".join(str(p) for p in selected)) if selected else ())


def _region_text(region) -> str | None:
    from galspec_batch.regions import MocRegion, parse_region

    if region is None:
        return None
    region = parse_region(region)
    if isinstance(region, MocRegion):  # jobs may start in another directory
        return f"moc:{region.path.resolve()}"
    return str(region)


def _new_plan(store, checkpoint, catalog, region, counts, order, options, site, selected=None) -> dict:
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "catalog": str(catalog),
        "store": str(store),
        "checkpoint": str(checkpoint),
        "region": region,
        "selected": selected,
        "partition_order": order,
        "partitions": {str(p): n for p, n in sorted(counts.items())},
        "options": options,
        "site": site_dict(site),
        "submissions": [],
    }


def _prepare(
    plan: dict, pixels: dict[int, int], jobs: int | None, site: SiteConfig, job_name: str
) -> Submission:
    """Render the scripts of the next submission of ``plan`` over ``pixels``."""
    catalog = Path(plan["catalog"])
    number = len(plan["submissions"])
    tasks = balance(pixels, jobs or len(pixels)) if pixels else []
    spec = JobSpec(
        catalog=catalog,
        store=Path(plan["store"]),
        checkpoint=Path(plan["checkpoint"]),
        n_tasks=max(len(tasks), 1),
        plan_file=submit_dir(catalog) / f"submit-{number}" / TASKS_FILE,
        region=plan["region"],
        job_name=job_name,
        site=site,
        predict_options=_predict_args(plan["options"], plan["selected"]),
    )
    if pixels:
        check_walltime(pixels, site, plan["partition_order"])
    return Submission(
        catalog=catalog,
        partition_order=plan["partition_order"],
        counts=dict(pixels),
        tasks=tasks,
        array_script=render_array_script(spec) if tasks else None,
        finalize_script=render_finalize_script(spec),
        number=number,
        estimate_s=[estimate_seconds(sum(pixels[p] for p in t), site) for t in tasks],
    )


def _submit(plan: dict, sub: Submission, mode: str = "array") -> Submission:
    """Write the submission's files, sbatch the array and the finalize job, record the job ids.

    On any failure the jobs already submitted are cancelled and the submission's files removed.
    """
    folder = submit_dir(sub.catalog) / f"submit-{sub.number}"
    if folder.exists():
        shutil.rmtree(folder)  # left by a submission that failed before it was recorded
    folder.mkdir(parents=True)
    (submit_dir(sub.catalog) / LOG_DIR).mkdir(exist_ok=True)
    write_json(folder / TASKS_FILE, {"tasks": sub.tasks})
    (folder / FINALIZE_TEMPLATE.removesuffix(".template")).write_text(sub.finalize_script)
    submitted: list[str] = []
    try:
        dependency: tuple[str, ...] = ()
        if sub.array_script is not None:
            script = folder / ARRAY_TEMPLATE.removesuffix(".template")
            script.write_text(sub.array_script)
            sub.array_job_id = sbatch(script)
            submitted.append(sub.array_job_id)
            dependency = (f"--dependency=afterany:{sub.array_job_id}", "--kill-on-invalid-dep=yes")
        sub.finalize_job_id = sbatch(folder / FINALIZE_TEMPLATE.removesuffix(".template"), *dependency)
        submitted.append(sub.finalize_job_id)
        record = {
            "number": sub.number,
            "mode": mode,
            "submitted": now(),
            "tasks": sub.tasks,
            "array_job_id": sub.array_job_id,
            "finalize_job_id": sub.finalize_job_id,
        }
        write_json(
            submit_dir(sub.catalog) / PLAN_FILE, {**plan, "submissions": [*plan["submissions"], record]}
        )
    except BaseException:
        scancel(submitted)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return sub


def _begin_catalog(store, checkpoint, catalog, region, counts, order, options) -> None:
    """Begin (or reopen) the catalog with its full plan before any task runs, so that the array
    tasks, which run concurrently, only ever resume it (without writing its run state)."""
    from galspec_batch.predict.runner import begin_catalog

    begun = begin_catalog(store, checkpoint, catalog, region=region, partitions=sorted(counts),
                          settings={**options, "submitted_by": "galspec submit"})
    if begun.plan[0][0].order != order or {p.pixel: n for p, n in begun.plan} != counts:
        raise SlurmError(f"the plan of {catalog} changed while it was submitted; submit again")


def submit_array(
    store: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    region=None,
    partitions=None,
    jobs: int | None = None,
    site: SiteConfig | None = None,
    job_name: str = "galspec",
    mc_samples: int = 32,
    engine: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    dry_run: bool = False,
) -> Submission:
    """Predict the partitions of ``store`` overlapping ``region`` with a SLURM job array.

    ``dry_run`` renders the scripts and the plan and submits nothing, writes nothing.
    """
    from galspec_batch.regions import parse_partitions, select_partitions
    from galspec_batch.store import open_store

    site = site or load_site()
    store_path, catalog = Path(store).resolve(), Path(out).resolve()
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.exists():
        raise MissingFileError(f"checkpoint {checkpoint} does not exist")
    if (submit_dir(catalog) / PLAN_FILE).exists() and not dry_run:
        raise InputError(f"{catalog} was already submitted; use `galspec submit --resume {catalog}`")
    opened = open_store(store_path)
    counts = {p.pixel: n for p, n in select_partitions(opened, region, partitions)}
    options = _options(mc_samples, engine, batch_size, seed)
    selected = None if partitions is None else parse_partitions(partitions)
    plan = _new_plan(
        store_path, checkpoint, catalog, _region_text(region), counts, opened.partition_order, options, site,
        selected,
    )  # fmt: skip
    sub = _prepare(plan, counts, jobs, site, job_name)
    if dry_run:
        return sub
    _begin_catalog(store_path, checkpoint, catalog, plan["region"], counts, opened.partition_order, options)
    return _submit(plan, sub)


def _in_queue(plan: dict) -> dict[str, str]:
    ids = [j for s in plan["submissions"] for j in (s.get("array_job_id"), s.get("finalize_job_id")) if j]
    return queued_jobs(ids)


def pending_partitions(catalog: str | Path, plan: dict) -> dict[int, int]:
    """Planned partitions of ``catalog`` that are not done, with their object counts."""
    from galspec_batch.catalog.state import check_partition

    order = plan["partition_order"]
    return {
        int(p): n
        for p, n in plan["partitions"].items()
        if check_partition(catalog, order, int(p)) is not None
    }


def resume_array(
    catalog: str | Path,
    *,
    jobs: int | None = None,
    site: SiteConfig | None = None,
    job_name: str = "galspec",
    dry_run: bool = False,
) -> Submission | None:
    """Submit what is left of a half-done catalog (a new array and finalize job); None when the
    catalog is already complete."""
    from galspec_batch.catalog import paths

    catalog = Path(catalog).resolve()
    plan = read_plan(catalog)
    if paths.complete_file(catalog).exists():
        return None
    active = {j: s for j, s in _in_queue(plan).items() if s not in ("COMPLETING",)}
    if active:
        listed = ", ".join(f"{j} {s}" for j, s in sorted(active.items())[:4])
        raise InputError(
            f"catalog {catalog} still has jobs in the queue ({listed}); wait for them or scancel them first"
        )
    site = site or recorded_site(plan)
    sub = _prepare(plan, pending_partitions(catalog, plan), jobs, site, job_name)
    if dry_run:
        return sub
    return _submit(plan, sub)


# -- status ------------------------------------------------------------------------------------


@dataclass
class SlurmStatus:
    """Where a catalog stands: partitions by state, and its jobs still in the queue."""

    catalog: Path
    summary: dict
    partitions: dict[str, list[int]] = field(default_factory=dict)  # state -> pixels
    objects: dict[str, int] = field(default_factory=dict)  # state -> object count (when planned)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> SLURM state
    failures: dict[str, str] = field(default_factory=dict)


def slurm_status(catalog: str | Path) -> SlurmStatus:
    """Partitions done, running, queued, pending and failed, from the catalog's own state, its
    submission record (if it was submitted) and ``squeue`` (if available)."""
    from galspec_batch.catalog import catalog_status, state
    from galspec_batch.catalog import paths as cpaths

    catalog = Path(catalog)
    summary = catalog_status(catalog)
    plan_file = submit_dir(catalog) / PLAN_FILE
    status = SlurmStatus(catalog, summary, failures=summary["failures"])
    if not plan_file.exists():
        return status
    plan = read_plan(catalog)
    order = plan["partition_order"]
    failed = {p for o, p in state.list_markers(catalog, cpaths.FAILED_DIR) if o == order}
    status.jobs = _in_queue(plan)
    task_state: dict[int, str] = {}
    if plan["submissions"]:
        last = plan["submissions"][-1]
        for job, st in status.jobs.items():
            head, _, index = job.partition("_")
            if head == last.get("array_job_id") and index.isdigit():
                for pixel in last["tasks"][int(index)]:
                    task_state[pixel] = "running" if st in ("RUNNING", "COMPLETING") else "queued"
    for key, n in plan["partitions"].items():
        pixel = int(key)
        if state.check_partition(catalog, order, pixel) is None:
            kind = "done"
        elif pixel in task_state:
            kind = task_state[pixel]
        elif pixel in failed:
            kind = "failed"
        else:
            kind = "pending"
        status.partitions.setdefault(kind, []).append(pixel)
        status.objects[kind] = status.objects.get(kind, 0) + n
    return status


# -- dask mode ---------------------------------------------------------------------------------


def dask_cluster_kwargs(site: SiteConfig, job_name: str, log_dir: Path | None) -> dict:
    """SLURMCluster arguments for ``site``: one single-process worker per SLURM job."""
    extra = [f"--qos={site.qos}"] if site.qos else []
    if site.gpus_per_job:
        extra.append(f"--gres={site.gres_name}:{site.gpus_per_job}")
    extra += [line.strip() for line in site.extra_sbatch]
    kwargs = {
        "cores": site.cpus_per_task,
        "processes": 1,
        "memory": site.mem or f"{4 * site.cpus_per_task}GB",
        "walltime": site.time,
        "queue": site.partition,
        "account": site.account,
        "job_name": job_name,
        "python": site.python,
        "job_extra_directives": extra,
        "job_script_prologue": [f"module load {m}" for m in site.modules]
        + ([site.setup] if site.setup else []),
    }
    if site.dask_interface:
        kwargs["interface"] = site.dask_interface
    if log_dir is not None:
        kwargs["log_directory"] = str(log_dir)
    return kwargs


def dask_job_script(site: SiteConfig, job_name: str = "galspec-dask", log_dir: Path | None = None) -> str:
    """The worker job script dask-jobqueue would submit (scheduler address left symbolic)."""
    from dask_jobqueue.slurm import SLURMJob

    job = SLURMJob(
        scheduler="tcp://SCHEDULER:8786", name="worker", **dask_cluster_kwargs(site, job_name, log_dir)
    )
    return job.job_script()


def submit_dask(
    store: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    region=None,
    partitions=None,
    jobs: int = 1,
    site: SiteConfig | None = None,
    job_name: str = "galspec-dask",
    mc_samples: int = 32,
    engine: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
):
    """Predict with an elastic Dask cluster of ``jobs`` SLURM jobs driven from this host; returns
    the runner's summary. The catalog is finalized when every partition is done."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from galspec_batch.predict import predict_catalog
    from galspec_batch.regions import select_partitions
    from galspec_batch.store import open_store

    site = site or load_site()
    catalog = Path(out).resolve()
    check_walltime(
        {p.pixel: n for p, n in select_partitions(open_store(store), region, partitions)},
        site,
        open_store(store).partition_order,
    )
    log_dir = Path(out).resolve().parent / f"{catalog.name}.dask-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with SLURMCluster(**dask_cluster_kwargs(site, job_name, log_dir)) as cluster:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            return predict_catalog(
                store, checkpoint, out, region=region, partitions=partitions, cluster=client,
                mc_samples=mc_samples, engine=engine, batch_size=batch_size, seed=seed,
                progress=progress,
            )  # fmt: skip
