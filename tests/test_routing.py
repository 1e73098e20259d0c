"""Routing: sticky assignment, the routing state, and the control topic with a real broker
(publisher -> follower, newest wins, a late follower reads the latest, a late gateway too)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import httpx
import pytest
from conftest import free_port, wait_http
from serving_helpers import promote, register_base, wait_gateway

from kaizenlm import config as config_mod
from kaizenlm.abtest.routing import (
    ExperimentRoute,
    KnowledgeTarget,
    RoutingFollower,
    RoutingPublisher,
    RoutingState,
    Target,
    UnknownModel,
    assign_arm,
    publish_routing,
)
from kaizenlm.ingest import broker

pytestmark = pytest.mark.integration  # a real broker and stack

# --------------------------------------------------------------------------------------
# assignment and routing decisions (pure)
# --------------------------------------------------------------------------------------


def test_assignment_is_sticky_and_follows_the_split():
    users = [f"user-{i}" for i in range(20000)]
    arms = [assign_arm("exp-0001", u, 0.2) for u in users]
    assert arms == [assign_arm("exp-0001", u, 0.2) for u in users]  # same answer every time
    share = arms.count("challenger") / len(users)
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / len(users)) ** 0.5  # within 4 standard errors
    # Another experiment reshuffles: about half of the users change arm at a 50/50 split.
    a = [assign_arm("exp-0001", u, 0.5) for u in users]
    b = [assign_arm("exp-0002", u, 0.5) for u in users]
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(users)
    assert 0.47 < same < 0.53
    # Growing the split only moves champion users to the challenger, never back.
    small = [assign_arm("exp-0001", u, 0.1) for u in users[:2000]]
    big = [assign_arm("exp-0001", u, 0.3) for u in users[:2000]]
    assert all(y == "challenger" for x, y in zip(small, big, strict=True) if x == "challenger")


def state_with_experiment() -> RoutingState:
    targets = {v: Target(v, "base", None, None, v) for v in ("base-0001", "base-0002", "base-0003")}
    return RoutingState(7, {"champion": "base-0001", "staging": "base-0003"},
                        (ExperimentRoute("exp-0001", "champion", "base-0001", "base-0002", 0.5),), targets, 1.0)


def test_route_resolves_aliases_experiments_and_versions():
    state = state_with_experiment()
    for user in ("alice", "bob", "carol", "dave"):
        route = state.route("champion", user)
        arm = assign_arm("exp-0001", user, 0.5)
        assert route.variant == arm and route.experiment_id == "exp-0001"
        assert route.version_id == ("base-0002" if arm == "challenger" else "base-0001")
    staging = state.route("staging", "alice")
    assert (staging.version_id, staging.variant, staging.experiment_id) == ("base-0003", None, None)
    direct = state.route("base-0002", "alice")
    assert (direct.version_id, direct.alias) == ("base-0002", None)
    with pytest.raises(UnknownModel, match="neither an alias"):
        state.route("gpt-4", "alice")


def test_state_json_roundtrip():
    state = state_with_experiment()
    assert RoutingState.from_json(state.to_json()) == state
    with_knowledge = dataclasses.replace(state, knowledge=KnowledgeTarget("knowledge-0002", "/kb/v2"))
    back = RoutingState.from_json(with_knowledge.to_json())
    assert back == with_knowledge and back.knowledge.artifact_dir == "/kb/v2"
    assert not back.same_content(state)  # a knowledge move is a new routing version


# --------------------------------------------------------------------------------------
# the control topic, with the real embedded broker
# --------------------------------------------------------------------------------------


@pytest.fixture
def kafka_cfg(tmp_path):
    cfg = config_mod.from_dict({"paths": {"home": str(tmp_path / "home")},
                                "kafka": {"broker_port": free_port()}})
    proc = broker.start_embedded(cfg.kafka.broker_port, tmp_path / "broker.log")
    try:
        broker.ensure_topics(cfg.kafka)
        yield cfg
    finally:
        proc.kill()
        proc.wait()


def simple_state(champion: str) -> RoutingState:
    return RoutingState(0, {"champion": champion}, (), {champion: Target(champion, "base", None, None, champion)})


@pytest.mark.integration
def test_follower_started_late_reads_latest_and_follows_changes_within_a_second(kafka_cfg):
    publisher = RoutingPublisher(kafka_cfg)
    try:
        versions = [publisher.publish(simple_state(f"base-000{i}")).version for i in range(1, 4)]
        assert versions == sorted(versions) and len(set(versions)) == 3
        same = publisher.publish(simple_state("base-0003"))  # unchanged content keeps its version
        assert same.version == versions[-1]
        follower = RoutingFollower(kafka_cfg).start()
        try:
            assert follower.wait_version(versions[-1], timeout=15)
            assert follower.state.aliases == {"champion": "base-0003"}
            latencies = []
            for i in range(4, 7):
                t0 = time.monotonic()
                new = publisher.publish(simple_state(f"base-000{i}"))
                assert follower.wait_version(new.version, timeout=5)
                latencies.append(time.monotonic() - t0)
                assert follower.state.aliases["champion"] == f"base-000{i}"
            assert max(latencies) < 1.0, latencies
            # An older version (e.g. a stale publisher) never replaces a newer state.
            publish_routing(kafka_cfg, RoutingState(5, {"champion": "base-0001"}, (), {}))
            time.sleep(0.5)
            assert follower.state.aliases["champion"] == "base-0006"
        finally:
            follower.stop()
    finally:
        publisher.close()


@pytest.mark.integration
def test_late_gateway_reads_latest_routing(stack):
    v1 = register_base(stack)
    promote(stack, v1)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == v1)
    # A second gateway that starts after the change gets it from the compacted topic at once.
    port = free_port()
    env = {**stack.env, "KAIZEN_GATEWAY_PORT": str(port)}
    log = open(stack.home / "logs" / "gateway2.out", "ab")  # noqa: SIM115
    late = subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", "gateway"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", late)
        routing = wait_gateway(stack, lambda r: r["aliases"].get("champion") == v1, timeout=10, url=url)
        assert routing["version"] == httpx.get(stack.cfg.controller_url + "/admin/v1/routing",
                                               headers=stack.admin_headers).json()["version"]
    finally:
        late.terminate()
        late.wait(30)
        log.close()


@pytest.mark.integration
@pytest.mark.slow
def test_controller_restart_republishes_routing_written_without_it(stack):
    """Changes made while no controller runs (CLI on DuckDB) reach gateways when it starts."""
    v1 = register_base(stack, "a")
    v2 = register_base(stack, "b")
    promote(stack, v1)
    promote(stack, v2)
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == v2)
    stack.kill(stack.controller, 15)
    out = subprocess.run([sys.executable, "-m", "kaizenlm.cli", "rollback", "--reason", "offline"],
                         env=stack.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "routing will be published when it starts" in out.stdout
    assert wait_gateway(stack, lambda r: True)["aliases"]["champion"] == v2  # nobody published yet
    stack.start_controller()
    wait_gateway(stack, lambda r: r["aliases"].get("champion") == v1, timeout=15)
