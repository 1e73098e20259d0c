"""The dashboard against a real, seeded controller: every page through Streamlit's AppTest,
the aggregate read API, the client's error mapping, and actions that need the typed key.

One stack for the module (broker + controller + gateway as subprocesses). The first test
runs before anything is seeded (every page's empty state); the `seeded` fixture then sends
traffic through the SDK, registers versions through RegistryClient and starts an A/B
experiment, and the tests check that the pages show exactly what was seeded. The test
that promotes and rolls back runs last: it changes the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import free_port
from dashboard_helpers import BAD_COMMENT, CORRECTION, EXPERIMENT, LOSS_GAP_WARNING, admin, module_stack, seed
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

import kaizenlm.dashboard
from kaizenlm.dashboard.api_client import ControllerAPI, NotThere, Refused, Unreachable
from kaizenlm.dashboard.ui import CONFIRM_KEY

pytestmark = pytest.mark.integration

APP = Path(kaizenlm.dashboard.__file__).parent / "app.py"
PAGES = ("overview", "experiments", "models", "training", "knowledge", "feedback", "jobs", "annotate")


@pytest.fixture(scope="module")
def dash_stack(tmp_path_factory):
    with module_stack(tmp_path_factory.mktemp("dashboard")) as stack:
        yield stack


@pytest.fixture(scope="module")
def seeded(dash_stack, tmp_path_factory):
    return seed(dash_stack, tmp_path_factory.mktemp("artifacts"))


def open_page(name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if name != "overview":
        at.switch_page(f"pages/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str, nth: int = 0) -> str:
    return [m.value for m in at.metric if m.label == label][nth]


def frame(at: AppTest, *columns: str):
    """The first table on the page that has all these columns."""
    for df in at.dataframe:
        if all(c in df.value.columns for c in columns):
            return df.value
    raise AssertionError(f"no table with columns {columns}; tables: {[list(d.value.columns) for d in at.dataframe]}")


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def chart_data(at: AppTest, title: str) -> pd.DataFrame:
    """The rows drawn by the chart whose spec mentions `title` (Streamlit ships them as Arrow)."""
    for chart in at.get("vega_lite_chart"):
        if title in chart.proto.spec:
            frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
            return pd.concat(frames, ignore_index=True)
    raise AssertionError(f"no chart titled {title!r}")


def test_every_page_says_so_when_the_controller_is_down(monkeypatch):
    monkeypatch.setenv("KAIZEN_CONTROLLER_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("KAIZEN_ADMIN_KEY", "kz-admin-dev")
    for name in PAGES:
        at = open_page(name)
        assert "The controller does not answer" in texts(at.error), name
        assert "kaizen up" in texts(at.error), name


# --------------------------------------------------------------------------- before seeding


def test_every_page_says_what_to_do_next_when_empty(dash_stack):
    expected = {"overview": "No turns have landed yet", "experiments": "No A/B experiments yet",
                "models": "The registry is empty", "training": "No adapter has been trained yet",
                "knowledge": "No knowledge version yet", "feedback": "No turn with feedback",
                "jobs": "No job has run yet", "annotate": "The review queue is empty"}
    for name in PAGES:
        at = open_page(name)
        info = texts(at.info)
        assert expected[name] in info, (name, info)
        assert "**Next:**" in info, (name, info)
        assert not at.error, (name, texts(at.error))


def test_client_maps_missing_endpoints_wrong_keys_and_no_controller(dash_stack):
    api = ControllerAPI.from_env()
    assert api.url == dash_stack.cfg.controller_url
    with pytest.raises(NotThere) as missing:
        api.get("/admin/v1/no-such-part")
    assert missing.value.missing_endpoint
    with pytest.raises(NotThere) as unknown:
        api.lineage("adapter-9999")
    assert not unknown.value.missing_endpoint and "adapter-9999" in unknown.value.detail
    with pytest.raises(Refused):
        ControllerAPI(api.url, "not-the-admin-key").stats()
    with pytest.raises(Unreachable):
        ControllerAPI("http://127.0.0.1:9", api.admin_key, timeout_s=2).stats()


# --------------------------------------------------------------------------- seeded


def test_read_api_rewards_match_the_streaming_reward(seeded, dash_stack):
    """The SQL reward (trends, explorer) and the Python twin (conversation view) agree with the seed."""
    trends = admin(dash_stack, "GET", "/admin/v1/dashboard/trends", params={"days": 30})
    totals = trends["totals"]
    assert totals["turns"] == len(seeded.turns) == sum(b["turns"] for b in trends["items"])
    assert (totals["thumbs_up"], totals["thumbs_down"]) == (seeded.thumbs(1), seeded.thumbs(-1))
    assert totals["mean_reward"] == pytest.approx(seeded.mean_reward(), abs=1e-4)
    low = admin(dash_stack, "GET", "/admin/v1/dashboard/low_reward_turns", params={"limit": 100})
    assert [t["turn_id"] for t in low["items"]] == [t.turn_id for t in seeded.low_reward()]
    assert low["model_versions"] == ["adapter-0001", "base-0001"]
    conv = admin(dash_stack, "GET", "/admin/v1/dashboard/conversations/conv-05")
    by_id = {t.turn_id: t for t in seeded.turns}
    assert [t["turn_id"] for t in conv["turns"]] == ["turn-05", "turn-05b"]
    for t in conv["turns"]:
        assert t["reward"] == pytest.approx(by_id[t["turn_id"]].reward(seeded.weights), abs=1e-4)
    unrated = admin(dash_stack, "GET", "/admin/v1/dashboard/conversations/conv-02")["turns"][0]
    assert unrated["reward"] is None and unrated["feedback"] == []  # nobody reacted: no reward, not 0
    runs = admin(dash_stack, "GET", "/admin/v1/dashboard/training/adapter-0001")["runs"]
    assert sorted(runs) == ["dpo", "sft"] and runs["sft"]["eval_loss_curve"] == [[2, 2.0], [3, 1.6]]
    r = httpx.get(dash_stack.cfg.controller_url + "/admin/v1/dashboard/trends")
    assert r.status_code == 401
    r = httpx.get(dash_stack.cfg.controller_url + "/admin/v1/dashboard/trends", params={"days": 365, "bucket": "hour"},
                  headers=dash_stack.admin_headers)
    assert r.status_code == 400 and "coarser bucket" in r.json()["detail"]


def test_overview_shows_what_was_seeded(seeded):
    at = open_page("overview")
    assert metric(at, "Turns") == str(len(seeded.turns))
    assert metric(at, "Feedback events") == str(seeded.n_feedback)
    assert metric(at, "Signals") == str(seeded.n_signals)
    assert metric(at, "Turns in window") == str(len(seeded.turns))
    up, down = seeded.thumbs(1), seeded.thumbs(-1)
    assert metric(at, "Thumbs-up share") == f"{up / (up + down):.0%}"
    buckets = frame(at, "start", "turns", "mean_reward")
    assert buckets["turns"].sum() == len(seeded.turns)
    assert len(buckets) >= 6  # 30 daily buckets, quiet days included
    titles = [str(s.get("title", "")) for s in chart_specs(at)]
    assert {"Traffic", "Mean per-turn reward", "Satisfaction", "Feedback mix (all time)"} <= set(titles), titles


def test_experiments_page_shows_arms_looks_and_decisions(seeded):
    at = open_page("experiments")
    listed = frame(at, "experiment", "status")
    row = listed.iloc[0]
    assert (row["experiment"], row["status"], row["champion"], row["challenger"]) == (
        EXPERIMENT, "running", "base-0001", "adapter-0001")
    assert [metric(at, "Users", 0), metric(at, "Users", 1)] == ["4", "4"]
    assert [metric(at, "Mean reward", 0), metric(at, "Mean reward", 1)] == ["-0.60", "+0.60"]
    log = frame(at, "action", "reason")
    assert list(log["action"]) == ["continue", "continue"]
    assert "collecting data" in log["reason"].iloc[0]
    assert "No sample-ratio mismatch" in texts(at.success)
    guards = frame(at, "guardrail", "status")
    assert set(guards["guardrail"]) >= {"error_rate", "regenerate_rate"}
    specs = json.dumps(chart_specs(at))
    assert "Primary metric: challenger" in specs and "Sequential boundary: stop when p" in specs


def test_models_page_shows_registry_metrics_lineage_and_aliases(seeded):
    at = open_page("models")
    registry = frame(at, "version", "kind", "status")
    assert set(registry["version"]) == {"base-0001", "adapter-0001", "adapter-0002", "knowledge-0001",
                                        "knowledge-0002"}
    metrics = frame(at, "version", "domain_score")
    assert dict(zip(metrics["version"], metrics["domain_score"])) == {"base-0001": 0.41, "adapter-0001": 0.62,
                                                                      "adapter-0002": 0.58}
    aliases = frame(at, "alias", "version")
    assert dict(zip(aliases["alias"], aliases["version"])) == {"champion": "base-0001", "knowledge": "knowledge-0001"}
    at.selectbox(key="models_lineage_version").select("adapter-0002")
    rerun(at)
    chain = frame(at, "version", "parent", "snapshot verified")
    assert list(chain["version"]) == ["adapter-0002", "adapter-0001", "base-0001"]
    history = frame(at, "seq", "from", "to", "action")
    assert list(history["to"]) == ["base-0001"] and history["action"].iloc[0] == "set"


def test_training_page_shows_loss_curves_and_gates(seeded):
    at = open_page("training")
    assert "No monthly retrain has run yet" in texts(at.info)
    assert at.selectbox(key="training_adapter").value == "adapter-0002"
    assert "Gates: failed" in texts(at.error)
    gates = frame(at, "check", "passed")
    assert list(gates["passed"]) == [True, False] and "retention" in gates["check"].iloc[1]
    assert "has no training run logs" in texts(at.info)  # imported adapter: a 404, shown as an empty state
    at.selectbox(key="training_adapter").select("adapter-0001")
    rerun(at)
    assert "Gates: all passed" in texts(at.success)
    assert len(frame(at, "check", "passed")) == 3
    loss = chart_data(at, "Loss of adapter-0001")  # from the runs' metrics.json stored with the adapter
    assert len(loss) == 8 and sorted(set(loss["series"])) == ["dpo eval", "dpo train", "sft eval", "sft train"]
    assert loss[loss["series"] == "sft train"].sort_values("step")["value"].tolist() == [2.5, 1.9, 1.4]
    assert LOSS_GAP_WARNING in texts(at.markdown)
    summary = frame(at, "run", "train_loss")
    assert summary["train_loss"].tolist() == [1.4]


def test_knowledge_page_shows_coverage_and_uncovered_clusters(seeded):
    at = open_page("knowledge")
    assert at.selectbox(key="knowledge_version").value == "knowledge-0001"  # the alias the gateways serve
    assert (metric(at, "Covered"), metric(at, "Questions")) == ("75%", "8")
    clusters = frame(at, "questions", "examples")
    assert clusters["questions"].tolist() == [2]
    assert "Do you ship to Mars?" in clusters["examples"].iloc[0]
    versions = frame(at, "version", "chunks", "coverage")
    assert dict(zip(versions["version"], versions["chunks"])) == {"knowledge-0001": 12, "knowledge-0002": 14}
    at.selectbox(key="knowledge_version").select("knowledge-0002")
    rerun(at)
    assert "has no coverage.json" in texts(at.info)  # a 404 from the controller becomes an empty state


def test_feedback_explorer_filters_and_reads_conversations(seeded):
    at = open_page("feedback")
    expected = seeded.low_reward()
    turns = frame(at, "reward", "prompt", "conversation")
    assert list(turns["conversation"]) == [t.conversation_id for t in expected]
    assert turns["reward"].tolist() == pytest.approx([t.reward(seeded.weights) for t in expected], abs=1e-4)
    at.text_input(key="fb_query").input("website")
    rerun(at)
    assert set(frame(at, "reward", "comment")["comment"]) == {BAD_COMMENT}
    at.text_input(key="fb_query").input("")
    at.checkbox(key="fb_with_correction").check()
    rerun(at)
    corrected = frame(at, "reward", "correction", "conversation")
    assert corrected["correction"].tolist() == [CORRECTION]
    assert at.selectbox(key="fb_conversation").value == "conv-03"
    shown = texts(at.markdown)
    assert f"Correction: **{CORRECTION}**" in shown
    assert "How long is the refund window? (3)" in shown
    # The per-user anomaly report (GET /admin/v1/user_anomalies): the one correcting user, not flagged.
    users = frame(at, "user", "corrected", "correction rate", "flags")
    assert users.to_dict("records") == [{"user": "user-3", "flags": "", "turns": 2, "corrected": 1,
                                         "correction rate": 0.5, "same correction": 1,
                                         "most repeated": "", "burst": users["burst"].iat[0]}]
    assert "0 flagged" in texts(at.caption)


def test_jobs_page_shows_the_schedule(seeded, dash_stack):
    at = open_page("jobs")
    tiers = frame(at, "tier", "cron", "next run")
    sched = dash_stack.cfg.schedule
    assert dict(zip(tiers["tier"], tiers["cron"])) == {"weekly": sched.weekly_cron, "monthly": sched.monthly_cron,
                                                       "quarterly": sched.quarterly_cron}
    assert all(tiers["next run"])
    assert at.button(key="jobs_run").disabled  # no key typed


# --------------------------------------------------------------------------- actions (changes the registry: last)


def champion(stack) -> str:
    return admin(stack, "GET", "/admin/v1/registry/aliases")["aliases"]["champion"]


def click_with_key(at: AppTest, button: str, key: str) -> AppTest:
    """Click `button` with `key` in the sidebar's admin-key field.

    AppTest keeps the entry script's sidebar widgets only on the default page, and forgets
    their values after a switch_page (a browser keeps them), so the value goes into the
    session state the field writes: once to render the buttons enabled, again with the click.
    """
    at.session_state[CONFIRM_KEY] = key
    assert not rerun(at).button(key=button).disabled
    at.session_state[CONFIRM_KEY] = key
    at.button(key=button).click()
    return rerun(at)


def test_promote_and_rollback_need_the_typed_key(seeded, dash_stack):
    home = open_page("overview")
    field = home.sidebar.text_input(key=CONFIRM_KEY)
    assert field.proto.type == field.proto.PASSWORD and field.value == ""

    at = open_page("experiments")
    assert at.button(key="exp_promote").disabled  # no key typed
    click_with_key(at, "exp_promote", "not-the-admin-key")
    assert "refused that admin key" in texts(at.error)
    assert champion(dash_stack) == "base-0001"

    click_with_key(at, "exp_promote", dash_stack.cfg.auth.admin_key)
    assert "Promoted adapter-0001 to 'champion'" in texts(at.success)
    assert champion(dash_stack) == "adapter-0001"
    assert admin(dash_stack, "GET", f"/admin/v1/ab/experiments/{EXPERIMENT}")["status"] == "promoted"

    rerun(at.switch_page("pages/models.py"))
    at.selectbox(key="models_rollback_alias").select("champion")
    click_with_key(at, "models_rollback", dash_stack.cfg.auth.admin_key)
    assert "Rolled 'champion' back one step" in texts(at.success)
    assert champion(dash_stack) == "base-0001"
    history = frame(at, "seq", "from", "to", "action")  # newest first, the rollback included
    assert list(history["to"])[:2] == ["base-0001", "adapter-0001"]
