"""The demo's curation stage: the traffic that just landed -> a dataset snapshot, built by the
controller through its admin API (exactly what `kaizen dataset build` does when a controller
runs), with its counts per curation step.
"""

from __future__ import annotations

import time

from rich.table import Table

# The controller has the base answer the general prompts once, in the background after its
# first start (about 35 s on 2 idle cores; the traffic stage waits for them). Replay and the KL
# anchor come from those answers, so curating before they exist would train without them.
GENERAL_ANSWERS_TIMEOUT_S = 900.0


def wait_for_general_answers(ctx, timeout_s: float = GENERAL_ANSWERS_TIMEOUT_S) -> None:
    """Block until the base's answers to the general prompts (cfg.replay_path) are on disk."""
    if ctx.cfg.replay_path is not None:
        return
    deadline = time.monotonic() + timeout_s
    with ctx.console.status("waiting for the base's answers to the general prompts (replay and anchor data)"):
        while ctx.cfg.replay_path is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the base has not answered the general prompts after {timeout_s:.0f} s; "
                                   f"see {ctx.cfg.home / 'logs' / 'base-build.log'} (or general-answers.log there) "
                                   "and rerun `kaizen demo`")
            time.sleep(2.0)


def _public_addresses(ctx) -> list[str]:
    """The support domain's own contact addresses: facts to learn, not anyone's personal data."""
    return sorted({f.value for f in ctx.domain.facts if "@" in f.value})


def stage_dataset(ctx) -> None:
    """Curation: rewards, PII scrub, quality, dedup, topic balance, split, replay -> a snapshot."""
    wait_for_general_answers(ctx)
    m = ctx.admin("POST", "/admin/v1/datasets/build", timeout=600,
                  json={"all": True, "curation": {"pii_keep": _public_addresses(ctx)}})
    ctx.dataset = m
    table = Table(title=f"Curation: snapshot {m['snapshot_id']}")
    for col in ("output", "step", "in", "out", "dropped"):
        table.add_column(col, justify="right" if col in ("in", "out") else "left")
    for output, steps in m["curation"]["steps"].items():
        for s in steps:
            dropped = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items())
            table.add_row(output, s["step"], str(s["in"]), str(s["out"]), dropped)
    ctx.console.print(table)
    counts, mix, sources = m["counts"], m["mix_ratio"], m["pair_sources"]
    pii = ", ".join(f"<{k}> {v}" for k, v in m["curation"].get("pii_replaced", {}).items() if v) or "none"
    ctx.console.print(f"pairs mined per source: {sources}; PII replaced: {pii}")
    ctx.summary["dataset snapshot"] = m["snapshot_id"]
    ctx.summary["snapshot SFT train/eval, DPO train/eval"] = \
        f"{counts['sft_train']}/{counts['sft_eval']}, {counts['dpo_train']}/{counts['dpo_eval']}"
    ctx.summary["DPO pairs mined per source"] = ", ".join(f"{k} {v}" for k, v in sources.items())
    ctx.summary["replay mix"] = f"{mix['replay_rows']} of {mix['sft_train_rows']} SFT train rows ({mix['actual']})"
