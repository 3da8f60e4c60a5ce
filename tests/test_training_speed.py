"""The training speed work keeps the numbers: D4 by one gather, float16 images converted by torch,
and the opt-in bf16 training step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training import FAST, make_store, write_labels

from galspec_batch.errors import UsageError
from galspec_batch.models import create_model
from galspec_batch.models.heads import head_loss
from galspec_batch.store import open_store
from galspec_batch.training import TrainSettings, d4_transform, fit, make_optimizer, random_d4
from galspec_batch.training.augment import d4_elements
from galspec_batch.training.data import ImageSource
from galspec_batch.training.loop import train_autocast

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_d4(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The D4 element drawn for each image applied to it alone, one image at a time."""
    choices = d4_elements(*x.shape[-2:])
    ks = torch.randint(len(choices), (x.shape[0],), generator=generator).tolist()
    return torch.cat([d4_transform(x[i:i + 1], choices[k]) for i, k in enumerate(ks)])


@pytest.mark.parametrize("shape", [(32, 5, 16, 16), (7, 3, 8, 12), (5, 2, 9, 9), (1, 1, 1, 1)])
def test_d4_gather_is_the_per_element_loop_exactly(shape):
    x = torch.randn(shape)
    for seed in range(4):
        ours = random_d4(x, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, reference_d4(x, torch.Generator().manual_seed(seed)))


def test_float16_images_convert_exactly(tmp_path):
    store, _, _ = make_store(tmp_path / "s.zarr", n=40)
    store = open_store(store)
    assert store.attrs.dtype == "float16"
    src = ImageSource(store, np.arange(40))
    pos = np.array([5, 0, 39, 0, 17])
    got = src.get(pos)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, src._images[pos].astype(np.float32))  # NaN equal to NaN
    every = src.get(np.arange(40))
    assert np.isnan(every).any()  # make_store puts NaN in one image
    np.testing.assert_array_equal(every, src._images.astype(np.float32))


def test_bf16_training_step_stays_close_to_fp32():
    # bfloat16 convolutions under autocast: the loss of the same steps moves at bfloat16's precision
    # (8 bits of mantissa), and reruns are identical
    losses = {}
    for precision in ("fp32", "bf16", "bf16"):
        torch.manual_seed(0)
        model = create_model("xresnet18-hybrid", n_out=3).train()
        opt = make_optimizer(model, 0.003)
        g = torch.Generator().manual_seed(1)
        run = []
        for _ in range(4):
            x, y = torch.randn(8, 5, 32, 32, generator=g), torch.randn(8, 3, generator=g)
            with train_autocast("cpu", precision):
                out = model(x)
            assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
            loss = head_loss(out.float(), y, "beta-nll")[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses.setdefault(precision, []).append(run)
    assert losses["bf16"][0] == losses["bf16"][1]
    np.testing.assert_allclose(losses["bf16"][0], losses["fp32"][0], rtol=0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed")
    store, ids, values = make_store(d / "s.zarr", n=120)
    return {"dir": d, "store": store, "labels": write_labels(d / "labels.parquet", ids, values[:, :6])}


def test_bf16_fit_learns_and_is_recorded(data):
    bf16 = TrainSettings(**{**FAST.__dict__, "epochs": 3, "precision": "bf16"})
    result = fit(data["store"], data["labels"], data["dir"] / "bf16", bf16, progress=False)
    assert result.metrics[-1]["val_rmse"] < 0.9
    state = json.loads((result.last / "trainer_state.json").read_text())
    assert state["identity"]["settings"]["precision"] == "bf16"
    with pytest.raises(UsageError, match="precision"):
        fit(data["store"], data["labels"], data["dir"] / "bad",
            TrainSettings(**{**FAST.__dict__, "precision": "fp16"}), progress=False)


def test_a_run_from_before_the_precision_setting_resumes(data):
    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    two = TrainSettings(**{**FAST.__dict__, "epochs": 2})
    out = data["dir"] / "old"
    with pytest.raises(Killed):
        fit(data["store"], data["labels"], out, two, progress=False, on_epoch_end=kill)
    path = out / "last" / "trainer_state.json"
    state = json.loads(path.read_text())
    del state["identity"]["settings"]["precision"]  # as written before the setting existed
    path.write_text(json.dumps(state))
    resumed = fit(data["store"], data["labels"], out, two, progress=False)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2]


def test_autocast_only_where_asked():
    assert not torch.is_autocast_enabled("cpu")
    with train_autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with train_autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
