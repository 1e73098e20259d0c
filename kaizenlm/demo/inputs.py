"""The demo's evaluation suite, as a file a deployment would configure (`[eval] suite_path`):
its domain exam (held-out phrasings of the 48 facts, each with the fact's value as the string
an answer must state), the shipped multiple-choice general questions (kaizenlm/base/data) for
retention, and its out-of-scope questions with the refusal it expects.
Nothing outside the demo builds this: a deployment brings its own suite or has one built
from its traffic (docs/TRAINING.md)."""

from __future__ import annotations

from pathlib import Path

from kaizenlm.base.general import choice_suite_rows
from kaizenlm.demo.domain import Domain, build_domain
from kaizenlm.demo.users import must_include
from kaizenlm.eval.suite import Suite, write_suite


def demo_suite(seed: int = 0, domain: Domain | None = None) -> Suite:
    domain = domain or build_domain(seed)
    by_answer = {f.answer: f for f in domain.facts}
    return Suite(
        domain=[{"prompt": r["prompt"], "reference": r["reference"],
                 "must_include": must_include(by_answer[r["reference"]].value)} for r in domain.exam_rows()],
        general=choice_suite_rows(),
        refusal=[{"prompt": r["prompt"], "reference": r["response"]} for r in domain.refusal_rows(exam=True)],
        source=f"kaizenlm.demo (seed {seed})",
    )


def write_demo_suite(folder: Path, seed: int, domain: Domain | None = None) -> Path:
    """Write suite.jsonl into folder; returns its path."""
    return write_suite(Path(folder) / "suite.jsonl", demo_suite(seed, domain))
