"""Registry: content-addressed versions, aliases + history + rollback, lineage, tainting,
the admin API (FastAPI TestClient and a real local server), and `kaizen registry`."""

from __future__ import annotations

import json
import threading
import time

import duckdb
import pytest
import uvicorn
from conftest import free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kaizenlm import config as config_mod
from kaizenlm.cli import main
from kaizenlm.ingest.store import connect
from kaizenlm.registry import aliases as al
from kaizenlm.registry import versions as vs
from kaizenlm.registry.api import router
from kaizenlm.registry.artifacts import hash_dir
from kaizenlm.registry.client import RegistryClient
from kaizenlm.registry.errors import Conflict, NotFound, RegistryError
from kaizenlm.registry.lineage import lineage, model_dirs, version_lookup


def make_dir(path, files: dict[str, bytes]):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def con(tmp_path):
    c = connect(tmp_path / "kaizen.duckdb")
    yield c
    c.close()


def register(con, home, kind="adapter", content=b"w1", **kw) -> vs.Version:
    src = make_dir(home / "src" / f"{kind}-{len(vs.list_versions(con))}", {"weights.bin": content})
    return vs.register_version(con, kind, src, home, **kw)


def add_snapshot(con, snapshot_id, content_hash, since, until):
    con.execute(
        "INSERT INTO dataset_snapshots (snapshot_id, content_hash, created_at, since, until, as_of, path, counts, "
        "manifest) VALUES (?, ?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?, ?, '{}')",
        [snapshot_id, content_hash, until, since, until, until, f"/snapshots/{snapshot_id}", json.dumps({"turns": 7})],
    )


# ------------------------------------------------------------------ versions


def test_register_content_addressed_same_content_same_dir(con, tmp_path):
    a = register(con, tmp_path, "base", b"same")
    b = register(con, tmp_path, "adapter", b"same", parent_id=a.version_id, config={"lr": 1e-4},
                 snapshot_id="snap-1", snapshot_hash="h1", metrics={"exam": 0.5})
    c = register(con, tmp_path, "adapter", b"different", parent_id=b.version_id)
    assert (a.version_id, b.version_id, c.version_id) == ("base-0001", "adapter-0001", "adapter-0002")
    assert a.artifact_dir == b.artifact_dir != c.artifact_dir
    assert a.artifact_dir == str(tmp_path / "artifacts" / a.artifact_hash)
    assert (tmp_path / "artifacts" / a.artifact_hash / "weights.bin").read_bytes() == b"same"
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == sorted({a.artifact_hash, c.artifact_hash})
    got = vs.get_version(con, "adapter-0001")
    assert (got.kind, got.parent_id, got.config, got.metrics, got.snapshot_id, got.snapshot_hash, got.status) == (
        "adapter", "base-0001", {"lr": 1e-4}, {"exam": 0.5}, "snap-1", "h1", "candidate")
    assert [v.version_id for v in vs.list_versions(con, kind="adapter")] == ["adapter-0001", "adapter-0002"]


def test_hash_dir_depends_on_names_and_content_only(tmp_path):
    one = make_dir(tmp_path / "one", {"a.bin": b"x", "sub/b.txt": b"y"})
    two = make_dir(tmp_path / "two", {"sub/b.txt": b"y", "a.bin": b"x"})
    renamed = make_dir(tmp_path / "three", {"c.bin": b"x", "sub/b.txt": b"y"})
    assert hash_dir(one) == hash_dir(two) != hash_dir(renamed)


def test_register_move_renames_source_and_copy_keeps_it(con, tmp_path):
    kept = make_dir(tmp_path / "kept", {"f": b"1"})
    moved = make_dir(tmp_path / "moved", {"f": b"2"})
    vs.register_version(con, "knowledge", kept, tmp_path)
    v = vs.register_version(con, "knowledge", moved, tmp_path, move=True)
    assert kept.is_dir() and not moved.exists()
    assert (tmp_path / "artifacts" / v.artifact_hash / "f").read_bytes() == b"2"
    assert not list((tmp_path / "artifacts").glob(".incoming-*"))


def test_register_rejects_bad_input_and_leaves_registry_unchanged(con, tmp_path):
    src = make_dir(tmp_path / "src", {"f": b"1"})
    with pytest.raises(RegistryError, match="unknown version kind 'lora'"):
        vs.register_version(con, "lora", src, tmp_path)
    with pytest.raises(NotFound, match="no version 'base-0042'"):
        vs.register_version(con, "adapter", src, tmp_path, parent_id="base-0042")
    with pytest.raises(RegistryError, match="unknown status"):
        vs.register_version(con, "adapter", src, tmp_path, status="great")
    assert vs.list_versions(con) == []
    assert not (tmp_path / "artifacts").exists()


def test_set_metrics_merges_and_set_status(con, tmp_path):
    v = register(con, tmp_path, metrics={"exam": 0.5, "refusal": 0.9})
    assert vs.set_metrics(con, v.version_id, {"exam": 0.7}).metrics == {"exam": 0.7, "refusal": 0.9}
    assert vs.set_metrics(con, v.version_id, {"exam": 0.1}, merge=False).metrics == {"exam": 0.1}
    updated = vs.set_status(con, v.version_id, "rejected", note="lost A/B")
    assert (updated.status, updated.note) == ("rejected", "lost A/B")
    assert [x.version_id for x in vs.list_versions(con, status="rejected")] == [v.version_id]


# ------------------------------------------------------------------ aliases


def three_versions(con, home) -> list[str]:
    return [register(con, home, content=bytes([i])).version_id for i in range(3)]


def test_set_alias_records_history(con, tmp_path):
    a, b, _ = three_versions(con, tmp_path)
    first = al.set_alias(con, "champion", a, reason="bootstrap", actor="test")
    second = al.set_alias(con, "champion", b, reason="won A/B", actor="abtest")
    assert al.get_alias(con, "champion") == b and al.get_alias(con, "nope") is None
    assert [(m.from_version, m.to_version, m.action, m.reason, m.actor) for m in al.alias_history(con, "champion")] == [
        (None, a, "set", "bootstrap", "test"), (a, b, "set", "won A/B", "abtest")]
    assert second.seq > first.seq
    assert al.aliases_of(con, b) == ["champion"]
    with pytest.raises(Conflict, match="already points at"):
        al.set_alias(con, "champion", b)
    with pytest.raises(RegistryError, match="invalid alias name"):
        al.set_alias(con, "Champion!", a)


def test_double_rollback_goes_further_back(con, tmp_path):
    a, b, c = three_versions(con, tmp_path)
    for v in (a, b, c):
        al.set_alias(con, "champion", v)
    first = al.rollback_alias(con, "champion", reason="guardrail breach")
    assert (first.from_version, first.to_version, first.action, first.undoes) == (c, b, "rollback", 3)
    second = al.rollback_alias(con, "champion")
    assert (second.from_version, second.to_version, second.undoes) == (b, a, 2)
    assert al.get_alias(con, "champion") == a
    with pytest.raises(Conflict, match="no earlier version"):
        al.rollback_alias(con, "champion")
    assert [m.action for m in al.alias_history(con, "champion")] == ["set", "set", "set", "rollback", "rollback"]


def test_rollback_to_a_named_earlier_version_in_one_step(con, tmp_path):
    a, b, c = three_versions(con, tmp_path)
    for v in (a, b, c):
        al.set_alias(con, "champion", v)
    move = al.rollback_alias(con, "champion", to_version=a)
    assert (move.from_version, move.to_version, move.undoes) == (c, a, 2)
    assert len(al.alias_history(con, "champion")) == 4
    with pytest.raises(Conflict, match="no earlier version"):  # b and c were both undone
        al.rollback_alias(con, "champion")


def test_rollback_to_rejects_versions_not_on_the_chain(con, tmp_path):
    a, b, c = three_versions(con, tmp_path)
    al.set_alias(con, "champion", a)
    al.set_alias(con, "champion", b)
    with pytest.raises(Conflict, match=f"'{c}' is not an earlier version of alias 'champion' \\(earlier: {a}\\)"):
        al.rollback_alias(con, "champion", to_version=c)
    with pytest.raises(Conflict, match="already points at"):
        al.rollback_alias(con, "champion", to_version=b)
    with pytest.raises(NotFound, match="no alias 'challenger'"):
        al.rollback_alias(con, "challenger")
    assert al.get_alias(con, "champion") == b


def test_new_set_after_rollback_restarts_the_chain(con, tmp_path):
    a, b, c = three_versions(con, tmp_path)
    al.set_alias(con, "champion", a)
    al.set_alias(con, "champion", b)
    al.rollback_alias(con, "champion")  # b -> a
    al.set_alias(con, "champion", c)  # a -> c
    assert al.rollback_alias(con, "champion").to_version == a  # undoes the set of c
    with pytest.raises(Conflict):  # b's promotion was undone already; nothing before a
        al.rollback_alias(con, "champion")


def test_aliases_are_independent(con, tmp_path):
    a, b, c = three_versions(con, tmp_path)
    al.set_alias(con, "champion", a)
    al.set_alias(con, "challenger", b)
    al.set_alias(con, "challenger", c)
    al.set_alias(con, "champion", b)
    assert al.rollback_alias(con, "challenger").to_version == b
    assert al.list_aliases(con) == {"champion": b, "challenger": b}


# ------------------------------------------------------------------ lineage and tainting


def lineage_fixture(con, home):
    add_snapshot(con, "snap-1", "h1", "2025-01-01 00:00:00+00", "2025-02-01 00:00:00+00")
    add_snapshot(con, "snap-2", "h2-rebuilt", "2025-02-01 00:00:00+00", "2025-03-01 00:00:00+00")
    base = register(con, home, "base", b"base")
    one = register(con, home, "adapter", b"one", parent_id=base.version_id, snapshot_id="snap-1", snapshot_hash="h1")
    two = register(con, home, "adapter", b"two", parent_id=one.version_id, snapshot_id="snap-2", snapshot_hash="h2")
    other = register(con, home, "knowledge", b"kb", snapshot_id="snap-3", snapshot_hash="h3")
    return base, one, two, other


def test_lineage_walks_parents_snapshots_and_windows(con, tmp_path):
    base, one, two, other = lineage_fixture(con, tmp_path)
    al.set_alias(con, "champion", one.version_id)
    result = lineage(con, two.version_id)
    assert [link["version"]["version_id"] for link in result["chain"]] == ["adapter-0002", "adapter-0001", "base-0001"]
    assert [link["snapshot_verified"] for link in result["chain"]] == [False, True, None]
    assert result["chain"][1]["aliases"] == ["champion"]
    assert result["chain"][1]["snapshot"]["counts"] == {"turns": 7}
    assert result["source_windows"] == [
        {"version_id": "adapter-0002", "snapshot_id": "snap-2", "since": "2025-02-01T00:00:00+00:00",
         "until": "2025-03-01T00:00:00+00:00", "as_of": "2025-03-01T00:00:00+00:00", "snapshot_found": True},
        {"version_id": "adapter-0001", "snapshot_id": "snap-1", "since": "2025-01-01T00:00:00+00:00",
         "until": "2025-02-01T00:00:00+00:00", "as_of": "2025-02-01T00:00:00+00:00", "snapshot_found": True},
    ]
    missing = lineage(con, other.version_id)
    assert missing["chain"][0]["snapshot"] is None
    assert missing["source_windows"][0]["snapshot_found"] is False
    with pytest.raises(NotFound):
        lineage(con, "adapter-0099")


def test_model_dirs_walks_adapters_to_their_base(con, tmp_path):
    base = vs.register_version(con, "base", make_dir(tmp_path / "b", {"model/config.json": b"{}"}), tmp_path)
    first = vs.register_version(con, "adapter", make_dir(tmp_path / "a1", {"adapter_config.json": b"1"}), tmp_path,
                                parent_id=base.version_id)
    second = vs.register_version(con, "adapter", make_dir(tmp_path / "a2", {"adapter/adapter_config.json": b"2"}),
                                 tmp_path, parent_id=first.version_id)
    lookup = version_lookup(con)
    base_model = f"{base.artifact_dir}/model"
    assert model_dirs(base.to_dict(), lookup) == (base_model, None)
    assert model_dirs(first.to_dict(), lookup) == (base_model, first.artifact_dir)
    assert model_dirs(second.to_dict(), lookup) == (base_model, f"{second.artifact_dir}/adapter")
    # No base in the lineage: the base path lora_sft recorded, else None for the caller to report.
    orphan = {"kind": "adapter", "artifact_dir": first.artifact_dir, "parent_id": "adapter-0099", "config": {}}
    assert model_dirs(orphan, lookup) == (None, first.artifact_dir)
    orphan["config"] = {"base": base.artifact_dir}
    assert model_dirs(orphan, lookup) == (base_model, first.artifact_dir)


def test_mark_tainted_marks_descendants_and_blocks_aliases(con, tmp_path):
    base, one, two, other = lineage_fixture(con, tmp_path)
    assert vs.mark_tainted(con, ["snap-1"]) == ["adapter-0001", "adapter-0002"]
    assert {v.version_id: v.tainted for v in vs.list_versions(con)} == {
        "base-0001": False, "adapter-0001": True, "adapter-0002": True, "knowledge-0001": False}
    assert vs.mark_tainted(con, ["snap-unknown"]) == []
    with pytest.raises(Conflict, match="tainted"):
        al.set_alias(con, "champion", two.version_id)
    al.set_alias(con, "champion", base.version_id)
    assert al.get_alias(con, "champion") == base.version_id


def test_mark_tainted_joins_the_callers_transaction(con, tmp_path):
    lineage_fixture(con, tmp_path)
    con.execute("BEGIN TRANSACTION")
    assert vs.mark_tainted(con, ["snap-3"]) == ["knowledge-0001"]
    con.execute("ROLLBACK")  # e.g. the caller's forget-user deletion failed
    assert vs.get_version(con, "knowledge-0001").tainted is False


def test_rollback_refuses_a_tainted_target(con, tmp_path):
    base, one, two, _ = lineage_fixture(con, tmp_path)
    al.set_alias(con, "champion", one.version_id)
    al.set_alias(con, "champion", base.version_id)
    vs.mark_tainted(con, ["snap-1"])
    with pytest.raises(Conflict, match="tainted"):
        al.rollback_alias(con, "champion")
    assert al.get_alias(con, "champion") == base.version_id


# ------------------------------------------------------------------ admin API


def make_app(db_path, cfg) -> tuple[FastAPI, list[dict]]:
    app = FastAPI()
    app.state.db = duckdb.connect(str(db_path))
    app.state.cfg = cfg
    moves: list[dict] = []
    app.state.on_alias_moved = moves.append
    app.include_router(router)
    app.get("/healthz")(lambda: {"ok": True})
    return app, moves


def test_api_requires_the_admin_key(con, tmp_path):
    con.close()
    app, _ = make_app(tmp_path / "kaizen.duckdb", config_mod.Config())
    client = TestClient(app)
    assert client.get("/admin/v1/registry/versions").status_code == 401
    wrong = client.get("/admin/v1/registry/versions", headers={"Authorization": "Bearer kz-ingest-dev"})
    assert wrong.status_code == 403 and "auth.admin_key" in wrong.json()["detail"]  # a key without 'admin'
    unknown = client.get("/admin/v1/registry/versions", headers={"Authorization": "Bearer not-a-key"})
    assert unknown.status_code == 401 and "auth.admin_key" in unknown.json()["detail"]
    ok = client.get("/admin/v1/registry/versions", headers={"Authorization": "Bearer kz-admin-dev"})
    assert ok.status_code == 200 and ok.json() == {"versions": []}


def test_api_register_promote_rollback_and_errors(con, tmp_path):
    a, b, _ = three_versions(con, tmp_path)
    con.close()
    cfg = config_mod.Config(paths=config_mod.PathsConfig(home=str(tmp_path)))
    app, moves = make_app(tmp_path / "kaizen.duckdb", cfg)
    client = TestClient(app, headers={"Authorization": "Bearer kz-admin-dev"})
    api = "/admin/v1/registry"
    src = make_dir(tmp_path / "new-index", {"index.faiss": b"idx"})
    created = client.post(f"{api}/versions", json={"kind": "knowledge", "artifact_src_dir": str(src),
                                                   "metrics": {"coverage": 0.9}})
    assert created.status_code == 201
    assert (created.json()["version_id"], created.json()["metrics"]) == ("knowledge-0001", {"coverage": 0.9})
    assert client.post(f"{api}/aliases/champion", json={"version_id": a}).json()["to_version"] == a
    promoted = client.post(f"{api}/aliases/champion", json={"version_id": b, "reason": "won"}).json()
    assert (promoted["from_version"], promoted["to_version"], promoted["actor"]) == (a, b, "admin-api")
    rolled = client.post(f"{api}/aliases/champion/rollback", json={"reason": "breach"}).json()
    assert (rolled["action"], rolled["to_version"]) == ("rollback", a)
    assert [m["to_version"] for m in moves] == [a, b, a]
    assert client.get(f"{api}/aliases").json() == {"aliases": {"champion": a}}
    assert [m["action"] for m in client.get(f"{api}/aliases/champion/history").json()["history"]] == [
        "set", "set", "rollback"]
    assert client.get(f"{api}/versions/{a}").json()["aliases"] == ["champion"]
    status = client.post(f"{api}/versions/{b}/status", json={"status": "rejected", "note": "rolled back"}).json()
    assert status["status"] == "rejected"
    assert client.post(f"{api}/versions/{b}/metrics", json={"metrics": {"exam": 1}}).json()["metrics"] == {"exam": 1}
    assert client.get(f"{api}/versions/{b}/lineage").json()["version_id"] == b
    assert client.post(f"{api}/taint", json={"snapshot_ids": ["none"]}).json() == {"tainted": []}
    # errors: unknown id 404, refused move 409, bad value 400
    missing = client.get(f"{api}/versions/adapter-0404")
    assert missing.status_code == 404 and "kaizen registry list" in missing.json()["detail"]
    assert client.post(f"{api}/aliases/champion/rollback", json={}).status_code == 409
    assert client.post(f"{api}/versions/{a}/status", json={"status": "great"}).status_code == 400
    assert client.get(f"{api}/versions", params={"kind": "lora"}).status_code == 400
    assert len(moves) == 3  # refused moves announce nothing


# ------------------------------------------------------------------ CLI and client


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    """KAIZEN_HOME with three adapters; the controller port points at nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAIZEN_CONTROLLER_PORT", str(free_port()))
    home = tmp_path / "home"
    c = connect(home / "kaizen.duckdb")
    add_snapshot(c, "snap-1", "h1", "2025-01-01 00:00:00+00", "2025-02-01 00:00:00+00")
    base = register(c, home, "base", b"b")
    register(c, home, "adapter", b"1", parent_id=base.version_id, snapshot_id="snap-1", snapshot_hash="h1",
             metrics={"exam": 0.6})
    register(c, home, "adapter", b"2", parent_id="adapter-0001", snapshot_id="snap-1", snapshot_hash="h1")
    c.close()
    return home


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_show_lineage_json(cli_home, capsys):
    code, out, _ = run_cli(capsys, "registry", "list", "--json")
    assert code == 0
    assert [(v["version_id"], v["parent_id"]) for v in json.loads(out)["versions"]] == [
        ("base-0001", None), ("adapter-0001", "base-0001"), ("adapter-0002", "adapter-0001")]
    code, out, _ = run_cli(capsys, "registry", "list", "--kind", "base", "--json")
    assert [v["version_id"] for v in json.loads(out)["versions"]] == ["base-0001"]
    code, out, _ = run_cli(capsys, "registry", "show", "adapter-0001", "--json")
    shown = json.loads(out)
    assert (code, shown["metrics"], shown["snapshot_id"], shown["aliases"]) == (0, {"exam": 0.6}, "snap-1", [])
    code, out, _ = run_cli(capsys, "registry", "lineage", "adapter-0002", "--json")
    result = json.loads(out)
    assert [link["version"]["version_id"] for link in result["chain"]] == ["adapter-0002", "adapter-0001", "base-0001"]
    assert result["source_windows"][0]["since"] == "2025-01-01T00:00:00+00:00"
    code, out, _ = run_cli(capsys, "registry", "lineage", "adapter-0002")
    assert code == 0 and "window:   2025-01-01T00:00:00+00:00 .. 2025-02-01T00:00:00+00:00" in out


def test_cli_promote_tag_history(cli_home, capsys):
    code, out, _ = run_cli(capsys, "registry", "promote", "adapter-0001", "--reason", "first", "--json")
    move = json.loads(out)
    assert (code, move["alias"], move["from_version"], move["to_version"], move["reason"]) == (
        0, "champion", None, "adapter-0001", "first")
    assert move["actor"].startswith("cli")
    code, out, _ = run_cli(capsys, "registry", "tag", "adapter-0002", "challenger")
    assert code == 0 and out.startswith("challenger: (unset) -> adapter-0002")
    run_cli(capsys, "registry", "promote", "adapter-0002")
    code, out, _ = run_cli(capsys, "registry", "history", "champion", "--json")
    assert [(m["from_version"], m["to_version"]) for m in json.loads(out)["history"]] == [
        (None, "adapter-0001"), ("adapter-0001", "adapter-0002")]
    code, out, _ = run_cli(capsys, "registry", "list")
    assert code == 0 and "adapter-0002" in out and "challenger,champion" in out


def test_cli_bad_id_exits_2_with_next_step(cli_home, capsys):
    code, out, err = run_cli(capsys, "registry", "show", "adapter-0404", "--json")
    assert (code, out) == (2, "")
    assert "no version 'adapter-0404'" in err and "kaizen registry list" in err
    code, _, err = run_cli(capsys, "registry", "promote", "nope-1")
    assert code == 2 and "no version 'nope-1'" in err
    code, _, err = run_cli(capsys, "registry", "tag", "adapter-0001", "Bad Alias")
    assert code == 2 and "invalid alias name" in err


def test_client_goes_through_a_running_controller(tmp_path, monkeypatch):
    home = tmp_path / "home"
    c = connect(home / "kaizen.duckdb")
    register(c, home, "adapter", b"x")
    c.close()
    port = free_port()
    cfg = config_mod.Config(paths=config_mod.PathsConfig(home=str(home)),
                            controller=config_mod.ControllerConfig(port=port))
    app, moves = make_app(home / "kaizen.duckdb", cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        client = RegistryClient(cfg)
        assert client.via == "controller"
        assert client.set_alias("champion", "adapter-0001", reason="via api")["to_version"] == "adapter-0001"
        assert moves and moves[0]["reason"] == "via api"  # the controller's hook saw the move
        assert [v["aliases"] for v in client.list_versions()] == [["champion"]]
        with pytest.raises(NotFound, match="no version 'adapter-0404'"):
            client.show("adapter-0404")
        with pytest.raises(Conflict, match="no earlier version"):
            client.rollback_alias("champion")
        bad = RegistryClient(config_mod.Config(
            paths=cfg.paths, controller=cfg.controller, auth=config_mod.AuthConfig(admin_key="wrong-key-123")))
        with pytest.raises(RegistryError, match="refused the admin key"):
            bad.list_aliases()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_client_on_an_open_connection_runs_in_process(con, tmp_path):
    a = register(con, tmp_path, "adapter", b"x").version_id
    client = RegistryClient(config_mod.Config(paths=config_mod.PathsConfig(home=str(tmp_path))), con=con)
    assert client.via == "connection"
    assert client.set_alias("champion", a)["to_version"] == a
    assert client.list_aliases() == {"champion": a}
    assert client.mark_tainted(["none"]) == []
