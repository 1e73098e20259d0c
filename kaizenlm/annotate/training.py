"""How review labels feed the loop: reviewed rows for a dataset build, blind comparisons after a
retrain, and the human win rate beside the automatic one.

Everything here is behind the training gate (`labels.training_gate`): while the reviewers'
Fleiss' kappa on the overlap is below `annotate.min_kappa`, `reviewed_rows` gives no rows
(its `gate.reason` says why, and the dataset build writes it into the manifest and its
warnings) and the human win rate is not set (its note says why).

- Consensus per item: the current label of each reviewer who labelled it; the verdict more of
  them gave than any other wins, a tie gives no decision (the item waits for another reviewer).
  An `edit` decision takes the gold answer of the latest edit label.
- What a decision means (docs/ANNOTATION.md): on a `correction` item the verdict judges the
  user's correction (accept: it becomes the SFT target; edit: the gold answer does; reject: the
  correction is dropped); on `disagreement` and `sample` items it judges the served answer
  (accept: it becomes a target; edit: the gold answer does; reject: never a target). A blind
  pair decided `a` or `b` becomes a DPO pair (chosen: the preferred answer); `tie` and
  `both_bad` make none.
- Human win rate of a candidate: over the blind pairs queued for it, each reviewer's label
  scores 1 (prefers the candidate), 0 (prefers the champion) or 0.5 (tie, both bad); an item
  scores the mean of its labels and the rate is the mean over labelled items (ties count half,
  as in the automatic `pairwise_win_rate`). Set as metrics `human_win_rate`,
  `human_comparisons`, `human_win_rate_vs` on the candidate version whenever labels arrive.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime

import duckdb

from kaizenlm.annotate import labels, queue
from kaizenlm.annotate.settings import label_schema, settings_of
from kaizenlm.datasets.reviewed import ReviewedRows
from kaizenlm.datasets.text import normalize
from kaizenlm.registry import versions as version_ops

BLIND_WHY = "blind comparison after a retrain"


def _items(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    return {i["item_id"]: i for i in queue._rows(con.execute(
        f"SELECT {', '.join(queue.ITEM_COLUMNS)} FROM review_items WHERE item_id IN "
        "(SELECT DISTINCT item_id FROM review_labels)"))}


def decisions(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The consensus of each labelled item: {item_id, kind, verdict, label (the row it rests
    on), seqs, reviewers, tied}; `verdict` None where the reviewers tied."""
    by_item: dict[str, list[dict]] = {}
    for row in labels.current_labels(con):
        by_item.setdefault(row["item_id"], []).append(row)
    out = []
    for item_id, rows in sorted(by_item.items()):
        counts = Counter(r["verdict"] for r in rows).most_common()
        tied = len(counts) > 1 and counts[0][1] == counts[1][1]
        verdict = None if tied else counts[0][0]
        backing = [r for r in rows if r["verdict"] == verdict]
        out.append({"item_id": item_id, "kind": rows[0]["kind"], "verdict": verdict,
                    "label": max(backing, key=lambda r: r["seq"]) if backing else None,
                    "seqs": sorted(r["seq"] for r in backing), "reviewers": len(rows), "tied": tied})
    return out


def reviewed_rows(con: duckdb.DuckDBPyConnection, cfg) -> ReviewedRows:
    """What reviewers decided, for a dataset build (kaizenlm.datasets.reviewed) -- empty, with
    the gate's reason, while their agreement is below annotate.min_kappa."""
    settings = settings_of(cfg)
    gate = {**labels.agreement_summary(con, label_schema(settings), min_kappa=settings.min_kappa)["gate"],
            "labelled_items": con.execute("SELECT count(DISTINCT item_id) FROM review_labels").fetchone()[0]}
    if not gate["open"]:
        return ReviewedRows(gate=gate)
    items = _items(con)
    sft, rejected, pairs, seqs = [], [], [], []
    for d in decisions(con):
        item, verdict = items[d["item_id"]], d["verdict"]
        if verdict is None:
            continue
        if item["kind"] == "blind_pair":
            if verdict not in ("a", "b"):
                continue
            win, lose = (("answer_a", "version_a"), ("answer_b", "version_b"))[:: 1 if verdict == "a" else -1]
            pairs.append({"item_id": item["item_id"], "prompt": item["prompt"], "chosen": item[win[0]],
                          "rejected": item[lose[0]], "chosen_version": item[win[1]],
                          "rejected_version": item[lose[1]], "ts": item["created_at"]})
        elif verdict == "reject":
            rejected.append({"item_id": item["item_id"], "turn_id": item["turn_id"],
                             "what": "correction" if item["kind"] == "correction" else "answer"})
        else:
            if verdict == "edit":
                target = d["label"]["gold_answer"]
            else:
                target = item["correction"] if item["kind"] == "correction" else item["answer"]
            sft.append({"item_id": item["item_id"], "turn_id": item["turn_id"], "kind": item["kind"],
                        "target": target, "verdict": verdict})
        seqs += d["seqs"]
    return ReviewedRows(sft=sft, rejected=rejected, pairs=pairs, gate=gate, labels=sorted(seqs))


# ------------------------------------------------------------------------------ blind pairs


def enqueue_blind_pairs(con: duckdb.DuckDBPyConnection, cfg, candidate_id: str, champion_id: str,
                        evaluation: Mapping, now: datetime | None = None) -> dict:
    """Queue blind comparisons of a retrain's candidate and champion on the evaluation's domain
    questions (`evaluation["candidate"]["answers"]`, `evaluation["champion"]["answers"]`:
    question -> answer). Questions both answered alike are skipped (nothing to compare); of the
    rest, at most annotate.blind_pairs, picked by a hash of (candidate, champion, question).
    Which answer is shown as A is drawn per item (kaizenlm.annotate.queue); the versions stay
    on the server. New items are assigned to annotate.reviewers when there are any."""
    settings = settings_of(cfg)
    cand = dict((evaluation.get("candidate") or {}).get("answers") or {})
    champ = dict((evaluation.get("champion") or {}).get("answers") or {})
    both = sorted(q for q in cand if q in champ and _said(cand[q]) and _said(champ[q]) and _said(q))
    alike = [q for q in both if normalize(cand[q]) == normalize(champ[q])]
    differ = [q for q in both if normalize(cand[q]) != normalize(champ[q])]
    picked = sorted(differ, key=lambda q: hashlib.sha256(f"{candidate_id}|{champion_id}|{q}".encode()).hexdigest())
    picked = picked[:settings.blind_pairs]
    asked = set(cand) | set(champ)
    out = {"candidate": candidate_id, "champion": champion_id, "questions": len(both),
           "not_answered_by_both": len(asked) - len(both), "answered_alike": len(alike),
           "not_picked": len(differ) - len(picked), "queued": 0, "already_queued": 0, "assigned": None}
    if not picked:
        return out
    rows = [{"prompt": q, "candidates": [{"version": candidate_id, "answer": cand[q]},
                                         {"version": champion_id, "answer": champ[q]}],
             "source": {"why": BLIND_WHY, "candidate": candidate_id, "champion": champion_id}} for q in picked]
    added = queue.enqueue(con, "blind_pair", rows, batch=f"retrain-{candidate_id}", now=now)
    out.update(queued=added["added"], already_queued=added["already_queued"])
    if settings.reviewers:
        done = queue.assign(con, settings.reviewers, overlap=settings.overlap,
                            overlap_reviewers=settings.overlap_reviewers, now=now)
        out["assigned"] = done["assigned_items"]
    refresh_human_metrics(con, cfg, [candidate_id])  # human_comparisons 0 beside the automatic win rate, for now
    return out


def _said(text) -> bool:
    return isinstance(text, str) and bool(text.strip())


# ------------------------------------------------------------------------------ human win rate


def human_win_rates(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    """Per candidate with blind pairs: {human_win_rate, human_comparisons, human_win_rate_vs,
    human_labels} from the current labels (see the module docstring), before any gate."""
    per_item: dict[str, list[float]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for item_id, source in con.execute(
            "SELECT item_id, source FROM review_items WHERE kind = 'blind_pair'").fetchall():
        src = json.loads(source) if isinstance(source, str) else (source or {})
        if src.get("candidate") and src.get("champion"):
            meta[item_id] = (src["candidate"], src["champion"])
    for row in labels.current_labels(con, blind=True):
        if row["item_id"] not in meta:
            continue
        candidate, _ = meta[row["item_id"]]
        score = 1.0 if row["preferred_version"] == candidate else 0.0 if row["preferred_version"] else 0.5
        per_item.setdefault(row["item_id"], []).append(score)
    out: dict[str, dict] = {}
    for item_id, (candidate, champion) in sorted(meta.items()):
        entry = out.setdefault(candidate, {"human_win_rate_vs": champion, "_scores": [], "human_labels": 0})
        if item_id in per_item:
            entry["_scores"].append(sum(per_item[item_id]) / len(per_item[item_id]))
            entry["human_labels"] += len(per_item[item_id])
    for entry in out.values():
        scores = entry.pop("_scores")
        entry["human_comparisons"] = len(scores)
        entry["human_win_rate"] = round(sum(scores) / len(scores), 6) if scores else None
    return out


def refresh_human_metrics(con: duckdb.DuckDBPyConnection, cfg, candidates: list[str] | None = None) -> list[dict]:
    """Set the human win rate on the candidate versions (all with blind pairs, or these): the
    rate only while the training gate is open, `human_win_rate_note` saying why not otherwise.
    Versions the registry does not know are left out. Returns what was set."""
    settings = settings_of(cfg)
    gate = labels.agreement_summary(con, label_schema(settings), min_kappa=settings.min_kappa)["gate"]
    known = {v for (v,) in con.execute("SELECT version_id FROM model_versions").fetchall()}
    done = []
    for candidate, entry in human_win_rates(con).items():
        if candidate not in known or (candidates is not None and candidate not in candidates):
            continue
        metrics = {**entry, "human_win_rate": entry["human_win_rate"] if gate["open"] else None,
                   "human_win_rate_note": gate["reason"] if gate["open"] or not entry["human_comparisons"]
                   else f"not counted: {gate['reason']}"}
        if not entry["human_comparisons"]:
            metrics["human_win_rate_note"] = "no blind comparison labelled yet"
        version_ops.set_metrics(con, candidate, metrics)
        done.append({"version_id": candidate, **metrics})
    return done
