"""The annotation admin API in the controller app, and `kaizen annotate` through a running
controller: review keys act as their reviewer only and label only their items, the admin key
manages the queue and may name any reviewer, bad input is a 4xx naming the field with nothing
stored, blind pairs never show their versions, the Label Studio round trip over HTTP, and the
CLI on the same routes (exit 2 with the field on bad input)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from conftest import free_port
from fastapi.testclient import TestClient

from kaizenlm import auth
from kaizenlm import config as config_mod
from kaizenlm.annotate.client import AnnotateClient
from kaizenlm.cli import main
from kaizenlm.server.controller import create_app

ROWS = [{"turn_id": f"t{i}", "prompt": f"How do I do thing {i}?", "answer": f"Like this {i}.",
         "correction": f"Rather like that {i}.", "user_id": "u1"} for i in range(4)]
PAIR = {"prompt": "Which plan fits a team of five?", "candidates": [
    {"version": "adapter-0002", "answer": "The team plan."}, {"version": "base-0001", "answer": "Any plan."}]}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAIZEN_CONFIG", raising=False)
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAIZEN_CONTROLLER_PORT", str(free_port()))
    monkeypatch.setenv("KAIZEN_REGISTER_BASE", "false")
    return config_mod.load()


@pytest.fixture
def app(home):
    return create_app(home, start_sink=False)


def keys(home) -> dict[str, dict]:
    alice, _ = auth.create_key(home.keys_file, [auth.REVIEW], reviewer="alice")
    bob, _ = auth.create_key(home.keys_file, [auth.REVIEW], reviewer="bob")
    return {"admin": {"Authorization": f"Bearer {home.auth.admin_key}"},
            "alice": {"Authorization": f"Bearer {alice}"}, "bob": {"Authorization": f"Bearer {bob}"}}


def labels_stored(app) -> int:
    return app.state.db.execute("SELECT count(*) FROM review_labels").fetchone()[0]


def test_reviewers_and_the_admin_through_the_api(home, app):
    h = keys(home)
    with TestClient(app) as c:
        base = "/admin/v1/annotate"
        # queue management is the admin's
        assert c.post(f"{base}/items", json={"kind": "correction", "rows": ROWS}, headers=h["alice"]).status_code == 403
        r = c.post(f"{base}/items", json={"kind": "correction", "rows": [*ROWS, {"turn_id": "t9"}]}, headers=h["admin"])
        assert r.status_code == 400 and r.json()["detail"].startswith("rows[4].prompt: must be a non-empty string")
        assert c.get(f"{base}/queue", headers=h["admin"]).json()["items"] == 0  # nothing stored on error
        assert c.post(f"{base}/items", json={"kind": "correction", "rows": ROWS}, headers=h["admin"]).json()["added"] == 4
        assert c.post(f"{base}/items", json={"kind": "blind_pair", "rows": [PAIR]}, headers=h["admin"]).status_code == 200
        r = c.post(f"{base}/assign", json={"reviewers": ["alice", "bob"], "overlap": 1.0}, headers=h["admin"])
        assert r.status_code == 200 and r.json()["overlap_items"] == 5
        assert c.post(f"{base}/assign", json={"reviewers": ["x"], "overlap": 3}, headers=h["admin"]).json()[
            "detail"].startswith("overlap: must be in 0..1")
        status = c.get(f"{base}/queue", headers=h["alice"]).json()
        assert status["per_kind"]["correction"]["assigned"] == 4 and status["open_per_reviewer"] == {"alice": 5, "bob": 5}
        assert status["gate"]["open"] is False

        # a review key acts as its reviewer only
        nxt = c.get(f"{base}/next", headers=h["alice"]).json()
        assert nxt["reviewer"] == "alice" and nxt["item"]["remaining"] == 5
        r = c.get(f"{base}/next", params={"reviewer": "bob"}, headers=h["alice"])
        assert r.status_code == 403 and "belongs to 'alice'" in r.json()["detail"]
        assert c.get(f"{base}/next", params={"reviewer": "bob"}, headers=h["admin"]).json()["reviewer"] == "bob"
        item = nxt["item"]["item_id"]
        r = c.post(f"{base}/items/{item}/labels", json={"verdict": "maybe", "label": "correct"}, headers=h["alice"])
        assert r.status_code == 400 and r.json()["detail"].startswith("verdict: must be one of accept, edit, reject")
        r = c.post(f"{base}/items/{item}/labels", json={"verdict": "edit", "label": "wrong"}, headers=h["alice"])
        assert r.status_code == 400 and r.json()["detail"].startswith("gold_answer: verdict 'edit' needs")
        assert c.post(f"{base}/items/rv-nothing/labels", json={"verdict": "accept", "label": "correct"},
                      headers=h["alice"]).status_code == 404
        assert labels_stored(app) == 0
        r = c.post(f"{base}/items/{item}/labels", json={"verdict": "accept", "label": "correct", "reviewer": "bob"},
                   headers=h["alice"])
        assert r.status_code == 403 and labels_stored(app) == 0
        r = c.post(f"{base}/items/{item}/labels", json={"verdict": "accept", "label": "correct"}, headers=h["alice"])
        assert r.status_code == 200 and r.json()["reviewer"] == "alice" and r.json()["verdict"] == "accept"
        assert c.get(f"{base}/next", headers=h["alice"]).json()["item"]["remaining"] == 4

        # a reviewer labels only the items assigned to them; the admin may label any, as anyone
        c.post(f"{base}/items", json={"kind": "sample", "rows": [{**ROWS[0], "turn_id": "t-new"}]}, headers=h["admin"])
        assert c.get(f"{base}/items", headers=h["alice"]).status_code == 403  # who else has an item: the admin's
        new = c.get(f"{base}/items", params={"kind": "sample"}, headers=h["admin"]).json()["items"][0]["item_id"]
        r = c.post(f"{base}/items/{new}/labels", json={"verdict": "accept", "label": "correct"}, headers=h["alice"])
        assert r.status_code == 400 and r.json()["detail"] == f"reviewer: 'alice' is not assigned item {new}"
        r = c.post(f"{base}/items/{new}/labels", json={"verdict": "accept", "label": "correct", "reviewer": "carol"},
                   headers=h["admin"])
        assert r.status_code == 200 and r.json()["reviewer"] == "carol"

        # a blind pair: the reviewer sees A and B only; the verdict is resolved on the server
        pair = c.get(f"{base}/next", params={"kind": "blind_pair"}, headers=h["bob"]).json()["item"]
        assert set(pair) >= {"answer_a", "answer_b", "prompt"} and "adapter-0002" not in json.dumps(pair)
        r = c.post(f"{base}/items/{pair['item_id']}/labels", json={"verdict": "a"}, headers=h["bob"])
        assert r.status_code == 200 and "adapter-0002" not in r.text and "base-0001" not in r.text
        stored = app.state.db.execute("SELECT preferred_version FROM review_labels WHERE item_id = ?",
                                      [pair["item_id"]]).fetchone()[0]
        assert stored == ("adapter-0002" if pair["answer_a"] == "The team plan." else "base-0001")

        stats = c.get(f"{base}/stats", headers=h["bob"]).json()
        assert stats["label"]["labels"] == 2 and stats["gate"]["open"] is False
        assert c.get(f"{base}/stats", params={"min_kappa": 2}, headers=h["bob"]).status_code == 400

        # Label Studio round trip over HTTP (admin): the tasks hold no versions
        assert c.get(f"{base}/export", headers=h["alice"]).status_code == 403
        exported = c.get(f"{base}/export", headers=h["admin"]).json()
        assert len(exported["answers"]["tasks"]) == 5 and len(exported["blind_pairs"]["tasks"]) == 1
        assert "adapter-0002" not in json.dumps(exported) and '<Choices name="verdict"' in exported["answers"]["config"]
        tasks = exported["answers"]["tasks"]
        export = [{"id": n, "data": t["data"], "annotations": [{"id": 1, "completed_by": {"id": 7, "email": "x@y.z"},
                   "result": [{"from_name": "verdict", "to_name": "answer", "type": "choices",
                               "value": {"choices": ["reject"]}},
                              {"from_name": "label", "to_name": "answer", "type": "choices",
                               "value": {"choices": ["wrong"]}}]}]} for n, t in enumerate(tasks)]
        before = labels_stored(app)
        broken = json.loads(json.dumps(export))
        broken[-1]["annotations"][0]["result"][0]["value"]["choices"] = ["reject", "accept"]
        r = c.post(f"{base}/import", json=broken, headers=h["admin"])
        assert r.status_code == 400 and "verdict" in r.json()["detail"] and labels_stored(app) == before
        r = c.post(f"{base}/import", json=export, headers=h["admin"])
        assert r.status_code == 200 and r.json()["imported"] == 5 and r.json()["reviewers"] == ["label-studio:x@y.z"]
        assert labels_stored(app) == before + 5


@pytest.fixture
def served(home, app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=home.controller.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield app
    server.should_exit = True
    thread.join(timeout=15)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["annotate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_through_a_running_controller(home, served, tmp_path, capsys):
    assert AnnotateClient(home).via == "controller"
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    code, out, err = run(capsys, "queue", "add", "--from", "file", "--file", str(rows), "--kind", "correction",
                         "--json")
    assert code == 0 and json.loads(out)["added"] == 4, err
    code, out, err = run(capsys, "queue", "assign", "--reviewers", "alice,bob", "--overlap", "0.5")
    assert code == 0 and "assigned 4 item(s) (2 to 2+ reviewers)" in out, err
    code, out, _ = run(capsys, "queue", "next", "--reviewer", "alice", "--json")
    item = json.loads(out)["item"]
    code, _, err = run(capsys, "label", item["item_id"], "--reviewer", "alice", "--verdict", "edit", "--label",
                       "incomplete")
    assert code == 2 and "gold_answer: verdict 'edit' needs the corrected answer" in err
    assert served.state.db.execute("SELECT count(*) FROM review_labels").fetchone()[0] == 0
    code, out, err = run(capsys, "label", item["item_id"], "--reviewer", "alice", "--verdict", "edit", "--label",
                         "incomplete", "--gold-answer", "Do it like this instead.")
    assert code == 0 and f"labelled {item['item_id']} (correction) by alice: edit, incomplete" in out, err
    stored = served.state.db.execute("SELECT reviewer, gold_answer FROM review_labels").fetchall()
    assert stored == [("alice", "Do it like this instead.")]  # written by the controller, which holds the file
    code, out, _ = run(capsys, "stats", "--json")
    assert code == 0 and json.loads(out)["source"] == "controller" and json.loads(out)["label"]["labels"] == 1
    code, out, err = run(capsys, "queue", "sweep", "--until", "2025-01-13", "--json")
    assert code == 0 and json.loads(out)["batch"] == "weekly-2025-01-13", err
    code, _, err = run(capsys, "queue", "add", "--from", "sample", "--since", "yesterday")
    assert code == 2 and "--since: not a date or time" in err
    out_file = tmp_path / "ls" / "tasks.json"
    code, out, err = run(capsys, "export", "--out", str(out_file))
    assert code == 0 and json.loads(out_file.read_text())[0]["data"]["item_id"].startswith("rv-"), err
    assert out_file.with_suffix(".xml").read_text().startswith("<View>")


def test_help_has_examples(capsys):
    for argv in (["annotate", "--help"], ["annotate", "queue", "sweep", "--help"], ["annotate", "label", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "kaizen annotate" in capsys.readouterr().out
