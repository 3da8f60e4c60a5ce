"""The spectrum VAE of Portillo et al. (2020, AJ 160, 45): an InfoVAE on rest-frame spectra.

Fully connected 1000 -> 549 -> 110 -> latent (mean and log-variance), a mirrored decoder,
LeakyReLU between layers. The loss is the InfoVAE objective of Zhao et al. (2019),

    L = recon + (1 - alpha) * KL(q(z|x) || N(0, I)) + (alpha + lambda - 1) * MMD(q(z), N(0, I)),

with recon the Gaussian negative log-likelihood 0.5 * sum_pixels w * (x - x_hat)^2 (w = pixel
weights, the inverse variances). Portillo et al. used alpha = 0 (full KL weight) and a large lambda.
The network works on mean-subtracted spectra; it knows nothing of files or tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VAEArch", "SpectrumVAE", "VAELoss", "mmd_rbf", "gaussian_kl", "infovae_loss"]


@dataclass(frozen=True)
class VAEArch:
    """The shape of a spectrum VAE."""

    n_pix: int = 1000
    hidden: tuple[int, ...] = (549, 110)
    n_latent: int = 6
    negative_slope: float = 0.01

    def to_dict(self) -> dict:
        return {"n_pix": self.n_pix, "hidden": list(self.hidden), "n_latent": self.n_latent,
                "negative_slope": self.negative_slope}

    @classmethod
    def from_dict(cls, d: dict) -> VAEArch:
        return cls(n_pix=int(d["n_pix"]), hidden=tuple(int(h) for h in d["hidden"]),
                   n_latent=int(d["n_latent"]), negative_slope=float(d["negative_slope"]))


def _mlp(sizes: list[int], negative_slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*layers)


class SpectrumVAE(nn.Module):
    """Encoder x -> (mu, logvar), decoder z -> x_hat; x is a mean-subtracted spectrum."""

    def __init__(self, arch: VAEArch = VAEArch()):
        super().__init__()
        self.arch = arch
        enc = [arch.n_pix, *arch.hidden]
        self.encoder = nn.Sequential(_mlp(enc, arch.negative_slope), nn.LeakyReLU(arch.negative_slope))
        self.to_mu = nn.Linear(enc[-1], arch.n_latent)
        self.to_logvar = nn.Linear(enc[-1], arch.n_latent)
        self.decoder = _mlp([arch.n_latent, *reversed(arch.hidden), arch.n_pix], arch.negative_slope)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x_hat, z, mu, logvar), z drawn from q(z|x) by reparameterisation."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), z, mu, logvar


def mmd_rbf(z: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Biased (V-statistic) squared MMD between two samples with an RBF kernel of variance dim.

    A bandwidth equal to the latent dimension matches the typical squared distance (2 * dim)
    between draws of N(0, I), so the kernel is neither saturated nor flat.
    """
    dim = z.shape[1]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2.0 * dim))

    return k(z, z).mean() + k(prior, prior).mean() - 2.0 * k(z, prior).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per object, summed over latents."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


@dataclass(frozen=True)
class VAELoss:
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    mmd: torch.Tensor


def infovae_loss(
    x: torch.Tensor,
    weight: torch.Tensor,
    x_hat: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior: torch.Tensor,
    alpha: float = 0.0,
    lam: float = 1000.0,
) -> VAELoss:
    """InfoVAE objective, averaged over the batch (recon and KL per object, MMD over the batch)."""
    recon = 0.5 * (weight * (x - x_hat).pow(2)).sum(dim=1).mean()
    kl = gaussian_kl(mu, logvar).mean()
    mmd = mmd_rbf(z, prior)
    total = recon + (1.0 - alpha) * kl + (alpha + lam - 1.0) * mmd
    return VAELoss(total=total, recon=recon, kl=kl, mmd=mmd)
