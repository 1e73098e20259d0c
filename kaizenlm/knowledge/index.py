"""Knowledge refresh: documents + promoted answers -> chunks -> embeddings -> FAISS index.

`refresh_knowledge` builds one artifact directory:

  index.faiss      FAISS index; vector i is row i of chunks.parquet
  chunks.parquet   chunk_id, doc_id, chunk_index, text, hash, source
  embeddings.npy   float32 (n, 384) unit vectors, row i = chunk i (the next refresh's cache)
  manifest.json    sources, counts, index type and parameters, model, timings, inputs hash

It is incremental: a chunk whose content hash is in the previous artifact's chunks is not
embedded again, its vector is copied. Documents that are gone leave the index because the
index is rebuilt from the current chunks every time (adding vectors is cheap next to
embedding them; rebuilding also keeps an HNSW graph free of deleted entries).

The function is pure with respect to DuckDB and the registry: the caller collects the
promoted answers (`promoted_answers`) and registers the directory (knowledge_job.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kaizenlm.config import KnowledgeConfig
from kaizenlm.knowledge.chunking import Chunk, Document, chunk_documents, load_documents, promoted_documents
from kaizenlm.knowledge.embed import Embedder, load_embedder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE, CHUNKS_FILE, EMBEDDINGS_FILE, MANIFEST_FILE = "index.faiss", "chunks.parquet", "embeddings.npy", "manifest.json"
INDEX_FLAT, INDEX_HNSW = "flat_ip", "hnsw_flat_ip"
# Graph quality at build time. Higher costs build time, which every refresh pays (the index
# is rebuilt); recall is bought at search time instead (knowledge.hnsw_ef_search).
HNSW_EF_CONSTRUCTION = 64


@dataclass
class PreviousArtifact:
    """What a refresh reuses from the previous version: chunk ids/hashes and their vectors."""

    chunk_hash: dict[str, str]  # chunk_id -> hash
    doc_hashes: dict[str, list[str]]  # doc_id -> its chunk hashes in order
    vector_of_hash: dict[str, np.ndarray]
    inputs_hash: str | None


def read_chunks(artifact_dir: Path) -> pa.Table:
    return pq.read_table(Path(artifact_dir) / CHUNKS_FILE)


def read_manifest(artifact_dir: Path) -> dict:
    return json.loads((Path(artifact_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))


def load_previous(artifact_dir: Path | None, embed_model: str) -> PreviousArtifact:
    """The previous artifact's chunks and vectors; empty when there is none or it was built
    with another embedding model (its vectors would not be comparable)."""
    empty = PreviousArtifact({}, {}, {}, None)
    if artifact_dir is None:
        return empty
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if manifest.get("embed_model") != embed_model:
        log.warning("previous knowledge %s used %s; embedding everything again", artifact_dir, manifest.get("embed_model"))
        return empty
    table = read_chunks(artifact_dir)
    ids, docs, hashes = (table.column(c).to_pylist() for c in ("chunk_id", "doc_id", "hash"))
    vectors = np.load(artifact_dir / EMBEDDINGS_FILE, mmap_mode="r")
    doc_hashes: dict[str, list[str]] = {}
    for doc_id, h in zip(docs, hashes, strict=True):
        doc_hashes.setdefault(doc_id, []).append(h)
    return PreviousArtifact(
        chunk_hash=dict(zip(ids, hashes, strict=True)),
        doc_hashes=doc_hashes,
        vector_of_hash={h: vectors[i] for i, h in enumerate(hashes)},
        inputs_hash=manifest.get("inputs_hash"),
    )


def change_counts(chunks: list[Chunk], previous: PreviousArtifact) -> dict[str, int]:
    """Chunks and documents new / changed / removed / unchanged against the previous version."""
    current_ids = {c.chunk_id for c in chunks}
    doc_hashes: dict[str, list[str]] = {}
    for c in chunks:
        doc_hashes.setdefault(c.doc_id, []).append(c.hash)
    counts = {
        "chunks_new": sum(c.chunk_id not in previous.chunk_hash for c in chunks),
        "chunks_changed": sum(previous.chunk_hash.get(c.chunk_id, c.hash) != c.hash for c in chunks),
        "chunks_unchanged": sum(previous.chunk_hash.get(c.chunk_id) == c.hash for c in chunks),
        "chunks_removed": sum(cid not in current_ids for cid in previous.chunk_hash),
        "documents_new": sum(d not in previous.doc_hashes for d in doc_hashes),
        "documents_changed": sum(d in previous.doc_hashes and previous.doc_hashes[d] != h for d, h in doc_hashes.items()),
        "documents_unchanged": sum(previous.doc_hashes.get(d) == h for d, h in doc_hashes.items()),
        "documents_removed": sum(d not in doc_hashes for d in previous.doc_hashes),
    }
    return counts


def embed_chunks(chunks: list[Chunk], previous: PreviousArtifact, embedder: Embedder, progress: bool,
                 on_step: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
    """Vectors for all chunks, embedding only texts whose hash the previous version lacks.
    Returns (vectors, number of texts embedded now)."""
    to_embed: dict[str, str] = {}
    for c in chunks:
        if c.hash not in previous.vector_of_hash:
            to_embed.setdefault(c.hash, c.text)  # identical texts are embedded once
    fresh = embedder.encode(list(to_embed.values()), progress=progress, desc="embedding chunks", on_step=on_step)
    fresh_of_hash = dict(zip(to_embed, fresh, strict=True))
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for i, c in enumerate(chunks):
        vectors[i] = fresh_of_hash[c.hash] if c.hash in fresh_of_hash else previous.vector_of_hash[c.hash]
    return vectors, len(to_embed)


def build_index(vectors: np.ndarray, exact_max: int, hnsw_m: int, ef_search: int) -> tuple[faiss.Index, str, dict]:
    """Exact inner-product search up to `exact_max` vectors; HNSW above (exact search cost
    grows with the corpus, HNSW stays near-constant at a small recall cost). `ef_search` is
    recorded in the parameters; the retriever searches with it."""
    dim = vectors.shape[1]
    if len(vectors) <= exact_max:
        index, kind, params = faiss.IndexFlatIP(dim), INDEX_FLAT, {}
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = ef_search
        kind = INDEX_HNSW
        params = {"M": hnsw_m, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef_search}
    if len(vectors):
        index.add(vectors)
    return index, kind, params


def inputs_hash(chunks: list[Chunk], embed_model: str, kcfg: KnowledgeConfig, index_kind: str, params: dict) -> str:
    """sha256 over everything the index is a function of: equal hash, equal index."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": embed_model, "chunk_words": kcfg.chunk_words, "chunk_overlap": kcfg.chunk_overlap,
                         "index": index_kind, "params": params}, sort_keys=True).encode())
    for c in chunks:
        h.update(f"\n{c.chunk_id}\0{c.hash}".encode())
    return h.hexdigest()


def _chunks_table(chunks: list[Chunk], source_of: dict[str, str]) -> pa.Table:
    return pa.table({
        "chunk_id": pa.array([c.chunk_id for c in chunks], pa.string()),
        "doc_id": pa.array([c.doc_id for c in chunks], pa.string()),
        "chunk_index": pa.array([c.chunk_index for c in chunks], pa.int32()),
        "text": pa.array([c.text for c in chunks], pa.string()),
        "hash": pa.array([c.hash for c in chunks], pa.string()),
        "source": pa.array([source_of[c.doc_id] for c in chunks], pa.string()),
    })


def _write_artifact(out_dir: Path, index: faiss.Index, table: pa.Table, vectors: np.ndarray, manifest: dict) -> None:
    """Write into a sibling temp directory, then rename: a crash never leaves a half index.
    The manifest is written last, with the time the writing took."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"knowledge output directory {out_dir} is not empty; pass a new directory")
    staging = out_dir.parent / f".{out_dir.name}.incoming-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        started = time.perf_counter()
        faiss.write_index(index, str(staging / INDEX_FILE))
        pq.write_table(table, staging / CHUNKS_FILE)
        np.save(staging / EMBEDDINGS_FILE, vectors)
        manifest["timings"]["write_s"] = time.perf_counter() - started
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def refresh_knowledge(
    kcfg: KnowledgeConfig,
    docs_folder: str | Path | None,
    promoted_answers: list[dict],
    previous_artifact_dir: str | Path | None,
    out_dir: str | Path,
    embedder: Embedder | None = None,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Build the knowledge artifact in `out_dir` (new or empty) and return its manifest.

    docs_folder: .md/.txt/.jsonl documents (None: promoted answers only).
    promoted_answers: dicts {turn_id, question, answer} (see `promoted_answers`).
    previous_artifact_dir: the last version's directory, whose vectors are reused by hash.
    progress: a tqdm bar while embedding; on_step(done, total) after each embedding step.
    """
    started = time.perf_counter()
    embedder = embedder or load_embedder()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    loaded = load_documents(docs_folder) if docs_folder is not None else None
    file_docs = loaded.documents if loaded else []
    docs: list[Document] = file_docs + promoted_documents(promoted_answers)
    chunks = chunk_documents(docs, kcfg.chunk_words, kcfg.chunk_overlap)
    previous = load_previous(Path(previous_artifact_dir) if previous_artifact_dir else None, embedder.model_name)
    timings["load_and_chunk_s"] = time.perf_counter() - t

    t = time.perf_counter()
    vectors, n_embedded = embed_chunks(chunks, previous, embedder, progress, on_step)
    timings["embed_s"] = time.perf_counter() - t

    t = time.perf_counter()
    index, index_kind, params = build_index(vectors, kcfg.exact_index_max_chunks, kcfg.hnsw_m, kcfg.hnsw_ef_search)
    timings["index_s"] = time.perf_counter() - t

    counts = {"documents": len(docs), "chunks": len(chunks), "chunks_embedded": n_embedded,
              **change_counts(chunks, previous)}
    manifest = {
        "kind": "knowledge",
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "embed_model": embedder.model_name,
        "embed_dim": embedder.dim,
        "chunking": {"unit": "words", "chunk_words": kcfg.chunk_words, "chunk_overlap": kcfg.chunk_overlap},
        "index": {"type": index_kind, "params": params, "exact_index_max_chunks": kcfg.exact_index_max_chunks},
        "sources": {
            "docs_dir": str(docs_folder) if docs_folder is not None else None,
            "documents_from_files": len(file_docs),
            "promoted_answers": len(docs) - len(file_docs),
            "skipped": loaded.skipped if loaded else [],
        },
        "previous_artifact_dir": str(previous_artifact_dir) if previous_artifact_dir else None,
        "previous_inputs_hash": previous.inputs_hash,
        "inputs_hash": inputs_hash(chunks, embedder.model_name, kcfg, index_kind, params),
        "counts": counts,
        "timings": timings,
    }
    source_of = {d.doc_id: d.source for d in docs}
    timings["build_s"] = time.perf_counter() - started  # everything but writing the files
    _write_artifact(Path(out_dir), index, _chunks_table(chunks, source_of), vectors, manifest)
    log.info("knowledge refresh: %s chunks (%s embedded, %s removed), %s index, %.1fs",
             counts["chunks"], n_embedded, counts["chunks_removed"], index_kind, time.perf_counter() - started)
    return manifest


def promoted_answers(con: duckdb.DuckDBPyConnection, min_rating: float) -> list[dict]:
    """Answers users rated highly enough to join the knowledge base.

    A turn qualifies when its average 1-5 rating is at least `min_rating` and nobody gave
    it a thumbs-down (a disputed answer is not knowledge). One answer per distinct question
    (normalized), the best rated and then the newest; sorted by turn_id.
    Returns dicts {turn_id, question, answer, rating, ts}.
    """
    rows = con.execute(
        """
        WITH t AS (
            SELECT turn_id, arg_max(prompt, ts) AS question, arg_max(response, ts) AS answer, max(ts) AS ts
            FROM turns GROUP BY turn_id
        ), f AS (
            SELECT turn_id, avg(rating) AS rating, count(*) FILTER (WHERE thumbs = -1) AS thumbs_down
            FROM feedback GROUP BY turn_id
        )
        SELECT t.turn_id, t.question, t.answer, f.rating, t.ts
        FROM t JOIN f USING (turn_id)
        WHERE f.rating >= ? AND f.thumbs_down = 0
        ORDER BY f.rating DESC, t.ts DESC, t.turn_id
        """,
        [min_rating],
    ).fetchall()
    best: dict[str, dict] = {}
    for turn_id, question, answer, rating, ts in rows:
        key = " ".join(question.lower().split())
        if key and answer.strip() and key not in best:
            best[key] = {"turn_id": turn_id, "question": question, "answer": answer, "rating": float(rating), "ts": ts}
    return sorted(best.values(), key=lambda a: a["turn_id"])


def recent_questions(con: duckdb.DuckDBPyConnection, days: int = 7, max_questions: int = 20_000) -> list[str]:
    """The user questions (last user message of each turn) of the last `days` days.

    Above `max_questions` turns, a deterministic pseudo-random sample of them (by a hash of
    the turn id): a coverage share over 20,000 questions is within about 0.3 points of the
    share over all of them, and embedding a week of a busy deployment's traffic would not be.
    """
    rows = con.execute(
        """
        SELECT arg_max(prompt, ts) AS question FROM turns
        WHERE ts >= now() - to_days(CAST(? AS INTEGER))
        GROUP BY turn_id HAVING trim(question) <> ''
        ORDER BY hash(turn_id) LIMIT ?
        """,
        [days, max_questions],
    ).fetchall()
    return [r[0] for r in rows]
