"""KaizenClient: the Python SDK for logging turns, feedback and signals to a kaizenlm gateway.

    from kaizenlm.feedback.client import KaizenClient

    with KaizenClient("http://127.0.0.1:8400", api_key="kz-ingest-dev") as kz:
        turn_id = kz.log_turn(conversation_id="c1", user_id="u1",
                              messages=[{"role": "user", "content": "How long is the refund window?"}],
                              response="The refund window is 30 days.", latency_ms=120)
        kz.feedback(turn_id, thumbs=1, rating=5)
        kz.signal("copy", turn_id=turn_id)
        token = kz.feedback_token(turn_id)  # hand it to the page's widget (KaizenWidget.mount)
    # leaving the block flushes everything

With a server key (scope `ingest`) feedback needs no token. With a public key (scope
`feedback` only, e.g. in a mobile app) pass each turn's token: `kz.feedback(turn_id,
thumbs=1, feedback_token=token)`; the gateway refuses feedback without it (403).
`feedback_token(turn_id)` waits until the turn's batch was accepted by the gateway, whose
answer carries the tokens, and remembers the last `max_tokens` of them.

Calls validate locally (a bad field raises ValueError at once, naming it) and return the
id at once; a background thread sends batches of up to `batch_size` per event type. Each
event carries a client-assigned event_id, so retries after timeouts or 5xx answers can
never double-count. 4xx answers are not retried: they land in `client.errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import httpx
import orjson
from pydantic import ValidationError

from kaizenlm.ingest.events import PAYLOADS, new_event_id, validation_message

log = logging.getLogger(__name__)
PATHS = {"turn": "/v1/turns", "feedback": "/v1/feedback", "signal": "/v1/signals"}
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class DeliveryError:
    status: int
    message: str
    event_ids: list[str] = field(default_factory=list)


class KaizenClient:
    def __init__(self, base_url: str, api_key: str, batch_size: int = 500, flush_interval: float = 0.2,
                 max_queue: int = 100_000, max_retries: int = 8, timeout: float = 10.0, max_tokens: int = 100_000):
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})
        self.max_queue = max_queue
        # A deque and a wake-up flag rather than queue.Queue, whose lock and condition per put and
        # get cost more than validating the event (deque appends and pops are thread-safe).
        self._events: deque[tuple[str, dict]] = deque()
        self._wake = threading.Event()
        self.errors: list[DeliveryError] = []
        self.sent = 0
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[str, str] = OrderedDict()  # turn_id -> feedback token, newest last
        self._tokens_changed = threading.Condition()
        self._pending = 0
        self._pending_lock = threading.Condition()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name="kaizen-client", daemon=True)
        self._worker.start()

    # -- public API ------------------------------------------------------------------
    def log_turn(self, **payload) -> str:
        """Queue a turn; returns its turn_id (given or assigned) for later feedback."""
        if "turn_id" not in payload:
            payload["turn_id"] = new_event_id()
        self._enqueue("turn", payload)
        return payload["turn_id"]

    def feedback(self, turn_id: str, thumbs: int | None = None, rating: int | None = None,
                 comment: str | None = None, correction: str | None = None, feedback_token: str | None = None,
                 **extra) -> str:
        """Queue explicit feedback on a turn; returns the event_id. `feedback_token`: the turn's
        token, needed with a public (feedback-scope) key."""
        fields = {"thumbs": thumbs, "rating": rating, "comment": comment, "correction": correction,
                  "feedback_token": feedback_token, **extra}
        return self._enqueue("feedback", {"turn_id": turn_id, **{k: v for k, v in fields.items() if v is not None}})

    def signal(self, kind: str, turn_id: str | None = None, conversation_id: str | None = None,
               value: float | None = None, feedback_token: str | None = None, **extra) -> str:
        """Queue an implicit signal (regenerate, copy, edit, abandon, completed, follow_up); with
        a public key it names a turn and carries its `feedback_token`."""
        fields = {"turn_id": turn_id, "conversation_id": conversation_id, "value": value,
                  "feedback_token": feedback_token, **extra}
        return self._enqueue("signal", {"kind": kind, **{k: v for k, v in fields.items() if v is not None}})

    def feedback_token(self, turn_id: str, timeout: float = 30.0) -> str:
        """The feedback token the gateway issued for a turn logged with `log_turn`, waiting up
        to `timeout` seconds for its batch to be accepted. Raises LookupError if it was not
        (rejected, or not logged by this client, or older than the last `max_tokens`)."""
        deadline = time.monotonic() + timeout
        with self._tokens_changed:
            while turn_id not in self._tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LookupError(f"no feedback token for turn {turn_id}: it was not accepted within {timeout} s "
                                      "(see client.errors), or was not logged by this client")
                self._tokens_changed.wait(timeout=min(left, 0.1))
            return self._tokens[turn_id]

    def _remember_tokens(self, answer: dict) -> None:
        with self._tokens_changed:
            for turn_id, token in zip(answer.get("turn_ids", []), answer.get("feedback_tokens", []), strict=False):
                self._tokens[turn_id] = token
                self._tokens.move_to_end(turn_id)
            while len(self._tokens) > self.max_tokens:
                self._tokens.popitem(last=False)
            self._tokens_changed.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far was delivered (or rejected); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_lock.wait(timeout=min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._closed.set()
        self._wake.set()
        self._worker.join(timeout=5)
        self.http.close()

    def __enter__(self) -> KaizenClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------
    def _enqueue(self, event_type: str, payload: dict) -> str:
        event_id = payload.pop("event_id", None) or new_event_id()
        ts = payload.pop("ts", None) or time.time()
        token = payload.pop("feedback_token", None)  # not a payload field: the gateway checks and drops it
        try:
            PAYLOADS[event_type].model_validate(payload)
        except ValidationError as e:
            raise ValueError(f"{event_type}: {validation_message(e)}") from None
        payload["event_id"], payload["ts"] = event_id, ts  # the public methods built it: ours to change
        if token is not None:
            payload["feedback_token"] = token
        while len(self._events) >= self.max_queue:  # the sender fell behind: wait, as a full queue would
            time.sleep(0.001)
        with self._pending_lock:
            self._pending += 1
        self._events.append((event_type, payload))
        if not self._wake.is_set():
            self._wake.set()
        return event_id

    def _run(self) -> None:
        batches: dict[str, list[dict]] = {t: [] for t in PATHS}
        last_send = time.monotonic()
        while not (self._closed.is_set() and not self._events):
            self._wake.wait(timeout=self.flush_interval)
            self._wake.clear()  # an append after this sets it again, so none is missed
            while self._events:
                event_type, event = self._events.popleft()
                batches[event_type].append(event)
                full = len(batches[event_type]) >= self.batch_size
                if full or time.monotonic() - last_send >= self.flush_interval:
                    self._send_all(batches)
                    last_send = time.monotonic()
            self._send_all(batches)  # nothing more waiting: send what there is now
            last_send = time.monotonic()

    def _send_all(self, batches: dict[str, list[dict]]) -> None:
        for event_type, batch in batches.items():
            if batch:
                self._send(event_type, batch)
                batches[event_type] = []

    def _send(self, event_type: str, batch: list[dict]) -> None:
        body = orjson.dumps(batch)  # once for all retries; httpx's json= uses the stdlib encoder, ~5x slower
        delay = 0.2
        for attempt in range(self.max_retries + 1):
            try:
                r = self.http.post(PATHS[event_type], content=body, headers=JSON_HEADERS)
                if r.status_code < 300:
                    self.sent += len(batch)
                    if event_type == "turn":
                        self._remember_tokens(r.json())
                    break
                if r.status_code < 500 and r.status_code != 429:
                    self.errors.append(DeliveryError(r.status_code, r.text, [e["event_id"] for e in batch]))
                    log.error("gateway rejected %d %s events: %s", len(batch), event_type, r.text)
                    break
                delay = float(r.headers.get("retry-after", delay))
            except httpx.HTTPError as e:
                log.warning("send failed (%s); retry %d in %.1fs", e, attempt + 1, delay)
            if attempt == self.max_retries:
                self.errors.append(DeliveryError(0, "gave up after retries", [e["event_id"] for e in batch]))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        with self._pending_lock:
            self._pending -= len(batch)
            self._pending_lock.notify_all()
