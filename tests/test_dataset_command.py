"""`kaizen dataset ...` end to end through kaizenlm.cli.main."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import free_port
from feedback_helpers import EventLog, open_store
from test_datasets import populate

from kaizenlm import config as config_mod
from kaizenlm.cli import main

pytestmark = pytest.mark.integration  # a second process holds the DuckDB file


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAIZEN_CONFIG", raising=False)
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAIZEN_CONTROLLER_PORT", str(free_port()))  # no controller: the CLI opens DuckDB itself
    (tmp_path / "kaizen.toml").write_text("[curation]\nwindow_days = 0\neval_fraction = 0.3\n")
    return tmp_path / "home"


@pytest.fixture
def data(home):
    cfg = config_mod.load()
    con = open_store(cfg)
    log = EventLog()
    populate(log)
    log.write(con)
    con.close()
    return cfg


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_list_show_verify(data, capsys, tmp_path):
    (tmp_path / "exam.txt").write_text("How does the password feature work in my 0th workspace?\n")
    (tmp_path / "general.jsonl").write_text("".join(
        json.dumps({"prompt": f"Add {i} and 1.", "response": str(i + 1)}) + "\n" for i in range(50)))
    code, out, err = run(capsys, "dataset", "build", "--holdout", "exam.txt", "--replay", "general.jsonl")
    assert code == 0, err
    assert out.startswith("wrote snapshot ds-")
    snapshot_id = out.split()[2]
    assert "sft      train" in out and "replay" in out and "1 matched held-out texts" in out
    assert "decontaminate" in out

    code, out, _ = run(capsys, "dataset", "build", "--holdout", "exam.txt", "--replay", "general.jsonl")
    assert code == 0 and out.startswith(f"reused snapshot {snapshot_id}")

    code, out, _ = run(capsys, "dataset", "list")
    assert code == 0 and snapshot_id in out
    code, out, _ = run(capsys, "dataset", "list", "--json")
    assert [m["snapshot_id"] for m in json.loads(out)] == [snapshot_id]

    code, out, _ = run(capsys, "dataset", "show", snapshot_id[:9])
    assert code == 0 and f"snapshot {snapshot_id}" in out and "content" in out
    code, out, _ = run(capsys, "dataset", "show", snapshot_id, "--json")
    manifest = json.loads(out)
    assert manifest["sources"]["holdout_texts"] == 1 and manifest["sources"]["replay_file"].endswith("general.jsonl")

    code, out, _ = run(capsys, "dataset", "verify", snapshot_id)
    assert code == 0 and out.strip() == f"{snapshot_id}: ok"
    path = data.snapshots_dir / snapshot_id / "dpo_train.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    code, _, err = run(capsys, "dataset", "verify", snapshot_id)
    assert code == 1 and "dpo_train.parquet" in err


def test_build_json_and_dry_run(data, capsys):
    code, out, _ = run(capsys, "dataset", "build", "--dry-run", "--json")
    assert code == 0
    manifest = json.loads(out)
    assert manifest["counts"]["sft_train"] > 0
    assert not data.snapshots_dir.exists()
    code, out, _ = run(capsys, "dataset", "build", "--dry-run", "--since", "2001-01-01", "--until", "2001-01-02")
    assert code == 0 and out.startswith("would write snapshot") and "snapshot is empty" in out


def test_rewards(data, capsys):
    code, out, _ = run(capsys, "dataset", "rewards")
    assert code == 0 and out.startswith("turns 80: 80 with a reward (0 without)")
    assert "calibration (implicit-only reward vs explicit ratings" in out
    code, out, _ = run(capsys, "dataset", "rewards", "--json")
    summary = json.loads(out)
    assert summary["turns"] == 80 and summary["with_correction"] == 20 and summary["window"]["since"] is None
    assert set(summary["calibration"]) >= {"agreement", "auc", "turns_with_both"}


def test_config_file_settings_are_used(data, capsys, home):
    (home.parent / "general.jsonl").write_text('{"prompt": "Hi", "response": "Hello!"}\n')
    (home.parent / "kaizen.toml").write_text('[curation]\nwindow_days = 0\nreplay_path = "general.jsonl"\n')
    code, out, _ = run(capsys, "dataset", "build", "--dry-run", "--json")
    mix = json.loads(out)["mix_ratio"]
    assert mix["source"].endswith("general.jsonl") and mix["replay_rows"] == round(0.08 * mix["sft_train_rows"])
    (home.parent / "kaizen.toml").write_text("[curation]\nreplay_fraction = 0.2\n")
    code, _, err = run(capsys, "dataset", "list")
    assert code == 2 and "curation.replay_fraction" in err and "replay_fraction_override" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["dataset", "build", "--since", "yesterday-ish"], "not a date or time"),
    (["dataset", "build", "--since", "2025-02-01", "--until", "2025-01-01"], "empty window"),
    (["dataset", "build", "--holdout", "missing.txt"], "holdout file missing.txt does not exist"),
    (["dataset", "build", "--replay", "missing.jsonl"], "replay file missing.jsonl does not exist"),
    (["dataset", "show", "ds-nothing"], "no snapshot ds-nothing"),
    (["dataset", "verify", "nothing"], "no snapshot nothing"),
])
def test_bad_input_exits_2(data, capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_no_database_yet(home, capsys):
    code, _, err = run(capsys, "dataset", "build")
    assert code == 2 and "no data yet" in err
    code, out, _ = run(capsys, "dataset", "list")
    assert code == 0 and "no snapshots" in out


def test_locked_database(data, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
         "time.sleep(60)", str(data.duckdb_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        deadline = time.monotonic() + 10
        code, _, err = run(capsys, "dataset", "build")
        while code != 2 and time.monotonic() < deadline:  # pragma: no cover - lock not yet visible
            time.sleep(0.2)
            code, _, err = run(capsys, "dataset", "build")
        assert code == 2 and "in use by another process" in err
    finally:
        holder.kill()
        holder.wait()


def test_help_lists_actions(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in ("build", "list", "show", "verify", "rewards"):
        assert action in out
