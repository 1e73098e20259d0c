"""Training: monthly retrain runs, loss curves and gate results of each trained adapter,
and the dataset snapshots training reads.

Loss curves come from the training runs the monthly retrain keeps with the adapter
(runs/sft and runs/dpo metrics.json, via /admin/v1/dashboard/training/{id}); any
`*_loss_curve` list of [step, loss] in the registry metrics counts too. Gate results are
the registry metrics' `gate` ({passed, reasons: ["pass: ...", "fail: ..."]}, as
kaizenlm.retrain.pipeline records it) or a `gates` mapping {name: {passed, value, threshold}}.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import charts, ui

TRAIN = ("Run the monthly retrain now with `kaizen jobs run monthly` (or the Jobs page): it curates a snapshot, "
         "trains a LoRA adapter (SFT then DPO), evaluates it against the gates and registers it.")


def walk(metrics: dict, path: tuple[str, ...] = ()):
    """(path, value) of every entry of a nested dict."""
    for key, value in (metrics or {}).items():
        yield (*path, key), value
        if isinstance(value, dict):
            yield from walk(value, (*path, key))


def loss_curves(metrics: dict) -> pd.DataFrame:
    """Every `*_loss_curve` ([step, loss] pairs) as (step, series, value); series like 'sft train'."""
    rows = []
    for path, value in walk(metrics):
        if path[-1].endswith("_loss_curve") and isinstance(value, list):
            label = " ".join([*path[:-1], path[-1].removesuffix("_loss_curve")])
            rows += [{"step": point[0], "series": label, "value": point[1]} for point in value
                     if isinstance(point, (list, tuple)) and len(point) == 2]
    return pd.DataFrame(rows, columns=["step", "series", "value"])


def gate_rows(metrics: dict) -> list[dict]:
    """One row per gate check, from `gate` (passed + reasons) or `gates` (a mapping)."""
    gate = metrics.get("gate")
    if isinstance(gate, dict) and gate.get("reasons"):
        rows = []
        for reason in gate["reasons"]:
            verdict, _, text = str(reason).partition(": ")
            rows.append({"check": text or reason, "passed": verdict == "pass"})
        return rows
    gates = next((v for path, v in walk(metrics) if path[-1] == "gates" and isinstance(v, dict)), {})
    return [{"check": name, "passed": g.get("passed"), "value": g.get("value"), "threshold": g.get("threshold")}
            if isinstance(g, dict) else {"check": name, "passed": bool(g)} for name, g in gates.items()]


def monthly_runs(api) -> None:
    st.subheader("Retrain runs")
    jobs = ui.load(lambda: api.jobs(tier="monthly"), "This controller has no jobs API (/admin/v1/jobs) yet.",
                   "Upgrade kaizenlm on the controller.")
    if jobs is None:
        return
    runs = jobs.get("runs") or []
    if not runs:
        tier = next((t for t in jobs.get("tiers", []) if t["tier"] == "monthly"), {})
        due = f"; the next is due {ui.when(tier['next_fire_time'])}" if tier.get("next_fire_time") else ""
        ui.empty_state(f"No monthly retrain has run yet{due}.", TRAIN)
        return
    ui.table([{"run": r["run_id"], "trigger": r["trigger"], "status": r["status"], "attempt": r["attempt"],
               "started": ui.when(r["started_at"]), "duration s": r.get("duration_s"),
               "outcome": (r.get("result") or {}).get("status"),
               "candidate": (r.get("result") or {}).get("candidate"),
               "gates passed": (r.get("result") or {}).get("gate_passed"),
               "error": (r.get("error") or "")[:200]} for r in runs], key="training_runs")


def curves(api, version: dict) -> None:
    runs = ui.load(lambda: api.training_runs(version["version_id"]),
                   f"No training run logs stored with {version['version_id']}.",
                   "Adapters trained by the monthly retrain keep them; imported ones have none.")
    frame = pd.concat([loss_curves((runs or {}).get("runs") or {}), loss_curves(version.get("metrics") or {})])
    if not frame.empty:
        st.altair_chart(charts.lines(frame, "step", f"Loss of {version['version_id']}", "loss", x_type="Q"),
                        width="stretch")
    warnings = [w for r in ((runs or {}).get("runs") or {}).values() for w in (r.get("warnings") or [])]
    if warnings:
        with st.expander(f"Training health warnings ({len(warnings)})"):
            for w in warnings[:50]:
                st.write(f"- {w}")


def adapter_detail(api, version: dict) -> None:
    metrics = version.get("metrics") or {}
    curves(api, version)
    rows = gate_rows(metrics)
    if rows:
        passed = all(r.get("passed") for r in rows)
        (st.success if passed else st.error)(f"Gates: {'all passed' if passed else 'failed'}", icon=":material/rule:")
        ui.table(rows, key="training_gates")
    else:
        st.caption("No gate results recorded for this version.")
    summary = [{"run": name, **{k: v for k, v in (m or {}).items() if not isinstance(v, (dict, list))}}
               for name, m in (metrics.get("training") or {}).items() if m]
    if summary:
        st.caption("Training summary")
        ui.table(summary, key="training_summary")


def adapters(api) -> None:
    st.subheader("Trained adapters")
    versions = ui.load(lambda: api.versions(kind="adapter"), "This controller has no registry API.",
                       "Upgrade kaizenlm on the controller.")
    if versions is None:
        return
    if not versions:
        ui.empty_state("No adapter has been trained yet.", TRAIN)
        return
    ids = [v["version_id"] for v in reversed(versions)]
    chosen = st.selectbox("Adapter", ids, key="training_adapter")
    adapter_detail(api, next(v for v in versions if v["version_id"] == chosen))


def datasets(api) -> None:
    st.subheader("Dataset snapshots")
    snaps = ui.load(api.datasets, "This controller does not list dataset snapshots yet (/admin/v1/datasets).",
                    "Use `kaizen dataset list` on the controller's machine.")
    if snaps is None:
        return
    if not snaps:
        ui.empty_state("No dataset snapshot yet.", "`kaizen dataset build` curates one; the monthly retrain builds "
                                                   "its own.")
        return
    # Nested parts (counts, manifest) as short JSON text: a table cell holds one value.
    ui.table([{k: json.dumps(v, default=str)[:160] if isinstance(v, (dict, list)) else v for k, v in s.items()}
              for s in snaps], key="training_datasets")


st.title("Training")
ui.flash()
api = ui.api()
monthly_runs(api)
adapters(api)
datasets(api)
