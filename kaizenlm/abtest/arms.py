"""Sufficient statistics of one arm of an A/B experiment, the base of the statistics modules.

The controller computes them with one SQL ``GROUP BY`` per arm: `ArmStats` (one value per
unit), `RatioArmStats` (a per-turn metric randomised by user: delta-method variance over
users) and `LatencyStats` (p95 latency and its neighbours). Every field may be a numpy
array (one entry per simulated experiment or per peek), so the benchmark runs thousands of
simulated experiments through exactly this code. `jsonable` turns results into plain JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

P95_LEVELS = (0.93, 0.95, 0.97)
"""Quantile levels the controller reports for latency: the p95 and its neighbours (density estimate)."""

Array = np.ndarray | float


def jsonable(x: object) -> object:
    """Plain JSON types from nested mappings, sequences and numpy values (NaN/inf -> None)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: count, sum and sum of squares of the unit values.

    The controller gets them with ``SELECT variant, count(*), sum(x), sum(x*x) ... GROUP BY
    variant``. ``binary=True`` marks a 0/1 metric: its variance is taken from the smoothed
    proportion ``(sum+1)/(n+2)`` so that 0 events out of n does not read as "no uncertainty".
    Fields may be numpy arrays (one entry per simulated experiment or per peek).
    """

    n: Array
    sum: Array
    sum_sq: Array
    binary: bool = False

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray, binary: bool = False) -> ArmStats:
        x = np.asarray(values, dtype=float)
        return cls(n=int(x.size), sum=float(x.sum()), sum_sq=float((x * x).sum()), binary=binary)

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq, self.binary)

    @property
    def mean(self) -> Array:
        n = np.asarray(self.n, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.asarray(self.sum, dtype=float) / np.maximum(n, 1), 0.0)[()]

    @property
    def variance(self) -> Array:
        """Unit variance: unbiased sample variance, or p~(1-p~) for a binary metric."""
        n = np.asarray(self.n, dtype=float)
        if self.binary:
            p = (np.asarray(self.sum, dtype=float) + 1.0) / (n + 2.0)
            return (p * (1.0 - p))[()]
        s = np.asarray(self.sum, dtype=float)
        ss = np.asarray(self.sum_sq, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (ss - s * s / np.maximum(n, 1)) / np.maximum(n - 1, 1)
        return np.where(n > 1, np.maximum(var, 0.0), np.nan)[()]

    @property
    def var_mean(self) -> Array:
        """Variance of the arm's mean (variance / n)."""
        n = np.asarray(self.n, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.variance / np.maximum(n, 1), np.nan)[()]


@dataclass(frozen=True)
class RatioArmStats:
    """Sufficient statistics of a per-event metric when the randomisation unit is the user.

    Turns of one user are correlated, so the per-turn mean ``sum_y / sum_n`` (e.g. the
    per-turn reward, or the error rate over turns) gets its variance from the delta method
    over users: with per-user totals ``Y_u`` (metric) and ``N_u`` (turns),
    ``units = count(*)``, ``sum_y = sum(Y_u)``, ``sum_n = sum(N_u)``, ``sum_y2 = sum(Y_u^2)``,
    ``sum_n2 = sum(N_u^2)``, ``sum_yn = sum(Y_u*N_u)`` -- one ``GROUP BY variant`` over a
    per-user subquery. With one turn per user it equals :class:`ArmStats`.
    """

    units: Array
    sum_y: Array
    sum_n: Array
    sum_y2: Array
    sum_n2: Array
    sum_yn: Array
    binary: bool = False

    @classmethod
    def from_units(cls, y: Sequence[float], n: Sequence[float], binary: bool = False) -> RatioArmStats:
        y_ = np.asarray(y, dtype=float)
        n_ = np.asarray(n, dtype=float)
        return cls(int(y_.size), float(y_.sum()), float(n_.sum()), float((y_ * y_).sum()),
                   float((n_ * n_).sum()), float((y_ * n_).sum()), binary)

    @property
    def n(self) -> Array:
        return self.units

    @property
    def mean(self) -> Array:
        sn = np.asarray(self.sum_n, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sn > 0, np.asarray(self.sum_y, dtype=float) / np.maximum(sn, 1e-300), 0.0)[()]

    @property
    def var_mean(self) -> Array:
        k = np.asarray(self.units, dtype=float)
        k1 = np.maximum(k, 1)
        r = self.mean
        mu_n = np.asarray(self.sum_n, dtype=float) / k1
        dof = np.maximum(k - 1, 1)
        var_y = (np.asarray(self.sum_y2, dtype=float) - np.asarray(self.sum_y, dtype=float) ** 2 / k1) / dof
        var_n = (np.asarray(self.sum_n2, dtype=float) - np.asarray(self.sum_n, dtype=float) ** 2 / k1) / dof
        cov = (np.asarray(self.sum_yn, dtype=float) - np.asarray(self.sum_y, dtype=float) * mu_n) / dof
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.maximum(var_y - 2 * r * cov + r * r * var_n, 0.0) / (k1 * mu_n * mu_n)
            if self.binary:  # same guard as ArmStats: never less than a smoothed binomial variance
                p = (np.asarray(self.sum_y, dtype=float) + 1.0) / (np.asarray(self.sum_n, dtype=float) + 2.0)
                v = np.maximum(v, p * (1 - p) / np.maximum(np.asarray(self.sum_n, dtype=float), 1))
        return np.where(k > 1, v, np.nan)[()]


Arm = ArmStats | RatioArmStats


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one arm: turn count and the quantiles at :data:`P95_LEVELS`.

    The controller reads them with ``quantile_cont(latency_ms, [0.93, 0.95, 0.97])``. The
    outer two estimate the density at the p95 (Siddiqui-Bloch-Gastwirth), which gives the
    p95's standard error: ``Var(q95) = 0.95*0.05 / (n f^2)`` with ``1/f = (q97-q93)/0.04``.
    """

    n: Array
    q_lo: Array
    q: Array
    q_hi: Array
    levels: tuple[float, float, float] = P95_LEVELS

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray, levels: tuple[float, float, float] = P95_LEVELS) -> LatencyStats:
        x = np.asarray(values, dtype=float)
        if x.size == 0:
            return cls(0, math.nan, math.nan, math.nan, levels)
        lo, q, hi = np.quantile(x, levels)
        return cls(int(x.size), float(lo), float(q), float(hi), levels)

    @property
    def var_log_q(self) -> Array:
        """Variance of log(p95) by the delta method."""
        lo, p, hi = self.levels
        n = np.asarray(self.n, dtype=float)
        q = np.asarray(self.q, dtype=float)
        inv_f = (np.asarray(self.q_hi, dtype=float) - np.asarray(self.q_lo, dtype=float)) / (hi - lo)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = p * (1 - p) * inv_f * inv_f / (np.maximum(n, 1) * q * q)
        return np.where((n > 1) & (q > 0), v, np.nan)[()]
