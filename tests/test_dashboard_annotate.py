"""The dashboard's Annotate page through Streamlit's AppTest, against a real controller app (in a
thread, on a temporary DuckDB file): the empty queue says what to do, a reviewer with a review
key labels items one at a time (label, then accept / edit), the blind view shows A and B without
versions, the admin key labels for a named reviewer, and the agreement figures and the gate show.
Every label is checked where it is stored: the controller's DuckDB."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import free_port
from streamlit.testing.v1 import AppTest

import kaizenlm.dashboard
from kaizenlm import auth
from kaizenlm import config as config_mod
from kaizenlm.dashboard.ui import CONFIRM_KEY
from kaizenlm.server.controller import create_app

APP = Path(kaizenlm.dashboard.__file__).parent / "app.py"
ROWS = [{"turn_id": f"t{i}", "prompt": f"How do I do thing {i}?", "answer": f"Like this {i}.",
         "correction": f"Rather like that {i}.", "user_id": "u1"} for i in range(2)]
PAIR = {"prompt": "Which plan fits a team of five?", "candidates": [
    {"version": "adapter-0002", "answer": "The team plan, with five seats."},
    {"version": "base-0001", "answer": "Any plan will do."}]}


class Controller:
    """The controller app served in a thread (no sink), with a review key for alice."""

    def __init__(self, tmp_path: Path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("KAIZEN_CONFIG", raising=False)
        for k, v in {"KAIZEN_HOME": str(tmp_path / "home"), "KAIZEN_CONTROLLER_PORT": str(free_port()),
                     "KAIZEN_REGISTER_BASE": "false"}.items():
            monkeypatch.setenv(k, v)
        self.cfg = config_mod.load()
        monkeypatch.setenv("KAIZEN_CONTROLLER_URL", self.cfg.controller_url)
        monkeypatch.setenv("KAIZEN_ADMIN_KEY", self.cfg.auth.admin_key)
        self.alice_key, _ = auth.create_key(self.cfg.keys_file, [auth.REVIEW], reviewer="alice")
        self.app = create_app(self.cfg, start_sink=False)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.cfg.controller.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Controller:
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def admin(self, method: str, path: str, **kw) -> dict:
        r = httpx.request(method, self.cfg.controller_url + "/admin/v1/annotate" + path, timeout=30,
                          headers={"Authorization": f"Bearer {self.cfg.auth.admin_key}"}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def seed(self) -> None:
        self.admin("POST", "/items", json={"kind": "correction", "rows": ROWS})
        self.admin("POST", "/items", json={"kind": "blind_pair", "rows": [PAIR]})
        self.admin("POST", "/assign", json={"reviewers": ["alice", "bob"], "overlap": 1.0})

    def labels(self) -> list[tuple]:
        return self.app.state.db.execute(
            "SELECT item_id, reviewer, verdict, label, gold_answer, preferred_version FROM review_labels ORDER BY seq"
        ).fetchall()


@pytest.fixture
def controller(tmp_path, monkeypatch):
    with Controller(tmp_path, monkeypatch) as c:
        yield c


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.switch_page("pages/annotate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, button: str, key: str) -> AppTest:
    """Click with `key` in the sidebar's admin-key field. AppTest forgets the entry script's
    sidebar values after a switch_page (a browser keeps them), so the value goes into the
    session state the field writes: once to render the buttons enabled, again with the click."""
    at.session_state[CONFIRM_KEY] = key
    assert not rerun(at).button(key=button).disabled
    at.session_state[CONFIRM_KEY] = key
    at.button(key=button).click()
    return rerun(at)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def markdown(at: AppTest) -> str:
    return texts(at.markdown)


def test_an_empty_queue_says_what_to_do(controller):
    at = open_page()
    assert "The review queue is empty" in texts(at.info) and "kaizen annotate queue sweep" in texts(at.info)
    assert at.title[0].value == "Annotate"


def test_a_reviewer_labels_items_one_at_a_time(controller):
    controller.seed()
    at = open_page()
    assert "No reviewer yet" in texts(at.info)
    at.text_input(key="annotate_review_key").input(controller.alice_key)
    rerun(at)
    first = controller.admin("GET", "/next", params={"reviewer": "alice"})["item"]
    assert f"Reviewing as **alice** - {first['item_id']} (correction), 3 open" in texts(at.caption)
    assert first["prompt"] in markdown(at) and first["correction"] in markdown(at)

    # a verdict without a label is refused, and nothing is stored
    at.button(key="annotate_accept").click()
    rerun(at)
    assert "Pick a label first" in texts(at.warning) and controller.labels() == []
    at.button(key="annotate_label_0").click()  # "correct" (key 1)
    rerun(at)
    assert "Label: **correct**" in markdown(at)
    at.button(key="annotate_accept").click()
    rerun(at)
    assert controller.labels() == [(first["item_id"], "alice", "accept", "correct", None, None)]
    assert f"Labelled {first['item_id']}: accept, correct." in texts(at.success)

    # the next item: edit it into a gold answer
    second = controller.admin("GET", "/next", params={"reviewer": "alice"})["item"]
    assert f"{second['item_id']} (correction), 2 open" in texts(at.caption)
    at.button(key="annotate_label_1").click()  # "incomplete"
    rerun(at)
    at.text_area(key=f"annotate_gold_{second['item_id']}").input("Open Settings, then do thing 1 like that.")
    at.button(key="annotate_edit").click()
    rerun(at)
    assert controller.labels()[-1] == (second["item_id"], "alice", "edit", "incomplete",
                                       "Open Settings, then do thing 1 like that.", None)

    # the blind pair: A and B, no versions anywhere on the page
    pair = controller.admin("GET", "/next", params={"reviewer": "alice"})["item"]
    assert "(blind_pair), 1 open" in texts(at.caption)
    page = markdown(at) + texts(at.caption)
    assert pair["answer_a"] in page and pair["answer_b"] in page
    assert "adapter-0002" not in page and "base-0001" not in page
    at.button(key="annotate_blind_a").click()
    rerun(at)
    expected = "adapter-0002" if pair["answer_a"] == PAIR["candidates"][0]["answer"] else "base-0001"
    assert controller.labels()[-1] == (pair["item_id"], "alice", "a", None, None, expected)
    assert "Nothing open for alice" in texts(at.info)


def test_the_admin_key_labels_for_a_named_reviewer_and_agreement_shows(controller):
    controller.seed()
    at = open_page()
    at.text_input(key="annotate_reviewer").input("bob")
    rerun(at)
    assert "type a key to label" in texts(at.caption) and at.button(key="annotate_accept").disabled
    click(at, "annotate_label_0", "not-the-key")
    click(at, "annotate_accept", "not-the-key")
    assert "The controller refused that key; nothing changed (unknown API key" in texts(at.error)
    assert controller.labels() == []
    click(at, "annotate_label_0", controller.cfg.auth.admin_key)
    click(at, "annotate_accept", controller.cfg.auth.admin_key)
    assert [r[1:4] for r in controller.labels()] == [("bob", "accept", "correct")]
    # alice labels the same item alike (through the API): both reviewers agree on 1 item
    item = controller.labels()[0][0]
    r = httpx.post(f"{controller.cfg.controller_url}/admin/v1/annotate/items/{item}/labels", timeout=30,
                   json={"verdict": "accept", "label": "correct"},
                   headers={"Authorization": f"Bearer {controller.alice_key}"})
    assert r.status_code == 200
    rerun(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == "3" and metrics["Labelled"] == "1" and metrics["Items labelled by 2+"] == "1"
    assert metrics["Fleiss' κ, labels"] == "1.000"  # one category only: observed = expected = 1
    assert "Reviewed labels enter training: Fleiss' kappa 1.000 >= 0.8 over 1 item(s)" in texts(at.success)
