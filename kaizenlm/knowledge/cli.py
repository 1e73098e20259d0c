"""`kaizen knowledge refresh|search|coverage|recall`: the knowledge index by hand.

refresh and a fresh coverage report read DuckDB (promoted answers, last week's questions),
so they run when no controller holds the file; while the controller runs, `kaizen jobs run
weekly` has it refresh now, and `coverage` shows the report stored with the serving version.
search and recall only need the registry (through the controller when it runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "refresh the knowledge index (FAISS), search it, report coverage and recall@k"
EXAMPLE = 'kaizen knowledge refresh --docs ./kb && kaizen knowledge search "How long is the refund window?"'


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="knowledge_command", metavar="SUBCOMMAND", required=True)
    refresh = sub.add_parser("refresh", help="embed new/changed documents and promoted answers, register a version")
    refresh.add_argument("--docs", help="documents folder (default: knowledge.docs_dir or $KAIZEN_HOME/docs)")
    search = sub.add_parser("search", help="the chunks the gateway would put into the prompt")
    search.add_argument("question")
    search.add_argument("--k", type=int, default=None, help="chunks to return (default: knowledge.top_k)")
    search.add_argument("--min-score", type=float, default=None, help="least cosine similarity (default: knowledge.min_score)")
    cov = sub.add_parser("coverage", help="share of recent questions the knowledge covers; clusters of uncovered ones")
    cov.add_argument("--days", type=int, default=None, help="look-back in days (default: knowledge.coverage_days)")
    recall = sub.add_parser("recall", help="recall@k on labeled questions")
    recall.add_argument("--labeled", required=True, help="JSONL of {\"question\": ..., \"doc_id\": ...}")
    recall.add_argument("--k", type=int, default=5, help="documents retrieved per question (default: 5)")
    for sp in (refresh, search, cov, recall):
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, cfg) -> int:
    command = args.knowledge_command
    result = {"refresh": _refresh, "search": _search, "coverage": _coverage, "recall": _recall}[command](args, cfg)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        print(_TEXT[command](result))
    return 0 if result.get("ok", True) else 1


def _open_duckdb(cfg, what: str):
    from kaizenlm.ingest.admin_client import controller_is_up

    if controller_is_up(cfg):
        raise UsageError(
            f"the controller at {cfg.controller_url} owns {cfg.duckdb_path}, which {what} needs; run the "
            "weekly tier on it with `kaizen jobs run weekly` (it refreshes from knowledge.docs_dir), "
            "or stop the controller to run this by hand"
        )
    import duckdb

    from kaizenlm.ingest import store

    try:
        return store.connect(cfg.duckdb_path)
    except duckdb.IOException as e:
        raise UsageError(f"cannot open {cfg.duckdb_path}: {e}; another process holds it") from None


def _refresh(args, cfg) -> dict:
    from kaizenlm.knowledge.refresh import collect_inputs, docs_dir, run_refresh_job
    from kaizenlm.logs import setup_logging

    folder = Path(args.docs) if args.docs else docs_dir(cfg)
    if args.docs and not folder.is_dir():
        raise UsageError(f"--docs {folder} is not a folder; pass a folder of .md, .txt or .jsonl documents")
    log_path = setup_logging(cfg, "knowledge")
    con = _open_duckdb(cfg, "a knowledge refresh")
    try:
        inputs = collect_inputs(cfg, con, folder)
        if inputs.docs_dir is None and not inputs.promoted_answers:
            raise UsageError(f"no documents: {folder} does not exist and no answers are rated "
                             f">= {cfg.knowledge.promote_min_rating}; put .md/.txt/.jsonl files there or pass --docs DIR")
        print(f"refreshing knowledge from {inputs.docs_dir or '(no folder)'} + {len(inputs.promoted_answers)} "
              f"promoted answers (log: {log_path})", file=sys.stderr)
        result = run_refresh_job(cfg, con, inputs, on_progress=_print_progress)
    finally:
        con.close()
    return {"ok": result["version"] is not None, **result}


def _print_progress(progress) -> None:
    print(f"  {progress.message}", file=sys.stderr)


def _serving_retriever(cfg):
    from kaizenlm.knowledge.refresh import serving_knowledge_dir
    from kaizenlm.knowledge.retrieval import Retriever
    from kaizenlm.registry.client import RegistryClient
    from kaizenlm.registry.errors import RegistryError

    try:
        artifact_dir = serving_knowledge_dir(RegistryClient(cfg))
    except RegistryError as e:
        raise UsageError(str(e)) from None
    if artifact_dir is None:
        raise UsageError("no knowledge version yet; run `kaizen knowledge refresh` first")
    return Retriever(artifact_dir)


def _search(args, cfg) -> dict:
    k = args.k if args.k is not None else cfg.knowledge.top_k
    min_score = args.min_score if args.min_score is not None else cfg.knowledge.min_score
    if k < 1:
        raise UsageError("--k must be >= 1")
    retriever = _serving_retriever(cfg)
    hits = retriever.search(args.question, k=k, min_score=min_score)
    return {"question": args.question, "k": k, "min_score": min_score, "artifact_dir": str(retriever.artifact_dir),
            "hits": [h.__dict__ for h in hits]}


def _coverage(args, cfg) -> dict:
    from kaizenlm.ingest.admin_client import controller_is_up
    from kaizenlm.knowledge.coverage import coverage
    from kaizenlm.knowledge.index import recent_questions
    from kaizenlm.knowledge.refresh import COVERAGE_FILE

    retriever = _serving_retriever(cfg)
    if controller_is_up(cfg):  # DuckDB is the controller's: show the report of the last refresh
        stored = retriever.artifact_dir / COVERAGE_FILE
        report = json.loads(stored.read_text(encoding="utf-8")) if stored.is_file() else {}
        return {**report, "source": f"{stored} (computed at the last refresh; the controller holds DuckDB)"}
    days = args.days if args.days is not None else cfg.knowledge.coverage_days
    if days < 1:
        raise UsageError("--days must be >= 1")
    con = _open_duckdb(cfg, "a coverage report")
    try:
        questions = recent_questions(con, days)
    finally:
        con.close()
    return {**coverage(retriever, questions, cfg.knowledge.coverage_threshold), "days": days,
            "source": f"questions of the last {days} days in {cfg.duckdb_path}"}


def _labeled_questions(path: str) -> list[tuple[str, str]]:
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read --labeled {path}: {e.strerror}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["question"]), str(row["doc_id"])))
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path}:{lineno}: expected {{\"question\": ..., \"doc_id\": ...}}") from None
    return pairs


def _recall(args, cfg) -> dict:
    from kaizenlm.knowledge.coverage import recall_at_k

    if args.k < 1:
        raise UsageError("--k must be >= 1")
    labeled = _labeled_questions(args.labeled)
    retriever = _serving_retriever(cfg)
    return {"k": args.k, "n": len(labeled), f"recall_at_{args.k}": recall_at_k(retriever, labeled, args.k),
            "labeled": args.labeled, "artifact_dir": str(retriever.artifact_dir)}


def _text_refresh(r: dict) -> str:
    if r["version"] is None:
        return f"knowledge refresh failed: {r['job']['error']}"
    m = r["metrics"]
    coverage = "n/a (no questions)" if m.get("coverage") is None else f"{m['coverage']:.1%} of {m['coverage_questions']}"
    alias = "the gateways now retrieve from it" if r["alias_moved"] else "alias 'knowledge' NOT moved (empty index)"
    return (f"registered {r['version']['version_id']}: {m['documents']} documents, {m['chunks']} chunks "
            f"({m['chunks_embedded']} embedded now; documents +{m['documents_new']} ~{m['documents_changed']} "
            f"-{m['documents_removed']}), {m['index_type']} index, coverage {coverage}; {alias}")


def _text_search(r: dict) -> str:
    if not r["hits"]:
        return f"no chunk scores >= {r['min_score']}; lower --min-score or add a document that answers it"
    return "\n".join(f"{h['score']:.3f}  {h['chunk_id']}  {h['text'][:160]}" for h in r["hits"])


def _text_coverage(r: dict) -> str:
    if not r.get("n"):
        return f"no questions to measure ({r.get('source', '')})"
    lines = [f"covered: {r['share_covered']:.1%} of {r['n']} questions (best match >= {r['threshold']}) — {r['source']}"]
    for c in r["uncovered_clusters"]:
        lines.append(f"  {c['size']:>5}  e.g. {' | '.join(c['examples'][:3])}  (nearest: {c['nearest_doc_id']})")
    return "\n".join(lines)


def _text_recall(r: dict) -> str:
    value = r[f"recall_at_{r['k']}"]
    return f"recall@{r['k']}: {'n/a' if value is None else f'{value:.1%}'} over {r['n']} questions ({r['labeled']})"


_TEXT = {"refresh": _text_refresh, "search": _text_search, "coverage": _text_coverage, "recall": _text_recall}


KNOWLEDGE = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
