"""Knowledge benchmark: full against incremental refresh, and search latency.

For each size (chunks) a synthetic knowledge base of Markdown documents is built from a
seeded generator (3 chunks per document at the default chunking, every chunk distinct, so
the content-hash cache cannot cheat). Measured, with the real all-MiniLM-L6-v2 embedder
(loaded once before timing; loading is a constant of every process, ~10 s here):

- full: refresh_knowledge with no previous version (everything embedded, index built);
- incremental: the same documents with 1% of them rewritten entirely (every chunk of a
  changed document is new), refreshed against the full build's artifact. The goal is
  incremental / full <= 5%;
- at the largest size: search latency per question, one question at a time as the
  gateway asks: the index search (`search_p99_ms`, the figure that grows with the number
  of chunks and the one the goal of <= 5 ms at 100k is about), and the whole question
  path, embedding the question first (`query_p99_ms`, with one torch intra-op thread, the
  recommended serving setting; with torch's default threads as well: the embedding is the
  same cost at any corpus size), plus exact search on the same vectors for comparison and
  the HNSW index's recall@10 against exact search.

Prints one JSON line (also written to <workdir>/knowledge.json); a log and the artifacts go
to --workdir. Embedding 100k chunks takes tens of minutes on 2 shared CPU cores: run it
with `nice -n 10`, and use --sizes 10000 for a quick look.

Usage: nice -n 10 python benchmarks/knowledge.py [--sizes 10000,100000] [--queries 500]
       [--changed 0.01] [--workdir benchmarks/out/knowledge] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kaizenlm.config import KnowledgeConfig  # noqa: E402
from kaizenlm.knowledge.embed import load_embedder  # noqa: E402
from kaizenlm.knowledge.index import EMBEDDINGS_FILE, INDEX_HNSW, refresh_knowledge  # noqa: E402
from kaizenlm.knowledge.retrieval import Retriever  # noqa: E402

log = logging.getLogger("benchmarks.knowledge")

WORDS = """account address after again answer app backup bank billing box browser cancel card change charge
check city code company contact copy cost country customer data date day delete delivery device discount
document domain download email error export fee file folder free help home hour invoice key label language
limit link list login mail member message minute money month name network number offer order owner page
password payment phone plan policy price print product profile question receipt refund region report request
reset return router rule screen search security seat server service session setting share shipping size
software space speed storage store subscription support system team time token trial update upgrade user
value version wallet warranty web week window workspace year allows always before between can cannot choose
click each every first from have how into keeps last later more must never new next only open other our
please same send should since then there this through under until when where which while with within your
""".split()  # noqa: SIM905 - a block of words reads better than a list literal
CHUNKS_PER_DOC = 3  # 100 words at 40-word chunks overlapping by 10


def doc_text(rng: random.Random, n_words: int) -> str:
    sentences, words = [], 0
    while words < n_words:
        length = min(rng.randint(8, 16), n_words - words)
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        words += length
    return " ".join(sentences)


def write_corpus(folder: Path, n_docs: int, seed: int, words_per_doc: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc-{i:06d}.md").write_text(f"# Topic {i}\n\n{doc_text(rng, words_per_doc)}\n", encoding="utf-8")


def rewrite_documents(folder: Path, n_docs: int, fraction: float, seed: int, words_per_doc: int) -> int:
    """Rewrite a seeded `fraction` of the documents entirely; returns how many."""
    rng = random.Random(seed + 1)
    chosen = rng.sample(range(n_docs), max(1, round(n_docs * fraction)))
    for i in chosen:
        (folder / f"doc-{i:06d}.md").write_text(f"# Topic {i}\n\n{doc_text(rng, words_per_doc)}\n", encoding="utf-8")
    return len(chosen)


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(ms.mean()), 3)}


def bench_size(n_chunks: int, kcfg: KnowledgeConfig, changed: float, workdir: Path, seed: int, embedder) -> dict:
    n_docs = -(-n_chunks // CHUNKS_PER_DOC)  # at least n_chunks chunks
    words_per_doc = kcfg.chunk_words + (CHUNKS_PER_DOC - 1) * (kcfg.chunk_words - kcfg.chunk_overlap)
    base = workdir / f"n{n_chunks}"
    shutil.rmtree(base, ignore_errors=True)
    docs = base / "docs"
    write_corpus(docs, n_docs, seed, words_per_doc)
    log.info("size %d: %d documents written; full build", n_chunks, n_docs)

    started = time.perf_counter()
    full = refresh_knowledge(kcfg, docs, [], None, base / "full", embedder=embedder, progress=True)
    full_s = time.perf_counter() - started
    n_changed = rewrite_documents(docs, n_docs, changed, seed, words_per_doc)
    log.info("size %d: full build %.1fs; %d documents rewritten; incremental build", n_chunks, full_s, n_changed)

    started = time.perf_counter()
    inc = refresh_knowledge(kcfg, docs, [], base / "full", base / "incremental", embedder=embedder, progress=True)
    inc_s = time.perf_counter() - started
    log.info("size %d: incremental build %.1fs (%s)", n_chunks, inc_s, inc["counts"])
    return {
        "chunks": full["counts"]["chunks"], "documents": n_docs, "documents_changed": n_changed,
        "index_type": full["index"]["type"],
        "full_s": round(full_s, 2), "full_embed_s": round(full["timings"]["embed_s"], 2),
        "full_index_s": round(full["timings"]["index_s"], 2),
        "incremental_s": round(inc_s, 2), "incremental_embed_s": round(inc["timings"]["embed_s"], 2),
        "incremental_index_s": round(inc["timings"]["index_s"], 2),
        "incremental_embedded": inc["counts"]["chunks_embedded"],
        "incremental_cost_ratio": round(inc_s / full_s, 4),
        "embed_texts_per_s": round(full["counts"]["chunks_embedded"] / full["timings"]["embed_s"], 1),
        "artifact": str(base / "incremental"),
    }


def questions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 2)
    starts = ["How do I", "Can I", "Why does my", "What is the", "Where can I find the", "Is there a"]
    return [f"{rng.choice(starts)} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))}?" for _ in range(n)]


def time_searches(retriever: Retriever, qs: list[str], kcfg: KnowledgeConfig) -> list[float]:
    for q in qs[:20]:  # warm-up: first calls allocate buffers
        retriever.search(q, kcfg.top_k, kcfg.min_score)
    seconds = []
    for q in qs:
        t = time.perf_counter()
        retriever.search(q, kcfg.top_k, kcfg.min_score)
        seconds.append(time.perf_counter() - t)
    return seconds


def bench_search(artifact: Path, kcfg: KnowledgeConfig, n_queries: int, seed: int, embedder) -> dict:
    """Latency of one question at a time: the whole path with torch's default threads and
    with one intra-op thread (the recommended serving setting), then the index alone."""
    import torch

    retriever = Retriever(artifact, embedder)
    qs = questions(n_queries, seed)
    default_threads = torch.get_num_threads()
    full_default = time_searches(retriever, qs, kcfg)
    torch.set_num_threads(1)
    full_one_thread = time_searches(retriever, qs, kcfg)
    torch.set_num_threads(default_threads)
    queries = embedder.encode(qs)
    index_only = []
    for i in range(len(queries)):
        t = time.perf_counter()
        retriever.search_vectors(queries[i:i + 1], kcfg.top_k, kcfg.min_score)
        index_only.append(time.perf_counter() - t)
    exact = faiss.IndexFlatIP(queries.shape[1])
    exact.add(np.load(artifact / EMBEDDINGS_FILE))
    exact_times = []
    for i in range(len(queries)):
        t = time.perf_counter()
        exact.search(queries[i:i + 1], kcfg.top_k)
        exact_times.append(time.perf_counter() - t)
    _, truth = exact.search(queries, 10)
    _, approx = retriever.index.search(queries, 10, params=retriever.search_params)
    recall10 = float(np.mean([len(set(t) & set(a)) / 10 for t, a in zip(truth, approx, strict=True)]))
    sweep = ef_sweep(retriever, queries, truth, kcfg.top_k) if retriever.manifest["index"]["type"] == INDEX_HNSW else []
    return {"chunks": retriever.size, "index_type": retriever.manifest["index"]["type"], "queries": len(qs),
            "search_ms_1_thread": percentiles(full_one_thread),
            "search_ms_default_threads": percentiles(full_default), "torch_default_threads": default_threads,
            "index_search_ms": percentiles(index_only), "exact_search_ms": percentiles(exact_times),
            "recall_at_10_vs_exact": round(recall10, 4), "hnsw_ef_search_sweep": sweep}


def ef_sweep(retriever: Retriever, queries: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    """Recall@10 against exact search and index latency for several efSearch values."""
    rows = []
    for ef in (32, 64, 128, 256, 512):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        seconds = []
        for i in range(len(queries)):
            t = time.perf_counter()
            retriever.index.search(queries[i:i + 1], k, params=params)
            seconds.append(time.perf_counter() - t)
        _, approx = retriever.index.search(queries, 10, params=params)
        recall = float(np.mean([len(set(t) & set(a)) / 10 for t, a in zip(truth, approx, strict=True)]))
        top1 = float(np.mean(truth[:, 0] == approx[:, 0]))
        rows.append({"ef_search": ef, "recall_at_10": round(recall, 4), "top1_agrees": round(top1, 4),
                     "index_search_ms": percentiles(seconds)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma-separated")
    parser.add_argument("--queries", type=int, default=500, help="search questions timed at the largest size")
    parser.add_argument("--changed", type=float, default=0.01, help="share of documents rewritten (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="benchmarks/out/knowledge")
    parser.add_argument("--exact-index-max-chunks", type=int, default=None,
                        help="override knowledge.exact_index_max_chunks (e.g. to try HNSW on a small size)")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts (several hundred MB at 100k)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(workdir / "knowledge.log"), logging.StreamHandler(sys.stderr)])
    kcfg = KnowledgeConfig()
    if args.exact_index_max_chunks is not None:
        kcfg = KnowledgeConfig(exact_index_max_chunks=args.exact_index_max_chunks)
    embedder = load_embedder()
    per_size = {}
    for n in sizes:
        per_size[str(n)] = bench_size(n, kcfg, args.changed, workdir, args.seed, embedder)
    largest = per_size[str(sizes[-1])]
    search = bench_search(Path(largest["artifact"]), kcfg, args.queries, args.seed, embedder)
    result = {
        "benchmark": "knowledge",
        "incremental_cost_ratio": largest["incremental_cost_ratio"],
        "search_p99_ms": search["index_search_ms"]["p99"],
        "query_p99_ms": search["search_ms_1_thread"]["p99"],
        "query_p99_ms_default_threads": search["search_ms_default_threads"]["p99"],
        "at_chunks": largest["chunks"],
        "changed_fraction": args.changed,
        "sizes": per_size,
        "search": search,
        "config": {"chunk_words": kcfg.chunk_words, "chunk_overlap": kcfg.chunk_overlap, "top_k": kcfg.top_k,
                   "exact_index_max_chunks": kcfg.exact_index_max_chunks, "hnsw_m": kcfg.hnsw_m,
                   "hnsw_ef_search": kcfg.hnsw_ef_search},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "torch_threads": __import__("torch").get_num_threads()},
    }
    if not args.keep:
        for n in sizes:
            shutil.rmtree(workdir / f"n{n}", ignore_errors=True)
    line = json.dumps(result, sort_keys=True)
    (workdir / "knowledge.json").write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
