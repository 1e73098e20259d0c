"""General data for any base model, shipped with kaizenlm (nothing is downloaded):

- `data/general_prompts.jsonl`: a few hundred diverse general prompts {prompt, skill}. The base
  answers them once (greedy); those answers are self-distillation targets: the 5-10% replay
  mixed into every SFT set and the prompts of the KL anchor keep the retrained model saying
  what the base said on general questions. A fifth of them (by a hash of the prompt) is held
  out: never replayed or anchored, so an evaluation may compare answers on them.
- `data/general_choices.jsonl`: multiple-choice general questions {prompt, choices, answer}
  scored by log-likelihood (as lm-evaluation-harness scores ARC-style tasks): general-skill
  retention that does not depend on wording.

The answers are cached per base model content and per what was asked (`answers_key`: the
prompts, how many of them, the token budget; `answers_paths(home, key)`), so they are
computed once per base and setting: `python -m kaizenlm.base.general --base DIR --out FILE` in a child
process (the controller never loads torch), or `kaizen base build`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from kaizenlm.base.model import base_marker, inference_dtype_name
from kaizenlm.config.core import PRECISIONS

log = logging.getLogger(__name__)

DATA = Path(__file__).parent / "data"
SHIPPED_PROMPTS = DATA / "general_prompts.jsonl"
SHIPPED_CHOICES = DATA / "general_choices.jsonl"
HELD_OUT_PERCENT = 20


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The rows of a JSON-lines file; with missing_ok, none when there is no such file."""
    if missing_ok and not Path(path).expanduser().is_file():
        return []
    with Path(path).expanduser().open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def general_prompts(path: str | Path | None = None) -> list[dict]:
    """{prompt, skill} rows: `path` (base.general_prompts_path) or the shipped set."""
    rows = read_jsonl(path or SHIPPED_PROMPTS)
    for i, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path or SHIPPED_PROMPTS}: line {i}: field 'prompt' must be a non-empty string")
    return [{"prompt": r["prompt"], "skill": str(r.get("skill") or "general")} for r in rows]


def general_choices(path: str | Path | None = None) -> list[dict]:
    """{prompt, choices, answer, skill} multiple-choice rows (the shipped set by default)."""
    return read_jsonl(path or SHIPPED_CHOICES)


def choice_suite_rows(path: str | Path | None = None) -> list[dict]:
    """The multiple-choice questions as general rows of an evaluation suite (kaizenlm.eval.suite)."""
    return [{"prompt": r["prompt"], "reference": r["choices"][r["answer"]], "choices": r["choices"],
             "skill": r.get("skill", "general")} for r in general_choices(path)]


def is_held_out(prompt: str) -> bool:
    """A fixed fifth of the prompts, chosen by a hash of the text (stable across runs and machines)."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 100 < HELD_OUT_PERCENT


def base_key(base_dir: str | Path) -> str:
    """A short content key of a base model: the hash its kaizenlm marker recorded (the same for the
    built directory and its registered copy, so the build can answer before registering), else the
    content-addressed artifact name when the base is a registered version, else a hash of its files."""
    base_dir = Path(base_dir)
    recorded = base_marker(base_dir).get("content_hash")
    if recorded:
        return recorded[:16]
    if base_dir.parent.name == "artifacts" and len(base_dir.name) == 64:
        return base_dir.name[:16]
    from kaizenlm.registry.artifacts import hash_dir

    return hash_dir(base_dir)[:16]


def answers_key(base_dir: str | Path, prompts_path: str | Path | None = None, max_new_tokens: int = 48,
                limit: int | None = None, precision: str = "auto") -> str:
    """The cache key of a base's general answers: its content key and a hash of what it was asked
    (the prompts in answer order, how many, the token budget) and the dtype it answers in, so
    changing `[base] general_prompts_path`, `general_answers`, `general_max_new_tokens` or
    `precision` answers anew."""
    asked = [r["prompt"] for r in answer_order(general_prompts(prompts_path))[:limit]]
    dtype = inference_dtype_name(precision)
    digest = hashlib.sha256(json.dumps([asked, max_new_tokens, dtype]).encode()).hexdigest()[:8]
    return f"{base_key(base_dir)}-{digest}"


def configured_answers_paths(cfg, base_dir: str | Path) -> tuple[Path, Path]:
    """answers_paths of the base at `base_dir` under the configuration's `[base]` settings."""
    return answers_paths(cfg.home, answers_key(base_dir, cfg.base.general_prompts_path or None,
                                               cfg.base.general_max_new_tokens, cfg.base.general_answers,
                                               cfg.base.precision))


def answers_paths(home: str | Path, key: str) -> tuple[Path, Path]:
    """(replay and anchor rows, held-out rows) of the base whose key is `key`, in <home>/general
    (Config.general_dir); the base answered last is also <home>/general/replay.jsonl, the default
    replay source of a `kaizen dataset build` (Config.replay_path)."""
    folder = Path(home) / "general"
    return folder / f"{key}.jsonl", folder / f"{key}-heldout.jsonl"


def answer_prompts(base_dir: str | Path, rows: list[dict], max_new_tokens: int, batch_size: int = 32,
                   on_batch=None, precision: str = "auto") -> list[dict]:
    """Greedy answers of the base at `base_dir` to `rows` ({prompt, skill}); adds `response` and
    `ended` (False: the answer was cut at max_new_tokens)."""
    from kaizenlm.base.generate import generate_with_ends
    from kaizenlm.base.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base_dir, precision=precision)
    answers: list[tuple[str, bool]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        answers += generate_with_ends(model, tokenizer, [r["prompt"] for r in chunk], max_new_tokens, batch_size)
        if on_batch is not None:
            on_batch(len(answers), len(rows))
    return [{**r, "response": a, "ended": ended} for r, (a, ended) in zip(rows, answers, strict=True) if a.strip()]


# A sentence ends at . ! or ? (closing quotes and brackets included) before a space or the end;
# not after a list number ("2.") or a common abbreviation.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_NOT_AN_END = re.compile(r"(?:^|\n)\s*\d+$|\b(?:e\.g|i\.e|Mr|Mrs|Ms|Dr|vs|St)$")


def replay_target(row: dict) -> dict | None:
    """The row as a replay (SFT) target. An answer cut at max_new_tokens is trimmed back to its
    last complete sentence, so replay never teaches the model to stop mid-sentence (the whole
    answer stays in `anchor_response`); None when no complete sentence is left. An answer the
    model ended itself is kept as it is."""
    text = row["response"]
    if row.get("ended", True):
        return row
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if not _NOT_AN_END.search(text[:m.start()])]
    if not ends:
        return None
    # The KL anchor reads `anchor_response`: it pulls towards the base's own next-token
    # distributions, where a cut answer teaches no stop, so it keeps the whole of it.
    return {**row, "response": text[:ends[-1]].rstrip(), "trimmed": True, "anchor_response": text}


def answer_order(rows: list[dict]) -> list[dict]:
    """A fixed order of the prompts (by a hash of the text) whose every prefix mixes the skills:
    answering the first N gives a diverse pool for any N."""
    return sorted(rows, key=lambda r: hashlib.sha256(("order:" + r["prompt"]).encode()).hexdigest())


def write_answers(base_dir: str | Path, home: str | Path, prompts_path: str | Path | None = None,
                  max_new_tokens: int = 48, limit: int | None = None, precision: str = "auto") -> tuple[Path, Path]:
    """Answer the first `limit` general prompts (answer_order) with the base and write both files
    (atomically); returns their paths."""
    rows = answer_order(general_prompts(prompts_path))[:limit]
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"general answers: {done}/{total} ({time.perf_counter() - started:.0f} s)", flush=True)

    answered = answer_prompts(base_dir, rows, max_new_tokens, on_batch=progress, precision=precision)
    key = answers_key(base_dir, prompts_path, max_new_tokens, limit, precision)
    train_path, heldout_path = answers_paths(home, key)
    for path, keep in ((train_path, False), (heldout_path, True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        # Held out: the answers as the base gave them within the budget (what an evaluation's
        # answers, under the same budget, are compared with). Replay: complete sentences only.
        rows = [r for r in answered if is_held_out(r["prompt"]) == keep]
        if not keep:
            rows = [t for t in map(replay_target, rows) if t is not None]
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    latest = train_path.parent / f"replay.jsonl.tmp-{os.getpid()}"
    latest.write_bytes(train_path.read_bytes())
    os.replace(latest, train_path.parent / "replay.jsonl")
    log.info("answered %d general prompts with %s in %.0f s", len(answered), base_dir, time.perf_counter() - started)
    return train_path, heldout_path


def ensure_answers_in_child(cfg, base_dir: str | Path, log_fn=print) -> tuple[Path, Path]:
    """The general answers of the base at `base_dir`: from the cache, or computed now in a child
    process (so the controller never loads torch); its output goes to <home>/logs/general-answers.log."""
    import subprocess

    paths = configured_answers_paths(cfg, base_dir)
    if paths[0].is_file() and paths[1].is_file():
        return paths
    log_path = Path(cfg.home) / "logs" / "general-answers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fn(f"answering the general prompts with the base {base_dir} (once per base; log: {log_path})")
    argv = [sys.executable, "-m", "kaizenlm.base.general", "--base", str(base_dir), "--home", str(cfg.home),
            "--threads", str(cfg.base.threads), "--max-new-tokens", str(cfg.base.general_max_new_tokens),
            "--limit", str(cfg.base.general_answers), "--precision", cfg.base.precision]
    if cfg.base.general_prompts_path:
        argv += ["--prompts", cfg.base.general_prompts_path]
    with open(log_path, "ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not paths[0].is_file():
        raise RuntimeError(f"answering the general prompts failed (exit {done.returncode}); see {log_path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="answer the general prompts with a base model (a child job)")
    parser.add_argument("--base", required=True, help="the base model directory")
    parser.add_argument("--home", required=True, help="KAIZEN_HOME: the answers go to <home>/general/")
    parser.add_argument("--prompts", default=None, help="JSONL of {prompt, skill} (default: the shipped set)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts (answer_order)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="dtype the base answers in (auto: bf16 where the CPU computes it natively)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    train_path, heldout_path = write_answers(args.base, args.home, args.prompts, args.max_new_tokens, args.limit,
                                             args.precision)
    print(json.dumps({"replay": str(train_path), "heldout": str(heldout_path)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
