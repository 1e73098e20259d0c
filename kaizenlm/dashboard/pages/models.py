"""Models: the registry table, lineage, evaluation metrics across versions, alias history;
promote a version to an alias or roll an alias back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import charts, ui

REGISTER = ("Run the monthly retrain (`kaizen jobs run monthly`): it registers the base model and each adapter "
            "it trains. Versions built elsewhere go in with `RegistryClient.register_version` (docs/REGISTRY.md).")
# Evaluation metrics shown first when a version has them (the names the quarterly review reads).
PREFERRED = ("domain_score", "retention", "general_score", "refusal_rate", "pairwise_win_rate", "human_win_rate")


def flat_numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as {dotted.name: value} (lists and text left out)."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def registry_table(versions: list[dict]) -> None:
    kinds = sorted({v["kind"] for v in versions})
    shown = st.multiselect("Kinds", kinds, default=kinds, key="models_kinds")
    ui.table([{"version": v["version_id"], "kind": v["kind"], "status": v["status"],
               "aliases": ", ".join(v.get("aliases") or []), "parent": v.get("parent_id"),
               "snapshot": v.get("snapshot_id"), "created": ui.when(v.get("created_at")),
               "tainted": v.get("tainted"), "note": v.get("note")}
              for v in versions if v["kind"] in shown], key="models_registry")


def metrics_across_versions(versions: list[dict]) -> None:
    st.subheader("Evaluation metrics across versions")
    models = [v for v in versions if v["kind"] != "knowledge"]
    rows = [{"version": v["version_id"], **flat_numbers(v.get("metrics") or {})} for v in models]
    frame = pd.DataFrame(rows)
    names = [c for c in frame.columns if c != "version"]
    if not names:
        ui.empty_state("No evaluation metrics recorded on any model version.",
                       "The monthly retrain's evaluation records them; "
                       "`POST /admin/v1/registry/versions/ID/metrics` adds metrics to any version.")
        return
    default = [n for n in names if n.rsplit(".", 1)[-1] in PREFERRED] or names[:4]
    chosen = st.multiselect("Metrics", names, default=default, key="models_metrics")
    if chosen:
        order = [v["version_id"] for v in models]
        long = charts.long_form(frame, "version", {c: c for c in chosen})
        st.altair_chart(charts.lines(long, "version", "Metrics per version (oldest left)", "value", x_type="N",
                                     sort=order), width="stretch")
        with st.expander("Numbers"):
            ui.table(frame[["version", *chosen]].to_dict("records"), key="models_metric_numbers")


def lineage(api, versions: list[dict]) -> None:
    st.subheader("Lineage")
    ids = [v["version_id"] for v in reversed(versions)]
    chosen = st.selectbox("Version", ids, key="models_lineage_version")
    data = ui.load(lambda: api.lineage(chosen), f"No lineage for {chosen}.", "Pick another version.")
    if not data:
        return
    lines = ["digraph { rankdir=LR; node [shape=box, style=rounded, fontsize=11];"]
    rows = []
    for link in data["chain"]:
        v, snap = link["version"], link.get("snapshot")
        label = f"{v['version_id']}\\n{v['kind']} · {v['status']}" + (f"\\n[{', '.join(link['aliases'])}]"
                                                                      if link.get("aliases") else "")
        lines.append(f'"{v["version_id"]}" [label="{label}"];')
        if v.get("parent_id"):
            lines.append(f'"{v["parent_id"]}" -> "{v["version_id"]}";')
        if v.get("snapshot_id"):
            lines.append(f'"{v["snapshot_id"]}" [shape=cylinder]; "{v["snapshot_id"]}" -> "{v["version_id"]}";')
        rows.append({"version": v["version_id"], "kind": v["kind"], "parent": v.get("parent_id"),
                     "snapshot": v.get("snapshot_id"), "window since": (snap or {}).get("since"),
                     "window until": (snap or {}).get("until"), "snapshot verified": link.get("snapshot_verified")})
    st.graphviz_chart("\n".join(lines) + "}")
    ui.table(rows, key="models_lineage")


def alias_history(api, aliases: dict[str, str]) -> None:
    st.subheader("Aliases")
    if not aliases:
        ui.empty_state("No aliases yet.", "Promote a version below (or `kaizen registry promote VERSION`): the "
                                          "gateways serve the version 'champion' points at.")
        return
    ui.table([{"alias": a, "version": v} for a, v in sorted(aliases.items())], key="models_aliases")
    alias = st.selectbox("History of", sorted(aliases), key="models_history_alias")
    history = ui.load(lambda: api.alias_history(alias), f"No history for '{alias}'.", "Pick another alias.")
    if history:
        ui.table([{"seq": m["seq"], "when": ui.when(m.get("ts")), "from": m.get("from_version"),
                   "to": m["to_version"], "action": m["action"], "reason": m.get("reason"), "actor": m.get("actor")}
                  for m in reversed(history)], key="models_history")


def actions(api, versions: list[dict], aliases: dict[str, str]) -> None:
    st.subheader("Promote or roll back")
    ui.needs_key_note()
    disabled = not ui.typed_key()
    servable = [v["version_id"] for v in reversed(versions) if v["kind"] != "knowledge" and not v.get("tainted")]
    left, right = st.columns(2)
    with left.container(border=True):
        version = st.selectbox("Version", servable or ["(none)"], key="models_promote_version")
        alias = st.text_input("Alias", "champion", key="models_promote_alias")
        reason = st.text_input("Reason", "", key="models_promote_reason")
        if st.button("Promote", key="models_promote", type="primary", disabled=disabled or not servable):
            ui.act(lambda key: api.promote(alias.strip(), version, key, reason),
                   f"'{alias.strip()}' now points at {version}.")
    with right.container(border=True):
        names = sorted(aliases) or ["champion"]
        target = st.selectbox("Alias to roll back", names, key="models_rollback_alias")
        st.caption(f"Now: {aliases.get(target, 'nothing')}. Moves it back one step in its history.")
        if st.button("Roll back", key="models_rollback", disabled=disabled or target not in aliases):
            ui.act(lambda key: api.rollback(target, key), f"Rolled '{target}' back one step.")


st.title("Models")
ui.flash()
api = ui.api()
versions = ui.load(api.versions, "This controller has no registry API.", "Upgrade kaizenlm on the controller.")
if versions is not None and not versions:
    ui.empty_state("The registry is empty.", REGISTER)
elif versions:
    registry_table(versions)
    metrics_across_versions(versions)
    lineage(api, versions)
    aliases = ui.load(api.aliases, "No alias API on this controller.", "Upgrade kaizenlm on the controller.") or {}
    alias_history(api, aliases)
    actions(api, versions, aliases)
