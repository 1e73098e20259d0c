"""The DuckDB store: versioned schema migrations and idempotent bulk inserts.

Only the controller opens the file read-write (DuckDB allows one writer process).
Migrations are a plain list; `migrate` applies the ones the file has not seen, in order,
each in its own transaction, and records them in `schema_migrations`. Later parts of
kaizenlm append their tables to MIGRATIONS; never edit an applied migration.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "events: turns, feedback, signals, dlq",
        """
        CREATE TABLE turns (
            event_id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            turn_id VARCHAR NOT NULL,
            conversation_id VARCHAR NOT NULL,
            user_id VARCHAR NOT NULL,
            model_version VARCHAR,
            variant VARCHAR,
            experiment_id VARCHAR,
            messages JSON NOT NULL,
            prompt VARCHAR NOT NULL,
            response VARCHAR NOT NULL,
            retrieved_doc_ids JSON,
            latency_ms DOUBLE,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            topic VARCHAR,
            ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX turns_turn_id ON turns(turn_id);
        CREATE TABLE feedback (
            event_id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            turn_id VARCHAR NOT NULL,
            thumbs TINYINT,
            rating TINYINT,
            comment VARCHAR,
            correction VARCHAR,
            user_id VARCHAR,
            ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE signals (
            event_id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            turn_id VARCHAR,
            conversation_id VARCHAR,
            kind VARCHAR NOT NULL,
            value DOUBLE,
            user_id VARCHAR,
            ingested_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE dlq (
            topic VARCHAR NOT NULL,
            kafka_partition INTEGER NOT NULL,
            kafka_offset BIGINT NOT NULL,
            raw BLOB,
            reason VARCHAR NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, kafka_partition, kafka_offset)
        );
        """,
    ),
    (
        2,
        "dataset snapshots",
        """
        CREATE TABLE dataset_snapshots (
            snapshot_id VARCHAR PRIMARY KEY,
            content_hash VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            since TIMESTAMPTZ,
            until TIMESTAMPTZ,
            as_of TIMESTAMPTZ NOT NULL,
            path VARCHAR NOT NULL,
            counts JSON NOT NULL,
            manifest JSON NOT NULL
        );
        """,
    ),
    (
        3,
        "registry: model_versions, aliases, alias_history",
        # Kinds and statuses are checked in kaizenlm.registry.versions, not by CHECK
        # constraints, so adding one later needs no migration. No foreign keys: DuckDB
        # cannot update rows that a foreign key references (status, tainted change).
        """
        CREATE TABLE model_versions (
            version_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            seq INTEGER NOT NULL,
            parent_id VARCHAR,
            status VARCHAR NOT NULL,
            config JSON NOT NULL,
            metrics JSON NOT NULL,
            snapshot_id VARCHAR,
            snapshot_hash VARCHAR,
            artifact_dir VARCHAR NOT NULL,
            artifact_hash VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            note VARCHAR,
            tainted BOOLEAN NOT NULL DEFAULT false,
            UNIQUE (kind, seq)
        );
        CREATE TABLE aliases (
            name VARCHAR PRIMARY KEY,
            version_id VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE SEQUENCE alias_history_seq START 1;
        CREATE TABLE alias_history (
            seq BIGINT PRIMARY KEY DEFAULT nextval('alias_history_seq'),
            alias VARCHAR NOT NULL,
            from_version VARCHAR,
            to_version VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            undoes BIGINT,
            reason VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        6,
        "scheduler: job_runs, job_tiers",
        # One row per run of a tier (retries are rows of their own, attempt = 2, 3, ...).
        # job_tiers remembers when each tier was first scheduled, so a run missed before the
        # first success still catches up after a restart (kaizenlm/jobs/scheduler.py).
        """
        CREATE TABLE job_runs (
            run_id VARCHAR PRIMARY KEY,
            tier VARCHAR NOT NULL,
            trigger VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            scheduled_for TIMESTAMPTZ,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            duration_s DOUBLE,
            log_path VARCHAR NOT NULL,
            result JSON,
            error VARCHAR
        );
        CREATE TABLE job_tiers (
            tier VARCHAR PRIMARY KEY,
            scheduled_since TIMESTAMPTZ NOT NULL,
            cron VARCHAR NOT NULL,
            timezone VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        5,
        "a/b: experiments, experiment_decisions",
        # config holds the experiment's full effective [ab] settings, frozen at its start.
        # Every analysis stores one decision row (continue included) with all its numbers;
        # `applied` records what the controller did about it (alias move, statuses).
        """
        CREATE TABLE experiments (
            experiment_id VARCHAR PRIMARY KEY,
            alias VARCHAR NOT NULL,
            champion VARCHAR NOT NULL,
            challenger VARCHAR NOT NULL,
            split DOUBLE NOT NULL,
            config JSON NOT NULL,
            status VARCHAR NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            end_reason VARCHAR,
            actor VARCHAR NOT NULL
        );
        CREATE SEQUENCE experiment_decisions_seq START 1;
        CREATE TABLE experiment_decisions (
            seq BIGINT PRIMARY KEY DEFAULT nextval('experiment_decisions_seq'),
            experiment_id VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            action VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            numbers JSON NOT NULL,
            warnings JSON NOT NULL,
            applied JSON NOT NULL,
            actor VARCHAR NOT NULL
        );
        """,
    ),
    (
        7,
        "annotate: review_items, review_assignments, review_labels",
        # The human review queue (kaizenlm/annotate, docs/ANNOTATION.md). Kinds and verdicts are
        # checked in kaizenlm.annotate.settings, not by CHECK constraints. version_a/version_b of a
        # blind pair never leave the server. review_labels is append-only: the latest row of an
        # (item, reviewer) counts, so a reviewer may change their mind and the history stays.
        """
        CREATE TABLE review_items (
            item_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            turn_id VARCHAR,
            user_id VARCHAR,
            prompt VARCHAR NOT NULL,
            answer VARCHAR,
            correction VARCHAR,
            answer_a VARCHAR,
            answer_b VARCHAR,
            version_a VARCHAR,
            version_b VARCHAR,
            source JSON NOT NULL,
            batch VARCHAR,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE review_assignments (
            item_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            assigned_at TIMESTAMPTZ NOT NULL,
            overlap BOOLEAN NOT NULL,
            PRIMARY KEY (item_id, reviewer)
        );
        CREATE SEQUENCE review_labels_seq START 1;
        CREATE TABLE review_labels (
            seq BIGINT PRIMARY KEY DEFAULT nextval('review_labels_seq'),
            item_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            verdict VARCHAR NOT NULL,
            label VARCHAR,
            schema_id VARCHAR NOT NULL,
            gold_answer VARCHAR,
            preferred_version VARCHAR,
            note VARCHAR,
            source VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL
        );
        """,
    ),
]

# Column order of each event table, as built by `rows_for` (ingested_at takes its default).
COLUMNS: dict[str, list[str]] = {
    "turns": ["event_id", "ts", "turn_id", "conversation_id", "user_id", "model_version", "variant",
              "experiment_id", "messages", "prompt", "response", "retrieved_doc_ids", "latency_ms",
              "prompt_tokens", "completion_tokens", "topic"],
    "feedback": ["event_id", "ts", "turn_id", "thumbs", "rating", "comment", "correction", "user_id"],
    "signals": ["event_id", "ts", "turn_id", "conversation_id", "kind", "value", "user_id"],
}
TABLE_OF = {"turn": "turns", "feedback": "feedback", "signal": "signals"}


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file (creating its directory) and bring its schema up to date."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        migrate(con)
    return con


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply pending migrations in order; returns the versions applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, "
        "applied_at TIMESTAMPTZ DEFAULT now())"
    )
    done = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, sql in MIGRATIONS:
        if version in done:
            continue
        con.execute("BEGIN")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _last_user_message(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content", "")
    return messages[-1].get("content", "") if messages else ""


def _json_text(value) -> str:
    """Compact JSON text for a JSON column (orjson: ~5x faster than json.dumps; UTF-8, not escaped)."""
    return orjson.dumps(value).decode()


def row_for(envelope: dict) -> tuple[str, list]:
    """(table, row values in COLUMNS order) for one validated envelope."""
    p, ts = envelope["payload"], envelope["ts"]
    table = TABLE_OF[envelope["type"]]
    if table == "turns":
        values = [envelope["event_id"], ts, p["turn_id"], p["conversation_id"], p["user_id"],
                  p.get("model_version"), p.get("variant"), p.get("experiment_id"),
                  _json_text(p["messages"]), _last_user_message(p["messages"]),
                  p["response"], _json_text(p.get("retrieved_doc_ids") or []), p.get("latency_ms"),
                  p.get("prompt_tokens"), p.get("completion_tokens"), p.get("topic")]
    elif table == "feedback":
        values = [envelope["event_id"], ts, p["turn_id"], p.get("thumbs"), p.get("rating"),
                  p.get("comment"), p.get("correction"), p.get("user_id")]
    else:
        values = [envelope["event_id"], ts, p.get("turn_id"), p.get("conversation_id"), p["kind"],
                  p.get("value"), p.get("user_id")]
    return table, values


_ARROW_TYPES = {
    "ts": pa.float64(), "thumbs": pa.int8(), "rating": pa.int8(), "latency_ms": pa.float64(),
    "prompt_tokens": pa.int64(), "completion_tokens": pa.int64(), "value": pa.float64(),
}


def insert_events(con: duckdb.DuckDBPyConnection, envelopes: Iterable[dict]) -> dict[str, int]:
    """Bulk-insert validated envelopes, skipping event_ids already stored (idempotent).

    Runs inside the caller's transaction. Returns rows actually inserted per table.
    """
    rows: dict[str, dict[str, list]] = {}
    for env in envelopes:
        table, values = row_for(env)
        rows.setdefault(table, {})[env["event_id"]] = values  # dedup inside the batch too
    inserted = {}
    for table, by_id in rows.items():
        cols = COLUMNS[table]
        columns = list(zip(*by_id.values()))
        arrays = {c: pa.array(list(v), type=_ARROW_TYPES.get(c, pa.string())) for c, v in zip(cols, columns)}
        con.register("incoming_batch", pa.table(arrays))
        select = ", ".join("to_timestamp(ts)" if c == "ts" else c for c in cols)
        # The INSERT's result is the number of rows it inserted (ignored duplicates excluded), so no
        # count(*) before and after: each statement costs ~0.5 ms, felt by the sink's small batches.
        # fetchall, not fetchone: DuckDB >= 2 refuses register() while a result is only partly fetched.
        inserted[table] = con.execute(
            f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) SELECT {select} FROM incoming_batch").fetchall()[0][0]
        con.unregister("incoming_batch")
    return inserted


def insert_dlq(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, int, int, bytes, str]]) -> int:
    """Record unparseable/invalid messages: (topic, partition, offset, raw bytes, reason)."""
    if not rows:
        return 0
    con.executemany(
        "INSERT OR IGNORE INTO dlq (topic, kafka_partition, kafka_offset, raw, reason) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("turns", "feedback", "signals", "dlq")}


def feedback_mix(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """How many of each kind of feedback and signal landed (for summaries and the dashboard)."""
    mix = dict(zip(["thumbs_up", "thumbs_down", "ratings", "comments", "corrections"], con.execute(
        "SELECT count(*) FILTER (thumbs = 1), count(*) FILTER (thumbs = -1), count(rating), count(comment), "
        "count(correction) FROM feedback").fetchone()))
    for kind, n in con.execute("SELECT kind, count(*) FROM signals GROUP BY kind ORDER BY kind").fetchall():
        mix[f"signal:{kind}"] = n
    return mix
