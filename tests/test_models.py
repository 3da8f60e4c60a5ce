"""The model zoo: registry, published parameter counts, shapes, body/head face, folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from galspec_batch.errors import InputError, UsageError
from galspec_batch.models import DeconvConv2d, create_model, fold_deconv, list_models
from galspec_batch.models.xresnet import ResBlock, SimpleSelfAttention, SqueezeExcite

# Wu & Peek 2020, 5 bands -> 6 outputs, re-derived from the original fastai definitions
PUBLISHED_COUNTS = {
    "xresnet18": 6_734_871,
    "xresnet18-hybrid": 6_734_743,
    "xresnet18-deconv": 6_730_007,
    "simple-cnn": 29_734,
    "simple-deconv": 29_606,
}
DECONV_MODELS = ["simple-deconv", "xresnet18-deconv", "xresnet18-hybrid"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int, bands: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, bands, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_published_models():
    assert list_models() == ["simple-cnn", "simple-deconv", "xresnet18", "xresnet18-deconv",
                             "xresnet18-hybrid"]


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts_match_the_paper(name):
    model = create_model(name, in_bands=5, n_out=6, head="point")  # the paper's head: 6 means
    assert n_params(model) == PUBLISHED_COUNTS[name]
    # dropout has no parameters, so the rate does not change the count
    assert n_params(create_model(name, dropout=0.0, head="point")) == PUBLISHED_COUNTS[name]
    # a gaussian head adds one output (a variance) per target: num_features + 1 parameters each
    gaussian = create_model(name, in_bands=5, n_out=6)
    assert n_params(gaussian) == PUBLISHED_COUNTS[name] + 6 * (gaussian.num_features + 1)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [32, 64])
def test_forward_shapes(name, size):
    model = create_model(name)
    x = images(2, 5, size)
    feats = model.train().forward_features(x)
    assert feats.shape == (2, model.num_features)
    assert model(x).shape == (2, 12)  # a mean and a variance for each of 6 targets
    assert model.eval()(x).shape == (2, 12)


def test_forward_shape_at_full_resolution():
    model = create_model("xresnet18-hybrid").eval()
    with torch.no_grad():
        assert model(images(1, 5, 224)).shape == (1, 12)


@pytest.mark.parametrize("name", list_models())
def test_any_bands_and_outputs(name):
    model = create_model(name, in_bands=3, n_out=10, dropout=0.1, head="point")
    assert (model.model_name, model.in_bands, model.n_out, model.dropout) == (name, 3, 10, 0.1)
    assert model(images(2, 3, 40)).shape == (2, 10)
    # only the first layer and the head depend on the bands and outputs
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, DeconvConv2d)))
    assert first.weight.shape[1] == 3 and model.head[-1].out_features == 10
    with pytest.raises(UsageError, match="unknown head 'gausian'.*gaussian"):
        create_model(name, head="gausian")
    with pytest.raises(InputError, match=r"expected \[N, 3, H, W\]"):
        model(images(1, 5, 32))


@pytest.mark.parametrize("name", list_models())
def test_forward_is_head_of_features(name):
    model = create_model(name)
    for _ in range(2):  # fill running statistics
        model.train()(images(4, 5, 32, seed=1))
    model.eval()
    x = images(3, 5, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))
    assert isinstance(model.head, nn.Sequential)
    assert [type(m) for m in model.head] == [nn.Dropout, nn.Linear]
    assert model.head[0].p == 0.2 and model.head[1].in_features == model.num_features


def test_dropout_is_active_only_while_the_head_trains():
    model = create_model("simple-cnn", dropout=0.5).eval()
    with torch.no_grad():
        feats = model.forward_features(images(8, 5, 32))
        assert torch.equal(model.forward_head(feats), model.forward_head(feats))
        model.head.train()
        draws = torch.stack([model.forward_head(feats) for _ in range(20)])
        assert (draws.std(0) > 0).all()
        # inverted dropout: the average over many draws approaches the deterministic head
        many = torch.stack([model.forward_head(feats) for _ in range(2000)])
        model.head.eval()
        error = (many.mean(0) - model.forward_head(feats)).abs()
        assert (error < 5 * many.std(0) / 2000**0.5).all()  # 5 standard errors of the mean
        still = create_model("simple-cnn", dropout=0.0).eval()
        still.head.train()
        f = still.forward_features(images(4, 5, 32))
        assert torch.equal(still.forward_head(f), still.forward_head(f))


def test_unknown_name_suggests_the_closest():
    with pytest.raises(InputError, match=r"Did you mean 'xresnet18-hybrid'\?") as err:
        create_model("xresnet18-hybird")
    assert isinstance(err.value, ValueError)
    with pytest.raises(InputError, match="dropout"):
        create_model("simple-cnn", dropout=1.0)
    with pytest.raises(InputError, match="in_bands"):
        create_model("simple-cnn", in_bands=0)


def test_xresnet_structure_and_initialisation():
    model = create_model("xresnet18")
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 8
    assert all(b.convpath[0][0].groups == 64 for b in blocks)
    assert all(isinstance(b.convpath[2], SqueezeExcite) for b in blocks)
    attention = [i for i, b in enumerate(blocks)
                 if any(isinstance(m, SimpleSelfAttention) for m in b.modules())]
    assert attention == [1]  # last block of stage 1
    sa = blocks[1].convpath[3]
    assert sa.gamma.item() == 0.0 and torch.nn.utils.parametrize.is_parametrized(sa.conv, "weight")
    assert all(b.convpath[1][1].weight.abs().sum() == 0 for b in blocks)  # second BN starts at zero
    assert all(b.convpath[0][1].weight.eq(1).all() for b in blocks)
    # stem 3 + two per block 16 + shortcuts of stages 2-4 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3 + 16 + 3
    assert not any(isinstance(m, DeconvConv2d) for m in model.modules())


@pytest.mark.parametrize("name, n_deconv, n_bn", [("xresnet18-hybrid", 3, 19), ("xresnet18-deconv", 22, 0),
                                                   ("simple-deconv", 3, 0), ("simple-cnn", 0, 3)])
def test_where_each_variant_puts_deconvolution(name, n_deconv, n_bn):
    model = create_model(name)
    assert sum(isinstance(m, DeconvConv2d) for m in model.modules()) == n_deconv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    if name == "xresnet18-hybrid":
        assert [m.num_features for m in model.modules() if isinstance(m, DeconvConv2d)] == [45, 288, 288]


@pytest.mark.parametrize("name", DECONV_MODELS)
def test_fold_deconv_matches_eval(name):
    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        for seed in range(3):
            model.train()(images(8, 5, 32, seed=seed))
    model.eval()
    x = images(4, 5, 48, seed=7)
    with torch.no_grad():
        expected = model(x)
        folded = fold_deconv(model)
        got = folded(x)
    assert folded is not model and not folded.training
    assert not any(isinstance(m, DeconvConv2d) for m in folded.modules())
    assert any(isinstance(m, DeconvConv2d) for m in model.modules())  # the original is untouched
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("name", list_models())
def test_training_step_reaches_every_layer(name):
    model = create_model(name).train()
    loss = model(images(4, 5, 32)).square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["head.1.weight"].abs().sum() > 0
    first = next(n for n in grads if n.endswith("weight"))
    assert grads[first].abs().sum() > 0  # the stem learns
