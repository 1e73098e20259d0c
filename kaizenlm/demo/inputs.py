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


def demo_suite(seed: int = 0, domain: Domain | None = None, per_fact: int | None = None) -> Suite:
    """per_fact: held-out phrasings per fact in the exam (all of them: None); refusal rows shrink alike."""
    domain = domain or build_domain(seed)
    exam = [{"prompt": q, "reference": f.answer, "must_include": must_include(f.value)}
            for f in domain.facts for q in f.exam_paraphrases[:per_fact]]
    refusal = [{"prompt": r["prompt"], "reference": r["response"]} for r in domain.refusal_rows(exam=True)]
    if per_fact is not None:
        refusal = refusal[: len(refusal) * per_fact // max(1, len(domain.facts[0].exam_paraphrases))]
    return Suite(domain=exam, general=choice_suite_rows(), refusal=refusal, source=f"kaizenlm.demo (seed {seed})")


def write_demo_suite(folder: Path, seed: int, domain: Domain | None = None, per_fact: int | None = None) -> Path:
    """Write suite.jsonl into folder; returns its path."""
    return write_suite(Path(folder) / "suite.jsonl", demo_suite(seed, domain, per_fact))
