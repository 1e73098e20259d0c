"""The demo's loop stages after the first traffic: weekly knowledge refresh, monthly
retrain, an A/B test driven by simulated users to a decision, a rollback, the quarterly
review. Each talks to the running controller and gateway only through their HTTP APIs,
exactly as an operator's tools would, and adds its figures to the demo summary.
"""

from __future__ import annotations

import importlib
import random
import threading
import time

import httpx
from rich.table import Table
from tqdm import tqdm

from kaizenlm.demo.traffic import Ask, Feedback, ask_all, chat, react
from kaizenlm.demo.users import Behaviour
from kaizenlm.eval.metrics import key_fact_score


def run_tier(ctx, tier: str, timeout_s: float) -> dict:
    """Start a scheduler tier on the controller and follow it with a progress bar until it ends."""
    started = ctx.admin("POST", f"/admin/v1/jobs/{tier}/run")
    run_id = started["run_id"]
    deadline = time.monotonic() + timeout_s
    with tqdm(total=100, desc=f"{tier} tier", unit="%") as bar:
        while True:
            run = ctx.admin("GET", f"/admin/v1/jobs/runs/{run_id}")
            fraction = (run.get("progress") or {}).get("fraction")
            if fraction is not None:
                bar.n = int(100 * fraction)
                bar.set_postfix_str((run.get("progress") or {}).get("message", "")[:60], refresh=False)
                bar.refresh()
            if run["status"] != "running":
                bar.n = 100
                bar.refresh()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {tier} tier did not finish in {timeout_s:.0f}s; see {run.get('log_path')}")
            time.sleep(1.0)
    if run["status"] != "succeeded":
        raise RuntimeError(f"the {tier} tier failed: {run.get('error')} (log: {run.get('log_path')})")
    return run.get("result") or {}


# Documents published after the retrain: facts no training row has taught; retrieval puts
# them in the prompt (knowledge.chat_retrieval), so the model can answer them today. Each opens
# with a sentence that names its subject, as the rest of the demo's knowledge base does: the
# 135M model copies such a sentence from the context, and misreads looser phrasing ("During
# public holidays the support line is open ..." got "The support line is open on public
# holidays."; docs/KNOWLEDGE.md, "What a small model reads").
NEW_DOCUMENTS = [
    ("holiday-support", "Holiday support", "The support line on public holidays is open from 10 to 4.",
     "When is the support line open on public holidays?", "10 to 4"),
    ("data-export", "Data export",
     "The full data export time is 6 hours. A full data export is ready within 6 hours of the request.",
     "How long does a full data export take?", "6 hours"),
    ("student-discount", "Student discount",
     "The student discount is 40 percent. Students get a 40 percent discount on the Pro plan.",
     "How big is the student discount?", "40 percent"),
]


def stage_knowledge(ctx) -> None:
    """Weekly tier: the support documents (three of them new) -> a FAISS knowledge version; the
    new facts are answered through retrieval before any retrain has taught them."""
    # The bad candidate trains next, in this process: import trl and peft now (~10 s of one core),
    # while the refresh job and the gateway's few answers leave a core idle.
    threading.Thread(target=importlib.import_module, args=("kaizenlm.retrain.lora_sft",), daemon=True,
                     name="import-training").start()
    docs = ctx.cfg.home / "docs"
    written = ctx.domain.write_documents(docs)
    for doc_id, title, text, _, _ in NEW_DOCUMENTS:
        (docs / f"{doc_id}.md").write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
        written.append(docs / f"{doc_id}.md")
    result = run_tier(ctx, "weekly", timeout_s=900)
    client = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=300,
                          headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    try:
        _wait_for_retrieval(client, result.get("version_id"))
        replies = ask_all(client, [Ask("reader", f"new-doc-{i}", q) for i, (*_, q, _) in enumerate(NEW_DOCUMENTS)],
                          "questions about the new documents")
    finally:
        client.close()
    right = 0
    for (_, _, _, question, value), reply in zip(NEW_DOCUMENTS, replies, strict=True):
        ok = key_fact_score(reply["answer"], value) == 1.0  # as the exam scores: "40%" states "40 percent"
        right += ok
        ctx.console.print(f"  {question} -> {reply['answer']!r} ({'right' if ok else 'wrong'}; retrieved "
                          f"{', '.join(reply.get('retrieved_doc_ids') or []) or 'nothing'})")
    ctx.summary["new documents answered through retrieval"] = f"{right} of {len(NEW_DOCUMENTS)} right"
    metrics = result.get("metrics", {})
    ctx.summary["knowledge version"] = f"{result.get('version_id')} ({metrics.get('chunks')} chunks, " \
                                       f"{metrics.get('index_type')})"
    ctx.summary["knowledge coverage of last week's questions"] = _pct(metrics.get("coverage"))
    table = Table(title="Weekly knowledge refresh")
    table.add_column("what")
    table.add_column("value")
    for k, v in [("documents written", len(written)), ("version", result.get("version_id")),
                 *[(k, v) for k, v in metrics.items()]]:
        table.add_row(str(k), str(v))
    ctx.console.print(table)


def _wait_for_retrieval(client: httpx.Client, version_id: str | None, timeout_s: float = 120.0) -> None:
    """Until the gateway retrieves from the new knowledge version (it follows the alias within a
    second, then loads the index and the sentence model)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        routing = client.get("/v1/routing").json()
        if (routing.get("knowledge") or {}).get("serving") == version_id:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the gateway did not load knowledge version {version_id} in {timeout_s:.0f}s; see its log")


def stage_retrain(ctx) -> None:
    """Monthly tier: snapshot -> LoRA SFT -> DPO -> evaluation -> gate -> A/B test."""
    result = run_tier(ctx, "monthly", timeout_s=3600)
    ctx.retrain = result
    before, after = result.get("champion_metrics", {}), result.get("candidate_metrics", {})
    table = Table(title="Monthly retrain: evaluation before (champion) and after (candidate)")
    for col in ("metric", "champion", "candidate"):
        table.add_column(col)
    for key in sorted(set(before) | set(after)):
        table.add_row(key, _fmt(before.get(key)), _fmt(after.get(key)))
    ctx.console.print(table)
    ctx.console.print(f"gate passed: {result.get('gate_passed')}  {'; '.join(result.get('gate_reasons') or [])}")
    ctx.summary["domain exam (key facts stated) before -> after"] = \
        f"{_fmt(before.get('domain_score'))} -> {_fmt(after.get('domain_score'))}"
    ctx.summary["general skills (multiple choice) before -> after"] = \
        f"{_fmt(before.get('general_score'))} -> {_fmt(after.get('general_score'))}"
    ctx.summary["candidate"] = f"{result.get('candidate')} (gate {'passed' if result.get('gate_passed') else 'failed'})"


def stage_ab(ctx) -> None:
    """Simulated users talk to the gateway; the controller analyses until it decides."""
    experiment = (ctx.retrain or {}).get("experiment")
    if not experiment:
        ctx.summary["A/B decision"] = "no experiment (the candidate did not pass the gate)"
        ctx.console.print("[yellow]no experiment to run: the candidate did not pass the gate[/yellow]")
        return
    rng = random.Random(ctx.seed + 1)
    behaviour = Behaviour()
    client = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=300,
                          headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    feedback = Feedback(ctx.cfg.gateway_url, ctx.cfg.auth.ingest_key, ctx.cfg.auth.widget_key)
    max_users = 480 if ctx.short else 960
    decision, served, asked = None, {}, 0
    try:
        while asked < max_users:
            asks = [Ask(f"ab-user-{asked + i:05d}", f"ab-{ctx.seed}-{asked + i:05d}", _question(ctx.domain, rng))
                    for i in range(48)]
            replies = ask_all(client, asks, f"A/B traffic (users {asked + 1}-{asked + len(asks)})")
            for ask, reply in zip(asks, replies, strict=True):
                served[reply["model_version"]] = served.get(reply["model_version"], 0) + 1
                react(ctx.domain, ask, reply, feedback, rng, behaviour, second_try=True)
            asked += len(asks)
            ctx.admin("POST", "/admin/v1/drain")
            out = ctx.admin("POST", "/admin/v1/ab/analyse", json={"experiment_id": experiment})
            decision = _decision_for(out, experiment)
            if decision and decision.get("action") in ("promote", "rollback", "keep_champion"):
                break
    finally:
        client.close()
        feedback.close()
    ctx.summary["A/B traffic served"] = ", ".join(f"{k}: {v}" for k, v in sorted(served.items()))
    status = ctx.admin("GET", f"/admin/v1/ab/experiments/{experiment}")
    ctx.ab = status
    action = (decision or {}).get("action") or status.get("status")
    ctx.summary["A/B decision"] = f"{experiment}: {action} after {asked} users ({(decision or {}).get('reason', '')[:80]})"
    ctx.console.print(f"experiment {experiment}: {action}")


def _question(domain, rng: random.Random) -> str:
    fact = rng.choice(domain.facts)
    return rng.choice([fact.question, *fact.paraphrases])


def stage_side_by_side(ctx) -> None:
    """A few questions, answered by the first champion (the base) and by the retrained candidate."""
    base, candidate = _first_champion(ctx), (ctx.retrain or {}).get("candidate")
    if not base or not candidate:
        ctx.console.print("[yellow]no candidate to compare with[/yellow]")
        return
    rng = random.Random(ctx.seed + 3)
    facts = rng.sample(ctx.domain.facts, 4)
    questions = [rng.choice(f.exam_paraphrases) for f in facts] + GENERAL_QUESTIONS
    client = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=300,
                          headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    asks = [Ask("side-by-side", f"sbs-{i}", q) for i, q in enumerate(questions)]
    try:
        base_answers = [r["answer"] for r in ask_all(client, asks, f"side by side: {base}", model=base)]
        candidate_answers = [r["answer"] for r in ask_all(client, asks, f"side by side: {candidate}", model=candidate)]
    finally:
        client.close()
    rows = list(zip(questions, base_answers, candidate_answers, strict=True))
    table = Table(title=f"The same questions: {base} (base) and {candidate} (retrained)")
    for col in ("question", base, candidate):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    ctx.console.print(table)
    ctx.side_by_side = rows
    for i, (q, a, b) in enumerate(rows):
        ctx.summary[f"Q{i + 1}: {q}"] = f"{base}: {a!r} | {candidate}: {b!r}"


# General questions the base answers right ("mice", "5"), so the table shows whether the retrain
# kept a skill. Neither is a shipped general prompt (no replay or anchor row trained on it) nor an
# out-of-scope question of the demo's domain: "What is the capital of {x}?" and "Translate {x}
# into Spanish." are out-of-scope templates there (domain._OUT_OF_SCOPE), which the assistant is
# taught to decline, so its free-form answers to them waver between a refusal and an answer.
GENERAL_QUESTIONS = ["What is the plural of mouse?", "What is 10 percent of 50?"]


def _first_champion(ctx) -> str | None:
    history = ctx.admin("GET", "/admin/v1/registry/aliases/champion/history").get("history", [])
    return history[0]["to_version"] if history else None


def _decision_for(analysis: dict, experiment: str) -> dict | None:
    for item in analysis.get("results") or []:
        if item.get("experiment_id") == experiment:
            return item
    return None


def corrupted_rows(domain, seed: int) -> list[dict]:
    """Each fact's question answered with another fact's answer: the poisoned labels of the bad
    candidate (and no general replay at all)."""
    rng = random.Random(seed)
    rows = []
    for fact in domain.facts:
        wrong = rng.choice([f for f in domain.facts if f.qid != fact.qid])
        rows.append({"prompt": fact.question, "response": wrong.answer})
    return rows


def stage_bad_candidate(ctx) -> None:
    """A deliberately bad candidate (corrupted labels, no replay) must be stopped by the gates.

    Trained here with the same recipe as the monthly retrain, registered as a candidate
    like any other, then put through `kaizen eval --apply-gate --fail-fast`: it never reaches users."""
    from kaizenlm.config import LoraSFTConfig
    from kaizenlm.eval.cli import evaluate_version, model_spec
    from kaizenlm.registry.client import RegistryClient
    from kaizenlm.retrain.lora_sft import train_sft

    client = RegistryClient(ctx.cfg)
    champion = client.show(client.list_aliases()["champion"])
    spec = model_spec(client, champion)
    base_dir = spec[0] if isinstance(spec, tuple) else spec
    run_dir = ctx.cfg.home / "demo" / "bad-candidate"
    # The monthly recipe (the embedded overrides apply) for one pass over the 48 corrupted rows
    # (6 steps, ~10 s on 2 cores): enough to forget (retention 0.84, measured offline; 0.66
    # after 144 rows, 18 steps). The gate measures retention first and stops there.
    sft = train_sft(base_dir, corrupted_rows(ctx.domain, ctx.seed), run_dir,
                    LoraSFTConfig(epochs=1.0, max_epochs=1.0), ctx.cfg.retrain)
    version = client.register_version("adapter", sft["adapter_dir"], parent_id=champion["version_id"],
                                      status="candidate", config={"base": base_dir, "demo": "corrupted labels, no replay"},
                                      note="demo: deliberately bad candidate (corrupted labels, no replay)")
    result = evaluate_version(ctx.cfg, client, version["version_id"], "champion", apply_gate=True, fail_fast=True)
    failing = [r for r in (result["gate"] or {}).get("reasons", []) if r.startswith("fail")]
    outcome = "rejected by the gates" if result.get("status") == "rejected" else "NOT caught"
    ctx.summary["bad candidate"] = f"{version['version_id']}: {outcome} ({'; '.join(failing)[:120]})"
    ctx.console.print(f"bad candidate {version['version_id']}: {outcome}")
    for reason in (result["gate"] or {}).get("reasons", []):
        ctx.console.print(f"  gate {reason}")


def stage_rollback(ctx) -> None:
    """`kaizen rollback`: champion moves back one step; the gateway serves the restored version."""
    before = ctx.admin("GET", "/admin/v1/routing")
    history = ctx.admin("GET", "/admin/v1/registry/aliases/champion/history")
    moves = history if isinstance(history, list) else history.get("history", history.get("items", []))
    if len(moves) < 2:  # only the first base model was ever champion: nothing to undo
        ctx.summary["rollback"] = "skipped: champion never moved (no promotion to undo)"
        ctx.console.print("[yellow]rollback skipped: the champion alias has no earlier version[/yellow]")
        return
    result = ctx.admin("POST", "/admin/v1/rollback", json={"reason": "demo: undo the promotion"})
    time.sleep(1.5)  # gateways apply routing changes within a second
    gateway = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=300,
                           headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    reply = chat(gateway, Ask("rollback-check-user", "rollback-check", ctx.domain.facts[0].question))
    gateway.close()
    move = result["move"]
    ctx.summary["rollback"] = f"champion {move['from_version']} -> {move['to_version']}; the gateway now serves " \
                              f"{reply['model_version']}"
    ctx.console.print(f"rollback: champion {move['from_version']} -> {move['to_version']} "
                      f"(aliases before: {before.get('aliases')}); the gateway serves {reply['model_version']}")


def stage_review(ctx) -> None:
    """Quarterly tier: the review report over everything the demo did."""
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (ctx.days + 1) * 86400))
    until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    report = ctx.admin("POST", "/admin/v1/review", json={"since": since, "until": until})
    path = report["report"]
    ctx.summary["quarterly review"] = path
    ctx.console.print(f"review written to {path}")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
