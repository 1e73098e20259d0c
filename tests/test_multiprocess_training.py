"""LoRA SFT in 2 processes under `accelerate launch` (DDP over gloo, on CPU) with a tiny base:
the loss falls, rank 0 alone writes one adapter, one log and one TensorBoard stream, a rerun
resumes from the checkpoints; a rank that dies fails the run, and in a job, leaves the
registry unchanged, and the rerun of that job resumes and registers."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
from retrain_helpers import FAST_RUN, build_tiny_base, sft_cfg

from kaizenlm.demo.domain import build_domain
from kaizenlm.retrain import lora_sft
from kaizenlm.retrain.launch import TrainingProcessError

pytestmark = pytest.mark.integration  # 2 training processes per run (20-60 s each on 2 shared cores)

TWO = dataclasses.replace(FAST_RUN, processes=2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def rows():
    return [{"prompt": r["prompt"], "response": r["response"]} for r in build_domain(0).train_rows()[:48]]


def test_two_processes_train_one_adapter_and_a_rerun_resumes(base_dir, rows, tmp_path):
    run_dir = tmp_path / "sft"
    first = lora_sft.train_sft(base_dir, rows, run_dir, sft_cfg(epochs=2.0, evals_per_epoch=1), TWO)
    assert first["processes"] == 2 and first["hardware"]["processes"] == 2 and first["resumed_from"] is None
    # 43 training rows, 8 per process per step: 3 steps per epoch
    assert first["steps"] == 6
    losses = [loss for _, loss in first["train_loss_curve"]]
    assert losses[-1] < losses[0]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's only
    assert "sft: 43 train / 5 val rows" in (run_dir / "train.log").read_text()
    checkpoint = run_dir / "checkpoints" / "checkpoint-6"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 6

    second = lora_sft.train_sft(base_dir, rows, run_dir, sft_cfg(epochs=4.0, evals_per_epoch=1), TWO)
    assert second["resumed_from"].endswith("checkpoint-6") and second["steps"] == 12


def _rank_one_of(marker: str) -> int | None:
    """The pid of rank 1 of the launch whose command line holds `marker`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmdline and b"RANK=1" in environ and b"LOCAL_RANK=1" in environ:
            return int(proc.name)
    return None


def _kill_rank_one_after_a_checkpoint(marker: str, checkpoints: Path, done: threading.Event) -> list[int]:
    killed: list[int] = []

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not done.is_set():
            pid = _rank_one_of(marker)
            # After a complete checkpoint (its trainer_state.json is written last): the kill may
            # still land while a later one is half written, which the rerun must skip.
            if pid and list(checkpoints.glob("checkpoint-*/trainer_state.json")):
                os.kill(pid, 9)
                killed.append(pid)
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def test_a_dead_rank_fails_the_run_and_writes_no_adapter(base_dir, rows, tmp_path):
    run_dir = tmp_path / "crash"
    done = threading.Event()
    killed = _kill_rank_one_after_a_checkpoint(str(run_dir), run_dir / "checkpoints", done)
    with pytest.raises(TrainingProcessError, match=r"sft training in 2 processes failed"):
        lora_sft.train_sft(base_dir, rows, run_dir, sft_cfg(epochs=200.0, evals_per_epoch=1), TWO)
    done.set()
    assert killed, "rank 1 was never seen running"
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    assert _rank_one_of(str(run_dir)) is None and not Path(f"/proc/{killed[0]}").exists()


# A retrain-like job: SFT in 2 processes, the adapter into the job's output, checkpoints in the
# job's checkpoint directory (so a rerun of the same job resumes).
JOB = textwrap.dedent("""
    import dataclasses, json, shutil, sys
    from kaizenlm.config import LoraSFTConfig, RetrainConfig
    from kaizenlm.jobs.runner import job_paths, report_result
    from kaizenlm.retrain import lora_sft

    base, rows_file, epochs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    paths = job_paths()
    cfg = LoraSFTConfig(epochs=epochs, batch_size=8, learning_rate=1e-2, early_stopping_patience=0,
                        max_length=64, evals_per_epoch=1)
    metrics = lora_sft.train_sft(base, rows_file, paths.checkpoint_dir / "sft", cfg,
                                 RetrainConfig(processes=2, keep_checkpoints=5))
    shutil.copytree(paths.checkpoint_dir / "sft" / "adapter", paths.output_dir, dirs_exist_ok=True)
    report_result(metrics={"train_loss": metrics["train_loss"]}, resumed_from=metrics["resumed_from"])
""")


@pytest.mark.slow  # two jobs of two training processes each: 2-4 minutes on the shared 2-core machine
def test_a_dead_rank_fails_the_job_the_registry_stays_and_the_rerun_resumes(base_dir, rows, tmp_path):
    from kaizenlm.ingest.store import connect
    from kaizenlm.jobs import runner
    from kaizenlm.registry import versions as vs

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "two_process_job.py").write_text(JOB)
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    home = tmp_path / "home"
    con = connect(home / "kaizen.duckdb")
    key = runner.checkpoint_key("snap-hash", {"sft": "two processes"})
    spec = runner.JobSpec("retrain", "two_process_job", [str(base_dir), str(rows_file), "200"], checkpoint_key=key,
                          env={"PYTHONPATH": str(tmp_path / "mods")})
    new = runner.NewVersion("adapter", config={"sft": "two processes"}, snapshot_id="snap-1", snapshot_hash="snap-hash")
    checkpoints = runner.checkpoint_dir(home, "retrain", key) / "sft" / "checkpoints"
    done = threading.Event()
    killed = _kill_rank_one_after_a_checkpoint(str(checkpoints.parent), checkpoints, done)
    failed = runner.run_job_atomically(spec, home, con, new)
    done.set()
    assert killed and failed.status == "failed" and "TrainingProcessError" in Path(failed.log_path).read_text()
    assert vs.list_versions(con) == []  # the champion keeps serving
    assert list(checkpoints.glob("checkpoint-*"))  # kept for the rerun

    spec.args[-1] = "6"  # the rerun: a short run that starts from the killed run's last checkpoint
    rerun = runner.run_job_atomically(spec, home, con, new)
    assert rerun.ok, rerun.error
    assert rerun.result["resumed_from"] and "checkpoint-" in rerun.result["resumed_from"]
    (version,) = vs.list_versions(con)
    assert (Path(version.artifact_dir) / "adapter_model.safetensors").is_file()
    con.close()
