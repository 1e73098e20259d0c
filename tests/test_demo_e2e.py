"""`kaizen demo --short --no-dashboard` end to end, then its DuckDB file read back: traffic
landed, a dataset snapshot and a knowledge version were made, the retrain produced a
candidate that learned the domain, the A/B test promoted it and `kaizen rollback` undid the
promotion, the deliberately bad candidate was rejected by the gates, and the quarterly review
was written. Slow (the whole
loop, base build included): CI runs it in the `make test-slow` step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.integration  # runs `kaizen demo`, which starts the whole stack


def run_demo(out: Path, timeout: float) -> subprocess.Popen:
    """Run `kaizen demo --short --no-dashboard`; if the test is cut short (its timeout), Ctrl-C
    the demo so it stops the broker, controller and gateway it started (they run in their own
    sessions, so killing the demo alone would leave them running)."""
    with out.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", "demo", "--short", "--no-dashboard"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return proc


@pytest.mark.slow
@pytest.mark.timeout(3000)  # about 13 min on 2 idle cores (the real model); a loaded machine takes longer
def test_short_demo_runs_the_whole_loop(kaizen_env, tmp_path):
    started = time.monotonic()
    out = tmp_path / "demo.out"
    proc = run_demo(out, timeout=2700)
    text = out.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    print(f"demo --short took {time.monotonic() - started:.0f} s")
    check_demo_state(Path(kaizen_env["KAIZEN_HOME"]), text)


def check_demo_state(home: Path, text: str) -> None:
    """What a finished `kaizen demo --short` left in $KAIZEN_HOME and printed (also run by hand:
    `python -c "from tests.test_demo_e2e import check_demo_state; ..."` on a demo's home)."""
    con = duckdb.connect(str(home / "kaizen.duckdb"), read_only=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731

    [(turns,)], [(feedback,)], [(signals,)] = (q(f"SELECT count(*) FROM {t}") for t in ("turns", "feedback", "signals"))
    assert turns >= 150 and feedback > 100 and signals > 50  # --short: 150 conversations, then the A/B rounds
    assert q("SELECT count(*) FROM dataset_snapshots")[0][0] >= 2  # the dataset stage's and the retrain's

    versions = {v: (kind, status, json.loads(metrics), json.loads(config)) for v, kind, status, metrics, config in
                q("SELECT version_id, kind, status, metrics, config FROM model_versions")}
    aliases = dict(q("SELECT name, version_id FROM aliases"))
    assert versions[aliases["knowledge"]][0] == "knowledge"
    assert versions[aliases["knowledge"]][2]["chunks"] > 0

    # The monthly retrain's candidate learned the domain (the base knows none of it).
    base = next(v for v, (kind, *_rest) in versions.items() if kind == "base")
    retrained = [v for v, (kind, _, _, config) in versions.items() if kind == "adapter" and "sft" in config]
    assert retrained, versions
    candidate = versions[retrained[0]][2]
    assert candidate["domain_score"] > versions[base][2]["domain_score"] + 0.05

    # The deliberately bad candidate never served: rejected, with the failing gate lines.
    bad = [v for v, (_, _, _, config) in versions.items() if config.get("demo") == "corrupted labels, no replay"]
    assert bad and versions[bad[0]][1] == "rejected", versions.get(bad[0] if bad else None)
    assert versions[bad[0]][2]["gate"]["passed"] is False

    # The A/B test promoted the retrained candidate (the demo is built so that the better model
    # wins), then the rollback stage moved champion back with `kaizen rollback`.
    [(experiment, status, champion, challenger)] = q("SELECT experiment_id, status, champion, challenger FROM experiments")
    actions = [a for (a,) in q(f"SELECT action FROM experiment_decisions WHERE experiment_id = '{experiment}' "
                                "AND action != 'continue' ORDER BY ts")]
    assert (status, actions) == ("promoted", ["promote"]), (status, actions)
    assert challenger in retrained and versions[challenger][1] == "promoted", versions[challenger]
    history = q("SELECT action, from_version, to_version FROM alias_history WHERE alias = 'champion' ORDER BY seq")
    assert history[-2:] == [("set", champion, challenger), ("rollback", challenger, champion)], history
    assert aliases["champion"] == champion
    con.close()

    # The real base's general answers: replay rows never stop mid-sentence (most answers hit the
    # 48-token budget; those are trimmed to their last sentence), held-out rows stay as given.
    replay = [json.loads(line) for line in (home / "general" / "replay.jsonl").read_text().splitlines()]
    assert len(replay) > 40 and all("ended" in r for r in replay)
    cut = [r for r in replay if not r["ended"]]
    assert cut and all(r["trimmed"] and r["response"].rstrip("\"')”’]").endswith((".", "!", "?")) for r in cut)

    reports = list((home / "reviews").rglob("report.md"))
    assert reports and list((home / "reviews").rglob("*.png"))
    assert "kaizen demo: summary" in text and "rollback skipped" not in text
    # The side-by-side table and the retrieval answers of the new documents were printed.
    assert "The same questions:" in text and "(retrained)" in text and "retrieved" in text
