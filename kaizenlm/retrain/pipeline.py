"""The monthly retrain pipeline: curate -> snapshot -> LoRA SFT -> DPO -> evaluate -> gate ->
register -> start an A/B test.

Parent side; it runs in the controller (the scheduler's monthly tier calls `run_monthly`)
or in `kaizen retrain` when no controller runs, always on the DuckDB connection that
process owns. Training and evaluation run in a child process (`retrain_job`), whose output
is registered only after it exits cleanly: a crash or kill leaves the registry unchanged
and the champion serving, and a rerun resumes from the job's last checkpoint.

Every new adapter is trained from the base with the snapshot's data (the snapshot's window
covers the accumulated feedback, and the replay rows guard the general skills); its
lineage parent is the champion it was meant to replace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import duckdb

from kaizenlm.base.champion import ensure_base_in_child, register_first_champion
from kaizenlm.base.general import configured_answers_paths, ensure_answers_in_child, read_jsonl
from kaizenlm.config import Config
from kaizenlm.eval.suite import Suite
from kaizenlm.eval.traffic_suite import suite_for
from kaizenlm.jobs import runner
from kaizenlm.registry import aliases as alias_ops
from kaizenlm.registry import versions as version_ops
from kaizenlm.registry.client import RegistryClient
from kaizenlm.registry.lineage import model_dirs, version_lookup
from kaizenlm.retrain.retrain_job import RetrainInputs, inputs_as_json

log = logging.getLogger(__name__)
JOB_NAME = "retrain"
CHAMPION = "champion"


def ensure_champion(cfg: Config, con: duckdb.DuckDBPyConnection, log_fn: Callable[[str], None] = print) -> str:
    """The champion's version id; on a fresh install the configured base is registered as `base` +
    champion first (kaizenlm.base.champion; the embedded model is converted once, in a child)."""
    current = alias_ops.get_alias(con, CHAMPION)
    if current is not None:
        return current
    base_dir = ensure_base_in_child(cfg, log_fn)
    move = register_first_champion(RegistryClient(cfg, con=con), base_dir, actor="retrain")
    log_fn(f"registered {move['to_version']} from {base_dir} as {CHAMPION}")
    return move["to_version"]


def build_inputs(cfg: Config, con: duckdb.DuckDBPyConnection, champion: version_ops.Version,
                 snapshot_dir: Path, suite: Suite) -> RetrainInputs:
    base_dir, adapter_dir = model_dirs(champion.to_dict(), version_lookup(con))
    if base_dir is None:
        raise ValueError(f"champion {champion.version_id}: no base model with a config.json in its lineage")
    if champion.kind == "adapter" and adapter_dir is None:
        raise ValueError(f"champion {champion.version_id}: no adapter_config.json under {champion.artifact_dir}")
    from kaizenlm.eval.evaluate import evaluation_key, reusable

    heldout = configured_answers_paths(cfg, base_dir)[1]
    # The champion's stored metrics count only when they were measured on these very suite rows,
    # settings and base answers (the job evaluates with the same ones).
    key = evaluation_key(suite, cfg.eval, read_jsonl(heldout, missing_ok=True))
    return RetrainInputs(
        base_dir=base_dir, snapshot_dir=str(snapshot_dir), suite_path=suite.source,
        general_heldout_path=str(heldout),
        champion_metrics=champion.metrics if reusable(champion.metrics, key) else None,
        champion_base=base_dir,
        champion_adapter=adapter_dir,
        sft=dataclasses.asdict(cfg.sft), dpo=dataclasses.asdict(cfg.dpo), retrain=dataclasses.asdict(cfg.retrain),
        eval=dataclasses.asdict(cfg.eval), seed=cfg.retrain.seed,
    )


def build_training_snapshot(cfg: Config, con: duckdb.DuckDBPyConnection, suite: Suite, base_dir: str,
                            log_fn: Callable[[str], None] = log.info):
    """Curate the configured window into a snapshot; every prompt the suite asks is held out.
    Replay rows: curation.replay_path, or by default the base's own answers to the shipped
    general prompts (computed once per base, in a child process)."""
    from kaizenlm.datasets.snapshots import build_snapshot, default_window, load_replay

    replay_path = cfg.curation.replay_path or str(ensure_answers_in_child(cfg, base_dir, log_fn)[0])
    replay_path = str(Path(replay_path).expanduser())
    from kaizenlm.annotate.training import reviewed_rows  # human review: used only while reviewers agree

    return build_snapshot(con, cfg, default_window(cfg.curation), holdout=suite.prompts(),
                          replay=load_replay(replay_path), replay_source=replay_path,
                          reviews=reviewed_rows(con, cfg))


def retrain_once(cfg: Config, con: duckdb.DuckDBPyConnection,
                 on_progress: Callable[[runner.Progress], None] | None = None,
                 start_ab: bool = True, log_fn: Callable[[str], None] = log.info) -> dict:
    """One full monthly cycle; returns what happened (the snapshot, the job, the gate, the experiment)."""
    from kaizenlm.eval.evaluate import gate

    suite = suite_for(cfg, con)  # before anything else: no suite, no gate, no retrain
    champion_id = ensure_champion(cfg, con, log_fn)
    champion = version_ops.get_version(con, champion_id)
    base_dir, _ = model_dirs(champion.to_dict(), version_lookup(con))
    if base_dir is None:
        raise ValueError(f"champion {champion_id}: no base model with a config.json in its lineage")
    snapshot = build_training_snapshot(cfg, con, suite, base_dir, log_fn)
    counts = snapshot.manifest["counts"]
    log_fn(f"snapshot {snapshot.snapshot_id}: {counts}")
    if counts.get("sft_train", 0) == 0:
        return {"status": "skipped", "reason": "the snapshot has no SFT rows; collect more feedback first",
                "snapshot": snapshot.snapshot_id}
    inputs = build_inputs(cfg, con, champion, snapshot.path, suite)
    config = {"sft": inputs.sft, "dpo": inputs.dpo, "base": inputs.base_dir, "champion": champion_id,
              "suite": suite.source, "suite_hash": suite.content_hash()}
    inputs_path = runner.jobs_tmp(cfg.home).parent / f"retrain-inputs-{snapshot.snapshot_id}.json"
    inputs_path.parent.mkdir(parents=True, exist_ok=True)
    inputs_path.write_text(inputs_as_json(inputs), encoding="utf-8")
    spec = runner.JobSpec(JOB_NAME, "kaizenlm.retrain.retrain_job", ["--inputs", str(inputs_path)],
                        checkpoint_key=runner.checkpoint_key(snapshot.content_hash, config))
    new = runner.NewVersion("adapter", parent_id=champion_id, config=config, snapshot_id=snapshot.snapshot_id,
                          snapshot_hash=snapshot.content_hash, status="candidate",
                          note=f"monthly retrain on {snapshot.snapshot_id}")
    try:
        result = runner.run_job_atomically(spec, cfg.home, con, new, on_progress)
    finally:
        inputs_path.unlink(missing_ok=True)
    if not result.ok:
        return {"status": "failed", "error": result.error, "log": result.log_path, "snapshot": snapshot.snapshot_id}
    evaluation = result.result.get("evaluation", {})
    champion_metrics = {k: v for k, v in evaluation.get("champion", {}).items() if k != "answers"}
    if inputs.champion_metrics is None and champion_metrics:
        version_ops.set_metrics(con, champion_id, champion_metrics)  # first evaluation of the champion
    candidate_id = result.version["version_id"]
    passed, reasons = gate(result.result.get("metrics", {}), champion_metrics, cfg.eval)
    summary = {"status": "trained", "snapshot": snapshot.snapshot_id, "candidate": candidate_id,
               "champion": champion_id, "gate_passed": passed, "gate_reasons": reasons,
               "candidate_metrics": _headline(result.result.get("metrics", {})),
               "champion_metrics": _headline(champion_metrics), "log": result.log_path}
    version_ops.set_metrics(con, candidate_id, {"gate": {"passed": passed, "reasons": reasons}})
    if not passed:
        version_ops.set_status(con, candidate_id, "rejected", note="; ".join(reasons))
        return summary
    # --- human review (kaizenlm.annotate): blind A/B comparisons of candidate and champion answers
    from kaizenlm.annotate.training import enqueue_blind_pairs

    summary["blind_pairs"] = enqueue_blind_pairs(con, cfg, candidate_id, champion_id, evaluation)
    # ---
    if start_ab:
        from kaizenlm.abtest.experiments import start_experiment

        experiment = start_experiment(con, cfg, candidate_id, alias=CHAMPION, actor="retrain")
        summary["experiment"] = experiment.experiment_id
    else:
        version_ops.set_status(con, candidate_id, "challenger")
    return summary


def _headline(metrics: dict) -> dict:
    keys = ("domain_score", "domain_token_f1", "general_score", "refusal_rate", "val_perplexity",
            "pairwise_win_rate")
    return {k: metrics[k] for k in keys if k in metrics}


def run_monthly(ctx) -> dict:
    """The scheduler's monthly tier (ctx: kaizenlm.jobs.scheduler.JobContext)."""

    def on_progress(p: runner.Progress) -> None:
        ctx.progress(p.fraction, p.message)

    summary = retrain_once(ctx.cfg, ctx.db, on_progress=on_progress, log_fn=ctx.log.info)
    ctx.log.info("monthly retrain: %s", json.dumps(summary, default=str))
    if summary["status"] == "failed":
        raise RuntimeError(f"retrain job failed: {summary.get('error')} (log: {summary.get('log')})")
    return summary
