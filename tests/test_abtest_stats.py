"""A/B statistics: always-valid sequential test, fixed-horizon plan, SRM, guardrails."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from kaizenlm.abtest import stats as S
from kaizenlm.abtest.arms import ArmStats, LatencyStats, RatioArmStats
from kaizenlm.abtest.guardrails import INCONCLUSIVE, NON_INFERIOR, guardrail_latency, guardrail_rate, srm_check
from kaizenlm.abtest.sequential import (
    SequentialResult,
    fixed_horizon_power,
    fixed_horizon_sample_size,
    mixture_log_lr,
    sequential_test,
    welch_t_test,
)
from kaizenlm.config import ABConfig


def arm(n: int, mean: float, sd: float, binary: bool = False) -> ArmStats:
    """Arm statistics with an exact mean and sample sd."""
    return ArmStats(n, n * mean, (n - 1) * sd * sd + n * mean * mean, binary)


def peeking_paths(effect: float, sims: int, looks: int, per_look: int, seed: int, binary: bool = False,
                  base: float = 0.0, sd: float = 1.0) -> tuple[ArmStats, ArmStats]:
    """Cumulative statistics of `sims` experiments at each of `looks` looks (random assignment)."""
    rng = np.random.default_rng(seed)
    n_b = rng.binomial(per_look, 0.5, (sims, looks))
    arms = []
    for n, mean in ((per_look - n_b, base), (n_b, base + effect)):
        if binary:
            s = rng.binomial(n, mean).astype(float)
            ss = s
        else:
            s = rng.normal(n * mean, sd * np.sqrt(n))
            ss = sd * sd * rng.chisquare(np.maximum(n - 1, 1)) * (n > 1) + np.where(n > 0, s * s / np.maximum(n, 1), 0)
        arms.append(ArmStats(n.cumsum(1), s.cumsum(1), ss.cumsum(1), binary))
    return arms[0], arms[1]


def rejected_at_any_look(a: ArmStats, b: ArmStats, mde: float, min_n: int = 50, **kw) -> np.ndarray:
    r = sequential_test(a, b, mde=mde, with_ci=False, **kw)
    ready = (a.n >= min_n) & (b.n >= min_n)
    return (r.significant & ready).any(1)


# --- the always-valid property ------------------------------------------------------------


@pytest.mark.parametrize(("binary", "weight_up"), [(False, 0.5), (True, 0.5), (False, 0.8), (True, 0.8)])
def test_false_positive_rate_under_continuous_peeking_stays_below_alpha(binary, weight_up):
    # 2000 null experiments, looked at 150 times each up to ~3x the fixed-horizon sample.
    mde = 0.05 if binary else 0.1
    a, b = peeking_paths(0.0, 2000, 150, 40, seed=11, binary=binary, base=0.3 if binary else 0.0, sd=0.5)
    seq = rejected_at_any_look(a, b, mde, futility_beta=0.0, weight_up=weight_up).mean()
    _, p_naive = welch_t_test(a, b)
    naive = ((p_naive < 0.05) & (a.n >= 50) & (b.n >= 50)).any(1).mean()
    assert seq <= 0.05, f"sequential FPR {seq}"
    assert naive > 0.15, f"naive peeking should inflate the FPR, got {naive}"


@pytest.mark.parametrize("weight_up", [0.5, 0.8])
def test_confidence_sequence_covers_the_truth_at_every_look_simultaneously(weight_up):
    effect = 0.07
    a, b = peeking_paths(effect, 800, 120, 30, seed=5, sd=0.5)
    r = sequential_test(a, b, mde=0.1, weight_up=weight_up)
    ready = a.n >= 20
    missed = ((r.ci_low > effect) | (r.ci_high < effect)) & ready
    assert missed.any(1).mean() <= 0.05


def test_power_under_a_real_effect():
    # sd 0.5, MDE 0.1: fixed-horizon n = 393 per arm; looks every 20 users, up to 2x that.
    plan = fixed_horizon_sample_size(0.1, 0.5)
    looks = math.ceil(2 * plan.n_champion / 10)
    for mult, least in ((1.0, 0.7), (2.0, 0.97)):
        a, b = peeking_paths(mult * 0.1, 1000, looks, 20, seed=int(mult * 10), sd=0.5)
        r = sequential_test(a, b, mde=0.1, with_ci=False)
        stop = np.where((r.significant | r.futile).any(1), (r.significant | r.futile).argmax(1), looks - 1)
        rows = np.arange(1000)
        promoted = (r.significant[rows, stop] & (r.direction[rows, stop] == 1)).mean()
        assert promoted >= least, (mult, promoted)
        if mult == 2.0:  # a large effect is found well before the fixed horizon
            assert a.n[rows, stop].mean() < 0.6 * plan.n_champion


# --- the test's formulas ------------------------------------------------------------------


def test_zero_centred_mixture_is_johari_msprt():
    v, tau, x = 0.004, 0.1, 0.15
    expected = 0.5 * math.log(v / (v + tau**2)) + x**2 * tau**2 / (2 * v * (v + tau**2))
    assert mixture_log_lr(x, v, 0.0, tau) == pytest.approx(expected, rel=1e-12)
    assert mixture_log_lr(-x, v, 0.0, tau) == pytest.approx(expected, rel=1e-12)


def test_point_mixture_is_two_sided_sprt():
    v, m, x = 0.004, 0.1, 0.03
    expected = math.log(0.5 * (math.exp((m * x - m * m / 2) / v) + math.exp((-m * x - m * m / 2) / v)))
    assert mixture_log_lr(x, v, m, 0.0) == pytest.approx(expected, rel=1e-9)


def test_weighted_point_mixture_is_a_weighted_sprt():
    v, m, x, w = 0.004, 0.1, 0.03, 0.8
    expected = math.log(w * math.exp((m * x - m * m / 2) / v) + (1 - w) * math.exp((-m * x - m * m / 2) / v))
    assert mixture_log_lr(x, v, m, 0.0, w) == pytest.approx(expected, rel=1e-9)
    assert mixture_log_lr(x, v, m, 0.0, w) > mixture_log_lr(-x, v, m, 0.0, w)


def test_weight_on_improvements_promotes_sooner_and_rolls_back_later():
    better, worse = arm(300, 0.085, 0.5), arm(300, -0.085, 0.5)
    base = arm(300, 0.0, 0.5)
    sym_up, up = sequential_test(base, better, mde=0.1), sequential_test(base, better, mde=0.1, weight_up=0.8)
    sym_down, down = sequential_test(base, worse, mde=0.1), sequential_test(base, worse, mde=0.1, weight_up=0.8)
    assert up.p_value < sym_up.p_value and down.p_value > sym_down.p_value
    # The interval leans the same way: a shorter reach below the estimate than above it.
    assert (up.effect - up.ci_low) < (up.ci_high - up.effect)
    assert sym_up.effect - sym_up.ci_low == pytest.approx(sym_up.ci_high - sym_up.effect)
    with pytest.raises(ValueError, match="weight_up"):
        sequential_test(base, better, mde=0.1, weight_up=1.0)


@pytest.mark.parametrize("weight_up", [0.5, 0.8])
def test_interval_excludes_zero_exactly_when_significant(weight_up):
    rng = np.random.default_rng(3)
    n = rng.integers(20, 3000, 500)
    a = ArmStats(n, rng.normal(0, 1, 500) * np.sqrt(n), n * 1.0)
    b = ArmStats(n, rng.normal(0, 1, 500) * np.sqrt(n) + n * rng.normal(0, 0.1, 500), n * 1.0)
    r = sequential_test(a, b, mde=0.1, weight_up=weight_up)
    excludes = (r.ci_low > 0) | (r.ci_high < 0)
    boundary = np.abs(r.log_lr - math.log(20)) < 1e-6
    assert np.array_equal(excludes[~boundary], r.significant[~boundary])
    assert r.significant.any() and (~r.significant).any()
    assert np.all(r.direction[r.significant] == np.sign(r.effect[r.significant]))


def test_scalar_result_is_json_and_round_trips():
    r = sequential_test(arm(500, 0.0, 0.5), arm(520, 0.12, 0.5), mde=0.1)
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["significant"] is True and d["direction"] == 1 and d["ci_low"] > 0
    assert SequentialResult.from_dict(d) == r


def test_prior_keeps_the_running_minimum_and_intersection():
    first = sequential_test(arm(400, 0.0, 0.5), arm(400, 0.15, 0.5), mde=0.1)
    assert first.significant
    later = sequential_test(arm(800, 0.0, 0.5), arm(800, 0.02, 0.5), mde=0.1, prior=first)
    assert later.significant and later.p_value == first.p_value
    assert later.ci_low >= first.ci_low and later.ci_high <= first.ci_high
    alone = sequential_test(arm(800, 0.0, 0.5), arm(800, 0.02, 0.5), mde=0.1)
    assert not alone.significant


def test_futility_stops_a_null_experiment_not_a_real_effect():
    null = sequential_test(arm(1500, 0.0, 0.5), arm(1500, 0.005, 0.5), mde=0.1)
    assert null.futile and not null.significant
    real = sequential_test(arm(150, 0.0, 0.5), arm(150, 0.09, 0.5), mde=0.1)
    assert not real.futile
    off = sequential_test(arm(1500, 0.0, 0.5), arm(1500, 0.005, 0.5), mde=0.1, futility_beta=0.0)
    assert not off.futile


def test_too_little_data_gives_no_evidence():
    r = sequential_test(ArmStats(1, 1.0, 1.0), ArmStats(0, 0.0, 0.0), mde=0.1)
    assert r.p_value == 1.0 and not r.significant and not r.futile and r.direction == 0
    with pytest.raises(ValueError):
        sequential_test(arm(10, 0, 1), arm(10, 0, 1), mde=0.0)


# --- sufficient statistics ----------------------------------------------------------------


def test_arm_stats_from_values_and_addition():
    x = np.array([0.5, -1.0, 1.0, 0.25])
    s = ArmStats.from_values(x)
    assert s.mean == pytest.approx(x.mean()) and s.variance == pytest.approx(x.var(ddof=1))
    both = ArmStats.from_values(x[:2]) + ArmStats.from_values(x[2:])
    assert (both.n, both.sum, both.sum_sq) == (s.n, s.sum, s.sum_sq)


def test_binary_arm_with_no_events_still_has_uncertainty():
    zero = ArmStats.from_values(np.zeros(500), binary=True)
    assert zero.mean == 0.0 and zero.var_mean > 0
    r = sequential_test(zero, zero, mde=0.05)
    assert math.isfinite(r.ci_low) and r.ci_high > 0


def test_ratio_stats_account_for_users_with_many_turns():
    rng = np.random.default_rng(9)
    one = rng.normal(0.2, 0.5, 400)
    plain = ArmStats.from_values(one)
    ratio = RatioArmStats.from_units(one, np.ones(400))
    assert ratio.mean == pytest.approx(plain.mean) and ratio.var_mean == pytest.approx(plain.var_mean)
    # 400 users with 10 turns each whose rewards share a per-user level: the per-turn view
    # (4000 "independent" turns) understates the variance; the per-user delta method does not.
    level = rng.normal(0.2, 0.5, 400)
    turns = level[:, None] + rng.normal(0, 0.1, (400, 10))
    naive = ArmStats.from_values(turns.ravel())
    clustered = RatioArmStats.from_units(turns.sum(1), np.full(400, 10.0))
    assert clustered.mean == pytest.approx(naive.mean)
    assert clustered.var_mean > 5 * naive.var_mean


# --- fixed horizon ------------------------------------------------------------------------


def test_fixed_horizon_sample_size_matches_the_textbook_formula():
    plan = fixed_horizon_sample_size(0.1, 1.0, alpha=0.05, power=0.8)
    assert (plan.n_champion, plan.n_challenger) == (1570, 1570)  # 2 * (1.96 + 0.8416)^2 / 0.01
    assert fixed_horizon_power(0.1, 1.0, 1570) == pytest.approx(0.8, abs=0.002)
    skewed = fixed_horizon_sample_size(0.1, 1.0, split=0.2)
    assert skewed.n_total > plan.n_total and skewed.n_challenger < skewed.n_champion
    json.dumps(plan.to_dict())
    with pytest.raises(ValueError):
        fixed_horizon_sample_size(0.1, 1.0, split=1.0)


# --- sample-ratio mismatch ----------------------------------------------------------------


def test_srm_flags_a_skewed_split_and_not_a_fair_one():
    fair = srm_check([5030, 4970], 0.5)
    assert not fair.flagged and fair.p_value > 0.05
    skewed = srm_check([5300, 4700], 0.5)
    assert skewed.flagged and skewed.p_value < 0.001 and skewed.chi2 == pytest.approx(36.0)
    json.dumps(skewed.to_dict())


def test_srm_uses_the_configured_split():
    assert not srm_check([8000, 2000], 0.2).flagged
    assert srm_check([8000, 2000], 0.5).flagged
    assert not srm_check([3000, 3000, 6000], [1, 1, 2]).flagged
    with pytest.raises(ValueError):
        srm_check([10, 10, 10], 0.5)
    with pytest.raises(ValueError):
        srm_check([-1, 10], 0.5)


# --- guardrails ---------------------------------------------------------------------------


def test_latency_p95_guardrail_breach_and_non_inferiority():
    rng = np.random.default_rng(2)
    champ = LatencyStats.from_values(rng.lognormal(6.0, 0.5, 4000))
    slow = LatencyStats.from_values(rng.lognormal(6.0, 0.5, 4000) * 1.4)
    same = LatencyStats.from_values(rng.lognormal(6.0, 0.5, 20000))
    champ_big = LatencyStats.from_values(rng.lognormal(6.0, 0.5, 20000))
    g = guardrail_latency(champ, slow, 0.10)
    assert g.breached and g.ratio == pytest.approx(1.4, rel=0.1) and g.ratio_ci[0] > 1.1
    ok = guardrail_latency(champ_big, same, 0.10)
    assert ok.status == NON_INFERIOR and ok.ratio_ci[1] < 1.1
    json.dumps(g.to_dict(), allow_nan=False)


def test_latency_interval_covers_the_true_ratio():
    rng = np.random.default_rng(4)
    truth = 1.05
    misses = 0
    for _ in range(200):
        a = LatencyStats.from_values(rng.lognormal(6.0, 0.6, 1500))
        b = LatencyStats.from_values(rng.lognormal(6.0, 0.6, 1500) * truth)
        g = guardrail_latency(a, b, 0.10)
        misses += not (g.ratio_ci[0] <= truth <= g.ratio_ci[1])
    assert misses / 200 <= 0.05


def test_rate_guardrails_breach_inconclusive_and_pass():
    champ = arm(4000, 0.02, math.sqrt(0.02 * 0.98), binary=True)
    worse = arm(4000, 0.06, math.sqrt(0.06 * 0.94), binary=True)
    g = guardrail_rate("error_rate", champ, worse, 0.01)
    assert g.breached and g.ci_low > 0.01
    slightly = arm(1000, 0.025, math.sqrt(0.025 * 0.975), binary=True)
    assert guardrail_rate("error_rate", arm(1000, 0.02, 0.14, True), slightly, 0.01).status == INCONCLUSIVE
    big = guardrail_rate("regenerate_rate", arm(20000, 0.10, 0.3, True), arm(20000, 0.10, 0.3, True), 0.02)
    assert big.status == NON_INFERIOR


def test_analyse_runs_everything_and_serialises():
    rng = np.random.default_rng(8)
    lat = LatencyStats.from_values(rng.lognormal(6, 0.5, 3000))
    champion = S.ArmData(arm(3000, 0.0, 0.5), arm(3000, 0.01, 0.1, True), arm(3000, 0.1, 0.3, True), lat, 3010)
    challenger = S.ArmData(arm(2990, 0.1, 0.5), arm(2990, 0.01, 0.1, True), arm(2990, 0.1, 0.3, True), lat)
    settings = dataclasses.replace(ABConfig(), alpha=0.01)
    a = S.analyse(champion, challenger, settings)
    assert a.primary.alpha == 0.01 and a.primary.significant
    assert [g.name for g in a.guardrails] == ["latency_p95", "error_rate", "regenerate_rate"]
    assert a.srm.counts == [3010, 2990] and not a.srm.flagged
    json.dumps(a.to_dict(), allow_nan=False)
