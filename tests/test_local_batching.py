"""The local backend answers concurrent greedy requests in one batch, and each answer is the
one the request gets alone (left padding, per-request token budgets, EOS cut)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_helpers import build_tiny_model

from kaizenlm.base.generate import MIN_SHARED_PREFIX, shared_prefix_length
from kaizenlm.serving.backends import ChatParams, LocalBackend

pytestmark = pytest.mark.integration  # builds a torch model and generates with it (torch alone takes seconds to import)

QUESTIONS = ["hello", "what is the price of the plan", "reset my password please thank you very much",
             "red blue green", "the quick brown fox jumps over the lazy dog", "thank you", "cat", "apple pear plum"]
BUDGETS = [3, 7, 5, 8, 2, 6, 4, 8]  # each question's max_tokens: rows of a batch end at different steps


def count_batches(backend: LocalBackend) -> list[int]:
    """The size of each batch the backend generates for, from now on."""
    calls: list[int] = []
    original = backend._batch_tokens
    backend._batch_tokens = lambda batch, *a: calls.append(len(batch)) or original(batch, *a)
    return calls


def answered_together(backend: LocalBackend, ask) -> list:
    """ask(i) for each of QUESTIONS from its own thread, all queued while the model is held (as a
    busy gateway would hold it), then answered."""
    start = threading.Barrier(len(QUESTIONS))

    def call(i):
        start.wait()
        return ask(i)

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        backend.lock.acquire()
        try:
            futures = [pool.submit(call, i) for i in range(len(QUESTIONS))]
            while len(backend.pending) < len(QUESTIONS):
                threading.Event().wait(0.01)
        finally:
            backend.lock.release()
        return [f.result(timeout=120) for f in futures]


def test_concurrent_greedy_requests_are_batched_and_answer_as_alone(tmp_path):
    backend = LocalBackend(build_tiny_model(tmp_path / "m"), device="cpu", threads=1)
    # A shared system prompt, which the batch runs once (alone, a request has nothing to share).
    system = {"role": "system", "content": "You answer questions about the plan and the password."}
    alone = [backend.generate([system, {"role": "user", "content": q}], None, ChatParams(max_tokens=n, temperature=0))
             for q, n in zip(QUESTIONS, BUDGETS, strict=True)]
    calls = count_batches(backend)
    together = answered_together(backend, lambda i: backend.generate(
        [system, {"role": "user", "content": QUESTIONS[i]}], None, ChatParams(max_tokens=BUDGETS[i], temperature=0)))
    assert calls == [len(QUESTIONS)]  # one batch for all eight
    ids = [backend._inputs([system, {"role": "user", "content": q}], ChatParams())[0]["input_ids"][0].tolist()
           for q in QUESTIONS]
    assert shared_prefix_length(ids) >= MIN_SHARED_PREFIX  # the batch ran its shared prefix once
    for a, b, n in zip(alone, together, BUDGETS, strict=True):
        assert (b.text, b.finish_reason, b.completion_tokens) == (a.text, a.finish_reason, a.completion_tokens)
        assert b.completion_tokens <= n


def test_concurrent_sampled_requests_are_batched_and_padded_like_alone(tmp_path):
    """The sampled path (`padded_generate` on a left-padded batch). With top_p that keeps only
    the most likely token, sampling picks what greedy picks: each answer of the batch must then
    be the request's greedy answer alone, whatever its prompt length and token budget."""
    backend = LocalBackend(build_tiny_model(tmp_path / "m"), device="cpu", threads=1)
    alone = [backend.generate([{"role": "user", "content": q}], None, ChatParams(max_tokens=n, temperature=0))
             for q, n in zip(QUESTIONS, BUDGETS, strict=True)]
    calls = count_batches(backend)
    together = answered_together(backend, lambda i: backend.generate(
        [{"role": "user", "content": QUESTIONS[i]}], None,
        ChatParams(max_tokens=BUDGETS[i], temperature=0.7, top_p=1e-9)))
    assert calls == [len(QUESTIONS)]
    for a, b in zip(alone, together, strict=True):
        assert (b.text, b.finish_reason, b.completion_tokens) == (a.text, a.finish_reason, a.completion_tokens)


def test_seeded_requests_are_not_batched(tmp_path):
    backend = LocalBackend(build_tiny_model(tmp_path / "m"), device="cpu", threads=1)
    one = backend.generate([{"role": "user", "content": "hello"}], None,
                           ChatParams(max_tokens=4, temperature=0.8, seed=3))
    two = backend.generate([{"role": "user", "content": "hello"}], None,
                           ChatParams(max_tokens=4, temperature=0.8, seed=3))
    assert one.text == two.text and not backend.pending  # seeded sampling: reproducible, never queued


def test_the_gateways_concurrent_requests_fill_a_whole_batch(tmp_path):
    """Through LocalServing.complete (what the gateway awaits): MAX_BATCH requests that arrive
    while the model is busy all wait for it at once and are answered in one batch. (asyncio's
    default thread pool has cpu_count + 4 threads, which on 2 cores capped a batch at ~5.)"""
    import asyncio

    from kaizenlm.abtest.routing import Target
    from kaizenlm.serving.backends import LocalServing

    serving = LocalServing("cpu", 1)
    target = Target("base-0001", "base", model_dir=build_tiny_model(tmp_path / "m"))
    backend, _ = serving.backend_for(target)
    n = LocalBackend.MAX_BATCH
    calls = count_batches(backend)

    async def main():
        backend.lock.acquire()  # the model is busy while all of them arrive
        try:
            tasks = [asyncio.create_task(serving.complete(target, [{"role": "user", "content": f"question {i}"}],
                                                          ChatParams(max_tokens=3, temperature=0))) for i in range(n)]
            for _ in range(500):
                if len(backend.pending) == n:
                    break
                await asyncio.sleep(0.01)
            queued = len(backend.pending)
        finally:
            backend.lock.release()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        await serving.aclose()
        return queued, answers

    queued, answers = asyncio.run(main())
    assert queued == n
    assert calls == [n] and len(answers) == n and all(a.completion_tokens <= 3 for a in answers)


def test_a_burst_of_requests_to_an_idle_model_shares_the_first_batch(tmp_path):
    """The first request of a burst waits BATCH_WINDOW_S for the others instead of being
    answered alone while the rest wait a whole generation."""
    backend = LocalBackend(build_tiny_model(tmp_path / "m"), device="cpu", threads=1)
    calls = count_batches(backend)
    start = threading.Barrier(len(QUESTIONS))

    def ask(i):
        start.wait()
        return backend.generate([{"role": "user", "content": QUESTIONS[i]}], None, ChatParams(max_tokens=3, temperature=0))

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        answers = list(pool.map(ask, range(len(QUESTIONS))))
    assert len(answers) == len(QUESTIONS) and sum(calls) == len(QUESTIONS)
    assert calls[0] > 1, calls  # without the window the first request goes alone: [1, 7]
