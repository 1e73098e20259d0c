"""The monthly retrain's child process: LoRA SFT -> DPO -> evaluation, into the job's output.

Started by `kaizenlm.retrain.pipeline` through `kaizenlm.jobs.runner`:

    python -m kaizenlm.retrain.retrain_job --inputs FILE

The inputs file names the base model directory, the snapshot directory and the champion
(its metrics, or its model spec when it was never evaluated). The child never opens
DuckDB. It writes the adapter (adapter_config.json + weights + tokenizer) at the root of
its output directory, the SFT and DPO run directories (TensorBoard logs, metrics) under
runs/, and evaluation.json; it reports the candidate's and the champion's metrics.
Checkpoints live in the job's checkpoint directory, so a rerun after a crash resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kaizenlm.jobs import runner

log = logging.getLogger(__name__)


@dataclass
class RetrainInputs:
    base_dir: str
    snapshot_dir: str
    suite_path: str
    """The evaluation suite (kaizenlm.eval.suite): the candidate and the champion are scored on it."""
    general_heldout_path: str = ""
    """The base's own answers to held-out general prompts (kaizenlm.base.general): general_agreement."""
    champion_metrics: dict | None = None
    champion_base: str | None = None
    champion_adapter: str | None = None
    sft: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    retrain: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    seed: int = 0


def _rows(snapshot_dir: Path, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    path = snapshot_dir / f"{name}.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def _sft_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "response": r["response"]} for r in rows]


def _dpo_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def train_and_evaluate(inputs: RetrainInputs, out_dir: Path, work_dir: Path) -> dict:
    """SFT, then DPO on top when there are pairs, then evaluation against the champion."""
    from kaizenlm.base.general import read_jsonl
    from kaizenlm.config import EvalConfig, LoraDPOConfig, LoraSFTConfig, RetrainConfig
    from kaizenlm.eval.evaluate import evaluate
    from kaizenlm.eval.suite import load_suite
    from kaizenlm.retrain import lora_dpo, lora_sft

    snap = Path(inputs.snapshot_dir)
    sft_train, sft_eval = _sft_rows(_rows(snap, "sft_train")), _sft_rows(_rows(snap, "sft_eval"))
    dpo_train, dpo_eval = _dpo_rows(_rows(snap, "dpo_train")), _dpo_rows(_rows(snap, "dpo_eval"))
    if not sft_train:
        raise ValueError(f"snapshot {snap.name} has no SFT rows; collect more feedback before retraining")
    suite = load_suite(inputs.suite_path)
    run = RetrainConfig(**inputs.retrain)
    sft_cfg, dpo_cfg = LoraSFTConfig(**inputs.sft), LoraDPOConfig(**inputs.dpo)
    # The rows are chosen with the config the run uses (the embedded overrides set the anchor's pool).
    sft_resolved = lora_sft.resolve_config(sft_cfg, inputs.base_dir)
    anchored = sft_resolved.anchor_weight > 0 or lora_dpo.resolve_config(dpo_cfg, inputs.base_dir).anchor_weight > 0
    anchor_rows = _anchor_rows(snap, inputs.seed, sft_train, sft_resolved, suite.prompts()) if anchored else []
    runner.report_progress(0.05, f"SFT on {len(sft_train)} rows ({len(anchor_rows)} anchor rows)")
    sft = lora_sft.train_sft(inputs.base_dir, sft_train, work_dir / "sft", sft_cfg, run,
                             eval_rows=sft_eval or None, anchor_rows=anchor_rows)
    adapter = Path(sft["adapter_dir"])
    dpo = None
    if dpo_train:
        runner.report_progress(0.5, f"DPO on {len(dpo_train)} pairs")
        dpo = lora_dpo.train_dpo(inputs.base_dir, adapter, dpo_train, work_dir / "dpo", dpo_cfg, run,
                                 eval_pairs=dpo_eval or None, anchor_rows=anchor_rows)
        adapter = Path(dpo["adapter_dir"])
    shutil.copytree(adapter, out_dir, dirs_exist_ok=True)
    for name in ("sft", "dpo"):  # keep the run logs (TensorBoard, metrics) with the artifact
        if (work_dir / name).is_dir():
            shutil.copytree(work_dir / name, out_dir / "runs" / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoint-*", "adapter"))
    runner.report_progress(0.8, "evaluating candidate and champion")
    ecfg = EvalConfig(**inputs.eval)
    base_answers = read_jsonl(inputs.general_heldout_path, missing_ok=True)
    champion_spec = _spec(inputs.champion_base, inputs.champion_adapter)
    champion = inputs.champion_metrics
    if champion is None:
        champion = evaluate(champion_spec, suite, ecfg, base_answers=base_answers)
    # Stored metrics carry no answers (the registry keeps them small): the pairwise comparison
    # then asks the champion model its sample of questions again.
    compare_with = champion if "answers" in champion else champion_spec
    candidate = evaluate((inputs.base_dir, str(out_dir)), suite, ecfg, champion=compare_with,
                         base_answers=base_answers)
    summary = {"sft": _train_summary(sft), "dpo": _train_summary(dpo) if dpo else None}
    (out_dir / "evaluation.json").write_text(json.dumps({"candidate": candidate, "champion": champion,
                                                         "training": summary}, indent=2, default=str))
    return {"candidate": candidate, "champion": champion, "training": summary}


def _anchor_rows(snap: Path, seed: int, sft_train: list[dict], sft_cfg, eval_prompts: list[str]) -> list[dict]:
    """The KL anchor's general prompts, from the replay source the snapshot's replay rows came from."""
    from kaizenlm.retrain import anchor

    source = anchor.snapshot_source(snap)
    if not source:
        log.warning("no KL anchor rows: snapshot %s has no replay source (set curation.replay_path)", snap.name)
        return []
    try:
        return anchor.rows_for(source, seed, sft_train, sft_cfg, eval_prompts)
    except ValueError as e:  # a replay file that is gone from this machine: train without the anchor
        log.warning("no KL anchor rows from %s: %s", source, e)
        return []


def _spec(base: str | None, adapter: str | None):
    return (base, adapter) if adapter else base


def _train_summary(metrics: dict) -> dict:
    keep = ("train_loss", "eval_loss", "loss_gap", "grad_norm_mean", "warnings", "steps", "train_seconds",
            "pref_margin_before", "pref_margin_after", "resumed_from")
    return {k: metrics[k] for k in keep if k in metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="monthly retrain job (started by kaizenlm.retrain.pipeline)")
    parser.add_argument("--inputs", required=True, help="RetrainInputs as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs = RetrainInputs(**json.loads(Path(args.inputs).read_text(encoding="utf-8")))
    paths = runner.job_paths()
    # Training runs (with their checkpoints) live in the checkpoint directory, so a rerun resumes.
    work_dir = paths.checkpoint_dir or (paths.output_dir.parent / f"{paths.job_id}-work")
    result = train_and_evaluate(inputs, paths.output_dir, Path(work_dir))
    runner.report_result(metrics=_flat_metrics(result), evaluation=result)
    return 0


def _flat_metrics(result: dict) -> dict:
    """What the registry stores as the version's metrics (answers stay in evaluation.json)."""
    cand = {k: v for k, v in result["candidate"].items() if k != "answers"}
    return {**cand, "training": result["training"]}


def inputs_as_json(inputs: RetrainInputs) -> str:
    return json.dumps(dataclasses.asdict(inputs), default=str)


if __name__ == "__main__":
    sys.exit(main())
