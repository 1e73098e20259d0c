"""The gateway's Kafka producer: acks=all, bounded memory, and a disk spool when the broker is away.

An event is acknowledged to the client only once the broker has it (acks=all) or it is
fsync'd in the spool. While the spool holds anything, new events go behind it, so order is
kept; a replay thread drains it oldest-first once the broker answers again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from kaizenlm.ingest.spool import Record, Spool, SpoolFull

log = logging.getLogger(__name__)

__all__ = ["EventProducer", "SpoolFull"]


class EventProducer:
    def __init__(self, servers: list[str], spool_dir: Path, spool_max_bytes: int, buffer_bytes: int,
                 topics: list[str], delivery_timeout_ms: int = 6000):
        self.spool = Spool(spool_dir, spool_max_bytes)
        self.topics = topics
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self._kafka_args = dict(
            bootstrap_servers=servers, acks="all", linger_ms=2,
            max_block_ms=1000, request_timeout_ms=delivery_timeout_ms - 1000,
            delivery_timeout_ms=delivery_timeout_ms, retry_backoff_ms=200, reconnect_backoff_max_ms=1000,
            batch_size=256 * 1024, max_request_size=4 * 1024 * 1024, client_id="kaizen-gateway",
            # Duplicates from retries are removed by event_id in the sink; Kafka's idempotent producer
            # would add nothing and breaks when a memory-only broker restarts (unknown producer id).
            enable_idempotence=False,
        )
        # kafka-python 3 has no buffer_memory cap, so bound the bytes handed to it but not yet acked.
        self.max_inflight_bytes = buffer_bytes
        self.inflight_bytes = 0
        self._inflight_lock = threading.Lock()
        self._partition_cache: dict[tuple, dict[bytes, int]] = {}
        self.kafka: KafkaProducer | None = None
        self.broker_up = False
        self.sent = 0
        self.spooled = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connect()
        self._replayer = threading.Thread(target=self._replay_loop, name="spool-replay", daemon=True)
        self._replayer.start()

    # -- connection ------------------------------------------------------------------
    def _connect(self) -> bool:
        try:
            if self.kafka is None:
                self.kafka = KafkaProducer(**self._kafka_args)
            for topic in self.topics:  # cache metadata so send() never blocks on it later
                self.kafka.partitions_for(topic)
            self.broker_up = self.spool.is_empty()
        except KafkaError as e:
            log.warning("broker unreachable (%s); events go to the spool at %s", e, self.spool.dir)
            self.broker_up = False
        if not self.spool.is_empty():
            self._wake.set()
        return self.kafka is not None

    # -- publishing ------------------------------------------------------------------
    async def publish(self, records: list[Record]) -> str:
        """Deliver records; returns 'sent' or 'spooled'. Raises SpoolFull when neither is possible."""
        size = sum(len(v) + len(k) for _, k, v in records)
        if not self.broker_up or self.kafka is None or not self._reserve(size):
            return await self._to_spool(records)
        delivery = _Delivery(asyncio.get_running_loop())
        handed = 0
        try:
            partition_of = {}  # per topic: the key -> partition function, looked up once per call
            for topic, key, value in records:
                if topic not in partition_of:
                    partition_of[topic] = self._partitioner(topic)
                delivery.track(self.kafka.send(topic, key=key, value=value, partition=partition_of[topic](key)), handed)
                handed += 1
        except KafkaError as e:  # metadata unavailable
            log.warning("send failed before delivery (%s)", e)
            self._mark_down()
        failed = await delivery.wait()
        self._release(size)
        self.sent += handed - len(failed)
        lost = [records[i] for i in failed] + records[handed:]
        if lost:
            self._mark_down()
            await self._to_spool(lost)
            return "spooled"
        return "sent"

    def _partitioner(self, topic: str):
        """key -> partition, the same choice as kafka-python's default partitioner (murmur2 of the
        key), made here because its pure-Python murmur2 costs ~20 us per record: with one
        partition there is nothing to hash, and with several the answers are cached per key."""
        partitions = sorted(self.kafka.partitions_for(topic))
        if len(partitions) == 1:
            only = partitions[0]
            return lambda key: only
        cache = self._partition_cache.setdefault((topic, tuple(partitions)), {})
        if len(cache) > 100_000:
            cache.clear()

        def partition(key: bytes) -> int:
            p = cache.get(key)
            if p is None:
                p = cache[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            return p
        return partition

    async def _to_spool(self, records: list[Record]) -> str:
        await asyncio.to_thread(self.spool.append, records)
        self.spooled += len(records)
        self._wake.set()
        return "spooled"

    def publish_sync(self, records: list[Record]) -> str:
        """Blocking variant for scripts and the controller (control topic)."""
        return asyncio.run(self.publish(records))

    def _reserve(self, size: int) -> bool:
        with self._inflight_lock:
            if self.inflight_bytes + size > self.max_inflight_bytes:
                return False
            self.inflight_bytes += size
            return True

    def _release(self, size: int) -> None:
        with self._inflight_lock:
            self.inflight_bytes -= size

    def _mark_down(self) -> None:
        if self.broker_up:
            log.warning("broker stopped answering; spooling to %s", self.spool.dir)
        self.broker_up = False
        self._wake.set()

    # -- replay ----------------------------------------------------------------------
    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.broker_up and self.spool.is_empty():
                continue
            try:
                self._drain_spool()
            except Exception as e:  # keep the thread alive; the next round tries again
                log.warning("spool replay paused: %s", e)
                time.sleep(1.0)

    def _drain_spool(self) -> None:
        if self.kafka is None and not self._connect():
            return
        for segment in self.spool.seal():
            records = self.spool.read_segment(segment)
            futures = [self.kafka.send(t, key=k, value=v) for t, k, v in records]
            self.kafka.flush(timeout=self.delivery_timeout_s * 2)
            if not all(f.is_done and f.succeeded() for f in futures):
                raise KafkaError(f"broker still unreachable; {self.spool.size_bytes} bytes wait in the spool")
            self.spool.remove_segment(segment)
            log.info("replayed %d spooled events from %s", len(records), segment.name)
        with self.spool.lock:  # no append can slip in between the emptiness check and the switch
            if self.spool.is_empty():
                self.broker_up = True

    def flush(self, timeout: float = 30.0) -> None:
        """Deliver everything pending, the spool included (used on shutdown)."""
        deadline = time.monotonic() + timeout
        while not self.spool.is_empty() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.1)
        if self.kafka is not None:
            self.kafka.flush(timeout=max(0.1, deadline - time.monotonic()))

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._replayer.join(timeout=5)
        if self.kafka is not None:
            self.kafka.close(timeout=5)


class _Delivery:
    """The broker's answers for one publish() call: a count of records not yet answered and the
    indexes of the failed ones. The awaiting coroutine is woken once, when the last answer is
    in, rather than once per record (each wake-up crosses threads through the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.future = loop.create_future()
        self.failed: list[int] = []
        self._lock = threading.Lock()
        self._pending = 1  # held by publish() itself until wait(), so the count cannot reach 0 early

    def track(self, kafka_future, index: int) -> None:
        with self._lock:
            self._pending += 1
        kafka_future.add_both(self._answered, index)

    def _answered(self, index: int | None, result) -> None:
        """Runs on kafka-python's sender thread, or at once on this one when send failed early."""
        with self._lock:
            if isinstance(result, Exception):
                self.failed.append(index)
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(sorted(self.failed))

    async def wait(self) -> list[int]:
        """Indexes of the records the broker did not acknowledge, once all are answered."""
        self._answered(None, None)
        return await self.future
