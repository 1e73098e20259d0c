"""Tiny Prometheus text-format metrics: counters and one latency histogram, no dependency."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, prefix: str = "kaizen_gateway"):
        self.prefix = prefix
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.help: dict[str, str] = {}
        self.hist_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.hist_sum = 0.0
        self.gauges: dict[str, callable] = {}

    def inc(self, name: str, amount: float = 1.0, help: str = "", **labels: str) -> None:
        with self.lock:
            self.counters[(name, tuple(sorted(labels.items())))] += amount
            if help:
                self.help.setdefault(name, help)

    def observe_produce_latency(self, seconds: float) -> None:
        with self.lock:
            self.hist_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self.hist_sum += seconds

    def gauge(self, name: str, fn, help: str = "") -> None:
        self.gauges[name] = fn
        if help:
            self.help[name] = help

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        out = []
        with self.lock:
            seen = set()
            for (name, labels), value in sorted(self.counters.items()):
                full = f"{self.prefix}_{name}"
                if name not in seen:
                    out.append(f"# HELP {full} {self.help.get(name, name)}")
                    out.append(f"# TYPE {full} counter")
                    seen.add(name)
                lab = ",".join(f'{k}="{v}"' for k, v in labels)
                out.append(f"{full}{{{lab}}} {value:g}" if lab else f"{full} {value:g}")
            hist = f"{self.prefix}_produce_latency_seconds"
            out += [f"# HELP {hist} time from receiving a request to the broker's ack (or spool fsync)",
                    f"# TYPE {hist} histogram"]
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), self.hist_counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'{hist}_bucket{{le="{le}"}} {cumulative}')
            out += [f"{hist}_sum {self.hist_sum:g}", f"{hist}_count {cumulative}"]
        for name, fn in self.gauges.items():
            full = f"{self.prefix}_{name}"
            out += [f"# HELP {full} {self.help.get(name, name)}", f"# TYPE {full} gauge", f"{full} {fn():g}"]
        return "\n".join(out) + "\n"
