"""Jobs: retrain, knowledge refresh, evaluation and review run as child processes.

Parent side (the controller, or `kaizen retrain` when no controller runs):

    job = start_job(JobSpec("retrain", "kaizenlm.retrain.run", ["--snapshot", sid],
                            checkpoint_key=checkpoint_key(snapshot_hash, config)), cfg.home)
    result = complete_atomically(job, registry, NewVersion("adapter", parent_id=..., config=config,
                                 snapshot_id=sid, snapshot_hash=snapshot_hash), on_progress=bar.update)
    # or both at once: run_job_atomically(spec, home, registry, new_version, on_progress)

Child side (the job module):

    paths = job_paths()                   # output_dir, checkpoint_dir, job_id from the environment
    ... checkpoints into paths.checkpoint_dir; a rerun of the same job finds them and resumes ...
    report_progress(0.3, "sft epoch 1/3")
    ... write the artifacts into paths.output_dir ...
    report_result(metrics={"exam": 0.81})

Why it is safe:
  * The child writes artifacts only to $KAIZEN_HOME/tmp/jobs/<job-id>/. The parent registers a
    version only after the child exited 0, by renaming that directory into the
    content-addressed store (one os.replace) and then inserting the row. A crash or
    `kill -9` of the child leaves the registry and the aliases as they were: the champion
    keeps serving, and the partial output is deleted.
  * Checkpoints live in $KAIZEN_HOME/checkpoints/<job name>/<key>, where the key hashes
    (snapshot content hash, config): a rerun of the same job on the same data finds them
    and resumes. They are deleted after a successful registration.
  * The child's stdout is a pipe to the parent: if the parent dies, the child's next
    print fails (broken pipe) and it stops. `sweep_tmp` removes outputs such orphans left.
  * A lock file per checkpoint directory refuses a second concurrent run of the same job.

Progress and the final result travel as lines "kaizen-job: {json}" on the child's
stdout; all other output (and stderr) goes to the log $KAIZEN_HOME/logs/<job-id>.log.
The job record is the returned JobResult (the scheduler stores job history).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # the registry (duckdb, httpx) is imported only by the parent, when it registers
    import duckdb

    from kaizenlm.registry.client import RegistryClient

ENV_JOB_ID = "KAIZEN_JOB_ID"
ENV_OUTPUT_DIR = "KAIZEN_JOB_OUTPUT_DIR"
ENV_CHECKPOINT_DIR = "KAIZEN_JOB_CHECKPOINT_DIR"
PROTOCOL_PREFIX = "kaizen-job: "
_TAIL_LINES = 40
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # so the child imports this kaizenlm


# ---------------------------------------------------------------- child side


@dataclass
class JobPaths:
    job_id: str
    output_dir: Path
    checkpoint_dir: Path | None


def job_paths() -> JobPaths:
    """Where this job writes its artifacts and checkpoints (set by the parent)."""
    if ENV_OUTPUT_DIR not in os.environ:
        raise RuntimeError(f"{ENV_OUTPUT_DIR} is not set: run this module through kaizenlm.jobs.runner")
    ckpt = os.environ.get(ENV_CHECKPOINT_DIR)
    return JobPaths(os.environ.get(ENV_JOB_ID, ""), Path(os.environ[ENV_OUTPUT_DIR]), Path(ckpt) if ckpt else None)


def _send(message: dict) -> None:
    print(PROTOCOL_PREFIX + json.dumps(message, sort_keys=True), flush=True)


def report_progress(fraction: float | None, message: str = "", **data) -> None:
    """Tell the parent how far the job is (fraction in 0..1, or None when unknown)."""
    _send({"event": "progress", "fraction": fraction, "message": message, "data": data})


def report_result(**data) -> None:
    """The job's outcome for the parent; `metrics` (a dict) is recorded on the version."""
    _send({"event": "result", "data": data})


# ---------------------------------------------------------------- parent side


@dataclass
class JobSpec:
    name: str
    """Job kind, e.g. 'retrain' or 'knowledge-refresh': prefixes the job id, names the checkpoint folder."""
    module: str
    """Run as `python -m <module> <args>`."""
    args: list[str] = field(default_factory=list)
    checkpoint_key: str | None = None
    """checkpoint_key(snapshot_hash, config) for resumable jobs; None: no checkpoint directory."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the child."""


@dataclass
class NewVersion:
    """What to register when the job succeeds; metrics come from the child's report_result."""

    kind: str
    parent_id: str | None = None
    config: dict = field(default_factory=dict)
    snapshot_id: str | None = None
    snapshot_hash: str | None = None
    status: str = "candidate"
    note: str | None = None


@dataclass
class Progress:
    fraction: float | None
    message: str
    data: dict


@dataclass
class JobResult:
    job_id: str
    name: str
    status: str  # "succeeded" | "failed" | "killed" | "timed_out"
    returncode: int | None
    started_at: float
    finished_at: float
    log_path: str
    output_dir: str
    checkpoint_dir: str | None
    last_progress: dict | None = None
    result: dict = field(default_factory=dict)
    version: dict | None = None
    error: str | None = None
    output_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict:
        return asdict(self)


class JobBusy(RuntimeError):
    """Another run of the same job (same checkpoint directory) is in progress."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checkpoint_key(snapshot_hash: str, config: dict) -> str:
    """Stable key of (data, config): the same snapshot and config resume the same checkpoints."""
    return hashlib.sha256(f"{snapshot_hash}\0{config_hash(config)}".encode()).hexdigest()[:24]


def checkpoint_dir(home: Path, name: str, key: str) -> Path:
    return Path(home) / "checkpoints" / name / key


def jobs_tmp(home: Path) -> Path:
    """Parent of the jobs' output directories; nothing else lives there, so sweep_tmp is safe."""
    return Path(home) / "tmp" / "jobs"


def new_job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _lock(directory: Path) -> IO:
    lock_file = open(directory / ".lock", "w")  # noqa: SIM115 - held open for the job's lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise JobBusy(f"another run of this job holds {directory}; wait for it or stop it") from None
    return lock_file


def _child_env(spec: JobSpec, job_id: str, output_dir: Path, ckpt_dir: Path | None) -> dict[str, str]:
    env = {**os.environ, **spec.env, ENV_JOB_ID: job_id, ENV_OUTPUT_DIR: str(output_dir), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if ckpt_dir is not None:
        env[ENV_CHECKPOINT_DIR] = str(ckpt_dir)
    return env


class RunningJob:
    """A started child process. `wait` follows its output; `kill`/`terminate` stop it."""

    def __init__(self, spec: JobSpec, home: Path):
        self.spec, self.home = spec, Path(home)
        self.job_id = new_job_id(spec.name)
        self.output_dir = jobs_tmp(self.home) / self.job_id
        self.checkpoint_dir = checkpoint_dir(self.home, spec.name, spec.checkpoint_key) if spec.checkpoint_key else None
        self.log_path = self.home / "logs" / f"{self.job_id}.log"
        self.output_dir.mkdir(parents=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = None
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.checkpoint_dir)
        self.timed_out = False
        self.started_at = time.time()
        command = [sys.executable, "-m", spec.module, *spec.args]
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        self._log.write(f"# job {self.job_id}: {' '.join(command)}\n")
        self._log.flush()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            bufsize=1, env=_child_env(spec, self.job_id, self.output_dir, self.checkpoint_dir),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the child cannot clean up; the registry is untouched all the same."""
        if self.process.poll() is None:
            self.process.kill()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.kill()

    def wait(self, on_progress: Callable[[Progress], None] | None = None,
             timeout_s: float | None = None) -> JobResult:
        """Follow the child's output until it exits; returns the job record (not yet registered)."""
        timer = threading.Timer(timeout_s, self._on_timeout) if timeout_s else None
        if timer:
            timer.start()
        try:
            last_progress, result, tail = self._follow(on_progress)
            returncode = self.process.wait()
        except BaseException:  # on_progress raised, or Ctrl-C: do not leave the child behind
            self.kill()
            self.process.wait()
            raise
        finally:
            if timer:
                timer.cancel()
            status = _status(self.process.returncode, self.timed_out)
            self._log.write(f"# job {self.job_id}: {status} (exit status {self.process.returncode})\n")
            self._log.close()
        return JobResult(
            job_id=self.job_id, name=self.spec.name, status=status, returncode=returncode,
            started_at=self.started_at, finished_at=time.time(), log_path=str(self.log_path),
            output_dir=str(self.output_dir), checkpoint_dir=str(self.checkpoint_dir) if self.checkpoint_dir else None,
            last_progress=last_progress, result=result, output_tail=tail,
            error=None if status == "succeeded" else _error_text(status, returncode, self.log_path),
        )

    def _follow(self, on_progress: Callable[[Progress], None] | None) -> tuple[dict | None, dict, list[str]]:
        """Copy the child's output to the log; returns (last progress, result, last plain lines)."""
        last_progress, result, tail = None, {}, deque(maxlen=_TAIL_LINES)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            message = _parse_protocol(line)
            if message is None:
                tail.append(line.rstrip("\n"))
            elif message.get("event") == "progress":
                last_progress = message
                if on_progress:
                    on_progress(Progress(message.get("fraction"), message.get("message", ""), message.get("data", {})))
            elif message.get("event") == "result":
                result = message.get("data", {})
        return last_progress, result, list(tail)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None


def _parse_protocol(line: str) -> dict | None:
    if not line.startswith(PROTOCOL_PREFIX):
        return None
    try:
        message = json.loads(line[len(PROTOCOL_PREFIX):])
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _status(returncode: int, timed_out: bool) -> str:
    if returncode == 0:
        return "succeeded"
    if timed_out:
        return "timed_out"
    return "killed" if returncode < 0 else "failed"


def _error_text(status: str, returncode: int, log_path: Path) -> str:
    how = f"by {signal_name(returncode)}" if signal_name(returncode) else f"with exit status {returncode}"
    return f"job {status} {how}; see {log_path}"


def start_job(spec: JobSpec, home: Path) -> RunningJob:
    """Start the child now; raises JobBusy if the same resumable job is already running."""
    return RunningJob(spec, home)


def _register(registry: duckdb.DuckDBPyConnection | RegistryClient, home: Path, new: NewVersion,
              output_dir: Path, metrics: dict) -> dict:
    from kaizenlm.registry import service
    from kaizenlm.registry.client import RegistryClient

    fields = {"parent_id": new.parent_id, "config": new.config, "snapshot_id": new.snapshot_id,
              "snapshot_hash": new.snapshot_hash, "metrics": metrics, "status": new.status, "note": new.note,
              "move": True}
    if isinstance(registry, RegistryClient):
        return registry.register_version(new.kind, output_dir, **fields)
    return service.register(registry, home, new.kind, str(output_dir), **fields)


def complete_atomically(job: RunningJob, registry: duckdb.DuckDBPyConnection | RegistryClient,
                        new: NewVersion,
                        on_progress: Callable[[Progress], None] | None = None,
                        timeout_s: float | None = None, keep_checkpoints: bool = False) -> JobResult:
    """Wait for the job; register its output as a version only if it succeeded.

    `registry` is the controller's DuckDB connection, or a RegistryClient elsewhere.
    On failure the partial output is deleted and the checkpoints stay for a rerun.
    """
    try:
        result = job.wait(on_progress, timeout_s)
        if result.ok and not any(job.output_dir.iterdir()):
            result.status = "failed"
            result.error = f"job exited 0 but wrote nothing to its output directory ({ENV_OUTPUT_DIR})"
        if result.ok:
            metrics = result.result.get("metrics") or {}
            try:
                result.version = _register(registry, job.home, new, job.output_dir, metrics)
            except Exception as e:  # recorded on the job; the registry is unchanged
                result.status, result.error = "failed", f"registration failed: {e}"
        if result.ok and job.checkpoint_dir is not None and not keep_checkpoints:
            shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
        return result
    finally:
        shutil.rmtree(job.output_dir, ignore_errors=True)  # moved into the store on success
        job.release()


def run_job_atomically(spec: JobSpec, home: Path, registry: duckdb.DuckDBPyConnection | RegistryClient,
                       new: NewVersion,
                       on_progress: Callable[[Progress], None] | None = None,
                       timeout_s: float | None = None) -> JobResult:
    """start_job + complete_atomically."""
    return complete_atomically(start_job(spec, home), registry, new, on_progress, timeout_s)


def sweep_tmp(home: Path, running: set[str] = frozenset()) -> list[str]:
    """Delete job output directories left by a dead parent (never registered); returns
    their job ids. Pass the ids of jobs still running; call at controller start."""
    tmp = jobs_tmp(home)
    removed = []
    for path in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if path.is_dir() and path.name not in running:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def signal_name(returncode: int | None) -> str | None:
    """'SIGKILL' for returncode -9 (a child killed by a signal), else None."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return None
