"""Forgetting sweep: which tiny-model retrain settings teach the domain without costing the
general skills? Prints ONE JSON line per config.

    .venv/bin/python benchmarks/forgetting_sweep.py --base benchmarks/out/learning/base \
        [--configs current,attn_mlp_r64] [--json '{"name": "x", "sft": {...}}'] [--no-dpo] [--no-zero]

Each config is run through the real recipes (lora_sft.train_sft, lora_dpo.train_dpo) with the
tiny overrides replaced by the config's keys, on the same rows benchmarks/learning.py uses:
  * SFT on the domain phrasings + 8% general replay, then (unless --no-dpo) DPO on top;
  * the same SFT with 0% replay (unless --no-zero), for the measured drop.
Config keys: "sft" / "dpo" (override dicts merged into lora_sft / lora_dpo TINY_OVERRIDES),
"lora" (extra peft LoraConfig arguments, e.g. {"use_rslora": true}), "stratified" (replay
rows drawn evenly per skill instead of a plain random sample), "domain_tokens" (PEFT
trainable_token_indices on the tokens only domain rows use; fails with TRL's fused LM head).
Figures: exam = domain exact match; ret = held-out general score / the base's; refusal =
out-of-scope refusal rate (the base's is in the first line).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import learning as L  # noqa: E402

from kaizenlm.config import EvalConfig, LoraDPOConfig, LoraSFTConfig, RetrainConfig  # noqa: E402
from kaizenlm.demo.domain import build_domain  # noqa: E402
from kaizenlm.demo.general import general_skills, replay_rows  # noqa: E402
from kaizenlm.eval import evaluate as ev  # noqa: E402
from kaizenlm.retrain import lora_dpo, lora_sft  # noqa: E402

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]

PRESETS: dict[str, dict] = {
    "current": {},
    "attn_mlp_r32": {"sft": {"target_modules": ATTN + MLP, "lora_r": 32, "lora_alpha": 64}},
    "attn_mlp_r64": {"sft": {"target_modules": ATTN + MLP, "lora_r": 64, "lora_alpha": 128}},
    "attn_mlp_r64_rs": {"sft": {"target_modules": ATTN + MLP, "lora_r": 64, "lora_alpha": 16},
                        "lora": {"use_rslora": True}},
    "mlp_r64": {"sft": {"target_modules": MLP, "lora_r": 64, "lora_alpha": 128}},
    "embed_only": {"sft": {"target_modules": ["embed_tokens"]}},
    "stratified": {"stratified": True},
}

SFT_DEFAULT_KEYS = {"lora_r", "lora_alpha"}  # LoraSFTConfig fields that TINY_OVERRIDES may not carry


def stratified_sample(pool: list[dict], n: int, seed: int) -> list[dict]:
    """n rows cycling over the skills (refusal included), each skill's rows in random order."""
    rng = random.Random(seed)
    by_skill: dict[str, list[dict]] = defaultdict(list)
    for r in pool:
        by_skill[r["skill"]].append(r)
    skills = sorted(by_skill)
    for rows in by_skill.values():
        rng.shuffle(rows)
    out, i = [], 0
    while len(out) < n:
        rows = by_skill[skills[i % len(skills)]]
        out.append(rows[(i // len(skills)) % len(rows)])
        i += 1
    return out


def domain_only_tokens(base: Path, domain, seed: int) -> list[int]:
    """Token ids in the domain's training rows that no general training row uses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))

    def ids(rows):
        return {i for r in rows for i in tok(r["prompt"] + " " + r["response"], add_special_tokens=False)["input_ids"]}

    return sorted(ids(domain.train_rows()) - ids(general_skills(seed, n_train=300, domain=domain)[0]))


def sft_rows(domain, seed: int, ratio: float, stratified: bool) -> list[dict]:
    if not stratified or ratio <= 0:
        return L.sft_rows(domain, seed, ratio)
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in domain.train_rows()]
    n = round(len(rows) * ratio / (1 - ratio))
    rows += [{"prompt": r["prompt"], "response": r["response"]}
             for r in stratified_sample(replay_rows(seed, domain=domain), n, seed)]
    random.Random(seed).shuffle(rows)
    return rows


def short(m: dict, before: dict) -> dict:
    return {"exam": round(m["domain_score"], 3), "f1": round(m["domain_token_f1"], 3),
            "ret": round(ev.retention(m, before), 3), "general": round(m["general_score"], 3),
            "refusal": round(m["refusal_rate"], 3),
            "skills": {k: round(v, 2) for k, v in m["general_by_skill"].items()}}


def run_config(name: str, cfg: dict, base: Path, out: Path, domain, heldout, before, args) -> dict:
    run = RetrainConfig(seed=args.seed, cpu_threads=args.threads)
    eval_cfg = EvalConfig(pairwise_sample=0)
    sft_over = {**ORIG_SFT, **cfg.get("sft", {})}
    dpo_over = {**ORIG_DPO, **cfg.get("dpo", {})}
    lora_sft.TINY_OVERRIDES = {k: v for k, v in sft_over.items() if k not in SFT_DEFAULT_KEYS}
    lora_dpo.TINY_OVERRIDES = dpo_over
    # lora_r / lora_alpha are not tiny overrides today: pass them explicitly.
    sft_cfg = LoraSFTConfig(**{k: v for k, v in sft_over.items() if k in SFT_DEFAULT_KEYS})
    extra = dict(cfg.get("lora", {}))
    if cfg.get("domain_tokens"):
        extra["trainable_token_indices"] = {"embed_tokens": domain_only_tokens(base, domain, args.seed)}

    def setup_lora(c):
        from peft import LoraConfig

        return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.target_modules), bias="none", task_type="CAUSAL_LM", **extra)

    lora_sft._setup_lora = setup_lora
    res: dict = {"name": name, "cfg": cfg}
    d = out / name
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    sft = lora_sft.train_sft(base, sft_rows(domain, args.seed, args.replay, cfg.get("stratified", False)),
                             d / "sft", sft_cfg, run)
    res["sft_s"] = round(time.perf_counter() - t, 1)
    res["sft_steps"] = sft["steps"]
    res["sft8"] = short(ev.evaluate((str(base), str(d / "sft" / "adapter")), domain, heldout, eval_cfg), before)
    if not args.no_dpo:
        t = time.perf_counter()
        dpo = lora_dpo.train_dpo(base, d / "sft" / "adapter", L.dpo_pairs(domain, args.seed, exam=False), d / "dpo",
                                 LoraDPOConfig(), run)
        res["dpo_s"] = round(time.perf_counter() - t, 1)
        res["dpo_steps"] = dpo["steps"]
        res["dpo8"] = short(ev.evaluate((str(base), str(d / "dpo" / "adapter")), domain, heldout, eval_cfg), before)
    if not args.no_zero:
        train_cfg = LoraSFTConfig(**{k: v for k, v in sft_over.items() if k in SFT_DEFAULT_KEYS})
        lora_sft.train_sft(base, sft_rows(domain, args.seed, 0.0, False), d / "sft0", train_cfg, run)
        res["sft0"] = short(ev.evaluate((str(base), str(d / "sft0" / "adapter")), domain, heldout, eval_cfg), before)
    return res


ORIG_SFT = dict(lora_sft.TINY_OVERRIDES)
ORIG_DPO = dict(lora_dpo.TINY_OVERRIDES)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="benchmarks/out/learning/base")
    p.add_argument("--out", default="benchmarks/out/forgetting")
    p.add_argument("--configs", default="current", help="comma-separated preset names")
    p.add_argument("--json", action="append", default=[], help='a config: {"name": ..., "sft": {...}, ...}')
    p.add_argument("--replay", type=float, default=L.REPLAY_RATIO)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-dpo", action="store_true")
    p.add_argument("--no-zero", action="store_true")
    args = p.parse_args()
    base, out = Path(args.base), Path(args.out)
    domain = build_domain(args.seed)
    _, heldout = general_skills(args.seed, domain=domain)
    before = ev.evaluate(str(base), domain, heldout, EvalConfig(pairwise_sample=0))
    print(json.dumps({"name": "base", **short(before, before)}), flush=True)
    configs = [(n, PRESETS[n]) for n in args.configs.split(",") if n]
    configs += [(c["name"], c) for c in map(json.loads, args.json)]
    for name, cfg in configs:
        print(json.dumps(run_config(name, cfg, base, out, domain, heldout, before, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
