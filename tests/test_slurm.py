"""SLURM submission: rendered scripts, plan balance, walltime and submission errors (fast tier),
and end-to-end runs on a real single-node SLURM cluster (marker ``slurm``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from galspec_batch import hpc
from galspec_batch.catalog import paths
from galspec_batch.cli import main
from galspec_batch.errors import InputError, SlurmError
from galspec_batch.hpc import array, commands, scripts
from galspec_batch.hpc import plan as hplan
from galspec_batch.hpc import site as hsite
from galspec_batch.options import PredictOptions
from galspec_batch.store import create_store, open_store

REPO = Path(__file__).resolve().parents[1]


# -- fixtures ----------------------------------------------------------------------------------


def _make_store(path: Path, n: int = 200, size: int = 16, seed: int = 0) -> Path:
    """A mock store of ``n`` objects in a few degrees around (150, 2), partition order 4."""
    rng = np.random.default_rng(seed)
    ra = 150 + rng.uniform(-6, 6, n)
    dec = 2 + rng.uniform(-6, 6, n)
    with create_store(path, image_shape=(size, size), partition_order=4) as w:
        w.append(np.arange(1000, 1000 + n), ra, dec, rng.normal(size=(n, 5, size, size)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _make_store(tmp_path_factory.mktemp("slurm") / "store.zarr")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """Only its existence matters before submission."""
    path = tmp_path / "ckpt"
    path.mkdir()
    return path


def _spec(tmp_path: Path, **site) -> scripts.JobSpec:
    config = hsite.SiteConfig(**site)
    return scripts.JobSpec(
        catalog=tmp_path / "cat dir",
        store=tmp_path / "store.zarr",
        checkpoint=tmp_path / "ckpt",
        n_tasks=7,
        tasks_file=paths.tasks_file(tmp_path / "cat dir", 0),
        options=PredictOptions(mc_samples=4, region="cone:150,2,3", device=config.device),
        site=config,
    )


def _sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# -- fast tier: rendering ----------------------------------------------------------------------


def test_array_script_has_the_sbatch_lines(tmp_path):
    spec = _spec(
        tmp_path, account="astro", qos="long", partition="gpu", time="02:30:00", cpus_per_task=8, mem="32G",
        gpus_per_job=2, max_parallel=3, modules=("cuda/12.4", "gcc"), setup="source /opt/venv/bin/activate",
        python="/opt/venv/bin/python", extra_sbatch=("--constraint=a100",),
    )  # fmt: skip
    script = scripts.render_array_script(spec)
    lines = _sbatch_lines(script)
    for expected in (
        "#SBATCH --job-name=galspec",
        "#SBATCH --array=0-6%3",
        "#SBATCH --time=02:30:00",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --requeue",
        "#SBATCH --account=astro",
        "#SBATCH --qos=long",
        "#SBATCH --partition=gpu",
        "#SBATCH --constraint=a100",
        "#SBATCH --mem=32G",
        "#SBATCH --gres=gpu:2",
    ):
        assert expected in lines, expected
    assert f'#SBATCH --output="{tmp_path}/cat dir/_slurm/logs/%x-%A_%a.out"' in lines
    assert "module load cuda/12.4\nmodule load gcc" in script
    assert "source /opt/venv/bin/activate" in script
    command = script[script.index("exec ") :]
    assert "/opt/venv/bin/python -m galspec_batch.cli predict" in command
    assert f"--out '{tmp_path}/cat dir'" in command
    assert '--task-index "${SLURM_ARRAY_TASK_ID}"' in command  # $$ in the template is a literal $
    assert ("--cluster cuda --no-finalize --mc-samples 4 --engine auto --batch-size 256 --seed 0 "
            "--device cuda --precision fp16 --region cone:150,2,3") in command
    # the SBATCH block comes before any command, or sbatch ignores it
    first_command = min(i for i, line in enumerate(script.splitlines()) if line.startswith("set -e"))
    assert all(script.splitlines().index(line) < first_command for line in lines)


def test_cpu_script_and_finalize_script(tmp_path):
    spec = _spec(tmp_path)
    script = scripts.render_array_script(spec)
    lines = _sbatch_lines(script)
    assert "#SBATCH --array=0-6" in lines
    assert not any("--gres" in line or "--mem" in line or "--account" in line for line in lines)
    assert "--cluster none" in script
    assert f"exec {sys.executable} -m galspec_batch.cli predict" in script
    fin = scripts.render_finalize_script(spec)
    assert "#SBATCH --job-name=galspec-finalize" in _sbatch_lines(fin)
    assert "#SBATCH --time=00:30:00" in _sbatch_lines(fin)
    assert fin.rstrip().endswith(f"-m galspec_batch.cli finalize '{tmp_path}/cat dir'")


def test_site_template_override_and_bad_placeholder(tmp_path):
    custom = tmp_path / "site.template"
    custom.write_text("#!/bin/bash\n#SBATCH --array=0-${last_task}\necho $$HOME ${catalog}\n")
    out = scripts.render_array_script(_spec(tmp_path, template=str(custom)))
    assert out == f"#!/bin/bash\n#SBATCH --array=0-6\necho $HOME '{tmp_path}/cat dir'\n"
    custom.write_text("echo ${nosuch}\n")
    with pytest.raises(InputError, match=r"unknown placeholder \$\{nosuch\}"):
        scripts.render_array_script(_spec(tmp_path, template=str(custom)))


def test_site_toml(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(
        'account = "a1"\nmodules = ["cuda"]\nextra_sbatch = ["--exclusive"]\n[throughput]\ncpu_core = 5.0\n'
    )
    cfg = hsite.load_site(site)
    assert (cfg.account, cfg.modules, cfg.extra_sbatch, cfg.throughput.cpu_core) == (
        "a1", ("cuda",), ("--exclusive",), 5.0,
    )  # fmt: skip
    assert cfg.throughput.gpu == hsite.Throughput().gpu
    site.write_text('acount = "a1"\n')
    with pytest.raises(InputError, match="unknown key 'acount'. Did you mean 'account'"):
        hsite.load_site(site)
    example = hsite.load_site(REPO / "slurm" / "site.example.toml")
    assert example.gpus_per_job == 1 and example.modules == ("cuda/12.4",)


# -- fast tier: plan and walltime --------------------------------------------------------------


def test_balance_is_even_and_complete():
    rng = np.random.default_rng(1)
    counts = {
        int(p): int(n)
        for p, n in zip(rng.choice(5000, 60, replace=False), rng.integers(1, 500, 60), strict=True)
    }
    tasks = hplan.balance(counts, 8)
    assert sorted(p for t in tasks for p in t) == sorted(counts)
    loads = [sum(counts[p] for p in t) for t in tasks]
    assert max(loads) - min(loads) <= max(counts.values())
    assert max(loads) <= sum(counts.values()) / 8 + max(counts.values())
    assert hplan.balance({1: 5, 2: 5}, 10) == [[1], [2]]  # never more tasks than partitions
    with pytest.raises(InputError, match="--jobs must be at least 1"):
        hplan.balance(counts, 0)


def test_plan_partitions_by_region(store, checkpoint, tmp_path):
    s = open_store(store)
    plan = array.plan_submission(store, checkpoint, tmp_path / "c", PredictOptions(region="cone:150,2,4"),
                                 hsite.SiteConfig())
    tasks = hplan.balance(plan.partitions, 3)
    assert len(tasks) == 3
    from galspec_batch.regions import Cone

    inside = Cone(150, 2, 4).contains(s.ra, s.dec)
    from galspec_batch.sky import pixel_at_order

    assert sorted(p for t in tasks for p in t) == sorted(
        set(pixel_at_order(s.healpix_29[inside], 4).tolist())
    )


def test_task_share(tmp_path):
    f = hplan.TaskList(((1, 2), (3,))).write(tmp_path / "tasks.json")
    assert json.loads(f.read_text())["format"] == "galspec-slurm-tasks"
    assert hplan.task_share(f, 1) == [3]
    with pytest.raises(InputError, match=r"--task-index 2 is outside 0..1"):
        hplan.task_share(f, 2)


@pytest.mark.parametrize(
    "text, seconds",
    [("30", 1800), ("01:30", 90), ("02:00:00", 7200), ("1-12", 129600), ("1-00:00:10", 86410)],
)
def test_parse_walltime(text, seconds):
    assert hsite.parse_walltime(text) == seconds


def test_walltime_too_short_for_one_partition():
    site = hsite.SiteConfig(time="00:02:00", throughput=hsite.Throughput(cpu_core=10, startup_s=30))
    hsite.check_walltime({7: 900, 8: 100}, site, 4)  # 30 + 900/10 = 120 s fits
    with pytest.raises(InputError) as info:
        hsite.check_walltime({7: 901, 8: 100}, site, 4)
    assert str(info.value).startswith(
        "walltime 00:02:00 is too short: partition Norder=4/Npix=7 (901 objects)"
    )
    assert "\n" not in str(info.value)
    gpu = hsite.SiteConfig(time="00:02:00", gpus_per_job=2, throughput=hsite.Throughput(gpu=10, startup_s=30))
    hsite.check_walltime({7: 1800}, gpu, 4)  # 2 GPUs at 10/s each


# -- fast tier: CLI and submission errors, with stand-in SLURM commands ------------------------


def test_dry_run_prints_script_and_plan(store, checkpoint, tmp_path):
    out = tmp_path / "cat"
    result = CliRunner().invoke(main, [
        "submit", "--store", str(store), "--checkpoint", str(checkpoint), "--out", str(out),
        "--region", "cone:150,2,4", "--jobs", "2", "--time", "01:00:00", "--dry-run",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-1" in result.output
    assert "#SBATCH --time=01:00:00" in result.output
    assert "galspec_batch.cli finalize" in result.output
    s = open_store(store)
    from galspec_batch.regions import Cone

    n_in = int(Cone(150, 2, 4).contains(s.ra, s.dec).sum())
    assert f"# plan: {n_in} objects in" in result.output
    assert result.output.count("# task ") == 2
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["--region", "cone:300,-60,1"], "overlaps no data in store", 1),
        (["--partitions", "99999"], "unknown partition 99999 in store", 2),
        (["--region", "circle:1"], "accepted forms", 2),
        (["--time", "00:00:30"], "walltime 00:00:30 is too short", 2),
    ],
)
def test_bad_input_is_one_line(store, checkpoint, tmp_path, args, message, code):
    result = CliRunner().invoke(main, [
        "submit", "--store", str(store), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "c"), *args,
    ])  # fmt: skip
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error: ") and message in lines[0], result.output


def _fake_slurm(bin_dir: Path, sbatch_body: str) -> Path:
    """Stand-in sbatch/scancel that log their arguments to bin_dir/calls."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("sbatch", sbatch_body), ("scancel", "exit 0")):
        f = bin_dir / name
        f.write_text(f'#!/bin/bash\necho "{name} $*" >> {bin_dir}/calls\n{body}\n')
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return bin_dir / "calls"


def _plan(tmp_path, store, checkpoint) -> tuple[hplan.SubmissionPlan, array.Submission]:
    options = PredictOptions(mc_samples=4, batch_size=64)
    plan = array.plan_submission(store, checkpoint, tmp_path / "cat", options, hsite.SiteConfig())
    return plan, array._prepare(plan, plan.partitions, 2, "galspec")


def test_sbatch_failure_quotes_slurm_and_leaves_nothing(tmp_path, store, checkpoint, monkeypatch):
    calls = _fake_slurm(
        tmp_path / "bin",
        'echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination '
        'specified" >&2; exit 1',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    plan, sub = _plan(tmp_path, store, checkpoint)
    with pytest.raises(SlurmError) as info:
        array._submit(plan, sub)
    assert str(info.value) == (
        "sbatch failed: sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified"
    )
    assert not (tmp_path / "cat" / "_slurm" / "submit-0").exists()
    assert not (tmp_path / "cat" / "_slurm" / "plan.json").exists()
    assert "scancel" not in calls.read_text()


def test_finalize_failure_cancels_the_array(tmp_path, store, checkpoint, monkeypatch):
    # first sbatch (the array) succeeds with id 4242, the second (finalize) fails
    calls = _fake_slurm(
        tmp_path / "bin",
        f'if grep -q "^sbatch" {tmp_path}/bin/calls && [ $(grep -c "^sbatch" {tmp_path}/bin/calls) -gt 1 ]; '
        'then echo "sbatch: error: Job dependency problem" >&2; exit 1; fi; echo "4242;cluster"',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    plan, sub = _plan(tmp_path, store, checkpoint)
    with pytest.raises(SlurmError, match="^sbatch failed: sbatch: error: Job dependency problem$"):
        array._submit(plan, sub)
    log = calls.read_text().splitlines()
    assert log[1].startswith("sbatch --parsable --dependency=afterany:4242 --kill-on-invalid-dep=yes")
    assert log[-1] == "scancel 4242"
    assert not (tmp_path / "cat" / "_slurm" / "plan.json").exists()


def test_submit_records_the_plan(tmp_path, store, checkpoint, monkeypatch):
    _fake_slurm(tmp_path / "bin", 'n=$(grep -c "^sbatch" $(dirname $0)/calls); echo $((100 + n))')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    plan, sub = _plan(tmp_path, store, checkpoint)
    sub = array._submit(plan, sub)
    assert (sub.array_job_id, sub.finalize_job_id) == ("101", "102")
    record = hpc.read_plan(tmp_path / "cat")
    assert record.submissions[0].array_job_id == "101"
    assert [list(t) for t in record.submissions[0].tasks] == sub.tasks
    share = hpc.task_share(tmp_path / "cat" / "_slurm" / "submit-0" / "tasks.json", 1)
    assert share == sub.tasks[1]
    assert sum(record.partitions.values()) == 200
    assert record.options == plan.options and record.site == plan.site


# -- cluster tier ------------------------------------------------------------------------------


def _squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.strip()]


def _wait_until(predicate, timeout: float, what: str, step: float = 0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slurm
def test_trivial_job_array_runs_on_the_cluster(slurm_cluster, tmp_path):
    """The machinery alone: the packaged template shape with a stand-in command."""
    template = tmp_path / "array.template"
    template.write_text(
        "#!/bin/bash\n#SBATCH --job-name=${job_name}\n#SBATCH --array=0-${last_task}\n"
        "#SBATCH --output=${log_dir}/%x-%A_%a.out\n#SBATCH --time=${time}\n${sbatch_lines}\n"
        "sleep 2; echo task $${SLURM_ARRAY_TASK_ID} > ${catalog}/task-$${SLURM_ARRAY_TASK_ID}.txt\n"
    )
    spec = scripts.JobSpec(
        catalog=tmp_path, store=tmp_path, checkpoint=tmp_path, n_tasks=3, tasks_file=tmp_path / "x",
        job_name="galspec-trivial", site=hsite.SiteConfig(template=str(template), time="00:05:00"),
    )  # fmt: skip
    paths.log_dir(tmp_path).mkdir(parents=True)
    script = tmp_path / "array.sbatch"
    script.write_text(scripts.render_array_script(spec))
    job = commands.sbatch(script)
    assert job.isdigit()
    names = _wait_until(lambda: _squeue("-r", "-j", job, "-o", "%i %j"), 20, "the array in squeue")
    assert any(line.split()[1] == "galspec-trivial" for line in names)
    _wait_until(lambda: not _squeue("-j", job), 60, "the array to finish")
    assert sorted(f.read_text().strip() for f in tmp_path.glob("task-*.txt")) == [
        "task 0",
        "task 1",
        "task 2",
    ]


@pytest.mark.slurm
def test_sbatch_error_from_real_slurm(slurm_cluster, store, checkpoint, tmp_path, monkeypatch):
    plan, sub = _plan(tmp_path, store, checkpoint)
    sub.array_script = sub.array_script.replace("#SBATCH --nodes=1", "#SBATCH --partition=nosuchpartition")
    before = set(_squeue("-o", "%i"))
    with pytest.raises(SlurmError, match="^sbatch failed: sbatch: error: .*[Ii]nvalid partition"):
        array._submit(plan, sub)
    assert set(_squeue("-o", "%i")) == before


# -- cluster tier: end to end on a mock store --------------------------------------------------


@pytest.fixture(scope="module")
def e2e_inputs(tmp_path_factory):
    from conftest import make_tiny_checkpoint, make_tiny_store

    root = tmp_path_factory.mktemp("e2e")
    return make_tiny_store(root / "store.zarr", n=200), make_tiny_checkpoint(root / "ckpt")


def _catalog_ids(catalog: Path) -> np.ndarray:
    from galspec_batch.catalog.reader import read_catalog

    return np.sort(read_catalog(catalog, columns=["object_id"])["object_id"].to_numpy())


def _region_ids(store: Path, region: str | None) -> np.ndarray:
    from galspec_batch.regions import parse_region

    s = open_store(store)
    keep = np.ones(s.n_objects, bool) if region is None else parse_region(region).contains(s.ra, s.dec)
    return np.sort(s.object_id[keep])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "galspec_batch.cli", *args], capture_output=True, text=True, timeout=300
    )


def _submit_args(store, ckpt, out, *extra) -> list[str]:
    return ["submit", "--store", str(store), "--checkpoint", str(ckpt), "--out", str(out), "--mc-samples",
            "4", "--batch-size", "64", "--engine", "eager", "--time", "00:10:00", *extra]  # fmt: skip


def _job_ids(out: Path) -> list[str]:
    return hpc.read_plan(out).job_ids


@pytest.mark.slurm
def test_array_mode_end_to_end(slurm_cluster, e2e_inputs, tmp_path):
    store, ckpt = e2e_inputs
    out, region = tmp_path / "cat", "cone:153,0,2.5"
    done = _cli(*_submit_args(store, ckpt, out, "--region", region, "--jobs", "3"))
    assert done.returncode == 0, done.stderr
    array_id, finalize_id = _job_ids(out)
    seen = _wait_until(lambda: _squeue("-r", "-j", array_id, "-o", "%i %T"), 30, "the array in squeue")
    assert all(line.split()[0].startswith(f"{array_id}_") for line in seen)
    _wait_until(lambda: not _squeue("-j", f"{array_id},{finalize_id}"), 150, "the jobs to finish", 1.0)
    logs = "\n".join(f.read_text() for f in (out / "_slurm" / "logs").glob("*.out"))
    assert (out / "_state" / "complete.json").exists(), logs[-3000:]
    ids = _catalog_ids(out)
    assert np.array_equal(ids, _region_ids(store, region))  # every object of the region, exactly once
    status = _cli("status", str(out))
    assert status.returncode == 0 and "complete" in status.stdout, status.stdout + status.stderr


@pytest.mark.slurm
def test_dask_mode_end_to_end(slurm_cluster, e2e_inputs, tmp_path):
    store, ckpt = e2e_inputs
    site = tmp_path / "site.toml"
    site.write_text('dask_interface = "lo"\nmem = "3GB"\n')
    out, region = tmp_path / "cat", "box:151,155,-2,2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "galspec_batch.cli", *_submit_args(store, ckpt, out, "--region", region),
         "--mode", "dask", "--jobs", "2", "--site", str(site), "--job-name", "galspec-dask-test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        running = _wait_until(
            lambda: [line for line in _squeue("-n", "galspec-dask-test", "-o", "%i %T") if "RUNNING" in line],
            60, "dask worker jobs running in squeue",
        )  # fmt: skip
        assert running
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert np.array_equal(_catalog_ids(out), _region_ids(store, region))
    _wait_until(lambda: not _squeue("-n", "galspec-dask-test"), 60, "the worker jobs to leave the queue")


@pytest.mark.slurm
def test_cancelled_task_then_resume_loses_nothing(slurm_cluster, e2e_inputs, tmp_path):
    store, ckpt = e2e_inputs
    out = tmp_path / "cat"
    done = _cli(*_submit_args(store, ckpt, out, "--jobs", "4"))
    assert done.returncode == 0, done.stderr
    array_id, finalize_id = _job_ids(out)
    victim = f"{array_id}_1"
    _wait_until(
        lambda: any("RUNNING" in s for s in _squeue("-r", "-j", victim, "-o", "%T")), 60, "task 1 to run"
    )
    subprocess.run(["scancel", victim], check=True, timeout=30)
    _wait_until(lambda: not _squeue("-j", f"{array_id},{finalize_id}"), 150, "the jobs to finish", 1.0)
    assert not (out / "_state" / "complete.json").exists()  # finalize refused: task 1's share is missing
    st = hpc.status(out)
    first = hpc.read_plan(out).submissions[0].tasks
    assert set(st.partitions["pending"]) == set(first[1])
    assert "pending" in _cli("status", str(out)).stdout

    resumed = _cli("submit", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    record = hpc.read_plan(out).submissions[1]
    assert sorted(p for t in record.tasks for p in t) == sorted(first[1])  # only what was lost
    ids = _job_ids(out)[2:]
    _wait_until(lambda: not _squeue("-j", ",".join(ids)), 150, "the resumed jobs to finish", 1.0)
    assert (out / "_state" / "complete.json").exists()
    assert np.array_equal(_catalog_ids(out), _region_ids(store, None))  # nothing lost or duplicated
    again = _cli("submit", "--resume", str(out))
    assert again.returncode == 0 and "already complete" in again.stdout
