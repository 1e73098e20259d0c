"""`kaizen eval VERSION`: evaluate a registered model version against the champion.

The same evaluation the monthly retrain runs (kaizenlm.eval.evaluate) on the suite that
`[eval] suite_path` names (kaizenlm.eval.suite; no suite configured -> exit 2 saying so): domain exam
(exact match, token F1, ROUGE-L), general-skill score with retention and forgetting against
the version compared with, out-of-scope refusal, validation perplexity and the blind
pairwise comparison (reference judge, or the OpenAI-compatible judge at --judge-url /
eval.judge_url). The gates are reported; with --apply-gate a failing version is marked
`rejected` with the failing numbers; --fail-fast measures the general skills first and stops
there when retention already fails (the rest cannot save a gate that failed). The metrics are written into the registry (through the
controller when it runs) unless --no-store.
"""

from __future__ import annotations

import dataclasses
import json

from kaizenlm.command import Command
from kaizenlm.config import Config
from kaizenlm.errors import UsageError
from kaizenlm.registry.client import RegistryClient
from kaizenlm.registry.errors import RegistryError
from kaizenlm.registry.lineage import model_dirs

HELP = "evaluate a model version: domain exam, retention and forgetting vs the champion, refusal, perplexity"
EXAMPLE = "kaizen eval adapter-0002 --json"
MODEL_KINDS = ("base", "adapter")


def add_arguments(p) -> None:
    p.add_argument("version", help="the version to evaluate (a version id or an alias, e.g. challenger)")
    p.add_argument("--against", default="champion",
                   help="the version or alias to compare with (default: champion; 'none' skips the comparison)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible judge for the pairwise comparison "
                   "(default: eval.judge_url; empty = the reference-based judge)")
    p.add_argument("--apply-gate", action="store_true", help="mark the version 'rejected' when a gate fails")
    p.add_argument("--fail-fast", action="store_true",
                   help="score the general skills first and stop when retention already fails the gate "
                        "(a bad candidate is rejected in a third of the time; its domain and refusal go unmeasured)")
    p.add_argument("--no-store", action="store_true", help="do not write the metrics into the registry")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _resolve(client: RegistryClient, name: str) -> dict:
    aliases = client.list_aliases()
    version = client.show(aliases.get(name, name))
    if version["kind"] not in MODEL_KINDS:
        raise UsageError(f"version: {version['version_id']} is a {version['kind']} version; "
                         "only base and adapter versions can be evaluated")
    return version


def model_spec(client: RegistryClient, version: dict) -> str | tuple[str, str]:
    """A base version's directory, or (base directory, adapter directory) for an adapter."""
    base_dir, adapter_dir = model_dirs(version, client.show)
    if version["kind"] == "adapter" and adapter_dir is None:
        raise UsageError(f"version: no adapter_config.json under {version['artifact_dir']}; the artifact is missing")
    if base_dir is None:
        raise UsageError(f"version: {version['version_id']} has no base model (config.json) in its lineage")
    return (base_dir, adapter_dir) if adapter_dir else base_dir


def evaluate_version(cfg: Config, client: RegistryClient, name: str, against: str | None = "champion",
                     apply_gate: bool = False, store: bool = True, fail_fast: bool = False) -> dict:
    """Evaluate `name` (and `against`, when given) and return the result; see the module docstring.
    fail_fast: measure the general skills first and stop there when retention already fails."""
    from kaizenlm.eval.evaluate import evaluate, gate, retention
    from kaizenlm.eval.suite import SuiteError
    from kaizenlm.eval.traffic_suite import suite_for

    try:
        suite = suite_for(cfg)
    except SuiteError as e:
        raise UsageError(str(e)) from None
    version = _resolve(client, name)
    base_answers = _base_answers_reader(cfg)
    baseline, compare_with = None, None
    if against and against.lower() != "none":
        baseline_version = _resolve(client, against)
        if baseline_version["version_id"] != version["version_id"]:
            baseline, compare_with = _baseline(cfg, client, baseline_version, suite, base_answers)
    spec = model_spec(client, version)
    floor = cfg.eval.min_retention * baseline["general_score"] if fail_fast and baseline is not None else None
    metrics = evaluate(spec, suite, cfg.eval, champion=compare_with, base_answers=base_answers(spec),
                       general_floor=floor)
    metrics.pop("answers", None)
    result = {"version_id": version["version_id"], "metrics": metrics, "against": None, "gate": None}
    if baseline is not None:
        metrics["retention"] = round(retention(metrics, baseline), 4)
        metrics["forgetting"] = round(baseline["general_score"] - metrics["general_score"], 4)
        passed, reasons = gate(metrics, baseline, cfg.eval)
        result["gate"] = {"passed": passed, "reasons": reasons}
        result["against"] = {"version_id": baseline["version_id"], "reused": baseline.get("reused", False),
                             **{k: baseline[k] for k in ("domain_score", "general_score", "refusal_rate")}}
    if store and baseline is not None and not baseline.get("reused"):  # the next comparison reuses them
        client.set_metrics(baseline["version_id"], {k: v for k, v in baseline.items()
                                                    if k not in ("answers", "version_id", "reused")})
    if store:
        client.set_metrics(version["version_id"], {**metrics, **({"gate": result["gate"]} if result["gate"] else {}),
                                                   "evaluated_against": baseline and baseline["version_id"]})
    if apply_gate and result["gate"] and not result["gate"]["passed"]:
        failing = "; ".join(r for r in result["gate"]["reasons"] if r.startswith("fail"))
        client.set_status(version["version_id"], "rejected", note=failing)
        result["status"] = "rejected"
    return result


def _baseline(cfg: Config, client: RegistryClient, version: dict, suite, base_answers) -> tuple[dict, object]:
    """The metrics of the version compared with, and what the pairwise comparison asks: its stored
    metrics when they were measured under the same evaluation key (the retrain evaluated the
    candidate that is champion now; no answers are stored, so its model answers the pairwise
    sample again), else a fresh evaluation (whose answers are reused)."""
    from kaizenlm.eval.evaluate import evaluate, evaluation_key, reusable

    spec = model_spec(client, version)
    answers = base_answers(spec)
    stored = version.get("metrics") or {}
    if reusable(stored, evaluation_key(suite, cfg.eval, answers)):
        return {**stored, "version_id": version["version_id"], "reused": True}, spec
    baseline = evaluate(spec, suite, cfg.eval, base_answers=answers)
    baseline["version_id"] = version["version_id"]
    return baseline, baseline


def _base_answers_reader(cfg: Config):
    """model spec -> its base's own answers to the held-out general prompts (general_agreement's
    references), as the monthly retrain evaluates with them; none when the base has not answered
    them yet. Read once per base: a version and the one it is compared with usually share it."""
    from kaizenlm.base.general import configured_answers_paths, read_jsonl

    read: dict[str, list[dict]] = {}

    def answers(spec) -> list[dict]:
        base_dir = spec[0] if isinstance(spec, tuple) else spec
        if base_dir not in read:
            read[base_dir] = read_jsonl(configured_answers_paths(cfg, base_dir)[1], missing_ok=True)
        return read[base_dir]

    return answers


def run(args, cfg: Config) -> int:
    if args.judge_url is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, judge_url=args.judge_url))
    client = RegistryClient(cfg)
    try:
        result = evaluate_version(cfg, client, args.version, args.against, args.apply_gate, not args.no_store,
                                  args.fail_fast)
    except RegistryError as e:
        raise UsageError(f"{e}; list versions with `kaizen registry list`") from None
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        print(_text(result))
    return 0


def _text(result: dict) -> str:
    m = result["metrics"]
    lines = [f"{result['version_id']}"]
    keys = ("domain_exact_match", "domain_token_f1", "domain_rouge_l", "general_score", "retention", "forgetting",
            "refusal_rate", "val_perplexity", "pairwise_win_rate")
    for key in keys:
        if key in m:
            lines.append(f"  {key + ':':22}{m[key]:.3f}" if isinstance(m[key], float) else f"  {key}: {m[key]}")
    if m.get("stopped_early"):
        lines.append(f"  stopped early: {m['stopped_early']}")
    if result["against"]:
        a = result["against"]
        lines.append(f"  against {a['version_id']}: domain {a['domain_score']:.3f}, general {a['general_score']:.3f}, "
                     f"refusal {a['refusal_rate']:.3f}")
        lines += [f"  gate {r}" for r in result["gate"]["reasons"]]
    if result.get("status"):
        lines.append(f"  status -> {result['status']}")
    return "\n".join(lines)


EVAL = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
