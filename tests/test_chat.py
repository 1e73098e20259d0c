"""Serving: the local backend (several adapters over one base, thread-safe), the openai
backend's retries and error mapping against a real upstream server, and
POST /v1/chat/completions through a real stack with the official `openai` client:
answers, streaming, sticky A/B arms, turns logged with variant/model_version/latency."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import httpx
import openai
import pytest
import serving_helpers
from conftest import free_port
from serving_helpers import (
    EchoUpstream,
    build_adapter,
    build_tiny_model,
    drain_until,
    promote,
    reference_answer,
    register,
    wait_gateway,
)

from kaizenlm.abtest.routing import Target, assign_arm
from kaizenlm.cli import main
from kaizenlm.serving.backends import BackendError, ChatParams, Chunk, LocalBackend, LocalServing
from kaizenlm.serving.openai_backend import OpenAIBackend

pytestmark = pytest.mark.integration  # starts echo upstreams and a real stack

GREEDY = ChatParams(max_tokens=8, temperature=0.0)
QUESTIONS = [[{"role": "user", "content": q}] for q in ("hello how are you", "reset my password please",
                                                         "what is the price of the plan")]

openai_stack = serving_helpers.openai_stack  # a fixture: a stack serving through an echo upstream


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base and two LoRA adapters on it, saved as Hugging Face directories."""
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base")
    return {"base": base, "a1": build_adapter(base, root / "a1", seed=1), "a2": build_adapter(base, root / "a2", seed=2)}


@pytest.fixture(scope="module")
def references(tiny):
    """Greedy answers of each model, computed the plain way (one fresh model per adapter)."""
    return {name: [reference_answer(tiny["base"], None if name == "base" else tiny[name], m, 8) for m in QUESTIONS]
            for name in ("base", "a1", "a2")}


# --------------------------------------------------------------------------------------
# local backend
# --------------------------------------------------------------------------------------


def test_local_backend_serves_each_adapter_like_a_dedicated_model(tiny, references):
    backend = LocalBackend(tiny["base"], device="cpu", threads=1)
    backend.ensure_adapter("a1", str(tiny["a1"]))
    backend.ensure_adapter("a2", str(tiny["a2"]))
    assert len({tuple(v) for v in references.values()}) == 3  # the adapters do change the answers
    for name, adapter in (("base", None), ("a1", "a1"), ("a2", "a2"), ("base", None)):
        for messages, expected in zip(QUESTIONS, references[name], strict=True):
            c = backend.generate(messages, adapter, GREEDY)
            assert c.text == expected
            assert c.completion_tokens == 8 and c.prompt_tokens > 3 and c.finish_reason == "length"
    # Streaming gives the same text, piece by piece, and ends with the usage.
    chunks = list(backend.stream(QUESTIONS[0], "a2", GREEDY))
    assert "".join(c.text for c in chunks) == references["a2"][0]
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 8


def test_local_backend_is_thread_safe_across_adapters(tiny, references):
    backend = LocalBackend(tiny["base"], device="cpu", threads=1)
    backend.ensure_adapter("a1", str(tiny["a1"]))
    backend.ensure_adapter("a2", str(tiny["a2"]))
    jobs = [(name, i) for _ in range(4) for name in ("base", "a1", "a2") for i in range(len(QUESTIONS))]

    def run(job):
        name, i = job
        return backend.generate(QUESTIONS[i], None if name == "base" else name, GREEDY).text

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(run, jobs))
    assert answers == [references[name][i] for name, i in jobs]


def test_local_serving_merges_small_adapters_and_answers_the_same(tiny, references):
    targets = {"base": Target("base-1", "base", str(tiny["base"])),
               "a1": Target("adapter-1", "adapter", str(tiny["base"]), str(tiny["a1"])),
               "a2": Target("adapter-2", "adapter", str(tiny["base"]), str(tiny["a2"]))}
    merged, unmerged = LocalServing("cpu", 1), LocalServing("cpu", 1, merge_max_params=0)
    for serving in (merged, unmerged):
        for name, target in targets.items():
            answers = [asyncio.run(serving.complete(target, m, GREEDY)).text for m in QUESTIONS]
            assert answers == references[name], (serving.merge_max_params, name)
    # Merged: one copy of the base per adapter, no LoRA layers left in it; the base stays bare.
    [base] = merged.bases.values()
    assert len(merged.merged) == 2 and not base.adapters
    copy = merged.merged[(str(tiny["base"]), str(tiny["a1"]))]
    assert not any("lora" in name for name, _ in copy.model.named_parameters())
    assert copy.model is not base.model and copy.n_params == base.n_params
    # Unmerged: both adapters live in the one shared base.
    [shared] = unmerged.bases.values()
    assert set(shared.adapters) == {"adapter-1", "adapter-2"} and not unmerged.merged
    with pytest.raises(BackendError, match="cannot load the adapter"):
        asyncio.run(merged.complete(Target("adapter-9", "adapter", str(tiny["base"]), str(tiny["base"] / "none")),
                                    QUESTIONS[0], GREEDY))


def test_local_backend_limits(tiny):
    backend = LocalBackend(tiny["base"], device="cpu", threads=1)
    with pytest.raises(BackendError) as e:
        backend.generate([{"role": "user", "content": "hello " * 400}], None, GREEDY)
    assert e.value.status == 400 and "reads at most 256" in e.value.message
    long = backend.generate(QUESTIONS[0], None, ChatParams(max_tokens=5000, temperature=0.0))
    assert long.prompt_tokens + long.completion_tokens <= 256  # clipped to the context
    full = backend.generate(QUESTIONS[1], None, GREEDY).text
    stop = full[2:4]
    cut = backend.generate(QUESTIONS[1], None, ChatParams(max_tokens=8, temperature=0.0, stop=(stop,))).text
    assert cut == full[: full.find(stop)]
    with pytest.raises(BackendError, match="not loaded"):
        backend.generate(QUESTIONS[0], "nope", GREEDY)


# --------------------------------------------------------------------------------------
# openai backend against a real upstream server (faults injected by model name)
# --------------------------------------------------------------------------------------


@pytest.fixture
def echo(tmp_path):
    upstream = EchoUpstream(free_port(), tmp_path / "echo.log")
    yield upstream
    upstream.stop()


def call(backend: OpenAIBackend, model: str, stream: bool = False, **params):
    async def go():
        try:
            target = Target(model, "base", None, None, model)
            if stream:
                return [c async for c in backend.stream(target, QUESTIONS[0], ChatParams(**params))]
            return await backend.complete(target, QUESTIONS[0], ChatParams(**params))
        finally:
            await backend.aclose()
    return asyncio.run(go())


def test_openai_backend_answers_and_streams(echo):
    c = call(OpenAIBackend(echo.url), "adapter-0007", max_tokens=5)
    assert c.text == "[adapter-0007] hello how are you" and c.completion_tokens == 5
    chunks = call(OpenAIBackend(echo.url), "adapter-0007", stream=True)
    assert "".join(x.text for x in chunks) == "[adapter-0007] hello how are you"
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(("model", "status", "attempts", "words"), [
    ("fail-500", 502, 3, "failed (HTTP 500)"),
    ("fail-503", 502, 3, "failed (HTTP 503)"),
    ("fail-429", 503, 3, "rate limiting"),
    ("fail-404", 502, 1, "has no model 'fail-404'"),
    ("fail-401", 502, 1, "serving.upstream_api_key"),
    ("fail-400", 400, 1, "refused the request"),
])
def test_openai_backend_maps_upstream_errors(echo, model, status, attempts, words):
    with pytest.raises(BackendError) as e:
        call(OpenAIBackend(echo.url, retries=2, backoff_s=0.01), model)
    assert e.value.status == status and words in e.value.message
    assert echo.stats()[model] == attempts  # retried only what may succeed on a retry
    if model == "fail-500":
        with pytest.raises(BackendError) as e:  # streams map errors the same way, before the first byte
            call(OpenAIBackend(echo.url, retries=0), model, stream=True)
        assert e.value.status == 502


def test_openai_backend_timeout_and_unreachable(echo):
    started = time.monotonic()
    with pytest.raises(BackendError) as e:
        call(OpenAIBackend(echo.url, timeout=0.3, retries=2), "slow-3000")
    assert e.value.status == 504 and "within 0.3s" in e.value.message
    assert time.monotonic() - started < 2.5 and echo.stats()["slow-3000"] == 1  # a timeout is not retried
    with pytest.raises(BackendError) as e:
        call(OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", retries=1, backoff_s=0.01), "m")
    assert e.value.status == 502 and "unreachable after 2 attempts" in e.value.message


class _SlowToCloseBackend:
    """Streams two pieces, then takes 0.3 s to clean up: what a loaded machine does (the
    generation thread's join), which a fast test machine never shows on its own."""

    async def stream(self, target, messages, params):
        try:
            yield Chunk("Hello")
            yield Chunk(" there", finish_reason="length", prompt_tokens=3, completion_tokens=2)
        finally:
            await asyncio.sleep(0.3)


def test_a_streamed_turn_is_logged_when_the_client_hangs_up_after_done():
    """The OpenAI SDK closes the connection as soon as it reads [DONE]; the server sees the
    disconnect and cancels the response. The turn must be logged all the same (CI lost it)."""
    from types import SimpleNamespace

    from kaizenlm.abtest.routing import Route
    from kaizenlm.ingest.metrics import Metrics
    from kaizenlm.serving import chat

    logged = []
    state = SimpleNamespace(serving=SimpleNamespace(turns=SimpleNamespace(add=lambda _r, e: logged.append(e))),
                            metrics=Metrics())
    request = SimpleNamespace(app=SimpleNamespace(state=state))
    turn = chat._Turn("t1", "c1", "carol", Route("adapter-0002", Target("adapter-0002", "adapter")),
                      [{"role": "user", "content": "hi"}], time.perf_counter())
    sent, done = [], asyncio.Event()

    async def send(message):
        sent.append(message)
        if b"[DONE]" in message.get("body", b""):
            done.set()

    async def receive():  # the client reads [DONE], then hangs up
        await done.wait()
        return {"type": "http.disconnect"}

    async def go():
        response = await chat._stream(request, _SlowToCloseBackend(), turn, GREEDY)
        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}  # what uvicorn sends
        await response(scope, receive, send)

    asyncio.run(go())
    assert done.is_set() and len(logged) == 1
    payload = logged[0]["payload"]
    assert payload["turn_id"] == "t1" and payload["response"] == "Hello there"
    assert payload["completion_tokens"] == 2 and payload["model_version"] == "adapter-0002"
    assert state.metrics.get("chat_requests_total", status="200", model_version="adapter-0002", variant="-") == 1


# --------------------------------------------------------------------------------------
# the gateway endpoint, end to end (local backend, real stack, official client)
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fp32_gateway(kaizen_env, tmp_path):
    """The gateway answers in fp32, the references' dtype: equality with them is exact only in one
    dtype's arithmetic, on a random model whose top logits lie close (bf16 serving: the demo test)."""
    (tmp_path / "kaizen.toml").write_text('[serving]\nprecision = "fp32"\n', encoding="utf-8")


@pytest.fixture
def served(stack, tiny):
    """base-0001 (the tiny base) as champion; adapter-0001/-0002 on it registered."""
    base = register(stack, "base", tiny["base"])
    a1 = register(stack, "adapter", tiny["a1"], parent_id=base)
    a2 = register(stack, "adapter", tiny["a2"], parent_id=base)
    promote(stack, base)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == base)
    client = openai.OpenAI(base_url=stack.cfg.gateway_url + "/v1", api_key=stack.cfg.auth.ingest_key, max_retries=0,
                           timeout=120)
    return {"base": base, "a1": a1, "a2": a2, "client": client}


@pytest.mark.integration
@pytest.mark.slow
def test_chat_completions_with_openai_client(stack, served, references):
    client = served["client"]
    r = client.chat.completions.create(model="champion", messages=QUESTIONS[0], user="alice", temperature=0,
                                       max_tokens=8)
    assert r.choices[0].message.content == references["base"][0]
    assert r.model == served["base"] and r.model_extra["model_version"] == served["base"]
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    turn_id = r.model_extra["turn_id"]
    # A version id works as the model too; so does the default alias.
    r2 = client.chat.completions.create(model=served["a1"], messages=QUESTIONS[1], user="bob", temperature=0,
                                        max_tokens=8)
    assert r2.choices[0].message.content == references["a1"][1] and r2.model_extra["model_version"] == served["a1"]
    r3 = client.chat.completions.create(model="", messages=QUESTIONS[2], temperature=0, max_tokens=8)
    assert r3.model_extra["model_version"] == served["base"]
    stream = client.chat.completions.create(model=served["a2"], messages=QUESTIONS[2], user="carol", temperature=0,
                                            max_tokens=8, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == references["a2"][2]
    assert {c.model_extra["model_version"] for c in chunks} == {served["a2"]}
    assert chunks[-1].choices[0].finish_reason == "length"
    # Errors in OpenAI's shape: the client raises its own exception types with our message.
    with pytest.raises(openai.NotFoundError, match="neither an alias"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTIONS[0])
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model="champion", messages=QUESTIONS[0], n=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="champion", messages=[{"role": "robot", "content": "x"}])
    bad = openai.OpenAI(base_url=stack.cfg.gateway_url + "/v1", api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="unknown API key"):
        bad.chat.completions.create(model="champion", messages=QUESTIONS[0])
    models = {m.id for m in client.models.list()}
    assert {"champion", served["base"], served["a1"], served["a2"]} <= models
    # Every answered turn is in DuckDB with its version, latency and token counts.
    assert drain_until(stack, "turns", 4) == 4
    turns = httpx.get(stack.cfg.controller_url + "/admin/v1/turns", headers=stack.admin_headers,
                      params={"user_id": "alice"}).json()["items"]
    [turn] = turns
    assert turn["turn_id"] == turn_id and turn["model_version"] == served["base"]
    assert turn["response"] == references["base"][0] and turn["prompt"] == QUESTIONS[0][0]["content"]
    assert turn["latency_ms"] > 0 and turn["completion_tokens"] == 8 and turn["variant"] is None
    carol = httpx.get(stack.cfg.controller_url + "/admin/v1/turns", headers=stack.admin_headers,
                      params={"user_id": "carol"}).json()["items"]
    assert carol[0]["response"] == references["a2"][2]  # streamed turns are logged whole


@pytest.mark.integration
@pytest.mark.slow
def test_experiment_arms_are_sticky_per_user(stack, served, references, capsys):
    # Through the CLI, which talks to the running controller (which publishes routing at once).
    assert main(["ab", "start", served["a1"], "--split", "0.5", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    exp = started["experiment_id"]
    assert started["routing"]["published"] is True and started["champion"] == served["base"]
    wait_gateway(stack, lambda g: [e["experiment_id"] for e in g["experiments"]] == [exp])
    client = served["client"]
    seen: dict[str, set] = {}
    for round_ in range(2):
        for u in range(12):
            user = f"user-{u}"
            q = (u + round_) % len(QUESTIONS)
            resp = client.chat.completions.create(model="champion", messages=QUESTIONS[q], user=user,
                                                  temperature=0, max_tokens=8)
            extra = resp.model_extra
            arm = assign_arm(exp, user, 0.5)
            assert extra["variant"] == arm and extra["experiment_id"] == exp
            expected_version = served["a1"] if arm == "challenger" else served["base"]
            assert extra["model_version"] == expected_version
            assert resp.choices[0].message.content == references["a1" if arm == "challenger" else "base"][q]
            seen.setdefault(user, set()).add(extra["model_version"])
    assert all(len(v) == 1 for v in seen.values())  # one version per user, every time
    assert len({next(iter(v)) for v in seen.values()}) == 2  # and both arms got users
    drain_until(stack, "turns", 24)
    items = httpx.get(stack.cfg.controller_url + "/admin/v1/turns", headers=stack.admin_headers,
                      params={"limit": 100}).json()["items"]
    logged = [t for t in items if t["experiment_id"] == exp]
    assert len(logged) == 24
    assert all(t["variant"] == assign_arm(exp, t["user_id"], 0.5) for t in logged)
    # On demand analysis: too few users for a decision; it is stored with its numbers.
    assert main(["ab", "analyse", exp, "--json"]) == 0
    [look] = json.loads(capsys.readouterr().out)["results"]
    assert look["action"] == "continue" and look["numbers"]["users"] == {"champion": 12 - sum(
        assign_arm(exp, f"user-{u}", 0.5) == "challenger" for u in range(12)), "challenger": sum(
        assign_arm(exp, f"user-{u}", 0.5) == "challenger" for u in range(12))}
    assert main(["ab", "stop", exp, "--reason", "test over"]) == 0
    assert "stop: test over" in capsys.readouterr().out
    wait_gateway(stack, lambda g: g["experiments"] == [])
    after = client.chat.completions.create(model="champion", messages=QUESTIONS[0], user="user-0", temperature=0,
                                           max_tokens=8)
    assert after.model_extra["model_version"] == served["base"] and after.model_extra["variant"] is None


@pytest.mark.integration
def test_gateway_maps_upstream_failures_and_logs_them(openai_stack):
    stack = openai_stack
    src = stack.home / "src"
    src.mkdir()
    (src / "w.txt").write_text("x")
    good = register(stack, "base", src)
    (src / "w.txt").write_text("y")
    broken = register(stack, "base", src, config={"upstream_model": "fail-503"})
    promote(stack, good)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == good)
    client = openai.OpenAI(base_url=stack.cfg.gateway_url + "/v1", api_key=stack.cfg.auth.ingest_key, max_retries=0)
    r = client.chat.completions.create(model="champion", messages=QUESTIONS[0], user="dora")
    assert r.choices[0].message.content == f"[{good}] hello how are you"  # upstream model name = version id
    chunks = list(client.chat.completions.create(model="champion", messages=QUESTIONS[1], user="dora", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"[{good}] reset my password please"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=broken, messages=QUESTIONS[0], user="erin")
    assert e.value.status_code == 502 and "failed (HTTP 503)" in str(e.value)
    assert stack.upstream.stats()["fail-503"] == 3  # two retries, then the error
    bad = httpx.post(stack.cfg.gateway_url + "/v1/chat/completions", content=b"{not json",
                     headers={**stack.ingest_headers, "content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    # The failed turn is logged with an empty answer: the error-rate guardrail counts it.
    drain_until(stack, "turns", 3)
    [failed] = httpx.get(stack.cfg.controller_url + "/admin/v1/turns", headers=stack.admin_headers,
                         params={"user_id": "erin"}).json()["items"]
    assert failed["response"] == "" and failed["model_version"] == broken and failed["completion_tokens"] is None
