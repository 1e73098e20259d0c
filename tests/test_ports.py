"""free_port: ports below the kernel's ephemeral range, bindable, never handed out twice."""

import socket
from pathlib import Path

from kaizenlm.ports import free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(15000 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # still free: nothing was left bound
