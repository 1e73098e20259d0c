"""Text helpers of curation: the comparison form of a text, short stable ids, and per-distinct-value work.

Logs repeat texts a lot, so the curation steps normalize each text once (`normalize` is
cached) and work once per distinct value (`distinct`, `distinct_objects`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd

_NON_WORD = re.compile(r"[\W_]+")


@functools.lru_cache(maxsize=1 << 18)
def normalize(text: str) -> str:
    """Comparison form of a text: NFKC, case-folded, punctuation and runs of space collapsed.
    (Cached: logs repeat texts a lot, and several steps compare the same ones.)"""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def normalize_all(texts: Sequence[str]) -> list[str]:
    """`normalize` of each text."""
    return [normalize(t) for t in texts]


def digest(*parts: str, size: int = 16) -> str:
    """A short, stable hex id of some strings: SHA-256 over each part followed by a 0x1f byte."""
    # one joined string, one update: the same bytes as hashing part by part, at half the cost
    joined = "\x1f".join(parts) + "\x1f" if parts else ""
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:size]


def distinct(values: Sequence) -> tuple[np.ndarray, list]:
    """(codes, uniques) with values[i] == uniques[codes[i]], uniques in first-seen order.

    Logs repeat texts a lot, so per-row work is done once per distinct value and broadcast back.
    """
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


def distinct_objects(values: Sequence) -> tuple[np.ndarray, list]:
    """Like `distinct`, by identity: turns with one context share one parsed message list
    (see `load_candidates`), so the context steps work once per list."""
    codes, _ = pd.factorize(np.fromiter(map(id, values), dtype=np.int64, count=len(values)))
    first = np.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=np.int64)
    first[codes] = np.arange(len(codes))  # any row of a code holds the same object
    return codes, [values[i] for i in first.tolist()]
