"""The demo's data inputs, as files a deployment would configure: its evaluation suite
(`[eval] suite_path`) and its general rows for replay and the KL anchor (`[curation] replay_path`).
Nothing outside the demo builds these: a deployment brings its own (docs/TRAINING.md)."""

from __future__ import annotations

from pathlib import Path

from kaizenlm.demo.domain import Domain, build_domain
from kaizenlm.demo.general import general_skills, write_general_jsonl
from kaizenlm.eval.suite import Suite, write_suite


def demo_suite(seed: int = 0, domain: Domain | None = None) -> Suite:
    """The domain exam (held-out paraphrases), the held-out general skills and the refusal exam."""
    domain = domain or build_domain(seed)
    _, heldout = general_skills(seed, domain=domain)
    return Suite(
        domain=[{"prompt": r["prompt"], "reference": r["reference"]} for r in domain.exam_rows()],
        general=[{"prompt": r["prompt"], "reference": r["response"], "skill": r["skill"]} for r in heldout],
        refusal=[{"prompt": r["prompt"], "reference": r["response"]} for r in domain.refusal_rows(exam=True)],
        source=f"kaizenlm.demo (seed {seed})",
    )


def write_demo_inputs(folder: Path, seed: int, domain: Domain | None = None) -> tuple[Path, Path]:
    """Write suite.jsonl and replay.jsonl (the general-skills training rows, with their skill) into folder."""
    domain = domain or build_domain(seed)
    train, _ = general_skills(seed, domain=domain)
    suite_path = write_suite(Path(folder) / "suite.jsonl", demo_suite(seed, domain))
    replay_path = write_general_jsonl(Path(folder) / "replay.jsonl", train)
    return suite_path, replay_path
