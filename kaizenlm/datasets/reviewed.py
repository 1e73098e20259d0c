"""Reviewed rows in a dataset build: what human reviewers decided, as plain data.

The annotation package (kaizenlm.annotate, a layer above this one) turns the review labels
into a `ReviewedRows` -- only while the reviewers agree (its training gate) -- and the callers
above both packages pass it to `kaizenlm.datasets.snapshots.build_snapshot(..., reviews=)`.
This module never reads the review tables; it applies what it is given:

- ``sft``: a reviewer accepted a turn's answer (or the user's correction of it) or edited it
  into a gold answer. The turn's SFT target becomes that text, with source ``reviewed``,
  which ranks above raw user corrections in every cap (kaizenlm.datasets.curation). For a
  correction item the reviewed text also replaces the correction in the correction DPO pair,
  and the turn skips the agreement and flagged-user checks (a reviewer looked at it).
- ``rejected``: a reviewer rejected a user's correction (``what = 'correction'``: it becomes
  no SFT target and no DPO pair) or a served answer (``what = 'answer'``: it is never a target
  or a chosen answer; it may still be a pair's rejected side). Both show in the funnel as
  ``rejected_by_reviewer``.
- ``pairs``: blind comparisons with a winner become DPO pairs of source ``blind_review``
  (chosen: the preferred answer, rejected: the other). They are scrubbed and decontaminated
  like every pair: a comparison on a held-out evaluation question never enters training.

A reviewed turn outside the build's window is not pulled in (the window is the build's
input); the funnel counts it as ``outside_window``. `lineage` says which reviews a
snapshot used (item ids, label sequence numbers, the gate's kappa) for its manifest; the
content hash covers only the tables, so the same inputs give the same snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kaizenlm.config import CurationConfig
from kaizenlm.datasets.curation import Funnel, examples_of
from kaizenlm.datasets.decontam import contaminated
from kaizenlm.datasets.pairs import PAIR_COLUMNS
from kaizenlm.datasets.pii import scrub_pii
from kaizenlm.datasets.quality import text_issue
from kaizenlm.datasets.text import digest, normalize

REVIEWED = "reviewed"  # the SFT source of a reviewer's accepted or edited text
BLIND_REVIEW = "blind_review"  # the DPO source of a blind comparison's outcome
REJECTED = "rejected_by_reviewer"  # the issue a rejected correction or answer gets
REVIEWED_REWARD = 1.0  # the reward a reviewed target counts with (as a user correction's GOLD_REWARD)
REJECT_WHAT = ("correction", "answer")


@dataclass(frozen=True)
class ReviewedRows:
    """What reviewers decided, for one build (see the module docstring for each part).

    sft: [{item_id, turn_id, kind, target}]; rejected: [{item_id, turn_id, what}];
    pairs: [{item_id, prompt, chosen, rejected, chosen_version, rejected_version, ts}];
    gate: {open, reason, fleiss_kappa, min_kappa}; labels: the review_labels seqs behind them."""

    sft: Sequence[Mapping] = ()
    rejected: Sequence[Mapping] = ()
    pairs: Sequence[Mapping] = ()
    gate: Mapping = field(default_factory=dict)
    labels: Sequence[int] = ()

    def __post_init__(self) -> None:
        for n, r in enumerate(self.sft):
            _text(r, "item_id", f"reviews.sft[{n}]")
            _text(r, "turn_id", f"reviews.sft[{n}]")
            _text(r, "target", f"reviews.sft[{n}]")
        for n, r in enumerate(self.rejected):
            _text(r, "turn_id", f"reviews.rejected[{n}]")
            if r.get("what") not in REJECT_WHAT:
                raise ValueError(f"reviews.rejected[{n}].what: must be one of {', '.join(REJECT_WHAT)}")
        for n, r in enumerate(self.pairs):
            for key in ("item_id", "prompt", "chosen", "rejected"):
                _text(r, key, f"reviews.pairs[{n}]")

    @property
    def accepted_turns(self) -> frozenset[str]:
        """Turns a reviewer accepted or edited: they skip the integrity checks (kaizenlm.datasets.integrity)."""
        return frozenset(str(r["turn_id"]) for r in self.sft)

    @property
    def empty(self) -> bool:
        return not (self.sft or self.rejected or self.pairs)


def _text(row: Mapping, key: str, where: str) -> str:
    value = row.get(key) if isinstance(row, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}.{key}: must be a non-empty string")
    return value


def apply(frame: pd.DataFrame, reviews: ReviewedRows | None, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step reviewed (on a `prepare`d, `mark_contradicted` frame): reviewed targets and rejections
    onto the window's turns. Adds ``reviewed_target``, ``reviewed_issue`` and ``review_item``."""
    frame = frame.assign(reviewed_target=pd.Series([None] * len(frame), dtype=object, index=frame.index),
                         reviewed_issue=pd.Series([None] * len(frame), dtype=object, index=frame.index),
                         review_item=pd.Series([None] * len(frame), dtype=object, index=frame.index))
    if reviews is None or (not reviews.sft and not reviews.rejected):
        return frame
    position = {t: i for i, t in enumerate(frame["turn_id"].tolist())}
    targets, issues, items = (frame[c].tolist() for c in ("reviewed_target", "reviewed_issue", "review_item"))
    correction, correction_issue = frame["correction"].tolist(), frame["correction_issue"].tolist()
    response_issue = frame["response_issue"].tolist()
    hold = frame["correction_hold"].tolist() if "correction_hold" in frame else [None] * len(frame)
    outside = applied = rejected_corrections = rejected_answers = 0
    for r in reviews.sft:
        i = position.get(r["turn_id"])
        if i is None:
            outside += 1
            continue
        text = scrub_pii(r["target"], keep=cfg.pii_keep)
        issue = text_issue(text, cfg, casual=True)
        targets[i], issues[i], items[i] = text, issue, r["item_id"]
        if r.get("kind") == "correction" and correction_issue[i] != "none":
            # the reviewed text is the correction from now on (its DPO pair too), and a reviewer's word ends any hold
            correction[i], correction_issue[i], hold[i] = text, issue, None
        applied += 1
    for r in reviews.rejected:
        i = position.get(r["turn_id"])
        if i is None:
            outside += 1
            continue
        if r["what"] == "correction" and correction_issue[i] != "none":
            correction_issue[i], hold[i] = REJECTED, None  # dropped for the reviewer's reason, not a hold
            rejected_corrections += 1
        elif r["what"] == "answer":
            response_issue[i] = REJECTED
            rejected_answers += 1
        items[i] = items[i] or r.get("item_id")
    frame = frame.assign(reviewed_target=targets, reviewed_issue=issues, review_item=items, correction=correction,
                         correction_issue=correction_issue, response_issue=response_issue, correction_hold=hold)
    funnel.step("candidates", "reviewed", len(frame), len(frame),  # drops nothing here: marks what later steps do
                params={"gate": dict(reviews.gate), "sft_rows_given": len(reviews.sft),
                        "rejections_given": len(reviews.rejected), "reviewed_targets": applied,
                        "rejected_corrections": rejected_corrections, "rejected_answers": rejected_answers,
                        "outside_window": outside})
    return frame


def add_pairs(dpo: pd.DataFrame, reviews: ReviewedRows | None, cfg: CurationConfig, holdout: Sequence[str],
              funnel: Funnel) -> pd.DataFrame:
    """Step blind_review: the blind comparisons' DPO pairs added to the mined ones (sorted by pair_id).

    Dropped: a chosen answer that fails the quality rules, a question that matches a held-out
    text, a pair whose (question, chosen, rejected) is already there."""
    if reviews is None:
        return dpo
    funnel.notes.setdefault("pair_sources", {})[BLIND_REVIEW] = 0
    if not reviews.pairs:
        return dpo
    rows = pd.DataFrame([{
        "item_id": p["item_id"], "prompt": scrub_pii(p["prompt"], keep=cfg.pii_keep),
        "chosen": scrub_pii(p["chosen"], keep=cfg.pii_keep), "rejected": scrub_pii(p["rejected"], keep=cfg.pii_keep),
        "model_version": p.get("chosen_version"), "ts": pd.Timestamp(p["ts"]) if p.get("ts") else pd.NaT,
    } for p in sorted(reviews.pairs, key=lambda p: p["item_id"])])
    bad_chosen = np.array([text_issue(c, cfg, casual=True) is not None for c in rows["chosen"].tolist()], dtype=bool)
    tainted = contaminated(rows["prompt"].tolist(), holdout, cfg.decontam_threshold) & ~bad_chosen
    existing = {(normalize(p), normalize(c), normalize(r)) for p, c, r in zip(
        dpo["prompt"].tolist(), dpo["chosen"].tolist(), dpo["rejected"].tolist(), strict=True)} if len(dpo) else set()
    seen, same = set(existing), []
    for p, c, r, skip in zip(rows["prompt"].tolist(), rows["chosen"].tolist(), rows["rejected"].tolist(),
                             bad_chosen | tainted, strict=True):
        key = (normalize(p), normalize(c), normalize(r))
        same.append(not skip and key in seen)
        seen.add(key)
    same = np.array(same, dtype=bool)
    keep = ~(bad_chosen | tainted | same)
    why = np.select([bad_chosen, tainted, same], ["chosen_fails_quality", "matches_holdout", "same_pair"], "")
    removed = rows[~keep].assign(_why=why[~keep])
    funnel.step("dpo", BLIND_REVIEW, len(rows), int(keep.sum()),
                params={"decontam_threshold": cfg.decontam_threshold, "from": "blind comparisons with a winner"},
                examples=examples_of(removed, removed["_why"].tolist(), "prompt", "item_id"),
                chosen_fails_quality=int(bad_chosen.sum()), matches_holdout=int(tainted.sum()),
                same_pair=int(same.sum()))
    rows = rows[keep]
    funnel.notes["pair_sources"][BLIND_REVIEW] = len(rows)
    if rows.empty:
        return dpo
    keys = [digest(normalize(p)) for p in rows["prompt"].tolist()]
    added = pd.DataFrame({
        "pair_id": [digest(BLIND_REVIEW, i) for i in rows["item_id"].tolist()], "source": BLIND_REVIEW,
        "cluster": [f"review:{k}" for k in keys], "context_key": keys,
        "conversation_id": [f"review:{i}" for i in rows["item_id"].tolist()],
        "rejected_conversation_id": [f"review:{i}" for i in rows["item_id"].tolist()],
        "user_id": None, "topic": None, "experiment_id": None,
        "messages": [[{"role": "user", "content": p}] for p in rows["prompt"].tolist()],
        "prompt": rows["prompt"].tolist(), "chosen": rows["chosen"].tolist(), "rejected": rows["rejected"].tolist(),
        "chosen_turn_id": None, "rejected_turn_id": None, "chosen_reward": REVIEWED_REWARD, "rejected_reward": 0.0,
        "margin": REVIEWED_REWARD, "model_version": rows["model_version"].tolist(), "ts": rows["ts"].tolist(),
        "contaminated": False,
    })
    merged = added if dpo.empty else pd.concat([dpo[[c for c in PAIR_COLUMNS if c in dpo]], added], ignore_index=True)
    return merged.sort_values("pair_id").reset_index(drop=True)


def lineage(reviews: ReviewedRows | None, sft: pd.DataFrame, dpo: pd.DataFrame) -> dict | None:
    """What the snapshot's manifest records of the reviews: the gate (and its kappa), how many
    reviewed rows were offered and used, and which review items the tables hold."""
    if reviews is None:
        return None
    turn_item = {r["turn_id"]: r["item_id"] for r in reviews.sft}
    used_sft = sorted({turn_item[t] for t, s in zip(sft["turn_id"].tolist(), sft["source"].tolist(), strict=True)
                       if s == REVIEWED and t in turn_item}) if len(sft) else []
    pair_item = {digest(BLIND_REVIEW, p["item_id"]): p["item_id"] for p in reviews.pairs}
    used_pairs = sorted(pair_item[p] for p in dpo["pair_id"].tolist() if p in pair_item) if len(dpo) else []
    gate = dict(reviews.gate)
    return {
        "gate_open": bool(gate.get("open")), "reason": gate.get("reason"), "fleiss_kappa": gate.get("fleiss_kappa"),
        "min_kappa": gate.get("min_kappa"), "labelled_items": gate.get("labelled_items"),
        "given": {"sft": len(reviews.sft), "rejected": len(reviews.rejected), "pairs": len(reviews.pairs)},
        "used": {"sft": len(used_sft), "pairs": len(used_pairs)},
        "review_items": sorted(set(used_sft) | set(used_pairs)),
        "rejected_items": sorted({str(r.get("item_id")) for r in reviews.rejected if r.get("item_id")}),
        "labels": sorted(int(s) for s in reviews.labels),
    }
