"""Shared fixtures: free ports, an isolated KAIZEN_HOME, and a real local stack
(Tansu broker + controller + gateway as subprocesses) that tests can kill and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from kaizenlm import config as config_mod  # noqa: E402
from kaizenlm.ingest import broker  # noqa: E402
from kaizenlm.ports import free_port  # noqa: E402


@pytest.fixture
def kaizen_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for an isolated kaizen: its own home and ports; also applied to this process."""
    env = {
        "KAIZEN_HOME": str(tmp_path / "home"),
        "KAIZEN_BROKER_PORT": str(free_port()),
        "KAIZEN_GATEWAY_PORT": str(free_port()),
        "KAIZEN_CONTROLLER_PORT": str(free_port()),
        "KAIZEN_KAFKA_BOOTSTRAP": "embedded",
        # No test controller converts and registers the embedded SmolLM2 at start (~1 GB and a minute
        # each); tests that need a champion register their own model, and test_base.py tests this step.
        "KAIZEN_REGISTER_BASE": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KAIZEN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return env


class Stack:
    """Real processes on loopback. Every method waits until the part answers."""

    def __init__(self, env: dict[str, str]):
        self.env = {**os.environ, **env}
        self.cfg = config_mod.load(env=self.env)
        self.home = self.cfg.home
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self.broker: subprocess.Popen | None = None
        self.controller: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None

    @property
    def ingest_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.cfg.auth.ingest_key}"}

    @property
    def admin_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.cfg.auth.admin_key}"}

    def start_broker(self) -> None:
        self.broker = broker.start_embedded(self.cfg.kafka.broker_port, self.home / "logs" / "broker.log")
        broker.ensure_topics(self.cfg.kafka)

    def stop_broker(self) -> None:
        self.broker.kill()
        self.broker.wait()

    def _spawn(self, name: str) -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.out", "ab")  # noqa: SIM115
        return subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", name], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start_controller(self) -> None:
        self.controller = self._spawn("controller")
        self._wait_started("controller", self.cfg.controller_url, self.controller)

    def start_gateway(self) -> None:
        self.gateway = self._spawn("gateway")
        self._wait_started("gateway", self.cfg.gateway_url, self.gateway)

    def _wait_started(self, name: str, url: str, proc: subprocess.Popen) -> None:
        try:
            wait_http(url + "/healthz", proc)
        except (RuntimeError, TimeoutError) as e:
            # A start that fails in CI must say why: the process's own log is the only witness.
            raise RuntimeError(f"{name} did not start ({e}); its log ends:\n{self.log_tail(name)}") from e

    def start(self) -> Stack:
        self.start_broker()
        self.start_controller()
        self.start_gateway()
        return self

    def kill(self, proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def drain(self, timeout: float = 60) -> dict:
        r = httpx.post(self.cfg.controller_url + "/admin/v1/drain", params={"timeout": timeout},
                       headers=self.admin_headers, timeout=timeout + 10)
        r.raise_for_status()
        return r.json()["counts"]

    def stop(self) -> None:
        self.kill(self.gateway, signal.SIGTERM)
        self.kill(self.controller, signal.SIGTERM)
        if self.broker is not None and self.broker.poll() is None:
            self.stop_broker()

    def log_tail(self, name: str, n: int = 40) -> str:
        path = Path(self.home / "logs" / f"{name}.out")
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture
def stack(kaizen_env):
    s = Stack(kaizen_env)
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once per test session (slow tests only:
    ~30 s and ~540 MB)."""
    from kaizenlm.base.embedded import convert_embedded

    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    convert_embedded(out)
    return out
