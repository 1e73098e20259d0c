"""DPO preference pairs mined from what users did, each tagged with its source.

Four sources say that one answer is better than another for the same context:

- ``correction``: the user's corrected answer (chosen) beats the model's answer (rejected);
- ``regenerate``: in one conversation, the answer the user kept (the last one given in
  that context) beats each answer they regenerated away (a turn with a regenerate signal
  that was followed by another answer in the same context);
- ``ab_variant``: in an A/B experiment, answers of the two variants to the same (normalized or
  near-duplicate) context, with different rewards;
- ``rating``: answers to the same (normalized or near-duplicate) context that users rated
  differently (both answers need explicit feedback: thumbs, stars or a correction).

Within a group, answers sorted by reward are paired best with worst, second best with second
worst, and so on, so no answer is used twice in a source (for ``ab_variant`` the two sides
come from different variants). The chosen answer must pass the SFT quality checks; the
rejected one may be degenerate (that is exactly what the model should learn to avoid).

Then the steps: ``margin`` (chosen reward - rejected reward >= ``pair_margin``; a kept answer
nobody reacted to counts as 0 here, so a lone regenerate at its default weight of -0.4 makes
a pair at the default margin of 0.4), ``decontaminate``, ``dedup`` (the same context, chosen
and rejected text once; the most specific source wins: correction, regenerate, ab_variant,
rating), ``per_prompt_cap`` (``max_pairs_per_prompt`` per near-duplicate cluster),
``per_user_cap`` (``max_pairs_per_user`` per user of the chosen answer's turn) and
``topic_balance``. Corrections held back for want of agreement (kaizenlm.datasets.integrity)
make no pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kaizenlm.config import CurationConfig
from kaizenlm.datasets.curation import GOLD_REWARD, Funnel, balance_topics, capped, drop_contaminated, examples_of
from kaizenlm.datasets.text import digest, normalize_all

PAIR_SOURCES = ("correction", "regenerate", "ab_variant", "rating")  # also the dedup priority
PAIR_COLUMNS = ["pair_id", "source", "cluster", "context_key", "conversation_id", "rejected_conversation_id",
                "user_id", "topic", "experiment_id", "messages", "prompt", "chosen", "rejected", "chosen_turn_id",
                "rejected_turn_id", "chosen_reward", "rejected_reward", "margin", "model_version", "ts", "contaminated"]


def _answered(frame: pd.DataFrame) -> np.ndarray:
    """Turns whose answer has text (`prepare` marks the others with the issue "empty")."""
    return (frame["response_issue"] != "empty").to_numpy()


def _pairs(chosen: pd.DataFrame, rejected: pd.DataFrame, source: str, chosen_text: str = "response",
           chosen_reward: object = None) -> pd.DataFrame:
    """Pair rows (chosen.iloc[i] beats rejected.iloc[i]) in PAIR_COLUMNS form (no pair_id, margin yet).

    Rewards are the turns' rewards with "no reward" as 0 (see the module docstring)."""
    c, r = chosen.reset_index(drop=True), rejected.reset_index(drop=True)
    if chosen_reward is None:
        chosen_reward = c["reward"].fillna(0.0).astype(float)
    return pd.DataFrame({
        "source": source, "cluster": c["cluster"], "context_key": c["context_key"],
        "conversation_id": c["conversation_id"], "rejected_conversation_id": r["conversation_id"],
        "user_id": c["user_id"], "topic": c["topic"], "experiment_id": c["experiment_id"],
        "messages": c["messages"], "prompt": c["prompt"],
        "chosen": c[chosen_text], "rejected": r["response"],
        "chosen_turn_id": c["turn_id"], "rejected_turn_id": r["turn_id"],
        "chosen_reward": chosen_reward, "rejected_reward": r["reward"].fillna(0.0).astype(float),
        "model_version": c["model_version"], "ts": c["ts"],
        "contaminated": c["contaminated"].to_numpy(dtype=bool) | r["contaminated"].to_numpy(dtype=bool),
    })


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=PAIR_COLUMNS)


def _narrow(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns a miner sorts and groups by, plus ``_row`` (the position in ``frame``): the
    miners filter and sort this narrow frame and take the wide rows once, for the pairs they
    make (each filter or sort of the whole frame copies every column)."""
    return frame[columns].assign(_row=np.arange(len(frame)))


def correction_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """chosen = a valid user correction that is not held back (kaizenlm.datasets.integrity),
    rejected = the answer it corrects."""
    held = frame["correction_hold"].notna().to_numpy() if "correction_hold" in frame else np.zeros(len(frame), bool)
    rows = frame[frame["correction_issue"].isna().to_numpy() & _answered(frame) & ~held]
    return _pairs(rows, rows, "correction", chosen_text="correction", chosen_reward=GOLD_REWARD) if len(rows) else _empty()


def regenerate_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """chosen = the answer kept after regenerating, rejected = each answer regenerated away.

    A regenerate chain is the turns of one conversation with the same context, in time order;
    the kept answer is the last one, and only when it was not regenerated itself."""
    rows = _narrow(frame, ["conversation_id", "context_key", "ts", "turn_id", "n_regenerate", "response_issue"])
    rows = rows[_answered(frame)]
    rows = rows.sort_values(["conversation_id", "context_key", "ts", "turn_id"], kind="mergesort")
    group = [rows["conversation_id"], rows["context_key"]]
    rows = rows.assign(_last=rows.groupby(group).cumcount(ascending=False).to_numpy() == 0,
                       _size=rows.groupby(group)["turn_id"].transform("size").to_numpy())
    rows = rows[rows["_size"] > 1]
    regenerated = rows["n_regenerate"].to_numpy() > 0
    kept = rows[rows["_last"].to_numpy() & ~regenerated & rows["response_issue"].isna().to_numpy()]
    away = rows[~rows["_last"].to_numpy() & regenerated]
    matched = away.merge(kept[["conversation_id", "context_key", "turn_id"]].rename(columns={"turn_id": "_kept"}),
                         on=["conversation_id", "context_key"], how="inner")
    if matched.empty:
        return _empty()
    chosen = kept.set_index("turn_id").loc[matched["_kept"], "_row"]
    return _pairs(frame.iloc[chosen.to_numpy()], frame.iloc[matched["_row"].to_numpy()], "regenerate")


def _best_with_worst(rewards: Sequence[float], chosen_ok: Sequence[bool],
                     side: Sequence | None) -> list[tuple[int, int]]:
    """(chosen, rejected) positions in a group sorted best first: the best unused answer with
    the worst unused one (of the other side, when ``side`` is given) that has a lower reward.
    (Plain lists: called once per group, where numpy's per-call costs would dominate.)"""
    n = len(rewards)
    sides = side if side is not None else [None] * n
    worst_first: dict[object, list[int]] = {}  # per side: positions, worst answer first
    for j in range(n - 1, -1, -1):
        worst_first.setdefault(sides[j], []).append(j)
    next_unused = dict.fromkeys(worst_first, 0)
    used = [False] * n
    out = []
    for i in range(n):
        if used[i] or not chosen_ok[i]:
            continue
        best = None
        for s, stack in worst_first.items():
            if side is not None and s == sides[i]:
                continue
            p = next_unused[s]
            while p < len(stack) and used[stack[p]]:
                p += 1
            next_unused[s] = p
            if p < len(stack) and rewards[stack[p]] < rewards[i] and (best is None or rewards[stack[p]] < rewards[best]):
                best = stack[p]
        if best is not None:
            used[i] = used[best] = True
            out.append((i, best))
    return out


def _ranked_pairs(frame: pd.DataFrame, eligible: np.ndarray, keys: list[str], source: str,
                  side_column: str | None) -> pd.DataFrame:
    columns = [*keys, "reward", "ts", "turn_id", "response", "response_issue", *([side_column] if side_column else [])]
    rows = _narrow(frame, columns)[eligible & _answered(frame) & frame["reward"].notna().to_numpy()]
    if rows.empty:
        return _empty()
    rows = rows.assign(_norm=normalize_all(rows["response"].tolist()))
    rows = rows.sort_values([*keys, "reward", "ts", "turn_id"], ascending=[True] * len(keys) + [False, False, True],
                            kind="mergesort")
    # the same answer text twice in a group is no preference: keep its best-rewarded occurrence
    rows = rows.drop_duplicates([*keys, "_norm"], keep="first").reset_index(drop=True)
    rewards = rows["reward"].to_numpy(dtype=float).tolist()
    chosen_ok = rows["response_issue"].isna().to_numpy().tolist()
    sides = rows[side_column].to_numpy().tolist() if side_column else None
    # rows are sorted by the keys, so each group is a contiguous run
    codes = np.zeros(len(rows), dtype=np.int64)
    for k in keys:
        c, _ = pd.factorize(rows[k], sort=False)
        codes = codes * (int(c.max()) + 2) + c
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    chosen_idx, rejected_idx = [], []
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True):
        if stop - start < 2:
            continue
        # best first within the group
        for i, j in _best_with_worst(rewards[start:stop], chosen_ok[start:stop],
                                     sides[start:stop] if sides is not None else None):
            chosen_idx.append(start + i)
            rejected_idx.append(start + j)
    if not chosen_idx:
        return _empty()
    wide = rows["_row"].to_numpy()
    return _pairs(frame.iloc[wide[chosen_idx]], frame.iloc[wide[rejected_idx]], source)


def ab_variant_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Champion vs challenger answers to the same context in one experiment, by reward."""
    eligible = (frame["experiment_id"].notna() & frame["variant"].notna()).to_numpy()
    return _ranked_pairs(frame, eligible, ["experiment_id", "cluster"], "ab_variant", "variant")


def rating_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Answers to the same context with different explicit ratings."""
    return _ranked_pairs(frame, frame["has_explicit"].to_numpy(dtype=bool), ["cluster"], "rating", None)


# What the miners read. The prepared frame also carries every reward feature; leaving those
# out first makes each of the miners' filters, sorts and joins copy about half the columns.
MINED_COLUMNS = ["turn_id", "conversation_id", "context_key", "cluster", "user_id", "topic", "experiment_id",
                 "variant", "model_version", "ts", "messages", "prompt", "response", "correction", "reward",
                 "has_explicit", "n_regenerate", "response_issue", "correction_issue", "correction_hold", "contaminated"]


MINERS = {"correction": correction_pairs, "regenerate": regenerate_pairs, "ab_variant": ab_variant_pairs,
          "rating": rating_pairs}


def mine_sources(frame: pd.DataFrame, cfg: CurationConfig, sources: Sequence[str] = PAIR_SOURCES) -> list[pd.DataFrame]:
    """The non-empty pair frames of some sources, in PAIR_SOURCES order (`joined` makes one
    frame of them): the sources can be mined in different processes."""
    frame = frame[[c for c in MINED_COLUMNS if c in frame.columns]]
    parts = [MINERS[s](frame) for s in PAIR_SOURCES if s in sources and (s != "correction" or cfg.include_corrections)]
    return [p for p in parts if len(p)]


def joined(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else _empty()


def mine_pairs(frame: pd.DataFrame, cfg: CurationConfig) -> pd.DataFrame:
    """Candidate pairs of all four sources, before any filter."""
    return joined(mine_sources(frame, cfg))


def build_pairs(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel,
                mined: pd.DataFrame | None = None) -> pd.DataFrame:
    """DPO pairs from a `prepare`d candidate frame (see the module docstring); sorted by pair_id.

    ``mined``: the frame's `mine_pairs` when it was computed elsewhere (in a worker process)."""
    pairs = mine_pairs(frame, cfg) if mined is None else mined
    counts = pairs["source"].value_counts().to_dict() if len(pairs) else {}
    funnel.notes["pair_sources"] = {s: int(counts.get(s, 0)) for s in PAIR_SOURCES}
    funnel.step("dpo", "mine", len(frame), len(pairs), params={"sources": list(PAIR_SOURCES)})
    if pairs.empty:
        return pairs.assign(pair_id=pd.Series(dtype=str))[PAIR_COLUMNS]

    # "_ids" names both turns in the funnel's examples (so `kaizen forget` can find and blank them)
    pairs = pairs.assign(margin=pairs["chosen_reward"].astype(float) - pairs["rejected_reward"].astype(float),
                         _ids=pairs["chosen_turn_id"].astype(str) + ">" + pairs["rejected_turn_id"].astype(str))
    low_margin = pairs["margin"].to_numpy() < cfg.pair_margin - 1e-9
    low_chosen = (pairs["source"] != "correction").to_numpy() & \
        (pairs["chosen_reward"].astype(float).to_numpy() < cfg.pair_min_chosen_reward) & ~low_margin
    bad = low_margin | low_chosen
    removed = pairs[bad].assign(_why=np.where(low_margin[bad], "below_margin", "chosen_reward_too_low"),
                                _text=lambda p: p["chosen"].astype(str) + " >> " + p["rejected"].astype(str))
    funnel.step("dpo", "margin", len(pairs), int((~bad).sum()),
                params={"pair_margin": cfg.pair_margin, "pair_min_chosen_reward": cfg.pair_min_chosen_reward},
                examples=examples_of(removed, removed["_why"].tolist(), "_text", "_ids"),
                below_margin=int(low_margin.sum()), chosen_reward_too_low=int(low_chosen.sum()))
    pairs = pairs[~bad]
    pairs = drop_contaminated(pairs, "dpo", funnel, id_column="_ids", threshold=cfg.decontam_threshold)

    # best first: the most specific source, then the widest margin, then the newest
    pairs = pairs.assign(_priority=pairs["source"].map({s: i for i, s in enumerate(PAIR_SOURCES)}),
                         _key=[digest(k, c, r) for k, c, r in zip(
                             pairs["cluster"].tolist(), normalize_all(pairs["chosen"].tolist()),
                             normalize_all(pairs["rejected"].tolist()), strict=True)])
    pairs = pairs.sort_values(["_priority", "margin", "ts", "chosen_turn_id", "rejected_turn_id"],
                              ascending=[True, False, False, True, True], kind="mergesort")
    pairs = capped(pairs, "dpo", funnel, "dedup", "_key", 1, "same_pair", "chosen", "_ids",
                   params={"key": "near-duplicate cluster + normalized chosen + normalized rejected",
                           "priority": list(PAIR_SOURCES)})
    pairs = capped(pairs, "dpo", funnel, "per_prompt_cap", "cluster", cfg.max_pairs_per_prompt, "cluster_over_cap",
                   "prompt", "_ids", params={"max_pairs_per_prompt": cfg.max_pairs_per_prompt})
    pairs = capped(pairs, "dpo", funnel, "per_user_cap", "user_id", cfg.max_pairs_per_user, "user_over_cap",
                   "chosen", "_ids", params={"max_pairs_per_user": cfg.max_pairs_per_user, "user": "chosen turn's"})
    pairs = balance_topics(pairs, "dpo", funnel, cfg.topic_balance_ratio, "chosen", "_ids")
    pairs = pairs.assign(pair_id=[digest(s, c, r) for s, c, r in
                                  zip(pairs["source"].tolist(), pairs["chosen_turn_id"].tolist(),
                                      pairs["rejected_turn_id"].tolist(), strict=True)])
    return pairs[PAIR_COLUMNS].sort_values("pair_id").reset_index(drop=True)
