"""The primary test: an always-valid mixture sequential test and its confidence sequence.

The test is a mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari et al.
2017 "Always valid inference") on the difference in means, challenger minus champion, for
binary and continuous metrics. Its evidence ``Lambda_n`` is a non-negative martingale of mean
1 under "no difference", so by Ville's inequality ``P(Lambda_n >= 1/alpha for some n) <=
alpha``: the p-value ``1/Lambda_n`` and the confidence interval obtained by inverting the test
may be looked at after every observation and the false-positive rate stays at most alpha.
The mixing distribution is ``theta ~ w N(+mde, tau^2) + (1 - w) N(-mde, tau^2)`` with
``tau = mde/4``. An always-valid futility rule stops experiments whose effect is evidently
smaller than the MDE. Also here: Welch's t-test and the fixed-horizon sample size, the
baselines the benchmark (benchmarks/abtest_power.py) compares against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special as _spc
from scipy import stats as _sps

from kaizenlm.abtest.arms import Arm, Array, jsonable

# Mixing distribution of the primary test, in units of the minimum detectable effect.
MIXTURE_CENTER_MDE = 1.0
"""Components sit at +-MDE: the log-likelihood ratio then grows fastest for effects near the MDE."""
MIXTURE_TAU_MDE = 0.25
"""Spread of each component; > 0 so the confidence interval keeps shrinking as data arrive."""

_VAR_FLOOR = 1e-18


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
