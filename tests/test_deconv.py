"""Network deconvolution: whitening, Newton-Schulz, running statistics, folding, gradients, shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from galspec_batch.errors import InputError
from galspec_batch.models import DeconvConv2d, fold_deconv, isqrt_newton_schulz
from galspec_batch.models.isqrt import SPECTRAL_MIN_SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def correlated_images(n: int = 16, c: int = 5, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Images whose 3x3 patches have a well-conditioned (condition number ~10) but far from white
    covariance: mixed bands, horizontally correlated pixels, an offset and a scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g)
    mix = torch.eye(c) + 0.3 * torch.randn(c, c, generator=g) / c**0.5
    x = torch.einsum("dc,nchw->ndhw", mix, x)
    x = x + 0.4 * torch.roll(x, 1, dims=3)
    return 2 * x + 3


def identity_weights(layer: DeconvConv2d) -> None:
    """Make output channel j the j-th whitened patch column (of its group)."""
    k, cin = layer.kernel_size, layer.in_ch // layer.groups
    eye = torch.eye(cin * k * k).reshape(cin * k * k, cin, k, k)
    with torch.no_grad():
        layer.weight.copy_(eye.repeat(layer.groups, 1, 1, 1))
        layer.bias.zero_()


def whitened_covariances(layer: DeconvConv2d, x: torch.Tensor) -> torch.Tensor:
    """Covariance of the layer's whitened patches, measured on its training-mode output at the
    sampled positions: [G, nf, nf] per group, or the reference's pooled block covariance [1, nf, nf]."""
    identity_weights(layer)
    with torch.no_grad():
        y = layer.train()(x)
    if layer.kernel_size > 1:
        y = y[:, :, :: layer.sampling_stride, :: layer.sampling_stride]
    cols = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    if layer.kernel_size == 1:
        cols = cols[:: layer.sampling_stride**2]
    nf = layer.num_features
    if layer.groups == 1:  # interleaved channel blocks pooled as extra samples
        cols = cols.reshape(-1, nf, layer.n_blocks).transpose(1, 2).reshape(-1, 1, nf)
    else:
        cols = cols.reshape(-1, layer.groups, nf)
    cols = (cols - cols.mean(0)).transpose(0, 1).double()
    return cols.transpose(1, 2) @ cols / cols.shape[1]


def max_off_identity(cov: torch.Tensor) -> float:
    return (cov - torch.eye(cov.shape[-1], dtype=cov.dtype)).abs().max().item()


def test_newton_schulz_converges_to_the_inverse_square_root():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 20, 20, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) / 20 + 0.5 * torch.eye(20, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(spd)
    exact = vecs @ torch.diag_embed(vals.rsqrt()) @ vecs.transpose(1, 2)
    torch.testing.assert_close(isqrt_newton_schulz(spd, 30), exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(isqrt_newton_schulz(spd[0], 30), exact[0], rtol=0, atol=1e-10)


def textbook_isqrt(a: torch.Tensor, n_iter: int) -> torch.Tensor:
    """The reference's loop as it is written: 3 products an iteration."""
    norm = a.flatten(-2).norm(dim=-1)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a)
    y, z = a / norm, eye
    for _ in range(n_iter):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / norm.sqrt()


def covariance(shape: tuple[int, ...], seed: int, repeated: bool = False) -> torch.Tensor:
    """A float64 patch covariance (plus the layer's eps) of condition ~1e3, or one whose spectrum
    has exactly repeated eigenvalues (a block-diagonal copy), where divided differences are
    derivatives."""
    g = torch.Generator().manual_seed(seed)
    *batch, n = shape
    x = torch.randn(*batch, 3 * n, n, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.03, 1.0, n, dtype=torch.float64)
    a = x.mT @ x / (3 * n) + 1e-5 * torch.eye(n, dtype=torch.float64)
    if repeated:
        a = torch.block_diag(a[..., : n // 2, : n // 2], a[..., : n // 2, : n // 2])
    return a


@pytest.mark.parametrize("shape, repeated", [((45,), False), ((130,), False), ((3, 20), False),
                                             ((40,), True)])
def test_both_ways_are_the_reference_iterations_and_their_gradient(shape, repeated):
    # float64: the trimmed products are the textbook loop to the last bit; the spectral way (the
    # polynomial through eigh, Daleckii-Krein gradient) equals it to round-off, forward and backward
    a = covariance(shape, seed=len(shape), repeated=repeated)
    grad_out = torch.randn(a.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = {}
    for way in ("textbook", "products", "spectral"):
        leaf = a.clone().requires_grad_()
        z = textbook_isqrt(leaf, 5) if way == "textbook" else isqrt_newton_schulz(leaf, 5, way)
        (z * grad_out).sum().backward()
        results[way] = (z.detach(), leaf.grad)
    assert torch.equal(results["products"][0], results["textbook"][0])
    for got, want in zip(results["spectral"], results["textbook"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11 * want.abs().max().item())
    assert results["textbook"][0].abs().max() > 1  # not whitening already-white input


def test_spectral_gradient_equals_finite_differences():
    # eigh reads one triangle, so the finite differences are taken along symmetric directions
    a = covariance((12,), seed=3).requires_grad_()
    for n_iter in (1, 5):
        def spectral(m: torch.Tensor, k: int = n_iter) -> torch.Tensor:
            return isqrt_newton_schulz((m + m.mT) / 2, k, "spectral")
        assert torch.autograd.gradcheck(spectral, (a,))


def test_auto_is_spectral_on_the_cpu_from_its_size_and_float32_is_as_accurate():
    a = covariance((SPECTRAL_MIN_SIZE,), seed=4)
    exact = textbook_isqrt(a, 5)
    errors = {way: (isqrt_newton_schulz(a.float(), 5, way).double() - exact).abs().max().item()
              for way in ("products", "spectral", "auto")}
    assert errors["auto"] == errors["spectral"] != errors["products"]
    assert errors["spectral"] < 3e-6 * exact.abs().max().item()
    assert errors["spectral"] < 2 * errors["products"]
    with pytest.raises(ValueError, match="unknown Newton-Schulz method"):
        isqrt_newton_schulz(a, 5, "svd")


@pytest.mark.parametrize(
    "in_ch, kwargs",
    [
        (5, {}),  # the hybrid stem: one 45x45 covariance
        (5, {"stride": 2, "padding": 1}),
        (8, {"block": 4}),  # two interleaved blocks sharing one 36x36 covariance
        (8, {"groups": 2}),  # one 36x36 covariance per group
        (6, {"kernel_size": 1}),
    ],
)
def test_whitened_patch_covariance_is_identity(in_ch, kwargs):
    # Converged (12 iterations): float32 round-off only. The inputs' raw patch covariances are
    # 3-7 away from identity (max abs entry), so 1e-3 can only pass if the layer really whitens.
    x = correlated_images(c=in_ch)
    k = kwargs.pop("kernel_size", 3)
    layer = DeconvConv2d(in_ch, in_ch * k * k, k, n_iter=12, **kwargs)
    cov = whitened_covariances(layer, x)
    assert max_off_identity(cov) < 1e-3


def test_five_iterations_whiten_as_newton_schulz_predicts():
    # 5 iterations (the default) are approximate: every eigenvalue mu of the Frobenius-normalised
    # covariance becomes mu * z(mu)^2, with z the scalar Newton-Schulz recursion. For this input
    # (45x45, condition ~11) that leaves the whitened covariance ~0.07 from identity.
    x = correlated_images(c=5)
    layer = DeconvConv2d(5, 45, 3)
    patches = layer.patches(x).double()
    patches = patches - patches.mean(0)
    raw = patches.T @ patches / patches.shape[0] + layer.eps * torch.eye(45, dtype=torch.float64)
    mu = torch.linalg.eigvalsh(raw) / raw.norm()
    y, z = mu.clone(), torch.ones_like(mu)
    for _ in range(5):
        t = 0.5 * (3 - z * y)
        y, z = y * t, t * z
    predicted = mu * z**2
    measured = torch.linalg.eigvalsh(whitened_covariances(layer, x)[0])
    torch.testing.assert_close(measured, predicted, rtol=0, atol=2e-3)
    assert 0.01 < max_off_identity(whitened_covariances(layer, x)) < 0.1 < max_off_identity(raw)


def test_running_statistics_track_mean_and_inverse_sqrt():
    x = correlated_images(c=5)
    layer = DeconvConv2d(5, 8, 3, momentum=1.0).train()
    mean, deconv = layer.whitening(x)
    layer(x)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_deconv, deconv)
    assert abs(layer.running_mean.mean().item() - 3.0) < 0.2  # the images' offset

    half = DeconvConv2d(5, 8, 3, momentum=0.1).train()
    half(x)
    torch.testing.assert_close(half.running_deconv, 0.9 * torch.eye(45) + 0.1 * deconv)


@pytest.mark.parametrize(
    "in_ch, out_ch, kwargs",
    [
        (5, 32, {"padding": 1}),
        (5, 7, {"stride": 2, "padding": 1}),
        (128, 16, {"padding": 1}),  # 2 blocks of 64
        (96, 8, {}),  # block gcd(64, 96) = 32
        (8, 12, {"groups": 2, "stride": 2, "padding": 1}),
        (64, 64, {"groups": 64, "padding": 1}),  # the xresnet block's first conv
        (128, 32, {"kernel_size": 1}),
    ],
)
def test_eval_output_equals_folded_conv(in_ch, out_ch, kwargs):
    torch.manual_seed(0)
    k = kwargs.pop("kernel_size", 3)
    layer = DeconvConv2d(in_ch, out_ch, k, **kwargs)
    for seed in range(3):
        layer(correlated_images(n=4, c=in_ch, size=16, seed=seed))
    x = correlated_images(n=4, c=in_ch, size=16, seed=9)
    expected = layer.eval()(x)
    conv = layer.fold()
    assert type(conv) is torch.nn.Conv2d
    assert conv.stride == (layer.stride,) * 2 and conv.groups == layer.groups
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, DeconvConv2d) for m in fold_deconv(torch.nn.Sequential(layer)).modules())


def test_fresh_layer_in_eval_is_the_plain_conv():
    layer = DeconvConv2d(4, 6, 3, padding=1).eval()
    x = torch.randn(2, 4, 10, 10)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1))


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "padding": 1}, {"groups": 2}])
def test_gradients_flow_through_whitening(kwargs):
    # float64 gradcheck: the analytic gradient (through the conv AND the batch statistics:
    # mean, covariance, Newton-Schulz) equals finite differences.
    torch.manual_seed(0)
    layer = DeconvConv2d(2, 4, 3, sampling_stride=1, **kwargs).double().train()
    x = (torch.randn(2, 2, 7, 7, dtype=torch.float64) + 1).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)
    layer(x).square().sum().backward()
    for grad in (x.grad, layer.weight.grad, layer.bias.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, out_hw",
    [({}, 14), ({"padding": 1}, 16), ({"stride": 2}, 7), ({"stride": 2, "padding": 1}, 8),
     ({"groups": 2, "padding": 1}, 16)],
)
def test_output_shapes(kwargs, out_hw):
    layer = DeconvConv2d(4, 6, 3, **kwargs)
    x = torch.randn(3, 4, 16, 16)
    assert layer.train()(x).shape == (3, 6, out_hw, out_hw)
    assert layer.eval()(x).shape == (3, 6, out_hw, out_hw)


def test_blocks_and_parameters_follow_the_reference():
    assert DeconvConv2d(5, 32, 3).num_features == 45
    assert DeconvConv2d(32, 32, 3).num_features == 288
    big = DeconvConv2d(256, 256, 3)
    assert (big.block, big.n_blocks, big.running_deconv.shape) == (64, 4, (576, 576))
    grouped = DeconvConv2d(64, 128, 3, groups=64)
    assert grouped.running_deconv.shape == (64, 9, 9) and grouped.running_mean.shape == (576,)
    # parameters are the conv's weight and bias only; statistics are buffers
    assert sum(p.numel() for p in DeconvConv2d(5, 32, 3).parameters()) == 5 * 32 * 9 + 32
    assert set(dict(big.named_buffers())) == {"running_mean", "running_deconv"}


def test_bad_groups_is_an_input_error():
    with pytest.raises(InputError, match="divisible by groups"):
        DeconvConv2d(6, 8, 3, groups=4)



def textbook_layer(layer: DeconvConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's training output from the plain formulas: X^T X / M and the reference's loop."""
    cols = layer.patches(x)
    mean = cols.mean(0)
    cols = cols - mean
    if layer.groups > 1:
        cols = cols.reshape(-1, layer.groups, layer.num_features).transpose(0, 1)
    eye = torch.eye(layer.num_features, dtype=x.dtype)
    deconv = textbook_isqrt(cols.mT @ cols / cols.shape[-2] + layer.eps * eye, layer.n_iter)
    w, b = layer._folded(mean, deconv)
    return F.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups)


@pytest.mark.parametrize("in_ch, groups", [(16, 1), (8, 2)])
def test_training_step_equals_the_textbook_whitening_forward_and_backward(in_ch, groups):
    # float64; 16 channels make a 144 x 144 covariance (spectral on the CPU), the grouped layer
    # small ones (products): the output and every gradient equal the plain formulas'
    torch.manual_seed(0)
    layer = DeconvConv2d(in_ch, 6, 3, padding=1, groups=groups).double().train()
    assert (layer.num_features >= SPECTRAL_MIN_SIZE) == (groups == 1)
    x = correlated_images(n=4, c=in_ch, size=12).double().requires_grad_()
    grads = []
    for fn in (layer, lambda x: textbook_layer(layer, x)):
        x.grad, layer.weight.grad, layer.bias.grad = None, None, None
        out = fn(x)
        out.square().sum().backward()
        grads.append((out.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * want.abs().max().item())
