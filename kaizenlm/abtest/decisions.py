"""What to do with a running experiment, given one look at its numbers.

`decide` is a pure function: an :class:`~kaizenlm.abtest.stats.Analysis` (from
`stats.analyse`), the experiment's settings, the clock and the start time in; a
:class:`Decision` out, whose ``numbers`` hold everything the decision rested on (plain JSON
types) so that the controller can store it as is. The controller acts on it: ``promote``
moves the alias and publishes routing, ``rollback`` and ``keep_champion`` end the
experiment with the champion serving everyone, ``continue`` waits for the next look.

Rules, first match wins (docs/STATISTICS.md, "Decision rules"):

1. a guardrail breached (each arm past ``min_samples_per_arm``)   -> rollback
2. sample-ratio mismatch                                          -> keep_champion
3. an arm below ``min_samples_per_arm``                           -> continue (keep_champion past max duration)
4. challenger significantly worse on the primary metric           -> rollback
5. challenger significantly better, every guardrail non-inferior  -> promote
   (significantly better but a guardrail still inconclusive       -> continue; keep_champion past max duration;
    with ``promote_requires_non_inferiority = false`` no breach is enough to promote)
6. futility: an effect of +-MDE is ruled out                      -> keep_champion
7. past the maximum duration                                      -> keep_champion
8. otherwise                                                      -> continue

An SRM means assignment or logging is broken, so no number of the experiment can be
trusted, in either direction: the experiment stops without a promotion and without
blaming the challenger, and the decision says to investigate. A guardrail breach is
checked first all the same: a challenger that crashes (and so logs fewer turns) is a common
cause of an SRM, and rolling it back is the safe action either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from kaizenlm.abtest.arms import jsonable
from kaizenlm.abtest.guardrails import BREACH, NON_INFERIOR, GuardrailResult
from kaizenlm.abtest.stats import Analysis

PROMOTE = "promote"
ROLLBACK = "rollback"
CONTINUE = "continue"
KEEP_CHAMPION = "keep_champion"
ACTIONS = (PROMOTE, ROLLBACK, CONTINUE, KEEP_CHAMPION)


@dataclass(frozen=True)
class Decision:
    """One decision: the action, a one-line reason with its numbers, every number it used,
    and warnings (e.g. ``srm``, ``guardrail_inconclusive:latency_p95``) worth showing."""

    action: str
    reason: str
    numbers: dict
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")

    @property
    def final(self) -> bool:
        """True when the experiment ends with this decision."""
        return self.action != CONTINUE

    def to_dict(self) -> dict:
        return asdict(self)


def _g(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.4g}"


def _guard_text(g: GuardrailResult) -> str:
    if g.margin_kind == "relative":
        ratio = "n/a" if g.ratio is None else f"{g.ratio:.3f}"
        ci = "n/a" if not g.ratio_ci else f"{g.ratio_ci[0]:.3f}..{g.ratio_ci[1]:.3f}"
        return f"{g.name} ratio {ratio} (CI {ci}) vs allowed {1 + g.margin:.3f}"
    return f"{g.name} {_g(g.effect)} (CI {_g(g.ci_low)}..{_g(g.ci_high)}) vs margin {g.margin:+.4g}"


def decide(analysis: Analysis, settings: object, *, now: datetime, started_at: datetime,
           max_duration: timedelta | None = None) -> Decision:
    """Decide promote / rollback / continue / keep_champion for one look (rules in the module doc).

    ``settings`` is an ABConfig (min_samples_per_arm, max_duration_hours and
    promote_requires_non_inferiority are read from it);
    ``max_duration`` overrides ``settings.max_duration_hours`` for this experiment.
    """
    if max_duration is None:
        max_duration = timedelta(hours=settings.max_duration_hours)
    elapsed = now - started_at
    expired = elapsed >= max_duration
    p = analysis.primary
    n_min = analysis.n_min
    warm = n_min >= settings.min_samples_per_arm
    breached = [g for g in analysis.guardrails if g.status == BREACH]
    pending = [g for g in analysis.guardrails if g.status != NON_INFERIOR] if settings.promote_requires_non_inferiority else []

    warnings: list[str] = []
    if analysis.srm.flagged:
        warnings.append("srm")
    warnings += [f"guardrail_{g.status}:{g.name}" for g in analysis.guardrails if g.status != NON_INFERIOR]

    numbers = jsonable({
        "elapsed_hours": elapsed.total_seconds() / 3600.0,
        "max_duration_hours": max_duration.total_seconds() / 3600.0,
        "expired": expired,
        "min_samples_per_arm": settings.min_samples_per_arm,
        "n_champion": p.n_champion,
        "n_challenger": p.n_challenger,
        "primary": p.to_dict(),
        "srm": analysis.srm.to_dict(),
        "guardrails": {g.name: g.to_dict() for g in analysis.guardrails},
    })
    primary_text = (f"effect {_g(p.effect)} (always-valid {1 - p.alpha:.0%} CI {_g(p.ci_low)}..{_g(p.ci_high)}), "
                    f"p={p.p_value:.3g}, alpha={p.alpha:g}, n={int(p.n_champion)}/{int(p.n_challenger)}")

    def out(action: str, reason: str) -> Decision:
        return Decision(action, reason, numbers, warnings)

    if warm and breached:
        return out(ROLLBACK, "guardrail breached: " + "; ".join(_guard_text(g) for g in breached))
    if analysis.srm.flagged:
        s = analysis.srm
        return out(KEEP_CHAMPION, f"sample-ratio mismatch: counts {s.counts} vs expected "
                   f"{[round(e, 1) for e in s.expected]}, chi2={s.chi2:.2f}, p={s.p_value:.2g} < {s.threshold:g}; "
                   "results cannot be trusted, champion kept; investigate assignment and logging")
    if not warm:
        if expired:
            return out(KEEP_CHAMPION, f"max duration reached with only {n_min} units in the smaller arm "
                       f"(< {settings.min_samples_per_arm}); champion kept")
        return out(CONTINUE, f"collecting data: {n_min} of {settings.min_samples_per_arm} units in the smaller arm")
    if p.significant and p.direction < 0:
        return out(ROLLBACK, "challenger significantly worse on the primary metric: " + primary_text)
    if p.significant and p.direction > 0:
        if not pending:
            guards = ("; guardrails non-inferior" if settings.promote_requires_non_inferiority
                      else "; no guardrail breached")
            return out(PROMOTE, "challenger significantly better on the primary metric: " + primary_text
                       + (guards if analysis.guardrails else ""))
        waiting = "; ".join(_guard_text(g) for g in pending)
        if expired:
            return out(KEEP_CHAMPION, "max duration reached: challenger better on the primary metric but "
                       f"guardrails not shown non-inferior ({waiting}); champion kept")
        return out(CONTINUE, f"challenger better on the primary metric ({primary_text}); "
                   f"waiting for guardrail non-inferiority: {waiting}")
    if p.futile:
        return out(KEEP_CHAMPION, f"futility: an effect of +-{p.mde:g} is ruled out "
                   f"(likelihood ratio <= {p.futility_beta:g}); " + primary_text + "; champion kept")
    if expired:
        return out(KEEP_CHAMPION, "max duration reached, inconclusive: " + primary_text + "; champion kept")
    return out(CONTINUE, "inconclusive so far: " + primary_text)
