"""A/B experiments on a real DuckDB file: start/stop rules, statistics from simulated
turns and feedback, each decision applied (promote, rollback, keep champion, continue) and
stored with its numbers, routing state from the registry, and `kaizen ab` without a
controller."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from kaizenlm import config as config_mod
from kaizenlm.abtest import experiments as ab
from kaizenlm.abtest.routing import assign_arm
from kaizenlm.cli import main
from kaizenlm.ingest.events import make_envelope
from kaizenlm.ingest.store import connect, insert_events
from kaizenlm.registry import aliases as al
from kaizenlm.registry import versions as vs
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path):
    return config_mod.from_dict({"paths": {"home": str(tmp_path / "home")}})


@pytest.fixture
def con(cfg):
    c = connect(cfg.duckdb_path)
    yield c
    c.close()


def new_version(con, cfg, kind="base", parent_id=None, files=None, tag="") -> str:
    src = cfg.home / "src" / f"{kind}-{len(vs.list_versions(con))}{tag}"
    src.mkdir(parents=True)
    for name, text in (files or {"weights.bin": src.name}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    return vs.register_version(con, kind, src, cfg.home, parent_id=parent_id).version_id


@pytest.fixture
def two(con, cfg):
    """champion -> base-0001; base-0002 registered, not serving."""
    v1, v2 = new_version(con, cfg), new_version(con, cfg)
    al.set_alias(con, "champion", v1, reason="first")
    return v1, v2


def simulate(con, exp: ab.Experiment, users: int, p_up: dict, error_rate: dict | None = None,
             latency: dict | None = None, seed: int = 0, at: datetime = T0 + timedelta(minutes=5)) -> dict:
    """Turns (1-3 per user, arm by the real hash) with thumbs up with probability p_up[arm],
    empty answers (backend failures) with probability error_rate[arm]. Returns users per arm."""
    rng = random.Random(seed)
    events, per_arm = [], {"champion": 0, "challenger": 0}
    for u in range(users):
        user = f"user-{seed}-{u}"
        arm = assign_arm(exp.experiment_id, user, exp.split)
        per_arm[arm] += 1
        version = exp.challenger if arm == "challenger" else exp.champion
        for k in range(rng.randint(1, 3)):
            turn_id = f"t-{seed}-{u}-{k}"
            failed = rng.random() < (error_rate or {}).get(arm, 0.0)
            lo, hi = (latency or {}).get(arm, (100.0, 110.0))
            ts = (at + timedelta(seconds=u)).timestamp()
            events.append(make_envelope("turn", {
                "turn_id": turn_id, "conversation_id": f"c-{seed}-{u}", "user_id": user, "model_version": version,
                "variant": arm, "experiment_id": exp.experiment_id, "messages": [{"role": "user", "content": "q"}],
                "response": "" if failed else "an answer", "latency_ms": rng.uniform(lo, hi)}, ts=ts))
            if not failed:
                thumbs = 1 if rng.random() < p_up[arm] else -1
                events.append(make_envelope("feedback", {"turn_id": turn_id, "thumbs": thumbs}, ts=ts + 1))
    con.execute("BEGIN")
    insert_events(con, events)
    con.execute("COMMIT")
    return per_arm


def start(con, cfg, challenger, **settings) -> ab.Experiment:
    return ab.start_experiment(con, cfg, challenger, overrides=settings, now=T0, actor="test")


# --------------------------------------------------------------------------------------
# start / stop rules
# --------------------------------------------------------------------------------------


def test_start_records_experiment_and_marks_challenger(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2, mde=0.2)
    assert (exp.experiment_id, exp.alias, exp.champion, exp.challenger, exp.status) == ("exp-0001", "champion", v1,
                                                                                       v2, "running")
    assert exp.split == cfg.ab.split and exp.config["mde"] == 0.2 and exp.config["alpha"] == cfg.ab.alpha
    assert exp.settings(cfg).mde == 0.2  # frozen settings win over the defaults
    assert vs.get_version(con, v2).status == "challenger"
    routing = ab.current_routing(con)
    assert [e.experiment_id for e in routing.experiments] == ["exp-0001"]
    assert routing.aliases == {"champion": v1} and set(routing.targets) == {v1, v2}


def test_start_refusals(con, cfg, two):
    v1, v2 = two
    with pytest.raises(Conflict, match="already serves"):
        start(con, cfg, v1)
    with pytest.raises(NotFound, match="no version"):
        start(con, cfg, "base-0099")
    with pytest.raises(NotFound, match="points at no version"):
        ab.start_experiment(con, cfg, v2, alias="staging")
    with pytest.raises(RegistryError, match="unknown experiment setting 'bogus'"):
        start(con, cfg, v2, bogus=1)
    with pytest.raises(RegistryError, match="ab.split"):
        ab.start_experiment(con, cfg, v2, split=1.5)
    knowledge = new_version(con, cfg, kind="knowledge")
    with pytest.raises(RegistryError, match="only base and adapter"):
        start(con, cfg, knowledge)
    start(con, cfg, v2)
    v3 = new_version(con, cfg)
    with pytest.raises(Conflict, match="already runs on alias 'champion'"):
        start(con, cfg, v3)
    assert len(ab.list_experiments(con)) == 1  # nothing half-written by the refused starts


def test_stop_keeps_champion_or_promotes(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    row = ab.stop_experiment(con, exp.experiment_id, reason="enough", actor="tester")
    assert row["action"] == "stop" and row["applied"]["experiment_status"] == "stopped"
    assert al.get_alias(con, "champion") == v1 and vs.get_version(con, v2).status == "candidate"
    with pytest.raises(Conflict, match="not running"):
        ab.stop_experiment(con, exp.experiment_id)
    exp2 = start(con, cfg, v2)
    row = ab.stop_experiment(con, exp2.experiment_id, promote=True, actor="tester")
    assert row["action"] == "promote" and row["applied"]["alias_move"]["to_version"] == v2
    assert al.get_alias(con, "champion") == v2 and vs.get_version(con, v2).status == "promoted"
    assert [m.actor for m in al.alias_history(con, "champion")] == ["system", "tester"]
    assert ab.current_routing(con).experiments == ()


# --------------------------------------------------------------------------------------
# analysis and decisions
# --------------------------------------------------------------------------------------


def test_better_challenger_is_promoted_with_numbers_stored(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    per_arm = simulate(con, exp, users=1200, p_up={"champion": 0.35, "challenger": 0.65})
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=2))
    assert row["action"] == "promote", row["reason"]
    n = row["numbers"]
    assert n["users"] == per_arm  # users per arm, counted from the turns
    assert n["primary"]["significant"] and n["primary"]["effect"] > 0.2
    assert n["primary"]["mean_challenger"] > n["primary"]["mean_champion"]
    assert set(n["guardrails"]) == {"latency_p95", "error_rate", "regenerate_rate"}
    assert all(g["status"] == "non_inferior" for g in n["guardrails"].values())
    assert al.get_alias(con, "champion") == v2
    history = al.alias_history(con, "champion")
    assert history[-1].action == "set" and history[-1].actor == "ab-analysis" and exp.experiment_id in history[-1].reason
    assert ab.get_experiment(con, exp.experiment_id).status == "promoted"
    stored = ab.decisions_of(con, exp.experiment_id)
    assert stored[0]["numbers"] == json.loads(json.dumps(n)) and stored[0]["applied"]["alias_move"]["to_version"] == v2
    routing = ab.current_routing(con)
    assert routing.aliases["champion"] == v2 and routing.experiments == ()
    assert ab.analyse_running(con, cfg) == []  # nothing runs any more


def test_worse_challenger_is_rolled_back(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    simulate(con, exp, users=1200, p_up={"champion": 0.65, "challenger": 0.35}, seed=1)
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=2))
    assert row["action"] == "rollback" and "significantly worse" in row["reason"]
    assert al.get_alias(con, "champion") == v1 and row["applied"]["alias_move"] is None
    assert vs.get_version(con, v2).status == "rejected"
    assert ab.get_experiment(con, exp.experiment_id).status == "rolled_back"


def test_guardrail_breach_rolls_back_even_when_reward_is_better(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    simulate(con, exp, users=1200, p_up={"champion": 0.5, "challenger": 0.6},
             error_rate={"challenger": 0.3}, seed=2)
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=2))
    assert row["action"] == "rollback" and "guardrail breached" in row["reason"] and "error_rate" in row["reason"]
    assert row["numbers"]["guardrails"]["error_rate"]["status"] == "breach"
    assert row["numbers"]["guardrails"]["error_rate"]["challenger"] == pytest.approx(0.3, abs=0.05)
    assert al.get_alias(con, "champion") == v1


def test_inconclusive_at_max_duration_keeps_champion(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2, max_duration_hours=24, futility_beta=0.0)
    simulate(con, exp, users=300, p_up={"champion": 0.5, "challenger": 0.5}, seed=3)
    [early] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=1))
    assert early["action"] == "continue" and "inconclusive" in early["reason"]
    assert ab.get_experiment(con, exp.experiment_id).status == "running"
    [late] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=25))
    assert late["action"] == "keep_champion" and "max duration" in late["reason"]
    assert late["numbers"]["expired"] is True
    assert al.get_alias(con, "champion") == v1 and vs.get_version(con, v2).status == "rejected"
    # Both looks are stored, newest first; the second used the first as its prior.
    assert [d["action"] for d in ab.decisions_of(con, exp.experiment_id)] == ["keep_champion", "continue"]
    assert late["numbers"]["primary"]["p_value"] <= early["numbers"]["primary"]["p_value"] + 1e-12


def test_too_few_users_continue_and_no_data_is_not_an_error(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(minutes=1))
    assert row["action"] == "continue" and row["numbers"]["users"] == {"champion": 0, "challenger": 0}
    simulate(con, exp, users=40, p_up={"champion": 0.2, "challenger": 0.9}, seed=4)
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(minutes=10))
    assert row["action"] == "continue" and "collecting data" in row["reason"]


def test_turns_of_other_experiments_do_not_count(con, cfg, two):
    v1, v2 = two
    start(con, cfg, v2)
    other = ab.Experiment("exp-other", "champion", v1, v2, 0.5, {}, "running", T0)
    simulate(con, other, users=200, p_up={"champion": 0.9, "challenger": 0.1}, seed=5)
    [row] = ab.analyse_running(con, cfg, now=T0 + timedelta(hours=1))
    assert row["numbers"]["users"] == {"champion": 0, "challenger": 0}


# --------------------------------------------------------------------------------------
# alias moves, rollback, routing targets
# --------------------------------------------------------------------------------------


def test_rollback_moves_alias_back_and_ends_experiment(con, cfg, two):
    v1, v2 = two
    al.set_alias(con, "champion", v2, reason="promoted")
    v3 = new_version(con, cfg)
    exp = start(con, cfg, v3)
    result = ab.rollback(con, reason="bad week", actor="oncall")
    assert result["move"]["from_version"] == v2 and result["move"]["to_version"] == v1
    assert result["move"]["action"] == "rollback" and result["move"]["reason"] == "bad week"
    assert result["stopped_experiments"] == [exp.experiment_id]
    assert ab.get_experiment(con, exp.experiment_id).status == "stopped"
    assert ab.current_routing(con).aliases["champion"] == v1
    with pytest.raises(Conflict, match="no earlier version"):
        ab.rollback(con)


def test_rollback_to_version(con, cfg, two):
    v1, v2 = two
    al.set_alias(con, "champion", v2)
    v3 = new_version(con, cfg)
    al.set_alias(con, "champion", v3)
    result = ab.rollback(con, to_version=v1, reason="back to the start")
    assert result["move"]["to_version"] == v1 and al.get_alias(con, "champion") == v1
    assert [m.action for m in al.alias_history(con, "champion")] == ["set", "set", "set", "rollback"]


def test_alias_moved_outside_the_experiment_ends_it(con, cfg, two):
    v1, v2 = two
    exp = start(con, cfg, v2)
    v3 = new_version(con, cfg)
    move = al.set_alias(con, "champion", v3, reason="manual").to_dict()
    assert ab.alias_moved(con, move) == [exp.experiment_id]
    assert ab.get_experiment(con, exp.experiment_id).status == "stopped"


def test_routing_targets_resolve_adapter_to_its_base(con, cfg):
    base = new_version(con, cfg, files={"config.json": "{}", "model.safetensors": "w"})
    adapter = new_version(con, cfg, kind="adapter", parent_id=base,
                          files={"adapter/adapter_config.json": "{}", "adapter/adapter_model.safetensors": "a"})
    child = new_version(con, cfg, kind="adapter", parent_id=adapter, files={"adapter_config.json": "{}"}, tag="c")
    al.set_alias(con, "champion", adapter)
    state = ab.current_routing(con)
    t = state.targets[adapter]
    assert t.kind == "adapter" and t.model_dir == vs.get_version(con, base).artifact_dir
    assert t.adapter_dir == vs.get_version(con, adapter).artifact_dir + "/adapter"
    assert t.upstream_model == adapter
    assert state.targets[child].model_dir == t.model_dir  # adapter on adapter: walks to the base
    assert state.targets[base].adapter_dir is None
    # Tainted versions are not servable: not a target, and an alias on one is dropped.
    con.execute("UPDATE model_versions SET snapshot_id = 'snap-x' WHERE version_id = ?", [adapter])
    vs.mark_tainted(con, ["snap-x"])
    state = ab.current_routing(con)
    assert adapter not in state.targets and child not in state.targets and "champion" not in state.aliases


# --------------------------------------------------------------------------------------
# CLI without a controller (writes DuckDB directly)
# --------------------------------------------------------------------------------------


def test_cli_ab_without_controller(tmp_path, monkeypatch, capsys):
    home = tmp_path / "clihome"
    monkeypatch.setenv("KAIZEN_HOME", str(home))
    monkeypatch.setenv("KAIZEN_CONTROLLER_PORT", "1")  # nothing answers there
    monkeypatch.chdir(tmp_path)
    cfg = config_mod.load()
    c = connect(cfg.duckdb_path)
    v1, v2 = new_version(c, cfg), new_version(c, cfg)
    al.set_alias(c, "champion", v1)
    c.close()
    assert main(["ab", "start", v2, "--split", "0.2", "--set", "mde=0.05", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["split"] == 0.2 and started["config"]["mde"] == 0.05 and started["status"] == "running"
    assert main(["ab", "status"]) == 0
    assert "exp-0001" in capsys.readouterr().out
    assert main(["ab", "start", v2, "--set", "nope=1"]) == 2
    assert "--set 'nope=1'" in capsys.readouterr().err
    assert main(["ab", "stop", "exp-0001", "--reason", "manual", "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert stopped["action"] == "stop" and stopped["reason"] == "manual"
    assert main(["ab", "stop", "exp-0001"]) == 2
    assert "not running" in capsys.readouterr().err
    assert main(["ab", "status", "exp-0001", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "stopped" and status["decisions"][0]["action"] == "stop"
