"""Curation: which logged turns become training data, and why the others do not.

The pipeline is a chain of small steps; each reports the rows it got, the rows it kept, why
it dropped the others (with a few examples) and its parameters, in a `Funnel` that ends up
in the snapshot manifest and in `kaizen dataset build`'s output.

Shared by both outputs (`prepare`):

- ``pii_scrub``: every text field (messages, answer, correction) goes through
  `scrub_pii` (typed placeholders, kaizenlm/datasets/pii.py) before anything else sees it;
- ``context``: turns with an empty or too long conversation context are dropped;
- the conversation contexts are grouped into near-duplicate clusters (MinHash over
  character 5-grams, verified by exact Jaccard), targets are checked for quality, and prompts
  that match held-out texts are marked contaminated.

With ``[curation] workers`` = 2, a forked child (`kaizenlm.datasets.parallel`) scrubs half of
the distinct texts and then computes the clusters beside the quality and decontamination
checks; the output is the same as with one process.

SFT (`select_sft`): ``reward`` (well-rewarded answers, and user corrections *in place of*
the answer they correct) -> ``correction_agreement`` (corrections other users contradict
wait for agreement or a reviewer: kaizenlm.datasets.integrity) -> ``quality`` ->
``decontaminate`` -> ``exact_dedup`` (normalized hash of context + target) -> ``near_dedup``
(``max_per_prompt`` per cluster) -> ``per_user_correction_cap`` -> ``per_user_cap`` ->
``topic_balance``. Before all of it, ``flagged_users`` leaves out the turns of users the
anomaly report flags (kaizenlm.datasets.integrity). DPO pairs are mined from the same prepared frame in
`kaizenlm.datasets.pairs`; the recency window, the split and the replay mix are steps of
`kaizenlm.datasets.snapshots.curate`.

Quality (the seed rules, `text_issue`): empty; too short or too long; boilerplate (AI
disclaimers, placeholders, non-answers: ``boilerplate_phrases``); truncated (an open code
fence, a trailing comma or colon, or a long answer without closing punctuation); average
sentence under ``min_avg_sentence_words`` words; looping (repeated word 3-grams); echoing
the prompt; a correction that repeats the answer. The sentence rule measures the answer
(``sentence_rule_scope = "response"``) by default: on the demo's traffic it drops none of
the 1,907 right answers, while measuring user message + answer ("turn") would drop 100 of
them, all because the user asked tersely ("Refund window?"); docs/DATASETS.md has the numbers.

This module holds the steps and the funnel; what they use lives beside it:
`kaizenlm.datasets.text` (normalize, digest, distinct), `kaizenlm.datasets.quality` (the
quality rules), `kaizenlm.datasets.near_dup` (MinHash LSH clustering) and
`kaizenlm.datasets.decontam` (held-out texts, contamination).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from kaizenlm.config import CurationConfig, RewardsConfig
from kaizenlm.datasets.decontam import HOLDOUT_NGRAM, _read_records, contaminated
from kaizenlm.datasets.near_dup import cluster_labels
from kaizenlm.datasets.parallel import beside
from kaizenlm.datasets.pii import PII_KINDS, scrub_pii
from kaizenlm.datasets.quality import quality_params, text_issue
from kaizenlm.datasets.text import digest, distinct, distinct_objects, normalize, normalize_all
from kaizenlm.feedback.rewards import Window, reward_frame

# re-exported: kaizenlm.datasets.curation.scrub_pii is the public name; _read_records and
# contaminated are still read from here by kaizenlm/datasets/snapshots.py
__all__ = ["PII_KINDS", "_read_records", "contaminated", "scrub_pii"]

# ---------------------------------------------------------------------------------------------
# The funnel report


MAX_EXAMPLES = 3
EXAMPLE_CHARS = 160


def _clip(text: object) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


def examples_of(removed: pd.DataFrame, reasons: Sequence[str] | str, text_column: str,
                id_column: str = "turn_id") -> list[dict]:
    """Up to MAX_EXAMPLES removed rows for the funnel: the first row of each reason first, so
    that every kind of removal shows up. Texts are already scrubbed and clipped."""
    if removed.empty:
        return []
    reasons = [reasons] * len(removed) if isinstance(reasons, str) else list(reasons)
    picked, seen = [], set()
    for i, reason in enumerate(reasons):  # one per reason first
        if reason not in seen:
            seen.add(reason)
            picked.append(i)
    picked += [i for i in range(len(removed)) if i not in picked]
    ids, texts = removed[id_column].tolist(), removed[text_column].tolist()
    return [{"id": str(ids[i]), "reason": str(reasons[i]), "text": _clip(texts[i])} for i in picked[:MAX_EXAMPLES]]


@dataclass
class Funnel:
    """What each curation step kept and dropped, per output (candidates, sft, dpo), with reasons,
    parameters and a few examples of what it removed."""

    steps: dict[str, list[dict]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    # The per-user anomaly report (kaizenlm.datasets.integrity.report_summary): shown by a build,
    # not written into the manifest, which would then name users `kaizen forget` must erase.
    user_report: dict | None = None

    def step(self, output: str, name: str, before: int, after: int, *, params: dict | None = None,
             examples: list[dict] | None = None, **reasons: int) -> None:
        entry: dict = {"step": name, "in": int(before), "out": int(after)}
        reasons = {k: int(v) for k, v in reasons.items() if v}
        if reasons:
            entry["dropped"] = reasons
        if params is not None:
            entry["params"] = params
        if examples:
            entry["examples"] = examples
        self.steps.setdefault(output, []).append(entry)

    def to_json(self) -> dict:
        return {"steps": self.steps, **self.notes}


# ---------------------------------------------------------------------------------------------
# Candidates


def count_turns(con: duckdb.DuckDBPyConnection, window: Window) -> int:
    """Distinct turns ingested by the window's as_of, whatever their time: what the recency
    window starts from."""
    cond, params = Window(as_of=window.as_of).turns("t")
    return con.execute(f"SELECT count(DISTINCT t.turn_id) FROM turns t WHERE {cond}", params).fetchall()[0][0]


def _fetch_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pd.DataFrame:
    """A query's rows as a DataFrame, through Arrow: for 100k turns' texts about half the CPU
    of `.df()`, the same frame. `.df()` where Arrow cannot be had: the connection holds an
    unfinished `execute()` result (DuckDB 2 will not start a relation beside it), or the
    DuckDB version lacks ``to_arrow_table``."""
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except (duckdb.Error, AttributeError, TypeError):
        return con.execute(sql, params).df()
    frame = table.to_pandas()
    for column in table.schema:  # as `.df()` gives it, a text column without any value is object (None)
        if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and \
                table.column(column.name).null_count == table.num_rows:
            frame[column.name] = pd.Series([None] * table.num_rows, dtype=object)
    return frame


def load_candidates(con: duckdb.DuckDBPyConnection, window: Window, weights: RewardsConfig) -> pd.DataFrame:
    """Turns of the window (one row per turn_id) with their reward features, sorted by turn_id.

    ``messages`` holds the parsed message list (the context the answer was given in).
    """
    cond, params = window.turns("t")
    turns = _fetch_frame(
        con,
        f"""SELECT t.turn_id, t.conversation_id, t.user_id, t.ts, t.model_version, t.variant, t.experiment_id,
                   t.topic, t.messages, t.response
            FROM turns t WHERE {cond}
            QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
            ORDER BY t.turn_id""",
        params,
    )
    rewards = reward_frame(con, window, weights)
    if turns["turn_id"].equals(rewards["turn_id"]):  # both are the window's turns by turn_id: side by side
        frame = pd.concat([turns, rewards.drop(columns="turn_id")], axis=1)
    else:
        frame = turns.merge(rewards, on="turn_id", how="left", validate="one_to_one")
    parsed: dict[str, list] = {}  # identical contexts (a popular first question) share one parsed list
    frame["messages"] = [parsed[m] if m in parsed else parsed.setdefault(m, orjson.loads(m))
                         for m in frame["messages"].tolist()]
    return frame.reset_index(drop=True)


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content", "")
    return messages[-1].get("content", "") if messages else ""


def _context_text(messages: list[dict]) -> str:
    # The system prompt is the same for most turns: leave it out of similarity.
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m.get("role") != "system")


def _scrub_texts(uses: Sequence[tuple[str, int]], keep: frozenset) -> tuple[dict[str, str], Counter]:
    """`scrub_pii` of distinct texts, each with its number of uses: the texts that changed
    (original -> scrubbed) and the replacements per kind, counted once per use."""
    clean: dict[str, str] = {}
    counts: Counter = Counter()
    for text, n in uses:
        found: dict[str, int] = {}
        scrubbed_text = scrub_pii(text, found, keep)
        if scrubbed_text != text:
            clean[text] = scrubbed_text
        for kind, k in found.items():
            counts[kind] += k * n
    return clean, counts


def scrub_frame(frame: pd.DataFrame, funnel: Funnel, keep: Sequence[str] = (), workers: int = 1) -> pd.DataFrame:
    """Step pii_scrub: every text field of every turn through `scrub_pii` (drops nothing).

    Logs repeat texts (system prompts, popular questions, canned answers), so each distinct
    text is scrubbed once and its replacements are counted once per occurrence. Turns with
    one context share one parsed message list (see `load_candidates`); it is scrubbed once
    and the turns keep sharing the scrubbed list. With ``workers`` >= 2 a forked child
    scrubs half of the distinct texts."""
    keep = frozenset(keep)
    responses, corrections = frame["response"].tolist(), frame["correction"].tolist()
    ctx_codes, contexts = distinct_objects(frame["messages"].tolist())
    uses: Counter = Counter()
    for m, n in zip(contexts, np.bincount(ctx_codes, minlength=len(contexts)).tolist(), strict=True):
        for msg in m:
            uses[msg.get("content", "")] += n
    uses.update(t for t in responses if isinstance(t, str))
    uses.update(t for t in corrections if isinstance(t, str))
    items = list(uses.items())
    # every other text goes to the second core, so that both get a share of the costly kinds
    other_half = beside(workers, _scrub_texts, items[1::2], keep)
    clean, counts = _scrub_texts(items[::2], keep)  # only the texts that changed
    more_clean, more_counts = other_half.result()
    clean.update(more_clean)
    counts.update(more_counts)

    def content(msg: dict):
        text = msg.get("content", "")
        return clean.get(text, text)

    scrubbed = [[{**msg, "content": content(msg)} for msg in m] for m in contexts]
    ctx_changed = np.fromiter((any(msg.get("content", "") in clean for msg in m) for m in contexts), dtype=bool,
                              count=len(contexts))
    new_responses = [clean.get(r, r) if isinstance(r, str) else r for r in responses]
    new_corrections = [clean.get(c, c) if isinstance(c, str) else None for c in corrections]
    changed = ctx_changed[ctx_codes] | np.fromiter(
        (a is not b or (c is not None and c is not d)
         for a, b, c, d in zip(new_responses, responses, new_corrections, corrections, strict=True)),
        dtype=bool, count=len(frame))
    frame = frame.assign(messages=[scrubbed[c] for c in ctx_codes.tolist()], response=new_responses,
                         correction=new_corrections)
    hits = frame[changed]
    examples = examples_of(hits.assign(_text=[f"{_last_user(m)} => {r}" for m, r in
                                              zip(hits["messages"].tolist(), hits["response"].tolist(), strict=True)]),
                           "replaced", "_text")
    funnel.step("candidates", "pii_scrub", len(frame), len(frame),
                params={"fields": ["messages", "response", "correction"], "placeholders": [f"<{k}>" for k in PII_KINDS],
                        "pii_keep": sorted(keep)},
                examples=examples)
    funnel.notes["pii_replaced"] = {k: counts.get(k, 0) for k in PII_KINDS}
    funnel.notes["pii_turns"] = int(changed.sum())
    return frame


def _keys_and_clusters(contexts: Sequence[str], threshold: float) -> tuple[list[str], list[str]]:
    """The exact key (digest of the normalized text) and the near-duplicate cluster label of
    each conversation context."""
    norms = normalize_all(contexts)
    digests: dict[str, str] = {}
    keys = [digests[n] if n in digests else digests.setdefault(n, digest(n)) for n in norms]
    return keys, cluster_labels(keys, norms, threshold)


def _issues(texts: Sequence[str], prompts: Sequence[str], cfg: CurationConfig, casual: bool = False) -> list[str | None]:
    """`text_issue` of each text, computed once per distinct text (and prompt, when the
    sentence rule measures the whole turn)."""
    if cfg.sentence_rule_scope == "turn":
        codes, unique = distinct(list(zip(texts, prompts, strict=True)))
        per_unique = [text_issue(t, cfg, prompt=p, casual=casual) for t, p in unique]
    else:
        codes, unique = distinct(texts)
        per_unique = [text_issue(t, cfg, casual=casual) for t in unique]
    return [per_unique[c] for c in codes.tolist()]


def prepare(frame: pd.DataFrame, cfg: CurationConfig, holdout: Sequence[str], funnel: Funnel) -> pd.DataFrame:
    """Scrub, check and cluster candidate turns (returns a new frame; drops nothing but turns
    with an empty or too-long context). Added columns:

    prompt, context_key, cluster, response_issue, correction_issue, contaminated.
    """
    workers = cfg.processes
    frame = scrub_frame(frame, funnel, cfg.pii_keep, workers)

    # the context steps work once per distinct (shared) message list
    codes, lists = distinct_objects(frame["messages"].tolist())
    contexts = [_context_text(m) for m in lists]
    empty_u = np.array([not c.strip() for c in contexts], dtype=bool)
    too_long_u = np.array([len(c) > cfg.max_context_chars for c in contexts], dtype=bool)
    empty, too_long = empty_u[codes], too_long_u[codes]
    keep = ~(empty | too_long)
    removed = frame[~keep].assign(_why=np.where(empty[~keep], "empty_context", "context_too_long"),
                                  _text=[contexts[c] for c in codes[~keep].tolist()])
    funnel.step("candidates", "context", len(frame), int(keep.sum()), params={"max_context_chars": cfg.max_context_chars},
                examples=examples_of(removed, removed["_why"].tolist(), "_text"),
                empty_context=int(empty.sum()), context_too_long=int((too_long & ~empty).sum()))
    frame = frame[keep].reset_index(drop=True)
    rows = codes[keep].tolist()

    live = np.flatnonzero(~(empty_u | too_long_u)).tolist()
    # the context keys and clusters on the second core, beside the prompt and target checks below
    clustering = beside(workers, _keys_and_clusters, [contexts[i] for i in live], cfg.dedup_threshold)
    prompt_of = [_last_user(m) for m in lists]
    prompts = [prompt_of[c] for c in rows]

    responses, corrections = frame["response"].tolist(), frame["correction"].tolist()
    norm_prompt_of = normalize_all(prompt_of)
    norm_responses = normalize_all(responses)
    issues = _issues(responses, prompts, cfg)
    response_issue = [issue if issue or nr != norm_prompt_of[c] else "echoes_prompt"
                      for issue, nr, c in zip(issues, norm_responses, rows, strict=True)]
    corrected = [i for i, c in enumerate(corrections) if isinstance(c, str)]  # None or NaN (as pandas stores it): none
    corr_issues = _issues([corrections[i] for i in corrected], [prompts[i] for i in corrected], cfg, casual=True)
    correction_issue: list[str | None] = ["none"] * len(frame)
    for i, issue in zip(corrected, corr_issues, strict=True):
        correction_issue[i] = issue or ("same_as_answer" if normalize(corrections[i]) == norm_responses[i] else None)
    tainted = contaminated(prompt_of, holdout, cfg.decontam_threshold)[rows]  # once per context
    live_keys, live_clusters = clustering.result()
    keys = dict(zip(live, live_keys, strict=True))
    clusters = dict(zip(live, live_clusters, strict=True))
    frame["context_key"] = [keys[c] for c in rows]
    frame["cluster"] = [clusters[c] for c in rows]
    frame["prompt"] = prompts
    frame["response_issue"] = response_issue
    frame["correction_issue"] = correction_issue
    frame["contaminated"] = tainted
    funnel.notes["contaminated_turns"] = int(frame["contaminated"].sum())
    return frame


# ---------------------------------------------------------------------------------------------
# Steps shared by SFT examples and DPO pairs (rows arrive best first, so caps keep the best)


def drop_contaminated(rows: pd.DataFrame, output: str, funnel: Funnel, text_column: str = "prompt",
                      id_column: str = "turn_id", threshold: float | None = None) -> pd.DataFrame:
    """Step decontaminate: rows whose prompt matches a held-out text."""
    bad = rows["contaminated"].to_numpy(dtype=bool)
    funnel.step(output, "decontaminate", len(rows), int((~bad).sum()),
                params={"holdout_ngram": HOLDOUT_NGRAM, "decontam_threshold": threshold},
                examples=examples_of(rows[bad], "matches_holdout", text_column, id_column),
                matches_holdout=int(bad.sum()))
    return rows[~bad]


def capped(rows: pd.DataFrame, output: str, funnel: Funnel, name: str, column: str, limit: int, reason: str,
           text_column: str, id_column: str = "turn_id", params: dict | None = None) -> pd.DataFrame:
    """A step that keeps the first ``limit`` rows of each value of ``column``."""
    keep = (rows.groupby(column, sort=False).cumcount() < limit).to_numpy()
    funnel.step(output, name, len(rows), int(keep.sum()), params=params,
                examples=examples_of(rows[~keep], reason, text_column, id_column), **{reason: int((~keep).sum())})
    return rows[keep]


NO_TOPIC = "(none)"


def topic_of(rows: pd.DataFrame) -> pd.Series:
    return rows["topic"].where(rows["topic"].notna() & (rows["topic"] != ""), NO_TOPIC)


def balance_topics(rows: pd.DataFrame, output: str, funnel: Funnel, ratio: float, text_column: str,
                   id_column: str = "turn_id") -> pd.DataFrame:
    """Step topic_balance: no topic keeps more than ``ratio`` times the rows of the smallest
    topic (turns without a topic form the topic "(none)"); 0 turns it off."""
    topics = topic_of(rows)
    counts = topics.value_counts()
    limit = math.floor(ratio * counts.min()) if ratio and len(counts) else len(rows)
    keep = (rows.groupby(topics, sort=False).cumcount() < limit).to_numpy()
    funnel.step(output, "topic_balance", len(rows), int(keep.sum()),
                params={"topic_balance_ratio": ratio, "per_topic_limit": int(limit),
                        "topics": {str(k): int(v) for k, v in sorted(counts.items())}},
                examples=examples_of(rows[~keep], topics[~keep].map(lambda t: f"topic_over_cap:{t}").tolist(),
                                     text_column, id_column),
                topic_over_cap=int((~keep).sum()))
    return rows[keep]


# ---------------------------------------------------------------------------------------------
# SFT


SOURCE_PRIORITY = {"reviewed": 0, "correction": 1, "feedback": 2}
GOLD_REWARD = 1.0  # the reward a user correction (or a reviewed answer) counts with as a training target


def sft_targets(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step reward: one candidate target per turn. A turn a reviewer accepted or edited offers
    that text (source "reviewed", reward GOLD_REWARD; kaizenlm.datasets.reviewed); a turn with a
    user correction offers the correction *instead of* its answer (source "correction", reward
    GOLD_REWARD); any other turn offers its answer when its reward reaches sft_min_reward
    (source "feedback")."""
    reward = frame["reward"].to_numpy(dtype=float)
    reviewed = (frame["reviewed_target"].notna().to_numpy() if "reviewed_target" in frame
                else np.zeros(len(frame), dtype=bool))
    corrected = (frame["correction_issue"] != "none").to_numpy() & ~reviewed
    no_reward = np.isnan(reward) & ~corrected & ~reviewed
    low = ~np.isnan(reward) & (reward < cfg.sft_min_reward) & ~corrected & ~reviewed
    not_explicit = (~frame["has_explicit"].to_numpy(dtype=bool) & ~corrected & ~reviewed & ~no_reward & ~low
                    if cfg.sft_require_explicit else np.zeros(len(frame), dtype=bool))
    skip_corrections = corrected & (not cfg.include_corrections)
    keep = ~(no_reward | low | not_explicit | skip_corrections)
    rows = frame[keep]
    is_rev, is_corr = reviewed[keep], corrected[keep]
    rev_target = rows["reviewed_target"].astype(object) if "reviewed_target" in rows else rows["response"].astype(object)
    rev_issue = rows["reviewed_issue"].astype(object) if "reviewed_issue" in rows else rows["response_issue"].astype(object)
    rows = rows.assign(
        source=np.where(is_rev, "reviewed", np.where(is_corr, "correction", "feedback")),
        target=np.where(is_rev, rev_target, np.where(is_corr, rows["correction"].astype(object),
                                                     rows["response"].astype(object))),
        target_issue=np.where(is_rev, rev_issue, np.where(is_corr, rows["correction_issue"].astype(object),
                                                          rows["response_issue"].astype(object))),
        reward=np.where(is_rev | is_corr, GOLD_REWARD, rows["reward"].to_numpy(dtype=float)),
    )
    why = np.select([no_reward, low, not_explicit, skip_corrections],
                    ["no_reward", "low_reward", "no_explicit_feedback", "corrected_answer"], "")
    removed = frame[~keep].assign(_why=why[~keep])
    funnel.step("sft", "reward", len(frame), len(rows),
                params={"sft_min_reward": cfg.sft_min_reward, "sft_require_explicit": cfg.sft_require_explicit,
                        "include_corrections": cfg.include_corrections},
                examples=examples_of(removed, removed["_why"].tolist(), "response"),
                no_reward=int(no_reward.sum()), low_reward=int(low.sum()), no_explicit_feedback=int(not_explicit.sum()),
                corrected_answer=int(skip_corrections.sum()))
    return rows


def quality_filter(rows: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step quality: targets with an issue (see `text_issue`; also echoes_prompt, same_as_answer)."""
    bad = rows["target_issue"].notna().to_numpy()
    removed = rows[bad]
    funnel.step("sft", "quality", len(rows), int((~bad).sum()), params=quality_params(cfg),
                examples=examples_of(removed, removed["target_issue"].tolist(), "target"),
                **removed["target_issue"].value_counts().to_dict())
    return rows[~bad]


def hold_back_corrections(rows: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step correction_agreement: corrections that other users contradict and too few agree
    with (``correction_hold``, set by kaizenlm.datasets.integrity.mark_contradicted) wait for
    agreement or a reviewer instead of becoming targets."""
    held = (rows["source"] == "correction").to_numpy() & (
        rows["correction_hold"].notna().to_numpy() if "correction_hold" in rows else np.zeros(len(rows), dtype=bool))
    funnel.step("sft", "correction_agreement", len(rows), int((~held).sum()),
                params={"correction_min_agreement": cfg.correction_min_agreement},
                examples=examples_of(rows[held], "contradicted_by_other_users", "target"),
                contradicted_by_other_users=int(held.sum()))
    return rows[~held]


def cap_user_corrections(rows: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step per_user_correction_cap: at most ``max_corrections_per_user`` correction targets per
    user (rows arrive best first; other sources are not counted here)."""
    is_corr = (rows["source"] == "correction").to_numpy()
    rank = rows[is_corr].groupby("user_id", sort=False).cumcount().to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    keep[np.flatnonzero(is_corr)] = rank < cfg.max_corrections_per_user
    funnel.step("sft", "per_user_correction_cap", len(rows), int(keep.sum()),
                params={"max_corrections_per_user": cfg.max_corrections_per_user},
                examples=examples_of(rows[~keep], "user_corrections_over_cap", "target"),
                user_corrections_over_cap=int((~keep).sum()))
    return rows[keep]


def select_sft(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """SFT examples from a `prepare`d frame: one row per example with ``target`` (the text to
    learn), ``source`` (feedback: a well-rewarded answer; correction: the user's correction)
    and ``reward`` (of the target: the turn's reward, or GOLD_REWARD for a correction).
    """
    rows = sft_targets(frame, cfg, funnel)
    rows = hold_back_corrections(rows, cfg, funnel)
    rows = quality_filter(rows, cfg, funnel)
    rows = drop_contaminated(rows, "sft", funnel, threshold=cfg.decontam_threshold)

    # best first, so that every cap below keeps the best: reviewed, corrections, reward, confidence, newest
    rows = rows.assign(_priority=rows["source"].map(SOURCE_PRIORITY), _ts=rows["ts"],
                       _confidence=rows["confidence"].fillna(1.0))
    rows = rows.sort_values(["_priority", "reward", "_confidence", "_ts", "turn_id"],
                            ascending=[True, False, False, False, True], kind="mergesort")
    rows = rows.assign(_exact=[digest(k, t) for k, t in zip(rows["context_key"].tolist(),
                                                             normalize_all(rows["target"].tolist()), strict=True)])
    rows = capped(rows, "sft", funnel, "exact_dedup", "_exact", 1, "exact_duplicate", "target",
                  params={"key": "sha256(normalized context + normalized target)"})
    rows = capped(rows, "sft", funnel, "near_dedup", "cluster", cfg.max_per_prompt, "near_duplicate", "prompt",
                  params={"method": "MinHash LSH over character 5-grams of the context, exact Jaccard verified",
                          "dedup_threshold": cfg.dedup_threshold, "max_per_prompt": cfg.max_per_prompt})
    rows = cap_user_corrections(rows, cfg, funnel)
    rows = capped(rows, "sft", funnel, "per_user_cap", "user_id", cfg.max_per_user, "user_over_cap", "target",
                  params={"max_per_user": cfg.max_per_user})
    rows = balance_topics(rows, "sft", funnel, cfg.topic_balance_ratio, "target")
    rows = rows.drop(columns=["_priority", "_ts", "_confidence", "_exact"])
    rows["example_id"] = [digest(t, s) for t, s in zip(rows["turn_id"].tolist(), rows["source"].tolist(), strict=True)]
    return rows.sort_values("example_id").reset_index(drop=True)
