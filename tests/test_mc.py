"""Head-only MC dropout: the hash-defined masks, reproducibility, and agreement with torch dropout."""

from __future__ import annotations

import itertools

import pytest
import torch

from galspec_batch.errors import InputError
from galspec_batch.mc import _mix32_int, head_parameters, keep_masks, mc_naive, mc_predict, mc_samples
from galspec_batch.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

M32 = 0xFFFFFFFF


def reference_keep(object_id: int, seed: int, t: int, f: int, n_features: int, p: float) -> bool:
    """The documented mask, in plain Python integers."""
    lo, hi = object_id & M32, (object_id >> 32) & M32
    s = seed & (2**64 - 1)
    key = []
    for k in (0x9E3779B9, 0x85EBCA6B):
        start = _mix32_int(_mix32_int(k ^ (s & M32)) ^ (s >> 32))
        key.append(_mix32_int(_mix32_int(lo ^ start) ^ hi))
    half = (n_features + 1) // 2
    g = _mix32_int((t * half + f // 2) ^ 0xC2B2AE35)
    word = _mix32_int(((key[0] ^ g) + key[1]) & M32)
    bits = (word >> 16) if f % 2 else (word & 0xFFFF)
    return bits / 2**16 >= p


def head(n_features: int = 24, n_out: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_out, n_features, generator=g) / n_features**0.5, torch.randn(n_out, generator=g)


def features(n: int, n_features: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, n_features, generator=torch.Generator().manual_seed(seed)).abs() + 0.5


def test_masks_are_the_documented_hash():
    ids = torch.tensor([0, 1, -5, 2**62 + 7, -(2**63), 123456789012])
    seed = 2**40 + 3
    keep = keep_masks(ids, 7, 0.3, 3, seed=seed)
    assert keep.shape == (6, 3, 7) and keep.dtype == torch.bool
    for i, t, f in itertools.product(range(6), range(3), range(7)):
        assert bool(keep[i, t, f]) == reference_keep(int(ids[i]), seed, t, f, 7, 0.3), (i, t, f)


def test_drop_rate_and_independence():
    keep = keep_masks(torch.arange(2000), 64, 0.2, 16, seed=5).float()
    assert abs(keep.mean().item() - 0.8) < 0.002
    # neighbouring ids, samples and features are uncorrelated
    for a, b in ((keep[1:], keep[:-1]), (keep[:, 1:], keep[:, :-1]), (keep[..., 1:], keep[..., :-1])):
        assert abs((a * b).mean().item() - 0.64) < 0.003
    other_seed = keep_masks(torch.arange(2000), 64, 0.2, 16, seed=6).float()
    assert abs((keep * other_seed).mean().item() - 0.64) < 0.003


def test_rows_are_bit_identical_whatever_the_batch():
    f = features(50)
    ids = torch.arange(10_000, 10_050) * 7919
    w, b = head()
    whole = mc_predict(f, ids, w, b, 0.3, T=16, seed=11, quantiles=[0.1, 0.5, 0.9], head="point")
    rerun = mc_predict(f.clone(), ids.clone(), w, b, 0.3, T=16, seed=11, quantiles=[0.1, 0.5, 0.9],
                       head="point")
    for k in whole:
        assert torch.equal(whole[k], rerun[k])
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    shuffled = mc_predict(f[perm], ids[perm], w, b, 0.3, T=16, seed=11, chunk_elements=300, head="point")
    pieces = [mc_predict(f[s:s + 7], ids[s:s + 7].numpy(), w, b, 0.3, T=16, seed=11, head="point")
              for s in range(0, 50, 7)]
    for k in ("mean", "std"):
        assert torch.equal(shuffled[k], whole[k][perm])
        assert torch.equal(torch.cat([p[k] for p in pieces]), whole[k])
    other = mc_predict(f, ids, w, b, 0.3, T=16, seed=12, head="point")
    assert not torch.equal(other["mean"], whole["mean"])


def test_mean_is_the_deterministic_head_within_mc_error():
    f = features(40)
    w, b = head()
    T = 256
    out = mc_predict(f, torch.arange(40), w, b, 0.25, T=T, seed=3, head="point")
    expected = f @ w.t() + b
    assert (out["std"] > 0).all()
    z = (out["mean"] - expected) / (out["std"] / T**0.5)
    assert z.abs().max() < 5
    assert abs(z.mean().item()) < 0.5  # no bias: z over 120 values averages to ~N(0, 1/120)


def test_no_dropout_gives_the_head_and_zero_std():
    f = features(9)
    w, b = head()
    out = mc_predict(f, torch.arange(9), w, b, 0.0, T=8, quantiles=[0.5], head="point")
    torch.testing.assert_close(out["mean"], f @ w.t() + b, rtol=1e-6, atol=1e-6)
    assert torch.equal(out["std"], torch.zeros(9, 3))
    torch.testing.assert_close(out["quantiles"][:, 0], out["mean"])


def test_quantiles_shape_and_order():
    f = features(12)
    w, b = head()
    out = mc_predict(f, torch.arange(12), w, b, 0.3, T=64, quantiles=(0.16, 0.5, 0.84), head="point")
    q = out["quantiles"]
    assert q.shape == (12, 3, 3) and q.dtype == torch.float32
    assert (q[:, 1:] >= q[:, :-1]).all()
    # for these near-Gaussian sums the 16-84 range is about two standard deviations
    ratio = (q[:, 2] - q[:, 0]) / (2 * out["std"])
    assert 0.7 < ratio.median() < 1.3


def test_samples_scale_kept_features_like_torch_dropout():
    f = features(3, n_features=10)
    w, b = head(10, 2)
    s = mc_samples(f, torch.arange(3), w, b, 0.5, T=4, seed=1)
    keep = keep_masks(torch.arange(3), 10, 0.5, 4, seed=1).double()
    want = torch.einsum("ntf,of->nto", keep * f.double().unsqueeze(1) * 2.0, w.double()) + b.double()
    torch.testing.assert_close(s, want, rtol=1e-6, atol=1e-6)


def test_agrees_with_full_passes_of_torch_dropout():
    torch.manual_seed(0)
    net = create_model("simple-cnn", dropout=0.3).eval()
    x = torch.randn(6, 5, 24, 24)
    T = 400
    naive = mc_naive(net, x, T)  # [T, N, n_out], T full forward passes with dropout on
    assert not net.training and not net.head.training
    with torch.no_grad():
        feats = net.forward_features(x)
    ours = mc_predict(feats, torch.arange(6), *head_parameters(net.head), T=T, seed=0, head="point")
    se = torch.sqrt((naive.std(0) ** 2 + ours["std"] ** 2) / T)
    z = (naive.mean(0) - ours["mean"]) / se
    assert z.abs().max() < 5
    ratio = ours["std"] / naive.std(0)
    assert ((ratio > 0.8) & (ratio < 1.25)).all()


def test_head_parameters_and_errors():
    model = create_model("simple-cnn", dropout=0.2, head="point")
    w, b, p = head_parameters(model.head)
    assert w.shape == (6, 64) and b.shape == (6,) and p == pytest.approx(0.2)
    w, b, p = head_parameters(create_model("simple-cnn", dropout=0.2).head)  # a mean and a variance each
    assert w.shape == (12, 64) and b.shape == (12,)
    with pytest.raises(InputError, match="Dropout"):
        head_parameters(torch.nn.Linear(3, 2))
    f = features(4)
    w, b = head()
    with pytest.raises(InputError, match="object_ids"):
        mc_predict(f, torch.arange(3), w, b, 0.2, head="point")
    with pytest.raises(InputError, match="do not fit"):
        mc_predict(f, torch.arange(4), w[:, :5], b, 0.2, head="point")
    with pytest.raises(InputError, match="T >= 2"):
        mc_predict(f, torch.arange(4), w, b, 0.2, T=1, head="point")
    with pytest.raises(InputError, match="dropout p"):
        mc_predict(f, torch.arange(4), w, b, 1.0, head="point")
    with pytest.raises(InputError, match="quantiles"):
        mc_predict(f, torch.arange(4), w, b, 0.2, quantiles=[1.5], head="point")
    empty = mc_predict(f[:0], torch.arange(0), w, b, 0.2, quantiles=[0.5], head="point")
    assert empty["mean"].shape == (0, 3) and empty["quantiles"].shape == (0, 1, 3)


def test_gaussian_head_gives_the_mixture_variance_and_its_parts():
    """A gaussian head's T samples are (mean, variance) pairs: the predictive variance is the
    spread of the means (epistemic) plus the mean variance (aleatoric), checked against the samples."""
    from torch.nn import functional as F

    from galspec_batch.models.heads import VAR_FLOOR

    g = torch.Generator().manual_seed(5)
    f = torch.randn(30, 16, generator=g)
    w, b = torch.randn(8, 16, generator=g) * 0.3, torch.randn(8, generator=g)  # 4 targets
    out = mc_predict(f, torch.arange(30), w, b, 0.3, T=64, seed=2, head="gaussian")
    s = mc_samples(f, torch.arange(30), w, b, 0.3, T=64, seed=2)  # [N, T, 8] raw
    mu, var = s[..., :4], F.softplus(s[..., 4:]) + VAR_FLOOR
    torch.testing.assert_close(out["mean"], mu.mean(1).float())
    torch.testing.assert_close(out["std_epistemic"], mu.std(1).float())
    torch.testing.assert_close(out["std_aleatoric"], var.mean(1).sqrt().float())
    torch.testing.assert_close(out["std"] ** 2, out["std_epistemic"] ** 2 + out["std_aleatoric"] ** 2)
    assert (out["std_aleatoric"] >= VAR_FLOOR**0.5).all()
    point = mc_predict(f, torch.arange(30), w, b, 0.3, T=64, seed=2, head="point")
    assert point["mean"].shape == (30, 8) and "std_aleatoric" not in point
    torch.testing.assert_close(point["std"], point["std_epistemic"])
