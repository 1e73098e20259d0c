"""An evaluation suite built from the deployment's own traffic, when `[eval] suite_path` is empty.

- domain: questions users asked whose right answer the traffic tells: a user's correction, or
  an answer with a clearly positive reward (>= `TOP_REWARD`). Questions are grouped into
  near-duplicate clusters (MinHash, as curation groups them; personal data scrubbed as curation
  scrubs it) and a fixed share of the clusters,
  chosen by a hash of the cluster's first question, becomes the exam. Every prompt of the suite
  is held out of every later training snapshot (the retrain passes them as holdout, and
  curation's near-duplicate decontamination removes their paraphrases too), so the exam stays
  unseen.
- general: the shipped multiple-choice questions (kaizenlm/base/data/general_choices.jsonl).
- refusal: when the traffic has a canned reply that users accepted for many different
  questions and that reads like a refusal ("Sorry, I can only help with ..."), those questions
  with that reply.

The suite is written once to $KAIZEN_HOME/eval/traffic-suite.jsonl and reused, so every
version is judged by the same exam; each row keeps the `turn_id` it came from, and each
trained version records the suite's path and content hash in its config (its lineage).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kaizenlm.base.general import choice_suite_rows
from kaizenlm.datasets.curation import load_candidates
from kaizenlm.datasets.near_dup import near_duplicate_groups
from kaizenlm.datasets.pii import scrub_pii
from kaizenlm.eval.metrics import normalize
from kaizenlm.eval.suite import Suite, SuiteError, load_suite, write_suite
from kaizenlm.feedback.rewards import Window

TOP_REWARD = 0.5
EXAM_PERCENT = 15  # of the answered clusters
MIN_DOMAIN_ROWS = 20
MAX_DOMAIN_ROWS = 300
REFUSAL_MARKERS = ("sorry", "can only help", "cannot help", "can't help", "not able to help", "only answer")
MIN_REFUSAL_CLUSTERS = 3


def traffic_suite_path(home: str | Path) -> Path:
    return Path(home) / "eval" / "traffic-suite.jsonl"


def suite_for(cfg, con=None) -> Suite:
    """The suite to judge with: `[eval] suite_path`; else the one built from traffic earlier;
    else (given the DuckDB connection) one built from the traffic now. SuiteError otherwise."""
    if cfg.eval.suite_path:
        return load_suite(cfg.eval.suite_path)
    path = traffic_suite_path(cfg.home)
    if path.is_file():
        return load_suite(path)
    if con is None:
        raise SuiteError("no evaluation suite: set [eval] suite_path to a JSONL file of {kind: domain|general|"
                         "refusal, prompt, reference} rows (docs/TRAINING.md, 'Evaluation suites'), or let the "
                         "first retrain build one from the traffic")
    suite = build_from_traffic(con, cfg)
    write_suite(path, suite)
    return load_suite(path)


def build_from_traffic(con, cfg) -> Suite:
    """See the module docstring; SuiteError when the traffic has too few answered questions."""
    frame = load_candidates(con, Window(), cfg.rewards)
    answered: dict[str, dict] = {}  # question -> {reference, turn_id}: corrections first, then top answers
    keep = tuple(cfg.curation.pii_keep)
    for row in frame.itertuples(index=False):
        question = scrub_pii(_last_user(row.messages), keep=keep)  # as curation scrubs training rows
        correction = row.correction if isinstance(row.correction, str) else ""
        if correction.strip():
            answered[question] = {"reference": scrub_pii(correction.strip(), keep=keep), "turn_id": row.turn_id}
        elif row.reward == row.reward and row.reward >= TOP_REWARD and question not in answered:  # NaN-safe
            answered[question] = {"reference": scrub_pii(row.response.strip(), keep=keep), "turn_id": row.turn_id}
    questions = sorted(answered)
    refusal_text = _canned_refusal(questions, answered, cfg.curation.dedup_threshold)
    refusal = [q for q in questions if refusal_text and answered[q]["reference"] == refusal_text]
    domain_questions = [q for q in questions if q not in set(refusal)]
    exam = _exam_clusters(domain_questions, cfg.curation.dedup_threshold)
    if len(exam) < MIN_DOMAIN_ROWS:
        raise SuiteError(f"no evaluation suite: [eval] suite_path is not set and the traffic has {len(exam)} exam "
                         f"questions with a known right answer (a correction or reward >= {TOP_REWARD}); it needs "
                         f"{MIN_DOMAIN_ROWS}. Collect more feedback, or write a suite file (docs/TRAINING.md)")
    return Suite(
        domain=[{"prompt": q, "reference": answered[q]["reference"], "turn_id": answered[q]["turn_id"]}
                for q in exam[:MAX_DOMAIN_ROWS]],
        general=choice_suite_rows(),
        refusal=[{"prompt": q, "reference": refusal_text, "turn_id": answered[q]["turn_id"]} for q in refusal[:100]],
        source="traffic",
    )


def _exam_clusters(questions: list[str], threshold: float) -> list[str]:
    """Questions of the clusters chosen for the exam (one row per question, cluster order stable)."""
    if not questions:
        return []
    labels = near_duplicate_groups([normalize(q) for q in questions], threshold)
    clusters: dict[int, list[str]] = {}
    for question, label in zip(questions, labels, strict=True):
        clusters.setdefault(int(label), []).append(question)
    chosen = [members for members in clusters.values()
              if int(hashlib.sha256(members[0].encode()).hexdigest()[:8], 16) % 100 < EXAM_PERCENT]
    return [q for members in sorted(chosen) for q in members]


def _canned_refusal(questions: list[str], answered: dict, threshold: float) -> str | None:
    """A reply accepted for questions of several clusters that reads like a refusal, or None."""
    by_reply: dict[str, list[str]] = {}
    for q in questions:
        reply = answered[q]["reference"]
        if any(marker in reply.lower() for marker in REFUSAL_MARKERS):
            by_reply.setdefault(reply, []).append(q)
    for reply, asked in sorted(by_reply.items(), key=lambda kv: -len(kv[1])):
        if len(set(near_duplicate_groups([normalize(q) for q in asked], threshold))) >= MIN_REFUSAL_CLUSTERS:
            return reply
    return None


def _last_user(messages: list[dict]) -> str:
    return next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
