"""`kaizen eval VERSION`: evaluation against the champion, gates, metrics stored in the
registry (DuckDB path, no controller), and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from serving_helpers import build_adapter, build_tiny_model

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.demo.inputs import demo_suite
from kaizenlm.eval.suite import load_suite, write_suite
from kaizenlm.registry.client import RegistryClient

pytestmark = pytest.mark.integration  # evaluates real (tiny) models: tens of seconds


@pytest.fixture
def registered(kaizen_env, tmp_path):
    """A tiny random base as champion and a LoRA adapter on it, in the registry."""
    # Short answers keep the three evaluations quick; the metrics are the same code path.
    suite = write_suite(tmp_path / "suite.jsonl", demo_suite(0))
    (tmp_path / "kaizen.toml").write_text(f"[eval]\nmax_new_tokens = 6\npairwise_sample = 8\nsuite_path = '{suite}'\n",
                                          encoding="utf-8")
    base_dir = build_tiny_model(tmp_path / "base")
    adapter_dir = build_adapter(base_dir, tmp_path / "adapter", seed=3)
    client = RegistryClient(config_mod.load())
    base = client.register_version("base", base_dir)["version_id"]
    client.set_alias("champion", base, reason="test")
    adapter = client.register_version("adapter", adapter_dir, parent_id=base, status="candidate")["version_id"]
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "index.faiss").write_text("x")
    knowledge = client.register_version("knowledge", tmp_path / "kb")["version_id"]
    return {"client": client, "base": base, "adapter": adapter, "knowledge": knowledge}


def test_eval_compares_with_the_champion_applies_the_gate_and_stores_metrics(registered, capsys):
    assert main(["eval", registered["adapter"], "--json", "--apply-gate"]) == 0
    result = json.loads(capsys.readouterr().out)
    m, against = result["metrics"], result["against"]
    assert result["version_id"] == registered["adapter"] and against["version_id"] == registered["base"]
    assert m["n_exam"] == 144 and 0.0 <= m["domain_exact_match"] <= 1.0 and m["val_perplexity"] > 1.0
    expected_retention = m["general_score"] / against["general_score"] if against["general_score"] > 0 else 1.0
    assert m["retention"] == pytest.approx(expected_retention, abs=1e-4)
    assert m["forgetting"] == pytest.approx(against["general_score"] - m["general_score"], abs=1e-4)
    assert m["pairwise_n"] == 8 and m["judge"] == "reference"
    # Random weights cannot beat the (equally random) champion on the exam: the domain gate fails.
    assert result["gate"]["passed"] is False and result["status"] == "rejected"
    assert any(r.startswith("fail: domain score") for r in result["gate"]["reasons"])
    stored = registered["client"].show(registered["adapter"])
    assert stored["status"] == "rejected" and "domain score" in stored["note"]
    assert stored["metrics"]["retention"] == m["retention"] and stored["metrics"]["gate"]["passed"] is False
    assert stored["metrics"]["evaluated_against"] == registered["base"]
    # The champion's fresh evaluation is stored too: the next comparison with it reuses it.
    champion = registered["client"].show(registered["base"])["metrics"]
    assert champion["general_score"] == against["general_score"] and champion["eval_key"] == m["eval_key"]
    assert "answers" not in champion and "reused" not in champion


def test_eval_without_comparison_or_storing(registered, capsys):
    assert main(["eval", "champion", "--against", "none", "--no-store"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(registered["base"]) and "domain_exact_match:" in out and "gate" not in out
    assert "domain_score" not in registered["client"].show(registered["base"])["metrics"]


def test_eval_bad_input_exits_2_with_a_message(registered, capsys):
    assert main(["eval", "adapter-9999"]) == 2
    assert "adapter-9999" in capsys.readouterr().err
    assert main(["eval", registered["knowledge"]]) == 2
    assert "only base and adapter versions can be evaluated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2 and "the following arguments are required: version" in capsys.readouterr().err
    assert registered["client"].show(registered["adapter"])["status"] == "candidate"  # nothing changed


def test_eval_without_a_suite_says_what_is_missing(registered, tmp_path, capsys):
    (tmp_path / "kaizen.toml").write_text("[eval]\nmax_new_tokens = 6\n", encoding="utf-8")
    assert main(["eval", registered["adapter"]]) == 2
    err = capsys.readouterr().err
    assert "no evaluation suite" in err and "[eval] suite_path" in err
    assert "domain_score" not in registered["client"].show(registered["adapter"])["metrics"]


def test_a_malformed_suite_row_names_the_line_and_field(registered, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "domain", "prompt": "Q?", "reference": "A."}\n{"kind": "domain", "prompt": ""}\n')
    (tmp_path / "kaizen.toml").write_text(f"[eval]\nsuite_path = '{bad}'\n", encoding="utf-8")
    assert main(["eval", registered["adapter"]]) == 2
    assert f"{bad}:2: field 'prompt' must be a non-empty string" in capsys.readouterr().err


def test_stored_metrics_of_the_version_compared_with_are_reused_until_the_suite_changes(registered, tmp_path, capsys):
    client = registered["client"]
    assert main(["eval", "champion", "--against", "none", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)["metrics"]
    assert stored["eval_key"] == client.show(registered["base"])["metrics"]["eval_key"]
    # A marker value only the stored metrics hold: the comparison reads them instead of evaluating again.
    client.set_metrics(registered["base"], {"general_score": 0.123})
    assert main(["eval", registered["adapter"], "--json", "--no-store"]) == 0
    against = json.loads(capsys.readouterr().out)["against"]
    assert against["reused"] is True and against["general_score"] == 0.123
    # One exam row changed: measured on other rows, the stored metrics no longer count.
    suite = load_suite(tmp_path / "suite.jsonl")
    suite.domain[0]["reference"] += " (changed)"
    write_suite(tmp_path / "suite.jsonl", suite)
    assert main(["eval", registered["adapter"], "--json", "--no-store"]) == 0
    against = json.loads(capsys.readouterr().out)["against"]
    assert against["reused"] is False and against["general_score"] != 0.123


def test_fail_fast_stops_after_a_failing_retention_and_rejects(registered, capsys):
    client = registered["client"]
    assert main(["eval", "champion", "--against", "none", "--json"]) == 0
    capsys.readouterr()
    # A champion general score no model reaches: the candidate's retention fails whatever it says.
    client.set_metrics(registered["base"], {"general_score": 5.0})
    assert main(["eval", registered["adapter"], "--json", "--apply-gate", "--fail-fast"]) == 0
    result = json.loads(capsys.readouterr().out)
    m = result["metrics"]
    assert "stopped_early" in m and "domain_score" not in m and "refusal_rate" not in m and "eval_key" not in m
    assert m["n_general"] == 320 and 0.0 < m["general_score"] < 1.0
    assert m["retention"] == pytest.approx(m["general_score"] / 5.0, abs=1e-4)
    reasons = result["gate"]["reasons"]
    assert reasons[0].startswith("fail: general-skill retention") and len(reasons) == 3
    assert result["status"] == "rejected" and client.show(registered["adapter"])["status"] == "rejected"
    # Partial metrics never stand in for an evaluation of this version later.
    assert "eval_key" not in client.show(registered["adapter"])["metrics"]
