"""Near-duplicate detection: MinHash LSH over character 5-grams, candidates verified by exact Jaccard.

`near_duplicate_groups` groups (normalized) texts whose 5-gram sets have Jaccard >= a
threshold; `cluster_labels` turns the groups into stable labels; `near_matches` says which
queries are near-duplicates of some target (decontamination, kaizenlm/datasets/decontam.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
