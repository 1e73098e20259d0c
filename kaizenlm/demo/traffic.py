"""The demo's users talking to the real model: questions through the gateway's chat endpoint,
reactions that follow whether the real answer states the fact (demo/users.py's `Behaviour`).

Questions are asked many at a time (the local backend answers concurrent greedy requests in
one batch), then every user reacts: thumbs, stars, comments (some with personal data), a
correction stating the right answer, copy/completed after a right answer, regenerate (a second,
sampled answer) or abandon after a wrong one. Half of the explicit feedback goes through the
SDK with the server key, half as the public widget sends it: the widget key plus the turn's
feedback token. The gateway logs every chat turn itself.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from kaizenlm.demo.domain import Domain
from kaizenlm.demo.users import Behaviour, comment_for, is_right

MAX_TOKENS = 24  # the domain's answers are one short sentence; longer only costs CPU


@dataclass
class Ask:
    """One user's question in one conversation."""

    user: str
    conversation_id: str
    question: str
    temperature: float = 0.0


def plan(domain: Domain, n: int, seed: int, behaviour: Behaviour, n_users: int = 120) -> list[Ask]:
    """n conversations: a training paraphrase of a fact, or now and then an out-of-scope question."""
    rng = random.Random(seed)
    asks = []
    for i in range(n):
        if rng.random() < behaviour.out_of_scope_share:
            question = rng.choice(domain.out_of_scope)
        else:
            fact = rng.choice(domain.facts)
            question = rng.choice([fact.question, *fact.paraphrases])
        asks.append(Ask(f"user-{rng.randrange(n_users):04d}", f"conv-{seed}-{i:05d}", question))
    return asks


def chat(client: httpx.Client, ask: Ask, model: str = "champion") -> dict:
    """One chat completion; returns the reply with the answer text as `answer`."""
    r = client.post("/v1/chat/completions", json={
        "model": model, "user": ask.user, "temperature": ask.temperature, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": ask.question}], "conversation_id": ask.conversation_id})
    r.raise_for_status()
    reply = r.json()
    reply["answer"] = reply["choices"][0]["message"]["content"]
    return reply


# Twice the local backend's batch (LocalBackend.MAX_BATCH, 16): while one batch generates, the
# next one fills. With 16 in flight, the answers of a batch came back together, the next batch
# had only the few asked meanwhile, and batches alternated between ~12 and ~4 questions.
CONCURRENCY = 32


def ask_all(client: httpx.Client, asks: list[Ask], desc: str, concurrency: int = CONCURRENCY,
            model: str = "champion") -> list[dict]:
    """Every question to `model` at once (up to `concurrency` in flight): the backend batches them."""
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(asks), desc=desc, unit="chat") as bar:
        def one(ask: Ask) -> dict:
            reply = chat(client, ask, model)
            bar.update(1)
            return reply

        return list(pool.map(one, asks))


class Feedback:
    """Where reactions go: the SDK's endpoints (server key) or the widget's (public key + token)."""

    def __init__(self, gateway_url: str, ingest_key: str, widget_key: str):
        self.server = httpx.Client(base_url=gateway_url, timeout=60,
                                   headers={"Authorization": f"Bearer {ingest_key}"})
        self.widget = httpx.Client(base_url=gateway_url, timeout=60,
                                   headers={"Authorization": f"Bearer {widget_key}"})
        self.via_widget = 0
        self.sent = 0

    def post(self, route: str, body: dict, reply: dict, use_widget: bool) -> None:
        client = self.widget if use_widget else self.server
        body = {**body, "feedback_token": reply["feedback_token"]} if use_widget else body
        r = client.post(route, json=body)
        while r.status_code == 429:  # one user over the public routes' per-user limit: wait, as a page would
            time.sleep(float(r.headers.get("retry-after", "1")))
            r = client.post(route, json=body)
        r.raise_for_status()
        self.via_widget += use_widget
        self.sent += 1

    def close(self) -> None:
        self.server.close()
        self.widget.close()


def react(domain: Domain, ask: Ask, reply: dict, feedback: Feedback, rng: random.Random, b: Behaviour,
          second_try: bool = False) -> bool:
    """The user's reaction to one real answer; returns True when they ask again (regenerate)."""
    right = is_right(domain, ask.question, reply["answer"])
    turn = {"turn_id": reply["turn_id"], "user_id": ask.user}
    widget = rng.random() < 0.5
    explicit: dict = {}
    if rng.random() < b.thumbs_given or second_try:
        explicit["thumbs"] = 1 if right else -1
    if rng.random() < b.rating_given:
        explicit["rating"] = rng.choice([4, 5, 5]) if right else rng.choice([1, 1, 2])
    if rng.random() < b.comment_given:
        explicit["comment"] = comment_for(right, rng)
    if not right and rng.random() < b.correction_if_wrong:
        fact = domain.fact_for_question(ask.question)
        explicit["correction"] = fact.answer if fact else domain.refusal
    if explicit:
        feedback.post("/v1/feedback", {**turn, **explicit}, reply, widget)
    if right:
        if rng.random() < b.copy_if_right:
            feedback.post("/v1/signals", {**turn, "kind": "copy"}, reply, widget)
        feedback.post("/v1/signals", {**turn, "kind": "completed"}, reply, widget)
        return False
    if not second_try and rng.random() < b.regenerate_if_wrong:
        feedback.post("/v1/signals", {**turn, "kind": "regenerate"}, reply, widget)
        return True
    if rng.random() < b.abandon_if_wrong:
        feedback.post("/v1/signals", {**turn, "kind": "abandon"}, reply, widget)
    return False


def run_traffic(domain: Domain, gateway_url: str, ingest_key: str, widget_key: str, n: int, seed: int,
                behaviour: Behaviour | None = None) -> dict:
    """Ask, react, regenerate (sampled second answers) and react again; returns counts for the summary."""
    b = behaviour or Behaviour()
    rng = random.Random(seed + 7)
    asks = plan(domain, n, seed, b)
    client = httpx.Client(base_url=gateway_url, timeout=300, headers={"Authorization": f"Bearer {ingest_key}"})
    feedback = Feedback(gateway_url, ingest_key, widget_key)
    try:
        replies = ask_all(client, asks, "simulated users ask the real model")
        again = [ask for ask, reply in zip(asks, replies, strict=True) if react(domain, ask, reply, feedback, rng, b)]
        retries = [Ask(a.user, a.conversation_id, a.question, temperature=0.8) for a in again]
        second = ask_all(client, retries, "regenerated answers") if retries else []
        for ask, reply in zip(retries, second, strict=True):
            react(domain, ask, reply, feedback, rng, b, second_try=True)
    finally:
        client.close()
        feedback.close()
    right = sum(is_right(domain, a.question, r["answer"]) for a, r in zip(asks, replies, strict=True))
    return {"conversations": n, "chats": len(asks) + len(retries), "right_first_time": right,
            "feedback_events": feedback.sent, "via_widget": feedback.via_widget,
            "examples": [(a.question, r["answer"]) for a, r in list(zip(asks, replies, strict=True))[:3]]}
