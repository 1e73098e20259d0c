"""Poisoning resistance: no single user, and no small crowd of new accounts, can teach the model.

kaizenlm trains on what users send, so curation treats that as claims, not facts:

- **Per-user anomaly report** (`user_report`): per user of the window (the user a turn was
  served to; feedback tokens bind a public key's feedback to that user), the turns, the
  corrected turns and their rate, the most times one correction text was sent (normalized),
  and the most feedback events and signals within `anomaly_burst_seconds`. A user is flagged
  for a correction rate of at least `anomaly_correction_rate` over at least
  `anomaly_min_corrections` corrections, for `anomaly_duplicate_texts` identical corrections,
  or for `anomaly_burst_events` events in one burst. With `hold_flagged_users` (the default)
  every turn of a flagged user is left out of the snapshot (`drop_flagged_users`); the report,
  in `kaizen dataset build`'s output and on the dashboard's feedback page, says who and why.
- **Corrections need agreement when they contradict others** (`mark_contradicted`): a
  correction is a claim (its normalized text); an accepted answer (no correction, no quality
  issue, reward >= `sft_min_reward`) is a claim too, and a claim's supporters are the distinct
  users who endorsed that exact claim anywhere. A correction is *contradicted* when users other
  than its author endorsed a different claim for the same question (an answer or a correction
  in the same near-duplicate cluster of contexts): it is then held back unless at least
  `correction_min_agreement` supporters (its author included) outnumber those users. It is
  also contradicted when other users accepted, verbatim, the very answer it calls wrong: since
  one answer can be right for another question, that only asks for `correction_min_agreement`
  supporters. A held-back correction
  is a training target again once enough users agree, or when a reviewer accepts it
  (`accepted_corrections`, turn ids: the annotation package's hook). A correction nobody
  contradicts needs no agreement.
- Per-user caps (in kaizenlm.datasets.curation and .pairs): `max_per_user` SFT rows, of which
  at most `max_corrections_per_user` corrections, and `max_pairs_per_user` DPO pairs.

What this cannot stop, and docs/SECURITY.md says: more accounts that behave like normal users
than honest users who answered the same question. There a reviewer decides.

Everything here is a deterministic function of the window's data, so snapshots stay
reproducible (same data and config, same content hash).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import duckdb
import numpy as np
import pandas as pd

from kaizenlm.config import CurationConfig
from kaizenlm.datasets.curation import Funnel, examples_of
from kaizenlm.datasets.text import normalize
from kaizenlm.feedback.rewards import Window

REPORT_COLUMNS = ["user_id", "turns", "corrected_turns", "correction_rate", "duplicate_corrections",
                  "most_repeated_correction", "burst_events", "flags"]
HELD_REASON = "contradicted_by_other_users"


# ---------------------------------------------------------------------------------------------
# The per-user report


def _activity_sql(window: Window, burst_seconds: int) -> tuple[str, list, str, list]:
    """(per-user counts SQL, its parameters, the users' corrections SQL, its parameters)."""
    turn_cond, turn_params = window.turns("t")
    fb_cond, fb_params = window.ingested("f")
    sig_cond, sig_params = window.ingested("g")
    sql = f"""
    WITH scope AS (
        SELECT t.turn_id, t.user_id, t.conversation_id FROM turns t WHERE {turn_cond}
        QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
    ),
    fb AS (
        SELECT s.user_id, f.turn_id, f.ts, f.correction FROM feedback f JOIN scope s ON f.turn_id = s.turn_id
        WHERE {fb_cond}
    ),
    events AS (
        SELECT user_id, ts FROM fb
        UNION ALL
        SELECT s.user_id, g.ts FROM signals g JOIN scope s ON g.turn_id = s.turn_id WHERE {sig_cond}
        UNION ALL
        SELECT c.user_id, g.ts FROM signals g
        JOIN (SELECT DISTINCT user_id, conversation_id FROM scope) c
          ON g.turn_id IS NULL AND g.conversation_id = c.conversation_id
        WHERE {sig_cond}
    ),
    bursts AS (
        SELECT user_id, max(n) AS burst_events FROM (
            SELECT user_id, count(*) OVER (PARTITION BY user_id ORDER BY ts
                RANGE BETWEEN INTERVAL {int(burst_seconds)} SECOND PRECEDING AND CURRENT ROW) AS n
            FROM events)
        GROUP BY user_id
    ),
    corrected AS (
        SELECT user_id, count(DISTINCT turn_id) AS corrected_turns FROM fb
        WHERE correction IS NOT NULL AND correction <> '' GROUP BY user_id
    ),
    counts AS (SELECT user_id, count(*) AS turns FROM scope GROUP BY user_id)
    SELECT c.user_id, c.turns, coalesce(k.corrected_turns, 0) AS corrected_turns,
           coalesce(b.burst_events, 0) AS burst_events
    FROM counts c LEFT JOIN corrected k USING (user_id) LEFT JOIN bursts b USING (user_id)
    ORDER BY c.user_id
    """
    corrections_sql = f"""
    WITH scope AS (
        SELECT t.turn_id, t.user_id FROM turns t WHERE {turn_cond}
        QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
    )
    SELECT s.user_id, f.correction FROM feedback f JOIN scope s ON f.turn_id = s.turn_id
    WHERE {fb_cond} AND f.correction IS NOT NULL AND f.correction <> ''
    """
    return sql, [*turn_params, *fb_params, *sig_params, *sig_params], corrections_sql, [*turn_params, *fb_params]


def user_report(con: duckdb.DuckDBPyConnection, window: Window, cfg: CurationConfig) -> pd.DataFrame:
    """One row per user with turns in the window (REPORT_COLUMNS), flagged users first, then by
    corrected turns; ``flags`` lists why a user is flagged (empty: not flagged)."""
    sql, params, corrections_sql, corrections_params = _activity_sql(window, cfg.anomaly_burst_seconds)
    users = con.execute(sql, params).df()
    corrections = con.execute(corrections_sql, corrections_params).df()
    dup_count: dict[str, int] = {}
    dup_text: dict[str, str] = {}
    if len(corrections):
        corrections["norm"] = [normalize(t) for t in corrections["correction"].tolist()]
        per_text = corrections.groupby(["user_id", "norm"], sort=True).agg(
            n=("correction", "size"), text=("correction", "first")).reset_index()
        top = per_text.sort_values(["user_id", "n", "norm"], ascending=[True, False, True]).drop_duplicates("user_id")
        dup_count = dict(zip(top["user_id"], top["n"].astype(int), strict=True))
        dup_text = dict(zip(top["user_id"], top["text"], strict=True))
    ids = users["user_id"].tolist()
    users["duplicate_corrections"] = [dup_count.get(u, 0) for u in ids]
    users["most_repeated_correction"] = [dup_text.get(u) if dup_count.get(u, 0) > 1 else None for u in ids]
    users["correction_rate"] = (users["corrected_turns"] / users["turns"].clip(lower=1)).round(4)
    rate_flag = (users["corrected_turns"] >= cfg.anomaly_min_corrections) & \
        (users["correction_rate"] >= cfg.anomaly_correction_rate)
    dup_flag = users["duplicate_corrections"] >= cfg.anomaly_duplicate_texts
    burst_flag = users["burst_events"] >= cfg.anomaly_burst_events
    users["flags"] = [[name for name, on in (("correction_rate", r), ("duplicate_corrections", d), ("burst", b)) if on]
                      for r, d, b in zip(rate_flag.tolist(), dup_flag.tolist(), burst_flag.tolist(), strict=True)]
    users["_flagged"] = [bool(f) for f in users["flags"]]
    users = users.sort_values(["_flagged", "corrected_turns", "duplicate_corrections", "user_id"],
                              ascending=[False, False, False, True], kind="mergesort")
    return users.drop(columns="_flagged")[REPORT_COLUMNS].reset_index(drop=True)


def flagged(report: pd.DataFrame) -> set[str]:
    return {u for u, f in zip(report["user_id"].tolist(), report["flags"].tolist(), strict=True) if f}


def report_summary(report: pd.DataFrame, cfg: CurationConfig, limit: int = 25) -> dict:
    """The report as JSON: counts, the thresholds, and up to `limit` users (flagged first, then
    the most corrections), as `kaizen dataset build` prints it and the dashboard shows it."""
    rows = report.head(limit).to_dict("records")
    for row in rows:
        row["turns"], row["corrected_turns"] = int(row["turns"]), int(row["corrected_turns"])
        row["duplicate_corrections"], row["burst_events"] = int(row["duplicate_corrections"]), int(row["burst_events"])
        row["correction_rate"] = float(row["correction_rate"])
        row["flags"] = list(row["flags"])
    return {
        "users": len(report), "flagged": len(flagged(report)),
        "thresholds": {"anomaly_min_corrections": cfg.anomaly_min_corrections,
                       "anomaly_correction_rate": cfg.anomaly_correction_rate,
                       "anomaly_duplicate_texts": cfg.anomaly_duplicate_texts,
                       "anomaly_burst_events": cfg.anomaly_burst_events,
                       "anomaly_burst_seconds": cfg.anomaly_burst_seconds,
                       "hold_flagged_users": cfg.hold_flagged_users},
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# Curation steps


def drop_flagged_users(frame: pd.DataFrame, report: pd.DataFrame, cfg: CurationConfig,
                       accepted_corrections: Collection[str], funnel: Funnel) -> pd.DataFrame:
    """Step flagged_users (candidates): every turn of a flagged user leaves, unless a reviewer
    accepted its correction."""
    bad_users = flagged(report) if cfg.hold_flagged_users else set()
    out = frame["user_id"].isin(bad_users).to_numpy() & ~frame["turn_id"].isin(list(accepted_corrections)).to_numpy()
    removed = frame[out]
    funnel.step("candidates", "flagged_users", len(frame), int((~out).sum()),
                params={"hold_flagged_users": cfg.hold_flagged_users, "flagged_users": len(flagged(report))},
                examples=examples_of(removed.assign(_text=removed["correction"].fillna(removed["response"])),
                                     "user_flagged", "_text"),
                user_flagged=int(out.sum()))
    return frame[~out].reset_index(drop=True)


def _users_by(keys: list, claims: list, users: list) -> dict:
    """key -> claim -> set of users."""
    out: dict = defaultdict(lambda: defaultdict(set))
    for k, c, u in zip(keys, claims, users, strict=True):
        out[k][c].add(u)
    return out


def mark_contradicted(frame: pd.DataFrame, cfg: CurationConfig, accepted_corrections: Collection[str],
                      funnel: Funnel) -> pd.DataFrame:
    """Add ``correction_hold`` to a `prepare`d frame: HELD_REASON for a valid correction that is
    held back (see the module docstring), else None. The SFT selection and the DPO correction
    pairs leave held corrections out."""
    corrections = frame["correction_issue"].isna().to_numpy()  # a valid correction ("none": there is none)
    reward = frame["reward"].to_numpy(dtype=float)
    accepted = ((frame["correction_issue"] == "none").to_numpy() & frame["response_issue"].isna().to_numpy()
                & ~np.isnan(reward) & (reward >= cfg.sft_min_reward))
    users, clusters = frame["user_id"].tolist(), frame["cluster"].tolist()
    answer = [normalize(r) if isinstance(r, str) else "" for r in frame["response"].tolist()]
    claim = [normalize(c) if corrections[i] else (answer[i] if accepted[i] else None)
             for i, c in enumerate(frame["correction"].tolist())]
    endorsed = np.flatnonzero(corrections | accepted).tolist()
    supporters = _users_by([0] * len(endorsed), [claim[i] for i in endorsed], [users[i] for i in endorsed])[0]
    in_cluster = _users_by([clusters[i] for i in endorsed], [claim[i] for i in endorsed], [users[i] for i in endorsed])
    accepted_as_is = _users_by([0] * int(accepted.sum()), [answer[i] for i in np.flatnonzero(accepted)],
                               [users[i] for i in np.flatnonzero(accepted)])[0]
    fixed = np.flatnonzero(corrections).tolist()
    reviewed = set(accepted_corrections)
    hold: list[str | None] = [None] * len(frame)
    agreed = contradicted = by_reviewer = 0
    for i in fixed:
        mine, author = claim[i], users[i]
        same_question: set[str] = set()  # endorsed another claim for a near-duplicate context
        for other, who in in_cluster[clusters[i]].items():
            if other != mine:
                same_question |= who
        # Accepted, elsewhere, the answer this calls wrong. (Corrections of the same answer to other
        # claims count only within the question's cluster, above: a generic non-answer such as "I
        # don't know" is rightly corrected to different facts for different questions.)
        same_answer = set(accepted_as_is.get(answer[i], set()))
        same_question.discard(author)
        same_answer.discard(author)
        if not same_question and not same_answer:
            continue
        contradicted += 1
        support = len(supporters[mine])
        # An answer can be right for another question (answers get reused), so acceptance
        # elsewhere asks only that others stand behind this claim too; the same question asks
        # for more of them than stand against it.
        agreed_enough = support >= cfg.correction_min_agreement and (not same_question or support > len(same_question))
        if frame["turn_id"].iat[i] in reviewed:
            by_reviewer += 1
        elif agreed_enough:
            agreed += 1
        else:
            hold[i] = HELD_REASON
    held = sum(h is not None for h in hold)
    funnel.notes["corrections"] = {"valid": len(fixed), "contradicted": contradicted, "kept_by_agreement": agreed,
                                   "kept_by_reviewer": by_reviewer, "held_back": held,
                                   "correction_min_agreement": cfg.correction_min_agreement}
    return frame.assign(correction_hold=hold)
