"""Altair charts of the dashboard: plain functions from DataFrames to charts (no Streamlit here)."""

from __future__ import annotations

import altair as alt
import pandas as pd

HEIGHT = 220


def long_form(frame: pd.DataFrame, x: str, columns: dict[str, str]) -> pd.DataFrame:
    """Columns {column: label} of a wide frame as (x, series, value) rows, dropping missing values."""
    present = {c: label for c, label in columns.items() if c in frame}
    out = frame[[x, *present]].melt(id_vars=[x], var_name="series", value_name="value")
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    out = out.dropna(subset=["value"])
    out["series"] = out["series"].map(present)
    return out


def bars_over_time(frame: pd.DataFrame, x: str, y: str, title: str, y_title: str) -> alt.Chart:
    return (alt.Chart(frame, title=title, height=HEIGHT).mark_bar()
            .encode(x=alt.X(f"{x}:T", title=None), y=alt.Y(f"{y}:Q", title=y_title),
                    tooltip=[alt.Tooltip(f"{x}:T"), alt.Tooltip(f"{y}:Q")]))


def lines(frame: pd.DataFrame, x: str, title: str, y_title: str, x_type: str = "T",
          domain: tuple[float, float] | None = None, log: bool = False, sort: list[str] | None = None) -> alt.Chart:
    """Lines with points of a long frame (x, series, value)."""
    scale = alt.Scale(type="log") if log else (alt.Scale(domain=list(domain)) if domain else alt.Undefined)
    x_enc = alt.X(f"{x}:{x_type}", title=None, sort=sort if sort is not None else alt.Undefined)
    return (alt.Chart(frame, title=title, height=HEIGHT).mark_line(point=True)
            .encode(x=x_enc, y=alt.Y("value:Q", title=y_title, scale=scale),
                    color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
                    tooltip=[alt.Tooltip(f"{x}:{x_type}"), "series:N", alt.Tooltip("value:Q", format=".3f")]))


def horizontal_bars(counts: dict[str, int], title: str) -> alt.Chart:
    frame = pd.DataFrame({"kind": list(counts), "count": list(counts.values())})
    return (alt.Chart(frame, title=title, height=max(120, 24 * len(frame))).mark_bar()
            .encode(y=alt.Y("kind:N", title=None, sort="-x"), x=alt.X("count:Q", title="events"),
                    tooltip=["kind:N", "count:Q"]))


def effect_with_interval(looks: pd.DataFrame, mde: float | None) -> alt.Chart:
    """Challenger minus champion on the primary metric at each look, with its always-valid interval."""
    base = alt.Chart(looks, title="Primary metric: challenger − champion (always-valid CI)", height=HEIGHT)
    band = base.mark_area(opacity=0.25).encode(x=alt.X("ts:T", title=None), y=alt.Y("ci_low:Q", title="effect"),
                                               y2="ci_high:Q")
    line = base.mark_line(point=True).encode(x="ts:T", y="effect:Q",
                                             tooltip=["ts:T", alt.Tooltip("effect:Q", format="+.4f"),
                                                      alt.Tooltip("ci_low:Q", format="+.4f"),
                                                      alt.Tooltip("ci_high:Q", format="+.4f"), "n:Q"])
    refs = pd.DataFrame({"y": [0.0] + ([mde, -mde] if mde else []),
                         "what": ["no effect"] + (["+MDE", "−MDE"] if mde else [])})
    rules = alt.Chart(refs).mark_rule(strokeDash=[4, 4]).encode(y="y:Q", color=alt.Color("what:N", title=None))
    return alt.layer(band, line, rules)


def p_value_boundary(looks: pd.DataFrame, alpha: float) -> alt.Chart:
    """The always-valid p-value at each look against the stopping boundary alpha (log scale)."""
    frame = looks.assign(p_value=looks["p_value"].clip(lower=1e-6))
    line = (alt.Chart(frame, title=f"Sequential boundary: stop when p ≤ α = {alpha:g}", height=HEIGHT)
            .mark_line(point=True)
            .encode(x=alt.X("ts:T", title=None), y=alt.Y("p_value:Q", title="always-valid p-value",
                                                         scale=alt.Scale(type="log", domain=[1e-4, 1])),
                    tooltip=["ts:T", alt.Tooltip("p_value:Q", format=".4g")]))
    rule = alt.Chart(pd.DataFrame({"alpha": [alpha]})).mark_rule(color="red", strokeDash=[4, 4]).encode(y="alpha:Q")
    return alt.layer(line, rule)
