"""An evaluation suite is data: JSON-lines rows the retrain's evaluation and `kaizen eval` ask.

    {"kind": "domain",  "prompt": "How long is the refund window?", "reference": "30 days.", "must_include": ["30"]}
    {"kind": "general", "prompt": "Reverse the word cat.", "reference": "tac", "skill": "reverse"}
    {"kind": "general", "prompt": "What is the capital of France?", "reference": "Paris",
     "choices": ["Lyon", "Paris", "Berlin", "Madrid"]}
    {"kind": "refusal", "prompt": "What is the weather in Paris?", "reference": "Sorry, I can only help with ..."}

- domain: what the deployment's users ask; the answer should match `reference` (and contain
  every string of `must_include`, when given).
- general: skills the model had before any retrain; they measure retention (forgetting). Rows
  with `choices` are scored by log-likelihood (the reference is the right choice), the others
  by agreement with `reference`.
- refusal: questions the assistant should decline; `reference` is the refusal it gives.

The suite comes from `[eval] suite_path` (or a Suite object the caller passes). There is no
built-in default: a deployment is never judged by the demo's exam. `kaizen demo` writes its
own suite file and configures it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("domain", "general", "refusal")


class SuiteError(ValueError):
    """The suite is missing or a row is malformed; the message names the file, line and field."""


@dataclass
class Suite:
    domain: list[dict] = field(default_factory=list)
    """{prompt, reference, must_include?}: the domain exam."""
    general: list[dict] = field(default_factory=list)
    """{prompt, reference, skill?}: general skills whose retention is measured."""
    refusal: list[dict] = field(default_factory=list)
    """{prompt, reference}: out-of-scope questions; reference is the expected refusal."""
    source: str = ""
    """Where the rows came from (a path), recorded with the metrics."""

    def prompts(self) -> list[str]:
        """Every prompt the evaluation asks: held out of training data and of the KL anchor."""
        return [r["prompt"] for rows in (self.domain, self.general, self.refusal) for r in rows]

    def refusals(self) -> set[str]:
        """The refusal texts the suite expects (an answer equal to one counts as a refusal)."""
        return {r["reference"] for r in self.refusal}

    def rows(self) -> list[dict]:
        return [{"kind": kind, **r} for kind in KINDS for r in getattr(self, kind)]

    def content_hash(self) -> str:
        """sha256 of the rows (what a version records, so a later change of the file shows)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.rows(), sort_keys=True).encode()).hexdigest()


def load_suite(path: str | Path) -> Suite:
    """Read a suite file; a malformed row raises SuiteError naming the line and the field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SuiteError(f"eval.suite_path: {path} does not exist; write a JSONL file of "
                         "{kind, prompt, reference} rows (docs/TRAINING.md, 'Evaluation suites')")
    suite = Suite(source=str(path))
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                kind, row = _parse_row(line, f"{path}:{lineno}")
                getattr(suite, kind).append(row)
    if not suite.domain:
        raise SuiteError(f"{path}: no row of kind 'domain'; the gate needs a domain exam")
    return suite


def _parse_row(line: str, where: str) -> tuple[str, dict]:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise SuiteError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a JSON object")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SuiteError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    for name in ("prompt", "reference"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise SuiteError(f"{where}: field '{name}' must be a non-empty string")
    row = {"prompt": raw["prompt"], "reference": raw["reference"]}
    must = raw.get("must_include")
    if must is not None:
        if not isinstance(must, list) or not all(isinstance(m, str) and m for m in must):
            raise SuiteError(f"{where}: field 'must_include' must be a list of non-empty strings")
        row["must_include"] = must
    for name in ("skill", "turn_id"):  # optional labels: a skill for retention per skill, the turn a row came from
        if raw.get(name) is not None:
            row[name] = str(raw[name])
    choices = raw.get("choices")
    if choices is not None:
        if kind != "general" or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices) or len(set(choices)) != len(choices):
            raise SuiteError(f"{where}: field 'choices' must be a list of 2 or more distinct non-empty strings "
                             "(general rows only)")
        if raw["reference"] not in choices:
            raise SuiteError(f"{where}: field 'reference' must be one of the choices (the correct one)")
        row["choices"] = choices
    return kind, row


def write_suite(path: str | Path, suite: Suite) -> Path:
    """Write the suite as JSON lines (domain, then general, then refusal rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in suite.rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def configured_suite(eval_cfg) -> Suite:
    """The suite `[eval] suite_path` names; SuiteError saying what is missing when none is set."""
    if not eval_cfg.suite_path:
        raise SuiteError("no evaluation suite: set [eval] suite_path to a JSONL file of {kind: domain|general|"
                         "refusal, prompt, reference} rows (docs/TRAINING.md, 'Evaluation suites'); the gate "
                         "cannot judge a candidate without one")
    return load_suite(eval_cfg.suite_path)
