"""The KL anchor's rows: general prompts on which a retrain keeps the model's next-token
distributions close to the base model's (lora_sft.AnchorLoss adds the term to the SFT and
DPO losses).

Why: replay at 5-10% of the SFT rows cannot hold a small model's general skills while it
learns new facts (docs/TRAINING.md "Forgetting countermeasures"); a KL term towards the
base's own predictions on many *other* general prompts does. These prompts are not SFT
rows: they are never trained towards a reference answer, only towards the base's outputs.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from kaizenlm.config import LoraSFTConfig


def prompt_key(prompt: str | list[dict]) -> str:
    """The last user message's text, whitespace-normalised: how rows are matched across sources."""
    from kaizenlm.base.model import as_messages

    users = [m["content"] for m in as_messages(prompt) if m["role"] == "user"]
    return " ".join((users[-1] if users else "").split())


def pool_from_source(source: str, seed: int) -> list[dict]:
    """General rows {messages, response, skill} of a replay source: a file (as
    curation.replay_path reads it) or the embedded general-skills set's training rows."""
    from kaizenlm.demo.general import EMBEDDED_REPLAY, general_skills

    if source == EMBEDDED_REPLAY:
        return [{"messages": [{"role": "user", "content": r["prompt"]}], "response": r["response"],
                 "skill": r["skill"]} for r in general_skills(seed)[0]]
    from kaizenlm.datasets.snapshots import load_replay

    return [{**r, "skill": None} for r in load_replay(source)]


def snapshot_source(snapshot_dir: str | Path) -> str | None:
    """The replay source a snapshot's general rows came from (its manifest's mix_ratio.source)."""
    path = Path(snapshot_dir) / "manifest.json"
    if not path.is_file():
        return None
    return (json.loads(path.read_text(encoding="utf-8")).get("mix_ratio") or {}).get("source")


def rows_for(source: str, seed: int, sft_rows: list[dict], cfg: LoraSFTConfig) -> list[dict]:
    """The anchor rows of a retrain: general rows of ``source`` that are neither SFT rows
    (replay rows included) nor any prompt the evaluation asks, held-out general rows included
    (perturbed copies too: anchoring on an exam question would inflate its score)."""
    exclude = {prompt_key(r["prompt"]) for r in sft_rows} | {prompt_key(p) for p in evaluation_prompts(seed)}
    return select(pool_from_source(source, seed), exclude, cfg, seed)


def evaluation_prompts(seed: int) -> list[str]:
    """What `kaizen eval` and the retrain job ask at this seed: the domain exam, the
    out-of-scope exam and the held-out general rows."""
    from kaizenlm.demo.domain import build_domain
    from kaizenlm.demo.general import general_skills

    domain = build_domain(seed)
    _, heldout = general_skills(seed, domain=domain)
    return [r["prompt"] for r in domain.exam_rows()] + list(domain.out_of_scope_exam) + [r["prompt"] for r in heldout]


def select(pool: list[dict], exclude: set[str], cfg: LoraSFTConfig, seed: int) -> list[dict]:
    """The anchor rows: pool rows whose prompt is not in ``exclude`` (SFT and held-out prompts),
    at most ``cfg.anchor_pool_size``, every skill equally often when rows name one, plus
    ``cfg.anchor_perturb_copies`` perturbed copies of each (response None: the base answers)."""
    rng = random.Random(seed + 17)
    rows = [r for r in pool if prompt_key(r["messages"]) not in exclude]
    rows = list({prompt_key(r["messages"]): r for r in rows}.values())
    rng.shuffle(rows)
    rows = rows[: cfg.anchor_pool_size]
    if cfg.anchor_balance_skills:
        rows = _balanced(rows)
    vocabulary = sorted({w for r in rows for w in prompt_key(r["messages"]).split()})
    copies = []
    for row in rows:
        for _ in range(cfg.anchor_perturb_copies):
            text = _perturbed(prompt_key(row["messages"]), vocabulary, rng)
            if text not in exclude:
                copies.append({"messages": [*row["messages"][:-1], {"role": "user", "content": text}],
                               "response": None, "skill": row.get("skill")})
    return rows + copies


def _balanced(rows: list[dict]) -> list[dict]:
    """Small skills repeated until each skill has as many rows as the largest (rows without a skill: as is)."""
    by_skill: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        by_skill[r.get("skill")].append(r)
    if len([s for s in by_skill if s is not None]) < 2:
        return rows
    top = max(len(v) for s, v in by_skill.items() if s is not None)
    return [v[i % len(v)] for s, v in by_skill.items() for i in range(top if s is not None else len(v))]


def _perturbed(text: str, vocabulary: list[str], rng: random.Random) -> str:
    """One word dropped, inserted or replaced: the anchor then also covers prompts near the pool's."""
    words = text.split()
    op = rng.choice(["drop", "insert", "replace"]) if len(words) > 1 else "insert"
    i = rng.randrange(len(words)) if words else 0
    if op == "drop":
        del words[i]
    elif op == "insert":
        words.insert(i, rng.choice(vocabulary))
    else:
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def answer_missing(rows: list[dict], model, tokenizer) -> list[dict]:
    """Rows whose response is None get the model's greedy answer (call it with the base model)."""
    from kaizenlm.eval.evaluate import generate_answers

    todo = sorted({json.dumps(r["messages"]) for r in rows if r["response"] is None})
    if not todo:
        return rows
    answers = dict(zip(todo, generate_answers(model, tokenizer, [json.loads(t) for t in todo]), strict=True))
    return [{**r, "response": answers[json.dumps(r["messages"])]} if r["response"] is None else r for r in rows]
