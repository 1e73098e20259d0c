"""The first champion: on a fresh install the configured base model is registered as a `base`
version and `champion` points at it, so chat is served before any retrain has run.

    base_dir = ensure_base_in_child(cfg, log)            # converts the embedded model once (a child: torch)
    register_first_champion(RegistryClient(cfg), base_dir, actor="controller")

The controller does this at start when no champion exists, `kaizen base build` does it by
hand, and the monthly retrain does it before its first run. A user's own model comes in with
`kaizen registry register base PATH --champion` or `[base] path`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kaizenlm.base.model import base_marker, is_hf_model_dir, resolve_base_path
from kaizenlm.registry.aliases import CHAMPION


class BaseMissing(RuntimeError):
    """The configured base directory holds no model (and cannot be built); the message says what to set."""


def check_base(cfg) -> Path:
    """The configured base directory if it holds a model; BaseMissing naming base.path otherwise."""
    base_dir = resolve_base_path(cfg)
    if is_hf_model_dir(base_dir):
        return base_dir
    if cfg.base.path == "embedded":
        raise BaseMissing(f"the embedded base is not built yet ({base_dir}); run `kaizen base build`")
    raise BaseMissing(f"base.path {base_dir} holds no Hugging Face model (no config.json); point [base] path "
                      "at a causal LM directory")


def ensure_base_in_child(cfg, log_fn: Callable[[str], None] = print) -> Path:
    """The base directory; the embedded model is converted first (in a child process, so the
    caller never loads torch) when it is not on disk yet. The same child then has it answer the
    general prompts (the answers are keyed by content, so the registered copy finds them): one
    process loading torch and the model instead of two."""
    base_dir = resolve_base_path(cfg)
    if is_hf_model_dir(base_dir) or cfg.base.path != "embedded":
        return check_base(cfg)
    log_path = cfg.home / "logs" / "base-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fn(f"converting the embedded base model into {base_dir} (once; log: {log_path})")
    with open(log_path, "ab") as out:
        done = subprocess.run([sys.executable, "-m", "kaizenlm.cli", "base", "build", "--no-register",
                               "--out", str(base_dir)], stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the base model failed (exit {done.returncode}); see {log_path}")
    return check_base(cfg)


def base_version_config(base_dir: Path) -> dict:
    """What a base version records: its source directory and, for a model kaizenlm built, where it came from."""
    marker = base_marker(base_dir)
    return {"base_path": str(base_dir), **{k: marker[k] for k in ("name", "source", "content_hash") if k in marker}}


def register_first_champion(registry, base_dir: Path, actor: str) -> dict | None:
    """Register `base_dir` as a `base` version and point champion at it, unless champion is set.

    registry: a kaizenlm.registry.client.RegistryClient (through the controller, the DuckDB file,
    or a connection inside the controller). Returns the alias move, or None when there was a champion.
    """
    if CHAMPION in registry.list_aliases():
        return None
    version = registry.register_version("base", str(base_dir), config=base_version_config(base_dir),
                                        status="promoted", note="the first base model")
    return registry.set_alias(CHAMPION, version["version_id"], reason="first base model", actor=actor)
