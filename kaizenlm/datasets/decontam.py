"""Held-out texts and decontamination: training prompts must not contain evaluation questions.

`load_holdout` reads held-out texts from a file (.txt, .jsonl, .json or .parquet);
`contaminated` marks prompts that share a word 8-gram with a held-out text or are
near-duplicates of one (kaizenlm/datasets/near_dup.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from kaizenlm.datasets.near_dup import near_matches
from kaizenlm.datasets.text import distinct, normalize, normalize_all

HOLDOUT_NGRAM = 8  # word n-gram shared with a held-out text that marks a prompt contaminated


def _word_ngrams(norm: str, n: int = HOLDOUT_NGRAM) -> set[str]:
    words = norm.split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def contaminated(prompts: Sequence[str], holdout: Sequence[str], threshold: float, near: bool = True) -> np.ndarray:
    """Bool per prompt: it shares a word 8-gram with a held-out text (or contains a whole
    held-out text shorter than 8 words), or (with ``near``) is a near-duplicate (Jaccard >=
    threshold) of one. Texts are compared in `normalize`d form.
    """
    if not holdout or not prompts:
        return np.zeros(len(prompts), dtype=bool)
    codes, unique_prompts = distinct(prompts)  # prompts repeat: check each distinct one once
    norm_prompts = normalize_all(unique_prompts)
    norm_holdout = sorted({normalize(h) for h in holdout} - {""})
    grams: set[str] = set()
    short_lengths: set[int] = set()
    for h in norm_holdout:
        grams |= _word_ngrams(h)
        if len(h.split()) < HOLDOUT_NGRAM:
            short_lengths.add(len(h.split()))
    first_words = {g.split(" ", 1)[0] for g in grams}  # a held-out text can only start at one of these
    unique = sorted(set(norm_prompts))
    tainted = set()
    for p in unique:
        words = p.split()
        if any(g in grams for g in _word_ngrams(p)) or any(  # a short held-out text inside a longer prompt
                " ".join(words[j:j + n]) in grams for j, w in enumerate(words) if w in first_words
                for n in short_lengths if j + n <= len(words)):
            tainted.add(p)
    if near:
        rest = [p for p in unique if p not in tainted]
        tainted.update(p for p, m in zip(rest, near_matches(rest, norm_holdout, threshold), strict=True) if m)
    hit = np.fromiter((p in tainted for p in norm_prompts), dtype=bool, count=len(norm_prompts))
    return hit[codes]


def _read_records(path: Path) -> list:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array")
        return data
    if suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    raise ValueError(f"{path}: unsupported file type {suffix or '(none)'}; use .txt, .jsonl, .json or .parquet")


HOLDOUT_FIELDS = ("question", "prompt", "text", "input")


def load_holdout(path: str | Path) -> list[str]:
    """Held-out texts from a file: .txt (one per line), or .jsonl/.json/.parquet records with
    a question, prompt, text or input field (or plain strings)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"holdout file {path} does not exist")
    out = []
    for i, rec in enumerate(_read_records(path)):
        if isinstance(rec, str):
            out.append(rec)
            continue
        value = next((rec[f] for f in HOLDOUT_FIELDS if isinstance(rec, dict) and isinstance(rec.get(f), str)), None)
        if value is None:
            raise ValueError(f"{path}: record {i + 1} has none of the fields {', '.join(HOLDOUT_FIELDS)}")
        out.append(value)
    return out
