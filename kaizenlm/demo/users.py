"""Simulated users whose feedback follows answer quality.

A user asks a domain question (a training paraphrase) or, sometimes, an out-of-scope one,
gets an answer from `answer_fn`, and reacts the way people do: a right answer earns
thumbs up, high stars, a copy and a 'completed'; a wrong one earns thumbs down, low stars,
a regenerate (and a second answer), an abandon, or a correction that states the right
answer. Some comments carry personal data, as real ones do, so curation has work to do.
Everything is seeded: the same seed gives the same traffic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kaizenlm.demo.domain import Domain
from kaizenlm.eval.metrics import is_refusal, key_fact_score

AnswerFn = Callable[[str, random.Random], str]

_PII_COMMENTS = [
    "Please email me at jane.doe@example.com about this.",
    "Call me back on +44 20 7946 0958.",
    "My card 4111 1111 1111 1111 was charged twice.",
    "Wrong again, reach me at +1 415 555 0134.",
]
_PLAIN_COMMENTS_GOOD = ["Thanks, that was exactly what I needed.", "Clear and short answer, thank you."]
_PLAIN_COMMENTS_BAD = ["That does not match what the website says.", "This answer is wrong, please fix it."]


@dataclass
class Behaviour:
    """Probabilities of each reaction, given whether the answer was right."""

    thumbs_given: float = 0.55
    rating_given: float = 0.35
    comment_given: float = 0.08
    copy_if_right: float = 0.5
    regenerate_if_wrong: float = 0.35
    correction_if_wrong: float = 0.25
    abandon_if_wrong: float = 0.2
    out_of_scope_share: float = 0.08


def is_right(domain: Domain, question: str, answer: str) -> bool:
    """Whether an answer is right for a generated question (the simulator's ground truth): it
    states the fact's value ("The refund window is 30 days, from delivery." is right), or, for
    an out-of-scope question, it is the refusal."""
    fact = domain.fact_for_question(question)
    if fact is None:
        return is_refusal(answer, domain.refusal)
    return key_fact_score(answer, fact.answer, must_include(fact.value)) == 1.0


def must_include(value: str) -> list[str]:
    """What an answer must state: the fact's value without a leading article ('an authenticator app')."""
    words = value.split()
    return [" ".join(words[1:]) if len(words) > 1 and words[0].lower() in ("a", "an", "the") else value]


def comment_for(right: bool, rng: random.Random) -> str:
    """A free-text comment; some unhappy ones carry personal data, as real ones do."""
    return rng.choice(_PLAIN_COMMENTS_GOOD if right else _PLAIN_COMMENTS_BAD + _PII_COMMENTS)


def baseline_answer_fn(domain: Domain, p_right: float = 0.45) -> AnswerFn:
    """A stand-in assistant for traffic before any model serves: right with probability p_right."""

    def answer(question: str, rng: random.Random) -> str:
        fact = domain.fact_for_question(question)
        if fact is None:
            return domain.refusal if rng.random() < p_right else "I think it is 5 days."
        return fact.answer if rng.random() < p_right else domain.wrong_answer(fact, rng)

    return answer


def simulate(domain: Domain, answer_fn: AnswerFn, n_conversations: int, start_ts: float, days: float,
             seed: int = 0, behaviour: Behaviour | None = None, n_users: int = 200,
             model_version: str = "baseline") -> Iterator[tuple[str, dict]]:
    """Yield ("turn"|"feedback"|"signal", payload) in time order over `days` starting at start_ts."""
    rng = random.Random(seed)
    b = behaviour or Behaviour()
    step = days * 86400 / max(1, n_conversations)
    for i in range(n_conversations):
        ts = start_ts + i * step + rng.random() * step * 0.5
        user = f"user-{rng.randrange(n_users):04d}"
        conv = f"conv-{seed}-{i:06d}"
        yield from _conversation(domain, answer_fn, rng, b, ts, user, conv, model_version)


def _question(domain: Domain, rng: random.Random, b: Behaviour) -> tuple[str, str | None]:
    if rng.random() < b.out_of_scope_share:
        return rng.choice(domain.out_of_scope), "out_of_scope"
    fact = rng.choice(domain.facts)
    return rng.choice([fact.question, *fact.paraphrases]), fact.topic


def _conversation(domain, answer_fn, rng, b, ts, user, conv, model_version) -> Iterator[tuple[str, dict]]:
    question, topic = _question(domain, rng, b)
    messages = [{"role": "user", "content": question}]
    answer = answer_fn(question, rng)
    turn_id = f"{conv}-t0"
    yield "turn", _turn(turn_id, conv, user, messages, answer, topic, model_version, rng, ts)
    right = is_right(domain, question, answer)
    t = ts + 5 + rng.random() * 30
    yield from _explicit(domain, rng, b, turn_id, user, question, right, t)
    if right:
        if rng.random() < b.copy_if_right:
            yield "signal", {"turn_id": turn_id, "kind": "copy", "user_id": user, "ts": t + 1}
        yield "signal", {"conversation_id": conv, "kind": "completed", "user_id": user, "ts": t + 2}
        return
    if rng.random() < b.regenerate_if_wrong:
        yield "signal", {"turn_id": turn_id, "kind": "regenerate", "user_id": user, "ts": t + 1}
        second = answer_fn(question, rng)
        second_id = f"{conv}-t1"
        yield "turn", _turn(second_id, conv, user, messages, second, topic, model_version, rng, t + 2)
        if is_right(domain, question, second):
            yield "feedback", {"turn_id": second_id, "thumbs": 1, "user_id": user, "ts": t + 10}
            yield "signal", {"conversation_id": conv, "kind": "completed", "user_id": user, "ts": t + 11}
            return
    if rng.random() < b.abandon_if_wrong:
        yield "signal", {"conversation_id": conv, "kind": "abandon", "user_id": user, "ts": t + 20}


def _turn(turn_id, conv, user, messages, answer, topic, model_version, rng, ts) -> dict:
    return {"turn_id": turn_id, "conversation_id": conv, "user_id": user, "messages": messages, "response": answer,
            "model_version": model_version, "latency_ms": round(80 + rng.random() * 400, 1),
            "prompt_tokens": 8 + len(messages[-1]["content"].split()), "completion_tokens": len(answer.split()),
            "topic": topic, "ts": ts}


def _explicit(domain, rng, b, turn_id, user, question, right, ts) -> Iterator[tuple[str, dict]]:
    fb: dict = {}
    if rng.random() < b.thumbs_given:
        fb["thumbs"] = 1 if right else -1
    if rng.random() < b.rating_given:
        fb["rating"] = rng.choice([4, 5, 5]) if right else rng.choice([1, 1, 2])
    if rng.random() < b.comment_given:
        fb["comment"] = comment_for(right, rng)
    if not right and rng.random() < b.correction_if_wrong:
        fact = domain.fact_for_question(question)
        fb["correction"] = fact.answer if fact else domain.refusal
    if fb:
        yield "feedback", {"turn_id": turn_id, "user_id": user, "ts": ts, **fb}
