"""Dataset snapshots: the curated SFT examples and DPO pairs of a window, frozen as Parquet.

A snapshot is a directory ``<home>/snapshots/<snapshot_id>/``::

    sft_train.parquet  sft_eval.parquet  dpo_train.parquet  dpo_eval.parquet  manifest.json

- Content-addressed: ``content_hash`` is a SHA-256 over the canonical rows of the four
  tables (not over Parquet bytes, not over timestamps of the build), and the snapshot id is
  ``ds-`` + its first 16 hex digits. Building again from the same data and config gives the
  same id and reuses the existing snapshot; the registry records (snapshot_id, content_hash)
  as lineage.
- Reproducible: only events ingested at or before ``as_of`` are read, and every choice
  (dedup order, split, replay sample) is a deterministic function of the data.
- Recency window: turns with since <= ts < until; since defaults to as_of - window_days.
- Split grouped by conversation: the ``eval`` files are the validation split. Rows are joined
  into groups that share a conversation or a near-duplicate cluster (a DPO pair joins the
  conversations of both its answers), and a group goes to train or eval whole, by a stable
  hash: no conversation, and no paraphrase of an eval prompt, is on both sides.
- Replay: general examples make up ``replay_fraction`` of sft_train (``source = 'replay'``),
  as exactly as whole rows allow: R replay rows among T train rows with R = round(fraction * T).
  They come from ``curation.replay_path`` (JSONL), or rows the caller passes; with neither,
  the snapshot has no replay rows and its manifest warns. Replay rows are scrubbed like everything
  else and must not contain a held-out text (the evaluation suite's prompts among them).
- Two processes (``[curation] workers``): PII scrubbing, near-duplicate clustering and pair
  mining share their work with a forked child (`kaizenlm.datasets.parallel`; it never touches
  DuckDB); the snapshot is byte for byte the same as with one process.
- Written atomically (a temporary directory renamed into place), checked by `verify`,
  and catalogued in the DuckDB table ``dataset_snapshots``.
- On disk (kaizenlm.datasets.snapshot_store, re-exported here): hashes, manifests, `verify`,
  `open_snapshot`, `snapshots_with_turns`, the forget marks.
- Right to be forgotten: `mark_forgotten` marks a snapshot that holds a forgotten user's
  turns (``forgotten.json`` next to the manifest, and the manifest copy in DuckDB);
  `open_snapshot` refuses a marked snapshot (docs/DATASETS.md).

Columns: ``prompt`` is the conversation up to the answer (a list of {role, content});
sft rows add ``response`` (the target), dpo rows ``chosen`` and ``rejected``. Jobs read
snapshots with `open_snapshot`; kaizenlm.retrain.lora_sft reads sft rows as they are, and
`sft_records` / `dpo_records` give TRL's conversational format. `snapshots_with_turns`
finds the snapshots that hold given turns.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import kaizenlm
from kaizenlm.config import Config, CurationConfig
from kaizenlm.datasets import curation, integrity, pairs, reviewed
from kaizenlm.datasets.curation import Funnel, contaminated, digest, scrub_pii
from kaizenlm.datasets.parallel import beside
from kaizenlm.datasets.snapshot_store import (  # re-exported: callers read snapshots through this module
    FORMAT_VERSION,
    REDACTED,
    TABLES,
    TURN_COLUMNS,
    SnapshotError,
    _file_sha256,
    _fsync_dir,
    _write_json,
    content_hash,
    dpo_records,
    list_snapshots,
    mark_forgotten,
    open_snapshot,
    read_manifest,
    resolve,
    sft_records,
    snapshots_with_turns,
    table_hash,
    verify,
)
from kaizenlm.feedback import rewards
from kaizenlm.feedback.rewards import Window

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("source", pa.string()), ("cluster", pa.string()), ("topic", pa.string()),
    ("turn_id", pa.string()), ("conversation_id", pa.string()), ("model_version", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("prompt", MESSAGES), ("response", pa.string()),
    ("reward", pa.float64()),
])
DPO_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("source", pa.string()), ("cluster", pa.string()), ("topic", pa.string()),
    ("chosen_turn_id", pa.string()), ("rejected_turn_id", pa.string()), ("conversation_id", pa.string()),
    ("rejected_conversation_id", pa.string()), ("model_version", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("prompt", MESSAGES), ("chosen", pa.string()), ("rejected", pa.string()),
    ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()), ("margin", pa.float64()),
])
SCHEMAS = {"sft_train": SFT_SCHEMA, "sft_eval": SFT_SCHEMA, "dpo_train": DPO_SCHEMA, "dpo_eval": DPO_SCHEMA}
ID_COLUMN = {"sft_train": "example_id", "sft_eval": "example_id", "dpo_train": "pair_id", "dpo_eval": "pair_id"}


__all__ = ["DPO_SCHEMA", "FORMAT_VERSION", "REDACTED", "SFT_SCHEMA", "TABLES", "TURN_COLUMNS", "Snapshot", "SnapshotError",
           "build_snapshot", "content_hash", "curate", "default_window", "dpo_records", "list_snapshots", "load_replay",
           "mark_forgotten", "open_snapshot", "read_manifest", "replay_count", "resolve", "sft_records",
           "snapshots_with_turns", "split", "table_hash", "verify"]


@dataclass
class Snapshot:
    snapshot_id: str
    content_hash: str
    path: Path
    manifest: dict
    reused: bool = False
    user_report: dict | None = None  # kaizenlm.datasets.integrity.report_summary of the build (not stored)
    # this build's review note (kaizenlm.datasets.reviewed.lineage): a reused snapshot keeps the
    # manifest of the build that wrote it, so what this build was given is said here
    reviews: dict | None = None

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]


# ---------------------------------------------------------------------------------------------
# Split


def in_eval(group: str, eval_fraction: float) -> bool:
    """Whether a split group belongs to the eval (validation) split (a stable hash of its label)."""
    bucket = int(hashlib.sha256(f"split:{group}".encode()).hexdigest()[:8], 16) / 2**32
    return bucket < eval_fraction


def split_groups(sft: pd.DataFrame, dpo: pd.DataFrame) -> tuple[list[str], list[str]]:
    """A split-group label per SFT row and per DPO pair: rows that share a conversation or a
    near-duplicate cluster, directly or through other rows, share a label (the smallest
    member name), so a whole group goes to one side of the split."""
    links = [(f"k:{k}", f"c:{c}") for k, c in zip(sft["cluster"].tolist(), sft["conversation_id"].tolist(), strict=True)]
    links += [(f"k:{k}", f"c:{c}") for k, c in zip(dpo["cluster"].tolist(), dpo["conversation_id"].tolist(), strict=True)]
    links += [(f"k:{k}", f"c:{c}") for k, c in
              zip(dpo["cluster"].tolist(), dpo["rejected_conversation_id"].tolist(), strict=True)]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(f"k:{k}") for k in sft["cluster"].tolist()], [find(f"k:{k}") for k in dpo["cluster"].tolist()]


def split(sft: pd.DataFrame, dpo: pd.DataFrame, eval_fraction: float, funnel: Funnel) -> tuple[np.ndarray, np.ndarray]:
    """Step split: eval masks for SFT rows and DPO pairs (see `split_groups`)."""
    sft_groups, dpo_groups = split_groups(sft, dpo)
    groups = sorted(set(sft_groups) | set(dpo_groups))
    evals = {g for g in groups if in_eval(g, eval_fraction)}
    sft_eval = np.fromiter((g in evals for g in sft_groups), dtype=bool, count=len(sft_groups))
    dpo_eval = np.fromiter((g in evals for g in dpo_groups), dtype=bool, count=len(dpo_groups))
    sizes = pd.Series(sft_groups + dpo_groups).value_counts()
    for output, mask in (("sft", sft_eval), ("dpo", dpo_eval)):
        funnel.step(output, "split", len(mask), len(mask),
                    params={"eval_fraction": eval_fraction, "grouped_by": ["conversation", "near-duplicate cluster"],
                            "groups": len(groups), "eval_groups": len(evals),
                            "largest_group_rows": int(sizes.max()) if len(sizes) else 0,
                            "train": int((~mask).sum()), "eval": int(mask.sum())})
    return sft_eval, dpo_eval


# ---------------------------------------------------------------------------------------------
# Replay (general data against catastrophic forgetting)


REPLAY_PROMPT_FIELDS = ("prompt", "question", "instruction", "input")
REPLAY_RESPONSE_FIELDS = ("response", "answer", "output", "completion")


def load_replay(path: str | Path) -> list[dict]:
    """General examples from a file (.jsonl, .json, .parquet): each record has ``messages``
    (a chat without the final answer) or one of prompt/question/instruction/input, and one of
    response/answer/output/completion. Returns [{"messages": [...], "response": str}]."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"replay file {path} does not exist")
    out = []
    for i, rec in enumerate(curation._read_records(path)):
        where = f"{path}: record {i + 1}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object")
        response = next((rec[f] for f in REPLAY_RESPONSE_FIELDS if isinstance(rec.get(f), str)), None)
        if response is None:
            raise ValueError(f"{where}: needs one of the fields {', '.join(REPLAY_RESPONSE_FIELDS)}")
        messages = rec.get("messages")
        if messages is None or (hasattr(messages, "__len__") and len(messages) == 0):
            prompt = next((rec[f] for f in REPLAY_PROMPT_FIELDS if isinstance(rec.get(f), str)), None)
            if prompt is None:
                raise ValueError(f"{where}: needs messages or one of the fields {', '.join(REPLAY_PROMPT_FIELDS)}")
            messages = [{"role": "user", "content": prompt}]
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        row = {"messages": messages, "response": response}
        if isinstance(rec.get("skill"), str):  # kept for the KL anchor's per-skill balance
            row["skill"] = rec["skill"]
        if isinstance(rec.get("anchor_response"), str):  # the KL anchor's target, when it differs from response
            row["anchor_response"] = rec["anchor_response"]
        out.append(row)
    return out


def replay_count(n_train: int, fraction: float) -> int:
    """Replay rows R to add to n_train training rows so that R / (n_train + R) is as close to
    ``fraction`` as whole rows allow (then R = round(fraction * (n_train + R)))."""
    if fraction <= 0 or n_train <= 0:
        return 0
    ideal = fraction * n_train / (1.0 - fraction)
    return min({math.floor(ideal), math.ceil(ideal)}, key=lambda r: (abs(r / (n_train + r) - fraction), r))


def _replay_rows(replay: Sequence[dict], n_train: int, cfg: CurationConfig, holdout: Sequence[str],
                 seed_text: str, funnel: Funnel, source: str) -> pd.DataFrame:
    wanted = replay_count(n_train, cfg.replay_fraction)
    rows = pd.DataFrame({
        "messages": [[{**m, "content": scrub_pii(m["content"], keep=cfg.pii_keep)} for m in r["messages"]]
                     for r in replay],
        "response": [scrub_pii(r["response"], keep=cfg.pii_keep) for r in replay],
    })
    if len(rows):
        rows["example_id"] = ["replay-" + digest(orjson.dumps(m).decode(), r)
                              for m, r in zip(rows["messages"].tolist(), rows["response"].tolist(), strict=True)]
        rows = rows.drop_duplicates("example_id").sort_values("example_id").reset_index(drop=True)
    prompts = [curation._last_user(m) for m in rows["messages"]] if len(rows) else []
    # Exact and n-gram overlap only: general held-out sets are made of new combinations of the
    # training rows' words on purpose, and near-duplicate matching would discard most of them.
    clean = ~contaminated(prompts, holdout, cfg.decontam_threshold, near=False)
    dirty = rows[~clean].assign(_prompt=[p for p, c in zip(prompts, clean, strict=True) if not c]) if len(rows) else rows
    rows = rows[clean].reset_index(drop=True) if len(rows) else rows
    # A different, reproducible sample for every training set: seeded by the training data. A
    # pool smaller than the sample is repeated (whole passes, each in its own order).
    rng = np.random.default_rng(int(hashlib.sha256(seed_text.encode()).hexdigest()[:16], 16))
    take: list[int] = []
    passes = 0
    while len(rows) and len(take) < wanted:
        take += [int(i) for i in rng.permutation(len(rows))[:wanted - len(take)]]
        passes += 1
    picked = rows.iloc[take].reset_index(drop=True) if take else rows.iloc[0:0]
    if take:
        repeat = pd.Series(take).groupby(take).cumcount().to_numpy()
        picked["example_id"] = [e if k == 0 else f"{e}#{k}" for e, k in zip(picked["example_id"].tolist(), repeat,
                                                                              strict=True)]
    funnel.step("sft", "replay_mix", len(replay), len(picked),
                params={"replay_fraction": cfg.replay_fraction, "source": source, "domain_train_rows": n_train,
                        "wanted": wanted, "pool": len(rows), "passes_over_pool": passes},
                examples=curation.examples_of(dirty, "matches_holdout", "_prompt", "example_id") if len(dirty) else None,
                matches_holdout=int((~clean).sum()), not_sampled=max(0, len(rows) - len(picked)))
    return picked.rename(columns={"messages": "prompt"}).assign(
        source="replay", cluster=None, topic=None, turn_id=None, conversation_id=None, model_version=None,
        ts=pd.NaT, reward=np.nan)


# ---------------------------------------------------------------------------------------------
# Tables and hashing


def _messages_column(values) -> list[list[dict]]:
    return [[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in values]


def _table(rows: pd.DataFrame, name: str) -> pa.Table:
    schema = SCHEMAS[name]
    if rows.empty:
        return schema.empty_table()
    rows = rows.sort_values(ID_COLUMN[name]).reset_index(drop=True)
    data = {}
    for f in schema:
        values = rows[f.name] if f.name in rows else pd.Series([None] * len(rows))
        if f.name == "prompt":
            data[f.name] = pa.array(_messages_column(values.tolist()), type=f.type)
        elif f.name == "ts":
            data[f.name] = pa.array(pd.to_datetime(values, utc=True), type=f.type)
        elif pa.types.is_floating(f.type):
            data[f.name] = pa.array(pd.to_numeric(values).astype(float), type=f.type, from_pandas=True)
        else:
            try:  # strings with None/NaN for missing: straight to Arrow
                data[f.name] = pa.array(values, type=f.type, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                data[f.name] = pa.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                                         for v in values.tolist()], type=f.type)
    return pa.table(data, schema=schema)



# ---------------------------------------------------------------------------------------------
# Build


def default_window(cfg: CurationConfig, since=None, until=None, as_of=None, all_data: bool = False) -> Window:
    """The window of a build: as_of defaults to now, since to as_of - window_days (unless all_data)."""
    as_of = as_of if as_of is not None else datetime.now(UTC)
    window = Window(since=since, until=until, as_of=as_of)
    if since is None and not all_data and cfg.window_days:
        window = Window(since=window.as_of - timedelta(days=cfg.window_days), until=window.until, as_of=window.as_of)
    return window


def curate(con: duckdb.DuckDBPyConnection, cfg: Config, window: Window, holdout: Sequence[str] = (),
           replay: Sequence[dict] | None = None, replay_holdout: Sequence[str] = (),
           replay_source: str = "given", accepted_corrections: Collection[str] = (),
           reviews: reviewed.ReviewedRows | None = None) -> tuple[dict[str, pa.Table], Funnel]:
    """Run the whole curation for a window: the four tables of a snapshot and the funnel.

    ``replay`` None means Config.replay_path: the file ``curation.replay_path`` names, else the
    base's own answers to the general prompts (kaizenlm/base/general.py), else no replay rows;
    ``replay_holdout`` are further texts replay rows must not contain;
    ``accepted_corrections`` are turn ids whose correction a reviewer accepted (they skip the
    agreement and flagged-user checks of kaizenlm.datasets.integrity); ``reviews``: what human
    reviewers decided (kaizenlm.datasets.reviewed; its accepted turns join accepted_corrections)."""
    accepted = frozenset(accepted_corrections) | (reviews.accepted_turns if reviews is not None else frozenset())
    with _gc_paused():
        return _curate(con, cfg, window, holdout, replay, replay_holdout, replay_source, accepted, reviews)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while. Curation makes millions of lists, dicts
    and frames and drops few in cycles; at 100k turns the collector's full passes over them
    cost about 0.3 CPU s per build and free next to nothing. It is back on (if it was on)
    afterwards, and collects then what is left."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _curate(con: duckdb.DuckDBPyConnection, cfg: Config, window: Window, holdout: Sequence[str],
            replay: Sequence[dict] | None, replay_holdout: Sequence[str],
            replay_source: str, accepted_corrections: frozenset[str],
            reviews: reviewed.ReviewedRows | None = None) -> tuple[dict[str, pa.Table], Funnel]:
    ccfg = cfg.curation
    if replay is None:  # the configured file, else the base's own general answers, or none (Config.replay_path)
        replay_source = str(cfg.replay_path) if cfg.replay_path else ""
        replay = load_replay(replay_source) if replay_source else []
    funnel = Funnel()
    frame = curation.load_candidates(con, window, cfg.rewards)
    ingested = curation.count_turns(con, window)
    funnel.step("candidates", "recency_window", ingested, len(frame),
                params={**window.to_json(), "window_days": ccfg.window_days}, outside_window=ingested - len(frame))
    funnel.notes["turns"] = len(frame)
    funnel.notes["reward_calibration"] = rewards.calibration(frame, cfg.rewards)  # implicit vs explicit, this window
    report = integrity.user_report(con, window, ccfg)  # who sent what: corrections, repeats, bursts
    funnel.user_report = integrity.report_summary(report, ccfg)
    funnel.notes["users"] = {"users": funnel.user_report["users"], "flagged": funnel.user_report["flagged"],
                             "accepted_corrections": len(accepted_corrections)}
    frame = integrity.drop_flagged_users(frame, report, ccfg, accepted_corrections, funnel)
    frame = curation.prepare(frame, ccfg, holdout, funnel)
    frame = integrity.mark_contradicted(frame, ccfg, accepted_corrections, funnel)
    frame = reviewed.apply(frame, reviews, ccfg, funnel)  # human review: reviewed targets, rejections
    # Pair mining, the costliest pair step, on the second core beside SFT selection; SFT
    # selection costs about as much as three of the four sources, so this process mines the fourth.
    mining = beside(ccfg.processes, pairs.mine_sources, frame, ccfg, pairs.PAIR_SOURCES[:3])
    sft = curation.select_sft(frame, ccfg, funnel)
    rating = pairs.mine_sources(frame, ccfg, pairs.PAIR_SOURCES[3:])
    dpo = pairs.build_pairs(frame, ccfg, funnel, mined=pairs.joined([*mining.result(), *rating]))
    dpo = reviewed.add_pairs(dpo, reviews, ccfg, holdout, funnel)  # blind comparisons' outcomes

    # snapshot columns: prompt = the conversation so far (messages), response = the target
    sft = sft.drop(columns=["prompt", "response"]).rename(columns={"target": "response", "messages": "prompt"})
    dpo = dpo.drop(columns=["prompt"]).rename(columns={"messages": "prompt"})
    sft_eval_mask, dpo_eval_mask = split(sft, dpo, ccfg.eval_fraction, funnel)
    funnel.notes["reviews"] = reviewed.lineage(reviews, sft, dpo)
    sft_train = _table(sft[~sft_eval_mask], "sft_train")
    seed_text = digest(*sorted(sft_train.column("example_id").to_pylist()), size=64)  # the train set's identity
    replay_rows = _replay_rows(replay, sft_train.num_rows, ccfg, [*holdout, *replay_holdout], seed_text,
                               funnel, replay_source)
    if len(replay_rows):
        sft_train = _table(pd.concat([sft[~sft_eval_mask], replay_rows], ignore_index=True), "sft_train")
    n_replay = len(replay_rows)
    funnel.notes["mix_ratio"] = {
        "configured": ccfg.replay_fraction, "replay_rows": n_replay, "sft_train_rows": sft_train.num_rows,
        "actual": round(n_replay / sft_train.num_rows, 6) if sft_train.num_rows else None, "source": replay_source,
    }
    tables = {
        "sft_train": sft_train,
        "sft_eval": _table(sft[sft_eval_mask], "sft_eval"),
        "dpo_train": _table(dpo[~dpo_eval_mask], "dpo_train"),
        "dpo_eval": _table(dpo[dpo_eval_mask], "dpo_eval"),
    }
    return tables, funnel


def code_version() -> dict:
    """The kaizenlm version and, when it runs from a git checkout, the commit (and whether the
    working tree had changes)."""
    out: dict = {"kaizenlm": kaizenlm.__version__, "git_commit": None, "git_dirty": None}
    repo = Path(kaizenlm.__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            out["git_commit"] = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                               text=True, timeout=5, check=True).stdout.strip()
            out["git_dirty"] = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                                   capture_output=True, text=True, timeout=5, check=True).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def build_snapshot(con: duckdb.DuckDBPyConnection, cfg: Config, window: Window, *, holdout: Sequence[str] = (),
                   replay: Sequence[dict] | None = None, replay_source: str = "given",
                   replay_holdout: Sequence[str] = (), root: Path | None = None,
                   dry_run: bool = False, sources: dict | None = None,
                   accepted_corrections: Collection[str] = (),
                   reviews: reviewed.ReviewedRows | None = None) -> Snapshot:
    """Curate the window and write (or reuse) its snapshot under ``root`` (default:
    cfg.snapshots_dir). ``replay`` None: Config.replay_path's rows, if any. With dry_run nothing
    is written; the Snapshot's path does not exist. ``accepted_corrections``, ``reviews``: see
    `curate`; the manifest's ``reviews`` says which reviews the snapshot used (None: none given)."""
    if window.as_of is None:
        window = Window(window.since, window.until, datetime.now(UTC))
    tables, funnel = curate(con, cfg, window, holdout, replay, replay_holdout, replay_source, accepted_corrections,
                            reviews)
    hashes = {name: table_hash(t) for name, t in tables.items()}
    chash = content_hash(hashes)
    snapshot_id = f"ds-{chash[:16]}"
    root = Path(root) if root is not None else cfg.snapshots_dir
    final = root / snapshot_id
    counts = {name: t.num_rows for name, t in tables.items()}
    warnings = []
    mix = funnel.notes["mix_ratio"]
    if cfg.curation.replay_fraction and counts["sft_train"] > 0 and not mix["replay_rows"]:
        warnings.append("no usable replay data: sft_train has no general examples, so a retrain on this snapshot "
                        "has neither replay nor the KL anchor; set curation.replay_path, or run `kaizen base build` "
                        "(the base answers the general prompts) and build again")
    if sum(counts.values()) == 0:
        warnings.append("the snapshot is empty: no turn in the window passed curation")
    review_note = funnel.notes.pop("reviews", None)  # the manifest's own key, not a curation note
    if review_note is not None and not review_note["gate_open"] and review_note.get("labelled_items"):
        warnings.append(f"reviewed labels not used: {review_note['reason']}")
    manifest = {
        "snapshot_id": snapshot_id,
        "content_hash": chash,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "kaizenlm_version": kaizenlm.__version__,
        "code_version": code_version(),
        "window": window.to_json(),
        "counts": counts,
        "mix_ratio": mix,
        "pair_sources": funnel.notes["pair_sources"],
        "reviews": review_note,
        "tables": {name: {"rows": counts[name], "data_hash": hashes[name]} for name in TABLES},
        "files": {},
        "curation": funnel.to_json(),
        "config": {"rewards": _as_dict(cfg.rewards), "curation": _as_dict(cfg.curation)},
        "sources": sources or {},
        "warnings": warnings,
    }
    if dry_run:
        return Snapshot(snapshot_id, chash, final, manifest, user_report=funnel.user_report, reviews=review_note)
    if (final / "manifest.json").is_file():
        existing = read_manifest(final)
        _record(con, existing, final)
        return Snapshot(snapshot_id, chash, final, existing, reused=True, user_report=funnel.user_report, reviews=review_note)

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{snapshot_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, table in tables.items():
            path = tmp / f"{name}.parquet"
            pq.write_table(table, path, compression="zstd")
            manifest["files"][path.name] = {"sha256": _file_sha256(path), "bytes": path.stat().st_size}
        _write_json(tmp / "manifest.json", manifest)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():
                raise
            # a concurrent build of the same content won the race: use its snapshot
            shutil.rmtree(tmp, ignore_errors=True)
            manifest = read_manifest(final)
            _record(con, manifest, final)
            return Snapshot(snapshot_id, chash, final, manifest, reused=True, user_report=funnel.user_report, reviews=review_note)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _record(con, manifest, final)
    return Snapshot(snapshot_id, chash, final, manifest, user_report=funnel.user_report, reviews=review_note)


def _as_dict(section) -> dict:
    return dict(vars(section))



def _record(con: duckdb.DuckDBPyConnection, manifest: dict, path: Path) -> None:
    w = manifest["window"]
    con.execute(
        "INSERT OR IGNORE INTO dataset_snapshots (snapshot_id, content_hash, created_at, since, until, as_of, path, "
        "counts, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest["snapshot_id"], manifest["content_hash"], manifest["created_at"], w["since"], w["until"],
         w["as_of"], str(path), orjson.dumps(manifest["counts"]).decode(), orjson.dumps(manifest).decode()],
    )


