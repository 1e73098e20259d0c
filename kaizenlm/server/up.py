"""What `kaizen up` runs: broker (if embedded) + controller + gateway on one machine, supervised.

A child that dies is restarted. On SIGINT/SIGTERM the stop is ordered so that nothing
accepted is lost even with the memory-only embedded broker: gateways stop taking requests
and flush (spool included), the controller drains everything the broker holds into
DuckDB, then the controller and finally the broker stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from kaizenlm.ingest import broker


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self, env: dict) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _kaizen(*args: str) -> list[str]:
    return [sys.executable, "-m", "kaizenlm.cli", *args]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s; see the logs under $KAIZEN_HOME/logs")


class Supervisor:
    def __init__(self, cfg, with_gateway: bool = True, with_dashboard: bool = False):
        self.cfg = cfg
        logs = cfg.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "KAIZEN_HOME": str(cfg.home), "KAIZEN_BROKER_PORT": str(cfg.kafka.broker_port),
                    "KAIZEN_GATEWAY_PORT": str(cfg.gateway.port), "KAIZEN_CONTROLLER_PORT": str(cfg.controller.port)}
        self.broker_proc: subprocess.Popen | None = None
        self.children = [Child("controller", _kaizen("controller"), str(logs / "controller.out"))]
        if with_gateway:
            self.children.append(Child("gateway", _kaizen("gateway"), str(logs / "gateway.out")))
        if with_dashboard:
            self.children.append(Child("dashboard", _kaizen("dashboard"), str(logs / "dashboard.out")))
        self.stopping = False

    def start(self) -> None:
        if self.cfg.kafka.bootstrap == "embedded":
            self.broker_proc = broker.start_embedded(self.cfg.kafka.broker_port, self.cfg.home / "logs" / "broker.log")
        broker.ensure_topics(self.cfg.kafka)
        for child in self.children:
            child.start(self.env)
        _wait_http(self.cfg.controller_url + "/healthz", 60)
        if any(c.name == "gateway" for c in self.children):
            _wait_http(self.cfg.gateway_url + "/healthz", 60)

    def champion(self) -> str | None:
        """The version `champion` points at (None while the controller is still preparing the base)."""
        try:
            r = httpx.get(self.cfg.controller_url + "/admin/v1/registry/aliases", timeout=5,
                          headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"})
            return r.json().get("aliases", {}).get("champion") if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def supervise_once(self) -> list[str]:
        """Restart dead children (with a back-off for crash loops); returns the names restarted."""
        restarted = []
        for child in self.children:
            if not child.alive() and not self.stopping:
                if time.monotonic() - child.started_at < 2.0:
                    time.sleep(2.0)
                child.restarts += 1
                child.start(self.env)
                restarted.append(child.name)
        return restarted

    def stop(self) -> dict:
        """Ordered stop: gateways flush, the sink drains, then controller, then broker."""
        self.stopping = True
        report = {}
        for child in self.children:
            if child.name != "controller":
                child.stop(timeout=40)
        controller = next(c for c in self.children if c.name == "controller")
        if controller.alive():
            try:
                r = httpx.post(self.cfg.controller_url + "/admin/v1/drain", params={"timeout": 60},
                               headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, timeout=70)
                report["drain"] = r.json()
            except httpx.HTTPError as e:
                report["drain_error"] = str(e)
        controller.stop(timeout=30)
        if self.broker_proc is not None:
            self.broker_proc.terminate()
            self.broker_proc.wait(timeout=10)
        return report
