"""Feedback explorer: filter low-reward turns, then read whole conversations with their
feedback, comments, corrections and signals; and the users whose feedback looks like an
attempt to steer training (the per-user anomaly report, kaizenlm/datasets/integrity.py)."""

from __future__ import annotations

import streamlit as st

from kaizenlm.dashboard import ui

THUMBS = {1: "thumbs up", -1: "thumbs down"}  # words: emoji fonts are not everywhere


def filters(versions: list[str]) -> dict:
    c1, c2, c3 = st.columns(3)
    days = c1.selectbox("Window", [1, 7, 30, 90, 365], index=2, format_func=lambda d: f"last {d} days",
                        key="fb_days")
    max_reward = c2.slider("Reward at most", -1.0, 1.0, 0.0, 0.05, key="fb_max_reward",
                           help="Per-turn reward from explicit and implicit feedback, -1..1")
    model = c3.selectbox("Model version", ["(any)", *versions], key="fb_model")
    c4, c5, c6, c7 = st.columns([1, 1, 1, 2])
    with_comment = c4.checkbox("with a comment", key="fb_with_comment")
    with_correction = c5.checkbox("with a correction", key="fb_with_correction")
    unrated = c6.checkbox("also unrated", key="fb_unrated",
                          help="Also turns with feedback but no reward (e.g. only a comment), listed last")
    query = c7.text_input("Text contains", "", key="fb_query", placeholder="words in prompt, answer or comment")
    return {"days": days, "max_reward": max_reward, "model_version": None if model == "(any)" else model,
            "with_comment": with_comment, "with_correction": with_correction, "include_unrated": unrated,
            "q": query.strip() or None}


def conversation(api, conversation_id: str) -> None:
    data = ui.load(lambda: api.conversation(conversation_id), f"No conversation '{conversation_id}'.",
                   "Pick one from the list above.")
    if data is None:
        return
    st.subheader(f"Conversation {conversation_id}")
    st.caption(f"user {data['user_id']} · {len(data['turns'])} turn(s)")
    for turn in data["turns"]:
        with st.chat_message("user"):
            st.write(next((m["content"] for m in reversed(turn["messages"]) if m.get("role") == "user"), ""))
        with st.chat_message("assistant"):
            st.write(turn["response"] or "_(empty answer: the backend failed)_")
            st.caption(f"{ui.when(turn['ts'])} · {turn.get('model_version') or 'unknown model'}"
                       + (f" ({turn['variant']})" if turn.get("variant") else "")
                       + f" · reward {ui.number(turn['reward'], '{:+.2f}')}"
                       + (f" · {turn['latency_ms']:.0f} ms" if turn.get("latency_ms") is not None else ""))
            for f in turn["feedback"]:
                parts = [THUMBS.get(f.get("thumbs"), ""), f"rated {f['rating']}/5" if f.get("rating") else ""]
                if f.get("comment"):
                    parts.append(f"“{f['comment']}”")
                st.markdown("Feedback: " + ", ".join(p for p in parts if p))
                if f.get("correction"):
                    st.markdown(f"Correction: **{f['correction']}**")
            if turn["signals"]:
                st.caption("Signals: " + ", ".join(s["kind"] for s in turn["signals"]))


def user_anomalies(api, days: int) -> None:
    st.subheader("Users to check")
    data = ui.load(lambda: api.user_anomalies(days=days, limit=50),
                   "This controller has no anomaly report (/admin/v1/user_anomalies).", "Upgrade kaizenlm on the controller.")
    if data is None:
        return
    t = data["thresholds"]
    held = "their turns are left out of training data" if t["hold_flagged_users"] else "kept in training data"
    st.caption(f"{data['users']:,} user(s) with turns in the last {days} days; {data['flagged']} flagged ({held}). "
               f"Flags: correction rate ≥ {t['anomaly_correction_rate']:.0%} over ≥ {t['anomaly_min_corrections']} "
               f"corrections; the same correction ≥ {t['anomaly_duplicate_texts']} times; ≥ {t['anomaly_burst_events']} "
               f"feedback events or signals within {t['anomaly_burst_seconds']} s.")
    rows = [r for r in data["rows"] if r["flags"] or r["corrected_turns"]]
    if not rows:
        ui.empty_state("No user has sent corrections in this window.", "Nothing to check.")
        return
    ui.table([{"user": r["user_id"], "flags": ", ".join(r["flags"]) or "", "turns": r["turns"],
               "corrected": r["corrected_turns"], "correction rate": r["correction_rate"],
               "same correction": r["duplicate_corrections"], "most repeated": r["most_repeated_correction"] or "",
               "burst": r["burst_events"]} for r in rows], key="fb_anomalies")


st.title("Feedback explorer")
ui.flash()
api = ui.api()
probe = ui.load(lambda: api.low_reward_turns(limit=1, days=365, max_reward=1.0),
                "This controller has no dashboard read API (/admin/v1/dashboard).",
                "Upgrade kaizenlm on the controller.")
if probe is not None:
    chosen = filters(probe["model_versions"])
    data = ui.load(lambda: api.low_reward_turns(limit=200, **chosen), "No results.", "Widen the filters.")
    if data is not None and not data["items"]:
        ui.empty_state(f"No turn with feedback and reward ≤ {chosen['max_reward']:+.2f} in the last {chosen['days']} "
                       "days matches.", "Widen the window or raise 'Reward at most'. Feedback arrives through the "
                                        "widget, the SDK or `POST /v1/feedback` and `/v1/signals`.")
    elif data is not None:
        st.caption(f"{data['total']:,} turn(s) match; the {len(data['items'])} worst are listed, worst first.")
        ui.table([{"reward": t["reward"], "confidence": t["confidence"], "when": ui.when(t["ts"]), "prompt": t["prompt"], "answer": t["response"],
                   "thumbs": THUMBS.get(t["thumbs"], ""), "rating": t["rating"], "comment": t["comment"],
                   "correction": t["correction"], "signals": ", ".join(f"{k}×{n}" for k, n in t["signals"].items()),
                   "model": t["model_version"], "conversation": t["conversation_id"]} for t in data["items"]],
                 key="fb_turns")
        conversations = list(dict.fromkeys(t["conversation_id"] for t in data["items"]))
        picked = st.selectbox("Read conversation", conversations, key="fb_conversation")
        conversation(api, picked)
    user_anomalies(api, chosen["days"])
