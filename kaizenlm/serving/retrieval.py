"""Retrieval in the chat endpoint: the gateway's view of the `knowledge` index.

The controller publishes the version the `knowledge` alias points at with the routing state
(`RoutingState.knowledge`). `KnowledgeServing.update` loads that index in a background
thread (the first load also loads the embedder, ~10 s) and swaps it in when it is ready, so
requests never wait for a load: until then they are answered without retrieval, as before.

`augment` takes the last user message as the question, finds the top `knowledge.top_k`
chunks at or above `knowledge.min_score`, and replaces that message by
`knowledge.prompt_template` filled with them. Only the backend sees the augmented prompt;
the turn is logged with the messages the user sent and the retrieved doc ids (what the
dashboard shows and curation learns from: the retrain teaches answers to the user's
question; retrieval supplies current facts at serving time).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from kaizenlm.abtest.routing import KnowledgeTarget
from kaizenlm.config import KnowledgeConfig

log = logging.getLogger(__name__)


class KnowledgeServing:
    """The retriever of the current knowledge version (or none), swapped atomically."""

    def __init__(self, kcfg: KnowledgeConfig):
        self.kcfg = kcfg
        self.retriever = None  # kaizenlm.knowledge.retrieval.Retriever of `version_id`
        self.version_id: str | None = None
        self.wanted: str | None = None  # the version the routing asks for (loading or loaded)
        self.error: str | None = None  # why the wanted version could not be loaded
        self._lock = threading.Lock()

    def status(self) -> dict:
        """What /v1/routing reports: the version serving retrieval now and the one asked for."""
        return {"enabled": self.kcfg.chat_retrieval, "serving": self.version_id, "wanted": self.wanted,
                "chunks": self.retriever.size if self.retriever is not None else 0, "error": self.error}

    def update(self, target: KnowledgeTarget | None) -> None:
        """Follow the routing: load `target` in the background, or stop retrieving when None."""
        if not self.kcfg.chat_retrieval:
            return
        with self._lock:
            wanted = target.version_id if target else None
            if wanted == self.wanted:
                return
            self.wanted, self.error = wanted, None
            if target is None:
                self.retriever, self.version_id = None, None
                log.info("knowledge alias gone: chat answers without retrieval")
                return
        threading.Thread(target=self._load, args=(target,), name="knowledge-load", daemon=True).start()

    def _load(self, target: KnowledgeTarget) -> None:
        from kaizenlm.knowledge.retrieval import Retriever

        try:
            retriever = Retriever(target.artifact_dir)
        except Exception as e:  # a damaged or missing artifact: keep serving the previous index
            log.exception("could not load knowledge %s from %s", target.version_id, target.artifact_dir)
            with self._lock:
                if self.wanted == target.version_id:
                    self.error = f"{type(e).__name__}: {e}"
            return
        with self._lock:
            if self.wanted != target.version_id:  # the routing moved on while this one loaded
                return
            self.retriever, self.version_id = retriever, target.version_id
        log.info("chat retrieval now uses knowledge %s (%d chunks)", target.version_id, retriever.size)

    async def augment(self, messages: list[dict]) -> tuple[list[dict], list[str]]:
        """(messages for the backend, retrieved doc ids). Unchanged messages and no ids when
        no index is loaded or the conversation has no user message."""
        retriever = self.retriever
        last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
        if retriever is None or last_user is None:
            return messages, []
        from kaizenlm.knowledge.retrieval import build_prompt, doc_ids_of

        question = messages[last_user]["content"]
        # Embedding the question is CPU work (a few ms): off the event loop.
        hits = await asyncio.to_thread(retriever.search, question, self.kcfg.top_k, self.kcfg.min_score)
        prompt = build_prompt(self.kcfg.prompt_template, question, hits)
        augmented = [*messages[:last_user], {"role": "user", "content": prompt}, *messages[last_user + 1:]]
        return augmented, doc_ids_of(hits)
