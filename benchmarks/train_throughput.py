"""Training throughput of LoRA SFT and DPO through TRL: TRL's defaults against the fastest
settings, tokens/s and MFU, each setting in a fresh process. Prints ONE JSON line.

    .venv/bin/python benchmarks/train_throughput.py                  # no GPU: the CPU part (make bench)
    .venv/bin/python benchmarks/train_throughput.py --gpu            # the whole GPU part, < 8 min
    .venv/bin/python benchmarks/train_throughput.py --gpu --smoke    # the GPU plan, tiny shapes, on CPU
    .venv/bin/python benchmarks/train_throughput.py --learning-check # 50 steps each: same loss curve?

CPU part (< 20 min on 2 cores): the embedded SmolLM2-135M (`--model DIR`; default the
converted embedded base under $KAIZEN_HOME, else a random-weight 135M shape on random rows of
chat-like length) on what the embedded loop trains on (demo questions and answers, chat
template, 8% general rows) with the embedded recipe's LoRA (all linear layers, r 16, lr 1e-3),
batch 8: `trl_defaults` (SFTConfig as TRL ships it: gradient checkpointing, padded batches,
every position through the LM head) against `recipe_cpu` (the recipe's CPU path: no
checkpointing, padding-free batches, only the answer positions through the LM head), back to
back; the pair is measured again when the load average rose above the core count, and each
round's ratio is reported (`speedup_vs_trl_default` is the smallest). Then `recipe_cpu` in 2
processes under `accelerate launch` (DDP over gloo, 1 thread each). tokens/s count real
tokens; `tokens_per_cpu_s` (per CPU second of the training process) is the figure that
carries over to an idle machine.

GPU part (`--gpu`): random-weight LLaMA shapes (the 135M, a 0.5B and Llama-3-8B), bf16, TRL's
defaults against padding-free batches with the variable-length FlashAttention kernel
(kaizenlm.retrain.speed 'sdpa_varlen'), Liger Kernel, larger token budgets, torch.compile,
packing, checkpointing only where memory needs it (8B), and DPO; a time budget keeps it under
8 minutes (the JSON is rewritten after every setting). JSON and log go to --out (default $OUT
when set). MFU: _train_bench.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent / "_train_bench.py"

# The embedded recipe's LoRA as it was when benchmarks/RESULTS.md "Training throughput" was
# measured (dropout 0.05; lora_sft.EMBEDDED_OVERRIDES has had none since 2026-12-07, see
# docs/TRAINING.md "Training speed and scale"): kept so a rerun compares with those figures.
EMBEDDED_LORA = dict(r=16, alpha=32, dropout=0.05, lr=1e-3,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
REAL_LORA = dict(r=16, alpha=32, dropout=0.0, lr=3e-5, target_modules=["q_proj", "v_proj"])

TRL_DEFAULTS = {"gradient_checkpointing": True}
RECIPE_CPU = {"gradient_checkpointing": False, "padding_free": True, "compact_head": True}
VARLEN = {"gradient_checkpointing": False, "padding_free": True, "attention": "sdpa_varlen"}
LIGER = {**VARLEN, "liger": True}

# (method, name, shape, data, batch, max_length, knobs), most important first: the time budget drops the tail.
GPU_PLAN = [
    ("sft", "0.5b_trl_defaults", "llama0.5b", "random", 8, 1024, TRL_DEFAULTS),
    ("sft", "0.5b_varlen_liger_b64", "llama0.5b", "random", 64, 1024, LIGER),
    ("sft", "8b_nemo_4096", "llama3-8b", "full", 2, 4096, {"gradient_checkpointing": False, "liger": True}),
    ("dpo", "0.5b_dpo_trl_defaults", "llama0.5b", "random", 8, 1024, TRL_DEFAULTS),
    ("dpo", "0.5b_dpo_liger_b32", "llama0.5b", "random", 32, 1024, {"gradient_checkpointing": False, "liger": True}),
    ("sft", "0.5b_varlen_liger", "llama0.5b", "random", 8, 1024, LIGER),
    ("sft", "0.5b_varlen", "llama0.5b", "random", 8, 1024, VARLEN),
    ("sft", "0.5b_packing_bfd", "llama0.5b", "random", 8, 1024, {"gradient_checkpointing": False, "packing": True}),
    ("sft", "135m_trl_defaults", "smol135m", "random", 8, 1024, TRL_DEFAULTS),
    ("sft", "135m_varlen_liger_b64", "smol135m", "random", 64, 1024, LIGER),
    ("sft", "0.5b_varlen_liger_b64_compile", "llama0.5b", "random", 64, 1024, {**LIGER, "compile": True}),
    ("sft", "8b_chat_varlen_liger_b8", "llama3-8b", "random", 8, 4096, LIGER),
]
CPU_BUDGET_S = 17 * 60  # make bench: the CPU part within 20 minutes on the shared 2-core machine
GPU_BUDGET_S = 420  # every setting ends within 7 minutes of the first (the wheels' install takes ~30 s more)
MIN_SETTING_S = 45  # a setting that cannot have this much left is skipped
OOM_FALLBACK = {"gradient_checkpointing": True}  # what a setting retries with when it ran out of memory


def run_child(spec: dict, log, processes: int = 1, timeout_s: float = 900) -> dict:
    """One setting in a fresh process (or `processes` under accelerate launch); its RESULT line,
    and one progress line on stderr."""
    from kaizenlm.config import RetrainConfig
    from kaizenlm.retrain import launch

    spec_file = Path(tempfile.mkdtemp(prefix="kz-bench-")) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    # kaizenlm importable, and whatever PYTHONPATH already holds (the GPU script's carried wheels)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    if processes > 1:
        run = RetrainConfig(cpu_threads=spec.get("threads", 2) * processes)
        command = launch.launch_command(processes, run, [str(BENCH), str(spec_file)])
        env = launch.launch_env(processes, run)
    else:
        command = [sys.executable, str(BENCH), str(spec_file)]
    log.write(f"\n===== {spec['method']} {spec['name']} ({processes} process{'es' if processes > 1 else ''}): "
              f"{' '.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    # its own process group, so that a timeout stops a launch's workers too
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        log.write(stdout + stderr)
        print(f"{spec['method']} {spec['name']}: timed out after {timeout_s:.0f} s", file=sys.stderr, flush=True)
        return {"error": f"timed out after {timeout_s:.0f} s"}
    log.write(stdout + stderr)
    log.flush()
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        print(f"{spec['method']} {spec['name']}: failed (exit {child.returncode}; see the log)", file=sys.stderr,
              flush=True)
        return {"error": f"exit {child.returncode}: {' | '.join(tail)[-400:]}"}
    result = json.loads(line[len("RESULT "):])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    shown = {k: result[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "mfu", "load_avg_1m", "skipped", "error")
             if result.get(k) is not None}
    print(f"{spec['method']} {spec['name']}: {shown} ({result['wall_s']} s)", file=sys.stderr, flush=True)
    return result


def default_model() -> str | None:
    """The converted embedded base under $KAIZEN_HOME when it is there (a real SmolLM2, not a test stub)."""
    from kaizenlm.base.model import default_base_dir
    from kaizenlm.config import load

    try:
        path = default_base_dir(load())
    except Exception:  # noqa: BLE001 - an unreadable kaizen.toml: fall back to the random shape
        return None
    config = path / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("hidden_size", 0) < 512:
        return None
    return str(path)


def base_spec(args, name: str, method: str, knobs: dict, **kw) -> dict:
    # the trainers' own output_dir: scratch space, so that --out holds only the JSON and the logs
    scratch = Path(tempfile.gettempdir()) / "kaizen-train-throughput"
    return {"name": name, "method": method, "knobs": knobs, "out": str(scratch), "seed": 0,
            "threads": args.threads, **kw}


# ---------------------------------------------------------------- CPU part


def cpu_part(args, log) -> dict:
    model = args.model or default_model()
    # without the real model: random rows of chat-like length (lognormal, mean ~40 tokens below 128)
    common = dict(shape="smol135m", model_dir=model, data="chat" if model else "random", batch=8,
                  max_length=256 if model else 128, rows=96, lora=EMBEDDED_LORA, warmup=1, min_steps=args.steps or 3,
                  seconds=0)
    pair = {"trl_defaults": TRL_DEFAULTS, "recipe_cpu": RECIPE_CPU}
    rounds: dict[str, list[dict]] = {k: [] for k in pair}
    cores, started = os.cpu_count() or 2, time.perf_counter()
    for attempt in range(2):
        for name, knobs in pair.items():
            rounds[name].append(run_child(base_spec(args, name, "sft", knobs, **common), log))
        loads = [r.get("load_avg_1m", 0) for rs in rounds.values() for r in rs[-1:]]
        if attempt == 0 and (max(loads) <= cores or time.perf_counter() - started > CPU_BUDGET_S * 0.35):
            break  # a quiet machine: one round is enough (or no time for a second within the budget)
    settings = {name: _best(rs) for name, rs in rounds.items()}
    pairs = [(a, b) for a, b in zip(rounds["trl_defaults"], rounds["recipe_cpu"], strict=True)
             if "tokens_per_s" in a and "tokens_per_s" in b]
    ratios = [round(b["tokens_per_s"] / a["tokens_per_s"], 2) for a, b in pairs]
    cpu_ratios = [round(b["tokens_per_cpu_s"] / a["tokens_per_cpu_s"], 2) for a, b in pairs]
    ddp_spec = base_spec(args, "recipe_cpu_ddp2", "sft", RECIPE_CPU, **{**common, "rows": 48, "min_steps": 5})
    ddp_spec["threads"] = max(1, args.threads // 2)
    ddp = run_child(ddp_spec, log, processes=2, timeout_s=max(180.0, CPU_BUDGET_S - (time.perf_counter() - started)))
    settings["recipe_cpu_ddp2"] = ddp
    return {
        "model": model or "random-weight SmolLM2-135M shape",
        "settings": settings,
        "rounds": len(pairs),
        # each round measures the pair back to back; the smallest round's ratio is the one reported
        "speedup_vs_trl_default": min(ratios, default=None),
        "speedup_rounds": ratios,
        "speedup_per_cpu_s": min(cpu_ratios, default=None),
        "speedup_per_cpu_s_rounds": cpu_ratios,
        "goal_speedup_met": bool(ratios and min(ratios) >= 1.3),
        "ddp_processes": 2,
        "ddp_loss_first": ddp.get("loss_first"),
        "ddp_loss_last": ddp.get("loss_last"),
        "ddp_tokens_per_s": ddp.get("tokens_per_s"),
    }


def _best(results: list[dict]) -> dict:
    ok = [r for r in results if "tokens_per_s" in r]
    if not ok:
        return results[-1]
    best = max(ok, key=lambda r: r["tokens_per_s"])
    return {**best, "all_tokens_per_s": [r["tokens_per_s"] for r in ok],
            "all_load_avg_1m": [r.get("load_avg_1m") for r in ok]}


def learning_check(args, log) -> dict:
    """50 steps of the TRL-default path and of the recipe's CPU path on the real model: the
    same rows in the same order, the same schedule; the loss curves side by side. The
    reference runs without checkpointing: recomputing the forward (with the RNG state
    restored) gives the same numbers, at 1.4-3x the time."""
    model = args.model or default_model()
    if not model:
        raise SystemExit("--learning-check needs the real model: pass --model DIR (a SmolLM2-135M directory)")
    steps = args.steps or 50
    common = dict(shape="smol135m", model_dir=model, data="chat", batch=8, max_length=256, rows=8 * steps,
                  lora=EMBEDDED_LORA, warmup=1, min_steps=steps - 1, seconds=0, max_steps=steps,
                  lr_warmup_steps=max(1, steps // 20))
    reference = run_child(base_spec(args, "no_checkpointing", "sft", {"gradient_checkpointing": False}, **common),
                          log, timeout_s=7200)
    candidate = run_child(base_spec(args, "recipe_cpu", "sft", RECIPE_CPU, **common), log, timeout_s=7200)
    a, b = reference.get("losses", []), candidate.get("losses", [])
    n = min(len(a), len(b))
    diffs = [b[i] - a[i] for i in range(n)]
    windows = []
    for start in range(0, n, 10):
        wa, wb = a[start:start + 10], b[start:start + 10]
        mean_a, mean_b = sum(wa) / len(wa), sum(wb) / len(wb)
        spread = (sum((x - mean_a) ** 2 for x in wa) / max(len(wa) - 1, 1)) ** 0.5 / len(wa) ** 0.5
        windows.append({"steps": f"{start + 1}-{start + len(wa)}", "reference": round(mean_a, 4),
                        "candidate": round(mean_b, 4), "standard_error": round(spread, 4)})
    same = n == steps and all(abs(w["candidate"] - w["reference"]) <= 2 * max(w["standard_error"], 1e-3)
                              for w in windows)
    return {"model": model, "steps": n, "reference": reference, "candidate": candidate,
            "max_abs_step_diff": round(max(map(abs, diffs)), 4) if diffs else None,
            "mean_abs_step_diff": round(sum(map(abs, diffs)) / n, 4) if n else None,
            "windows": windows, "learns_the_same": same}


# ---------------------------------------------------------------- GPU part


def gpu_part(args, log, save) -> dict:
    """The GPU plan within GPU_BUDGET_S; `save(part)` after every setting, so that a kill still
    leaves the figures measured so far."""
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for method, name, shape, data, batch, max_length, knobs in GPU_PLAN:
        left = GPU_BUDGET_S - (time.perf_counter() - started) if not args.smoke else 1e9
        if left < MIN_SETTING_S:
            results[name] = {"skipped": "time budget (the whole GPU part stays under 8 minutes)"}
            continue
        kw = dict(shape=shape, data=data, batch=batch, max_length=max_length, rows=batch * 40,
                  lora=REAL_LORA, warmup=3, min_steps=5, seconds=8.0)
        if args.smoke:  # the same plan with tiny shapes and steps: its code paths on any machine
            kw.update(shape="tiny", batch=min(batch, 4), max_length=min(max_length, 64), rows=24, warmup=1,
                      min_steps=2, seconds=0)
            knobs = _smoke_knobs(knobs)
        spec = base_spec(args, name, method, knobs, **kw)
        result = run_child(spec, log, timeout_s=min(240 if "8b" in name else 150, left))
        left = GPU_BUDGET_S - (time.perf_counter() - started) if not args.smoke else 1e9
        if result.get("oom") and not knobs.get("gradient_checkpointing") and left >= MIN_SETTING_S:
            retry = run_child({**spec, "knobs": {**knobs, **OOM_FALLBACK}}, log, timeout_s=min(240, left))
            result = {**retry, "note": "ran out of memory without gradient checkpointing; measured with it"}
        results[name] = {"method": method, "shape": shape, "batch": batch, "max_length": max_length,
                         "knobs": knobs, **result}
        save({"settings": results, "elapsed_s": round(time.perf_counter() - started, 1),
              "goals": _gpu_goals(results)})
    return {"settings": results, "elapsed_s": round(time.perf_counter() - started, 1), "goals": _gpu_goals(results)}


def _smoke_knobs(knobs: dict) -> dict:
    """Without CUDA the kernels that need it give way (the varlen kernel to plain SDPA over the
    same padding-free batch, Liger to PyTorch's layers), so every other code path still runs."""
    import torch

    if torch.cuda.is_available():
        return knobs
    changed = {**knobs, "liger": False}
    if knobs.get("attention") == "sdpa_varlen":
        changed["attention"] = "sdpa"
    return changed


def _gpu_goals(r: dict) -> dict:
    def tps(name):
        return r.get(name, {}).get("tokens_per_s")

    sft_05 = [v["tokens_per_s"] for k, v in r.items() if k.startswith("0.5b_") and v.get("method") == "sft"
              and "tokens_per_s" in v]
    dpo_05 = [v["tokens_per_s"] for k, v in r.items() if v.get("method") == "dpo" and "tokens_per_s" in v]
    mfu_8b = [v["mfu"] for k, v in r.items() if k.startswith("8b_") and v.get("mfu") is not None]
    return {
        "best_0.5b_sft_tokens_per_s": max(sft_05, default=None),
        "0.5b_vs_trl_defaults": round(max(sft_05) / tps("0.5b_trl_defaults"), 2) if sft_05 and tps("0.5b_trl_defaults") else None,
        "0.5b_ge_10x_23227": bool(sft_05 and max(sft_05) >= 232_270),
        "best_8b_mfu": max(mfu_8b, default=None),
        "8b_mfu_ge_0.40": bool(mfu_8b and max(mfu_8b) >= 0.40),
        "dpo_per_token_vs_sft": round(max(sft_05) / max(dpo_05), 2) if sft_05 and dpo_05 else None,
        "dpo_within_2x_sft": bool(sft_05 and dpo_05 and max(dpo_05) * 2 >= max(sft_05)),
    }


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the GPU part (needs CUDA unless --smoke)")
    p.add_argument("--smoke", action="store_true", help="with --gpu: tiny shapes and steps, runs anywhere")
    p.add_argument("--learning-check", action="store_true", help="50 steps each: do the CPU settings learn the same?")
    p.add_argument("--model", default=None, help="a SmolLM2-135M Hugging Face directory for the CPU part")
    p.add_argument("--steps", type=int, default=None, help="timed steps (CPU part) or steps (learning check)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (split between the DDP processes)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "out" / "throughput"),
                   help="where the JSON and the log go (default: $OUT when set)")
    args = p.parse_args()
    import torch

    if args.gpu and not args.smoke and not torch.cuda.is_available():
        p.error("--gpu needs a CUDA GPU (add --smoke to run its plan with tiny shapes on CPU)")
    if args.model and not (Path(args.model) / "config.json").is_file():
        p.error(f"--model {args.model}: not a Hugging Face model directory (no config.json)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if args.gpu else "learning_check" if args.learning_check else "cpu"
    log_path = out / f"train_throughput_{kind}.log"
    started = time.perf_counter()
    load_before = os.getloadavg()

    def save(part: dict) -> str:
        report = {
            "benchmark": "train_throughput", "part": kind + ("_smoke" if args.smoke else ""),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "versions": _versions(), "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.perf_counter() - started, 1),
            "log": str(log_path), **part,
        }
        line = json.dumps(report)
        (out / f"train_throughput_{kind}.json").write_text(line + "\n")
        return line

    with log_path.open("w", encoding="utf-8") as log:
        if args.gpu:
            part = gpu_part(args, log, save)
        else:
            part = learning_check(args, log) if args.learning_check else cpu_part(args, log)
    print(save(part))
    return 0


def _versions() -> dict:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "liger-kernel"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
