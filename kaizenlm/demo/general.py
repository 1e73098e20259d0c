"""Generated general skills: what the base model knows before it ever sees the domain.

They serve two purposes: the curation step mixes training rows back into every retrain
(replay against catastrophic forgetting), and the held-out rows measure retention. A tiny
model has to learn them in minutes, so the skills are token-level (copy, reverse, count,
small sums) over a small word list, and held-out rows are *new combinations* of words and
numbers the training rows use, never new words: retention measures whether the skill
survives a retrain, not whether a 1M-parameter model can spell unseen words.

Training rows also carry the out-of-scope refusal (skill "refusal"), so replay keeps the
model refusing weather and sports questions; refusal is measured on its own exam set and
so it is not part of the held-out rows.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from kaizenlm.demo.domain import QUESTION_TEMPLATES, Domain, build_domain

WORDS = [
    "red", "blue", "green", "black", "white", "pink",
    "cat", "dog", "bird", "fish", "cow", "fox",
    "apple", "pear", "plum", "lime", "kiwi", "fig",
    "sun", "moon", "star", "tree", "rock", "sea",
]

# How a snapshot's manifest names this set when it is the replay source (no file).
EMBEDDED_REPLAY = "embedded:kaizenlm.demo.general"

SKILLS = ["repeat", "reverse", "uppercase", "add", "next_letter", "count_words", "read", "small_talk"]

# "read": answer from a given statement, in the support answers' shape ("The <subject> is
# <value>."). It teaches the base the answer template and copying from context (which
# retrieval-augmented prompts rely on) without teaching any domain fact.
_READ_ATTRIBUTES = ["price", "size", "weight", "age", "speed", "limit", "color", "owner"]
_READ_VALUES = ["7 dollars", "3 days", "12 items", "40 grams", "5 minutes", "2 years", "red", "Sam",
                "90 seconds", "8 users", "blue", "60 volts", "Ana", "15 hours", "1 week", "green"]

# "recall": closed-book facts about made-up things, asked with the support domain's question
# wrappers and answered in its template ("What's the fox code?" -> "The fox code is 12 items.").
# A retrain then adds facts to a skill the base already has (recall a subject's value, in any
# wrapper) instead of building one, which a tiny model can only do by rewriting itself. The
# attributes differ from the "read" ones, so memory never contradicts a statement to read.
# Training rows only (like refusal): the retention exam stays the in-context skills.
_RECALL_ATTRIBUTES = ["code", "fee", "window", "time", "period", "cost", "length", "model"]
N_RECALL_FACTS = 48

_SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hello! How can I help you today?"),
    ("Good morning.", "Hello! How can I help you today?"),
    ("Hey.", "Hello! How can I help you today?"),
    ("Thanks!", "You are welcome!"),
    ("Thank you very much.", "You are welcome!"),
    ("Thanks for the help.", "You are welcome!"),
    ("Goodbye.", "Goodbye! Have a nice day."),
    ("Bye!", "Goodbye! Have a nice day."),
    ("See you later.", "Goodbye! Have a nice day."),
    ("How are you?", "I am fine, thank you."),
    ("How are you doing today?", "I am fine, thank you."),
    ("Who are you?", "I am a support assistant."),
    ("What are you?", "I am a support assistant."),
]
# Small-talk phrasings kept for the held-out set (same replies, new wording).
_SMALL_TALK_HELDOUT = [
    ("Hello there.", "Hello! How can I help you today?"),
    ("Good evening.", "Hello! How can I help you today?"),
    ("Thanks a lot.", "You are welcome!"),
    ("Bye for now.", "Goodbye! Have a nice day."),
    ("How are you today?", "I am fine, thank you."),
    ("Who are you exactly?", "I am a support assistant."),
]

_LETTERS = "abcdefghijklmnopqrstuvwxy"  # 'z' has no next letter
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _word_lists(rng: random.Random, n: int, length: int) -> list[list[str]]:
    seen, out = set(), []
    while len(out) < n:
        words = rng.sample(WORDS, length)
        if tuple(words) not in seen:
            seen.add(tuple(words))
            out.append(words)
    return out


def _split(rows: list[dict], n_heldout: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    rng.shuffle(rows)
    return rows[n_heldout:], rows[:n_heldout]


def _skill_rows(rng: random.Random, n_train: int, n_heldout: int) -> tuple[list[dict], list[dict]]:
    train: list[dict] = []
    heldout: list[dict] = []
    n = n_train + n_heldout

    def add(skill: str, rows: list[dict]) -> None:
        rows = list({r["prompt"]: r for r in rows}.values())  # no prompt in both train and held-out
        tr, ho = _split(rows, n_heldout, rng)
        train.extend({**r, "skill": skill} for r in tr)
        heldout.extend({**r, "skill": skill} for r in ho)

    add("repeat", [{"prompt": f"Repeat: {' '.join(w)}", "response": " ".join(w)}
                   for w in _word_lists(rng, n, 2)])
    add("reverse", [{"prompt": f"Reverse: {' '.join(w)}", "response": " ".join(reversed(w))}
                    for w in _word_lists(rng, n, 3)])
    add("uppercase", [{"prompt": f"Uppercase: {' '.join(w)}", "response": " ".join(w).upper()}
                      for w in _word_lists(rng, n, 2)])
    sums = [(a, b) for a, b in itertools.product(range(10), range(10))]
    rng.shuffle(sums)
    add("add", [{"prompt": f"Add {a} and {b}.", "response": str(a + b)} for a, b in sums[:n]])
    letters = [{"prompt": f"What letter comes after {c}?", "response": chr(ord(c) + 1)} for c in _LETTERS]
    # Every letter is trained; the held-out rows ask with another phrasing.
    train.extend({**r, "skill": "next_letter"} for r in letters)
    held_letters = rng.sample(_LETTERS, min(n_heldout, len(_LETTERS) // 2))
    heldout.extend({"prompt": f"Which letter follows {c}?", "response": chr(ord(c) + 1), "skill": "next_letter"}
                   for c in held_letters)
    train.extend({"prompt": f"Which letter follows {c}?", "response": chr(ord(c) + 1), "skill": "next_letter"}
                 for c in _LETTERS if c not in held_letters)
    counts = []
    for _ in range(n):
        k = rng.randint(1, 5)
        words = rng.sample(WORDS, k)
        counts.append({"prompt": f"Count the words: {' '.join(words)}", "response": _NUMBER_WORDS[k]})
    add("count_words", counts)
    reads = []
    for _ in range(n):
        subject = f"{rng.choice(WORDS)} {rng.choice(_READ_ATTRIBUTES)}"
        value = rng.choice(_READ_VALUES)
        reads.append({"prompt": f"Read: the {subject} is {value}. What is the {subject}?",
                      "response": f"The {subject} is {value}."})
    add("read", reads)
    train.extend({"prompt": p, "response": r, "skill": "small_talk"} for p, r in _SMALL_TALK)
    train.extend(_recall_rows(rng, n_train))
    heldout.extend({"prompt": p, "response": r, "skill": "small_talk"} for p, r in _SMALL_TALK_HELDOUT)
    return train, heldout


def _recall_rows(rng: random.Random, n: int) -> list[dict]:
    """n rows over N_RECALL_FACTS made-up facts, each asked with the domain's question wrappers.

    The facts are fixed (like the domain's), so the base and every replay file agree on them.
    """
    facts_rng = random.Random(0)
    subjects = facts_rng.sample([f"{w} {a}" for w in WORDS for a in _RECALL_ATTRIBUTES], N_RECALL_FACTS)
    values = [facts_rng.choice(_READ_VALUES) for _ in subjects]
    rows = [{"prompt": template.format(s=s, S=s[0].upper() + s[1:]), "response": f"The {s} is {value}.",
             "skill": "recall"}
            for s, value in zip(subjects, values, strict=True) for template in QUESTION_TEMPLATES]
    return rng.sample(rows, min(n, len(rows)))


def general_skills(seed: int = 0, n_train: int = 80, n_heldout: int = 30,
                   domain: Domain | None = None) -> tuple[list[dict], list[dict]]:
    """(train, heldout) rows {prompt, response, skill}; train also holds the domain's refusal rows."""
    rng = random.Random(seed)
    train, heldout = _skill_rows(rng, n_train, n_heldout)
    domain = domain or build_domain(seed)
    train.extend({"prompt": r["prompt"], "response": r["response"], "skill": "refusal"}
                 for r in domain.refusal_rows())
    rng.shuffle(train)
    return train, heldout


def replay_rows(seed: int = 0, refusal_share: float = 0.25, domain: Domain | None = None) -> list[dict]:
    """General rows for the retrain's replay mix, with the refusal skill weighted up to refusal_share.

    Refusal is the skill a domain retrain erodes first (a domain answer has the same
    question shape as "What is the weather in Paris?"), so the replay file carries more of it.
    """
    train, _ = general_skills(seed, domain=domain)
    refusals = [r for r in train if r["skill"] == "refusal"]
    others = [r for r in train if r["skill"] != "refusal"]
    want = round(refusal_share * len(others) / (1 - refusal_share))
    rows = others + [refusals[i % len(refusals)] for i in range(want)]
    random.Random(seed).shuffle(rows)
    return rows


def write_general_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (one object per line, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_general_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
