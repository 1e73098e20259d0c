"""Learning benchmark: does one retrain teach the embedded real model (SmolLM2-135M-Instruct) the
demo's 48 facts without breaking its general skills, and what does replay buy? Prints ONE JSON line.

    .venv/bin/python benchmarks/learning.py [--seeds 0,1,2] [--out benchmarks/out/learning] [--base DIR]
                                            [--threads 2] [--jobs 2]

For each seed (the seed draws the held-out phrasings, the held-out refusal questions and the training order):
  1. LoRA SFT with the embedded recipe on the domain's training phrasings + 8% replay (the base's
     own answers to the shipped general prompts, kaizenlm/base/general.py); then LoRA DPO on
     (correct answer, plausible wrong answer) pairs on top of it;
  2. the ablation: the same SFT without replay and without the KL anchor (the recipe adds it in 1).
Each model is evaluated on the demo's suite (kaizenlm/demo/inputs.py: held-out phrasings of the
48 facts scored by key facts; the shipped multiple-choice general questions by log-likelihood)
and by agreement (token F1) with the base's own answers to held-out general prompts.
retention_* = the candidate's general score as a fraction of the base's, for
every general measure (choice_prob, accuracy, agreement); the gate uses `eval.retention_metric`. DPO margins: mean log p(chosen) - log p(rejected)
on held-out pairs (exam phrasings). The base is evaluated once in full, and for each further seed
only on what the seed draws (its exam, refusal questions and pairs); the ablation only on what it
is there for (general retention, and the domain for comparison). Figures per seed and their
mean/min; seconds per stage. The tasks (per seed: recipe + its evaluation, ablation + its
evaluation, the base on the seed) run in --jobs worker processes side by side, longest first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaizenlm.base.embedded import convert_embedded  # noqa: E402
from kaizenlm.base.general import answers_key, answers_paths, read_jsonl, write_answers  # noqa: E402
from kaizenlm.base.model import inference_dtype_name  # noqa: E402
from kaizenlm.config import EvalConfig, LoraDPOConfig, LoraSFTConfig, RetrainConfig  # noqa: E402
from kaizenlm.demo.domain import Domain, build_domain  # noqa: E402
from kaizenlm.demo.inputs import demo_suite  # noqa: E402
from kaizenlm.eval import evaluate as ev  # noqa: E402
from kaizenlm.retrain import anchor  # noqa: E402
from kaizenlm.retrain.lora_dpo import train_dpo  # noqa: E402
from kaizenlm.retrain.lora_sft import resolve_config as sft_config  # noqa: E402
from kaizenlm.retrain.lora_sft import train_sft  # noqa: E402
from kaizenlm.retrain.training import training_precision  # noqa: E402

REPLAY_RATIO = 0.08  # the share the issue asks about (curation.replay_fraction's default)
GENERAL_ANSWERS = 96  # general prompts the base answers for this benchmark (replay pool + held-out agreement)


def sft_rows(domain: Domain, replay_pool: list[dict], seed: int, replay_ratio: float) -> list[dict]:
    """Domain training phrasings + general replay making up replay_ratio of the rows."""
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in domain.train_rows()]
    if replay_ratio > 0:
        n = round(len(rows) * replay_ratio / (1 - replay_ratio))
        rows += [{"prompt": r["prompt"], "response": r["response"]}
                 for r in random.Random(seed).sample(replay_pool, min(n, len(replay_pool)))]
    random.Random(seed).shuffle(rows)
    return rows


def dpo_pairs(domain: Domain, seed: int, exam: bool) -> list[dict]:
    """(correct, plausible wrong) answer pairs over the training or the exam phrasings."""
    rng = random.Random(seed + (1 if exam else 0))
    return [{"prompt": q, "chosen": f.answer, "rejected": domain.wrong_answer(f, rng), "source": "benchmark"}
            for f in domain.facts for q in (f.exam_paraphrases if exam else [f.question, *f.paraphrases[:2]])]


def evaluate(spec, suite, base_answers, pairs, cfg) -> dict:
    loaded = ev.load_for_eval(spec, cfg.precision)
    metrics = ev.evaluate(spec, suite, cfg, loaded=loaded, base_answers=base_answers)
    if pairs:
        metrics["dpo_margin"] = ev.preference_margin(*loaded, pairs)
    return metrics


# What the base scores on the general rows and its own held-out answers: the same for every seed.
SEED_FREE = ("general_score", "general_mc_accuracy", "general_mc_prob", "general_agreement", "general_by_skill")


def base_on_seed(base_dir: Path, seed: int, cfg: EvalConfig) -> dict:
    """The base on what the seed draws (its exam, refusal questions and pairs); the general
    figures, which do not depend on the seed, come from the base's one full evaluation."""
    domain = build_domain(seed)
    return evaluate(str(base_dir), replace(demo_suite(seed, domain), general=[]), None,
                    dpo_pairs(domain, seed, exam=True), cfg)


def ratio(after: dict, before: dict, key: str) -> float:
    return round(after[key] / before[key], 3) if before.get(key) else 1.0


def recipe_task(seed: int, base_dir: Path, out: Path, replay_file: Path, base_answers: list[dict],
                eval_cfg: EvalConfig, run_cfg: RetrainConfig) -> dict:
    """The monthly recipe: SFT with 8% replay and the KL anchor, DPO on top, then its evaluation."""
    domain = build_domain(seed)
    suite = demo_suite(seed, domain)
    rows = sft_rows(domain, read_jsonl(replay_file), seed, REPLAY_RATIO)
    # The KL anchor's rows, chosen as the monthly retrain chooses them (retrain_job._anchor_rows).
    anchor_rows = anchor.rows_for(str(replay_file), seed, rows, sft_config(LoraSFTConfig(), base_dir), suite.prompts())
    timings = {}
    t = time.perf_counter()
    train_sft(base_dir, rows, out / "sft_replay", LoraSFTConfig(), run_cfg, anchor_rows=anchor_rows)
    timings["sft_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    train_dpo(base_dir, out / "sft_replay" / "adapter", dpo_pairs(domain, seed, exam=False), out / "dpo",
              LoraDPOConfig(), run_cfg, anchor_rows=anchor_rows)
    timings["dpo_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    after = evaluate((str(base_dir), str(out / "dpo" / "adapter")), suite, base_answers,
                     dpo_pairs(domain, seed, exam=True), eval_cfg)
    timings["eval_s"] = round(time.perf_counter() - t, 1)
    return {"after": after, "timings": timings}


def ablation_task(seed: int, base_dir: Path, out: Path, replay_file: Path, base_answers: list[dict],
                  eval_cfg: EvalConfig, run_cfg: RetrainConfig) -> dict:
    """The forgetting run: the same SFT with neither replay nor anchor rows (no rows: no anchor),
    scored on what it is there for (general retention; the domain for comparison)."""
    domain = build_domain(seed)
    t = time.perf_counter()
    train_sft(base_dir, sft_rows(domain, read_jsonl(replay_file), seed, 0.0), out / "sft_no_replay",
              LoraSFTConfig(), run_cfg)
    timings = {"sft_no_replay_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    no_replay = evaluate((str(base_dir), str(out / "sft_no_replay" / "adapter")),
                         replace(demo_suite(seed, domain), refusal=[]), base_answers, None, eval_cfg)
    timings["eval_no_replay_s"] = round(time.perf_counter() - t, 1)
    return {"no_replay": no_replay, "timings": timings}


def seed_result(seed: int, after: dict, no_replay: dict, seed_before: dict, timings: dict, cfg: EvalConfig) -> dict:
    passed, reasons = ev.gate(after, seed_before, cfg)
    return {
        "seed": seed,
        "domain_before": round(seed_before["domain_score"], 3),
        "domain_after": round(after["domain_score"], 3),
        "retention_with_replay": ratio(after, seed_before, "general_score"),
        "retention_without_replay": ratio(no_replay, seed_before, "general_score"),
        "agreement_retention_with_replay": ratio(after, seed_before, "general_agreement"),
        "agreement_retention_without_replay": ratio(no_replay, seed_before, "general_agreement"),
        "mc_retention_with_replay": ratio(after, seed_before, "general_mc_accuracy"),
        "mc_retention_without_replay": ratio(no_replay, seed_before, "general_mc_accuracy"),
        "choice_prob_retention_with_replay": ratio(after, seed_before, "general_mc_prob"),
        "choice_prob_retention_without_replay": ratio(no_replay, seed_before, "general_mc_prob"),
        "domain_after_no_replay": round(no_replay["domain_score"], 3),
        "dpo_margin_before": round(seed_before["dpo_margin"], 3),
        "dpo_margin_after": round(after["dpo_margin"], 3),
        "refusal_before": round(seed_before["refusal_rate"], 3),
        "refusal_after": round(after["refusal_rate"], 3),
        "gate_passed": passed,
        "gate_reasons": reasons,
        "timings_s": timings,
    }


def run_task(task: tuple, threads: int) -> tuple[tuple, dict]:
    """One task in a worker process: ("base", seed), ("recipe", seed) or ("ablation", seed)."""
    import torch

    torch.set_num_threads(threads)
    kind, seed, base_dir, out, replay_file, base_answers, eval_cfg, run_cfg = task
    t = time.perf_counter()
    if kind == "base":
        suite_seed = build_domain(seed)
        result = {"metrics": evaluate(str(base_dir), demo_suite(seed, suite_seed), base_answers,
                                      dpo_pairs(suite_seed, seed, exam=True), eval_cfg) if seed == 0
                  else base_on_seed(base_dir, seed, eval_cfg)}
    else:
        work = recipe_task if kind == "recipe" else ablation_task
        result = work(seed, base_dir, out / f"seed{seed}", replay_file, base_answers, eval_cfg, run_cfg)
    result["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps({"task": kind, "seed": seed, "seconds": result["seconds"]}), file=sys.stderr, flush=True)
    return (kind, seed), result


def run_tasks(tasks: list[tuple], jobs: int, threads: int) -> dict:
    """Every task, in `jobs` worker processes of threads // jobs torch threads each (longest first).
    On 2 cores two one-thread trainings get ~1.3x the work of one two-thread training done: a
    small model's step has much that one thread does alone (measured in benchmarks/RESULTS.md)."""
    if jobs <= 1:
        return dict(run_task(t, threads) for t in tasks)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    per_job = max(1, threads // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(f.result() for f in [pool.submit(run_task, t, per_job) for t in tasks])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/out/learning")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--base", help="a converted SmolLM2 directory (default: convert into <out>/base once)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all")
    p.add_argument("--jobs", type=int, default=2, help="worker processes running the seeds' tasks side by side")
    p.add_argument("--train-precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="retrain.precision of SFT and DPO (auto: bf16 where the CPU computes it natively)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()
    timings: dict = {}
    base_dir = Path(args.base) if args.base else out / "base"
    t = time.perf_counter()
    if not (base_dir / "config.json").is_file():
        convert_embedded(base_dir)
    timings["base_convert_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    replay_file, heldout_file = answers_paths(out, answers_key(base_dir, limit=GENERAL_ANSWERS))
    if not heldout_file.is_file():
        replay_file, heldout_file = write_answers(base_dir, out, limit=GENERAL_ANSWERS)
    base_answers = read_jsonl(heldout_file)
    timings["general_answers_s"] = round(time.perf_counter() - t, 1)
    eval_cfg = EvalConfig(pairwise_sample=0, max_new_tokens=24, similarity=False)
    run_cfg = RetrainConfig(cpu_threads=max(1, args.threads // args.jobs), precision=args.train_precision)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    common = (base_dir, out, replay_file, base_answers, eval_cfg, run_cfg)
    # Longest first, so the last task to start is a short one.
    tasks = ([("recipe", s, *common) for s in seeds] + [("ablation", s, *common) for s in seeds]
             + [("base", s, *common) for s in sorted(set(seeds) | {0})])
    t = time.perf_counter()
    done = run_tasks(tasks, args.jobs, args.threads)
    timings["tasks_s"] = round(time.perf_counter() - t, 1)
    before = done[("base", 0)]["metrics"]
    timings["base_eval_s"] = done[("base", 0)]["seconds"]
    per_seed = []
    for seed in seeds:
        seed_before = {**done[("base", seed)]["metrics"], **{k: before[k] for k in SEED_FREE if k in before}}
        recipe, ablation = done[("recipe", seed)], done[("ablation", seed)]
        per_seed.append(seed_result(seed, recipe["after"], ablation["no_replay"], seed_before,
                                    {**recipe["timings"], **ablation["timings"],
                                     "base_on_seed_s": done[("base", seed)]["seconds"]}, eval_cfg))
        print(json.dumps(per_seed[-1]), file=sys.stderr, flush=True)

    def agg(key: str) -> dict:
        values = [r[key] for r in per_seed]
        return {"mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}

    keys = ("domain_before", "domain_after", "retention_with_replay", "retention_without_replay",
            "agreement_retention_with_replay", "agreement_retention_without_replay", "mc_retention_with_replay",
            "mc_retention_without_replay", "choice_prob_retention_with_replay",
            "choice_prob_retention_without_replay", "dpo_margin_before", "dpo_margin_after", "domain_after_no_replay")
    result = {
        "benchmark": "learning",
        "model": "SmolLM2-135M-Instruct (embedded)",
        "seeds": seeds,
        **{k: agg(k)["mean"] for k in keys},
        "ranges": {k: agg(k) for k in keys},
        "retention_metric": eval_cfg.retention_metric,
        "eval_dtype": inference_dtype_name(eval_cfg.precision),
        "train_precision": training_precision(run_cfg.precision),
        "gate_passed": [r["gate_passed"] for r in per_seed],
        "base": {k: before.get(k) for k in ("domain_score", "general_mc_accuracy", "general_mc_prob", "general_agreement",
                                            "refusal_rate", "dpo_margin")},
        "per_seed": per_seed,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.jobs} jobs x {run_cfg.cpu_threads} torch threads",
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
