"""Engines: eager, onnxruntime, compile and auto agree with the network; the ONNX export; `galspec export`."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_checkpoint
from torch import nn

from galspec_batch.checkpoint import load_checkpoint
from galspec_batch.cli import main
from galspec_batch.engines import create_engine, export_checkpoint, export_onnx, list_engines, state_digest
from galspec_batch.engines.base import FeatureGraph
from galspec_batch.engines.tensorrt import engine_file_name
from galspec_batch.errors import InputError
from galspec_batch.models import DeconvConv2d, GalspecNet, create_model, list_models
from galspec_batch.models.xresnet import SimpleSelfAttention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32


def make_net(name: str, seed: int = 0) -> GalspecNet:
    """A checkpoint-style network with every path active: BN statistics, attention gamma and deconv
    running statistics set away from their neutral initial values."""
    torch.manual_seed(seed)
    cnn = create_model(name, dropout=0.2)
    with torch.no_grad():
        for m in cnn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, SimpleSelfAttention):
                m.gamma.fill_(0.05)
    if any(isinstance(m, DeconvConv2d) for m in cnn.modules()):
        cnn.train()
        with torch.no_grad():
            cnn(torch.randn(4, 5, SIZE, SIZE))
    net = GalspecNet(cnn, torch.full((5,), 0.5), torch.zeros(5), torch.full((5,), 2.0),
                     torch.zeros(6), torch.ones(6))
    return net.eval()


def flux(n: int, seed: int = 1, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, size, size, generator=g)
    x[0, 1, 2, 3] = float("nan")
    x[-1, 4, 5, 6] = float("inf")
    x[-1, 0, 7, :] = float("-inf")
    return x


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_eager_is_the_network_body_and_leaves_the_network_alone():
    net = make_net("xresnet18")
    x = flux(5)
    with torch.no_grad():
        want = net.forward_features(x)
    engine = create_engine("eager", net)
    got = engine.features(x)
    assert engine.name == "eager" and got.dtype == torch.float32 and got.shape == (5, 512)
    assert torch.isfinite(got).all()
    assert rel_err(got, want) < 1e-5
    # the caller's network keeps its spectral norm and still runs (engines work on a copy)
    with torch.no_grad():
        assert torch.equal(net.forward_features(x), want)
    assert any(hasattr(m, "parametrizations") for m in net.modules())


def test_batches_are_split_at_max_batch():
    net = make_net("simple-cnn")
    x = flux(7)
    whole = create_engine("eager", net).features(x)
    split = create_engine("eager", net, max_batch=3).features(x)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_onnxruntime_agrees_with_eager(name):
    net = make_net(name)
    x = flux(4)
    want = create_engine("eager", net).features(x)
    got = create_engine("onnxruntime", net).features(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("name", ["simple-cnn", "xresnet18-hybrid"])
def test_onnxruntime_fp16_agrees_with_eager(name):
    net = make_net(name)
    x = flux(4)
    want = create_engine("eager", net).features(x)
    got = create_engine("onnxruntime", net, precision="fp16").features(x)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 2e-2


def test_exported_graph_has_nan_handling_folded_deconv_and_a_dynamic_batch():
    net = make_net("simple-deconv")
    model = onnx.load_from_string(export_onnx(net, (5, SIZE, SIZE)))
    ops = {n.op_type for n in model.graph.node}
    assert {"IsNaN", "IsInf", "Where", "Log", "Sqrt", "Conv"} <= ops
    assert not ops & {"MatMul", "Einsum", "Unfold", "Gemm"}  # no whitening left: plain convolutions
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 3
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 6):
        x = flux(n)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        want = create_engine("eager", net).features(x)
        assert got.shape == (n, 64) and rel_err(got, want) < 1e-4


def test_fp16_graph_keeps_float32_inputs_and_outputs(tmp_path):
    path = tmp_path / "body.onnx"
    export_onnx(make_net("xresnet18"), (5, SIZE, SIZE), path, precision="fp16")
    model = onnx.load(path)
    f32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    with pytest.raises(FileExistsError):
        export_onnx(make_net("simple-cnn"), (5, SIZE, SIZE), path)


def test_low_precision_keeps_attention_in_float32():
    graph = FeatureGraph(make_net("xresnet18"), torch.float16)
    attention = [m for m in graph.modules() if isinstance(m, SimpleSelfAttention)]
    assert attention and all(p.dtype == torch.float32 for m in attention for p in m.parameters())
    convs = [m for m in graph.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.dtype == torch.float16 for m in convs)


def test_eager_bf16_on_cpu():
    net = make_net("simple-cnn")
    x = flux(4)
    want = create_engine("eager", net).features(x)
    got = create_engine("eager", net, precision="bf16").features(x)
    assert got.dtype == torch.float32 and rel_err(got, want) < 5e-2


def test_auto_on_cpu_picks_a_measured_engine():
    net = make_net("simple-cnn")
    x = flux(6)
    engine = create_engine("auto", net)
    assert engine.name == "auto"
    got = engine.features(x)
    assert engine.name in ("eager", "onnxruntime")
    assert rel_err(got, create_engine("eager", net).features(x)) < 1e-4
    again = create_engine("auto", net)
    again.features(x)
    assert again.name == engine.name  # the choice is remembered


def test_unknown_or_unavailable_engines_are_input_errors():
    net = make_net("simple-cnn")
    with pytest.raises(InputError, match="Did you mean 'onnxruntime'"):
        create_engine("onnxrutime", net)
    with pytest.raises(InputError, match="precision"):
        create_engine("eager", net, precision="fp8")
    names = list_engines("cpu")
    assert {"auto", "eager", "compile", "onnxruntime"} <= set(names)
    if "tensorrt" not in names:
        with pytest.raises(InputError, match="tensorrt"):
            create_engine("tensorrt", net)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            create_engine("eager", net, device="cuda")
    with pytest.raises(InputError, match="shape"):
        create_engine("eager", net).features(torch.zeros(5, 32, 32))


def test_model_hash_follows_the_weights():
    net = make_net("simple-cnn")
    same = make_net("simple-cnn")
    assert state_digest(net) == state_digest(same)
    with torch.no_grad():
        same.cnn.head[1].bias[0] += 1e-3
    assert state_digest(net) != state_digest(same)


def test_engine_cache_file_name():
    name = engine_file_name("NVIDIA H100 80GB HBM3", "10.9.0.34", "abcdef0123456789", (5, 224, 224), 1024,
                            "fp16")
    assert name == "NVIDIA-H100-80GB-HBM3_10.9.0.34_abcdef0123456789_5x224x224_max1024_fp16.engine"


@pytest.mark.slow
def test_compile_agrees_with_eager():
    net = make_net("simple-cnn")
    engine = create_engine("compile", net)
    for n in (4, 3):  # a second batch size reuses the dynamic-batch graph
        x = flux(n)
        got = engine.features(x)
        assert engine.name == "compile"
        assert rel_err(got, create_engine("eager", net).features(x)) < 1e-5


def test_export_checkpoint_and_cli(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", model="simple-deconv", size=24)
    result = export_checkpoint(ckpt, "onnx", tmp_path / "a.onnx")
    assert result.path.is_file() and result.max_abs_diff < 1e-4 * max(result.max_abs_feature, 1.0)

    out = tmp_path / "b.onnx"
    run = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--format", "onnx",
                                    "--out", str(out), "--precision", "fp16"])
    assert run.exit_code == 0, run.output
    assert f"wrote {out}" in run.output and "max abs difference" in run.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = flux(3, size=24)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    want = create_engine("eager", load_checkpoint(ckpt).net).features(x)
    assert rel_err(got, want) < 2e-2

    again = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--format", "onnx",
                                      "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    if "tensorrt" not in list_engines("cuda" if torch.cuda.is_available() else "cpu"):
        trt = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--format", "tensorrt",
                                        "--out", str(tmp_path / "c.engine")])
        assert trt.exit_code == 2 and "galspec: error:" in trt.output and "tensorrt" in trt.output
