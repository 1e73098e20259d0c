"""Agreement statistics against values worked out by hand and a published table."""

from __future__ import annotations

import pytest

from kaizenlm.annotate.agreement import by_item, cohen_kappa, fleiss_kappa, meets, pairwise_cohen, summarize

# The worked example of Fleiss' kappa on Wikipedia ("Fleiss' kappa", Worked example): 10 subjects,
# 14 raters each, 5 categories. Published: P_bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_cohen_two_categories_by_hand():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_three_categories_by_hand():
    a = ["c", "c", "c", "w", "w", "w", "i", "i", "c", "w"]
    b = ["c", "c", "w", "w", "w", "i", "i", "c", "c", "w"]
    # 7 of 10 alike: p_o = 0.7. A: c 4, w 4, i 2; B: c 4, w 4, i 2.
    # p_e = (4*4 + 4*4 + 2*2) / 10^2 = 0.36; kappa = (0.7 - 0.36) / 0.64 = 0.53125
    assert cohen_kappa(a, b) == pytest.approx(0.53125)
    assert cohen_kappa(b, a) == pytest.approx(0.53125)


def test_cohen_edge_cases():
    assert cohen_kappa([], []) is None
    # one category only: observed = expected = 1 -> defined as 1.0 (not 0/0)
    assert cohen_kappa(["ok"] * 5, ["ok"] * 5) == 1.0
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    # systematic disagreement is below chance
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="one label per item"):
        cohen_kappa(["a"], ["a", "b"])


def test_cohen_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")  # a cross-check only; sklearn is no dependency
    a = list("aabbcabcaacb")
    b = list("abbbcaccaacb")
    assert cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b))


def test_fleiss_published_table():
    result = fleiss_kappa(FLEISS_TABLE)
    assert result.kappa == pytest.approx(0.210, abs=5e-4)
    assert result.observed == pytest.approx(0.378, abs=5e-4)
    assert result.expected == pytest.approx(0.213, abs=5e-4)
    assert (result.items_used, result.items_excluded, result.ratings_used) == (10, 0, 140)


def test_fleiss_mapping_form_equals_table_form():
    as_maps = [{cat: n for cat, n in zip("ABCDE", row, strict=True) if n} for row in FLEISS_TABLE]
    assert fleiss_kappa(as_maps).kappa == pytest.approx(fleiss_kappa(FLEISS_TABLE).kappa)


def test_fleiss_variable_number_of_ratings_by_hand():
    # item 1: x x x (P = 1), item 2: x y (P = 0), item 3: y y (P = 1), item 4: x alone (excluded).
    # P_bar = 2/3; pooled shares x 4/7, y 3/7: P_e = 25/49; kappa = (2/3 - 25/49) / (24/49) = 23/72
    result = fleiss_kappa([{"x": 3}, {"x": 1, "y": 1}, {"y": 2}, {"x": 1}])
    assert result.kappa == pytest.approx(23 / 72)
    assert (result.items_used, result.items_excluded, result.ratings_used) == (3, 1, 7)


def test_fleiss_edge_cases():
    empty = fleiss_kappa([])
    assert empty.kappa is None and empty.items_used == 0
    only_singles = fleiss_kappa([{"x": 1}, {"y": 1}])
    assert only_singles.kappa is None and only_singles.items_excluded == 2
    assert fleiss_kappa([{"ok": 3}, {"ok": 2}]).kappa == 1.0  # one category: 1.0 by definition
    assert fleiss_kappa([[2, 0], [0, 2]]).kappa == 1.0
    with pytest.raises(ValueError, match="negative"):
        fleiss_kappa([[2, -1]])


def test_by_item_keeps_the_later_label_of_a_rater():
    items, raters, replaced = by_item([("i1", "ann", "a"), ("i1", "bob", "a"), ("i1", "ann", "b")])
    assert items == {"i1": {"ann": "b", "bob": "a"}} and raters == ["ann", "bob"] and replaced == 1


def test_pairwise_cohen_over_shared_items_only():
    labels = [("i1", "ann", "a"), ("i1", "bob", "a"), ("i2", "ann", "b"), ("i2", "bob", "b"),
              ("i3", "ann", "a"), ("i3", "cat", "b"), ("i4", "bob", "a")]
    items, raters, _ = by_item(labels)
    pairs = pairwise_cohen(items, raters)
    assert [(p["a"], p["b"]) for p in pairs] == [("ann", "bob"), ("ann", "cat"), ("bob", "cat")]
    ann_bob, ann_cat, bob_cat = pairs
    assert ann_bob["kappa"] == 1.0 and ann_bob["items"] == 2 and ann_bob["observed"] == 1.0
    # one shared item, labelled differently: p_o = 0, p_e = 0 -> kappa 0
    assert ann_cat["kappa"] == 0.0 and ann_cat["items"] == 1
    assert bob_cat == {"a": "bob", "b": "cat", "kappa": None, "items": 0, "observed": None}


def test_summarize_reports_what_it_left_out():
    labels = [("i1", 7, "ok"), ("i1", "b@x", "ok"), ("i2", 7, "bad"), ("i2", "b@x", "ok"), ("i3", 7, "bad")]
    s = summarize(labels, min_kappa=0.8)
    assert s["items"] == 3 and s["annotators"] == [7, "b@x"] and s["labels"] == 5
    assert s["items_rated_2plus"] == 2 and s["fleiss"]["items_excluded"] == 1
    assert any("fewer than 2 ratings" in n for n in s["notes"])
    # i1 ok/ok, i2 bad/ok: P_bar = 1/2; shares ok 3/4, bad 1/4: P_e = 10/16; kappa = (8/16 - 10/16)/(6/16) = -1/3
    assert s["fleiss_kappa"] == pytest.approx(-1 / 3)
    assert s["meets_min_kappa"] is False and s["pairs_below_min_kappa"] == [[7, "b@x"]]
    assert s["categories"] == {"bad": 2, "ok": 3}


def test_meets_needs_a_kappa():
    assert meets({"fleiss_kappa": None, "pairwise_cohen_kappa": []}, 0.8) is None
    assert meets({"fleiss_kappa": 0.8, "pairwise_cohen_kappa": []}, 0.8) is True
    assert summarize([])["fleiss_kappa"] is None
