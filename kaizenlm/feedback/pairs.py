"""DPO preference pairs from feedback.

Two kinds of evidence say that one answer is better than another for the same context:

- a correction: the user's corrected answer (chosen) beats the model's answer (rejected);
- ranked answers: several answers were given in the same (normalized) context, e.g. after
  a regenerate, or by the champion and the challenger of an A/B test, and their rewards
  differ by at least ``pair_margin``. Both answers need feedback of their own: a turn
  nobody reacted to has reward 0, which means "unknown", not "average".

Within one context, answers are sorted by reward and paired best with worst, second best
with second worst, and so on while the margin holds, so no answer is used twice. The chosen
answer must pass the same checks as an SFT target; the rejected one may be degenerate (that
is exactly what the model should learn to avoid). Pairs are dropped when their prompt
matches held-out texts, deduplicated, and capped per near-duplicate cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kaizenlm.config import CurationConfig
from kaizenlm.feedback.curation import GOLD_REWARD, Funnel, cap_per, digest, drop_contaminated, normalize_all

PAIR_COLUMNS = ["pair_id", "source", "cluster", "context_key", "conversation_id", "messages", "prompt",
                "chosen", "rejected", "chosen_turn_id", "rejected_turn_id", "chosen_reward", "rejected_reward",
                "margin", "model_version", "ts", "contaminated"]


def _has_text(values: pd.Series) -> np.ndarray:
    return np.fromiter((isinstance(v, str) and bool(v.strip()) for v in values.tolist()), dtype=bool,
                       count=len(values))


def _correction_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame["correction_issue"].isna().to_numpy() & _has_text(frame["response"])]
    return pd.DataFrame({
        "source": "correction",
        "cluster": rows["cluster"], "context_key": rows["context_key"], "conversation_id": rows["conversation_id"],
        "messages": rows["messages"], "prompt": rows["prompt"],
        "chosen": rows["correction"], "rejected": rows["response"],
        "chosen_turn_id": rows["turn_id"], "rejected_turn_id": rows["turn_id"],
        "chosen_reward": GOLD_REWARD, "rejected_reward": rows["reward"].astype(float),
        "model_version": rows["model_version"], "ts": rows["ts"], "contaminated": rows["contaminated"],
    })


def _ranked_pairs(frame: pd.DataFrame, cfg: CurationConfig) -> pd.DataFrame:
    evidence = (frame["n_feedback"] + frame["n_signals"]) > 0
    rows = frame[evidence.to_numpy() & _has_text(frame["response"])]
    rows = rows[rows.groupby("context_key")["turn_id"].transform("size") > 1]
    if rows.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    rows = rows.assign(_norm=normalize_all(rows["response"].tolist()))
    rows = rows.sort_values(["context_key", "reward", "ts", "turn_id"], ascending=[True, False, False, True],
                            kind="mergesort")
    # the same answer text twice in one context: keep its best-rewarded occurrence
    rows = rows.drop_duplicates(["context_key", "_norm"], keep="first")
    chosen_idx, rejected_idx = [], []
    rewards = rows["reward"].to_numpy(dtype=float)
    chosen_ok = (rows["response_issue"].isna().to_numpy()) & (rewards >= cfg.pair_min_chosen_reward)
    keys = rows["context_key"].to_numpy()
    bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    for start, stop in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(rows)])), strict=True):
        i, j = int(start), int(stop) - 1
        while i < j:
            if not chosen_ok[i]:
                i += 1
                continue
            if rewards[i] - rewards[j] < cfg.pair_margin:
                break  # sorted: no later pair of this context can reach the margin either
            chosen_idx.append(i)
            rejected_idx.append(j)
            i, j = i + 1, j - 1
    if not chosen_idx:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    c, r = rows.iloc[chosen_idx].reset_index(drop=True), rows.iloc[rejected_idx].reset_index(drop=True)
    same_conversation = (c["conversation_id"] == r["conversation_id"]).to_numpy()
    return pd.DataFrame({
        "source": np.where(same_conversation, "regenerate", "ranked"),
        "cluster": c["cluster"], "context_key": c["context_key"], "conversation_id": c["conversation_id"],
        "messages": c["messages"], "prompt": c["prompt"],
        "chosen": c["response"], "rejected": r["response"],
        "chosen_turn_id": c["turn_id"], "rejected_turn_id": r["turn_id"],
        "chosen_reward": c["reward"].astype(float), "rejected_reward": r["reward"].astype(float),
        "model_version": c["model_version"], "ts": c["ts"],
        "contaminated": c["contaminated"].to_numpy(dtype=bool) | r["contaminated"].to_numpy(dtype=bool),
    })


PAIR_SOURCE_PRIORITY = {"correction": 0, "regenerate": 1, "ranked": 2}


def build_pairs(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """DPO pairs from a `prepare`d candidate frame (see the module docstring); sorted by pair_id."""
    parts = []
    if cfg.include_corrections:
        parts.append(_correction_pairs(frame))
    parts.append(_ranked_pairs(frame, cfg))
    parts = [p for p in parts if len(p)]
    pairs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PAIR_COLUMNS)
    counts = pairs["source"].value_counts().to_dict() if len(pairs) else {}
    funnel.notes["dpo_sources"] = {s: int(counts.get(s, 0)) for s in PAIR_SOURCE_PRIORITY}
    funnel.step("dpo", "pairs", len(pairs), len(pairs))
    pairs = drop_contaminated(pairs, "dpo", funnel)
    if pairs.empty:
        return pairs.assign(margin=pd.Series(dtype=float), pair_id=pd.Series(dtype=str))[PAIR_COLUMNS]

    pairs = pairs.assign(
        margin=pairs["chosen_reward"].astype(float) - pairs["rejected_reward"].astype(float),
        _priority=pairs["source"].map(PAIR_SOURCE_PRIORITY),
        _c=normalize_all(pairs["chosen"].tolist()), _r=normalize_all(pairs["rejected"].tolist()),
    )
    pairs = pairs.sort_values(["_priority", "margin", "ts", "chosen_turn_id"], ascending=[True, False, False, True],
                              kind="mergesort")
    before = len(pairs)
    pairs = pairs.drop_duplicates(["context_key", "_c", "_r"], keep="first")
    funnel.step("dpo", "deduplicate", before, len(pairs), same_pair=before - len(pairs))
    before = len(pairs)
    pairs = cap_per(pairs, "cluster", cfg.max_pairs_per_prompt)
    funnel.step("dpo", "per_prompt_cap", before, len(pairs), cluster_over_cap=before - len(pairs))
    pairs = pairs.assign(pair_id=[digest(s, c, r) for s, c, r in
                                  zip(pairs["source"].tolist(), pairs["chosen_turn_id"].tolist(),
                                      pairs["rejected_turn_id"].tolist(), strict=True)])
    return pairs[PAIR_COLUMNS].sort_values("pair_id").reset_index(drop=True)
