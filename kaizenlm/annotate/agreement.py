"""Inter-rater agreement on nominal labels: Cohen's kappa (two raters), Fleiss' kappa (any number
of raters, a variable number of ratings per item) and Cohen's kappa for every pair of raters.

Pure Python (no numpy import, so `kaizen annotate stats` starts fast). Labels are compared
for equality only (nominal scale: "wrong" is no closer to "incomplete" than to "unsafe").

Cohen's kappa (Cohen 1960) for raters A and B over the N items both labelled:

    p_o = (1/N) * #{items where A and B gave the same label}           observed agreement
    p_e = sum over categories k of (n_Ak / N) * (n_Bk / N)               chance agreement
    kappa = (p_o - p_e) / (1 - p_e)

Fleiss' kappa (Fleiss 1971), for items i = 1..N with n_i >= 2 ratings each, n_ij of them in
category j:

    P_i   = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))     agreeing ordered pairs of ratings of item i
    P_bar = (1/N) * sum_i P_i
    p_j   = sum_i n_ij / sum_i n_i                      share of all ratings in category j
    P_e   = sum_j p_j^2
    kappa = (P_bar - P_e) / (1 - P_e)

With the same n for every item this is exactly Fleiss (1971). With a variable n_i it is the
usual generalisation: each item's agreement uses its own n_i and the category shares pool all
ratings. An item with fewer than 2 ratings has no pair to agree on, so it is excluded (and the
result says how many were).

Edge cases, the same for both: no items (or no shared items) -> None; when chance agreement is
1 (every rating falls in one category) the observed agreement is 1 as well and kappa is
defined as 1.0 instead of 0/0.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

_ONE = 1.0 - 1e-12  # chance agreement at or above this counts as 1 (float sums of shares)


def _kappa(observed: float, expected: float) -> float:
    if expected >= _ONE:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels for the same items, in the same order.

    None when there are no items. Raises ValueError when the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs one label per item from each rater: got {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    return _kappa(observed, expected)


@dataclass(frozen=True)
class FleissResult:
    kappa: float | None
    """Fleiss' kappa over the items with at least 2 ratings; None when there are none."""
    items_used: int
    """Items with at least 2 ratings (the ones the kappa is computed over)."""
    items_excluded: int
    """Items with fewer than 2 ratings, left out (one rating has nothing to agree with)."""
    ratings_used: int
    observed: float | None
    """P_bar: mean agreement over the used items."""
    expected: float | None
    """P_e: chance agreement from the pooled category shares."""

    def as_dict(self) -> dict:
        return {"kappa": self.kappa, "items_used": self.items_used, "items_excluded": self.items_excluded,
                "ratings_used": self.ratings_used, "observed": self.observed, "expected": self.expected}


def fleiss_kappa(items: Iterable[Mapping[Hashable, int] | Sequence[int]]) -> FleissResult:
    """Fleiss' kappa from per-item category counts.

    Each item is either a mapping category -> number of ratings, or a row of counts in fixed
    category order (the textbook table: one row per subject, one column per category); use
    one form for all items. Items with fewer than 2 ratings are excluded and counted in
    `items_excluded`.
    """
    used: list[Counter] = []
    excluded = 0
    for item in items:
        counts = Counter(dict(item) if isinstance(item, Mapping) else dict(enumerate(item)))
        if any(c < 0 for c in counts.values()):
            raise ValueError(f"fleiss_kappa: negative count in {dict(counts)}")
        if counts.total() < 2:
            excluded += 1
        else:
            used.append(counts)
    if not used:
        return FleissResult(None, 0, excluded, 0, None, None)
    totals: Counter = Counter()
    agreement = 0.0
    for counts in used:
        n_i = counts.total()
        totals.update(counts)
        agreement += sum(c * (c - 1) for c in counts.values()) / (n_i * (n_i - 1))
    ratings = totals.total()
    observed = agreement / len(used)
    expected = sum((t / ratings) ** 2 for t in totals.values())
    return FleissResult(_kappa(observed, expected), len(used), excluded, ratings, observed, expected)


def by_item(labels: Iterable[tuple[Hashable, Hashable, Hashable]]) -> tuple[dict, list, int]:
    """(item -> {rater: label}, raters in order of first appearance, duplicates replaced).

    `labels` are (item, rater, label) triples. When a rater labelled an item twice, the
    later triple wins (a reviewer who changed their mind); the count of such replacements
    is returned so a caller can report it.
    """
    items: dict = {}
    raters: dict = {}
    replaced = 0
    for item, rater, label in labels:
        raters.setdefault(rater, None)
        ratings = items.setdefault(item, {})
        replaced += rater in ratings
        ratings[rater] = label
    return items, list(raters), replaced


def pairwise_cohen(items: Mapping[Hashable, Mapping[Hashable, Hashable]],
                   raters: Sequence[Hashable] | None = None) -> list[dict]:
    """Cohen's kappa for every pair of raters over the items both labelled.

    `items` is item -> {rater: label} (see `by_item`). Pairs come in the order of `raters`
    (default: first appearance), a before b. Each entry is {a, b, kappa, items, observed}:
    `items` shared, `observed` the share of them labelled alike; a pair with no shared item
    has kappa and observed None.
    """
    if raters is None:
        raters = list(dict.fromkeys(r for ratings in items.values() for r in ratings))
    out = []
    for a, b in itertools.combinations(raters, 2):
        shared = [(r[a], r[b]) for r in items.values() if a in r and b in r]
        la, lb = [x for x, _ in shared], [y for _, y in shared]
        out.append({"a": a, "b": b, "kappa": cohen_kappa(la, lb), "items": len(shared),
                    "observed": (sum(x == y for x, y in shared) / len(shared)) if shared else None})
    return out


def summarize(labels: Iterable[tuple[Hashable, Hashable, Hashable]], min_kappa: float | None = None) -> dict:
    """Every agreement figure for (item, rater, label) triples, JSON-ready.

    Keys: items (items with at least one label), annotators (first-appearance order), labels
    (ratings counted), categories (label -> count), items_rated_2plus, fleiss_kappa (None when
    no item has 2 ratings), fleiss (the FleissResult as a dict), pairwise_cohen_kappa (list of
    {a, b, kappa, items, observed}), replaced (same rater, same item: the later label kept),
    notes (what was excluded and why), and with min_kappa: meets_min_kappa (Fleiss' kappa >=
    min_kappa; None when there is no kappa to judge) and pairs_below_min_kappa.
    """
    items, raters, replaced = by_item(labels)
    fleiss = fleiss_kappa(Counter(r.values()) for r in items.values())
    pairs = pairwise_cohen(items, raters)
    categories = Counter(label for r in items.values() for label in r.values())
    notes = []
    if fleiss.items_excluded:
        notes.append(f"Fleiss' kappa excludes {fleiss.items_excluded} item(s) with fewer than 2 ratings")
    if fleiss.kappa is None:
        notes.append("no item has 2 or more ratings: agreement cannot be measured")
    if replaced:
        notes.append(f"{replaced} repeated label(s) by the same rater on the same item: the later one counts")
    result = {
        "items": len(items), "annotators": raters, "labels": sum(len(r) for r in items.values()),
        "categories": dict(sorted(categories.items(), key=lambda kv: str(kv[0]))),
        "items_rated_2plus": fleiss.items_used, "fleiss_kappa": fleiss.kappa, "fleiss": fleiss.as_dict(),
        "pairwise_cohen_kappa": pairs, "replaced": replaced, "notes": notes,
    }
    if min_kappa is not None:
        result["min_kappa"] = min_kappa
        result["meets_min_kappa"] = meets(result, min_kappa)
        result["pairs_below_min_kappa"] = [[p["a"], p["b"]] for p in pairs
                                           if p["kappa"] is not None and p["kappa"] < min_kappa]
    return result


def meets(summary: dict, min_kappa: float) -> bool | None:
    """Whether the overall agreement (Fleiss' kappa) is at least min_kappa; None without one.

    The gate is the overall figure, not the worst pair: a pair may share only a handful of
    items, and its kappa swings with one label. Pairs below the threshold are listed by
    `summarize` (pairs_below_min_kappa) so a reviewer who reads the schema differently shows.
    """
    kappa = summary["fleiss_kappa"]
    return None if kappa is None else kappa >= min_kappa
