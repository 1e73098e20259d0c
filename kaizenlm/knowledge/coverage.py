"""How well the knowledge base covers what users ask, and how well retrieval ranks.

coverage: the share of questions whose best-matching chunk clears a similarity threshold,
plus the uncovered questions grouped into clusters of similar questions, largest first,
so people know which documents to write next.
recall_at_k: on labeled (question, doc_id) pairs, the share whose document is among the
first k distinct documents retrieved.
"""

from __future__ import annotations

import random

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from kaizenlm.knowledge.retrieval import Retriever, doc_ids_of

CLUSTER_MAX_DISTANCE = 0.5  # cosine distance (1 - similarity) inside one cluster, average linkage
CLUSTER_SAMPLE = 2000  # hierarchical clustering is O(n^2) memory; larger sets are clustered on a sample
EXAMPLES_PER_CLUSTER = 5


def coverage(retriever: Retriever, questions: list[str], threshold: float, max_clusters: int = 10) -> dict:
    """{share_covered, n, n_covered, threshold, uncovered_clusters: [{size, examples, nearest_doc_id,
    nearest_score}]} over `questions` (repeats count: this is a share of traffic)."""
    if not questions:
        return {"share_covered": None, "n": 0, "n_covered": 0, "threshold": threshold, "uncovered_clusters": []}
    distinct = list(dict.fromkeys(questions))
    vectors = retriever.embed(distinct)
    best = retriever.search_vectors(vectors, k=1)
    best_score = {q: (hits[0].score if hits else -1.0) for q, hits in zip(distinct, best, strict=True)}
    n_covered = sum(best_score[q] >= threshold for q in questions)
    uncovered = [i for i, q in enumerate(distinct) if best_score[q] < threshold]
    weight = {q: 0 for q in distinct}
    for q in questions:
        weight[q] += 1
    clusters = cluster_questions(
        [distinct[i] for i in uncovered], vectors[uncovered], [weight[distinct[i]] for i in uncovered], max_clusters
    )
    for c in clusters:
        hits = retriever.search(c["examples"][0], k=1)
        c["nearest_doc_id"] = hits[0].doc_id if hits else None
        c["nearest_score"] = round(hits[0].score, 4) if hits else None
    return {"share_covered": n_covered / len(questions), "n": len(questions), "n_covered": n_covered,
            "threshold": threshold, "uncovered_clusters": clusters}


def cluster_questions(questions: list[str], vectors: np.ndarray, weights: list[int], max_clusters: int) -> list[dict]:
    """Groups of similar questions, largest first: [{size, examples}].

    Average-linkage clustering on cosine distance with a fixed distance cut, so the number
    of clusters follows the data. Above CLUSTER_SAMPLE questions a seeded sample is
    clustered and every question joins the cluster with the nearest centroid. A cluster's
    size counts repeats (weights); examples are the questions nearest its centroid.
    """
    if not questions:
        return []
    n = len(questions)
    if n == 1:
        labels = np.zeros(1, dtype=int)
    else:
        sample = sorted(random.Random(0).sample(range(n), CLUSTER_SAMPLE)) if n > CLUSTER_SAMPLE else list(range(n))
        tree = linkage(vectors[sample].astype(np.float64), method="average", metric="cosine")
        sample_labels = fcluster(tree, t=CLUSTER_MAX_DISTANCE, criterion="distance") - 1
        centroids = np.stack([vectors[sample][sample_labels == c].mean(axis=0) for c in range(sample_labels.max() + 1)])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        labels = np.argmax(vectors @ centroids.T, axis=1) if n > CLUSTER_SAMPLE else sample_labels
    weights_arr = np.asarray(weights)
    clusters = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        centroid = vectors[members].mean(axis=0)
        nearest = members[np.argsort(-(vectors[members] @ centroid), kind="stable")][:EXAMPLES_PER_CLUSTER]
        clusters.append({"size": int(weights_arr[members].sum()), "examples": [questions[i] for i in nearest]})
    clusters.sort(key=lambda c: (-c["size"], c["examples"][0]))
    return clusters[:max_clusters]


def recall_at_k(retriever: Retriever, labeled: list[tuple[str, str]], k: int = 5) -> float | None:
    """Share of (question, doc_id) pairs whose doc_id is among the first k distinct documents retrieved."""
    if not labeled:
        return None
    # Several chunks of one document can rank together; fetch more chunks than k documents.
    results = retriever.search_many([q for q, _ in labeled], k=k * 4)
    found = sum(doc_id in doc_ids_of(hits)[:k] for (_, doc_id), hits in zip(labeled, results, strict=True))
    return found / len(labeled)
