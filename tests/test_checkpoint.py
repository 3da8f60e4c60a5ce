"""Checkpoints: safetensors + JSON round trip, bit-identical outputs, no unpickling, clear errors."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from galspec_batch import __version__
from galspec_batch.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.models import GalspecNet, create_model, normalize_images

BANDS = ["g", "r", "i", "z", "y"]
NAMES = [f"latent_{i}" for i in range(1, 7)]
TARGETS = [*NAMES, "z"]


def make_net(name: str = "simple-cnn", dropout: float = 0.2, seed: int = 0) -> GalspecNet:
    torch.manual_seed(seed)
    cnn = create_model(name, in_bands=5, n_out=7, dropout=dropout)
    g = torch.Generator().manual_seed(seed)
    net = GalspecNet(
        cnn,
        softening=torch.rand(5, generator=g) + 0.1,
        mean=torch.randn(5, generator=g),
        std=torch.rand(5, generator=g) + 0.5,
        target_mean=torch.randn(7, generator=g),
        target_std=torch.rand(7, generator=g) + 0.5,
    )
    # move BN / deconv running statistics away from their initial values
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 5, 32, 32, generator=g) * 3)
    return net.eval()


def config() -> dict:
    return {"bands": BANDS, "image_size": [32, 32], "pixel_scale": 0.25, "targets": TARGETS,
            "training": {"epochs_done": 3}, "data": {"store": "s.zarr"}}


def images(n: int = 4) -> torch.Tensor:
    x = torch.randn(n, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2
    x[0, 2, 3:7, 3:7] = float("nan")
    return x


@pytest.mark.parametrize("name", ["simple-cnn", "simple-deconv", "xresnet18-hybrid"])
def test_round_trip_gives_bit_identical_outputs(tmp_path, name):
    net = make_net(name)
    path = save_checkpoint(tmp_path / "ck", net, config())
    ck = load_checkpoint(path)
    x = images()
    with torch.no_grad():
        assert torch.equal(net(x), ck.net(x))
        assert torch.equal(net.forward_features(x), ck.net.forward_features(x))
    assert not ck.net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, ck.net.state_dict()[k]), k


def test_config_and_hash(tmp_path):
    net = make_net()
    path = save_checkpoint(tmp_path / "ck", net, config())
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["format"] == "galspec-checkpoint" and cfg["format_version"] == 3
    assert cfg["model"] == {"name": "simple-cnn", "in_bands": 5, "n_out": 7, "dropout": 0.2,
                            "head": "gaussian"}
    assert cfg["bands"] == BANDS and cfg["image_size"] == [32, 32] and cfg["pixel_scale"] == 0.25
    assert cfg["targets"] == TARGETS
    assert cfg["target_std"] == pytest.approx(net.target_std.tolist())
    assert cfg["preprocess"]["softening"] == pytest.approx(net.softening.tolist())
    assert cfg["training"] == {"epochs_done": 3}
    assert cfg["code_version"].startswith(__version__)
    ck = load_checkpoint(path)
    assert ck.model_hash == hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert ck.bands == tuple(BANDS) and ck.latent_names == NAMES and ck.targets == TARGETS
    assert ck.config.redshift and ck.net.head_kind == "gaussian"
    assert ck.net.head is ck.net.cnn.head and ck.net.num_features == 64 and ck.net.dropout == 0.2
    z = torch.zeros(2, 7)
    assert torch.allclose(ck.net.to_physical(z), net.target_mean.expand(2, 7))
    mean, var = ck.net.predict(images())
    assert mean.shape == var.shape == (4, 7) and (var > 0).all()


def test_preprocessing_is_nan_safe_asinh_zscore():
    soft, mean, std = torch.tensor([2.0, 1, 1, 1, 1]), torch.tensor([0.5, 0, 0, 0, 0]), torch.full((5,), 2.0)
    x = torch.zeros(1, 5, 2, 2)
    x[0, 0, 0, 0] = 4.0
    x[0, 0, 0, 1] = float("nan")
    y = normalize_images(x, soft, mean, std)
    assert y[0, 0, 0, 0].item() == pytest.approx((torch.asinh(torch.tensor(2.0)).item() - 0.5) / 2)
    assert y[0, 0, 0, 1].item() == pytest.approx(-0.25)  # NaN counts as zero flux
    assert torch.isfinite(y).all()
    with pytest.raises(InputError, match="one plane per band"):
        normalize_images(torch.zeros(1, 4, 2, 2), soft, mean, std)


@pytest.mark.parametrize("block", [1, 40_000, 2 << 20])
def test_blocked_cpu_preprocessing_has_the_graphs_bits(monkeypatch, block):
    from galspec_batch.models import net as net_module

    g = torch.Generator().manual_seed(3)
    raw = (torch.randn(9, 5, 24, 24, generator=g) * 30).to(torch.float16)
    raw[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    soft, mean = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    std = torch.rand(5, generator=g) + 0.5
    monkeypatch.setattr(net_module, "PREPROCESS_BLOCK_BYTES", block)
    blocked = normalize_images(raw, soft, mean, std)
    monkeypatch.setattr(net_module, "_tracing", lambda: True)  # as under torch.compile or an export
    graph = normalize_images(raw, soft, mean, std)
    assert blocked.dtype == graph.dtype == torch.float32 and torch.equal(blocked, graph)
    assert torch.isfinite(blocked).all()
    assert normalize_images(raw[:0], soft, mean, std).shape == (0, 5, 24, 24)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ck", make_net(), config())

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    ck = load_checkpoint(path)
    assert ck.config.model.name == "simple-cnn"
    # the weights file is a safetensors file: 8-byte header length, then a JSON header
    raw = (path / WEIGHTS_FILE).read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "cnn.head.1.weight" in header and "softening" in header


def test_overwrite_flag(tmp_path):
    save_checkpoint(tmp_path / "ck", make_net(), config())
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", make_net(seed=1), config(), overwrite=False)
    save_checkpoint(tmp_path / "ck", make_net(seed=1), config())
    assert not list(tmp_path.glob("ck.tmp-*"))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(MissingFileError, match="not a galspec checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    path = save_checkpoint(tmp_path / "ck", make_net(), config())
    cfg = json.loads((path / CONFIG_FILE).read_text())

    (path / CONFIG_FILE).write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(FormatError, match="format_version 99"):
        load_checkpoint(path)

    (path / CONFIG_FILE).write_text(json.dumps({**cfg, "model": {**cfg["model"], "name": "simple-deconv"}}))
    with pytest.raises(FormatError, match="does not match model 'simple-deconv'"):
        load_checkpoint(path)

    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    (path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(FormatError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_save_checks_config_against_network(tmp_path):
    with pytest.raises(InputError, match=r"bands \['g', 'r', 'i'\] must be 5 distinct names"):
        save_checkpoint(tmp_path / "ck", make_net(), {**config(), "bands": ["g", "r", "i"]})
    with pytest.raises(InputError, match="targets must be latent_1..latent_L, then optionally 'z'"):
        save_checkpoint(tmp_path / "ck", make_net(), {**config(), "targets": ["z", *NAMES]})
    with pytest.raises(InputError, match="targets has 6 names; the model predicts 7"):
        save_checkpoint(tmp_path / "ck", make_net(), {**config(), "targets": NAMES})
    with pytest.raises(InputError, match="lacks"):
        save_checkpoint(tmp_path / "ck", make_net(), {"bands": BANDS})


def test_asinh_stretch_matches_torch_asinh():
    from galspec_batch.models.net import _asinh

    x = torch.cat([torch.randn(10000) * 10 ** torch.empty(10000).uniform_(-8, 17),
                   torch.tensor([0.0, -0.0, 1e-30, -1e18, 1e18])])
    ref = torch.asinh(x.double())
    rel = ((_asinh(x).double() - ref).abs() / ref.abs().clamp_min(1e-300)).max().item()
    assert rel < 3e-7
    assert _asinh(torch.tensor([0.0])).item() == 0.0
    huge = _asinh(torch.tensor([3.4e38, -1e30]))
    assert torch.isfinite(huge).all() and huge[0].item() == pytest.approx(42.1, abs=0.05)
