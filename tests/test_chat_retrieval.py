"""Retrieval in the chat endpoint: the gateway puts the top chunks of the index the
`knowledge` alias points at into the prompt, and logs the retrieved doc ids on the turn.

The upstream is the echo server, which answers with the last user message it was sent: the
test reads back exactly the prompt the model saw."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import serving_helpers
from serving_helpers import drain_until, promote, register, register_base, wait_gateway

from kaizenlm.abtest.routing import KnowledgeTarget
from kaizenlm.config import KnowledgeConfig
from kaizenlm.knowledge.index import refresh_knowledge
from kaizenlm.knowledge.retrieval import NO_CONTEXT
from kaizenlm.serving.retrieval import KnowledgeServing

pytestmark = pytest.mark.integration  # a real stack with an echo upstream

openai_stack = serving_helpers.openai_stack  # a fixture: a stack serving through an echo upstream

DOCS = {
    "account/password": "To reset your password, open Settings, choose Security and click Reset password. "
                        "A reset link is sent to your e-mail address and expires after 30 minutes.",
    "billing/refunds": "Refunds are paid back to the original card within 5 business days after we "
                       "approve the request in the billing portal.",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """A two-document knowledge artifact built with the real embedder."""
    root = tmp_path_factory.mktemp("kb")
    for doc_id, text in DOCS.items():
        path = root / "docs" / f"{doc_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    refresh_knowledge(KnowledgeConfig(), root / "docs", [], None, root / "artifact")
    return root / "artifact"


def _wait_loaded(serving: KnowledgeServing, version: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while serving.version_id != version:
        assert serving.error is None, serving.error
        assert time.monotonic() < deadline, "knowledge never loaded"
        time.sleep(0.05)


def test_augment_puts_top_chunks_into_the_last_user_message(kb):
    serving = KnowledgeServing(KnowledgeConfig(top_k=1))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How do I reset my password?"}]
    unchanged, ids = asyncio.run(serving.augment(messages))
    assert unchanged == messages and ids == []  # nothing loaded yet: no retrieval
    serving.update(KnowledgeTarget("knowledge-0001", str(kb)))
    _wait_loaded(serving, "knowledge-0001")
    prompt, ids = asyncio.run(serving.augment(messages))
    assert ids == ["account/password"]
    assert prompt[:3] == messages[:3] and len(prompt) == 4  # only the last user message changes
    assert prompt[3]["content"] == KnowledgeConfig().prompt_template.format(
        context=f"[account/password] {DOCS['account/password']}", question="How do I reset my password?")
    _, unrelated = asyncio.run(serving.augment([{"role": "user", "content": "qwxz vvkk"}]))
    assert unrelated == []  # below knowledge.min_score
    serving.update(None)
    assert asyncio.run(serving.augment(messages)) == (messages, [])


def test_retrieval_off_by_config_and_damaged_index_keeps_serving(kb, tmp_path):
    off = KnowledgeServing(KnowledgeConfig(chat_retrieval=False))
    off.update(KnowledgeTarget("knowledge-0001", str(kb)))
    assert off.wanted is None and off.status()["enabled"] is False
    serving = KnowledgeServing(KnowledgeConfig())
    serving.update(KnowledgeTarget("knowledge-0001", str(kb)))
    _wait_loaded(serving, "knowledge-0001")
    serving.update(KnowledgeTarget("knowledge-0002", str(tmp_path / "missing")))
    import time

    deadline = time.monotonic() + 10
    while serving.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serving.wanted == "knowledge-0002" and "No such file" in serving.error
    assert serving.version_id == "knowledge-0001"  # the previous index still serves


@pytest.mark.integration
def test_gateway_answers_with_retrieved_context_and_logs_doc_ids(openai_stack, kb):
    stack = openai_stack
    model = register_base(stack)
    promote(stack, model)
    knowledge = register(stack, "knowledge", kb)
    promote(stack, knowledge, alias="knowledge")
    routing = wait_gateway(stack, lambda r: r["knowledge"]["serving"] == knowledge, timeout=90)
    assert routing["knowledge"]["chunks"] == 2 and routing["aliases"]["champion"] == model
    client = openai.OpenAI(base_url=stack.cfg.gateway_url + "/v1", api_key=stack.cfg.auth.ingest_key, max_retries=0)

    r = client.chat.completions.create(model="champion", user="ana",
                                       messages=[{"role": "user", "content": "How long until my refund arrives?"}])
    seen = r.choices[0].message.content  # the echo upstream answers "[<model>] <prompt it was sent>"
    assert seen.startswith(f"[{model}] Answer the question using the context.")
    assert f"[billing/refunds] {DOCS['billing/refunds']}" in seen and "Question: How long until my refund arrives?" in seen
    assert r.model_extra["retrieved_doc_ids"] == ["billing/refunds"]

    chunks = list(client.chat.completions.create(model="champion", user="ben", stream=True,
                                                 messages=[{"role": "user", "content": "What is the weather on Mars?"}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert NO_CONTEXT in streamed and "[billing/refunds]" not in streamed

    drain_until(stack, "turns", 2)
    turns = {t["user_id"]: t for t in httpx.get(stack.cfg.controller_url + "/admin/v1/turns",
                                                headers=stack.admin_headers).json()["items"]}
    assert turns["ana"]["retrieved_doc_ids"] == ["billing/refunds"]
    # The log keeps what the user asked, not the augmented prompt.
    assert turns["ana"]["messages"] == [{"role": "user", "content": "How long until my refund arrives?"}]
    assert turns["ben"]["retrieved_doc_ids"] == []
