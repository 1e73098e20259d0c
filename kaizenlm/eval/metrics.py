"""Scores for free-form answers against a reference, all in [0, 1]:

- key_fact_score: the share of the reference's key facts the answer states. Key facts are the
  row's `must_include` strings when given, else what a reader would check: numbers (with their
  unit word: "30 days"), e-mail addresses and URLs, codes like "K100" or "v2", and capitalised
  names not at the start of a sentence. An answer that says "The refund window is 30 days,
  counted from delivery" gets the fact; "about a month" does not.
- token_f1 / rouge_l / exact_match: SQuAD-style overlap of normalised words.
- is_refusal: the answer is the expected refusal (or nearly: token F1 >= 0.8).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict

_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?%?(?:\s+[a-z]+)?")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"https?://\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|io|cloud|dev)(?:/\S*)?\b")
_CODE = re.compile(r"\b(?=[A-Za-z]*\d)(?=\w*[A-Za-z])\w{2,}\b")  # letters and digits: K100, v2, 2FA
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*")
_UNIT_STOPWORDS = {"a", "an", "and", "or", "the", "to", "of", "per", "in", "on", "at", "is", "are", "for"}




def normalize(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace (SQuAD-style, articles kept)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (bag of normalized words)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    counts: dict[str, int] = defaultdict(int)
    for t in ref:
        counts[t] += 1
    common = 0
    for t in pred:
        if counts[t] > 0:
            common += 1
            counts[t] -= 1
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common subsequence of normalized words."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    prev = [0] * (len(ref) + 1)
    for p in pred:
        cur = [0]
        for j, r in enumerate(ref):
            cur.append(prev[j] + 1 if p == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_refusal(answer: str, refusal: str) -> bool:
    """The answer is the expected refusal: equal after normalisation, or nearly (token F1 >= 0.8)."""
    return normalize(answer) == normalize(refusal) or token_f1(answer, refusal) >= 0.8


def key_facts(reference: str, must_include: list[str] | None = None) -> list[str]:
    """The strings an answer must state to be right (see the module docstring)."""
    if must_include:
        return list(must_include)
    facts: list[str] = []
    taken: list[tuple[int, int]] = []

    def add(match: re.Match, text: str | None = None) -> None:
        span = match.span()
        if any(a < span[1] and span[0] < b for a, b in taken):
            return
        taken.append(span)
        facts.append(text if text is not None else match.group(0))

    for m in _EMAIL.finditer(reference):
        add(m)
    for m in _URL.finditer(reference):
        add(m, m.group(0).rstrip("."))
    for m in _NUMBER.finditer(reference):
        words = m.group(0).split()
        keep = words if len(words) == 1 or words[1] not in _UNIT_STOPWORDS else words[:1]
        add(m, " ".join(keep))
    for m in _CODE.finditer(reference):
        add(m)
    for m in _NAME.finditer(reference):
        add(m)
    return facts


def key_fact_score(answer: str, reference: str, must_include: list[str] | None = None) -> float:
    """Share of the key facts of `reference` stated in `answer` (1.0 when the reference has none
    and the answer overlaps it well: token F1 >= 0.5)."""
    facts = key_facts(reference, must_include)
    if not facts:
        return float(token_f1(answer, reference) >= 0.5)
    said = f" {normalize(answer)} "
    return sum(f" {normalize(fact)} " in said for fact in facts) / len(facts)
