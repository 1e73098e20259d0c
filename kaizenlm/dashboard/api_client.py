"""A small typed client of the controller's admin API: everything the dashboard reads or does.

    api = ControllerAPI.from_env()            # KAIZEN_CONTROLLER_URL / KAIZEN_ADMIN_KEY, else kaizen.toml
    api.stats()["counts"]["turns"]
    api.promote("champion", "adapter-0002", key=typed_key)

Reads use the dashboard's own admin key. Writes (promote, rollback, stop, run a job) take
the key as an argument: the dashboard passes the key a person typed, so that a change
needs someone who knows it, even though the process already holds one.

Errors say what went wrong in words the page can show as they are:
NotThere (404: the controller has no such endpoint yet, or no such thing), Refused
(401/403: wrong key), Unreachable (no answer), ControllerError (anything else).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx


class ControllerError(Exception):
    """The controller answered with an error (status and its `detail`)."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class NotThere(ControllerError):
    """404: the endpoint does not exist on this controller (yet), or the thing asked for does not."""

    @property
    def missing_endpoint(self) -> bool:
        return self.detail == "Not Found"  # FastAPI's answer for a route it does not have


class Refused(ControllerError):
    """401/403: the controller refused the admin key."""


class Unreachable(ControllerError):
    """No answer from the controller (not running, wrong URL, timeout)."""


def _q(part: str) -> str:
    return quote(part, safe="")


@dataclass(frozen=True)
class ControllerAPI:
    url: str
    admin_key: str
    timeout_s: float = 15.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ControllerAPI:
        """URL and key from KAIZEN_CONTROLLER_URL / KAIZEN_ADMIN_KEY, else from kaizenlm.config.load()."""
        env = dict(os.environ if env is None else env)
        url, key = env.get("KAIZEN_CONTROLLER_URL", ""), env.get("KAIZEN_ADMIN_KEY", "")
        if not (url and key):
            from kaizenlm import config

            cfg = config.load(env=env)
            url = url or cfg.dashboard.controller_url or cfg.controller_url
            key = key or cfg.auth.admin_key
        return cls(url.rstrip("/"), key)

    # -- transport ---------------------------------------------------------------------
    def _request(self, method: str, path: str, key: str | None = None, params: dict | None = None,
                 body: dict | None = None) -> dict:
        try:
            r = httpx.request(method, self.url + path, json=body, timeout=self.timeout_s,
                              params={k: v for k, v in (params or {}).items() if v is not None},
                              headers={"Authorization": f"Bearer {key if key is not None else self.admin_key}"})
        except httpx.HTTPError as e:
            raise Unreachable(0, f"no answer from {self.url} ({type(e).__name__})") from None
        if r.status_code < 400:
            return r.json()
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        detail = detail if isinstance(detail, str) else str(detail)
        if r.status_code == 404:
            raise NotThere(404, detail)
        if r.status_code in (401, 403):
            raise Refused(r.status_code, detail)
        raise ControllerError(r.status_code, detail)

    def get(self, path: str, **params) -> dict:
        return self._request("GET", path, params=params)

    def post(self, path: str, body: dict, key: str) -> dict:
        return self._request("POST", path, key=key, body=body)

    # -- health and events -------------------------------------------------------------
    def health(self) -> dict:
        """GET /healthz (no key needed)."""
        return self._request("GET", "/healthz")

    def stats(self) -> dict:
        """{counts: {turns, feedback, signals, dlq}, feedback_mix: {...}, sink: {...}}."""
        return self.get("/admin/v1/stats")

    def dlq(self, limit: int = 20) -> dict:
        """{total, items: [{topic, reason, ingested_at, ...}]}: events that failed validation."""
        return self.get("/admin/v1/dlq", limit=limit)

    def trends(self, days: int = 30, bucket: str = "day") -> dict:
        """{totals, items: [{start, turns, thumbs_up_share, mean_rating, mean_reward, ...}], by_model}."""
        return self.get("/admin/v1/dashboard/trends", days=days, bucket=bucket)

    def low_reward_turns(self, limit: int = 50, days: int = 30, max_reward: float = 0.0,
                         model_version: str | None = None, with_comment: bool = False, with_correction: bool = False,
                         include_unrated: bool = False, q: str | None = None) -> dict:
        """{total, model_versions, items: [{turn_id, conversation_id, reward, prompt, response, comment, ...}]}."""
        return self.get("/admin/v1/dashboard/low_reward_turns", limit=limit, days=days, max_reward=max_reward,
                        model_version=model_version or None, with_comment=with_comment,
                        with_correction=with_correction, include_unrated=include_unrated, q=q or None)

    def user_anomalies(self, days: int = 30, limit: int = 25) -> dict:
        """{users, flagged, thresholds, rows: [{user_id, turns, corrected_turns, correction_rate,
        duplicate_corrections, most_repeated_correction, burst_events, flags}], window}."""
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        return self.get("/admin/v1/user_anomalies", since=since, limit=limit)

    def conversation(self, conversation_id: str) -> dict:
        """{conversation_id, user_id, turns: [{messages, response, feedback, signals, reward, ...}]}."""
        return self.get(f"/admin/v1/dashboard/conversations/{_q(conversation_id)}")

    # -- registry ----------------------------------------------------------------------
    def versions(self, kind: str | None = None) -> list[dict]:
        """Registry versions, oldest first, each with its aliases."""
        return self.get("/admin/v1/registry/versions", kind=kind)["versions"]

    def lineage(self, version_id: str) -> dict:
        """{version_id, chain: [{version, aliases, snapshot, snapshot_verified}], source_windows}."""
        return self.get(f"/admin/v1/registry/versions/{_q(version_id)}/lineage")

    def aliases(self) -> dict[str, str]:
        return self.get("/admin/v1/registry/aliases")["aliases"]

    def alias_history(self, alias: str) -> list[dict]:
        """Every move of the alias, oldest first: {seq, from_version, to_version, action, reason, actor, ts}."""
        return self.get(f"/admin/v1/registry/aliases/{_q(alias)}/history")["history"]

    def training_runs(self, version_id: str) -> dict:
        """{version_id, runs: {sft: {train_loss_curve, eval_loss_curve, warnings, ...}, dpo: {...}}} of an adapter."""
        return self.get(f"/admin/v1/dashboard/training/{_q(version_id)}")

    def knowledge_coverage(self, version_id: str) -> dict:
        """The coverage report stored with a knowledge version: {share_covered, n, threshold, uncovered_clusters}."""
        return self.get(f"/admin/v1/dashboard/knowledge/{_q(version_id)}/coverage")

    # -- experiments, jobs, datasets ---------------------------------------------------
    def experiments(self, limit: int = 100) -> list[dict]:
        """Experiments, newest first, each with its latest decision."""
        return self.get("/admin/v1/ab/experiments", limit=limit)["experiments"]

    def experiment(self, experiment_id: str, decisions: int = 1000) -> dict:
        """One experiment with its decisions, newest first (each with the numbers it rested on)."""
        return self.get(f"/admin/v1/ab/experiments/{_q(experiment_id)}", limit=decisions)

    def jobs(self, tier: str | None = None, limit: int = 100) -> dict:
        """{enabled, scheduler_running, tiers: [{tier, cron, next_fire_time, last_run, ...}], runs: [...]}."""
        return self.get("/admin/v1/jobs", tier=tier, limit=limit)

    def datasets(self) -> list[dict]:
        """Dataset snapshots (GET /admin/v1/datasets)."""
        data = self.get("/admin/v1/datasets")
        if isinstance(data, list):
            return data
        return data.get("snapshots") or data.get("datasets") or data.get("items") or []

    # -- human review (/admin/v1/annotate) -----------------------------------------------
    def annotate_status(self) -> dict:
        """{per_kind: {kind: {items, assigned, labelled, overlap_items}}, open_per_reviewer, items, gate, reviewers}."""
        return self.get("/admin/v1/annotate/queue")

    def annotate_stats(self) -> dict:
        """{label, verdict, preference: agreement summaries (fleiss_kappa, pairwise_cohen_kappa, ...), gate,
        human_win_rates: {candidate: {human_win_rate, human_comparisons, human_win_rate_vs}}}."""
        return self.get("/admin/v1/annotate/stats")

    def annotate_next(self, key: str | None = None, reviewer: str | None = None, kind: str | None = None) -> dict:
        """{reviewer, item}: the next open item of the reviewer a review key names (or, with the admin
        key, of `reviewer`); the item as reviewers see it (blind pairs: A and B only)."""
        return self._request("GET", "/admin/v1/annotate/next", key=key,
                             params={"reviewer": reviewer or None, "kind": kind})

    def annotate_label(self, item_id: str, verdict: str, key: str, label: str | None = None,
                       gold_answer: str | None = None, reviewer: str | None = None) -> dict:
        """Record a verdict (accept/edit/reject, or a/b/tie/both_bad on a blind pair) with the typed key."""
        return self.post(f"/admin/v1/annotate/items/{_q(item_id)}/labels",
                         {"verdict": verdict, "label": label, "gold_answer": gold_answer, "reviewer": reviewer or None},
                         key)

    # -- actions: each needs the key a person typed ------------------------------------
    def promote(self, alias: str, version_id: str, key: str, reason: str = "") -> dict:
        """Point `alias` at `version_id` (recorded in the alias history)."""
        return self.post(f"/admin/v1/registry/aliases/{_q(alias)}",
                         {"version_id": version_id, "reason": reason or "promoted from the dashboard",
                          "actor": "dashboard"}, key)

    def rollback(self, alias: str, key: str, reason: str = "", to_version: str | None = None) -> dict:
        """Move `alias` back one step (ending an experiment running on it); the registry's own
        rollback where the controller has no A/B API."""
        body = {"alias": alias, "to_version": to_version, "reason": reason or "rolled back from the dashboard",
                "actor": "dashboard"}
        try:
            return self.post("/admin/v1/rollback", body, key)
        except NotThere as e:
            if not e.missing_endpoint:
                raise
        body.pop("alias")
        return self.post(f"/admin/v1/registry/aliases/{_q(alias)}/rollback", body, key)

    def stop_experiment(self, experiment_id: str, key: str, promote: bool = False, reason: str = "") -> dict:
        """End a running experiment: keep the champion, or promote the challenger."""
        return self.post(f"/admin/v1/ab/experiments/{_q(experiment_id)}/stop",
                         {"promote": promote, "reason": reason, "actor": "dashboard"}, key)

    def analyse(self, experiment_id: str, key: str) -> dict:
        """Analyse a running experiment now and act on the decision."""
        return self.post("/admin/v1/ab/analyse", {"experiment_id": experiment_id}, key)

    def run_tier(self, tier: str, key: str) -> dict:
        """Start a run of a scheduler tier now (409 while one runs)."""
        return self.post(f"/admin/v1/jobs/{_q(tier)}/run", {}, key)
