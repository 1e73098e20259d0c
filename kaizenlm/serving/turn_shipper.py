"""The turn shipper: a small process beside each gateway worker that produces the worker's
chat turns to Kafka, so kafka-python never runs in the process that answers requests.

Why a process: a worker that produced its own turn logs spent a quarter of its CPU in
kafka-python (the per-record send on the event loop, and the client's sender and network
threads holding the GIL). Requests queued behind that work: at 1,000 requests/s on 2 cores
the gateway's p99 overhead was 15 ms with turns produced in the worker and 1.7 ms with
them off the worker (benchmarks/RESULTS.md, "Gateway overhead"). Now the worker's TurnLog
writes one frame per 100 ms window to this process's stdin, and this process publishes
through the same EventProducer as the collector (acks=all, disk spool when the broker is
away, spool/<replica>-turns).

Frame: 4-byte big-endian length, then an orjson array of turn envelopes. The worker starts
the process (`ShipperClient`), restarts it if it dies, and publishes in-process while it is
down. On EOF of stdin the shipper publishes what it has and exits. Turns written into the
pipe by a worker whose shipper is then killed are lost (at most one window): chat turn logs
are best-effort, unlike collector events, which are acknowledged only once stored.

    python -m kaizenlm.serving.turn_shipper --servers 127.0.0.1:9092 --topic kaizen.turns \
        --spool-dir ~/.kaizen/spool/gw-8400-turns
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson

from kaizenlm.feedback.collector import record_key
from kaizenlm.ingest.producer import EventProducer, SpoolFull

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # past this in the worker's pipe buffer, publish in-process
RESTART_EVERY_S = 5.0


def encode_frame(envelopes: list[dict]) -> bytes:
    body = orjson.dumps(envelopes)
    return FRAME.pack(len(body)) + body


# --------------------------------------------------------------------------------------
# The worker's end
# --------------------------------------------------------------------------------------


class ShipperClient:
    """Starts the shipper process, hands it frames, and restarts it (at most every 5 s) when
    it died. `send` returns False when the frame was not handed over: the caller then
    publishes those turns itself."""

    def __init__(self, argv: list[str], log_path: Path):
        self.argv, self.log_path = argv, log_path
        self.proc: subprocess.Popen | None = None
        self.transport: asyncio.WriteTransport | None = None
        self.frames_sent = 0
        self.restarts = 0
        self._last_start = -RESTART_EVERY_S
        self._starting: asyncio.Task | None = None
        self._restart_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._last_start = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Its own session: a Ctrl-C in the terminal must not kill it before the worker drains into it.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_write_pipe(asyncio.Protocol, self.proc.stdin)

    @property
    def alive(self) -> bool:
        return (self.proc is not None and self.proc.poll() is None and self.transport is not None
                and not self.transport.is_closing())

    def status(self) -> dict:
        return {"pid": self.proc.pid if self.proc else None, "alive": self.alive, "frames_sent": self.frames_sent,
                "restarts": self.restarts}

    def send(self, envelopes: list[dict]) -> bool:
        if not self.alive:
            self._restart_later()
            return False
        if self.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            return False  # the shipper is not keeping up: do not grow the worker's memory
        self.transport.write(encode_frame(envelopes))
        self.frames_sent += 1
        return True

    def _restart_later(self) -> None:
        """Start a new shipper now, or RESTART_EVERY_S after the last start (a shipper that
        dies at once must not be restarted in a tight loop)."""
        if self._starting is not None or self._restart_timer is not None:
            return
        delay = max(0.0, self._last_start + RESTART_EVERY_S - time.monotonic())
        log.warning("turn shipper exited (%s); starting a new one in %.1f s; until then this worker publishes "
                    "its turns itself", self.proc.returncode if self.proc else None, delay)
        self._restart_timer = asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_timer = None
        self.restarts += 1
        if self.transport is not None:
            self.transport.close()
        self._starting = asyncio.get_running_loop().create_task(self.start())
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            log.error("could not start the turn shipper: %s", task.exception())

    async def close(self, timeout: float = 30.0) -> None:
        """EOF to the shipper, then wait for it to publish what it has and exit."""
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        if self._starting is not None:
            await asyncio.wait([self._starting], timeout=timeout)
        if self.transport is not None:
            self.transport.close()
        if self.proc is None:
            return
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            log.error("turn shipper still running after %.0f s; killing it", timeout)
            self.proc.kill()


def shipper_argv(cfg, replica: str) -> list[str]:
    return [sys.executable, "-m", "kaizenlm.serving.turn_shipper",
            "--servers", ",".join(cfg.kafka.servers), "--topic", cfg.kafka.topic("turns"),
            "--spool-dir", str(cfg.home / "spool" / f"{replica}-turns"),
            "--spool-max-bytes", str(cfg.gateway.spool_max_bytes),
            "--buffer-bytes", str(cfg.gateway.producer_buffer_bytes)]


# --------------------------------------------------------------------------------------
# The shipper process
# --------------------------------------------------------------------------------------


async def ship(reader: asyncio.StreamReader, producer: EventProducer, topic: str, max_pending: int = 64) -> int:
    """Publish every frame read until EOF; returns the number of turns handed to the producer."""
    pending: set[asyncio.Task] = set()
    turns = 0
    while True:
        try:
            (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            envelopes = orjson.loads(await reader.readexactly(size))
        except asyncio.IncompleteReadError:
            break  # EOF: the worker closed its end (or died)
        records = [(topic, record_key(e).encode(), orjson.dumps(e)) for e in envelopes]
        turns += len(records)
        task = asyncio.get_running_loop().create_task(_publish(producer, records))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if len(pending) >= max_pending:
            await asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(set(pending))
    return turns


async def _publish(producer: EventProducer, records) -> None:
    try:
        await producer.publish(records)
    except SpoolFull as e:
        log.error("%d turns not logged: broker unreachable and spool full (%s)", len(records), e)
    except Exception:
        log.exception("%d turns not logged", len(records))


async def _main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    producer = await asyncio.to_thread(EventProducer, args.servers.split(","), Path(args.spool_dir),
                                       args.spool_max_bytes, args.buffer_bytes, [args.topic])
    try:
        turns = await ship(reader, producer, args.topic)
    finally:
        await asyncio.to_thread(producer.close, 30)
    log.info("turn shipper done: %d turns", turns)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Started by each gateway worker (gateway.turn_shipper = true); not run by hand.")
    ap.add_argument("--servers", required=True, help="Kafka bootstrap servers, host:port[,host:port...]")
    ap.add_argument("--topic", required=True, help="topic of chat turns")
    ap.add_argument("--spool-dir", required=True, help="disk spool for turns while the broker is away")
    ap.add_argument("--spool-max-bytes", type=int, default=256_000_000)
    ap.add_argument("--buffer-bytes", type=int, default=33_554_432)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s turn-shipper[{os.getpid()}] %(levelname)s %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
