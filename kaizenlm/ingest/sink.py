"""The controller's sink: Kafka (turns, feedback, signals) -> DuckDB, exactly once in effect.

Per poll: validate every message; insert the good ones (idempotent on event_id) and the
bad ones (into `dlq`, keyed by topic/partition/offset) in ONE DuckDB transaction; copy the
bad ones to the `dlq` topic; only then commit the Kafka offsets. A crash before the offset
commit means redelivery, which the idempotent inserts absorb: nothing lost, nothing doubled.
"""

from __future__ import annotations

import base64
import logging
import threading
import time

import duckdb
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from kaizenlm.config import Config
from kaizenlm.ingest import store
from kaizenlm.ingest.events import parse_envelope

log = logging.getLogger(__name__)

SOURCE_TOPICS = ("turns", "feedback", "signals")


def parse_message(value: bytes | None) -> tuple[dict | None, str | None]:
    """(envelope, None) for a valid event, (None, reason) otherwise."""
    if value is None:
        return None, "empty message"
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        return None, f"not valid JSON: {e}"
    if not isinstance(raw, dict):
        return None, f"envelope must be a JSON object, got {type(raw).__name__}"
    try:
        env, payload = parse_envelope(raw)
    except ValueError as e:
        return None, str(e)
    return {"event_id": env.event_id, "type": env.type, "ts": env.ts,
            "payload": payload.model_dump(mode="json")}, None


class Sink:
    def __init__(self, cfg: Config, con: duckdb.DuckDBPyConnection, db_lock: threading.Lock):
        self.cfg = cfg
        self.con = con
        self.db_lock = db_lock
        self.topics = [cfg.kafka.topic(t) for t in SOURCE_TOPICS]
        self.stats = {"batches": 0, "events": 0, "inserted": 0, "dlq": 0, "last_batch_at": None, "errors": 0}
        self.consumer: KafkaConsumer | None = None
        self._dlq_producer: KafkaProducer | None = None
        self._probe: KafkaConsumer | None = None
        self._probe_lock = threading.Lock()
        self._outage = False
        self._last_end: dict = {}
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _setup_consumer(self) -> KafkaConsumer:
        return KafkaConsumer(
            *self.topics, bootstrap_servers=self.cfg.kafka.servers, group_id=self.cfg.kafka.consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", client_id="kaizen-sink",
            # Small poll/session intervals keep group joins at a few seconds instead of ~25 s.
            max_poll_interval_ms=10_000, session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            max_poll_records=self.cfg.controller.sink_batch_size, fetch_max_wait_ms=100,
            # The broker holds a fetch until 64 KiB are there or fetch_max_wait_ms passed: under a
            # trickle of single events, a few full fetches a second instead of one per message or so
            # (each costs the broker and this process far more than the records in it).
            fetch_min_bytes=64 * 1024,
            request_timeout_ms=11_000, reconnect_backoff_max_ms=500,
        )

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="duckdb-sink", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.consumer is None:
                    self.consumer = self._setup_consumer()
                self.poll_once()
            except KafkaError as e:
                self.stats["errors"] += 1
                log.warning("sink: Kafka error (%s); retrying in 1 s", e)
                time.sleep(1.0)
        if self.consumer is not None:
            self.consumer.close(autocommit=False)

    def _check_broker(self) -> bool:
        """True when it is safe to process the next poll; re-seeks after an outage or a log reset.

        A broker that lost its log (the embedded memory-only broker after a restart) starts its
        offsets again at 0: the consumer's old positions would skip the new events. After any
        outage, or when a partition's end offset went backwards, re-read from the group's
        committed offset if the broker still has one, else from the beginning (inserts are
        idempotent, so re-reading is always safe).
        """
        parts = list(self.consumer.assignment())
        if not parts:
            return True
        try:
            ends = self.consumer.end_offsets(parts)
        except KafkaError as e:
            if not self._outage:
                log.warning("sink: broker unreachable (%s); will re-seek when it returns", e)
            self._outage = True
            return False
        for tp in parts:
            went_back = ends[tp] < self._last_end.get(tp, 0)
            if self._outage or went_back:
                committed = self.consumer.committed(tp)
                if committed is not None and committed <= ends[tp] and not went_back:
                    self.consumer.seek(tp, committed)
                else:
                    self.consumer.seek_to_beginning(tp)
                log.warning("sink: re-reading %s from %s after %s", tp,
                            committed if committed is not None and not went_back else "the beginning",
                            "a log reset" if went_back else "an outage")
            self._last_end[tp] = ends[tp]
        self._outage = False
        return True

    def poll_once(self) -> int:
        if not self._check_broker():
            return 0
        messages = self._poll_batch()
        if not messages or not self._check_broker():  # an outage during the poll: re-seek first
            return 0
        self.write_batch(messages)
        try:
            self.consumer.commit()
        except CommitFailedError as e:  # a rebalance took the partition: redelivery is idempotent
            log.warning("sink: offset commit failed after a rebalance (%s); events will be re-read", e)
        return len(messages)

    def _poll_batch(self) -> list:
        """Messages until `sink_batch_size` or `sink_max_wait_ms` after the first one arrived.

        A poll returns as soon as anything is there: under a steady trickle (single-event
        requests) that is a few messages per poll, and each DuckDB transaction has a fixed cost
        of milliseconds. Waiting to fill the batch keeps it to a few transactions per second.
        """
        size, wait_ms = self.cfg.controller.sink_batch_size, self.cfg.controller.sink_max_wait_ms
        polled = self.consumer.poll(timeout_ms=wait_ms, max_records=size)
        messages = [m for batch in polled.values() for m in batch]
        deadline = time.monotonic() + wait_ms / 1000
        while messages and len(messages) < size and not self._stop.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            polled = self.consumer.poll(timeout_ms=left_ms, max_records=size - len(messages))
            messages += [m for batch in polled.values() for m in batch]
        return messages

    def write_batch(self, messages) -> None:
        good, bad = [], []
        for m in messages:
            env, reason = parse_message(m.value)
            if env is None:
                bad.append((m.topic, m.partition, m.offset, m.value or b"", reason))
            else:
                good.append(env)
        with self.db_lock:
            cur = self.con
            cur.execute("BEGIN")
            try:
                inserted = store.insert_events(cur, good)
                store.insert_dlq(cur, bad)
                cur.execute("COMMIT")
            except Exception:
                cur.execute("ROLLBACK")
                raise
        if bad:
            self._publish_dlq(bad)
        self.stats["batches"] += 1
        self.stats["events"] += len(messages)
        self.stats["inserted"] += sum(inserted.values())
        self.stats["dlq"] += len(bad)
        self.stats["last_batch_at"] = time.time()

    def _publish_dlq(self, bad) -> None:
        if self._dlq_producer is None:
            self._dlq_producer = KafkaProducer(bootstrap_servers=self.cfg.kafka.servers, acks="all",
                                               client_id="kaizen-sink-dlq")
        for topic, partition, offset, raw, reason in bad:
            doc = {"topic": topic, "partition": partition, "offset": offset, "reason": reason,
                   "raw_b64": base64.b64encode(raw).decode()}
            self._dlq_producer.send(self.cfg.kafka.topic("dlq"), value=orjson.dumps(doc))
        self._dlq_producer.flush(timeout=10)

    def lag(self) -> int:
        """Messages the broker holds that the sink has not committed yet.

        Uses its own probe clients: KafkaConsumer is not thread-safe, and this runs on API threads.
        """
        with self._probe_lock:
            if self._probe is None:
                # Same group id but never subscribes: it only reads the group's committed offsets.
                self._probe = KafkaConsumer(bootstrap_servers=self.cfg.kafka.servers, client_id="kaizen-lag-probe",
                                            group_id=self.cfg.kafka.consumer_group, enable_auto_commit=False)
            parts = [TopicPartition(t, p) for t in self.topics for p in (self._probe.partitions_for_topic(t) or ())]
            ends = self._probe.end_offsets(parts)
            return sum(max(0, ends[tp] - (self._probe.committed(tp) or 0)) for tp in parts)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until everything the broker holds is in DuckDB; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.lag() == 0:
                    return True
            except KafkaError as e:
                log.warning("sink: lag probe failed (%s)", e)
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=15)
        for client in (self._dlq_producer, self._probe):
            if client is not None:
                client.close()
