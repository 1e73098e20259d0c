"""The weekly knowledge refresh as a job: collect inputs, build in a child process,
register a `knowledge` version, point the `knowledge` alias at it.

Parent side (the controller's scheduler, or `kaizen knowledge refresh` when no controller
runs), with the DuckDB connection it owns:

    result = refresh(cfg, con)                       # collect_inputs + run_refresh_job
    # or, step by step:
    inputs = collect_inputs(cfg, con)                # promoted answers, last week's questions
    result = run_refresh_job(cfg, con, inputs)       # child builds; parent registers + moves alias

Child side: `python -m kaizenlm.knowledge.refresh --inputs FILE` (started by
kaizenlm.jobs.runner) builds the artifact into its job output directory, computes the
coverage of last week's questions (coverage.json in the artifact) and reports metrics.
The child never opens DuckDB: everything it needs is in the inputs file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from kaizenlm.config import Config, KnowledgeConfig
from kaizenlm.jobs import runner
from kaizenlm.registry import service
from kaizenlm.registry.aliases import KNOWLEDGE as KNOWLEDGE_ALIAS  # the index the gateways retrieve from
from kaizenlm.registry.client import RegistryClient
from kaizenlm.registry.errors import Conflict

log = logging.getLogger(__name__)

JOB_NAME = "knowledge-refresh"
COVERAGE_FILE = "coverage.json"
INPUTS_FILE = "knowledge-inputs.json"


@dataclass
class RefreshInputs:
    """Everything the child needs; written as JSON next to the job's output."""

    knowledge: dict  # KnowledgeConfig as a dict
    docs_dir: str | None
    promoted_answers: list[dict] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    previous_version: str | None = None
    previous_artifact_dir: str | None = None


def docs_dir(cfg: Config) -> Path:
    """knowledge.docs_dir, or $KAIZEN_HOME/docs when it is empty."""
    return Path(cfg.knowledge.docs_dir).expanduser() if cfg.knowledge.docs_dir else cfg.home / "docs"


def latest_knowledge_version(registry: duckdb.DuckDBPyConnection | RegistryClient) -> dict | None:
    """The newest registered knowledge version (the embedding cache of the next refresh)."""
    versions = (registry.list_versions(kind="knowledge") if isinstance(registry, RegistryClient)
                else service.list_versions(registry, kind="knowledge"))
    return versions[-1] if versions else None


def serving_knowledge_dir(registry: duckdb.DuckDBPyConnection | RegistryClient) -> Path | None:
    """Artifact directory of the version the `knowledge` alias points at (else the newest one)."""
    aliases = (registry.list_aliases() if isinstance(registry, RegistryClient)
               else service.list_aliases(registry)["aliases"])
    if KNOWLEDGE_ALIAS in aliases:
        version_id = aliases[KNOWLEDGE_ALIAS]
        version = registry.show(version_id) if isinstance(registry, RegistryClient) else service.show(registry, version_id)
        return Path(version["artifact_dir"])
    latest = latest_knowledge_version(registry)
    return Path(latest["artifact_dir"]) if latest else None


def collect_inputs(cfg: Config, con: duckdb.DuckDBPyConnection, docs_folder: str | Path | None = None) -> RefreshInputs:
    """Promoted answers and recent questions from DuckDB, the previous version from the registry."""
    from kaizenlm.knowledge.index import promoted_answers, recent_questions

    folder = Path(docs_folder) if docs_folder is not None else docs_dir(cfg)
    previous = latest_knowledge_version(con)
    answers = promoted_answers(con, cfg.knowledge.promote_min_rating)
    return RefreshInputs(
        knowledge=dataclasses.asdict(cfg.knowledge),
        docs_dir=str(folder) if folder.is_dir() else None,
        promoted_answers=[{**a, "ts": str(a["ts"])} for a in answers],
        questions=recent_questions(con, cfg.knowledge.coverage_days),
        previous_version=previous["version_id"] if previous else None,
        previous_artifact_dir=previous["artifact_dir"] if previous else None,
    )


def run_refresh_job(cfg: Config, registry: duckdb.DuckDBPyConnection | RegistryClient, inputs: RefreshInputs,
                    on_progress: Callable[[runner.Progress], None] | None = None,
                    timeout_s: float | None = None) -> dict:
    """Build in a child process, register the version, move the `knowledge` alias.

    The alias moves only when the new index has chunks (an empty docs folder by mistake
    must not wipe what the gateways serve). Returns {job, version, alias_moved, metrics}.
    """
    tmp = runner.jobs_tmp(cfg.home)
    tmp.mkdir(parents=True, exist_ok=True)
    inputs_path = tmp.parent / f"{INPUTS_FILE}.{runner.new_job_id(JOB_NAME)}"
    inputs_path.write_text(json.dumps(dataclasses.asdict(inputs), default=str), encoding="utf-8")
    try:
        spec = runner.JobSpec(JOB_NAME, "kaizenlm.knowledge.refresh", ["--inputs", str(inputs_path)])
        new = runner.NewVersion("knowledge", parent_id=inputs.previous_version, config=inputs.knowledge,
                              note=f"knowledge refresh from {inputs.docs_dir or 'no documents folder'}")
        result = runner.run_job_atomically(spec, cfg.home, registry, new, on_progress, timeout_s)
    finally:
        inputs_path.unlink(missing_ok=True)
    if not result.ok:
        return {"job": result.to_dict(), "version": None, "alias_moved": False, "metrics": {}}
    version, metrics = result.version, result.result.get("metrics", {})
    alias_moved = metrics.get("chunks", 0) > 0 and _move_alias(registry, version["version_id"])
    return {"job": result.to_dict(), "version": version, "alias_moved": bool(alias_moved), "metrics": metrics}


def _move_alias(registry: duckdb.DuckDBPyConnection | RegistryClient, version_id: str) -> bool:
    reason = "weekly knowledge refresh"
    try:
        if isinstance(registry, RegistryClient):
            registry.set_alias(KNOWLEDGE_ALIAS, version_id, reason=reason, actor="knowledge-refresh")
        else:
            service.set_alias(registry, KNOWLEDGE_ALIAS, version_id, reason=reason, actor="knowledge-refresh")
    except Conflict as e:  # e.g. already there; the version stays registered
        log.warning("did not move alias %s to %s: %s", KNOWLEDGE_ALIAS, version_id, e)
        return False
    return True


def refresh(cfg: Config, con: duckdb.DuckDBPyConnection, docs_folder: str | Path | None = None,
            on_progress: Callable[[runner.Progress], None] | None = None) -> dict:
    """collect_inputs + run_refresh_job on the caller's DuckDB connection."""
    return run_refresh_job(cfg, con, collect_inputs(cfg, con, docs_folder), on_progress)


# ---------------------------------------------------------------- child side


def build(inputs: RefreshInputs, out_dir: Path, progress: bool = False) -> dict:
    """Build the artifact and its coverage report into `out_dir`; returns the metrics."""
    from kaizenlm.knowledge.coverage import coverage
    from kaizenlm.knowledge.index import refresh_knowledge
    from kaizenlm.knowledge.retrieval import Retriever

    kcfg = KnowledgeConfig(**inputs.knowledge)
    runner.report_progress(0.05, "embedding new and changed chunks")

    def on_step(done: int, total: int) -> None:
        runner.report_progress(0.05 + 0.8 * done / total, f"embedded {done}/{total} new or changed chunks")

    manifest = refresh_knowledge(kcfg, inputs.docs_dir, inputs.promoted_answers, inputs.previous_artifact_dir,
                                 out_dir, progress=progress, on_step=on_step)
    runner.report_progress(0.9, "coverage of recent questions")
    report = coverage(Retriever(out_dir), inputs.questions, kcfg.coverage_threshold)
    (out_dir / COVERAGE_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    counts = manifest["counts"]
    return {
        "chunks": counts["chunks"], "documents": counts["documents"], "chunks_embedded": counts["chunks_embedded"],
        "documents_new": counts["documents_new"], "documents_changed": counts["documents_changed"],
        "documents_removed": counts["documents_removed"], "index_type": manifest["index"]["type"],
        "coverage": report["share_covered"], "coverage_questions": report["n"],
        "build_seconds": round(manifest["timings"]["build_s"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="knowledge refresh job (started by kaizenlm.jobs.runner)")
    parser.add_argument("--inputs", required=True, help="RefreshInputs as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs = RefreshInputs(**json.loads(Path(args.inputs).read_text(encoding="utf-8")))
    metrics = build(inputs, runner.job_paths().output_dir, progress=True)
    runner.report_result(metrics=metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run_weekly(ctx) -> dict:
    """The scheduler's weekly tier: new and changed documents plus highly rated answers -> a new
    FAISS knowledge version (ctx: kaizenlm.jobs.scheduler.JobContext)."""
    out = refresh(ctx.cfg, ctx.db, on_progress=lambda p: ctx.progress(p.fraction, p.message))
    job = out["job"]
    ctx.log.info("knowledge job %s: %s (its log: %s)", job["job_id"], job["status"], job["log_path"])
    if job["status"] != "succeeded":
        raise RuntimeError(job.get("error") or f"knowledge refresh job {job['status']}")
    version = out.get("version") or {}
    return {"version_id": version.get("version_id"), "alias_moved": out["alias_moved"], "metrics": out["metrics"],
            "job_log": job["log_path"]}
