"""Curation: which logged turns become training data, and why the others do not.

The pipeline is a chain of small steps; each reports the rows it got, the rows it kept, why
it dropped the others (with a few examples) and its parameters, in a `Funnel` that ends up
in the snapshot manifest and in `kaizen dataset build`'s output.

Shared by both outputs (`prepare`):

- ``pii_scrub``: every text field (messages, answer, correction) goes through
  `scrub_pii` (typed placeholders, kaizenlm/datasets/pii.py) before anything else sees it;
- ``context``: turns with an empty or too long conversation context are dropped;
- the conversation contexts are grouped into near-duplicate clusters (MinHash over
  character 5-grams, verified by exact Jaccard), targets are checked for quality, and prompts
  that match held-out texts are marked contaminated.

With ``[curation] workers`` = 2, a forked child (`kaizenlm.datasets.parallel`) scrubs half of
the distinct texts and then computes the clusters beside the quality and decontamination
checks; the output is the same as with one process.

SFT (`select_sft`): ``reward`` (well-rewarded answers, and user corrections *in place of*
the answer they correct) -> ``quality`` -> ``decontaminate`` -> ``exact_dedup`` (normalized
hash of context + target) -> ``near_dedup`` (``max_per_prompt`` per cluster) ->
``per_user_cap`` -> ``topic_balance``. DPO pairs are mined from the same prepared frame in
`kaizenlm.datasets.pairs`; the recency window, the split and the replay mix are steps of
`kaizenlm.datasets.snapshots.curate`.

Quality (the seed rules, `text_issue`): empty; too short or too long; boilerplate (AI
disclaimers, placeholders, non-answers: ``boilerplate_phrases``); truncated (an open code
fence, a trailing comma or colon, or a long answer without closing punctuation); average
sentence under ``min_avg_sentence_words`` words; looping (repeated word 3-grams); echoing
the prompt; a correction that repeats the answer. The sentence rule measures the answer
(``sentence_rule_scope = "response"``) by default: on the demo's traffic it drops none of
the 1,907 right answers, while measuring user message + answer ("turn") would drop 100 of
them, all because the user asked tersely ("Refund window?"); docs/DATASETS.md has the numbers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from kaizenlm.config import CurationConfig, RewardsConfig
from kaizenlm.datasets.parallel import beside
from kaizenlm.datasets.pii import PII_KINDS, scrub_pii
from kaizenlm.feedback.rewards import Window, reward_frame

__all__ = ["PII_KINDS", "scrub_pii"]  # re-exported: kaizenlm.datasets.curation.scrub_pii is the public name

# ---------------------------------------------------------------------------------------------
# Text helpers


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


# ---------------------------------------------------------------------------------------------
# Quality checks of a training target


_SENTENCE_BREAK = re.compile(r"(?<=[.!?…。！？])\s+|\n+")
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_OPEN_END = re.compile(r"[,;:(\[{\-–—]\s*\Z")
_CLOSED_END = re.compile(r"[.!?…。！？\"'”’»)\]}>*`~]\s*\Z")


def avg_sentence_words(text: str) -> float | None:
    """Mean words per sentence of a text's prose (code blocks left out; CJK counts two
    characters as a word); None when it has no prose."""
    sentences = [s for s in _SENTENCE_BREAK.split(_CODE_BLOCK.sub("\n", text)) if _WORD.search(s)]
    if not sentences:
        return None
    words = 0.0
    for s in sentences:
        cjk = len(_CJK.findall(s))
        words += len(_WORD.findall(_CJK.sub(" ", s) if cjk else s)) + cjk / 2
    return words / len(sentences)


def is_truncated(text: str, min_words: int) -> bool:
    """An open code fence, a trailing comma/colon/dash, or (with at least ``min_words`` words,
    when min_words > 0) no closing punctuation; a final URL or path counts as closed."""
    stripped = text.rstrip()
    if stripped.count("```") % 2 or _OPEN_END.search(stripped):
        return True
    if not min_words or _CLOSED_END.search(stripped):
        return False
    return len(_WORD.findall(stripped)) >= min_words and "/" not in stripped.split()[-1]


def is_boilerplate(normalized: str, phrases: Sequence[str]) -> bool:
    """Whether a `normalize`d text contains one of the (normalized) phrases as whole words."""
    return _phrase_pattern(tuple(phrases)).search(normalized) is not None


@functools.lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) or "(?!)"
    return re.compile(rf"(?:^| )(?:{alternatives})(?: |$)")


def repetition(text: str, normalized: str | None = None) -> float:
    """Share of repeated word 3-grams (0 for varied text, near 1 for a looping answer).

    Texts under 12 words count as 0: too short to judge. ``normalized`` saves normalizing again.
    """
    words = (normalize(text) if normalized is None else normalized).split()
    if len(words) < 12:
        return 0.0
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return 1.0 - len(set(grams)) / len(grams)


def text_issue(text: str | None, cfg: CurationConfig, normalized: str | None = None, prompt: str = "",
               casual: bool = False) -> str | None:
    """Why a text cannot be a training target (None when it can): empty, too_short, too_long,
    boilerplate, truncated, short_sentences or repetitive.

    ``prompt`` is the user message (the sentence rule measures it too when
    ``sentence_rule_scope = "turn"``); ``casual`` texts (user corrections) are not held to
    closing punctuation.
    """
    if not isinstance(text, str) or not text.strip():
        return "empty"
    n = len(text.strip())
    if n < cfg.min_response_chars:
        return "too_short"
    if n > cfg.max_response_chars:
        return "too_long"
    normalized = normalize(text) if normalized is None else normalized
    if cfg.boilerplate_phrases and _phrase_pattern(_phrases(tuple(cfg.boilerplate_phrases))).search(normalized):
        return "boilerplate"
    if is_truncated(text, 0 if casual else cfg.truncation_min_words):
        return "truncated"
    if cfg.min_avg_sentence_words:
        measured = f"{prompt}\n{text}" if cfg.sentence_rule_scope == "turn" and prompt else text
        avg = avg_sentence_words(measured)
        if avg is not None and avg < cfg.min_avg_sentence_words:
            return "short_sentences"
    if repetition(text, normalized) > cfg.max_repetition:
        return "repetitive"
    return None


_PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {}


def _phrases(raw: tuple[str, ...]) -> tuple[str, ...]:
    if raw not in _PHRASES:
        _PHRASES[raw] = tuple(p for p in (normalize(x) for x in raw) if p)
    return _PHRASES[raw]


# ---------------------------------------------------------------------------------------------
# Near-duplicates: MinHash LSH over character 5-grams, candidates verified by exact Jaccard.

SHINGLE = 5
NUM_PERM = 64
LSH_RECALL = 0.97  # least chance that a pair exactly at the threshold becomes a candidate


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a good 64-bit scramble (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(texts: Sequence[str], k: int = SHINGLE) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every character k-gram of every (already normalized) text.

    Returns (hashes, starts): text i's hashes are hashes[starts[i]:starts[i + 1]]. A text
    shorter than k is padded with spaces, so every text has at least one shingle.
    """
    padded = [t.ljust(k) for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    if not len(padded):
        return np.zeros(0, np.uint64), np.zeros(1, np.int64)
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n_grams = lengths - k + 1
    total = len(codes) - k + 1
    h = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = _mix64(h ^ codes[j:j + total])
    text_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    # positions of grams that lie inside one text
    offsets = np.arange(n_grams.sum()) - np.repeat(np.cumsum(n_grams) - n_grams, n_grams)
    positions = np.repeat(text_starts, n_grams) + offsets
    starts = np.concatenate(([0], np.cumsum(n_grams)))
    return h[positions], starts


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows): the most selective banding (fewest false candidates) under which a pair
    at exactly the threshold still becomes a candidate with probability >= LSH_RECALL."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= LSH_RECALL:
            return bands, rows
    return num_perm, 1


MINHASH_BLOCK = 1 << 16  # shingle hashes per block: the block and its buffer stay in CPU cache


def minhash(hashes: np.ndarray, starts: np.ndarray, num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """MinHash signatures (n_texts x num_perm, uint64) from `shingle_hashes` output.

    The shingle hashes are already well mixed, so each permutation is the bijection
    a * h + b (mod 2**64) with odd a, computed in place. Texts go in blocks of about
    MINHASH_BLOCK hashes, all permutations per block: about twice as fast as one pass over
    all hashes per permutation, which streams them through memory num_perm times.
    """
    n = len(starts) - 1
    sig = np.empty((n, num_perm), dtype=np.uint64)
    if n == 0:
        return sig
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    first = 0
    with np.errstate(over="ignore"):
        while first < n:
            # the texts whose hashes fit in one block (at least one text)
            last = min(n, max(first + 1, int(np.searchsorted(starts, starts[first] + MINHASH_BLOCK, "right")) - 1))
            block = hashes[starts[first]:starts[last]]
            offsets = starts[first:last] - starts[first]
            buf = np.empty_like(block)
            for p in range(num_perm):
                np.multiply(block, a[p], out=buf)
                np.add(buf, b[p], out=buf)
                sig[first:last, p] = np.minimum.reduceat(buf, offsets)
            first = last
    return sig


ESTIMATE_SLACK = 0.2  # candidates whose signature agreement is this far below the threshold skip exact checks


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


class _Shingled:
    """Texts with their shingle hashes, MinHash signatures and LSH band keys."""

    def __init__(self, texts: Sequence[str], threshold: float) -> None:
        self.hashes, self.starts = shingle_hashes(texts)
        self.sig = minhash(self.hashes, self.starts)
        self.bands, rows = lsh_params(threshold)
        self.keys = np.zeros((len(texts), self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                key = np.zeros(len(texts), dtype=np.uint64)
                for col in range(band * rows, (band + 1) * rows):
                    key = _mix64(key ^ self.sig[:, col])
                self.keys[:, band] = key
        self.threshold = threshold
        self._sets: dict[int, set] = {}
        self._flat: list[int] = []

    def _set(self, i: int) -> set:
        s = self._sets.get(i)
        if s is None:
            if not self._flat:  # slicing one Python list is far cheaper than converting numpy slices
                self._flat, self._bounds = self.hashes.tolist(), self.starts.tolist()
            s = self._sets[i] = set(self._flat[self._bounds[i]:self._bounds[i + 1]])
        return s

    def similar(self, i: int, j: int) -> bool:
        """Exact Jaccard of the shingle sets of texts i and j >= threshold."""
        a, b = self._set(i), self._set(j)
        inter = len(a & b)
        return inter >= self.threshold * (len(a) + len(b) - inter)

    def plausible(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Bool per candidate pair: signature agreement (an estimate of Jaccard) is close
        enough to the threshold to be worth an exact check."""
        keep = np.zeros(len(left), dtype=bool)
        for i in range(0, len(left), 65536):
            agree = (self.sig[left[i:i + 65536]] == self.sig[right[i:i + 65536]]).mean(axis=1)
            keep[i:i + 65536] = agree >= self.threshold - ESTIMATE_SLACK
        return keep


def near_duplicate_groups(texts: Sequence[str], threshold: float) -> np.ndarray:
    """Group index per text: texts (normalized) with Jaccard >= threshold of their character
    5-gram sets end up in one group (transitively). Deterministic for a given input order.

    Candidates come from MinHash LSH (each text paired with the first text of every band
    bucket it falls in), are thinned by signature agreement, and every merge is verified by
    exact Jaccard: there are no false merges, and a true pair is missed with small probability.
    """
    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sh = _Shingled(texts, threshold)
    index = np.arange(n)
    found = []
    for band in range(sh.bands):
        key = sh.keys[:, band]
        order = np.lexsort((index, key))
        sorted_key = key[order]
        first = np.concatenate(([True], sorted_key[1:] != sorted_key[:-1]))
        heads = order[np.maximum.accumulate(np.where(first, index, 0))]
        found.append(heads[~first] * n + order[~first])
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    left, right = pairs // n, pairs % n
    keep = sh.plausible(left, right)
    uf = _UnionFind(n)
    for i, j in zip(left[keep].tolist(), right[keep].tolist(), strict=True):
        if uf.find(i) != uf.find(j) and sh.similar(i, j):
            uf.union(i, j)
    return np.fromiter((uf.find(i) for i in range(n)), dtype=np.int64, count=n)


def near_matches(queries: Sequence[str], targets: Sequence[str], threshold: float) -> np.ndarray:
    """Bool per (normalized) query: Jaccard >= threshold with at least one (normalized) target.

    Held-out sets are small and most queries share few shingles with any of them, so queries
    that cannot reach the threshold are left out before MinHash (an exact bound, the same
    result): a query needs at least threshold x |target| shingles of some target, and its
    shingles found in any target are at least as many as it shares with one."""
    hit = np.zeros(len(queries), dtype=bool)
    if not len(queries) or not len(targets):
        return hit
    q_hashes, q_starts = shingle_hashes(queries)
    t_hashes, t_starts = shingle_hashes(targets)
    smallest = min(len(np.unique(t_hashes[lo:hi])) for lo, hi in zip(t_starts[:-1], t_starts[1:], strict=True))
    in_targets = np.unique(t_hashes)
    found = in_targets[np.minimum(np.searchsorted(in_targets, q_hashes), len(in_targets) - 1)] == q_hashes
    shared = np.add.reduceat(found.astype(np.int64), q_starts[:-1])
    maybe = np.flatnonzero(shared >= threshold * smallest)
    if len(maybe):
        hit[maybe] = _near_matches_lsh([queries[i] for i in maybe.tolist()], targets, threshold)
    return hit


def _near_matches_lsh(queries: Sequence[str], targets: Sequence[str], threshold: float) -> np.ndarray:
    """`near_matches` by MinHash LSH candidates, verified by exact Jaccard."""
    hit = np.zeros(len(queries), dtype=bool)
    sh = _Shingled(list(targets) + list(queries), threshold)
    nt = len(targets)
    q_left, t_right = [], []
    for band in range(sh.bands):
        by_key: dict[int, list[int]] = {}
        for t, key in enumerate(sh.keys[:nt, band].tolist()):
            by_key.setdefault(key, []).append(t)
        q_keys = sh.keys[nt:, band]
        for q in np.flatnonzero(np.isin(q_keys, sh.keys[:nt, band])).tolist():
            for t in by_key[int(q_keys[q])]:
                q_left.append(q + nt)
                t_right.append(t)
    if not q_left:
        return hit
    pairs = np.unique(np.array(q_left, dtype=np.int64) * nt + np.array(t_right, dtype=np.int64))
    left, right = pairs // nt, pairs % nt
    keep = sh.plausible(left, right)
    for q, t in zip(left[keep].tolist(), right[keep].tolist(), strict=True):
        if not hit[q - nt] and sh.similar(q, t):
            hit[q - nt] = True
    return hit


# ---------------------------------------------------------------------------------------------
# Held-out texts (decontamination)


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


# ---------------------------------------------------------------------------------------------
# The funnel report


MAX_EXAMPLES = 3
EXAMPLE_CHARS = 160


def _clip(text: object) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


def examples_of(removed: pd.DataFrame, reasons: Sequence[str] | str, text_column: str,
                id_column: str = "turn_id") -> list[dict]:
    """Up to MAX_EXAMPLES removed rows for the funnel: the first row of each reason first, so
    that every kind of removal shows up. Texts are already scrubbed and clipped."""
    if removed.empty:
        return []
    reasons = [reasons] * len(removed) if isinstance(reasons, str) else list(reasons)
    picked, seen = [], set()
    for i, reason in enumerate(reasons):  # one per reason first
        if reason not in seen:
            seen.add(reason)
            picked.append(i)
    picked += [i for i in range(len(removed)) if i not in picked]
    ids, texts = removed[id_column].tolist(), removed[text_column].tolist()
    return [{"id": str(ids[i]), "reason": str(reasons[i]), "text": _clip(texts[i])} for i in picked[:MAX_EXAMPLES]]


@dataclass
class Funnel:
    """What each curation step kept and dropped, per output (candidates, sft, dpo), with reasons,
    parameters and a few examples of what it removed."""

    steps: dict[str, list[dict]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def step(self, output: str, name: str, before: int, after: int, *, params: dict | None = None,
             examples: list[dict] | None = None, **reasons: int) -> None:
        entry: dict = {"step": name, "in": int(before), "out": int(after)}
        reasons = {k: int(v) for k, v in reasons.items() if v}
        if reasons:
            entry["dropped"] = reasons
        if params is not None:
            entry["params"] = params
        if examples:
            entry["examples"] = examples
        self.steps.setdefault(output, []).append(entry)

    def to_json(self) -> dict:
        return {"steps": self.steps, **self.notes}


# ---------------------------------------------------------------------------------------------
# Candidates


def count_turns(con: duckdb.DuckDBPyConnection, window: Window) -> int:
    """Distinct turns ingested by the window's as_of, whatever their time: what the recency
    window starts from."""
    cond, params = Window(as_of=window.as_of).turns("t")
    return con.execute(f"SELECT count(DISTINCT t.turn_id) FROM turns t WHERE {cond}", params).fetchall()[0][0]


def _fetch_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pd.DataFrame:
    """A query's rows as a DataFrame, through Arrow: for 100k turns' texts about half the CPU
    of `.df()`, the same frame. `.df()` where Arrow cannot be had: the connection holds an
    unfinished `execute()` result (DuckDB 2 will not start a relation beside it), or the
    DuckDB version lacks ``to_arrow_table``."""
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except (duckdb.Error, AttributeError, TypeError):
        return con.execute(sql, params).df()
    frame = table.to_pandas()
    for column in table.schema:  # as `.df()` gives it, a text column without any value is object (None)
        if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) and \
                table.column(column.name).null_count == table.num_rows:
            frame[column.name] = pd.Series([None] * table.num_rows, dtype=object)
    return frame


def load_candidates(con: duckdb.DuckDBPyConnection, window: Window, weights: RewardsConfig) -> pd.DataFrame:
    """Turns of the window (one row per turn_id) with their reward features, sorted by turn_id.

    ``messages`` holds the parsed message list (the context the answer was given in).
    """
    cond, params = window.turns("t")
    turns = _fetch_frame(
        con,
        f"""SELECT t.turn_id, t.conversation_id, t.user_id, t.ts, t.model_version, t.variant, t.experiment_id,
                   t.topic, t.messages, t.response
            FROM turns t WHERE {cond}
            QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
            ORDER BY t.turn_id""",
        params,
    )
    rewards = reward_frame(con, window, weights)
    if turns["turn_id"].equals(rewards["turn_id"]):  # both are the window's turns by turn_id: side by side
        frame = pd.concat([turns, rewards.drop(columns="turn_id")], axis=1)
    else:
        frame = turns.merge(rewards, on="turn_id", how="left", validate="one_to_one")
    parsed: dict[str, list] = {}  # identical contexts (a popular first question) share one parsed list
    frame["messages"] = [parsed[m] if m in parsed else parsed.setdefault(m, orjson.loads(m))
                         for m in frame["messages"].tolist()]
    return frame.reset_index(drop=True)


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content", "")
    return messages[-1].get("content", "") if messages else ""


def _context_text(messages: list[dict]) -> str:
    # The system prompt is the same for most turns: leave it out of similarity.
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m.get("role") != "system")


def cluster_labels(keys: Sequence[str], texts: Sequence[str], threshold: float) -> list[str]:
    """A stable label per row: rows whose normalized texts are near-duplicates share a label
    (the smallest exact key in their group), independent of row order."""
    unique: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        unique.setdefault(key, text)
    ordered = sorted(unique)
    groups = near_duplicate_groups([unique[k] for k in ordered], threshold)
    label_of_group: dict[int, str] = {}
    for key, g in zip(ordered, groups.tolist(), strict=True):
        label_of_group.setdefault(g, key)  # ordered ascending, so the first key is the smallest
    label = {key: label_of_group[g] for key, g in zip(ordered, groups.tolist(), strict=True)}
    return [label[k] for k in keys]


def _scrub_texts(uses: Sequence[tuple[str, int]], keep: frozenset) -> tuple[dict[str, str], Counter]:
    """`scrub_pii` of distinct texts, each with its number of uses: the texts that changed
    (original -> scrubbed) and the replacements per kind, counted once per use."""
    clean: dict[str, str] = {}
    counts: Counter = Counter()
    for text, n in uses:
        found: dict[str, int] = {}
        scrubbed_text = scrub_pii(text, found, keep)
        if scrubbed_text != text:
            clean[text] = scrubbed_text
        for kind, k in found.items():
            counts[kind] += k * n
    return clean, counts


def scrub_frame(frame: pd.DataFrame, funnel: Funnel, keep: Sequence[str] = (), workers: int = 1) -> pd.DataFrame:
    """Step pii_scrub: every text field of every turn through `scrub_pii` (drops nothing).

    Logs repeat texts (system prompts, popular questions, canned answers), so each distinct
    text is scrubbed once and its replacements are counted once per occurrence. Turns with
    one context share one parsed message list (see `load_candidates`); it is scrubbed once
    and the turns keep sharing the scrubbed list. With ``workers`` >= 2 a forked child
    scrubs half of the distinct texts."""
    keep = frozenset(keep)
    responses, corrections = frame["response"].tolist(), frame["correction"].tolist()
    ctx_codes, contexts = distinct_objects(frame["messages"].tolist())
    uses: Counter = Counter()
    for m, n in zip(contexts, np.bincount(ctx_codes, minlength=len(contexts)).tolist(), strict=True):
        for msg in m:
            uses[msg.get("content", "")] += n
    uses.update(t for t in responses if isinstance(t, str))
    uses.update(t for t in corrections if isinstance(t, str))
    items = list(uses.items())
    # every other text goes to the second core, so that both get a share of the costly kinds
    other_half = beside(workers, _scrub_texts, items[1::2], keep)
    clean, counts = _scrub_texts(items[::2], keep)  # only the texts that changed
    more_clean, more_counts = other_half.result()
    clean.update(more_clean)
    counts.update(more_counts)

    def content(msg: dict):
        text = msg.get("content", "")
        return clean.get(text, text)

    scrubbed = [[{**msg, "content": content(msg)} for msg in m] for m in contexts]
    ctx_changed = np.fromiter((any(msg.get("content", "") in clean for msg in m) for m in contexts), dtype=bool,
                              count=len(contexts))
    new_responses = [clean.get(r, r) if isinstance(r, str) else r for r in responses]
    new_corrections = [clean.get(c, c) if isinstance(c, str) else None for c in corrections]
    changed = ctx_changed[ctx_codes] | np.fromiter(
        (a is not b or (c is not None and c is not d)
         for a, b, c, d in zip(new_responses, responses, new_corrections, corrections, strict=True)),
        dtype=bool, count=len(frame))
    frame = frame.assign(messages=[scrubbed[c] for c in ctx_codes.tolist()], response=new_responses,
                         correction=new_corrections)
    hits = frame[changed]
    examples = examples_of(hits.assign(_text=[f"{_last_user(m)} => {r}" for m, r in
                                              zip(hits["messages"].tolist(), hits["response"].tolist(), strict=True)]),
                           "replaced", "_text")
    funnel.step("candidates", "pii_scrub", len(frame), len(frame),
                params={"fields": ["messages", "response", "correction"], "placeholders": [f"<{k}>" for k in PII_KINDS],
                        "pii_keep": sorted(keep)},
                examples=examples)
    funnel.notes["pii_replaced"] = {k: counts.get(k, 0) for k in PII_KINDS}
    funnel.notes["pii_turns"] = int(changed.sum())
    return frame


def _keys_and_clusters(contexts: Sequence[str], threshold: float) -> tuple[list[str], list[str]]:
    """The exact key (digest of the normalized text) and the near-duplicate cluster label of
    each conversation context."""
    norms = normalize_all(contexts)
    digests: dict[str, str] = {}
    keys = [digests[n] if n in digests else digests.setdefault(n, digest(n)) for n in norms]
    return keys, cluster_labels(keys, norms, threshold)


def _issues(texts: Sequence[str], prompts: Sequence[str], cfg: CurationConfig, casual: bool = False) -> list[str | None]:
    """`text_issue` of each text, computed once per distinct text (and prompt, when the
    sentence rule measures the whole turn)."""
    if cfg.sentence_rule_scope == "turn":
        codes, unique = distinct(list(zip(texts, prompts, strict=True)))
        per_unique = [text_issue(t, cfg, prompt=p, casual=casual) for t, p in unique]
    else:
        codes, unique = distinct(texts)
        per_unique = [text_issue(t, cfg, casual=casual) for t in unique]
    return [per_unique[c] for c in codes.tolist()]


def prepare(frame: pd.DataFrame, cfg: CurationConfig, holdout: Sequence[str], funnel: Funnel) -> pd.DataFrame:
    """Scrub, check and cluster candidate turns (returns a new frame; drops nothing but turns
    with an empty or too-long context). Added columns:

    prompt, context_key, cluster, response_issue, correction_issue, contaminated.
    """
    workers = cfg.processes
    frame = scrub_frame(frame, funnel, cfg.pii_keep, workers)

    # the context steps work once per distinct (shared) message list
    codes, lists = distinct_objects(frame["messages"].tolist())
    contexts = [_context_text(m) for m in lists]
    empty_u = np.array([not c.strip() for c in contexts], dtype=bool)
    too_long_u = np.array([len(c) > cfg.max_context_chars for c in contexts], dtype=bool)
    empty, too_long = empty_u[codes], too_long_u[codes]
    keep = ~(empty | too_long)
    removed = frame[~keep].assign(_why=np.where(empty[~keep], "empty_context", "context_too_long"),
                                  _text=[contexts[c] for c in codes[~keep].tolist()])
    funnel.step("candidates", "context", len(frame), int(keep.sum()), params={"max_context_chars": cfg.max_context_chars},
                examples=examples_of(removed, removed["_why"].tolist(), "_text"),
                empty_context=int(empty.sum()), context_too_long=int((too_long & ~empty).sum()))
    frame = frame[keep].reset_index(drop=True)
    rows = codes[keep].tolist()

    live = np.flatnonzero(~(empty_u | too_long_u)).tolist()
    # the context keys and clusters on the second core, beside the prompt and target checks below
    clustering = beside(workers, _keys_and_clusters, [contexts[i] for i in live], cfg.dedup_threshold)
    prompt_of = [_last_user(m) for m in lists]
    prompts = [prompt_of[c] for c in rows]

    responses, corrections = frame["response"].tolist(), frame["correction"].tolist()
    norm_prompt_of = normalize_all(prompt_of)
    norm_responses = normalize_all(responses)
    issues = _issues(responses, prompts, cfg)
    response_issue = [issue if issue or nr != norm_prompt_of[c] else "echoes_prompt"
                      for issue, nr, c in zip(issues, norm_responses, rows, strict=True)]
    corrected = [i for i, c in enumerate(corrections) if isinstance(c, str)]  # None or NaN (as pandas stores it): none
    corr_issues = _issues([corrections[i] for i in corrected], [prompts[i] for i in corrected], cfg, casual=True)
    correction_issue: list[str | None] = ["none"] * len(frame)
    for i, issue in zip(corrected, corr_issues, strict=True):
        correction_issue[i] = issue or ("same_as_answer" if normalize(corrections[i]) == norm_responses[i] else None)
    tainted = contaminated(prompt_of, holdout, cfg.decontam_threshold)[rows]  # once per context
    live_keys, live_clusters = clustering.result()
    keys = dict(zip(live, live_keys, strict=True))
    clusters = dict(zip(live, live_clusters, strict=True))
    frame["context_key"] = [keys[c] for c in rows]
    frame["cluster"] = [clusters[c] for c in rows]
    frame["prompt"] = prompts
    frame["response_issue"] = response_issue
    frame["correction_issue"] = correction_issue
    frame["contaminated"] = tainted
    funnel.notes["contaminated_turns"] = int(frame["contaminated"].sum())
    return frame


# ---------------------------------------------------------------------------------------------
# Steps shared by SFT examples and DPO pairs (rows arrive best first, so caps keep the best)


def drop_contaminated(rows: pd.DataFrame, output: str, funnel: Funnel, text_column: str = "prompt",
                      id_column: str = "turn_id", threshold: float | None = None) -> pd.DataFrame:
    """Step decontaminate: rows whose prompt matches a held-out text."""
    bad = rows["contaminated"].to_numpy(dtype=bool)
    funnel.step(output, "decontaminate", len(rows), int((~bad).sum()),
                params={"holdout_ngram": HOLDOUT_NGRAM, "decontam_threshold": threshold},
                examples=examples_of(rows[bad], "matches_holdout", text_column, id_column),
                matches_holdout=int(bad.sum()))
    return rows[~bad]


def cap_per(rows: pd.DataFrame, column: str, limit: int) -> pd.DataFrame:
    """Keep the first ``limit`` rows (in the frame's current order) of each value of ``column``."""
    return rows[rows.groupby(column, sort=False).cumcount() < limit]


def capped(rows: pd.DataFrame, output: str, funnel: Funnel, name: str, column: str, limit: int, reason: str,
           text_column: str, id_column: str = "turn_id", params: dict | None = None) -> pd.DataFrame:
    """A step that keeps the first ``limit`` rows of each value of ``column``."""
    keep = (rows.groupby(column, sort=False).cumcount() < limit).to_numpy()
    funnel.step(output, name, len(rows), int(keep.sum()), params=params,
                examples=examples_of(rows[~keep], reason, text_column, id_column), **{reason: int((~keep).sum())})
    return rows[keep]


NO_TOPIC = "(none)"


def topic_of(rows: pd.DataFrame) -> pd.Series:
    return rows["topic"].where(rows["topic"].notna() & (rows["topic"] != ""), NO_TOPIC)


def balance_topics(rows: pd.DataFrame, output: str, funnel: Funnel, ratio: float, text_column: str,
                   id_column: str = "turn_id") -> pd.DataFrame:
    """Step topic_balance: no topic keeps more than ``ratio`` times the rows of the smallest
    topic (turns without a topic form the topic "(none)"); 0 turns it off."""
    topics = topic_of(rows)
    counts = topics.value_counts()
    limit = math.floor(ratio * counts.min()) if ratio and len(counts) else len(rows)
    keep = (rows.groupby(topics, sort=False).cumcount() < limit).to_numpy()
    funnel.step(output, "topic_balance", len(rows), int(keep.sum()),
                params={"topic_balance_ratio": ratio, "per_topic_limit": int(limit),
                        "topics": {str(k): int(v) for k, v in sorted(counts.items())}},
                examples=examples_of(rows[~keep], topics[~keep].map(lambda t: f"topic_over_cap:{t}").tolist(),
                                     text_column, id_column),
                topic_over_cap=int((~keep).sum()))
    return rows[keep]


# ---------------------------------------------------------------------------------------------
# SFT


SOURCE_PRIORITY = {"correction": 0, "feedback": 1}
GOLD_REWARD = 1.0  # the reward a user correction counts with as a training target


def sft_targets(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step reward: one candidate target per turn. A turn with a user correction offers the
    correction *instead of* its answer (source "correction", reward GOLD_REWARD); any other
    turn offers its answer when its reward reaches sft_min_reward (source "feedback")."""
    reward = frame["reward"].to_numpy(dtype=float)
    corrected = (frame["correction_issue"] != "none").to_numpy()
    no_reward = np.isnan(reward) & ~corrected
    low = ~np.isnan(reward) & (reward < cfg.sft_min_reward) & ~corrected
    not_explicit = (~frame["has_explicit"].to_numpy(dtype=bool) & ~corrected & ~no_reward & ~low
                    if cfg.sft_require_explicit else np.zeros(len(frame), dtype=bool))
    skip_corrections = corrected & (not cfg.include_corrections)
    keep = ~(no_reward | low | not_explicit | skip_corrections)
    rows = frame[keep]
    is_corr = corrected[keep]
    rows = rows.assign(
        source=np.where(is_corr, "correction", "feedback"),
        target=np.where(is_corr, rows["correction"].astype(object), rows["response"].astype(object)),
        target_issue=np.where(is_corr, rows["correction_issue"].astype(object), rows["response_issue"].astype(object)),
        reward=np.where(is_corr, GOLD_REWARD, rows["reward"].to_numpy(dtype=float)),
    )
    why = np.select([no_reward, low, not_explicit, skip_corrections],
                    ["no_reward", "low_reward", "no_explicit_feedback", "corrected_answer"], "")
    removed = frame[~keep].assign(_why=why[~keep])
    funnel.step("sft", "reward", len(frame), len(rows),
                params={"sft_min_reward": cfg.sft_min_reward, "sft_require_explicit": cfg.sft_require_explicit,
                        "include_corrections": cfg.include_corrections},
                examples=examples_of(removed, removed["_why"].tolist(), "response"),
                no_reward=int(no_reward.sum()), low_reward=int(low.sum()), no_explicit_feedback=int(not_explicit.sum()),
                corrected_answer=int(skip_corrections.sum()))
    return rows


def quality_params(cfg: CurationConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("min_response_chars", "max_response_chars", "min_avg_sentence_words",
                                         "sentence_rule_scope", "truncation_min_words", "max_repetition",
                                         "boilerplate_phrases")}


def quality_filter(rows: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """Step quality: targets with an issue (see `text_issue`; also echoes_prompt, same_as_answer)."""
    bad = rows["target_issue"].notna().to_numpy()
    removed = rows[bad]
    funnel.step("sft", "quality", len(rows), int((~bad).sum()), params=quality_params(cfg),
                examples=examples_of(removed, removed["target_issue"].tolist(), "target"),
                **removed["target_issue"].value_counts().to_dict())
    return rows[~bad]


def select_sft(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """SFT examples from a `prepare`d frame: one row per example with ``target`` (the text to
    learn), ``source`` (feedback: a well-rewarded answer; correction: the user's correction)
    and ``reward`` (of the target: the turn's reward, or GOLD_REWARD for a correction).
    """
    rows = sft_targets(frame, cfg, funnel)
    rows = quality_filter(rows, cfg, funnel)
    rows = drop_contaminated(rows, "sft", funnel, threshold=cfg.decontam_threshold)

    # best first, so that every cap below keeps the best: corrections, reward, confidence, newest
    rows = rows.assign(_priority=rows["source"].map(SOURCE_PRIORITY), _ts=rows["ts"],
                       _confidence=rows["confidence"].fillna(1.0))
    rows = rows.sort_values(["_priority", "reward", "_confidence", "_ts", "turn_id"],
                            ascending=[True, False, False, False, True], kind="mergesort")
    rows = rows.assign(_exact=[digest(k, t) for k, t in zip(rows["context_key"].tolist(),
                                                             normalize_all(rows["target"].tolist()), strict=True)])
    rows = capped(rows, "sft", funnel, "exact_dedup", "_exact", 1, "exact_duplicate", "target",
                  params={"key": "sha256(normalized context + normalized target)"})
    rows = capped(rows, "sft", funnel, "near_dedup", "cluster", cfg.max_per_prompt, "near_duplicate", "prompt",
                  params={"method": "MinHash LSH over character 5-grams of the context, exact Jaccard verified",
                          "dedup_threshold": cfg.dedup_threshold, "max_per_prompt": cfg.max_per_prompt})
    rows = capped(rows, "sft", funnel, "per_user_cap", "user_id", cfg.max_per_user, "user_over_cap", "target",
                  params={"max_per_user": cfg.max_per_user})
    rows = balance_topics(rows, "sft", funnel, cfg.topic_balance_ratio, "target")
    rows = rows.drop(columns=["_priority", "_ts", "_confidence", "_exact"])
    rows["example_id"] = [digest(t, s) for t, s in zip(rows["turn_id"].tolist(), rows["source"].tolist(), strict=True)]
    return rows.sort_values("example_id").reset_index(drop=True)
