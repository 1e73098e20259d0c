"""Curation: which logged turns become training data, and why the others do not.

`load_candidates` reads the turns of a window with their rewards. `prepare` cleans them:
PII is scrubbed, answers are checked (length, degenerate repetition, echoing the prompt),
conversation contexts are grouped into near-duplicate clusters (MinHash over character
5-grams, verified by exact Jaccard), and prompts that match held-out texts (evaluation
questions) are marked contaminated. `select_sft` then picks the SFT examples: well-rewarded
answers and user corrections, at most ``max_per_prompt`` per cluster and ``max_per_user``
per user. DPO pairs are built from the same prepared frame in `kaizenlm.feedback.pairs`.

Every step records what it dropped and why in a `Funnel`, which ends up in the snapshot
manifest and in `kaizen dataset build`'s output.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pandas as pd

from kaizenlm.config import CurationConfig, RewardsConfig
from kaizenlm.feedback.rewards import Window, reward_frame

# ---------------------------------------------------------------------------------------------
# Text helpers


_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Comparison form of a text: NFKC, case-folded, punctuation and runs of space collapsed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def normalize_all(texts: Sequence[str]) -> list[str]:
    """`normalize` of each text, computing each distinct text once (logs repeat texts a lot)."""
    cache: dict[str, str] = {}
    out = []
    for t in texts:
        n = cache.get(t)
        if n is None:
            n = cache[t] = normalize(t)
        out.append(n)
    return out


def digest(*parts: str, size: int = 16) -> str:
    """A short, stable hex id of some strings."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:size]


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# (placeholder, pattern, extra check on the match, cheap gate on the whole text). Order matters:
# secrets and cards before phones. A pattern runs only on texts that pass its gate.
_HAS_DIGIT = re.compile(r"\d")


def _digits(text: str) -> bool:
    return _HAS_DIGIT.search(text) is not None


_PII: list[tuple[str, re.Pattern, object, object]] = [
    ("SECRET", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
        r"|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
        r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
        r"|\b[Bb]earer\s+[A-Za-z0-9\-._~+/]{20,}=*"), None, None),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"),
     None, lambda t: "@" in t),
    ("CARD", re.compile(r"(?<![\w.])\d(?:[ \-]?\d){12,18}(?!\.?\w)"),
     lambda m: _luhn_ok(re.sub(r"\D", "", m.group())), _digits),
    ("IP", re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\w)"),
     None, _digits),
    ("PHONE", re.compile(r"(?<![\w.+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?)?\d{2,4}(?:[ .\-]\d{2,4}){1,4}(?!\.?\w)"),
     lambda m: 9 <= sum(ch.isdigit() for ch in m.group()) <= 15, _digits),
]
PII_KINDS = tuple(entry[0] for entry in _PII)


def scrub_pii(text: str, counts: dict[str, int] | None = None) -> str:
    """Replace PII (e-mail, phone, card numbers, IP addresses, keys and tokens) by ``[KIND]``.

    ``counts`` (kind -> replacements) is updated in place when given.
    """
    if not text:
        return text
    for kind, pattern, check, gate in _PII:
        if gate is not None and not gate(text):
            continue

        def repl(m: re.Match, kind: str = kind, check=check) -> str:
            if check is not None and not check(m):
                return m.group()
            if counts is not None:
                counts[kind] = counts.get(kind, 0) + 1
            return f"[{kind}]"

        text = pattern.sub(repl, text)
    return text


def repetition(text: str, normalized: str | None = None) -> float:
    """Share of repeated word 3-grams (0 for varied text, near 1 for a looping answer).

    Texts under 12 words count as 0: too short to judge. ``normalized`` saves normalizing again.
    """
    words = (normalize(text) if normalized is None else normalized).split()
    if len(words) < 12:
        return 0.0
    grams = list(zip(words, words[1:], words[2:], strict=False))
    return 1.0 - len(set(grams)) / len(grams)


def text_issue(text: str | None, cfg: CurationConfig, normalized: str | None = None) -> str | None:
    """Why a text cannot be a training target (None when it can)."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    n = len(text.strip())
    if n < cfg.min_response_chars:
        return "too_short"
    if n > cfg.max_response_chars:
        return "too_long"
    if repetition(text, normalized) > cfg.max_repetition:
        return "repetitive"
    return None


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


def minhash(hashes: np.ndarray, starts: np.ndarray, num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """MinHash signatures (n_texts x num_perm, uint64) from `shingle_hashes` output.

    The shingle hashes are already well mixed, so each permutation is the bijection
    a * h + b (mod 2**64) with odd a, computed in place.
    """
    n = len(starts) - 1
    sig = np.empty((n, num_perm), dtype=np.uint64)
    if n == 0:
        return sig
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    buf = np.empty_like(hashes)
    with np.errstate(over="ignore"):
        for p in range(num_perm):
            np.multiply(hashes, a[p], out=buf)
            np.add(buf, b[p], out=buf)
            sig[:, p] = np.minimum.reduceat(buf, starts[:-1])
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

    def _set(self, i: int) -> set:
        s = self._sets.get(i)
        if s is None:
            s = self._sets[i] = set(self.hashes[self.starts[i]:self.starts[i + 1]].tolist())
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
    """Bool per (normalized) query: Jaccard >= threshold with at least one (normalized) target."""
    hit = np.zeros(len(queries), dtype=bool)
    if not len(queries) or not len(targets):
        return hit
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
    norm_prompts = normalize_all(prompts)
    norm_holdout = sorted({normalize(h) for h in holdout} - {""})
    grams: set[str] = set()
    short_lengths: set[int] = set()
    for h in norm_holdout:
        grams |= _word_ngrams(h)
        if len(h.split()) < HOLDOUT_NGRAM:
            short_lengths.add(len(h.split()))
    unique = sorted(set(norm_prompts))
    tainted = set()
    for p in unique:
        words = p.split()
        if any(g in grams for g in _word_ngrams(p)) or any(  # a short held-out text inside a longer prompt
                " ".join(words[j:j + n]) in grams for n in short_lengths for j in range(len(words) - n + 1)):
            tainted.add(p)
    if near:
        rest = [p for p in unique if p not in tainted]
        tainted.update(p for p, m in zip(rest, near_matches(rest, norm_holdout, threshold), strict=True) if m)
    return np.fromiter((p in tainted for p in norm_prompts), dtype=bool, count=len(norm_prompts))


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


@dataclass
class Funnel:
    """What each curation step kept and dropped, per output (sft, dpo), with reasons."""

    steps: dict[str, list[dict]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def step(self, output: str, name: str, before: int, after: int, **reasons: int) -> None:
        entry: dict = {"step": name, "in": int(before), "out": int(after)}
        reasons = {k: int(v) for k, v in reasons.items() if v}
        if reasons:
            entry["dropped"] = reasons
        self.steps.setdefault(output, []).append(entry)

    def to_json(self) -> dict:
        return {"steps": self.steps, **self.notes}


# ---------------------------------------------------------------------------------------------
# Candidates


def load_candidates(con: duckdb.DuckDBPyConnection, window: Window, weights: RewardsConfig) -> pd.DataFrame:
    """Turns of the window (one row per turn_id) with their reward features, sorted by turn_id.

    ``messages`` holds the parsed message list (the context the answer was given in).
    """
    cond, params = window.turns("t")
    turns = con.execute(
        f"""SELECT t.turn_id, t.conversation_id, t.user_id, t.ts, t.model_version, t.messages, t.response
            FROM turns t WHERE {cond}
            QUALIFY row_number() OVER (PARTITION BY t.turn_id ORDER BY t.ts, t.event_id) = 1
            ORDER BY t.turn_id""",
        params,
    ).df()
    rewards = reward_frame(con, window, weights)
    frame = turns.merge(rewards, on="turn_id", how="left", validate="one_to_one")
    frame["messages"] = [orjson.loads(m) for m in frame["messages"].tolist()]
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


def _memo_scrub(counts: dict[str, int]):
    """scrub_pii with a per-call cache that still counts every occurrence into ``counts``."""
    cache: dict[str, tuple[str, dict[str, int]]] = {}

    def scrub(text: str) -> str:
        hit = cache.get(text)
        if hit is None:
            found: dict[str, int] = {}
            hit = cache[text] = (scrub_pii(text, found), found)
        for kind, n in hit[1].items():
            counts[kind] = counts.get(kind, 0) + n
        return hit[0]

    return scrub


def prepare(frame: pd.DataFrame, cfg: CurationConfig, holdout: Sequence[str], funnel: Funnel) -> pd.DataFrame:
    """Scrub, check and cluster candidate turns (returns a new frame; drops nothing but turns
    with an empty or too-long context). Added columns:

    prompt, context_key, cluster, response_issue, correction_issue, contaminated.
    """
    frame = frame.copy()
    pii: dict[str, int] = {}
    if cfg.scrub_pii:
        scrub = _memo_scrub(pii)  # logs repeat texts (system prompts, popular questions): scrub each once
        frame["messages"] = [[{**m, "content": scrub(m.get("content", ""))} for m in msgs]
                             for msgs in frame["messages"].tolist()]
        frame["response"] = [scrub(r) for r in frame["response"].tolist()]
        frame["correction"] = [scrub(c) if isinstance(c, str) else None for c in frame["correction"].tolist()]
    funnel.notes["pii_replaced"] = {k: pii.get(k, 0) for k in PII_KINDS}

    contexts = [_context_text(msgs) for msgs in frame["messages"].tolist()]
    lengths = np.fromiter((len(c) for c in contexts), dtype=np.int64, count=len(contexts))
    empty = np.fromiter((not c.strip() for c in contexts), dtype=bool, count=len(contexts))
    too_long = lengths > cfg.max_context_chars
    keep = ~(empty | too_long)
    funnel.step("candidates", "context", len(frame), int(keep.sum()),
                empty_context=int(empty.sum()), context_too_long=int((too_long & ~empty).sum()))
    frame = frame[keep].reset_index(drop=True)
    contexts = [c for c, k in zip(contexts, keep, strict=True) if k]

    norm_contexts = normalize_all(contexts)
    frame["context_key"] = [digest(c) for c in norm_contexts]
    frame["cluster"] = cluster_labels(frame["context_key"].tolist(), norm_contexts, cfg.dedup_threshold)
    frame["prompt"] = [_last_user(msgs) for msgs in frame["messages"].tolist()]

    responses, corrections = frame["response"].tolist(), frame["correction"].tolist()
    norm_prompts = normalize_all(frame["prompt"].tolist())
    norm_responses = normalize_all(responses)
    issues = []
    for response, norm_response, norm_prompt in zip(responses, norm_responses, norm_prompts, strict=True):
        issue = text_issue(response, cfg, norm_response)
        if issue is None and norm_response == norm_prompt:
            issue = "echoes_prompt"
        issues.append(issue)
    frame["response_issue"] = issues
    corr_issues = []
    for correction, norm_response in zip(corrections, norm_responses, strict=True):
        if not isinstance(correction, str):  # no correction (None or NaN, as pandas stores it)
            corr_issues.append("none")
            continue
        norm_correction = normalize(correction)
        issue = text_issue(correction, cfg, norm_correction)
        if issue is None and norm_correction == norm_response:
            issue = "same_as_answer"
        corr_issues.append(issue)
    frame["correction_issue"] = corr_issues
    frame["contaminated"] = contaminated(frame["prompt"].tolist(), holdout, cfg.decontam_threshold)
    funnel.notes["contaminated_turns"] = int(frame["contaminated"].sum())
    return frame


def drop_contaminated(rows: pd.DataFrame, output: str, funnel: Funnel) -> pd.DataFrame:
    kept = rows[~rows["contaminated"].to_numpy(dtype=bool)]
    funnel.step(output, "decontaminate", len(rows), len(kept), matches_holdout=len(rows) - len(kept))
    return kept


def cap_per(rows: pd.DataFrame, column: str, limit: int) -> pd.DataFrame:
    """Keep the first ``limit`` rows (in the frame's current order) of each value of ``column``."""
    return rows[rows.groupby(column, sort=False).cumcount() < limit]


SOURCE_PRIORITY = {"correction": 0, "feedback": 1}
GOLD_REWARD = 1.0  # the reward a user correction counts with as a training target


def select_sft(frame: pd.DataFrame, cfg: CurationConfig, funnel: Funnel) -> pd.DataFrame:
    """SFT examples from a `prepare`d frame: one row per example with ``target`` (the text to
    learn), ``source`` (feedback: a well-rewarded answer; correction: the user's correction)
    and ``reward`` (of the target: the turn's reward, or GOLD_REWARD for a correction).
    """
    n = len(frame)
    rewarded = frame["reward"].to_numpy(dtype=float) >= cfg.sft_min_reward
    if cfg.sft_require_explicit:
        rewarded &= frame["has_explicit"].to_numpy(dtype=bool)
    ok = frame["response_issue"].isna().to_numpy()
    answers = frame[rewarded & ok].assign(source="feedback", target=lambda f: f["response"])
    issues = frame.loc[rewarded & ~ok, "response_issue"].value_counts().to_dict()
    funnel.step("sft", "answers", n, len(answers), low_reward=int((~rewarded).sum()), **issues)

    corrections = frame.iloc[0:0].assign(source=pd.Series(dtype=str), target=pd.Series(dtype=str))
    if cfg.include_corrections:
        has = frame["correction_issue"] != "none"
        good = frame["correction_issue"].isna()
        corrections = frame[good].assign(source="correction", target=lambda f: f["correction"], reward=GOLD_REWARD)
        bad = frame.loc[has & ~good, "correction_issue"].value_counts().to_dict()
        funnel.step("sft", "corrections", int(has.sum()), len(corrections), **bad)

    rows = pd.concat([corrections, answers], ignore_index=True)
    rows = drop_contaminated(rows, "sft", funnel)

    rows = rows.assign(_priority=rows["source"].map(SOURCE_PRIORITY), _ts=rows["ts"])
    rows = rows.sort_values(["_priority", "reward", "_ts", "turn_id"], ascending=[True, False, False, True],
                            kind="mergesort")
    before = len(rows)
    rows = cap_per(rows, "cluster", cfg.max_per_prompt)
    funnel.step("sft", "deduplicate", before, len(rows), near_duplicate=before - len(rows))
    before = len(rows)
    rows = cap_per(rows, "user_id", cfg.max_per_user)
    funnel.step("sft", "per_user_cap", before, len(rows), user_over_cap=before - len(rows))
    rows = rows.drop(columns=["_priority", "_ts"])
    rows["example_id"] = [digest(t, s) for t, s in zip(rows["turn_id"].tolist(), rows["source"].tolist(), strict=True)]
    return rows.sort_values("example_id").reset_index(drop=True)

