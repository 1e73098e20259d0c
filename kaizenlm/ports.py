"""Free loopback ports for the processes tests and benchmarks start (broker, controller,
gateway, fake upstreams), picked where no outgoing connection can take them first."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, never the same one twice in a process.

    A port from bind(0) comes from the ephemeral range, where every outgoing connection (Kafka
    clients, httpx) also takes its local port: one could take it before our server binds it,
    and the server then fails to start (seen in CI as uvicorn's exit code 3).
    """
    rng = random.Random(os.getpid() * 1_000_003 + time.time_ns())
    for _ in range(500):
        port = rng.randrange(15000, _ephemeral_low())
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")
