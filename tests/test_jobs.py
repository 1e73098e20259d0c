"""Job runner: real child processes that succeed, fail, hang and get SIGKILLed; the
registry changes only after a success; a rerun finds the checkpoints of the killed run."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import free_port

from kaizenlm import config as config_mod
from kaizenlm.ingest.store import connect
from kaizenlm.jobs import runner
from kaizenlm.registry import versions as vs
from kaizenlm.registry.client import RegistryClient

pytestmark = pytest.mark.integration  # jobs run as child processes

# A stand-in trainer: writes a partial artifact, a checkpoint, then (by mode) hangs,
# fails or finishes. It reports which checkpoint it resumed from.
FAKE_TRAINER = textwrap.dedent("""
    import sys, time
    from kaizenlm.jobs.runner import job_paths, report_progress, report_result

    mode = sys.argv[1]
    paths = job_paths()
    resumed = max(paths.checkpoint_dir.glob("checkpoint-*"), default=None)  # what a rerun resumes from
    print("loading model", flush=True)
    (paths.output_dir / "adapter.bin").write_bytes(b"partial")
    (paths.checkpoint_dir / "checkpoint-10").mkdir(exist_ok=True)
    report_progress(0.5, "epoch 1/2", step=10)
    if mode == "hang":
        time.sleep(60)
    if mode == "fail":
        print("CUDA out of memory", file=sys.stderr, flush=True)
        sys.exit(3)
    (paths.output_dir / "adapter.bin").write_bytes(b"final weights")
    report_progress(1.0, "done", step=20)
    report_result(metrics={"exam": 0.8}, resumed_from=resumed.name if resumed else None)
""")

CONFIG = {"lr": 2e-4, "rank": 8}


@pytest.fixture
def home(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fake_trainer.py").write_text(FAKE_TRAINER)
    return tmp_path / "home"


@pytest.fixture
def con(home):
    c = connect(home / "kaizen.duckdb")
    yield c
    c.close()


def spec(home, mode: str, key: str | None = None) -> runner.JobSpec:
    return runner.JobSpec("retrain", "fake_trainer", [mode], checkpoint_key=key or runner.checkpoint_key("h1", CONFIG),
                        env={"PYTHONPATH": str(home.parent / "mods")})


NEW = runner.NewVersion("adapter", config=CONFIG, snapshot_id="snap-1", snapshot_hash="h1")


def test_success_registers_the_output_as_a_version(home, con):
    seen = []
    result = runner.run_job_atomically(spec(home, "ok"), home, con, NEW, on_progress=seen.append)
    assert (result.status, result.returncode, result.error) == ("succeeded", 0, None)
    assert [(p.fraction, p.message, p.data) for p in seen] == [(0.5, "epoch 1/2", {"step": 10}),
                                                                (1.0, "done", {"step": 20})]
    assert result.result == {"metrics": {"exam": 0.8}, "resumed_from": None}
    assert result.output_tail == ["loading model"]
    version = vs.get_version(con, "adapter-0001")
    assert result.version["version_id"] == "adapter-0001"
    assert (version.metrics, version.config, version.snapshot_hash) == ({"exam": 0.8}, CONFIG, "h1")
    assert (home / "artifacts" / version.artifact_hash / "adapter.bin").read_bytes() == b"final weights"
    assert not (home / "tmp" / "jobs" / result.job_id).exists()
    assert not (home / "checkpoints" / "retrain" / runner.checkpoint_key("h1", CONFIG)).exists()
    log = (home / "logs" / f"{result.job_id}.log").read_text()
    assert "loading model" in log and "succeeded (exit status 0)" in log


def test_sigkill_mid_run_leaves_registry_unchanged_and_rerun_resumes(home, con):
    job = runner.start_job(spec(home, "hang"), home)
    assert (job.output_dir / ".").is_dir()

    def kill_at_half(progress: runner.Progress) -> None:
        if progress.fraction == 0.5:
            job.kill()  # a real SIGKILL from outside, mid-run

    killed = runner.complete_atomically(job, con, NEW, on_progress=kill_at_half)
    assert (killed.status, killed.returncode, killed.version) == ("killed", -9, None)
    assert "SIGKILL" in killed.error
    assert vs.list_versions(con) == []
    assert not (home / "artifacts").exists()  # the partial adapter.bin never reached the store
    assert not job.output_dir.exists()
    ckpt = home / "checkpoints" / "retrain" / runner.checkpoint_key("h1", CONFIG)
    assert (ckpt / "checkpoint-10").is_dir()

    rerun = runner.run_job_atomically(spec(home, "ok"), home, con, NEW)
    assert rerun.status == "succeeded"
    assert rerun.result["resumed_from"] == "checkpoint-10"
    assert [v.version_id for v in vs.list_versions(con)] == ["adapter-0001"]


def test_failure_keeps_checkpoints_and_registers_nothing(home, con):
    result = runner.run_job_atomically(spec(home, "fail"), home, con, NEW)
    assert (result.status, result.returncode) == ("failed", 3)
    assert "exit status 3" in result.error and result.log_path in result.error
    assert "CUDA out of memory" in result.output_tail
    assert vs.list_versions(con) == []
    assert (home / "checkpoints" / "retrain" / runner.checkpoint_key("h1", CONFIG) / "checkpoint-10").is_dir()


def test_timeout_kills_the_child(home, con):
    result = runner.run_job_atomically(spec(home, "hang"), home, con, NEW, timeout_s=1.5)
    assert (result.status, result.returncode) == ("timed_out", -9)
    assert vs.list_versions(con) == []


def test_second_run_of_the_same_job_is_refused_while_one_runs(home):
    first = runner.start_job(spec(home, "hang"), home)
    try:
        with pytest.raises(runner.JobBusy, match="another run of this job"):
            runner.start_job(spec(home, "hang"), home)
        other = runner.start_job(spec(home, "ok", key=runner.checkpoint_key("h2", CONFIG)), home)
        assert other.wait().ok
        other.release()
    finally:
        first.kill()
        first.wait()
        first.release()


def test_register_through_a_registry_client(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()  # a port where no controller listens: the client opens DuckDB itself
    cfg = config_mod.Config(paths=config_mod.PathsConfig(home=str(home)),
                            controller=config_mod.ControllerConfig(port=port))
    client = RegistryClient(cfg)
    assert client.via == "duckdb"
    result = runner.run_job_atomically(spec(home, "ok"), home, client, NEW)
    assert result.version["version_id"] == "adapter-0001"
    assert [v["metrics"] for v in client.list_versions()] == [{"exam": 0.8}]


def test_checkpoint_key_is_stable_per_snapshot_and_config(home):
    assert runner.checkpoint_key("h1", {"a": 1, "b": 2}) == runner.checkpoint_key("h1", {"b": 2, "a": 1})
    assert runner.checkpoint_key("h1", {"a": 1}) != runner.checkpoint_key("h2", {"a": 1})
    assert runner.checkpoint_key("h1", {"a": 1}) != runner.checkpoint_key("h1", {"a": 2})
    assert runner.checkpoint_dir(home, "retrain", "k") == home / "checkpoints" / "retrain" / "k"


def test_sweep_tmp_removes_orphaned_outputs_only(home):
    for job_id in ("retrain-a", "retrain-b"):
        (runner.jobs_tmp(home) / job_id).mkdir(parents=True)
    (home / "tmp" / "other-tool").mkdir()
    assert runner.sweep_tmp(home, running={"retrain-b"}) == ["retrain-a"]
    assert sorted(p.name for p in (home / "tmp").iterdir()) == ["jobs", "other-tool"]


def test_result_is_json_serialisable(home, con):
    result = runner.run_job_atomically(spec(home, "ok"), home, con, NEW)
    assert json.loads(json.dumps(result.to_dict()))["version"]["version_id"] == "adapter-0001"
