"""Promotion and rollback decisions: one test per rule of `decide`."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from kaizenlm.abtest import stats as S
from kaizenlm.abtest.arms import ArmStats, LatencyStats
from kaizenlm.abtest.decisions import ACTIONS, Decision, decide
from kaizenlm.config import ABConfig

START = datetime(2025, 3, 1, tzinfo=UTC)
SETTINGS = ABConfig()  # alpha 0.05, mde 0.1, 168 h, 100 per arm


def arm(n: int, mean: float, sd: float, binary: bool = False) -> ArmStats:
    return ArmStats(n, n * mean, (n - 1) * sd * sd + n * mean * mean, binary)


def rate(n: int, p: float) -> ArmStats:
    return arm(n, p, math.sqrt(p * (1 - p)), binary=True)


_RNG = np.random.default_rng(1)
LATENCY = LatencyStats.from_values(_RNG.lognormal(6.0, 0.3, 200_000))
SLOW = LatencyStats(LATENCY.n, LATENCY.q_lo * 1.5, LATENCY.q * 1.5, LATENCY.q_hi * 1.5)


def look(n=20_000, effect=0.0, *, challenger_n=None, errors=(0.01, 0.01), latency=(LATENCY, LATENCY),
         assigned=None, settings=SETTINGS) -> S.Analysis:
    """An analysis of an experiment with n units per arm (reward sd 0.5) and the given truth."""
    nb = n if challenger_n is None else challenger_n
    champion = S.ArmData(arm(n, 0.0, 0.5), rate(n, errors[0]), rate(n, 0.1), latency[0],
                         None if assigned is None else assigned[0])
    challenger = S.ArmData(arm(nb, effect, 0.5), rate(nb, errors[1]), rate(nb, 0.1), latency[1],
                           None if assigned is None else assigned[1])
    return S.analyse(champion, challenger, settings)


def at(hours: float, analysis: S.Analysis, **kw) -> Decision:
    d = decide(analysis, kw.pop("settings", SETTINGS), now=START + timedelta(hours=hours), started_at=START, **kw)
    json.dumps(d.to_dict(), allow_nan=False)  # every decision is storable as is
    assert d.action in ACTIONS
    return d


def test_promote_a_significant_winner_with_guardrails_non_inferior():
    d = at(24, look(effect=0.03))
    assert d.action == "promote" and d.final
    assert "significantly better" in d.reason and "p=" in d.reason
    assert d.numbers["primary"]["significant"] and d.numbers["primary"]["direction"] == 1
    assert {g: v["status"] for g, v in d.numbers["guardrails"].items()} == dict.fromkeys(
        ("latency_p95", "error_rate", "regenerate_rate"), "non_inferior")
    assert d.warnings == []


def test_rollback_a_significantly_worse_challenger():
    d = at(24, look(effect=-0.03))
    assert d.action == "rollback" and "significantly worse" in d.reason
    assert d.numbers["primary"]["direction"] == -1


def test_rollback_on_a_guardrail_breach_even_if_the_primary_metric_wins():
    d = at(24, look(effect=0.05, errors=(0.01, 0.05)))
    assert d.action == "rollback" and "guardrail breached" in d.reason and "error_rate" in d.reason
    assert d.numbers["guardrails"]["error_rate"]["status"] == "breach"
    d = at(24, look(effect=0.05, latency=(LATENCY, SLOW)))
    assert d.action == "rollback" and "latency_p95" in d.reason


def test_guardrail_breach_wins_over_srm():
    d = at(24, look(effect=0.05, errors=(0.01, 0.05), assigned=(21_000, 19_000)))
    assert d.action == "rollback" and "srm" in d.warnings


def test_srm_keeps_the_champion_and_never_promotes():
    d = at(24, look(effect=0.05, assigned=(21_000, 19_000)))
    assert d.action == "keep_champion" and "sample-ratio mismatch" in d.reason
    assert d.numbers["srm"]["flagged"] and d.numbers["srm"]["p_value"] < 0.001
    assert "srm" in d.warnings
    # SRM is checked from the first look, before the minimum sample size.
    assert at(1, look(n=60, assigned=(60, 20))).action == "keep_champion"


def test_continue_while_collecting_the_minimum_sample():
    d = at(1, look(n=80, effect=0.5))
    assert d.action == "continue" and "collecting" in d.reason and not d.final


def test_too_few_samples_at_max_duration_keeps_the_champion():
    d = at(200, look(n=80, effect=0.5))
    assert d.action == "keep_champion" and "max duration" in d.reason


def test_winner_waits_for_guardrail_non_inferiority_then_times_out():
    # 1500 per arm: the primary effect is clear, the 1-point error-rate margin is not yet shown.
    analysis = look(n=1500, effect=0.15, errors=(0.03, 0.03))
    assert analysis.primary.significant and analysis.primary.direction == 1
    d = at(24, analysis)
    assert d.action == "continue" and "waiting for guardrail" in d.reason
    assert "guardrail_inconclusive:error_rate" in d.warnings
    late = at(170, analysis)
    assert late.action == "keep_champion" and "not shown non-inferior" in late.reason
    lenient = dataclasses.replace(SETTINGS, promote_requires_non_inferiority=False)
    d = at(24, look(n=1500, effect=0.15, errors=(0.03, 0.03), settings=lenient), settings=lenient)
    assert d.action == "promote" and "no guardrail breached" in d.reason


def test_futility_keeps_the_champion_early():
    d = at(24, look(n=5000, effect=0.002))
    assert d.action == "keep_champion" and "futility" in d.reason
    assert d.numbers["primary"]["futile"] and not d.numbers["expired"]
    off = dataclasses.replace(SETTINGS, futility_beta=0.0)
    assert at(24, look(n=5000, effect=0.002, settings=off), settings=off).action == "continue"


def test_inconclusive_continues_then_keeps_the_champion_at_max_duration():
    analysis = look(n=300, effect=0.03)
    assert not analysis.primary.significant and not analysis.primary.futile
    d = at(24, analysis)
    assert d.action == "continue" and "inconclusive so far" in d.reason
    late = at(168, analysis)
    assert late.action == "keep_champion" and "max duration reached, inconclusive" in late.reason
    assert late.numbers["expired"] and late.numbers["elapsed_hours"] == pytest.approx(168)


def test_max_duration_argument_overrides_the_setting():
    analysis = look(n=300, effect=0.03)
    assert at(5, analysis, max_duration=timedelta(hours=4)).action == "keep_champion"
    assert at(5, analysis, max_duration=timedelta(hours=6)).action == "continue"


def test_experiment_without_guardrail_data_promotes_on_the_primary_metric():
    champion = S.ArmData(arm(20_000, 0.0, 0.5))
    challenger = S.ArmData(arm(20_000, 0.03, 0.5))
    d = at(24, S.analyse(champion, challenger, SETTINGS))
    assert d.action == "promote" and d.numbers["guardrails"] == {}


def test_decision_rejects_unknown_actions():
    with pytest.raises(ValueError):
        Decision("ship_it", "", {})
