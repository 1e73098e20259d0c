"""The demo's loop stages after the first traffic: weekly knowledge refresh, monthly
retrain, an A/B test driven by simulated users to a decision, a rollback, the quarterly
review. Each talks to the running controller and gateway only through their HTTP APIs,
exactly as an operator's tools would, and adds its figures to the demo summary.
"""

from __future__ import annotations

import random
import time

import httpx
from rich.table import Table
from tqdm import tqdm

from kaizenlm.demo.users import Behaviour, is_right


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
                bar.set_postfix_str((run.get("progress") or {}).get("message", "")[:60])
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


def stage_knowledge(ctx) -> None:
    """Weekly tier: the support documents -> a FAISS knowledge version, and its coverage."""
    docs = ctx.cfg.home / "docs"
    written = ctx.domain.write_documents(docs)
    result = run_tier(ctx, "weekly", timeout_s=900)
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
    ctx.summary["domain exam (exact match) before -> after"] = \
        f"{_fmt(before.get('domain_score'))} -> {_fmt(after.get('domain_score'))}"
    ctx.summary["general skills before -> after"] = \
        f"{_fmt(before.get('general_score'))} -> {_fmt(after.get('general_score'))}"
    ctx.summary["candidate"] = f"{result.get('candidate')} (gate {'passed' if result.get('gate_passed') else 'failed'})"


def chat(client: httpx.Client, question: str, user: str) -> dict:
    r = client.post("/v1/chat/completions", json={
        "model": "champion", "user": user, "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()


def stage_ab(ctx) -> None:
    """Simulated users talk to the gateway; the controller analyses until it decides."""
    experiment = (ctx.retrain or {}).get("experiment")
    if not experiment:
        ctx.summary["A/B decision"] = "no experiment (the candidate did not pass the gate)"
        ctx.console.print("[yellow]no experiment to run: the candidate did not pass the gate[/yellow]")
        return
    rng = random.Random(ctx.seed + 1)
    behaviour = Behaviour()
    gateway = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=60,
                           headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    max_users = 600 if ctx.short else 1500
    decision, served = None, {}
    with tqdm(total=max_users, desc="A/B traffic", unit="user") as bar:
        for i in range(max_users):
            user = f"ab-user-{i:05d}"
            fact = rng.choice(ctx.domain.facts)
            question = rng.choice([fact.question, *fact.paraphrases])
            reply = chat(gateway, question, user)
            answer = reply["choices"][0]["message"]["content"]
            served[reply["model_version"]] = served.get(reply["model_version"], 0) + 1
            _react(gateway, reply, question, answer, user, ctx, rng, behaviour)
            bar.update(1)
            if (i + 1) % 50 == 0:
                ctx.admin("POST", "/admin/v1/drain")
                out = ctx.admin("POST", "/admin/v1/ab/analyse", json={"experiment_id": experiment})
                decision = _decision_for(out, experiment)
                if decision and decision.get("action") in ("promote", "rollback", "keep_champion"):
                    break
    gateway.close()
    ctx.summary["A/B traffic served"] = ", ".join(f"{k}: {v}" for k, v in sorted(served.items()))
    status = ctx.admin("GET", f"/admin/v1/ab/experiments/{experiment}")
    ctx.ab = status
    action = (decision or {}).get("action") or status.get("status")
    ctx.summary["A/B decision"] = f"{experiment}: {action} ({(decision or {}).get('reason', '')[:80]})"
    ctx.console.print(f"experiment {experiment}: {action}")


def _react(gateway, reply, question, answer, user, ctx, rng, b) -> None:
    """The same reactions as the traffic stage's users, through the SDK's endpoints."""
    turn_id = reply["turn_id"]
    right = is_right(ctx.domain, question, answer)
    if rng.random() < b.thumbs_given:
        gateway.post("/v1/feedback", json={"turn_id": turn_id, "thumbs": 1 if right else -1, "user_id": user})
    if right and rng.random() < b.copy_if_right:
        gateway.post("/v1/signals", json={"turn_id": turn_id, "kind": "copy", "user_id": user})
    if not right and rng.random() < b.regenerate_if_wrong:
        gateway.post("/v1/signals", json={"turn_id": turn_id, "kind": "regenerate", "user_id": user})


def _decision_for(analysis: dict, experiment: str) -> dict | None:
    for item in analysis.get("results") or []:
        if item.get("experiment_id") == experiment:
            return item
    return None


def corrupted_rows(domain, seed: int) -> list[dict]:
    """The domain's training questions, each answered with another fact's answer: the
    poisoned labels of the bad candidate (and no general replay at all)."""
    rng = random.Random(seed)
    rows = []
    for q_row in domain.train_rows():
        fact = domain.fact(q_row["qid"])
        wrong = rng.choice([f for f in domain.facts if f.qid != fact.qid])
        rows.append({"prompt": q_row["prompt"], "response": wrong.answer})
    return rows


def stage_bad_candidate(ctx) -> None:
    """A deliberately bad candidate (corrupted labels, no replay) must be stopped by the gates.

    Trained here with the same recipe as the monthly retrain, registered as a candidate
    like any other, then put through `kaizen eval --apply-gate`: it never reaches users."""
    from kaizenlm.config import LoraSFTConfig
    from kaizenlm.eval.cli import evaluate_version, model_spec
    from kaizenlm.registry.client import RegistryClient
    from kaizenlm.retrain.lora_sft import train_sft

    client = RegistryClient(ctx.cfg)
    champion = client.show(client.list_aliases()["champion"])
    spec = model_spec(client, champion)
    base_dir = spec[0] if isinstance(spec, tuple) else spec
    run_dir = ctx.cfg.home / "demo" / "bad-candidate"
    # 4 epochs: enough to learn the wrong answers and forget (the monthly retrain runs more).
    sft = train_sft(base_dir, corrupted_rows(ctx.domain, ctx.seed), run_dir, LoraSFTConfig(epochs=4.0),
                    ctx.cfg.retrain)
    version = client.register_version("adapter", sft["adapter_dir"], parent_id=champion["version_id"],
                                      status="candidate", config={"base": base_dir, "demo": "corrupted labels, no replay"},
                                      note="demo: deliberately bad candidate (corrupted labels, no replay)")
    result = evaluate_version(ctx.cfg, client, version["version_id"], "champion", apply_gate=True)
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
    gateway = httpx.Client(base_url=ctx.cfg.gateway_url, timeout=60,
                           headers={"Authorization": f"Bearer {ctx.cfg.auth.ingest_key}"})
    reply = chat(gateway, ctx.domain.facts[0].question, "rollback-check-user")
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
