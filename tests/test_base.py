"""The base model: a fresh install serves chat at once (the controller registers the configured
base as the first champion), `kaizen registry register base PATH` brings a user's own model,
and `kaizen base build` converts the embedded SmolLM2 once (slow: ~1 GB, a minute)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from conftest import Stack
from serving_helpers import build_tiny_model

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.registry.artifacts import hash_dir
from kaizenlm.registry.client import RegistryClient

pytestmark = pytest.mark.integration


def _champion(stack: Stack) -> str | None:
    r = httpx.get(stack.cfg.controller_url + "/admin/v1/registry/aliases", headers=stack.admin_headers, timeout=10)
    return r.json()["aliases"].get("champion")


def test_a_fresh_install_registers_its_base_and_serves_chat(kaizen_env, tmp_path, monkeypatch):
    base = build_tiny_model(tmp_path / "my-model")
    kaizen_env.update({"KAIZEN_REGISTER_BASE": "true", "KAIZEN_BASE_PATH": str(base)})
    stack = Stack(kaizen_env)
    stack.start_broker()
    stack.start_controller()
    try:
        deadline = time.monotonic() + 120
        while _champion(stack) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        champion = _champion(stack)
        assert champion == "base-0001"
        version = RegistryClient(stack.cfg).show(champion)
        assert version["kind"] == "base" and version["status"] == "promoted"
        assert version["config"]["base_path"] == str(base)
        assert hash_dir(Path(version["artifact_dir"])) == version["artifact_hash"]
        stack.start_gateway()
        r = httpx.post(stack.cfg.gateway_url + "/v1/chat/completions", headers=stack.ingest_headers, timeout=120,
                       json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == champion and r.json()["turn_id"]
        history = httpx.get(stack.cfg.controller_url + "/admin/v1/registry/aliases/champion/history",
                            headers=stack.admin_headers, timeout=10).json()["history"]
        assert [(m["to_version"], m["actor"]) for m in history] == [(champion, "controller")]
    finally:
        stack.stop()


def test_chat_before_any_champion_says_the_base_is_being_prepared(stack):
    r = httpx.post(stack.cfg.gateway_url + "/v1/chat/completions", headers=stack.ingest_headers, timeout=30,
                   json={"messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "no 'champion' yet" in r.json()["error"]["message"] and "kaizen base build" in r.json()["error"]["message"]


def test_registry_register_base_brings_a_users_own_model(kaizen_env, tmp_path, capsys):
    base = build_tiny_model(tmp_path / "my-model")
    assert main(["registry", "register", "base", str(base), "--champion", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"]["version_id"] == "base-0001" and result["move"]["to_version"] == "base-0001"
    client = RegistryClient(config_mod.load())
    assert client.list_aliases() == {"champion": "base-0001"}
    assert main(["registry", "register", "base", str(tmp_path / "nothing-here")]) == 2
    assert "holds no Hugging Face model (no config.json)" in capsys.readouterr().err
    assert [v["version_id"] for v in client.list_versions()] == ["base-0001"]  # nothing stored on the error


@pytest.mark.slow
def test_base_build_converts_the_embedded_model_once_and_registers_it(kaizen_env, capsys):
    assert main(["base", "build", "--no-answers", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    base = Path(report["base_dir"])
    marker = report["converted"]
    assert marker["name"] == "SmolLM2-135M-Instruct" and 134_000_000 < marker["parameters"] < 135_000_000
    assert {"config.json", "model.safetensors", "tokenizer.json", "kaizen_base.json"} <= {p.name for p in base.iterdir()}
    assert "im_start" in (base / "chat_template.jinja").read_text()
    (base / "kaizen_base.json").rename(base.parent / "marker.json")  # the hash covers everything but the marker
    assert hash_dir(base) == marker["content_hash"]
    (base.parent / "marker.json").rename(base / "kaizen_base.json")
    assert report["registered"]["to_version"] == "base-0001"
    assert main(["base", "build", "--no-answers", "--json"]) == 0  # a second build converts nothing, registers nothing
    again = json.loads(capsys.readouterr().out)
    assert "converted" not in again and again["registered"] is None
    assert main(["base", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["marker"]["content_hash"] == marker["content_hash"]
