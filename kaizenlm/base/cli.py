"""`kaizen base build|show`: prepare the base model every adapter is trained on.

`build` converts the embedded SmolLM2-135M-Instruct once into a Hugging Face directory under
$KAIZEN_HOME (or checks the model `[base] path` names), registers it as the first champion when
there is none (through the controller when it runs), and has it answer the shipped general
prompts once (the self-distillation targets of replay and the KL anchor; cached by content).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kaizenlm.base.model import base_marker, is_hf_model_dir, resolve_base_path
from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "build the base model: convert the embedded SmolLM2 (or check base.path), register it, answer general prompts"
EXAMPLE = "kaizen base build && kaizen base show"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build", "show"],
                   help="build: convert/check, register, answer general prompts; show: what is built")
    p.add_argument("--out", help="where the embedded model is converted to (default: <home>/models/base-embedded)")
    p.add_argument("--force", action="store_true", help="convert again even if the directory holds a model")
    p.add_argument("--no-register", action="store_true", help="do not register it as the first champion")
    p.add_argument("--no-answers", action="store_true", help="do not answer the general prompts now")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args, cfg) -> int:
    base_dir = Path(args.out).expanduser() if args.out else resolve_base_path(cfg)
    if args.action == "show":
        return _show(base_dir, cfg, args.json)
    report: dict = {"base_dir": str(base_dir)}
    if cfg.base.path == "embedded" or args.out:
        if args.force or not is_hf_model_dir(base_dir):
            from kaizenlm.base.embedded import EmbeddedModelMissing, convert_embedded

            # Progress to stderr: stdout carries the report (JSON with --json).
            print(f"converting the embedded base model into {base_dir} ...", file=sys.stderr, flush=True)
            try:
                report["converted"] = convert_embedded(base_dir)
            except EmbeddedModelMissing as e:
                raise UsageError(str(e)) from None
    elif not is_hf_model_dir(base_dir):
        raise UsageError(f"base.path {base_dir} holds no Hugging Face model (no config.json); "
                         "point [base] path at a causal LM directory")
    if not args.no_register:
        report["registered"] = _register(cfg, base_dir)
    if not args.no_answers:
        report["general_answers"] = _answer(cfg, base_dir, registered=not args.no_register)
    print(json.dumps(report, indent=2, default=str) if args.json else _text(report))
    return 0


def _register(cfg, base_dir: Path) -> dict | None:
    from kaizenlm.base.champion import register_first_champion
    from kaizenlm.registry.client import RegistryClient
    from kaizenlm.registry.errors import RegistryError

    try:
        return register_first_champion(RegistryClient(cfg), base_dir, actor="kaizen base build")
    except RegistryError as e:
        raise UsageError(f"registering {base_dir} failed: {e}") from None


def _answer(cfg, base_dir: Path, registered: bool) -> dict:
    """The general answers of the base (of its registered copy when `registered`; the embedded
    model's are keyed by its content, so the built directory and the copy share them), computed in
    this process when missing: the process that has just converted the model has torch and
    transformers loaded already (a child would import them again, ~9 s)."""
    from kaizenlm.base.general import configured_answers_paths, write_answers

    # --no-register (the controller's child): never ask the registry, whose controller is busy starting.
    target = (_registered_base_dir(cfg) if registered else None) or base_dir
    train_path, heldout_path = configured_answers_paths(cfg, target)
    if not (train_path.is_file() and heldout_path.is_file()):
        import torch

        print(f"answering the general prompts with the base {target} (once per base)", file=sys.stderr, flush=True)
        torch.set_num_threads(cfg.base.threads)
        train_path, heldout_path = write_answers(target, cfg.home, cfg.base.general_prompts_path or None,
                                                 cfg.base.general_max_new_tokens, cfg.base.general_answers,
                                                 cfg.base.precision)
    return {"replay": str(train_path), "heldout": str(heldout_path)}


def _registered_base_dir(cfg) -> Path | None:
    from kaizenlm.registry.aliases import CHAMPION
    from kaizenlm.registry.client import RegistryClient
    from kaizenlm.registry.lineage import model_dirs

    client = RegistryClient(cfg)
    champion = client.list_aliases().get(CHAMPION)
    if champion is None:
        return None
    base_dir, _ = model_dirs(client.show(champion), client.show)
    return Path(base_dir) if base_dir else None


def _show(base_dir: Path, cfg, as_json: bool) -> int:
    if not is_hf_model_dir(base_dir):
        raise UsageError(f"{base_dir} holds no model yet; run `kaizen base build`")
    report = {"base_dir": str(base_dir), "marker": base_marker(base_dir)}
    print(json.dumps(report, indent=2) if as_json else _text(report))
    return 0


def _text(report: dict) -> str:
    lines = [f"base model: {report['base_dir']}"]
    marker = report.get("converted") or report.get("marker")
    if marker:
        lines.append(f"  {marker.get('name')} from {marker.get('source')}, {marker.get('parameters'):,} parameters, "
                     f"content hash {str(marker.get('content_hash'))[:16]}")
    if "registered" in report:
        move = report["registered"]
        lines.append(f"  registered as {move['to_version']} and made champion" if move
                     else "  a champion exists already: not registered again")
    if "general_answers" in report:
        lines.append(f"  general answers: {report['general_answers']['replay']}")
    return "\n".join(lines)


BASE = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
