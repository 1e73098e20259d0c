"""A/B statistics: always-valid sequential test, sample-ratio mismatch, guardrails.

Pure functions: no I/O, no clock, no global state. Every function takes sufficient
statistics that the controller computes with one SQL ``GROUP BY`` per arm, and every core
computation accepts numpy arrays as well as scalars, so the benchmark runs thousands of
simulated experiments through exactly this code (``benchmarks/abtest_power.py``).

The primary test is a mixture sequential probability ratio test (mSPRT; Robbins 1970,
Johari et al. 2017 "Always valid inference") on the difference in means, challenger minus
champion, for binary and continuous metrics. Its evidence ``Lambda_n`` is a non-negative
martingale of mean 1 under "no difference", so by Ville's inequality
``P(Lambda_n >= 1/alpha for some n) <= alpha``: the p-value ``1/Lambda_n`` and the confidence
interval obtained by inverting the test may be looked at after every observation and the
false-positive rate stays at most alpha. The mixing distribution is
``theta ~ w N(+mde, tau^2) + (1 - w) N(-mde, tau^2)`` with ``tau = mde/4``: mass where the
effects that matter are, most of it (w = 0.8 by default) on "the challenger is better". ``center=0`` gives Johari's zero-centred normal mixture. An
always-valid futility rule stops experiments whose effect is evidently smaller than the
MDE. docs/STATISTICS.md explains the choices and gives the measured error rates and
sample sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special as _spc
from scipy import stats as _sps

# Mixing distribution of the primary test, in units of the minimum detectable effect.
MIXTURE_CENTER_MDE = 1.0
"""Components sit at +-MDE: the log-likelihood ratio then grows fastest for effects near the MDE."""
MIXTURE_TAU_MDE = 0.25
"""Spread of each component; > 0 so the confidence interval keeps shrinking as data arrive."""

SRM_THRESHOLD = 0.001
"""Chi-square p-value under which the observed split counts as a sample-ratio mismatch."""

P95_LEVELS = (0.93, 0.95, 0.97)
"""Quantile levels the controller reports for latency: the p95 and its neighbours (density estimate)."""

_VAR_FLOOR = 1e-18

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


# --------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Mixture likelihood ratio, always-valid p-value and confidence sequence
# --------------------------------------------------------------------------------------


def mixture_log_lr(effect: Array, var: Array, center: float, tau: float, weight_up: float = 0.5) -> Array:
    """log Lambda: mixture likelihood ratio of an estimate ``effect ~ N(theta, var)``.

    The mixing distribution is ``w N(+center, tau^2) + (1 - w) N(-center, tau^2)`` against
    ``theta = 0``, with ``w = weight_up``. ``center = 0`` is Johari et al.'s normal mixture:
    ``1/2 log(v/(v+tau^2)) + effect^2 tau^2 / (2 v (v+tau^2))``; ``tau = 0`` is Wald's SPRT
    against the two points +-center. Convex in ``effect`` for fixed ``var``; symmetric when w = 1/2.
    """
    x = np.asarray(effect, dtype=float)
    v = np.maximum(np.asarray(var, dtype=float), _VAR_FLOOR)
    w = v + tau * tau
    y = x * center / w
    m = np.abs(y)  # log(w e^y + (1-w) e^-y), computed without overflow
    log_mix = m + np.log(weight_up * np.exp(y - m) + (1.0 - weight_up) * np.exp(-y - m))
    return (0.5 * np.log(v / w) + x * x / (2 * v) - (x * x + center * center) / (2 * w) + log_mix)[()]


def mixture_halfwidth(var: Array, alpha: float, center: float, tau: float, weight_up: float = 0.5,
                      side: int = 1) -> Array:
    """Distance h from the estimate to one end of the confidence sequence: the solution of
    ``Lambda(side * h) = 1/alpha``. The sequence is the set of theta the test at level alpha
    would not reject, ``{theta : Lambda(effect - theta) < 1/alpha}``, i.e.
    ``[effect - h(side=+1), effect + h(side=-1)]`` (the two are equal when w = 1/2). It depends
    on the variance only, and is found by bisection (vectorised; Lambda is convex and below
    1/alpha at 0, so the crossing is unique)."""
    v = np.maximum(np.asarray(var, dtype=float), _VAR_FLOOR)
    target = math.log(1.0 / alpha)

    def below(h):
        return mixture_log_lr(side * h, v, center, tau, weight_up) < target

    lo = np.zeros_like(v)
    hi = abs(center) + 4.0 * np.sqrt(v + tau * tau) + 1e-12
    for _ in range(200):  # grow the bracket where needed (rarely more than a step or two)
        short = below(hi)
        if not np.any(short):
            break
        hi = np.where(short, hi * 2.0, hi)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        b = below(mid)
        lo = np.where(b, mid, lo)
        hi = np.where(b, hi, mid)
    return hi[()]


def mixture_for_mde(mde: float) -> tuple[float, float]:
    """(center, tau) of the primary test's mixing distribution for a minimum detectable effect."""
    return MIXTURE_CENTER_MDE * mde, MIXTURE_TAU_MDE * mde


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid test of challenger vs champion on one metric, at one look.

    ``effect`` is challenger minus champion. ``p_value`` and ``[ci_low, ci_high]`` are valid
    at any look (and so at the look where the controller stops). ``significant`` means
    ``p_value <= alpha``; ``direction`` is +1 (challenger better, i.e. higher), -1 or 0.
    ``futile`` means the data speak against an effect as large as the MDE in either
    direction (likelihood ratio of +-MDE vs 0 at most ``futility_beta``); it never fires on
    a significant result.
    """

    n_champion: Array
    n_challenger: Array
    mean_champion: Array
    mean_challenger: Array
    effect: Array
    std_error: Array
    log_lr: Array
    p_value: Array
    ci_low: Array
    ci_high: Array
    significant: Array
    direction: Array
    futile: Array
    alpha: float
    mde: float
    center: float
    tau: float
    futility_beta: float
    weight_up: float = 0.5  # results stored before the weight existed were symmetric

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping) -> SequentialResult:
        return cls(**{k: (math.nan if d[k] is None else d[k]) for k in cls.__dataclass_fields__ if k in d})


def _diff(champion: Arm, challenger: Arm) -> tuple[Array, Array]:
    effect = np.asarray(challenger.mean, dtype=float) - np.asarray(champion.mean, dtype=float)
    var = np.asarray(challenger.var_mean, dtype=float) + np.asarray(champion.var_mean, dtype=float)
    return effect, var


def sequential_test(
    champion: Arm,
    challenger: Arm,
    *,
    alpha: float = 0.05,
    mde: float,
    futility_beta: float = 0.3,
    weight_up: float = 0.5,
    center: float | None = None,
    tau: float | None = None,
    prior: SequentialResult | None = None,
    with_ci: bool = True,
) -> SequentialResult:
    """Always-valid test of the difference in means (challenger - champion).

    ``weight_up`` is the mixture's share on "the challenger is better" (the false-positive
    rate over both directions stays at most alpha for any share; docs/STATISTICS.md).
    ``center``/``tau`` default to :func:`mixture_for_mde`. ``prior`` is the previous look's
    result: the p-value becomes the running minimum and the interval the running
    intersection (both stay valid, and a significant result stays significant). Arrays in
    the arm statistics give arrays out (``with_ci=False`` skips the interval's bisection).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not mde > 0:
        raise ValueError(f"mde must be > 0, got {mde}")
    if not 0 < weight_up < 1:
        raise ValueError(f"weight_up must be in (0, 1), got {weight_up}")
    c0, t0 = mixture_for_mde(mde)
    center = c0 if center is None else center
    tau = t0 if tau is None else tau
    effect, var = _diff(champion, challenger)
    ok = np.isfinite(var) & (var >= 0)
    v = np.where(ok, np.maximum(var, _VAR_FLOOR), 1.0)
    log_lr = np.where(ok, mixture_log_lr(effect, v, center, tau, weight_up), 0.0)
    p = np.minimum(1.0, np.exp(-log_lr))
    if with_ci:
        h_low = np.where(ok, mixture_halfwidth(v, alpha, center, tau, weight_up, side=1), np.inf)
        # A symmetric mixture gives a symmetric interval: one bisection serves both ends.
        h_high = h_low if weight_up == 0.5 else np.where(
            ok, mixture_halfwidth(v, alpha, center, tau, weight_up, side=-1), np.inf)
        lo, hi = effect - h_low, effect + h_high
    else:
        lo = hi = np.full(np.shape(effect), np.nan)
    if prior is not None:
        p = np.minimum(p, prior.p_value)
        if with_ci:
            lo2, hi2 = np.maximum(lo, prior.ci_low), np.minimum(hi, prior.ci_high)
            keep = lo2 <= hi2  # empty intersection (probability <= alpha): fall back to this look
            lo, hi = np.where(keep, lo2, lo), np.where(keep, hi2, hi)
    significant = ok & (p <= alpha)
    # Direction: from the interval when there is one (it excludes 0 exactly when significant),
    # else from the sign of the estimate.
    if with_ci:
        direction = np.where(significant, np.where(lo > 0, 1, np.where(hi < 0, -1, np.sign(effect))), 0)
    else:
        direction = np.where(significant, np.sign(effect), 0)
    if futility_beta > 0:
        # log LR of theta = +-mde against 0, the larger of the two: (mde |effect| - mde^2/2) / var.
        fut_llr = (mde * np.abs(effect) - 0.5 * mde * mde) / v
        futile = ok & ~significant & (fut_llr <= math.log(futility_beta))
    else:
        futile = np.zeros(np.shape(effect), dtype=bool)
    return SequentialResult(
        n_champion=np.asarray(champion.n)[()], n_challenger=np.asarray(challenger.n)[()],
        mean_champion=np.asarray(champion.mean)[()], mean_challenger=np.asarray(challenger.mean)[()],
        effect=effect[()], std_error=np.sqrt(np.where(ok, var, np.nan))[()], log_lr=np.asarray(log_lr)[()],
        p_value=np.asarray(p)[()], ci_low=np.asarray(lo)[()], ci_high=np.asarray(hi)[()],
        significant=np.asarray(significant)[()], direction=np.asarray(direction).astype(int)[()],
        futile=np.asarray(futile)[()], alpha=alpha, mde=mde, center=center, tau=tau, futility_beta=futility_beta,
        weight_up=weight_up,
    )


def welch_t_test(champion: Arm, challenger: Arm) -> tuple[Array, Array]:
    """(t, two-sided p) of Welch's t-test: the fixed-horizon test, and the naive one when
    it is checked at every look. Vectorised like :func:`sequential_test`."""
    effect, var = _diff(champion, challenger)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = effect / np.sqrt(var)
        va = np.asarray(champion.var_mean, dtype=float)
        vb = np.asarray(challenger.var_mean, dtype=float)
        na = np.maximum(np.asarray(champion.n, dtype=float), 2)
        nb = np.maximum(np.asarray(challenger.n, dtype=float), 2)
        df = var * var / (va * va / (na - 1) + vb * vb / (nb - 1))
    p = 2 * _spc.stdtr(np.where(np.isfinite(df), df, 1.0), -np.abs(t))  # = 2 t.sf(|t|), without the overhead
    return t[()], np.where(np.isfinite(p), p, 1.0)[()]


# --------------------------------------------------------------------------------------
# Fixed-horizon baseline
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedHorizonPlan:
    """Sample size of a two-sided z-test with the given alpha and power at the MDE."""

    n_champion: int
    n_challenger: int
    alpha: float
    power: float
    mde: float
    sd: float
    split: float

    @property
    def n_total(self) -> int:
        return self.n_champion + self.n_challenger

    def to_dict(self) -> dict:
        return jsonable({**asdict(self), "n_total": self.n_total})


def fixed_horizon_sample_size(mde: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                              split: float = 0.5) -> FixedHorizonPlan:
    """n per arm for a fixed-horizon two-sided z-test: ``N = (z_{1-a/2} + z_power)^2 sd^2
    (1/s + 1/(1-s)) / mde^2`` in total, ``s`` the challenger's share (e.g. 1570 per arm for
    sd=1, mde=0.1, alpha=0.05, power=0.8, s=0.5)."""
    if not (mde > 0 and sd > 0 and 0 < alpha < 1 and 0 < power < 1 and 0 < split < 1):
        raise ValueError("need mde > 0, sd > 0, 0 < alpha, power, split < 1")
    z = _sps.norm.ppf(1 - alpha / 2) + _sps.norm.ppf(power)
    total = z * z * sd * sd * (1 / split + 1 / (1 - split)) / (mde * mde)
    return FixedHorizonPlan(math.ceil(total * (1 - split) - 1e-9), math.ceil(total * split - 1e-9),
                            alpha, power, mde, sd, split)


def fixed_horizon_power(effect: float, sd: float, n_per_arm: float, alpha: float = 0.05) -> float:
    """Power of the two-sided z-test with n per arm at a true effect (both directions counted)."""
    se = sd * math.sqrt(2.0 / n_per_arm)
    z = _sps.norm.ppf(1 - alpha / 2)
    return float(_sps.norm.sf(z - effect / se) + _sps.norm.cdf(-z - effect / se))


# --------------------------------------------------------------------------------------
# Sample-ratio mismatch
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness-of-fit of the observed assignment counts to the configured split."""

    counts: list[int]
    expected: list[float]
    chi2: float
    p_value: float
    flagged: bool
    threshold: float

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def _split_weights(expected_split: float | Sequence[float], k: int) -> np.ndarray:
    if np.ndim(expected_split) == 0:
        s = float(expected_split)  # type: ignore[arg-type]
        if k != 2 or not 0 < s < 1:
            raise ValueError("a scalar expected_split is the challenger's share (0 < s < 1) of two arms")
        w = np.array([1 - s, s])
    else:
        w = np.asarray(expected_split, dtype=float)
        if w.shape != (k,) or np.any(w <= 0):
            raise ValueError(f"expected_split needs {k} positive weights, got {expected_split!r}")
    return w / w.sum()


def srm_p_value(counts: np.ndarray, expected_split: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised chi-square SRM test over the last axis of ``counts``: (chi2, p)."""
    c = np.asarray(counts, dtype=float)
    w = _split_weights(expected_split, c.shape[-1])
    total = c.sum(axis=-1, keepdims=True)
    exp = total * w
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(total[..., 0] > 0, ((c - exp) ** 2 / np.where(exp > 0, exp, 1)).sum(axis=-1), 0.0)
    return chi2[()], np.asarray(_spc.chdtrc(c.shape[-1] - 1, chi2))[()]  # = chi2.sf, without the overhead


def srm_check(counts: Sequence[int], expected_split: float | Sequence[float],
              threshold: float = SRM_THRESHOLD) -> SRMResult:
    """Sample-ratio mismatch: are the assignment counts ``[champion, challenger]`` (users,
    the randomisation unit) consistent with the split? Flagged when the chi-square p-value
    is below ``threshold`` (0.001). ``expected_split`` is the challenger's share, or one
    weight per arm."""
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size < 2 or np.any(c < 0):
        raise ValueError(f"counts must be >= 2 non-negative numbers, got {counts!r}")
    chi2, p = srm_p_value(c, expected_split)
    w = _split_weights(expected_split, c.size)
    return SRMResult([int(x) for x in c], (w * c.sum()).tolist(), float(chi2), float(p),
                     bool(p < threshold), threshold)


# --------------------------------------------------------------------------------------
# Guardrails
# --------------------------------------------------------------------------------------

NON_INFERIOR = "non_inferior"
BREACH = "breach"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class GuardrailResult:
    """Non-inferiority of the challenger on one "lower is better" metric.

    ``effect`` is the degradation (challenger - champion; for latency ``log(p95_ch/p95_cp)``)
    with its always-valid interval. ``status``: ``breach`` when the whole interval lies above
    the margin (worse by more than the margin), ``non_inferior`` when it lies below the
    margin, ``inconclusive`` otherwise.
    """

    name: str
    margin_kind: str  # "absolute" or "relative"
    margin: float
    champion: float
    challenger: float
    effect: float
    ci_low: float
    ci_high: float
    n_champion: int
    n_challenger: int
    status: str
    alpha: float
    ratio: float | None = None  # latency: challenger p95 / champion p95
    ratio_ci: list[float] | None = None

    @property
    def breached(self) -> bool:
        return self.status == BREACH

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def _non_inferiority(effect: float, var: float, margin: float, alpha: float) -> tuple[float, float, str]:
    """Always-valid interval (zero-centred normal mixture, tau = margin) and its verdict."""
    if not (math.isfinite(effect) and math.isfinite(var)):
        return math.nan, math.nan, INCONCLUSIVE
    tau = margin if margin > 0 else math.sqrt(max(var, _VAR_FLOOR))
    h = float(mixture_halfwidth(max(var, _VAR_FLOOR), alpha, 0.0, tau))
    lo, hi = effect - h, effect + h
    status = BREACH if lo > margin else NON_INFERIOR if hi < margin else INCONCLUSIVE
    return lo, hi, status


def guardrail_rate(name: str, champion: Arm, challenger: Arm, margin: float, alpha: float = 0.05) -> GuardrailResult:
    """Absolute non-inferiority margin on a rate where lower is better (error rate,
    regenerate rate): breach when ``challenger - champion > margin`` with confidence."""
    effect, var = _diff(champion, challenger)
    lo, hi, status = _non_inferiority(float(effect), float(var), margin, alpha)
    return GuardrailResult(name, "absolute", margin, float(champion.mean), float(challenger.mean), float(effect),
                           lo, hi, int(champion.n), int(challenger.n), status, alpha)


def guardrail_latency(champion: LatencyStats, challenger: LatencyStats, relative_margin: float,
                      alpha: float = 0.05, name: str = "latency_p95") -> GuardrailResult:
    """Relative non-inferiority margin on the p95 latency: breach when
    ``p95_challenger > (1 + margin) * p95_champion`` with confidence (tested on the log ratio)."""
    ok = (float(champion.q) > 0) and (float(challenger.q) > 0)
    effect = math.log(float(challenger.q) / float(champion.q)) if ok else math.nan
    var = float(champion.var_log_q) + float(challenger.var_log_q) if ok else math.nan
    margin = math.log1p(relative_margin)
    lo, hi, status = _non_inferiority(effect, var, margin, alpha)
    ratio = math.exp(effect) if ok else None
    ratio_ci = [math.exp(lo), math.exp(hi)] if ok and math.isfinite(lo) else None
    return GuardrailResult(name, "relative", relative_margin, float(champion.q), float(challenger.q), effect, lo, hi,
                           int(champion.n), int(challenger.n), status, alpha, ratio, ratio_ci)


# --------------------------------------------------------------------------------------
# One analysis of one experiment
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmData:
    """What the controller reads for one arm. ``assigned`` counts randomisation units (users)
    for the SRM check; it defaults to ``primary.n``. Guardrail inputs may be None (not tracked)."""

    primary: Arm
    errors: Arm | None = None
    regenerates: Arm | None = None
    latency: LatencyStats | None = None
    assigned: int | None = None

    @property
    def n_assigned(self) -> int:
        return int(self.primary.n if self.assigned is None else self.assigned)


@dataclass(frozen=True)
class Analysis:
    """Everything one look at an experiment computes; input to ``decisions.decide``."""

    primary: SequentialResult
    srm: SRMResult
    guardrails: list[GuardrailResult]

    @property
    def n_min(self) -> int:
        return int(min(self.primary.n_champion, self.primary.n_challenger))

    def to_dict(self) -> dict:
        return {"primary": self.primary.to_dict(), "srm": self.srm.to_dict(),
                "guardrails": [g.to_dict() for g in self.guardrails]}


def analyse(champion: ArmData, challenger: ArmData, settings: object,
            prior: SequentialResult | None = None) -> Analysis:
    """Run the primary test, the SRM check and the guardrails for one look.

    ``settings`` is an :class:`kaizenlm.config.ABConfig` (or anything with its attributes:
    alpha, mde, split, futility_beta, improvement_weight, srm_threshold and the three guardrail margins); an
    experiment with its own alpha or MDE passes ``dataclasses.replace(cfg.ab, ...)``.
    """
    s = settings
    primary = sequential_test(champion.primary, challenger.primary, alpha=s.alpha, mde=s.mde,
                              futility_beta=s.futility_beta, weight_up=s.improvement_weight, prior=prior)
    srm = srm_check([champion.n_assigned, challenger.n_assigned], s.split, s.srm_threshold)
    guards: list[GuardrailResult] = []
    if champion.latency is not None and challenger.latency is not None:
        guards.append(guardrail_latency(champion.latency, challenger.latency, s.latency_p95_relative_margin, s.alpha))
    if champion.errors is not None and challenger.errors is not None:
        guards.append(guardrail_rate("error_rate", champion.errors, challenger.errors, s.error_rate_margin, s.alpha))
    if champion.regenerates is not None and challenger.regenerates is not None:
        guards.append(guardrail_rate("regenerate_rate", champion.regenerates, challenger.regenerates,
                                     s.regenerate_rate_margin, s.alpha))
    return Analysis(primary, srm, guards)
