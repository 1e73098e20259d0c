"""Checks beside the primary test: sample-ratio mismatch (SRM) and the non-inferiority guardrails.

`srm_check` tests the assignment counts against the configured split (chi-square);
`guardrail_rate` (error rate, regenerate rate) and `guardrail_latency` (p95 latency) test
that the challenger is not worse than the champion by more than a margin, with an
always-valid interval (a zero-centred normal mixture, kaizenlm/abtest/sequential.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special as _spc

from kaizenlm.abtest.arms import Arm, LatencyStats, jsonable
from kaizenlm.abtest.sequential import _VAR_FLOOR, _diff, mixture_halfwidth

SRM_THRESHOLD = 0.001
"""Chi-square p-value under which the observed split counts as a sample-ratio mismatch."""


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
