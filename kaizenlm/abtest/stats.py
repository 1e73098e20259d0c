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

What lives where (each module is pure as well):

* ``arms.py``       -- sufficient statistics of one arm: ArmStats, RatioArmStats, LatencyStats; jsonable.
* ``sequential.py`` -- the always-valid mixture test and confidence sequence (sequential_test,
  SequentialResult, mixture_log_lr, mixture_halfwidth), Welch's t-test, the fixed-horizon plan.
* ``guardrails.py`` -- the SRM check (srm_check, srm_p_value) and the guardrails (guardrail_rate,
  guardrail_latency, GuardrailResult, BREACH / NON_INFERIOR / INCONCLUSIVE).
* ``stats.py``      -- one analysis of one experiment: ArmData, Analysis, analyse.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaizenlm.abtest.arms import Arm, LatencyStats
from kaizenlm.abtest.guardrails import GuardrailResult, SRMResult, guardrail_latency, guardrail_rate, srm_check
from kaizenlm.abtest.sequential import SequentialResult, sequential_test


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
