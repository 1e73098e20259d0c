"""The production path: a deployment that brings its own model, evaluation suite, general data
and traffic is trained and judged on those alone. No demo string ("Kaizen Cloud", the demo's
refusal sentence, its general-skill prompts, its exam) reaches the snapshot, the training rows,
the evaluation or the registry. A real retrain: the monthly pipeline with its child job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from feedback_helpers import EventLog
from serving_helpers import build_tiny_model

from kaizenlm.config import (
    BaseModelConfig,
    Config,
    CurationConfig,
    EvalConfig,
    LoraDPOConfig,
    LoraSFTConfig,
    PathsConfig,
    RetrainConfig,
)
from kaizenlm.demo.domain import DOMAIN_NAME, REFUSAL, build_domain
from kaizenlm.demo.general import general_skills
from kaizenlm.eval.cli import evaluate_version
from kaizenlm.eval.suite import Suite, write_suite
from kaizenlm.ingest import store
from kaizenlm.registry import versions
from kaizenlm.registry.client import RegistryClient

pytestmark = pytest.mark.integration

# (question users ask, answer, the suite's own phrasing of the question: held out of training)
FACTS = [("How many gears does the Acme Trail bike have?", "The Acme Trail has 21 gears.",
          "Tell me the gear count of my Trail."),
         ("What frame is the Acme City bike made of?", "The Acme City has an aluminium frame.",
          "Is the City frame steel or something else?"),
         ("How long is the Acme warranty?", "Acme frames carry a 5 year warranty.",
          "For what period are frames guaranteed?"),
         ("Which tyre size fits the Acme Trail?", "The Acme Trail takes 29 inch tyres.",
          "Trail owner here: what wheels should I buy?"),
         ("Can I return an Acme bike?", "Acme bikes can be returned within 14 days.",
          "Is sending a purchase back allowed?"),
         ("Where are Acme bikes built?", "Acme bikes are built in Porto.",
          "In which city does the factory stand?")]
# More things riders ask (not in the suite): enough SFT rows for the 8% replay to add rows.
MORE = [("Does Acme sell electric bikes?", "Yes, the Acme Volt is electric."),
        ("How heavy is the Acme Volt battery?", "The Acme Volt battery weighs 3 kilograms."),
        ("What does a service at Acme cost?", "A standard Acme service costs 60 euros."),
        ("Do Acme bikes come with lights?", "Acme City bikes come with front and rear lights."),
        ("Is there a kids model from Acme?", "The Acme Sprout is sized for children."),
        ("How do I book a test ride?", "Test rides are booked on the Acme website."),
        ("Which pedals ship with the Trail?", "The Acme Trail ships with flat pedals."),
        ("Can I pay for my bike in instalments?", "Acme offers payment in 12 monthly instalments.")]
REFUSE = "I can only help with Acme bikes."
GENERAL = [{"prompt": f"Spell {w} backwards.", "response": w[::-1]} for w in
           ("wheel", "saddle", "chain", "pedal", "brake", "spoke", "helmet", "bell", "frame", "gear")]


def demo_strings() -> set[str]:
    domain = build_domain(0)
    train, heldout = general_skills(0, domain=domain)
    return ({DOMAIN_NAME, REFUSAL} | {r["prompt"] for r in train + heldout}
            | {r["prompt"] for r in domain.exam_rows()} | set(domain.out_of_scope_exam))


def leaks(text: str, strings: set[str]) -> list[str]:
    return sorted(s for s in strings if s in text)


def test_a_deployment_is_trained_and_judged_on_its_own_data_only(tmp_path):
    trained_and_judged_on_own_data(tmp_path, build_tiny_model(tmp_path / "models" / "acme-base"), max_new_tokens=4)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_deployment_of_a_real_model_directory_is_trained_and_judged_on_its_own_data_only(tmp_path, smollm2):
    """The converted SmolLM2 copied elsewhere, without kaizenlm's marker: a user's own model
    (the real-model recipe defaults, no embedded overrides)."""
    base = tmp_path / "models" / "acme-smollm2"
    shutil.copytree(smollm2, base, ignore=shutil.ignore_patterns("kaizen_base.json"))
    trained_and_judged_on_own_data(tmp_path, base, max_new_tokens=16)


def trained_and_judged_on_own_data(tmp_path: Path, base: Path, max_new_tokens: int) -> None:
    suite = Suite(
        domain=[{"prompt": asked, "reference": a} for _, a, asked in FACTS],
        general=[{"prompt": "Spell tyre backwards.", "reference": "eryt"},
                 {"prompt": "Spell lock backwards.", "reference": "kcol"}],
        refusal=[{"prompt": "Who won the football match?", "reference": REFUSE},
                 {"prompt": "What is the weather in Oslo?", "reference": REFUSE}])
    suite_path = write_suite(tmp_path / "acme-suite.jsonl", suite)
    replay_path = tmp_path / "acme-general.jsonl"
    replay_path.write_text("".join(json.dumps(r) + "\n" for r in GENERAL), encoding="utf-8")
    cfg = Config(paths=PathsConfig(home=str(tmp_path / "home")), base=BaseModelConfig(path=str(base)),
                 curation=CurationConfig(window_days=0, replay_path=str(replay_path), eval_fraction=0.1),
                 eval=EvalConfig(suite_path=str(suite_path), max_new_tokens=max_new_tokens, pairwise_sample=4,
                                 similarity=False),
                 sft=LoraSFTConfig(epochs=1.0, val_fraction=0.0), dpo=LoraDPOConfig(epochs=1.0, val_fraction=0.0),
                 retrain=RetrainConfig(cpu_threads=1))
    log = EventLog()
    for i in range(6):
        for j, (question, answer) in enumerate([(q, a) for q, a, _ in FACTS] + MORE):
            turn = log.turn(question, answer, user_id=f"rider-{i}", conversation_id=f"c{i}-{j}")
            log.feedback(turn, thumbs=1, rating=5)
        wrong = log.turn(FACTS[0][0], "The Acme Trail has 3 gears.", user_id=f"rider-{i}", conversation_id=f"w{i}")
        log.feedback(wrong, thumbs=-1, correction=FACTS[0][1])
    con = store.connect(cfg.duckdb_path)
    con.execute("BEGIN")
    store.insert_events(con, log.envelopes)
    con.execute("COMMIT")

    from kaizenlm.retrain.pipeline import retrain_once

    summary = retrain_once(cfg, con, start_ab=False)
    assert summary["status"] == "trained", summary
    strings = demo_strings()
    snapshot_dir = cfg.snapshots_dir / summary["snapshot"]
    tables = {p.stem: pq.read_table(p).to_pylist() for p in snapshot_dir.glob("*.parquet")}
    assert len(tables["sft_train"]) > 0 and any(r["source"] == "replay" for r in tables["sft_train"])
    snapshot_text = json.dumps(tables, default=str) + (snapshot_dir / "manifest.json").read_text()
    assert leaks(snapshot_text, strings) == []  # the training rows are the snapshot's rows
    assert leaks(snapshot_text, set(suite.prompts())) == []  # the suite's questions are held out of training

    candidate = versions.get_version(con, summary["candidate"])
    evaluation = json.loads((Path(candidate.artifact_dir) / "evaluation.json").read_text())
    for side in ("candidate", "champion"):
        metrics = evaluation[side]
        assert metrics["suite"] == str(suite_path)
        assert metrics["n_exam"] == 6 and metrics["n_general"] == 2 and metrics["n_refusal"] == 2
        assert set(metrics["answers"]) == {r["prompt"] for r in suite.domain}
    registry_text = json.dumps([candidate.to_dict(), evaluation], default=str)
    assert leaks(registry_text, strings) == []
    assert candidate.config["suite"] == str(suite_path)

    # A second retrain reuses the champion's stored metrics (measured on this suite by the first),
    # which carry no answers: the pairwise comparison asks the champion model again.
    stored = versions.get_version(con, summary["champion"]).metrics
    assert stored["suite"] == str(suite_path) and "answers" not in stored
    again = retrain_once(cfg, con, start_ab=False)
    assert again["status"] == "trained", again
    second = json.loads((Path(versions.get_version(con, again["candidate"]).artifact_dir) / "evaluation.json")
                        .read_text())
    assert second["champion"]["domain_score"] == stored["domain_score"]
    assert "answers" not in second["champion"] and second["candidate"]["pairwise_n"] == 4

    # `kaizen eval` (its function, on this process's connection) reads the same suite only.
    result = evaluate_version(cfg, RegistryClient(cfg, con=con), summary["candidate"], "champion", store=False)
    metrics = result["metrics"]
    assert metrics["suite"] == str(suite_path)
    assert (metrics["n_exam"], metrics["n_general"], metrics["n_refusal"]) == (6, 2, 2)
    assert leaks(json.dumps(result, default=str), strings) == []
    con.close()
