"""The gaussian head and its beta-NLL: the variance learns the noise, the mean is not traded away."""

from __future__ import annotations

import math

import pytest
import torch

from galspec_batch.models.heads import VAR_FLOOR, beta_nll, head_loss, head_width, split_head


def test_split_and_widths():
    out = torch.tensor([[1.0, -2.0, 0.0, 30.0]])
    mean, var = split_head(out, "gaussian", 2)
    assert mean.tolist() == [[1.0, -2.0]]
    assert var[0, 0].item() == pytest.approx(math.log(2) + VAR_FLOOR)  # softplus(0)
    assert var[0, 1].item() == pytest.approx(30.0 + VAR_FLOOR)
    assert split_head(out, "point", 4)[1] is None
    assert head_width("gaussian", 7) == 14 and head_width("point", 7) == 7
    with pytest.raises(ValueError, match="has 6 outputs, got 4"):
        split_head(out, "gaussian", 3)


def test_beta_nll_is_the_gaussian_nll_at_beta_zero_and_weighted_by_the_variance():
    mean, var, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]), torch.tensor([1.0, -1.0])
    nll = 0.5 * (torch.log(var) + (y - mean) ** 2 / var)
    assert beta_nll(mean, var, y, 0.0).item() == pytest.approx(nll.mean().item())
    assert beta_nll(mean, var, y, 0.5).item() == pytest.approx((nll * var.sqrt()).mean().item())


def test_a_gaussian_head_learns_heteroscedastic_noise():
    """y = x + noise whose std grows with |x|: the learned variance follows it, and the mean is
    as good as the RMSE-trained one."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 1, generator=g) * 4 - 2
    sigma = 0.05 + 0.4 * x.abs()
    y = x + sigma * torch.randn(2000, 1, generator=g)

    def train(loss: str) -> torch.nn.Module:
        torch.manual_seed(0)
        width = 1 if loss == "rmse" else 2
        net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, width))
        opt = torch.optim.Adam(net.parameters(), 0.02)
        for _ in range(600):
            value, _ = head_loss(net(x), y, loss)
            opt.zero_grad()
            value.backward()
            opt.step()
        return net

    gaussian, point = train("beta-nll"), train("rmse")
    with torch.no_grad():
        mean, var = split_head(gaussian(x), "gaussian", 1)
        ratio = var.sqrt() / sigma
        assert ratio.median().item() == pytest.approx(1.0, abs=0.15)
        corr = torch.corrcoef(torch.stack([var.sqrt()[:, 0], sigma[:, 0]]))[0, 1]
        assert corr > 0.9
        rmse_g = ((mean - x) ** 2).mean().sqrt().item()
        rmse_p = ((point(x) - x) ** 2).mean().sqrt().item()
        assert rmse_g < rmse_p + 0.03
