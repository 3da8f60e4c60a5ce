"""What a predictive uncertainty means, and how well it holds: the calibrated predictive
distribution of one target, its intervals, and the statistics that test it.

A catalog's ``x_std`` is the predictive *1-sigma*: the half-width of the central 68.27% interval
around ``x``. Its shape is a Student-t with ``nu`` degrees of freedom, one ``nu`` per target
(Gaussian as ``nu`` grows): the ``k``-sigma interval, the one holding the Gaussian ``k``-sigma
probability (95.45% for k = 2, 99.73% for k = 3), is ``x +- interval_factor(nu, k) * x_std``.

The calibration of one target fits two numbers to the standardised residuals
``r = (observed - mean) / std`` of objects the network did not train on: ``scale``, the 68.27%
quantile of ``|r|`` (so that ``scale * std`` covers 68.27%), and ``nu``, chosen so that the t's
95.45% quantile of ``|r| / scale`` matches the data's too. So 1 and 2 sigma hold by construction
on the fitting objects, and 3 sigma as far as the t's tail is the data's; a heavy tail (a few
objects whose spectrum the image cannot tell) gives a small ``nu`` rather than an inflated
scale for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from galspec_batch.errors import InputError

SIGMAS = (1, 2, 3)
NU_MIN, NU_MAX = 1.0, 1000.0  # a Cauchy at most; a t of 1000 dof is a Gaussian to 0.1%


def gaussian_coverage(k: float | np.ndarray) -> float | np.ndarray:
    """The probability of a Gaussian within ``k`` sigma of its mean (0.6827 for k = 1)."""
    return special.erf(np.asarray(k, np.float64) / np.sqrt(2))


def _t_quantile(p: float | np.ndarray, nu: float | np.ndarray) -> np.ndarray:
    """The ``p`` quantile of the t distribution with ``nu`` dof, Gaussian at NU_MAX."""
    nu = np.asarray(nu, np.float64)
    return np.where(nu >= NU_MAX, special.ndtri(p), stats.t.ppf(p, np.minimum(nu, NU_MAX)))


def one_sigma(nu: float | np.ndarray) -> np.ndarray:
    """Half-width of the central 68.27% interval of a standard t with ``nu`` dof (1 for a Gaussian)."""
    return _t_quantile((1 + gaussian_coverage(1.0)) / 2, nu)


def central_factor(nu: float | np.ndarray, q: float) -> np.ndarray:
    """Half-width of the central interval of probability ``q`` in units of the 1-sigma, for ``nu`` dof."""
    return _t_quantile((1 + q) / 2, nu) / one_sigma(nu)


def interval_factor(nu: float | np.ndarray, k: float) -> np.ndarray:
    """Half-width of the ``k``-sigma interval in units of the 1-sigma one, for ``nu`` dof."""
    return central_factor(nu, gaussian_coverage(k))


def standardized(true: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(true - mean) / std`` [N, L], NaN where any of them is not finite or std <= 0."""
    true, mean, std = (np.asarray(a, np.float64) for a in (true, mean, std))
    if not true.shape == mean.shape == std.shape:
        raise InputError(f"true {true.shape}, mean {mean.shape} and std {std.shape} must have one shape")
    if true.ndim == 1:
        true, mean, std = true[:, None], mean[:, None], std[:, None]
    bad = ~(np.isfinite(true) & np.isfinite(mean) & np.isfinite(std) & (std > 0))
    if bad.all(axis=0).any():
        raise InputError("a target has no object with finite values and std > 0")
    return np.where(bad, np.nan, (true - mean) / np.where(bad, 1.0, std))


def fit_t(r: np.ndarray) -> tuple[float, float]:
    """(scale, nu) of one target's standardised residuals (see the module docstring)."""
    a = np.abs(np.asarray(r, np.float64))
    a = a[np.isfinite(a)]
    if a.size < 10:
        raise InputError(f"a calibration needs at least 10 objects with finite residuals, got {a.size}")
    scale = float(np.quantile(a, gaussian_coverage(1.0)))
    if scale <= 0:
        raise InputError("more than 68% of the residuals are exactly zero; nothing to calibrate")
    ratio = float(np.quantile(a, gaussian_coverage(2.0))) / scale
    f = lambda log_nu: float(interval_factor(np.exp(log_nu), 2)) - ratio  # noqa: E731
    lo, hi = np.log(NU_MIN), np.log(NU_MAX)
    if f(hi) >= 0:
        return scale, NU_MAX  # tails no heavier than a Gaussian's
    if f(lo) <= 0:
        return scale, NU_MIN
    return scale, float(np.exp(optimize.brentq(f, lo, hi, xtol=1e-6)))


def coverage(r_cal: np.ndarray, nu: np.ndarray, k: float) -> np.ndarray:
    """Per-target fraction of ``|r_cal| <= interval_factor(nu, k)`` (NaN rows left out), for
    residuals standardised by the calibrated 1-sigma."""
    r_cal = np.atleast_2d(np.asarray(r_cal, np.float64).T).T
    inside = np.abs(r_cal) <= interval_factor(np.asarray(nu, np.float64), k)
    return np.nanmean(np.where(np.isnan(r_cal), np.nan, inside), axis=0)


def pit(r_cal: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """The probability integral transform of each observed value under its predictive
    distribution: uniform on [0, 1] when the distribution is right."""
    nu = np.asarray(nu, np.float64)
    x = np.asarray(r_cal, np.float64) * one_sigma(nu)
    return np.where(nu >= NU_MAX, special.ndtr(x), stats.t.cdf(x, np.minimum(nu, NU_MAX)))


@dataclass(frozen=True)
class Assessment:
    """How well a set of predictive distributions holds on objects with observed values."""

    names: list[str]
    n: int
    coverage: dict[int, np.ndarray]  # k -> per-target fraction within the k-sigma interval
    pit_ks: np.ndarray  # per target: the KS distance of the PIT from uniform
    ks_critical: float  # its 5% critical value for n objects
    spearman: np.ndarray  # per target: rank correlation of |error| with the predicted std

    def table(self) -> str:
        """Plain text, one row per target."""
        head = (f"{'target':<10}" + "".join(f"{f'{k}-sigma':>9}" for k in SIGMAS)
                + f"{'PIT KS':>9}{'Spearman':>10}")
        expected = (f"{'expected':<10}" + "".join(f"{gaussian_coverage(k):9.3f}" for k in SIGMAS)
                    + f"{f'<{self.ks_critical:.3f}':>9}{'>0':>10}")
        rows = [f"{name:<10}" + "".join(f"{self.coverage[k][i]:9.3f}" for k in SIGMAS)
                + f"{self.pit_ks[i]:9.3f}{self.spearman[i]:10.3f}" for i, name in enumerate(self.names)]
        return "\n".join([head, *rows, expected, f"({self.n} objects)"])

    def record(self) -> dict:
        """JSON-ready numbers."""
        return {"n": self.n, "coverage": {str(k): self.coverage[k].tolist() for k in SIGMAS},
                "pit_ks": self.pit_ks.tolist(), "ks_critical_5pct": self.ks_critical,
                "spearman_abs_error_std": self.spearman.tolist(), "targets": self.names}


def assess(names: list[str], true: np.ndarray, mean: np.ndarray, std: np.ndarray,
           nu: np.ndarray | None = None) -> Assessment:
    """Coverage at 1, 2 and 3 sigma, PIT KS and Spearman(|error|, std) of calibrated 1-sigma
    ``std`` with t shapes ``nu`` (Gaussian when None)."""
    r = standardized(true, mean, std)
    nu = np.full(r.shape[1], NU_MAX) if nu is None else np.asarray(nu, np.float64)
    u = pit(r, nu)
    ks = np.array([stats.kstest(u[np.isfinite(u[:, i]), i], "uniform").statistic for i in range(r.shape[1])])
    err = np.abs(np.asarray(true, np.float64) - np.asarray(mean, np.float64)).reshape(r.shape)
    sd = np.asarray(std, np.float64).reshape(r.shape)
    rho = np.array([stats.spearmanr(err[ok, i], sd[ok, i]).statistic
                    if (ok := np.isfinite(r[:, i])).sum() > 2 and np.ptp(sd[ok, i]) > 0 else np.nan
                    for i in range(r.shape[1])])  # a constant std ranks nothing
    n = int(np.isfinite(r).all(axis=1).sum())
    return Assessment(list(names), n, {k: coverage(r, nu, k) for k in SIGMAS}, ks,
                      float(1.358 / np.sqrt(max(n, 1))), rho)
