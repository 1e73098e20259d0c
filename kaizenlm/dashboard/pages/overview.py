"""Overview: what landed, traffic over time, reward and satisfaction trends, the feedback mix."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from kaizenlm.dashboard import charts, ui

NO_TRAFFIC = ("Send chat turns through the gateway (`POST /v1/turns`, `POST /v1/chat/completions`, or the SDK "
              "`kaizenlm.feedback.client.KaizenClient`), or run `kaizen demo` for simulated users.")


def totals(api) -> dict | None:
    stats = ui.load(api.stats, "This controller has no /admin/v1/stats.", "Upgrade kaizenlm on the controller.")
    if stats is None:
        return None
    counts = stats["counts"]
    cols = st.columns(4)
    cols[0].metric("Turns", f"{counts['turns']:,}")
    cols[1].metric("Feedback events", f"{counts['feedback']:,}")
    cols[2].metric("Signals", f"{counts['signals']:,}")
    cols[3].metric("Dead-lettered", f"{counts['dlq']:,}", help="Events that failed validation (kaizen.dlq)")
    sink = stats.get("sink") or {}
    if sink:
        last = sink.get("last_batch_at")
        at = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if last else "never"
        st.caption(f"Sink: {sink.get('inserted', 0):,} events written in {sink.get('batches', 0):,} batches, "
                   f"{sink.get('errors', 0)} errors; last batch {at}.")
    return stats


def trends(api) -> None:
    left, right = st.columns(2)
    days = left.select_slider("Window", options=[1, 7, 14, 30, 90, 365], value=30, format_func=lambda d: f"{d} days",
                              key="overview_days")
    bucket = right.radio("Bucket", ["hour", "day", "week"], index=1, horizontal=True, key="overview_bucket")
    data = ui.load(lambda: api.trends(days, bucket), "This controller has no dashboard trends endpoint.",
                   "Upgrade kaizenlm on the controller (it serves /admin/v1/dashboard/trends).")
    if data is None:
        return
    t = data["totals"]
    if not t["turns"]:
        ui.empty_state(f"No turns in the last {days} days.", NO_TRAFFIC)
        return
    cols = st.columns(4)
    cols[0].metric("Turns in window", f"{t['turns']:,}")
    cols[1].metric("Thumbs-up share", ui.number(t["thumbs_up_share"], "{:.0%}"),
                   help=f"{t['thumbs_up']} up, {t['thumbs_down']} down (each turn's latest thumbs)")
    cols[2].metric("Mean rating", ui.number(t["mean_rating"], "{:.2f}"), help=f"{t['ratings']} rated turns, 1–5")
    cols[3].metric("Mean reward", ui.number(t["mean_reward"], "{:+.3f}"),
                   help=f"Per-turn reward (-1..1) over the {t['rewarded_turns']} turns with feedback or signals "
                        "(a turn nobody reacted to has no reward)")
    frame = pd.DataFrame(data["items"])
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    st.altair_chart(charts.bars_over_time(frame, "start", "turns", "Traffic", "turns"), width="stretch")
    left, right = st.columns(2)
    reward = charts.long_form(frame, "start", {"mean_reward": "mean reward", "mean_confidence": "mean confidence"})
    left.altair_chart(charts.lines(reward, "start", "Mean per-turn reward", "reward", domain=(-1, 1)), width="stretch")
    # One 0..1 axis for both: a 1-5 rating maps to (rating - 1) / 4.
    scaled = frame.assign(rating_scaled=(pd.to_numeric(frame["mean_rating"]) - 1) / 4)
    satisfaction = charts.long_form(scaled, "start", {"thumbs_up_share": "thumbs-up share",
                                                      "rating_scaled": "mean rating, (r − 1) / 4"})
    right.altair_chart(charts.lines(satisfaction, "start", "Satisfaction", "share (0..1)", domain=(0, 1)),
                       width="stretch")
    if data["by_model"]:
        by_model = pd.DataFrame(data["by_model"]).rename(columns={"model_version": "series", "mean_reward": "value"})
        by_model["start"] = pd.to_datetime(by_model["start"], utc=True)
        st.altair_chart(charts.lines(by_model, "start", "Mean reward per serving model", "reward", domain=(-1, 1)),
                        width="stretch")
    with st.expander("Numbers per bucket"):
        ui.table(data["items"], ["start", "turns", "conversations", "users", "thumbs_up", "thumbs_down",
                                 "thumbs_up_share", "ratings", "mean_rating", "corrections", "rewarded_turns",
                                 "mean_reward", "mean_confidence"], key="overview_buckets")


def feedback_mix(stats: dict) -> None:
    mix = {k: v for k, v in (stats.get("feedback_mix") or {}).items() if v}
    if not mix:
        ui.empty_state("No feedback yet.", "Embed the widget (`<script src=\".../widget.js\">`) or send "
                                           "`POST /v1/feedback` and `POST /v1/signals` from your app or the SDK.")
        return
    st.altair_chart(charts.horizontal_bars(mix, "Feedback mix (all time)"), width="stretch")


def dead_letters(api, stats: dict) -> None:
    if not stats["counts"].get("dlq"):
        return
    with st.expander(f"Dead-lettered events ({stats['counts']['dlq']})"):
        dlq = ui.load(lambda: api.dlq(20), "No dead-letter endpoint.", "Upgrade kaizenlm on the controller.")
        if dlq:
            ui.table(dlq["items"], ["ingested_at", "topic", "reason"], key="overview_dlq")


st.title("Overview")
ui.flash()
api = ui.api()
stats = totals(api)
if stats is not None and not stats["counts"]["turns"]:
    ui.empty_state("No turns have landed yet.", NO_TRAFFIC)
elif stats is not None:
    trends(api)
    feedback_mix(stats)
    dead_letters(api, stats)
