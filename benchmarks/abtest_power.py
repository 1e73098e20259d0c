"""A/B statistics benchmark: error rates and sample sizes of the always-valid test.

Simulates thousands of experiments per scenario (no effect; true effects of 0.5x, 1x and
2x the minimum detectable effect; and a challenger worse by the MDE), looks at every batch
of traffic the way the controller looks every few minutes, and compares the sequential test
of `kaizenlm.abtest.sequential` (with the `[ab]` defaults: alpha, improvement weight, futility
stop, minimum samples per arm) against

- a naive Welch t-test checked at every look (the false-positive rate peeking inflates), and
- a fixed-horizon two-sided test of equal alpha and 80% power at the MDE.

Sequential experiments stop at the first look where the test is significant (promote or
roll back) or futile (keep the champion), and at the latest at a maximum of
``--cap`` x the fixed-horizon sample size (max duration: keep the champion). Users are
assigned at random with the configured split, so arm sizes vary as they do in production.

Prints one JSON line. The headline figures are for the default primary metric, a
continuous per-turn reward (sd 0.5, MDE 0.1); the same figures for a binary metric
(rate 0.30, MDE 0.05) are under "binary". Traffic between two looks is 1/40 of the
fixed-horizon sample (``--looks-per-fixed``). ``mean_sample_ratio_vs_fixed`` is the mean over
the three effect sizes of (mean samples per arm at the sequential decision) / (fixed-horizon
samples per arm), every simulated experiment counted. Usage:

    python benchmarks/abtest_power.py [--sims 4000] [--seed 7] [--cap 2.0] [--looks-per-fixed 40]
                                      [--futility-beta 0.2] [--improvement-weight 0.8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np

from kaizenlm.abtest.arms import ArmStats
from kaizenlm.abtest.guardrails import srm_p_value
from kaizenlm.abtest.sequential import fixed_horizon_power, fixed_horizon_sample_size, sequential_test, welch_t_test
from kaizenlm.config import ABConfig

GOAL_RATIO = 0.63  # "at least 37% fewer samples than fixed-horizon"
POWER = 0.8
EFFECTS = {"null": 0.0, "0.5x": 0.5, "1x": 1.0, "2x": 2.0, "-1x": -1.0}  # -1x: a worse challenger


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    binary: bool
    base: float  # mean (continuous) or rate (binary) of the champion
    sd: float  # unit sd used to plan the fixed-horizon test
    mde: float


CONTINUOUS = Metric("reward", False, 0.0, 0.5, 0.1)
# Binary: planned with the variance at the mean of the two rates under the MDE (0.325).
BINARY = Metric("thumbs_up_rate", True, 0.30, float(np.sqrt(0.325 * 0.675)), 0.05)


def simulate(metric: Metric, effect: float, ab: ABConfig, sims: int, looks: int, users_per_look: int,
             rng: np.random.Generator):
    """Cumulative per-arm sufficient statistics at every look: arrays of shape (sims, looks)."""
    shape = (sims, looks)
    n_b = rng.binomial(users_per_look, ab.split, shape)
    n_a = users_per_look - n_b
    arms = []
    for n, mean in ((n_a, metric.base), (n_b, metric.base + effect)):
        if metric.binary:
            s = rng.binomial(n, mean).astype(float)
            ss = s
        else:  # exact batch sums: sum ~ N(n mu, n sd^2), within-batch SS ~ sd^2 chi2(n-1)
            s = rng.normal(n * mean, metric.sd * np.sqrt(n))
            within = metric.sd**2 * rng.chisquare(np.maximum(n - 1, 1)) * (n > 1)
            ss = within + np.where(n > 0, s * s / np.maximum(n, 1), 0.0)
        arms.append(ArmStats(np.cumsum(n, 1), np.cumsum(s, 1), np.cumsum(ss, 1), binary=metric.binary))
    return arms[0], arms[1], np.stack([n_a.cumsum(1), n_b.cumsum(1)], axis=-1)


def first_true(mask: np.ndarray) -> np.ndarray:
    """Index of the first True per row, or the last column where a row has none."""
    return np.where(mask.any(1), mask.argmax(1), mask.shape[1] - 1)


def run_metric(metric: Metric, ab: ABConfig, sims: int, cap: float, looks_per_fixed: int, seed: int,
               center_mde: float | None = None, tau_mde: float | None = None) -> dict:
    """All scenarios of one metric. ``center_mde``/``tau_mde`` override the mixing distribution
    (in MDE units) for the comparison variants."""
    ab = dataclasses.replace(ab, mde=metric.mde)
    mixture = {} if center_mde is None else {"center": center_mde * metric.mde, "tau": tau_mde * metric.mde}
    plan = fixed_horizon_sample_size(metric.mde, metric.sd, ab.alpha, POWER, ab.split)
    n_fix = plan.n_champion  # equal split: per arm
    users_per_look = max(2, round(2 * n_fix / looks_per_fixed))  # new users (both arms) between two looks
    per_arm_per_look = users_per_look / 2
    looks = int(np.ceil(cap * n_fix / per_arm_per_look))
    look_fix = int(np.ceil(n_fix / per_arm_per_look)) - 1  # first look with n_fix per arm on average
    rows = np.arange(sims)
    out: dict = {"metric": metric.name, "binary": metric.binary, "mde": metric.mde, "sd": round(metric.sd, 4),
                 "fixed_horizon_n": n_fix, "users_per_look": users_per_look, "looks_max": looks,
                 "cap_n_per_arm": int(looks * per_arm_per_look), "scenarios": {}}
    srm_alarms = 0
    for i, (label, mult) in enumerate(EFFECTS.items()):
        rng = np.random.default_rng([seed, i, int(metric.binary)])
        effect = mult * metric.mde
        a, b, counts = simulate(metric, effect, ab, sims, looks, users_per_look, rng)
        seq = sequential_test(a, b, alpha=ab.alpha, mde=ab.mde, futility_beta=ab.futility_beta,
                              weight_up=ab.improvement_weight, with_ci=False, **mixture)
        ready = (a.n >= ab.min_samples_per_arm) & (b.n >= ab.min_samples_per_arm)
        stop = first_true(ready & (seq.significant | seq.futile))
        sig = seq.significant[rows, stop] & ready[rows, stop]
        direction = np.where(sig, seq.direction[rows, stop], 0)
        futile = seq.futile[rows, stop] & ready[rows, stop] & ~sig
        n_used = (a.n[rows, stop] + b.n[rows, stop]) / 2.0
        _, p_naive = welch_t_test(a, b)
        naive = ((p_naive < ab.alpha) & ready).any(1)
        t_fix, p_fix = welch_t_test(ArmStats(a.n[:, look_fix], a.sum[:, look_fix], a.sum_sq[:, look_fix], a.binary),
                                    ArmStats(b.n[:, look_fix], b.sum[:, look_fix], b.sum_sq[:, look_fix], b.binary))
        _, p_srm = srm_p_value(counts, ab.split)
        srm_alarms += int((p_srm < ab.srm_threshold).any(1).sum())
        # A worse challenger is handled correctly when it stops serving: rolled back or futile.
        correct = (direction == 0) if mult == 0 else (direction == 1) if mult > 0 else ((direction == -1) | futile)
        sc = {
            "effect": effect,
            "correct_rate": float(correct.mean()),
            "promote_rate": float((direction == 1).mean()),
            "rollback_rate": float((direction == -1).mean()),
            "futility_rate": float(futile.mean()),
            "inconclusive_at_cap_rate": float((~sig & ~futile).mean()),
            "mean_n_per_arm": float(n_used.mean()),
            "sample_ratio_vs_fixed": float(n_used.mean() / n_fix),
            "mean_n_per_arm_correct": float(n_used[correct].mean()) if correct.any() else None,
            "naive_rejection_rate": float(naive.mean()),
            "fixed_rejection_rate": float((p_fix < ab.alpha).mean()),
        }
        if mult > 0:
            sc["power_sequential"] = sc["promote_rate"]
            sc["power_fixed"] = float(((p_fix < ab.alpha) & (t_fix > 0)).mean())
            sc["power_fixed_theory"] = fixed_horizon_power(effect, metric.sd, n_fix, ab.alpha)
        out["scenarios"][label] = sc
    eff = [out["scenarios"][k] for k in ("0.5x", "1x", "2x")]
    out["false_positive_rate"] = out["scenarios"]["null"]["promote_rate"] + out["scenarios"]["null"]["rollback_rate"]
    out["naive_false_positive_rate"] = out["scenarios"]["null"]["naive_rejection_rate"]
    out["fixed_false_positive_rate"] = out["scenarios"]["null"]["fixed_rejection_rate"]
    out["mean_sample_ratio_vs_fixed"] = float(np.mean([s["sample_ratio_vs_fixed"] for s in eff]))
    out["srm_false_alarm_rate"] = srm_alarms / (sims * len(EFFECTS))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=4000, help="simulated experiments per scenario (>= 2000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cap", type=float, default=2.0, help="max samples per arm, in multiples of the fixed-horizon n")
    ap.add_argument("--looks-per-fixed", type=int, default=40,
                    help="looks while the fixed-horizon sample accrues (traffic between looks = 2 n_fixed / this)")
    ap.add_argument("--futility-beta", type=float, default=None, help="override [ab].futility_beta (0 = off)")
    ap.add_argument("--improvement-weight", type=float, default=None, help="override [ab].improvement_weight")
    args = ap.parse_args(argv)
    if args.sims < 2000:
        ap.error("--sims must be >= 2000")
    ab = ABConfig()
    if args.futility_beta is not None:
        ab = dataclasses.replace(ab, futility_beta=args.futility_beta)
    if args.improvement_weight is not None:
        ab = dataclasses.replace(ab, improvement_weight=args.improvement_weight)
    t0 = time.perf_counter()
    cont = run_metric(CONTINUOUS, ab, args.sims, args.cap, args.looks_per_fixed, args.seed)
    binary = run_metric(BINARY, ab, args.sims, args.cap, args.looks_per_fixed, args.seed)
    ratio = cont["mean_sample_ratio_vs_fixed"]
    variants = {}  # the same continuous scenarios under other designs, for comparison
    for name, weight, beta, center, tau in (
            ("symmetric_weight_0.5", 0.5, ab.futility_beta, None, None),
            ("futility_beta_0.2", ab.improvement_weight, 0.2, None, None),
            ("no_futility", ab.improvement_weight, 0.0, None, None),
            ("johari_zero_centred_tau_mde", 0.5, ab.futility_beta, 0.0, 1.0),
            ("johari_zero_centred_no_futility", 0.5, 0.0, 0.0, 1.0)):
        v = run_metric(CONTINUOUS, dataclasses.replace(ab, futility_beta=beta, improvement_weight=weight), args.sims,
                       args.cap, args.looks_per_fixed, args.seed, center, tau)
        variants[name] = {
            "improvement_weight": weight, "futility_beta": beta, "mixture_center_mde": 1.0 if center is None else center,
            "mixture_tau_mde": 0.25 if tau is None else tau,
            "false_positive_rate": v["false_positive_rate"],
            "mean_sample_ratio_vs_fixed": v["mean_sample_ratio_vs_fixed"],
            "sample_ratio_by_effect": {k: v["scenarios"][k]["sample_ratio_vs_fixed"] for k in ("0.5x", "1x", "2x")},
            "power_sequential_by_effect": {k: v["scenarios"][k]["power_sequential"] for k in ("0.5x", "1x", "2x")},
        }
    result = {
        "benchmark": "abtest_power",
        "false_positive_rate": cont["false_positive_rate"],
        "naive_false_positive_rate": cont["naive_false_positive_rate"],
        "mean_sample_ratio_vs_fixed": ratio,
        "alpha": ab.alpha,
        "power_target": POWER,
        "goal_ratio": GOAL_RATIO,
        "goal_met": bool(ratio <= GOAL_RATIO and cont["false_positive_rate"] <= ab.alpha),
        "fixed_horizon_n": cont["fixed_horizon_n"],
        "sample_ratio_by_effect": {k: cont["scenarios"][k]["sample_ratio_vs_fixed"] for k in ("0.5x", "1x", "2x")},
        "power_sequential_by_effect": {k: cont["scenarios"][k]["power_sequential"] for k in ("0.5x", "1x", "2x")},
        "power_fixed_by_effect": {k: cont["scenarios"][k]["power_fixed"] for k in ("0.5x", "1x", "2x")},
        "sims_per_scenario": args.sims,
        "seed": args.seed,
        "cap_vs_fixed": args.cap,
        "looks_per_fixed": args.looks_per_fixed,
        "futility_beta": ab.futility_beta,
        "improvement_weight": ab.improvement_weight,
        "worse_challenger_stopped_rate": cont["scenarios"]["-1x"]["correct_rate"],
        "worse_challenger_sample_ratio": cont["scenarios"]["-1x"]["sample_ratio_vs_fixed"],
        "min_samples_per_arm": ab.min_samples_per_arm,
        "continuous": cont,
        "variants": variants,
        "binary": binary,
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
    }
    json.dump(result, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
