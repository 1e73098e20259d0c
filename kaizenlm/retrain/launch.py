"""Multi-process training: one recipe run under `accelerate launch`, when retrain.processes > 1.

Parent side (the first lines of train_sft / train_dpo, in the retrain job or any caller):

    if launch.should_launch(run):
        return launch.run_recipe("sft", run_dir, run, base_path=..., rows=..., cfg=cfg, ...)

writes the call to <run_dir>/launch/call.json and runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N --main_process_port P \
        -m kaizenlm.retrain.launch <run_dir>/launch/call.json

(`--config_file F` instead of `--multi_gpu` when retrain.accelerate_config names an FSDP or
DeepSpeed config). It copies every line the processes print to its own stdout, which is the
job's log, and returns the metrics rank 0 wrote to <run_dir>/metrics.json once all N
processes exited 0. Worker side (`main`, every rank): the same recipe call; the recipes write
the adapter, train.log, TensorBoard events and metrics.json on rank 0 only
(`training.is_main_process`), and Trainer checkpoints as Trainer does (model and optimizer
from rank 0, one RNG state per rank), so a rerun resumes in any number of processes.

On a machine without GPUs, `--multi_gpu` still starts N torchrun workers: accelerate sees no
CUDA and trains with DistributedType.MULTI_CPU over gloo (`--cpu` would start one process;
accelerate's multi-CPU launcher wants MPI). Each CPU process gets retrain.cpu_threads / N
threads.

Failures: torchrun stops every rank when one dies; the launch then exits non-zero and
run_recipe raises TrainingProcessError (NonFiniteLossError when rank 0 stopped on a NaN loss),
so the retrain job fails and its parent registers nothing. If the caller dies, the launch
gets SIGTERM (PR_SET_PDEATHSIG) and stops its workers, and a worker whose launcher died gets
SIGKILL: no rank outlives the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

from kaizenlm.config import LoraDPOConfig, LoraSFTConfig, RetrainConfig
from kaizenlm.retrain.monitoring import NonFiniteLossError

log = logging.getLogger("kaizenlm.retrain")

RECIPES = {"sft": LoraSFTConfig, "dpo": LoraDPOConfig}
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_TAIL_LINES = 60


class TrainingProcessError(RuntimeError):
    """A multi-process training run failed (a rank crashed, or the launch itself did)."""


# ---------------------------------------------------------------- where this process stands


def world_size() -> int:
    """Processes of the distributed run this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a multi-process one: the process that writes files."""
    return rank() == 0


def wanted_processes(run: RetrainConfig) -> int:
    """retrain.processes as a number: 'auto' is the number of visible GPUs (1 without any)."""
    if run.processes == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return int(run.processes)


def should_launch(run: RetrainConfig) -> bool:
    """True when the recipe must start its N processes: more than one wanted, and this process
    is not already one of a distributed run (the workers themselves, or a user's own launch)."""
    return wanted_processes(run) > 1 and world_size() == 1


# ---------------------------------------------------------------- parent side


def run_recipe(recipe: str, run_dir: str | Path, run: RetrainConfig, **call) -> dict:
    """Run lora_sft.train_sft (recipe 'sft') or lora_dpo.train_dpo ('dpo') with `call` as its
    keyword arguments in wanted_processes(run) processes; returns rank 0's metrics."""
    import torch

    n = wanted_processes(run)
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(f"retrain.processes is {n} but {torch.cuda.device_count()} GPU(s) are visible: "
                         "use 'auto' (one process per GPU) or a smaller number")
    run_dir = Path(run_dir)
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    for stale in (launch_dir / "error.json", run_dir / "metrics.json"):  # what this launch must write anew
        stale.unlink(missing_ok=True)
    call_path = launch_dir / "call.json"
    call_path.write_text(json.dumps(_encode(recipe, run_dir, run, call), default=str), encoding="utf-8")
    command = launch_command(n, run, ["-m", "kaizenlm.retrain.launch", str(call_path)])
    log.info("%s: %d processes under accelerate launch: %s", recipe, n, " ".join(command))
    returncode, tail = run_and_relay(command, launch_env(n, run))
    if returncode != 0:
        _raise_failure(recipe, n, returncode, tail, launch_dir / "error.json")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["processes"] = n
    return metrics


def launch_command(n: int, run: RetrainConfig, target: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `target` (a script and its arguments, or
    ["-m", module, ...]) in n processes."""
    from kaizenlm.ports import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
               "--num_machines", "1", "--main_process_port", str(free_port()), "--monitor_interval", "1"]
    if run.accelerate_config:
        config = Path(run.accelerate_config).expanduser()
        if not config.is_file():
            raise ValueError(f"retrain.accelerate_config: {config} does not exist (write one with `accelerate config`)")
        command += ["--config_file", str(config)]
    else:
        command += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return command + target


def launch_env(n: int, run: RetrainConfig) -> dict[str, str]:
    """The launch's environment: this one, kaizenlm importable, retrain.cpu_threads / n threads per process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, run.cpu_threads // n)))  # torchrun would set 1
    return env


def run_and_relay(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the launch, copying its output to our stdout line by line; (exit status, last lines)."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, bufsize=1, env=env, preexec_fn=_die_with_parent(signal.SIGTERM))
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        return process.wait(), list(tail)
    except BaseException:  # Ctrl-C, or our stdout is gone: stop the launch and its workers first
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def _raise_failure(recipe: str, n: int, returncode: int, tail: list[str], error_path: Path) -> None:
    if error_path.is_file():
        error = json.loads(error_path.read_text(encoding="utf-8"))
        if error.get("type") == "NonFiniteLossError":
            raise NonFiniteLossError(error["message"])
        raise TrainingProcessError(f"{recipe} training in {n} processes failed on rank 0: "
                                   f"{error.get('type')}: {error.get('message')}")
    ranks = [x.strip() for x in tail if x.strip().startswith(("rank", "[rank", "exitcode", "error_file"))]
    raise TrainingProcessError(
        f"{recipe} training in {n} processes failed (accelerate launch exit status {returncode}); "
        + ("; ".join(ranks[:6]) or "last output: " + " | ".join(tail[-8:])))


def _die_with_parent(sig: int):
    """A preexec function: the child gets `sig` when the process that started it dies (Linux)."""
    def set_death_signal() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG
    return set_death_signal


# ---------------------------------------------------------------- the call, as a file


def _encode(recipe: str, run_dir: Path, run: RetrainConfig, call: dict) -> dict:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    cfg = call.pop("cfg", None)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in call.items()}
    return {"recipe": recipe, "run_dir": str(run_dir), "run": dataclasses.asdict(run),
            "cfg": dataclasses.asdict(cfg) if cfg is not None else None, "args": args}


def _call_recipe(call: dict) -> dict:
    from kaizenlm.retrain import lora_dpo, lora_sft

    cfg = RECIPES[call["recipe"]](**call["cfg"]) if call["cfg"] is not None else None
    fn = lora_sft.train_sft if call["recipe"] == "sft" else lora_dpo.train_dpo
    return fn(run_dir=call["run_dir"], cfg=cfg, run=RetrainConfig(**call["run"]), **call["args"])


# ---------------------------------------------------------------- worker side


def main(argv: list[str] | None = None) -> int:
    """One rank of a launched recipe run: `python -m kaizenlm.retrain.launch CALL_JSON`."""
    _die_with_parent(signal.SIGKILL)()  # the launch (torchrun's agent) gone: no orphan rank
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format=f"%(asctime)s rank{rank()} %(levelname)s %(name)s: %(message)s")
    call_path = Path(argv[0])
    call = json.loads(call_path.read_text(encoding="utf-8"))
    try:
        _call_recipe(call)
    except Exception as e:
        if is_main_process():
            (call_path.parent / "error.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
