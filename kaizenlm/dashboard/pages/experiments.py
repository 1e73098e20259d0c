"""Experiments: arms, the primary metric with its always-valid interval over time, the
sequential boundary, SRM, guardrails, the decision log; promote / stop / roll back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import charts, ui

START = ("Register a challenger version and start one: `kaizen ab start adapter-0002` (the monthly retrain "
         "starts one by itself when a candidate passes its gates).")


def looks(decisions: list[dict]) -> pd.DataFrame:
    """One row per analysis with primary-metric numbers, oldest first."""
    rows = []
    for d in decisions:
        p = (d.get("numbers") or {}).get("primary")
        if p and p.get("effect") is not None:
            rows.append({"ts": pd.Timestamp(d["ts"]), "effect": p["effect"], "ci_low": p.get("ci_low"),
                         "ci_high": p.get("ci_high"), "p_value": p.get("p_value"),
                         "n": (p.get("n_champion") or 0) + (p.get("n_challenger") or 0)})
    return pd.DataFrame(rows, columns=["ts", "effect", "ci_low", "ci_high", "p_value", "n"]).sort_values("ts")


def arms(exp: dict, numbers: dict) -> None:
    primary = numbers.get("primary") or {}
    users, turns = numbers.get("users") or {}, numbers.get("turns") or {}
    for col, arm, share in zip(st.columns(2), ("champion", "challenger"), (1 - exp["split"], exp["split"])):
        with col.container(border=True):
            st.markdown(f"**{arm.title()}** · `{exp[arm]}` · {share:.0%} of users")
            a, b, c = st.columns(3)
            a.metric("Users", ui.number(users.get(arm), "{:,}"))
            b.metric("Turns", ui.number(turns.get(arm), "{:,.0f}"))
            c.metric("Mean reward", ui.number(primary.get(f"mean_{arm}"), "{:+.2f}"))


def srm(numbers: dict) -> None:
    s = numbers.get("srm")
    if not s:
        return
    text = (f"users {s['counts']} vs expected {[round(e, 1) for e in s['expected']]}, chi² = {s['chi2']:.2f}, "
            f"p = {s['p_value']:.3g} (threshold {s['threshold']:g})")
    if s["flagged"]:
        st.error(f"Sample-ratio mismatch: {text}. Assignment or logging is broken; no number here can be trusted.",
                 icon=":material/warning:")
    else:
        st.success(f"No sample-ratio mismatch: {text}.", icon=":material/balance:")


def guardrails(numbers: dict) -> None:
    rows = [{"guardrail": name, "status": g["status"], "champion": g["champion"], "challenger": g["challenger"],
             "degradation": g["effect"], "CI low": g["ci_low"], "CI high": g["ci_high"],
             "margin": g["margin"], "kind": g["margin_kind"]}
            for name, g in (numbers.get("guardrails") or {}).items()]
    if rows:
        st.subheader("Guardrails")
        ui.table(rows, key="exp_guardrails")


def actions(api, exp: dict) -> None:
    st.subheader("Actions")
    ui.needs_key_note()
    disabled = not ui.typed_key()
    eid, alias = exp["experiment_id"], exp["alias"]
    cols = st.columns(4)
    if exp["status"] == "running":
        if cols[0].button("Promote challenger", key="exp_promote", type="primary", disabled=disabled,
                          help=f"End {eid} and point '{alias}' at {exp['challenger']}"):
            ui.act(lambda key: api.stop_experiment(eid, key, promote=True, reason="promoted from the dashboard"),
                   f"Promoted {exp['challenger']} to '{alias}'; {eid} ended.")
        if cols[1].button("Stop, keep champion", key="exp_stop", disabled=disabled):
            ui.act(lambda key: api.stop_experiment(eid, key, reason="stopped from the dashboard"),
                   f"Stopped {eid}; {exp['champion']} keeps serving '{alias}'.")
        if cols[2].button("Analyse now", key="exp_analyse", disabled=disabled):
            ui.act(lambda key: api.analyse(eid, key), f"Analysed {eid}; the newest decision is at the top of the log.")
    if cols[3].button(f"Roll back '{alias}'", key="exp_rollback", disabled=disabled,
                      help=f"Move '{alias}' back one step in its history (ends an experiment running on it)"):
        ui.act(lambda key: api.rollback(alias, key), f"Rolled '{alias}' back one step.")


def detail(api, experiment_id: str) -> None:
    exp = ui.load(lambda: api.experiment(experiment_id), f"No experiment '{experiment_id}'.", START)
    if exp is None:
        return
    decisions = exp.get("decisions") or []
    latest = next((d for d in decisions if d.get("numbers")), None)
    numbers = latest["numbers"] if latest else {}
    st.subheader(f"{experiment_id} · {exp['status']}")
    st.caption(f"alias '{exp['alias']}', started {ui.when(exp['started_at'])} by {exp['actor']}"
               + (f", ended {ui.when(exp['ended_at'])}: {exp['end_reason']}" if exp.get("ended_at") else ""))
    arms(exp, numbers)
    if numbers:
        st.caption(f"{numbers.get('elapsed_hours') or 0:.1f} of {numbers.get('max_duration_hours') or 0:.0f} hours; "
                   f"no decision before {numbers.get('min_samples_per_arm')} users per arm.")
    frame = looks(decisions)
    if frame.empty:
        ui.empty_state("No analysis with numbers yet.",
                       "The controller analyses running experiments every `ab.analysis_interval_s`; press "
                       "'Analyse now' below (admin key) to look at once.")
    else:
        primary = numbers.get("primary") or {}
        left, right = st.columns(2)
        left.altair_chart(charts.effect_with_interval(frame, primary.get("mde")), width="stretch")
        right.altair_chart(charts.p_value_boundary(frame, primary.get("alpha") or exp["config"].get("alpha", 0.05)),
                           width="stretch")
    srm(numbers)
    guardrails(numbers)
    st.subheader("Decision log")
    if decisions:
        ui.table([{"ts": ui.when(d["ts"]), "action": d["action"], "reason": d["reason"], "actor": d["actor"],
                   "warnings": ", ".join(d.get("warnings") or []),
                   "alias move": ((d.get("applied") or {}).get("alias_move") or {}).get("to_version")}
                  for d in decisions], key="exp_decisions")
    else:
        st.caption("No decisions yet.")
    actions(api, exp)


st.title("Experiments")
ui.flash()
api = ui.api()
experiments = ui.load(api.experiments, "This controller has no A/B API (/admin/v1/ab) yet.",
                      "Upgrade kaizenlm on the controller; experiments come with `kaizen ab start`.")
if experiments is not None and not experiments:
    ui.empty_state("No A/B experiments yet.", START)
elif experiments:
    ui.table([{"experiment": e["experiment_id"], "status": e["status"], "alias": e["alias"],
               "champion": e["champion"], "challenger": e["challenger"], "split": e["split"],
               "started": ui.when(e["started_at"]), "ended": ui.when(e.get("ended_at")),
               "latest decision": (e.get("latest_decision") or {}).get("action")} for e in experiments],
             key="exp_list")
    ids = [e["experiment_id"] for e in experiments]
    running = [e["experiment_id"] for e in experiments if e["status"] == "running"]
    chosen = st.selectbox("Experiment", ids, index=ids.index(running[0]) if running else 0, key="exp_selected")
    detail(api, chosen)
