"""Serving side of the knowledge index: search a knowledge artifact and build the prompt.

The gateway holds one `Retriever` per served knowledge version and swaps it when the
`knowledge` alias moves; a swap reuses the process's embedder (`load_embedder`), so only
the index and the chunk table are read again. `search` is safe to call from many threads:
embedding is serialized by the embedder's lock, FAISS searches a read-only index.
Embedding the query costs far more than searching the index (docs/KNOWLEDGE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from kaizenlm.knowledge.embed import Embedder, load_embedder
from kaizenlm.knowledge.index import INDEX_FILE, INDEX_HNSW, read_chunks, read_manifest

NO_CONTEXT = "(no relevant documents found)"


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    score: float  # cosine similarity, -1..1
    text: str


class Retriever:
    """Top-k chunks of one knowledge artifact directory for a question."""

    def __init__(self, artifact_dir: str | Path, embedder: Embedder | None = None):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        self.embedder = embedder or load_embedder()
        if self.manifest["embed_model"] != self.embedder.model_name:
            raise ValueError(
                f"knowledge index {self.artifact_dir} was built with {self.manifest['embed_model']}, "
                f"but this process embeds with {self.embedder.model_name}; run `kaizen knowledge refresh`"
            )
        self.index = faiss.read_index(str(self.artifact_dir / INDEX_FILE))
        table = read_chunks(self.artifact_dir)
        self.chunk_ids: list[str] = table.column("chunk_id").to_pylist()
        self.doc_ids: list[str] = table.column("doc_id").to_pylist()
        self.texts: list[str] = table.column("text").to_pylist()
        if self.index.ntotal != len(self.chunk_ids):
            raise ValueError(f"knowledge index {self.artifact_dir} is damaged: "
                             f"{self.index.ntotal} vectors for {len(self.chunk_ids)} chunks")
        self.search_params = self._params_for(self.manifest["index"])

    @staticmethod
    def _params_for(index_info: dict) -> faiss.SearchParameters | None:
        # Per-call parameters instead of mutating the shared index: safe across threads.
        if index_info["type"] == INDEX_HNSW:
            return faiss.SearchParametersHNSW(efSearch=int(index_info["params"]["efSearch"]))
        return None

    @property
    def size(self) -> int:
        return len(self.chunk_ids)

    def embed(self, questions: list[str]) -> np.ndarray:
        return self.embedder.encode(questions) if len(questions) != 1 else self.embedder.encode_one(questions[0])

    def search_vectors(self, vectors: np.ndarray, k: int, min_score: float = -1.0) -> list[list[Hit]]:
        """Hits for already embedded questions (rows of `vectors`), best first."""
        k = min(k, self.size)
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        scores, rows = self.index.search(vectors, k, params=self.search_params)
        return [
            [Hit(self.chunk_ids[r], self.doc_ids[r], float(s), self.texts[r])
             for s, r in zip(score_row, row, strict=True) if r >= 0 and s >= min_score]
            for score_row, row in zip(scores, rows, strict=True)
        ]

    def search(self, query: str, k: int, min_score: float = -1.0) -> list[Hit]:
        """The k chunks most similar to `query` whose cosine similarity is at least `min_score`."""
        return self.search_vectors(self.embed([query]), k, min_score)[0]

    def search_many(self, queries: list[str], k: int, min_score: float = -1.0) -> list[list[Hit]]:
        """`search` for many queries, embedded in batches (coverage, evaluation)."""
        return self.search_vectors(self.embed(queries), k, min_score)


def doc_ids_of(hits: list[Hit]) -> list[str]:
    """Distinct doc ids in rank order: what the gateway logs as a turn's retrieved_doc_ids."""
    return list(dict.fromkeys(h.doc_id for h in hits))


def format_context(hits: list[Hit]) -> str:
    return "\n".join(f"[{h.doc_id}] {h.text}" for h in hits) if hits else NO_CONTEXT


def build_prompt(template: str, question: str, hits: list[Hit]) -> str:
    """The template (knowledge.prompt_template) with {context} and {question} filled in.
    Braces in the question or the chunks are kept as they are (values are not re-parsed)."""
    return template.format(context=format_context(hits), question=question)
