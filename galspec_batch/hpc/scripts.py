"""Job scripts: the visible templates in ``hpc/templates/`` (linked from the top-level ``slurm/``),
rendered with ``string.Template`` (``${name}`` placeholders, ``$$`` for a literal ``$``)."""

from __future__ import annotations

import os
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.catalog import paths
from galspec_batch.errors import InputError, MissingFileError
from galspec_batch.hpc.site import SiteConfig
from galspec_batch.options import PredictOptions

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_ENV = "GALSPEC_SLURM_TEMPLATES"
ARRAY_TEMPLATE = "array.sbatch.template"
FINALIZE_TEMPLATE = "finalize.sbatch.template"


def script_name(template: str) -> str:
    """The rendered script's file name: the template's without ``.template``."""
    return template.removesuffix(".template")


@dataclass(frozen=True)
class JobSpec:
    """Everything a job array and its finalize job need; ``render_*`` turn it into scripts."""

    catalog: Path
    store: Path
    checkpoint: Path
    n_tasks: int
    tasks_file: Path
    options: PredictOptions = field(default_factory=PredictOptions)
    job_name: str = D.JOB_NAME
    site: SiteConfig = field(default_factory=SiteConfig)


def _template(name: str, override: str | None) -> string.Template:
    path = Path(override) if override else Path(os.environ.get(TEMPLATE_ENV) or TEMPLATE_DIR) / name
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
    return {
        "job_name": spec.job_name,
        "last_task": spec.n_tasks - 1,
        "array_throttle": f"%{site.max_parallel}" if site.max_parallel else "",
        "log_dir": str(paths.log_dir(spec.catalog)),  # inside double quotes in #SBATCH lines
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
        "tasks_file": q(str(spec.tasks_file)),
        "task_cluster": "cuda" if site.gpus_per_job > 1 else "none",
        "predict_options": " ".join(q(o) for o in spec.options.to_args()),
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
