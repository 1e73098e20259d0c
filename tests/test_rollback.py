"""`kaizen rollback` under load: 200 requests/s through a real gateway (openai backend,
a real upstream server answering at once), a rollback from the CLI in the middle; no
request fails and every request that starts more than 1 s after the rollback is served by
the restored version. Plus the CLI's refusals."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import serving_helpers
from serving_helpers import drain_until, open_loop, promote, register, wait_gateway

from kaizenlm.cli import main

pytestmark = pytest.mark.integration

openai_stack = serving_helpers.openai_stack  # a fixture: a stack serving through an echo upstream


def two_versions(stack) -> tuple[str, str]:
    """v1 then v2 promoted to champion: one rollback brings v1 back."""
    versions = []
    for content in ("one", "two"):
        src = stack.home / "src" / content
        src.mkdir(parents=True)
        (src / "weights.txt").write_text(content)
        versions.append(register(stack, "base", src))
    for v in versions:
        promote(stack, v)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == versions[1])
    return versions[0], versions[1]


@pytest.mark.slow
def test_rollback_under_200_rps_fails_nothing_and_switches_within_a_second(openai_stack, capsys):
    stack = openai_stack
    v1, v2 = two_versions(stack)
    results: list = []

    def body(i: int) -> dict:
        return {"model": "champion", "user": f"load-{i % 500}", "messages": [{"role": "user", "content": f"question {i}"}]}

    loader = threading.Thread(target=lambda: results.extend(asyncio.run(open_loop(
        stack.cfg.gateway_url, "/v1/chat/completions", body, stack.ingest_headers, 200, 8.0))))
    loader.start()
    time.sleep(3.0)
    rollback_started = time.monotonic()
    assert main(["rollback", "--reason", "bad answers", "--json"]) == 0
    rollback_done = time.monotonic()
    loader.join()
    out = json.loads(capsys.readouterr().out)
    assert out["move"]["from_version"] == v2 and out["move"]["to_version"] == v1
    assert out["move"]["action"] == "rollback" and out["move"]["reason"] == "bad answers"
    assert out["routing"]["published"] is True

    assert len(results) == 1600
    failures = [r for r in results if r[2] != 200]
    assert not failures, failures[:5]
    sent = sorted(r[0] for r in results)
    assert sent[-1] - sent[0] < 9.0  # the load really ran at about 200 requests/s
    version = [(r[0], r[3]["model_version"], r[3]["choices"][0]["message"]["content"]) for r in results]
    after = [v for v in version if v[0] > rollback_done + 1.0]
    assert len(after) > 500
    assert {v[1] for v in after} == {v1}
    assert all(text.startswith(f"[{v1}] question ") for _, _, text in after)  # v1 really answered
    before = [v for v in version if v[0] < rollback_started]
    assert before and {v[1] for v in before} == {v2}
    # When did the gateway switch? The last request that v2 answered was sent this long after the rollback began.
    last_v2 = max(t for t, v, _ in version if v == v2)
    took = rollback_done - rollback_started
    print(f"rollback call took {took:.3f}s; the last v2 answer was sent {last_v2 - rollback_started:.3f}s after it began")
    assert last_v2 - rollback_done < 1.0
    # The alias history has the rollback, and every answered request was logged exactly once.
    history = httpx.get(stack.cfg.controller_url + "/admin/v1/registry/aliases/champion/history",
                        headers=stack.admin_headers).json()["history"]
    assert [m["action"] for m in history] == ["set", "set", "rollback"]
    assert drain_until(stack, "turns", len(results)) == len(results)


def test_rollback_cli_refusals(openai_stack, capsys):
    stack = openai_stack
    assert main(["rollback"]) == 2  # champion was never set
    assert "no alias 'champion'" in capsys.readouterr().err
    v1, v2 = two_versions(stack)
    assert main(["rollback", "--to", "base-0099"]) == 2
    err = capsys.readouterr().err
    assert "not an earlier version" in err and "kaizen registry history champion" in err
    assert main(["rollback", "--to", v1]) == 0
    assert f"champion: {v2} -> {v1}" in capsys.readouterr().out
    wait_gateway(stack, lambda r: r["aliases"]["champion"] == v1)
    assert main(["rollback"]) == 2
    assert "no earlier version" in capsys.readouterr().err
