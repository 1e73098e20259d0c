"""Annotate: the human review queue, one item at a time with keyboard shortcuts, the blind
comparison view (answers A and B, versions hidden), and the agreement figures with the gate
that decides whether reviewed labels enter training (docs/ANNOTATION.md).

Keys: on an answer, 1-9 pick the label, a accepts, e saves the edited answer (type it in the
box, then leave the box: shortcuts do not fire while typing), x rejects; on a blind pair a / b
pick the better answer, t a tie, x both bad. ("c" and "r" are Streamlit's own keys.)
Labelling needs a key typed by the person: their review key on this page, or the admin key in
the sidebar together with a reviewer name.
"""

from __future__ import annotations

import streamlit as st

from kaizenlm.dashboard import ui
from kaizenlm.dashboard.api_client import ControllerError

ANSWER_KEYS = {"accept": "A", "edit": "E", "reject": "X"}
BLIND_KEYS = {"a": ("A is better", "A"), "b": ("B is better", "B"), "tie": ("Tie", "T"), "both_bad": ("Both bad", "X")}
WHAT_IS_JUDGED = {
    "correction": "Is the **user's correction** right? Accept it, edit it into the right answer, or reject it.",
    "disagreement": "The user's feedback and their actions disagree. Is the **served answer** right?",
    "sample": "A random served answer. Is it right?",
}


def queue(status: dict) -> None:
    per_kind = status.get("per_kind") or {}
    c1, c2, c3 = st.columns(3)
    c1.metric("Items", status.get("items", 0))
    c2.metric("Labelled", sum(k["labelled"] for k in per_kind.values()))
    c3.metric("Open assignments", sum((status.get("open_per_reviewer") or {}).values()))
    ui.table([{"kind": k, **v} for k, v in per_kind.items()], ["kind", "items", "assigned", "labelled", "overlap_items"],
             key="annotate_kinds")
    if status.get("open_per_reviewer"):
        ui.table([{"reviewer": r, "open items": n} for r, n in status["open_per_reviewer"].items()],
                 key="annotate_open")


def gate_box(gate: dict) -> None:
    if gate.get("open"):
        st.success(f"Reviewed labels enter training: {gate['reason']}", icon=":material/verified:")
    else:
        st.warning(f"Reviewed labels stay out of training: {gate['reason']}", icon=":material/block:")


def who() -> tuple[str, str | None, str]:
    """(the key that labels, the reviewer named for the admin key, the review key typed here)."""
    c1, c2 = st.columns(2)
    review_key = c1.text_input("Your review key", type="password", key="annotate_review_key",
                               help="From `kaizen keys create --scope review --reviewer NAME`: it names you.").strip()
    name = c2.text_input("Reviewer (with the admin key)", key="annotate_reviewer",
                         help="Whom the admin key typed in the sidebar labels for.").strip()
    return review_key or ui.typed_key(), (None if review_key else name or None), review_key


def pick_label(item_id: str, label: str) -> None:
    st.session_state[f"annotate_pick_{item_id}"] = label


def answer_view(api, item: dict, schema: list[str], key: str, reviewer: str | None) -> None:
    item_id = item["item_id"]
    st.caption(WHAT_IS_JUDGED.get(item["kind"], ""))
    with st.container(border=True):
        st.markdown(f"**Question**\n\n{item['prompt']}")
        st.markdown(f"**Served answer**\n\n{item['answer']}")
        if item.get("correction"):
            st.markdown(f"**User's correction**\n\n{item['correction']}")
    picked = st.session_state.get(f"annotate_pick_{item_id}")
    st.write("Label" + (f": **{picked}**" if picked else f" (keys 1-{min(len(schema), 9)})"))
    cols = st.columns(len(schema))
    for n, (col, label) in enumerate(zip(cols, schema, strict=True)):
        col.button(label, key=f"annotate_label_{n}", shortcut=str(n + 1) if n < 9 else None,
                   type="primary" if picked == label else "secondary", on_click=pick_label, args=(item_id, label),
                   width="stretch")
    gold = st.text_area("Edited answer (for Edit)", value=item.get("correction") or item["answer"],
                        key=f"annotate_gold_{item_id}", height=120)
    cols = st.columns(3)
    clicked = None
    for col, (verdict, shortcut) in zip(cols, ANSWER_KEYS.items(), strict=True):
        if col.button(verdict.capitalize(), key=f"annotate_{verdict}", shortcut=shortcut, width="stretch",
                      type="primary" if verdict == "accept" else "secondary", disabled=not key):
            clicked = verdict
    if clicked is None:
        return
    if not picked:
        st.warning(f"Pick a label first (keys 1-{min(len(schema), 9)}), then the verdict.")
        return
    ui.act(lambda k: api.annotate_label(item_id, clicked, k, label=picked,
                                        gold_answer=gold if clicked == "edit" else None, reviewer=reviewer),
           f"Labelled {item_id}: {clicked}, {picked}.", key=key)


def blind_view(api, item: dict, key: str, reviewer: str | None) -> None:
    item_id = item["item_id"]
    st.caption("Blind comparison: which answer is better? Which model wrote which is hidden.")
    with st.container(border=True):
        st.markdown(f"**Question**\n\n{item['prompt']}")
    a, b = st.columns(2)
    with a.container(border=True):
        st.markdown(f"**A**\n\n{item['answer_a']}")
    with b.container(border=True):
        st.markdown(f"**B**\n\n{item['answer_b']}")
    cols = st.columns(len(BLIND_KEYS))
    for col, (verdict, (title, shortcut)) in zip(cols, BLIND_KEYS.items(), strict=True):
        if col.button(title, key=f"annotate_blind_{verdict}", shortcut=shortcut, width="stretch", disabled=not key):
            ui.act(lambda k, v=verdict: api.annotate_label(item_id, v, k, reviewer=reviewer),
                   f"Labelled {item_id}: {title}.", key=key)


def review(api, schema: list[str]) -> None:
    st.subheader("Review")
    key, reviewer, review_key = who()
    if not (review_key or reviewer):
        ui.empty_state("No reviewer yet.", "Type your review key above, or a reviewer name and the admin key in "
                                           "the sidebar.")
        return
    try:  # a reviewer's key reads their own queue; else the dashboard reads the named reviewer's
        found = api.annotate_next(key=review_key or None, reviewer=reviewer)
    except ControllerError as e:
        st.error(f"Cannot read the next item: {e.detail}")
        return
    item = found.get("item")
    if item is None:
        ui.empty_state(f"Nothing open for {found.get('reviewer')}.",
                       "New items arrive with the weekly tier; `kaizen annotate queue assign` hands out the queue.")
        return
    st.caption(f"Reviewing as **{found['reviewer']}** - {item['item_id']} ({item['kind']}), "
               f"{item['remaining']} open" + ("" if key else " - type a key to label"))
    if item["kind"] == "blind_pair":
        blind_view(api, item, key, reviewer)
    else:
        answer_view(api, item, schema, key, reviewer)


def agreement(stats: dict) -> None:
    st.subheader("Agreement")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Fleiss' κ, labels", ui.number(stats["label"]["fleiss_kappa"]))
    c2.metric("Fleiss' κ, verdicts", ui.number(stats["verdict"]["fleiss_kappa"]))
    c3.metric("Fleiss' κ, blind preferences", ui.number(stats["preference"]["fleiss_kappa"]))
    c4.metric("Items labelled by 2+", stats["label"]["items_rated_2plus"])
    gate_box(stats["gate"])
    pairs = [{"what": what, "reviewers": f"{p['a']} / {p['b']}", "Cohen's κ": p["kappa"], "shared items": p["items"],
              "labelled alike": p["observed"]}
             for what in ("label", "verdict", "preference") for p in stats[what]["pairwise_cohen_kappa"]]
    if pairs:
        ui.table(pairs, key="annotate_pairs")
    rates = stats.get("human_win_rates") or {}
    if rates:
        st.write("Human win rate of each candidate against the champion it was compared with (ties count half):")
        ui.table([{"candidate": v, "vs": r["human_win_rate_vs"], "human win rate": r["human_win_rate"],
                   "comparisons": r["human_comparisons"], "labels": r["human_labels"]} for v, r in rates.items()],
                 key="annotate_rates")


st.title("Annotate")
ui.flash()
api = ui.api()
status = ui.load(api.annotate_status, "This controller has no annotation API (/admin/v1/annotate) yet.",
                 "Upgrade kaizenlm on the controller; `kaizen annotate queue status` shows the same.")
if status is not None:
    if not status.get("items"):
        ui.empty_state("The review queue is empty.",
                       "The weekly tier queues the week's corrections, disagreements and a sample; "
                       "`kaizen annotate queue sweep` does it now, then `kaizen annotate queue assign --reviewers a,b`.")
    else:
        queue(status)
        stats = ui.load(api.annotate_stats, "No agreement figures yet.", "Label the overlap items.")
        schema = (stats or {}).get("schema") or ["correct", "incomplete", "wrong", "unsafe", "off-topic"]
        review(api, schema)
        if stats is not None:
            agreement(stats)
