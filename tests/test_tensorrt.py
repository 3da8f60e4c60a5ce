"""The tensorrt engine on a real GPU: agreement with eager, dynamic batch, the engine cache.

Runs only where `import tensorrt` works and torch sees a CUDA GPU; skipped with the reason elsewhere.
"""

from __future__ import annotations

import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="`import tensorrt` failed: TensorRT is not installed here")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA GPU, which TensorRT needs", allow_module_level=True)

from click.testing import CliRunner  # noqa: E402
from conftest import make_tiny_checkpoint  # noqa: E402
from test_engines import flux, make_net, rel_err  # noqa: E402

from galspec_batch.cli import main  # noqa: E402
from galspec_batch.engines import create_engine  # noqa: E402
from galspec_batch.engines import tensorrt as trt_engine  # noqa: E402

SIZE = 64


@pytest.mark.parametrize(("name", "precision", "tol"), [
    ("simple-cnn", "fp32", 1e-4), ("simple-cnn", "fp16", 2e-2),
    ("xresnet18", "fp32", 1e-3), ("xresnet18-hybrid", "fp16", 3e-2),
])
def test_tensorrt_agrees_with_eager(tmp_path, name, precision, tol):
    net = make_net(name)
    engine = create_engine("tensorrt", net, device="cuda", precision=precision, max_batch=16,
                           cache_dir=tmp_path)
    eager = create_engine("eager", net, device="cuda", channels_last=False)
    for n in (1, 5, 16, 37):  # 37 > max_batch: split into engine-sized batches
        x = flux(n, size=SIZE)
        got = engine.features(x)
        assert got.device.type == "cuda" and got.dtype == torch.float32 and got.shape[0] == n
        assert rel_err(got, eager.features(x)) < tol, (n, rel_err(got, eager.features(x)))


def test_engine_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    net = make_net("simple-cnn")
    first = create_engine("tensorrt", net, device="cuda", precision="fp16", max_batch=8, cache_dir=tmp_path)
    x = flux(4, size=SIZE)
    want = first.features(x)
    (path,) = tmp_path.glob("*.engine")
    assert path == first.engine_path((5, SIZE, SIZE))
    gpu = torch.cuda.get_device_name().split()[-1]
    assert gpu in path.name and trt.__version__ in path.name and "fp16" in path.name

    def no_build(*args, **kwargs):
        raise AssertionError("the cached engine should have been used")

    monkeypatch.setattr(trt_engine, "build_serialized_engine", no_build)
    again = create_engine("tensorrt", net, device="cuda", precision="fp16", max_batch=8, cache_dir=tmp_path)
    assert torch.equal(again.features(x), want)
    other = make_net("simple-cnn", seed=1)  # other weights: another hash, so a new build
    with pytest.raises(AssertionError, match="cached engine"):
        create_engine("tensorrt", other, device="cuda", precision="fp16", max_batch=8,
                      cache_dir=tmp_path).features(x)


def test_auto_on_a_gpu_is_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setenv("GALSPEC_ENGINE_CACHE", str(tmp_path))
    engine = create_engine("auto", make_net("simple-cnn"), device="cuda", precision="fp16", max_batch=8)
    assert engine.name == "tensorrt"


def test_export_tensorrt_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("GALSPEC_ENGINE_CACHE", str(tmp_path / "cache"))
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", model="simple-cnn", size=32)
    out = tmp_path / "body.engine"
    run = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--format", "tensorrt", "--out",
                                    str(out), "--precision", "fp16", "--max-batch", "64"])
    assert run.exit_code == 0, run.output
    assert out.stat().st_size > 0 and "max abs difference" in run.output
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(out.read_bytes()) is not None
