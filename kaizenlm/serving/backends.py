"""Model backends of the gateway: what both answer with, and `local` (transformers + peft in
process); `openai` (any OpenAI-compatible upstream, e.g. vLLM serving LoRA modules) lives in
kaizenlm.serving.openai_backend.

Both answer `complete(target, messages, params) -> Completion` and
`stream(target, messages, params) -> async iterator of Chunk`; a failure is a
`BackendError` carrying the HTTP status the gateway answers with (400, 502, 503 or 504)
and a message that says what went wrong and what to check.

A version's `Target` comes from the registry (kaizenlm.abtest.routing.target_for):
a `base` version is served by its own directory; an `adapter` version by its adapter
directory on top of the base its parent chain leads to. The openai backend sends the
version id as the upstream model name unless the version's config sets `upstream_model`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kaizenlm.abtest.routing import Target
from kaizenlm.base.generate import greedy_tokens, padded_generate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatParams:
    max_tokens: int | None = None  # None: the backend's default (serving.max_new_tokens)
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Chunk:
    """One piece of a streamed answer; the last one carries finish_reason (and usage when known)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class BackendError(Exception):
    def __init__(self, status: int, message: str, code: str = "backend_error", retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


# --------------------------------------------------------------------------------------
# Targets from the registry
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# local: transformers + peft, several adapters over one base in memory
# --------------------------------------------------------------------------------------


class LocalBackend:
    """One base model in memory with any number of named LoRA adapters on it.

    Each request picks its adapter (`set_adapter`) or none (`disable_adapter()`); the
    active adapter is state of the shared model, so choosing it and generating happen under
    one lock. Requests that arrive while the model is busy, or within BATCH_WINDOW_S of each
    other, are answered together: whoever takes the lock next generates for every waiting
    request with the same adapter and sampling settings in one left-padded batch (on 2 CPU
    cores, 8 answers in a batch cost about twice one answer). Seeded or stop-string requests
    and streams run one at a time. (For real concurrency, serve through vLLM with the openai
    backend.)
    """

    MAX_BATCH = 16
    # How long a batch waits for more requests before it starts: without it, the first of a
    # burst is answered alone while the rest wait a whole generation for the next batch
    # (measured in the demo: batches alternated between ~2 and ~13 answers). 20 ms against an
    # answer's ~1 s on 2 CPU cores.
    BATCH_WINDOW_S = 0.02

    def __init__(self, base_dir: str | Path, device: str = "auto", threads: int | None = None,
                 default_max_tokens: int = 128, precision: str = "fp32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kaizenlm.base.model import contiguous_head_input, inference_dtype

        if threads:
            torch.set_num_threads(threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = inference_dtype(precision, self.device)
        self.base_dir = str(base_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype="float32")
        self.model = contiguous_head_input(model.to(self.device, self.dtype).eval())
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.default_max_tokens = default_max_tokens
        self.adapters: dict[str, str] = {}
        self.lock = threading.Lock()
        self.pending: list[_Pending] = []  # greedy requests waiting for the model (guarded by pending_lock)
        self.pending_lock = threading.Lock()
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def merged_copy(self, adapter_dir: str) -> LocalBackend:
        """A new backend whose model is a copy of this base with the adapter merged into its
        weights: it answers like base + adapter at the base's speed (no LoRA layers left)."""
        import copy

        from peft import PeftModel

        from kaizenlm.base.model import contiguous_head_input

        with self.lock:  # the base model must not be mid-generation while it is copied
            if self.adapters:
                raise ValueError("cannot merge into a base that already serves unmerged adapters")
            model = copy.deepcopy(self.model).float()  # merged in fp32: a LoRA update added in bf16 rounds away
        merged = copy.copy(self)
        merged.model = contiguous_head_input(PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
                                             .to(self.dtype).eval())
        merged.adapters, merged.lock = {}, threading.Lock()
        merged.pending, merged.pending_lock = [], threading.Lock()
        return merged

    # -- adapters ----------------------------------------------------------------------
    def ensure_adapter(self, name: str, adapter_dir: str) -> None:
        """Load the adapter under `name` once (later calls are no-ops)."""
        if name in self.adapters:
            return
        with self.lock:
            if name in self.adapters:
                return
            from peft import PeftModel

            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name).eval()
            else:
                self.model.load_adapter(adapter_dir, adapter_name=name)
            self.model.eval()
            self.adapters[name] = adapter_dir
            log.info("loaded adapter %s from %s", name, adapter_dir)

    def _select(self, adapter: str | None):
        """Context manager that makes `adapter` (or the bare base) active; call under the lock."""
        import contextlib

        if not self.adapters:  # a plain model: only the base can be asked for
            if adapter is not None:
                raise BackendError(503, f"adapter '{adapter}' is not loaded", "adapter_not_loaded")
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    # -- generation --------------------------------------------------------------------
    def _inputs(self, messages: list[dict], params: ChatParams) -> tuple[dict, int]:
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
        else:  # a model without a chat template: plain "role: content" lines
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            ids = self.tokenizer(text)["input_ids"]
        want = params.max_tokens or self.default_max_tokens
        if self.context is not None:
            room = self.context - len(ids)
            if room < 1:
                raise BackendError(400, f"the prompt is {len(ids)} tokens; this model reads at most {self.context} "
                                   "(shorten the conversation)", "context_length_exceeded")
            want = min(want, room)
        import torch

        input_ids = torch.tensor([ids], device=self.device)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "max_new_tokens": want,
                  "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs["stopping_criteria"] = [_StopOnText(self.tokenizer, len(ids), params.stop)]
        return kwargs, want

    def _seed(self, params: ChatParams) -> None:
        if params.seed is not None and params.temperature > 0:
            import torch

            torch.manual_seed(params.seed)  # under the lock, so no other request shares the generator

    def generate(self, messages: list[dict], adapter: str | None, params: ChatParams) -> Completion:
        """Blocking: one completion with `adapter` (None = the base); concurrent requests are batched."""
        if params.stop or params.seed is not None:  # per-request stop criteria or random generator
            return self._generate_one(messages, adapter, params)
        kwargs, want = self._inputs(messages, params)
        request = _Pending(kwargs["input_ids"][0].tolist(), want, (adapter, params.temperature, params.top_p))
        with self.pending_lock:
            self.pending.append(request)
        while not request.done.is_set():
            if self.lock.acquire(timeout=0.05):
                try:
                    if not request.done.is_set() and len(self.pending) < self.MAX_BATCH:
                        time.sleep(self.BATCH_WINDOW_S)  # requests sent together join this batch
                    self._serve_pending(request.key)
                finally:
                    self.lock.release()
        if request.error is not None:
            raise request.error
        return request.result

    def _serve_pending(self, key: tuple) -> None:
        """Under the lock: answer waiting requests with the same (adapter, temperature, top_p) as
        `key`, up to MAX_BATCH, in one batch."""
        import torch

        adapter, temperature, top_p = key
        with self.pending_lock:
            batch = [r for r in self.pending if r.key == key and not r.done.is_set()][: self.MAX_BATCH]
            for r in batch:
                self.pending.remove(r)
        if not batch:
            return
        try:
            with torch.inference_mode(), self._select(adapter):
                rows = self._batch_tokens(batch, temperature, top_p)
            for row, r in zip(rows, batch, strict=True):
                r.result = self._completion(row, r.want, len(r.ids))
        except Exception as e:  # every request of the batch gets the error
            for r in batch:
                r.error = e
        for r in batch:
            r.done.set()

    def _batch_tokens(self, batch: list[_Pending], temperature: float, top_p: float) -> list[list[int]]:
        """The new tokens of each request. Greedy batches run kaizenlm's own loop: the system
        prompt the requests share runs once and an answer that ended leaves the batch (same tokens
        as `generate`); sampled ones run `generate` on the left-padded batch."""
        eos, pad, most = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, max(r.want for r in batch)
        if temperature <= 0:
            return greedy_tokens(self.model, [r.ids for r in batch], most, eos, pad)
        return padded_generate(self.model, [r.ids for r in batch], most, eos, pad, do_sample=True,
                               temperature=temperature, top_p=top_p)

    def _completion(self, new: list[int], want: int, n_prompt: int) -> Completion:
        """The answer of one row of a batch: cut at its own token budget and at the first EOS."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        new = new[:want]
        if eos in new:
            new = new[: new.index(eos) + 1]
        elif pad != eos:
            new = [t for t in new if t != pad]
        ended = bool(new) and new[-1] == eos
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text, "length" if len(new) >= want and not ended else "stop", n_prompt, len(new))

    def _generate_one(self, messages: list[dict], adapter: str | None, params: ChatParams) -> Completion:
        import torch

        kwargs, want = self._inputs(messages, params)
        n_prompt = kwargs["input_ids"].shape[1]
        with self.lock, torch.inference_mode():
            self._seed(params)
            with self._select(adapter):
                out = self.model.generate(**kwargs)
        new = out[0, n_prompt:].tolist()
        text = _cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), params.stop)
        ended = bool(new) and new[-1] == self.tokenizer.eos_token_id
        finish = "length" if len(new) >= want and not ended else "stop"
        return Completion(text, finish, n_prompt, len(new))

    def stream(self, messages: list[dict], adapter: str | None, params: ChatParams) -> Iterator[Chunk]:
        """Blocking iterator of chunks; generation runs in a thread and stops when the consumer
        goes away (closing the iterator sets a stop flag checked after every token)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        kwargs, want = self._inputs(messages, params)
        n_prompt = kwargs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        cancelled = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return cancelled.is_set()

        result: dict = {}

        def run() -> None:
            try:
                with self.lock, torch.inference_mode():
                    self._seed(params)
                    with self._select(adapter):
                        stops = StoppingCriteriaList([*kwargs.pop("stopping_criteria", []), _Cancel()])
                        out = self.model.generate(**kwargs, streamer=streamer, stopping_criteria=stops)
                result["new"] = out[0, n_prompt:].tolist()
            except Exception as e:  # surfaced to the consumer below
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=run, name="local-generate", daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                if not piece:
                    continue
                cut = _cut_at_stop(text + piece, params.stop)
                if len(cut) < len(text + piece):  # a stop string appeared: emit up to it and finish
                    if len(cut) > len(text):
                        yield Chunk(cut[len(text):])
                    cancelled.set()
                    text = cut
                    break
                text += piece
                yield Chunk(piece)
        finally:
            cancelled.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        new = result.get("new", [])
        ended = bool(new) and new[-1] == self.tokenizer.eos_token_id
        finish = "length" if len(new) >= want and not ended else "stop"
        yield Chunk("", finish, n_prompt, len(new))


@dataclass
class _Pending:
    """A request waiting for a batch: its prompt ids, token budget and (adapter, temperature, top_p)."""

    ids: list[int]
    want: int
    key: tuple
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: Exception | None = None


class _StopOnText:
    """Stop once the *answer* contains a stop string (transformers' own stop_strings also
    match across the prompt's end, which OpenAI's `stop` does not)."""

    def __init__(self, tokenizer, n_prompt: int, stop: tuple[str, ...]):
        self.tokenizer, self.n_prompt, self.stop = tokenizer, n_prompt, stop

    def __call__(self, input_ids, scores, **_):
        import torch

        text = self.tokenizer.decode(input_ids[0, self.n_prompt:], skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop if s)], device=input_ids.device)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


class LocalServing:
    """The local backend for every target: one LocalBackend per base directory (loaded on
    first use, or ahead of time by `warm`). An adapter version is either merged into its own
    copy of the base (bases up to `merge_max_params`: every A/B arm then costs the same per
    token, so the latency guardrail compares models, not LoRA overhead) or loaded unmerged
    into the shared base by version id (large bases: one copy in memory)."""

    def __init__(self, device: str = "auto", threads: int | None = None, default_max_tokens: int = 128,
                 merge_max_params: int = 1_000_000_000, precision: str = "fp32"):
        self.device, self.threads, self.default_max_tokens = device, threads, default_max_tokens
        self.merge_max_params, self.precision = merge_max_params, precision
        self.bases: dict[str, LocalBackend] = {}
        self.merged: dict[tuple[str, str], LocalBackend] = {}
        self._lock = threading.Lock()
        # Each waiting request holds a thread until its batch is done. asyncio's default pool has
        # cpu_count + 4 threads (6 on 2 cores), which would cap a batch at ~5 answers; this one
        # lets two full batches (an A/B test's two arms) wait at once.
        self.pool = ThreadPoolExecutor(max_workers=2 * LocalBackend.MAX_BATCH + 4, thread_name_prefix="local-generate")

    def backend_for(self, target: Target) -> tuple[LocalBackend, str | None]:
        """(the base's backend with the adapter loaded, adapter name or None); blocking."""
        if not target.model_dir:
            raise BackendError(503, f"version '{target.version_id}' has no base model directory on this machine "
                               "(its parent chain leads to no base version with a config.json)", "no_model_dir")
        if target.kind == "adapter" and not target.adapter_dir:
            raise BackendError(503, f"version '{target.version_id}' has no adapter_config.json in its artifact "
                               "directory", "no_adapter_dir")
        with self._lock:  # one load per base, however many requests arrive at once
            backend = self.bases.get(target.model_dir)
            if backend is None:
                try:
                    backend = LocalBackend(target.model_dir, self.device, self.threads, self.default_max_tokens,
                                           self.precision)
                except OSError as e:
                    raise BackendError(503, f"cannot load the model of '{target.version_id}' from "
                                       f"{target.model_dir}: {e}", "model_load_failed") from None
                self.bases[target.model_dir] = backend
        if target.kind == "adapter" and backend.n_params <= self.merge_max_params:
            return self._merged(backend, target), None
        if target.kind == "adapter":
            backend.ensure_adapter(target.version_id, target.adapter_dir)
            return backend, target.version_id
        return backend, None

    def _merged(self, base: LocalBackend, target: Target) -> LocalBackend:
        key = (target.model_dir, target.adapter_dir)
        with self._lock:
            merged = self.merged.get(key)
            if merged is None:
                try:
                    merged = base.merged_copy(target.adapter_dir)
                except (OSError, ValueError) as e:
                    raise BackendError(503, f"cannot load the adapter of '{target.version_id}' from "
                                       f"{target.adapter_dir}: {e}", "adapter_load_failed") from None
                self.merged[key] = merged
                log.info("serving %s merged into its own copy of %s", target.version_id, target.model_dir)
        return merged

    def warm(self, targets: list[Target]) -> None:
        """Load what these targets need (run in a background thread when routing changes)."""
        for target in targets:
            try:
                self.backend_for(target)
            except Exception as e:
                log.warning("could not preload %s: %s", target.version_id, e)

    async def complete(self, target: Target, messages: list[dict], params: ChatParams) -> Completion:
        def run() -> Completion:
            backend, adapter = self.backend_for(target)
            return backend.generate(messages, adapter, params)

        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    async def stream(self, target: Target, messages: list[dict], params: ChatParams) -> AsyncIterator[Chunk]:
        backend, adapter = await asyncio.to_thread(self.backend_for, target)
        chunks = backend.stream(messages, adapter, params)
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(chunks.close)

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.bases.clear()
        self.merged.clear()
