"""Shared fixtures: a tiny cutout store, an untrained checkpoint that fits it, a catalog predicted
from them, and the real single-node SLURM cluster (only where asked for)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galspec_batch import defaults as D
from galspec_batch.checkpoint import save_checkpoint
from galspec_batch.models import GalspecNet, create_model
from galspec_batch.options import PredictOptions
from galspec_batch.store import create_store

TINY_SIZE = 16


def make_tiny_store(path, n=240, seed=0, size=TINY_SIZE, ra0=150.0, width=6.0, codec=D.STORE_CODEC):
    """A store of ``n`` random cutouts over a ``width``-degree field (about 10 partitions at order 4)."""
    rng = np.random.default_rng(seed)
    ra = ra0 + rng.uniform(0, width, n)
    dec = rng.uniform(-width / 2, width / 2, n)
    images = rng.normal(0, 1, (n, 5, size, size)).astype(np.float32)
    c = slice(size // 2 - 2, size // 2 + 2)
    images[:, :, c, c] += rng.uniform(1, 20, (n, 5, 1, 1))
    images[3, 1, 0, :] = np.nan
    mask = np.ones((n, 5), bool)
    mask[5, 4] = False
    images[5, 4] = 0
    with create_store(path, image_shape=(size, size), partition_order=4, codec=codec) as w:
        w.append(np.arange(1000, 1000 + n), ra, dec, images, mask)
    return path


def make_tiny_checkpoint(path, model="simple-cnn", size=TINY_SIZE, dropout=0.2, seed=0, head="gaussian",
                         redshift=True):
    """An untrained checkpoint of 6 latents (and the redshift, with ``redshift``)."""
    torch.manual_seed(seed)
    n = 6 + redshift
    cnn = create_model(model, in_bands=5, n_out=n, dropout=dropout, head=head)
    net = GalspecNet(
        cnn,
        softening=torch.ones(5),
        mean=torch.zeros(5),
        std=torch.ones(5),
        target_mean=torch.tensor([*torch.linspace(-1, 1, 6).tolist(), 0.5][:n]),
        target_std=torch.tensor([*torch.linspace(0.5, 2, 6).tolist(), 0.05][:n]),
    ).eval()
    config = {
        "bands": list("grizy"),
        "image_size": [size, size],
        "pixel_scale": 0.25,
        "targets": [f"latent_{i}" for i in range(1, 7)] + ["z"] * redshift,
    }
    save_checkpoint(path, net, config)
    return path


def make_tiny_catalog(store, checkpoint, out, mc_samples=16, **options):
    """A catalog predicted in-process with the eager engine."""
    from galspec_batch.predict import predict_catalog

    opts = PredictOptions(mc_samples=mc_samples, engine="eager", **options)
    predict_catalog(store, checkpoint, out, opts, cluster="none", progress=False)
    return out


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (CPU timings and rounding independent of the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    return make_tiny_store(tmp_path_factory.mktemp("store") / "tiny.zarr")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "simple")


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory, tiny_store, tiny_checkpoint):
    """The tiny store predicted by the tiny checkpoint (16 MC samples); read it, do not change it."""
    return make_tiny_catalog(tiny_store, tiny_checkpoint, tmp_path_factory.mktemp("catalog") / "cat")


@pytest.fixture(scope="module")
def writable_catalog(tmp_path_factory, tiny_store, tiny_checkpoint):
    """A tiny catalog of the test module's own, for tests that write into it (the derived sidecar)."""
    return make_tiny_catalog(tiny_store, tiny_checkpoint, tmp_path_factory.mktemp("own") / "cat")


SLURM_ENV = "GALSPEC_TEST_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster (slurm/test-cluster/up.sh, 4 job slots) for the session.

    Runs only where asked for: in CI (``CI`` set) or with ``GALSPEC_TEST_SLURM=1``, because
    up.sh installs SLURM and munge as root and edits /etc. Reuses a cluster that is already up
    and then leaves it running; otherwise starts one and stops it at the end.
    """
    import os
    import shutil
    import subprocess
    from pathlib import Path

    asked = os.environ.get(SLURM_ENV) == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if not asked:
        pytest.skip(f"the SLURM tier installs SLURM as root: set {SLURM_ENV}=1 to run it (.ci/run does)")
    if os.geteuid() != 0:  # asked for, so a missing tier is a failure, not a skip
        pytest.fail("the SLURM tier was asked for, but its test cluster needs root "
                    "(slurm/test-cluster/up.sh)")
    scripts = Path(__file__).resolve().parents[1] / "slurm" / "test-cluster"
    env = {**os.environ, "SLURM_TEST_CPUS": os.environ.get("SLURM_TEST_CPUS", "4")}
    running = shutil.which("sinfo") is not None and subprocess.run(
        ["timeout", "5", "sinfo", "-h"], capture_output=True, env=env
    ).returncode == 0
    up = subprocess.run([str(scripts / "up.sh")], capture_output=True, text=True, env=env, timeout=600)
    if up.returncode != 0:
        pytest.fail(f"the SLURM tier was asked for, but slurm/test-cluster/up.sh failed: "
                    f"{(up.stderr or up.stdout).strip()[-300:]}")
    yield scripts
    if not running:
        subprocess.run([str(scripts / "down.sh")], capture_output=True, env=env, timeout=120)
