"""Dataset snapshots: the curated SFT examples and DPO pairs of a window, frozen as Parquet.

A snapshot is a directory ``<home>/snapshots/<snapshot_id>/``::

    sft_train.parquet  sft_eval.parquet  dpo_train.parquet  dpo_eval.parquet  manifest.json

- Content-addressed: ``content_hash`` is a SHA-256 over the canonical rows of the four
  tables (not over Parquet bytes, not over timestamps of the build), and the snapshot id is
  ``ds-`` + its first 16 hex digits. Building again from the same data gives the same id and
  reuses the existing snapshot; the registry records (snapshot_id, content_hash) as lineage.
- Reproducible: only events ingested at or before ``as_of`` are read, and every choice
  (dedup order, split, replay sample) is a deterministic function of the data.
- Split by near-duplicate cluster: a cluster's SFT examples and DPO pairs go to train or
  eval together, so paraphrases of an eval prompt are never trained on.
- Replay: ``replay_fraction`` of sft_train are general examples (``source = 'replay'``)
  against catastrophic forgetting; replay rows that contain a held-out text (whole, or a word 8-gram of it) are dropped.
- Written atomically (a temporary directory renamed into place), checked by `verify`,
  and catalogued in the DuckDB table ``dataset_snapshots``.

Columns: ``prompt`` is the conversation up to the answer (a list of {role, content});
sft rows add ``response`` (the target), dpo rows ``chosen`` and ``rejected``. Jobs read
snapshots with `open_snapshot`; kaizenlm.retrain.lora_sft reads sft rows as they are, and
`sft_records` / `dpo_records` give TRL's conversational format. `snapshots_with_turns`
finds the snapshots that hold given turns (right to be forgotten: see docs/REGISTRY.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import kaizenlm
from kaizenlm.config import Config, CurationConfig
from kaizenlm.feedback import curation, pairs
from kaizenlm.feedback.curation import Funnel, contaminated, digest
from kaizenlm.feedback.rewards import Window

FORMAT_VERSION = 1
TABLES = ("sft_train", "sft_eval", "dpo_train", "dpo_eval")

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("source", pa.string()), ("cluster", pa.string()),
    ("turn_id", pa.string()), ("conversation_id", pa.string()), ("model_version", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("prompt", MESSAGES), ("response", pa.string()),
    ("reward", pa.float64()),
])
DPO_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("source", pa.string()), ("cluster", pa.string()),
    ("chosen_turn_id", pa.string()), ("rejected_turn_id", pa.string()), ("model_version", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("prompt", MESSAGES), ("chosen", pa.string()), ("rejected", pa.string()),
    ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()), ("margin", pa.float64()),
])
SCHEMAS = {"sft_train": SFT_SCHEMA, "sft_eval": SFT_SCHEMA, "dpo_train": DPO_SCHEMA, "dpo_eval": DPO_SCHEMA}
ID_COLUMN = {"sft_train": "example_id", "sft_eval": "example_id", "dpo_train": "pair_id", "dpo_eval": "pair_id"}


class SnapshotError(ValueError):
    """A snapshot is missing, incomplete or does not match its manifest."""


@dataclass
class Snapshot:
    snapshot_id: str
    content_hash: str
    path: Path
    manifest: dict
    reused: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]


# ---------------------------------------------------------------------------------------------
# Split, replay


def in_eval(cluster: str, eval_fraction: float) -> bool:
    """Whether a near-duplicate cluster belongs to the eval split (a stable hash of its label)."""
    bucket = int(hashlib.sha256(f"split:{cluster}".encode()).hexdigest()[:8], 16) / 2**32
    return bucket < eval_fraction


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
        out.append({"messages": messages, "response": response})
    return out


def _replay_rows(replay: Sequence[dict], n_train: int, cfg: CurationConfig, holdout: Sequence[str],
                 seed_text: str, funnel: Funnel) -> pd.DataFrame:
    wanted = math.ceil(cfg.replay_fraction / (1.0 - cfg.replay_fraction) * n_train) if cfg.replay_fraction else 0
    info: dict = {"fraction": cfg.replay_fraction, "wanted": wanted, "available": len(replay)}
    funnel.notes["replay"] = info
    if wanted == 0 or not replay:
        info["used"] = 0
        return pd.DataFrame()
    rows = pd.DataFrame({
        "messages": [r["messages"] for r in replay],
        "response": [r["response"] for r in replay],
    })
    rows["example_id"] = ["replay-" + digest(orjson.dumps(m).decode(), r)
                          for m, r in zip(rows["messages"].tolist(), rows["response"].tolist(), strict=True)]
    rows = rows.drop_duplicates("example_id").sort_values("example_id").reset_index(drop=True)
    prompts = [curation._last_user(m) for m in rows["messages"]]
    # Exact and n-gram overlap only: general held-out sets are made of new combinations of the
    # training rows' words on purpose, and near-duplicate matching would discard most of them.
    clean = ~contaminated(prompts, holdout, cfg.decontam_threshold, near=False)
    info["contaminated"] = int((~clean).sum())
    rows = rows[clean].reset_index(drop=True)
    # A different, reproducible sample for every training set: seeded by the training data.
    rng = np.random.default_rng(int(hashlib.sha256(seed_text.encode()).hexdigest()[:16], 16))
    take = rng.permutation(len(rows))[:wanted]
    rows = rows.iloc[np.sort(take)].reset_index(drop=True)
    info["used"] = len(rows)
    return rows.rename(columns={"messages": "prompt"}).assign(source="replay", cluster=None, turn_id=None, conversation_id=None, model_version=None,
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
            data[f.name] = pa.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                                     for v in values.tolist()], type=f.type)
    return pa.table(data, schema=schema)


def table_hash(table: pa.Table) -> str:
    """SHA-256 over a table's rows in a canonical form (sorted keys, ISO timestamps, rows in
    id order): independent of Parquet writer versions and compression."""
    h = hashlib.sha256()
    h.update(orjson.dumps(table.schema.names))
    for batch in table.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            h.update(orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z))
            h.update(b"\n")
    return h.hexdigest()


def content_hash(table_hashes: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps({"format": FORMAT_VERSION, "tables": table_hashes},
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
           replay: Sequence[dict] = ()) -> tuple[dict[str, pa.Table], Funnel]:
    """Run the whole curation for a window: the four tables of a snapshot and the funnel."""
    ccfg = cfg.curation
    funnel = Funnel()
    frame = curation.load_candidates(con, window, cfg.rewards)
    funnel.notes["turns"] = len(frame)
    frame = curation.prepare(frame, ccfg, holdout, funnel)
    sft = curation.select_sft(frame, ccfg, funnel)
    dpo = pairs.build_pairs(frame, ccfg, funnel)

    # snapshot columns: prompt = the conversation so far (messages), response = the target
    sft = sft.drop(columns=["prompt", "response"]).rename(columns={"target": "response", "messages": "prompt"})
    dpo = dpo.drop(columns=["prompt"]).rename(columns={"messages": "prompt"})
    sft_eval_mask = np.fromiter((in_eval(c, ccfg.eval_fraction) for c in sft["cluster"].tolist()), dtype=bool,
                                count=len(sft))
    dpo_eval_mask = np.fromiter((in_eval(c, ccfg.eval_fraction) for c in dpo["cluster"].tolist()), dtype=bool,
                                count=len(dpo))
    sft_train = _table(sft[~sft_eval_mask], "sft_train")
    sft_eval = _table(sft[sft_eval_mask], "sft_eval")
    seed_text = table_hash(sft_train)
    replay_rows = _replay_rows(replay, sft_train.num_rows, ccfg, holdout, seed_text, funnel)
    if len(replay_rows):
        sft_train = _table(pd.concat([sft[~sft_eval_mask], replay_rows], ignore_index=True), "sft_train")
    tables = {
        "sft_train": sft_train,
        "sft_eval": sft_eval,
        "dpo_train": _table(dpo[~dpo_eval_mask], "dpo_train"),
        "dpo_eval": _table(dpo[dpo_eval_mask], "dpo_eval"),
    }
    return tables, funnel


def build_snapshot(con: duckdb.DuckDBPyConnection, cfg: Config, window: Window, *, holdout: Sequence[str] = (),
                   replay: Sequence[dict] = (), root: Path | None = None, dry_run: bool = False,
                   sources: dict | None = None) -> Snapshot:
    """Curate the window and write (or reuse) its snapshot under ``root`` (default:
    cfg.snapshots_dir). With dry_run nothing is written; the Snapshot's path does not exist."""
    if window.as_of is None:
        window = Window(window.since, window.until, datetime.now(UTC))
    tables, funnel = curate(con, cfg, window, holdout, replay)
    hashes = {name: table_hash(t) for name, t in tables.items()}
    chash = content_hash(hashes)
    snapshot_id = f"ds-{chash[:16]}"
    root = Path(root) if root is not None else cfg.snapshots_dir
    final = root / snapshot_id
    counts = {name: t.num_rows for name, t in tables.items()}
    warnings = []
    if cfg.curation.replay_fraction and not replay:
        warnings.append("no replay data given (curation.replay_path or --replay): sft_train has no general examples")
    if sum(counts.values()) == 0:
        warnings.append("the snapshot is empty: no turn in the window passed curation")
    manifest = {
        "snapshot_id": snapshot_id,
        "content_hash": chash,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "kaizenlm_version": kaizenlm.__version__,
        "window": window.to_json(),
        "counts": counts,
        "tables": {name: {"rows": counts[name], "data_hash": hashes[name]} for name in TABLES},
        "files": {},
        "curation": funnel.to_json(),
        "config": {"rewards": _as_dict(cfg.rewards), "curation": _as_dict(cfg.curation)},
        "sources": sources or {},
        "warnings": warnings,
    }
    if dry_run:
        return Snapshot(snapshot_id, chash, final, manifest)
    if (final / "manifest.json").is_file():
        existing = read_manifest(final)
        _record(con, existing, final)
        return Snapshot(snapshot_id, chash, final, existing, reused=True)

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
            return Snapshot(snapshot_id, chash, final, manifest, reused=True)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _record(con, manifest, final)
    return Snapshot(snapshot_id, chash, final, manifest)


def _as_dict(section) -> dict:
    return dict(vars(section))


def _write_json(path: Path, data: dict) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(con: duckdb.DuckDBPyConnection, manifest: dict, path: Path) -> None:
    w = manifest["window"]
    con.execute(
        "INSERT OR IGNORE INTO dataset_snapshots (snapshot_id, content_hash, created_at, since, until, as_of, path, "
        "counts, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest["snapshot_id"], manifest["content_hash"], manifest["created_at"], w["since"], w["until"],
         w["as_of"], str(path), orjson.dumps(manifest["counts"]).decode(), orjson.dumps(manifest).decode()],
    )


# ---------------------------------------------------------------------------------------------
# Read


def read_manifest(path: Path) -> dict:
    try:
        return orjson.loads((Path(path) / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise SnapshotError(f"{path} is not a snapshot (no manifest.json)") from None
    except orjson.JSONDecodeError as e:
        raise SnapshotError(f"{path}/manifest.json is not valid JSON: {e}") from None


def list_snapshots(root: Path) -> list[dict]:
    """Manifests of the snapshots under root, newest first (reads the files, not DuckDB, so it
    works while the controller holds the database)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("ds-") and (d / "manifest.json").is_file():
            try:
                out.append(read_manifest(d))
            except SnapshotError:
                continue
    return sorted(out, key=lambda m: (m.get("created_at", ""), m["snapshot_id"]), reverse=True)


def resolve(root: Path, snapshot_id: str) -> Path:
    """The directory of a snapshot, by full id or unambiguous prefix (with or without 'ds-')."""
    root = Path(root)
    wanted = snapshot_id if snapshot_id.startswith("ds-") else f"ds-{snapshot_id}"
    if (root / wanted / "manifest.json").is_file():
        return root / wanted
    matches = sorted(d for d in root.glob(f"{wanted}*") if (d / "manifest.json").is_file()) if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SnapshotError(f"no snapshot {snapshot_id} under {root}")
    raise SnapshotError(f"{snapshot_id} is ambiguous: " + ", ".join(m.name for m in matches))


def verify(path: Path) -> list[str]:
    """Problems of a snapshot directory (empty list: intact): missing or changed files,
    rows that no longer match the manifest's hashes."""
    path = Path(path)
    manifest = read_manifest(path)
    problems = []
    table_hashes = {}
    for name in TABLES:
        file = path / f"{name}.parquet"
        meta = manifest.get("files", {}).get(file.name)
        if not file.is_file():
            problems.append(f"{file.name}: missing")
            continue
        if meta and _file_sha256(file) != meta["sha256"]:
            problems.append(f"{file.name}: file checksum differs from the manifest")
        try:
            table = pq.read_table(file)
        except Exception as e:  # pyarrow raises several types for a damaged file
            problems.append(f"{file.name}: unreadable ({e})")
            continue
        table_hashes[name] = table_hash(table)
        expected = manifest["tables"][name]
        if table.num_rows != expected["rows"]:
            problems.append(f"{file.name}: {table.num_rows} rows, manifest says {expected['rows']}")
        if table_hashes[name] != expected["data_hash"]:
            problems.append(f"{file.name}: data hash differs from the manifest")
    if len(table_hashes) == len(TABLES) and content_hash(table_hashes) != manifest["content_hash"]:
        problems.append("content hash differs from the manifest")
    return problems


def open_snapshot(path: Path, check: bool = True) -> dict[str, pa.Table]:
    """The four tables of a snapshot (verified first unless check=False)."""
    path = Path(path)
    if check:
        problems = verify(path)
        if problems:
            raise SnapshotError(f"snapshot {path.name} is damaged: " + "; ".join(problems))
    return {name: pq.read_table(path / f"{name}.parquet") for name in TABLES}


TURN_COLUMNS = {"sft_train": ("turn_id",), "sft_eval": ("turn_id",),
                "dpo_train": ("chosen_turn_id", "rejected_turn_id"), "dpo_eval": ("chosen_turn_id", "rejected_turn_id")}


def snapshots_with_turns(root: Path, turn_ids: Iterable[str]) -> list[str]:
    """Ids of the snapshots under root that hold any of these turns (e.g. the turns of a user
    who asked to be forgotten: the registry's `mark_tainted` takes these ids)."""
    wanted = pa.array(sorted(set(turn_ids)), type=pa.string())
    if not len(wanted):
        return []
    hits = []
    for manifest in list_snapshots(root):
        path = Path(root) / manifest["snapshot_id"]
        for name, columns in TURN_COLUMNS.items():
            table = pq.read_table(path / f"{name}.parquet", columns=list(columns))
            if any(pc.any(pc.is_in(table.column(c), value_set=wanted)).as_py() for c in columns):
                hits.append(manifest["snapshot_id"])
                break
    return sorted(hits)


def sft_records(table: pa.Table) -> Iterator[dict]:
    """TRL conversational SFT rows: {"messages": prompt messages + [assistant answer]}.

    (The Parquet rows themselves, {prompt: messages, response}, are what
    kaizenlm.retrain.lora_sft reads as prompt/completion data.)"""
    for row in table.select(["prompt", "response"]).to_pylist():
        yield {"messages": [*row["prompt"], {"role": "assistant", "content": row["response"]}]}


def dpo_records(table: pa.Table) -> Iterator[dict]:
    """TRL conversational preference rows: {"prompt": context, "chosen": [...], "rejected": [...]}."""
    for row in table.select(["prompt", "chosen", "rejected"]).to_pylist():
        yield {
            "prompt": row["prompt"],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
