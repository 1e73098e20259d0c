"""Jobs: the three-tier schedule (cron, next run, run in progress) and the run history;
start a tier now."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import ui

TIER_WHAT = {"weekly": "knowledge refresh + review sweep", "monthly": "retrain + A/B start",
             "quarterly": "review report"}


def schedule(data: dict) -> None:
    state = "on" if data.get("enabled") else "off (manual runs only)"
    running = "running" if data.get("scheduler_running") else "not running in this controller"
    st.caption(f"Schedule {state}; scheduler {running}.")
    rows = []
    for t in data.get("tiers", []):
        last = t.get("last_run") or {}
        progress = t.get("progress") or {}
        rows.append({"tier": t["tier"], "does": TIER_WHAT.get(t["tier"], ""), "cron": t["cron"],
                     "timezone": t.get("timezone"), "next run": ui.when(t.get("next_fire_time")),
                     "running": t.get("running_run_id") or "",
                     "progress": f"{progress.get('fraction', 0):.0%} {progress.get('message', '')}" if progress else "",
                     "retry pending": ui.when((t.get("pending_retry") or {}).get("due_at")) if t.get("pending_retry")
                     else "", "last run": last.get("status", "never"), "last started": ui.when(last.get("started_at"))})
    ui.table(rows, key="jobs_tiers")


def history(runs: list[dict]) -> None:
    st.subheader("History")
    if not runs:
        ui.empty_state("No job has run yet.", "Tiers run on their cron; start one now with `kaizen jobs run weekly` "
                                              "or the button below.")
        return
    frame = ui.table([{"run": r["run_id"], "tier": r["tier"], "trigger": r["trigger"], "status": r["status"],
                       "attempt": r["attempt"], "started": ui.when(r["started_at"]),
                       "finished": ui.when(r.get("finished_at")), "duration s": r.get("duration_s"),
                       "error": (r.get("error") or "")[:200], "log": r.get("log_path")} for r in runs], key="jobs_runs")
    counts = frame.groupby(["tier", "status"]).size().rename("runs").reset_index()
    st.bar_chart(pd.pivot_table(counts, index="tier", columns="status", values="runs", fill_value=0),
                 height=200, x_label="tier", y_label="runs")


def run_now(api, tiers: list[str]) -> None:
    st.subheader("Run a tier now")
    ui.needs_key_note()
    c1, c2 = st.columns([1, 3])
    tier = c1.selectbox("Tier", tiers, key="jobs_tier", format_func=lambda t: f"{t} ({TIER_WHAT.get(t, '')})")
    c2.write("")
    if c2.button("Run now", key="jobs_run", type="primary", disabled=not ui.typed_key()):
        ui.act(lambda key: api.run_tier(tier, key), f"Started a {tier} run; it shows under History.")


st.title("Jobs")
ui.flash()
api = ui.api()
data = ui.load(api.jobs, "This controller has no scheduler API (/admin/v1/jobs) yet.",
               "Upgrade kaizenlm on the controller; `kaizen jobs list` shows the same.")
if data is not None:
    schedule(data)
    history(data.get("runs") or [])
    run_now(api, [t["tier"] for t in data.get("tiers", [])] or ["weekly", "monthly", "quarterly"])
