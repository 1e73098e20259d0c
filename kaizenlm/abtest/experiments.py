"""A/B experiments in DuckDB: start, stop, analyse, decide, apply; routing from the registry.

Tables (migration 5): `experiments` (one row per experiment; `config` holds its effective
[ab] settings, frozen at the start) and `experiment_decisions` (one row per look, with
every number it rested on, and what the controller did about it in `applied`).

One analysis of a running experiment (`analyse_experiment`):
  1. per-turn rewards from kaizenlm.feedback.rewards (explicit + implicit feedback, the
     `[rewards]` weights) for the turns logged with this experiment_id;
  2. per-arm sufficient statistics with the user as the randomisation unit (turns of one
     user are correlated): reward, error (the turn got an empty answer: the backend failed)
     and regenerate (the turn got a regenerate signal), each as a per-user ratio; latency
     p93/p95/p97 over the answered turns; distinct users per arm for the SRM check;
  3. kaizenlm.abtest.stats.analyse (always-valid test, with the previous look as `prior`)
     and kaizenlm.abtest.decisions.decide.
`apply_decision` then acts, in one transaction with the decision row: promote moves the
alias to the challenger (alias history appended) and ends the experiment; rollback and
keep_champion end it with the champion still serving (the challenger simply gets no
traffic any more); continue only records the look. The caller publishes routing after.

Every function takes an open DuckDB connection: the controller's, or one the CLI opened
when no controller runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from kaizenlm.abtest import decisions as decisions_mod
from kaizenlm.abtest import stats
from kaizenlm.abtest.arms import LatencyStats, RatioArmStats
from kaizenlm.abtest.routing import (
    CHALLENGER,
    CHAMPION,
    KNOWLEDGE,
    ExperimentRoute,
    KnowledgeTarget,
    RoutingState,
    target_for,
)
from kaizenlm.abtest.sequential import SequentialResult
from kaizenlm.config import ABConfig, Config, ConfigError
from kaizenlm.registry import aliases as alias_ops
from kaizenlm.registry import versions as version_ops
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError
from kaizenlm.registry.transaction import transaction
from kaizenlm.registry.versions import utc_from_epoch_us

log = logging.getLogger(__name__)

RUNNING, PROMOTED, ROLLED_BACK, KEPT_CHAMPION, STOPPED = "running", "promoted", "rolled_back", "kept_champion", "stopped"
STATUSES = (RUNNING, PROMOTED, ROLLED_BACK, KEPT_CHAMPION, STOPPED)
STOP = "stop"  # decision action of an operator's stop, or of an alias moved outside the experiment
_END_STATUS = {decisions_mod.PROMOTE: PROMOTED, decisions_mod.ROLLBACK: ROLLED_BACK,
               decisions_mod.KEEP_CHAMPION: KEPT_CHAMPION, STOP: STOPPED}
SERVABLE_KINDS = ("base", "adapter")
# Settings an experiment may override (analysis_interval_s is the controller's, not the experiment's).
SETTINGS = tuple(f.name for f in dataclasses.fields(ABConfig) if f.name != "analysis_interval_s")

_COLUMNS = ("experiment_id", "alias", "champion", "challenger", "split", "config", "status", "started_at",
            "ended_at", "end_reason", "actor")
_SELECT = "SELECT {} FROM experiments".format(
    ", ".join(f"epoch_us({c})" if c in ("started_at", "ended_at") else c for c in _COLUMNS))


@dataclass
class Experiment:
    experiment_id: str
    alias: str
    champion: str
    challenger: str
    split: float
    config: dict
    status: str
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    actor: str = "system"

    def settings(self, cfg: Config) -> ABConfig:
        """The experiment's [ab] settings: the frozen config over the current defaults."""
        known = {k: v for k, v in self.config.items() if k in SETTINGS}
        return dataclasses.replace(cfg.ab, **known)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("started_at", "ended_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _experiment(row: tuple) -> Experiment:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["config"] = json.loads(values["config"]) if values["config"] else {}
    values["started_at"] = utc_from_epoch_us(values["started_at"])
    values["ended_at"] = utc_from_epoch_us(values["ended_at"])
    return Experiment(**values)


def get_experiment(con: duckdb.DuckDBPyConnection, experiment_id: str) -> Experiment:
    row = con.execute(f"{_SELECT} WHERE experiment_id = ?", [experiment_id]).fetchone()
    if row is None:
        raise NotFound(f"no experiment '{experiment_id}'; run `kaizen ab status` to list experiments")
    return _experiment(row)


def list_experiments(con: duckdb.DuckDBPyConnection, status: str | None = None) -> list[Experiment]:
    """Experiments, newest first (optionally one status)."""
    if status is not None and status not in STATUSES:
        raise RegistryError(f"unknown experiment status '{status}'; use one of: {', '.join(STATUSES)}")
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    rows = con.execute(f"{_SELECT} {where} ORDER BY started_at DESC, experiment_id DESC", params).fetchall()
    return [_experiment(r) for r in rows]


def _next_id(con: duckdb.DuckDBPyConnection) -> str:
    (n,) = con.execute("SELECT count(*) FROM experiments").fetchone()
    while True:
        n += 1
        candidate = f"exp-{n:04d}"
        if not con.execute("SELECT 1 FROM experiments WHERE experiment_id = ?", [candidate]).fetchone():
            return candidate


def _servable(con: duckdb.DuckDBPyConnection, version_id: str, role: str) -> version_ops.Version:
    version = version_ops.get_version(con, version_id)
    if version.kind not in SERVABLE_KINDS:
        raise RegistryError(f"{role} '{version_id}' is a {version.kind} version; only base and adapter versions serve")
    if version.tainted:
        raise Conflict(f"{role} '{version_id}' is tainted (built from data of a forgotten user) and cannot serve")
    return version


def experiment_settings(cfg: Config, split: float | None = None, overrides: dict | None = None) -> ABConfig:
    """[ab] defaults with this experiment's overrides, validated like the config file."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise RegistryError(f"unknown experiment setting '{unknown[0]}'; known: {', '.join(SETTINGS)}")
    if split is not None:
        overrides["split"] = split
    try:
        return dataclasses.replace(cfg.ab, **overrides)
    except (ConfigError, TypeError) as e:
        raise RegistryError(str(e)) from None


def start_experiment(con: duckdb.DuckDBPyConnection, cfg: Config, challenger: str, alias: str = "champion",
                     split: float | None = None, overrides: dict | None = None, actor: str = "system",
                     now: datetime | None = None, experiment_id: str | None = None) -> Experiment:
    """Start splitting `alias`'s traffic between the version it points at and `challenger`.

    One experiment per alias at a time. The challenger's status becomes 'challenger'. The
    caller publishes routing afterwards (the controller does; the CLI without a controller
    leaves it to the controller's start).
    """
    settings = experiment_settings(cfg, split, overrides)
    now = _now(now)
    with transaction(con):
        champion = alias_ops.get_alias(con, alias)
        if champion is None:
            raise NotFound(f"alias '{alias}' points at no version; promote one first "
                           "(`kaizen registry promote VERSION --alias {alias}`)")
        _servable(con, challenger, "challenger")
        _servable(con, champion, "champion")
        if challenger == champion:
            raise Conflict(f"'{challenger}' already serves '{alias}'; pick another version as the challenger")
        running = [e for e in list_experiments(con, RUNNING) if e.alias == alias]
        if running:
            raise Conflict(f"experiment '{running[0].experiment_id}' already runs on alias '{alias}'; "
                           f"stop it first (`kaizen ab stop {running[0].experiment_id}`)")
        experiment_id = experiment_id or _next_id(con)
        if con.execute("SELECT 1 FROM experiments WHERE experiment_id = ?", [experiment_id]).fetchone():
            raise Conflict(f"experiment id '{experiment_id}' is taken")
        config = dataclasses.asdict(settings)
        config.pop("analysis_interval_s", None)
        con.execute(
            "INSERT INTO experiments (experiment_id, alias, champion, challenger, split, config, status, started_at, "
            "actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [experiment_id, alias, champion, challenger, settings.split, json.dumps(config, sort_keys=True), RUNNING,
             now, actor])
        version_ops.set_status(con, challenger, "challenger", note=f"A/B {experiment_id} against {champion}")
    return get_experiment(con, experiment_id)


# --------------------------------------------------------------------------------------
# Statistics from the turns
# --------------------------------------------------------------------------------------


def _reward_table(con: duckdb.DuckDBPyConnection, cfg: Config, since: datetime) -> str:
    """Register the per-turn rewards since `since` as a view; returns its name."""
    from kaizenlm.feedback.rewards import Window, reward_frame

    frame = reward_frame(con, Window(since=since), cfg.rewards)[["turn_id", "reward", "n_regenerate"]]
    con.register("ab_turn_rewards", frame)
    return "ab_turn_rewards"


_ARM_SQL = """
WITH t AS (
    SELECT turn_id, arg_min(user_id, ts) AS user_id, arg_min(variant, ts) AS variant,
           arg_min(latency_ms, ts) AS latency_ms, bool_or(response = '') AS failed
    FROM turns WHERE experiment_id = ? AND variant IN ('champion', 'challenger') AND ts >= ?
    GROUP BY turn_id
),
j AS (
    SELECT t.*, coalesce(r.reward, 0.0) AS reward, (coalesce(r.n_regenerate, 0) > 0)::DOUBLE AS regen,
           failed::DOUBLE AS err
    FROM t LEFT JOIN ab_turn_rewards r USING (turn_id)
),
u AS (
    SELECT variant, user_id, sum(reward) AS y, count(*)::DOUBLE AS n, sum(err) AS e, sum(regen) AS g
    FROM j GROUP BY variant, user_id
),
arms AS (
    SELECT variant, count(*) AS units, sum(n) AS turns,
           sum(y) AS y, sum(y * y) AS y2, sum(e) AS e, sum(e * e) AS e2, sum(e * n) AS en,
           sum(g) AS g, sum(g * g) AS g2, sum(g * n) AS gn, sum(n * n) AS n2, sum(y * n) AS yn
    FROM u GROUP BY variant
),
lat AS (
    SELECT variant, count(*) AS n, quantile_cont(latency_ms, [0.93, 0.95, 0.97]) AS q
    FROM j WHERE NOT failed AND latency_ms IS NOT NULL GROUP BY variant
)
SELECT arms.*, lat.n AS lat_n, lat.q AS lat_q FROM arms LEFT JOIN lat USING (variant)
"""


def arm_data(con: duckdb.DuckDBPyConnection, cfg: Config, exp: Experiment) -> tuple[stats.ArmData, stats.ArmData]:
    """(champion, challenger) sufficient statistics of the experiment's turns so far."""
    view = _reward_table(con, cfg, exp.started_at)
    try:
        result = con.execute(_ARM_SQL, [exp.experiment_id, exp.started_at])
        cols = [d[0] for d in result.description]
        rows = {r[0]: dict(zip(cols, r, strict=True)) for r in result.fetchall()}
    finally:
        con.unregister(view)
    return _arm(rows.get(CHAMPION)), _arm(rows.get(CHALLENGER))


def _arm(r: dict | None) -> stats.ArmData:
    if r is None:
        empty = RatioArmStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return stats.ArmData(empty, dataclasses.replace(empty, binary=True), dataclasses.replace(empty, binary=True),
                             LatencyStats.from_values([]), 0)
    n, n2 = float(r["turns"]), float(r["n2"])
    primary = RatioArmStats(int(r["units"]), float(r["y"]), n, float(r["y2"]), n2, float(r["yn"]))
    errors = RatioArmStats(int(r["units"]), float(r["e"]), n, float(r["e2"]), n2, float(r["en"]), binary=True)
    regens = RatioArmStats(int(r["units"]), float(r["g"]), n, float(r["g2"]), n2, float(r["gn"]), binary=True)
    q = r["lat_q"]
    latency = (LatencyStats(int(r["lat_n"]), float(q[0]), float(q[1]), float(q[2])) if q
               else LatencyStats.from_values([]))
    return stats.ArmData(primary, errors, regens, latency, int(r["units"]))


def _prior(con: duckdb.DuckDBPyConnection, experiment_id: str) -> SequentialResult | None:
    """The previous look's primary result: the test keeps its running minimum p-value and interval."""
    row = con.execute("SELECT numbers FROM experiment_decisions WHERE experiment_id = ? AND action = 'continue' "
                      "ORDER BY seq DESC LIMIT 1", [experiment_id]).fetchone()
    if row is None:
        return None
    try:
        return SequentialResult.from_dict(json.loads(row[0])["primary"])
    except (KeyError, TypeError, ValueError):
        return None


def analyse_experiment(con: duckdb.DuckDBPyConnection, cfg: Config, exp: Experiment,
                       now: datetime | None = None) -> decisions_mod.Decision:
    """One look at a running experiment: statistics and the decision (nothing is written)."""
    settings = exp.settings(cfg)
    champion, challenger = arm_data(con, cfg, exp)
    analysis = stats.analyse(champion, challenger, settings, prior=_prior(con, exp.experiment_id))
    decision = decisions_mod.decide(analysis, settings, now=_now(now), started_at=exp.started_at)
    numbers = {**decision.numbers, "turns": {CHAMPION: int(champion.primary.sum_n),
                                             CHALLENGER: int(challenger.primary.sum_n)},
               "users": {CHAMPION: champion.n_assigned, CHALLENGER: challenger.n_assigned}}
    return dataclasses.replace(decision, numbers=numbers)


# --------------------------------------------------------------------------------------
# Applying decisions
# --------------------------------------------------------------------------------------


def _record(con: duckdb.DuckDBPyConnection, exp: Experiment, action: str, reason: str, numbers: dict,
            warnings: list[str], applied: dict, actor: str, now: datetime) -> dict:
    (seq,) = con.execute(
        "INSERT INTO experiment_decisions (experiment_id, ts, action, reason, numbers, warnings, applied, actor) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        [exp.experiment_id, now, action, reason, json.dumps(numbers, sort_keys=True), json.dumps(warnings),
         json.dumps(applied, sort_keys=True), actor]).fetchone()
    return {"seq": seq, "experiment_id": exp.experiment_id, "ts": now.isoformat(), "action": action, "reason": reason,
            "numbers": numbers, "warnings": warnings, "applied": applied, "actor": actor}


def _end(con: duckdb.DuckDBPyConnection, exp: Experiment, status: str, reason: str, now: datetime) -> None:
    con.execute("UPDATE experiments SET status = ?, ended_at = ?, end_reason = ? WHERE experiment_id = ?",
                [status, now, reason, exp.experiment_id])


def apply_decision(con: duckdb.DuckDBPyConnection, exp: Experiment, decision: decisions_mod.Decision | None,
                   actor: str = "ab-analysis", now: datetime | None = None, *, action: str | None = None,
                   reason: str | None = None) -> dict:
    """Act on a decision (or an operator's `action`/`reason`) and store it; one transaction.

    promote: alias -> challenger (history appended), challenger status 'promoted';
    rollback: challenger 'rejected' (and the alias back to the champion if it had moved);
    keep_champion: challenger 'rejected', or back to 'candidate' after a sample-ratio
    mismatch (the data could not judge it); stop: challenger back to 'candidate'.
    Returns the stored decision row. Raises Conflict when the experiment is not running.
    """
    now = _now(now)
    action = action or decision.action
    reason = reason or decision.reason
    numbers = decision.numbers if decision else {}
    warnings = list(decision.warnings) if decision else []
    with transaction(con):
        current = get_experiment(con, exp.experiment_id)
        if current.status != RUNNING:
            raise Conflict(f"experiment '{exp.experiment_id}' is not running (status {current.status})")
        applied: dict = {}
        if action != decisions_mod.CONTINUE:
            applied = _act(con, current, action, reason, warnings, actor)
            _end(con, current, _END_STATUS[action], reason, now)
            applied["experiment_status"] = _END_STATUS[action]
        return _record(con, current, action, reason, numbers, warnings, applied, actor, now)


def _act(con: duckdb.DuckDBPyConnection, exp: Experiment, action: str, reason: str, warnings: list[str],
         actor: str) -> dict:
    applied: dict = {"alias_move": None}
    note = f"A/B {exp.experiment_id}: {reason}"[:500]
    serving = alias_ops.get_alias(con, exp.alias)
    if action == decisions_mod.PROMOTE:
        if serving != exp.challenger:
            move = alias_ops.set_alias(con, exp.alias, exp.challenger, reason=note, actor=actor)
            applied["alias_move"] = move.to_dict()
        status = "promoted"
    else:
        if serving == exp.challenger:  # someone promoted it by hand meanwhile: undo that too
            move = alias_ops.rollback_alias(con, exp.alias, to_version=exp.champion, reason=note, actor=actor)
            applied["alias_move"] = move.to_dict()
        rejected = action == decisions_mod.ROLLBACK or (action == decisions_mod.KEEP_CHAMPION and "srm" not in warnings)
        status = "rejected" if rejected else "candidate"
    version_ops.set_status(con, exp.challenger, status, note=note)
    applied["challenger_status"] = status
    return applied


def stop_experiment(con: duckdb.DuckDBPyConnection, experiment_id: str, reason: str = "", promote: bool = False,
                    actor: str = "operator", now: datetime | None = None) -> dict:
    """End a running experiment by hand: keep the champion (default) or promote the challenger."""
    exp = get_experiment(con, experiment_id)
    action = decisions_mod.PROMOTE if promote else STOP
    text = reason or ("promoted by an operator" if promote else "stopped by an operator")
    return apply_decision(con, exp, None, actor, now, action=action, reason=text)


def analyse_running(con: duckdb.DuckDBPyConnection, cfg: Config, now: datetime | None = None,
                    experiment_id: str | None = None, actor: str = "ab-analysis") -> list[dict]:
    """Analyse every running experiment (or one), apply and store each decision.

    Returns one stored decision row per experiment (or {"experiment_id", "error"} when its
    analysis failed; the others still run). The caller publishes routing when any row's
    action is final (not 'continue').
    """
    now = _now(now)
    if experiment_id is not None:
        exp = get_experiment(con, experiment_id)
        if exp.status != RUNNING:
            raise Conflict(f"experiment '{experiment_id}' is not running (status {exp.status}); nothing to analyse")
        todo = [exp]
    else:
        todo = list_experiments(con, RUNNING)
    results = []
    for exp in todo:
        try:
            decision = analyse_experiment(con, cfg, exp, now)
            results.append(apply_decision(con, exp, decision, actor, now))
            log.info("experiment %s: %s (%s)", exp.experiment_id, decision.action, decision.reason)
        except Exception as e:
            log.exception("analysis of experiment %s failed", exp.experiment_id)
            if experiment_id is not None:
                raise
            results.append({"experiment_id": exp.experiment_id, "error": f"{type(e).__name__}: {e}"})
    return results


def decisions_of(con: duckdb.DuckDBPyConnection, experiment_id: str, limit: int = 100) -> list[dict]:
    """Stored decisions of an experiment, newest first."""
    rows = con.execute(
        "SELECT seq, experiment_id, epoch_us(ts), action, reason, numbers, warnings, applied, actor "
        "FROM experiment_decisions WHERE experiment_id = ? ORDER BY seq DESC LIMIT ?", [experiment_id, limit]).fetchall()
    out = []
    for seq, eid, ts, action, reason, numbers, warnings, applied, actor in rows:
        out.append({"seq": seq, "experiment_id": eid, "ts": utc_from_epoch_us(ts).isoformat(), "action": action,
                    "reason": reason, "numbers": json.loads(numbers), "warnings": json.loads(warnings),
                    "applied": json.loads(applied), "actor": actor})
    return out


def status(con: duckdb.DuckDBPyConnection, experiment_id: str | None = None, limit: int = 20) -> dict:
    """One experiment with its decisions, or every experiment with its latest decision."""
    if experiment_id is not None:
        return {**get_experiment(con, experiment_id).to_dict(), "decisions": decisions_of(con, experiment_id, limit)}
    items = []
    for exp in list_experiments(con)[:limit]:
        latest = decisions_of(con, exp.experiment_id, 1)
        items.append({**exp.to_dict(), "latest_decision": latest[0] if latest else None})
    return {"experiments": items}


# --------------------------------------------------------------------------------------
# Rollback and alias moves
# --------------------------------------------------------------------------------------


def _stop_on_alias(con: duckdb.DuckDBPyConnection, alias: str, keep_if_champion: str | None, reason: str,
                   actor: str, now: datetime) -> list[str]:
    stopped = []
    for exp in list_experiments(con, RUNNING):
        if exp.alias == alias and exp.champion != keep_if_champion:
            apply_decision(con, exp, None, actor, now, action=STOP, reason=reason)
            stopped.append(exp.experiment_id)
    return stopped


def rollback(con: duckdb.DuckDBPyConnection, alias: str = "champion", to_version: str | None = None,
             reason: str = "", actor: str = "operator", now: datetime | None = None) -> dict:
    """Move `alias` back one step in its history (or back to `to_version`), recorded in the
    alias history; an experiment running on the alias ends (its champion no longer serves)."""
    now = _now(now)
    with transaction(con):
        move = alias_ops.rollback_alias(con, alias, to_version=to_version, reason=reason or f"rollback {alias}",
                                        actor=actor)
        stopped = _stop_on_alias(con, alias, move.to_version,
                                 f"alias '{alias}' rolled back to {move.to_version}", actor, now)
    return {"move": move.to_dict(), "stopped_experiments": stopped}


def alias_moved(con: duckdb.DuckDBPyConnection, move: dict, now: datetime | None = None) -> list[str]:
    """After an alias moved outside an experiment (registry promote/rollback): end the
    experiments on that alias whose champion no longer serves it. Returns their ids."""
    return _stop_on_alias(con, move["alias"], move["to_version"],
                          f"alias '{move['alias']}' moved to {move['to_version']} outside the experiment",
                          str(move.get("actor") or "registry"), _now(now))


# --------------------------------------------------------------------------------------
# Routing state
# --------------------------------------------------------------------------------------


def current_routing(con: duckdb.DuckDBPyConnection) -> RoutingState:
    """The routing state the registry and the experiments say now (version 0: the publisher numbers it).

    Targets: every servable version (base/adapter, not tainted); aliases: those pointing at
    one; experiments: the running ones whose two versions are servable; knowledge: the
    index the `knowledge` alias points at (gateways retrieve from it), unless tainted.
    """
    targets, knowledge_dirs = {}, {}
    for version in version_ops.list_versions(con):
        if version.kind in SERVABLE_KINDS and not version.tainted:
            targets[version.version_id] = target_for(con, version)
        elif version.kind == "knowledge" and not version.tainted:
            knowledge_dirs[version.version_id] = version.artifact_dir
    all_aliases = alias_ops.list_aliases(con)
    aliases = {name: v for name, v in all_aliases.items() if v in targets}
    knowledge_version = all_aliases.get(KNOWLEDGE)
    knowledge = (KnowledgeTarget(knowledge_version, knowledge_dirs[knowledge_version])
                 if knowledge_version in knowledge_dirs else None)
    experiments = tuple(
        ExperimentRoute(e.experiment_id, e.alias, e.champion, e.challenger, e.split)
        for e in sorted(list_experiments(con, RUNNING), key=lambda e: e.experiment_id)
        if e.champion in targets and e.challenger in targets and e.alias in aliases)
    return RoutingState(0, aliases, experiments, targets, knowledge=knowledge)
