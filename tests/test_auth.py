"""One auth scheme for every route of both processes (kaizenlm/auth.py): 401 for a missing or
unknown key, 403 for a key without the route's scope, the right key passes. Checked on the real
apps' route tables, so a route added without the check fails here."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from route_helpers import api_routes

from kaizenlm import auth, config
from kaizenlm.config import Config, PathsConfig
from kaizenlm.server import controller

UNAUTHENTICATED = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_check_answers_401_for_missing_or_unknown_and_403_for_a_missing_scope():
    cfg = Config().auth
    with pytest.raises(auth.AuthError) as e:
        auth.check(cfg, "", auth.ADMIN)
    assert e.value.status == 401 and "missing API key" in e.value.message
    with pytest.raises(auth.AuthError) as e:
        auth.check(cfg, "Bearer kz-nobody-knows", auth.ADMIN)
    assert e.value.status == 401 and "unknown API key" in e.value.message and "auth.admin_key" in e.value.message
    with pytest.raises(auth.AuthError) as e:
        auth.check(cfg, f"Bearer {cfg.ingest_key}", auth.ADMIN)
    assert e.value.status == 403 and "'admin' scope" in e.value.message
    auth.check(cfg, f"Bearer {cfg.admin_key}", auth.ADMIN)
    auth.check(cfg, f"bearer {cfg.admin_key}", auth.INGEST)  # the scheme is case-insensitive; admin has ingest
    auth.check(cfg, f"Bearer {cfg.ingest_key}", auth.INGEST)
    with pytest.raises(auth.AuthError):
        auth.check(cfg, f"Basic {cfg.admin_key}", auth.ADMIN)  # only bearer tokens


def test_every_controller_route_follows_the_scheme(tmp_path):
    cfg = Config(paths=PathsConfig(home=str(tmp_path / "home")))
    app = controller.create_app(cfg, start_sink=False)
    routes = [(m, p) for m, p, _ in api_routes(app.routes) if p not in UNAUTHENTICATED]
    assert len(routes) > 20
    with TestClient(app) as client:
        for method, route_path in routes:
            path = route_path.replace("{", "").replace("}", "")  # any value: auth comes first
            for headers, status in [({}, 401), ({"Authorization": "Bearer kz-unknown-key"}, 401),
                                    ({"Authorization": f"Bearer {cfg.auth.ingest_key}"}, 403)]:
                r = client.request(method, path, headers=headers, json={})
                assert r.status_code == status, (method, route_path, headers, r.status_code, r.text)
        # The admin key passes (on read routes: a POST would start real work, a retrain say).
        for method, route_path in routes:
            if method == "GET" and "{" not in route_path:
                r = client.get(route_path, headers={"Authorization": f"Bearer {cfg.auth.admin_key}"})
                assert r.status_code == 200, (route_path, r.text)


# ------------------------------------------------------------------------------ scopes and keys


def test_the_three_config_keys_carry_their_scopes():
    cfg = Config().auth
    expect = {cfg.widget_key: {auth.FEEDBACK}, cfg.ingest_key: {auth.CHAT, auth.INGEST, auth.FEEDBACK},
              cfg.admin_key: set(auth.SCOPES)}
    for key, scopes in expect.items():
        for scope in auth.SCOPES:
            if scope in scopes:
                assert auth.check(cfg, f"Bearer {key}", scope).scopes == frozenset(scopes)
            else:
                with pytest.raises(auth.AuthError) as e:
                    auth.check(cfg, f"Bearer {key}", scope)
                assert e.value.status == 403 and f"'{scope}' scope" in e.value.message
    assert auth.check(cfg, f"Bearer {cfg.ingest_key}", auth.FEEDBACK).server_side
    assert not auth.check(cfg, f"Bearer {cfg.widget_key}", auth.FEEDBACK).server_side


# The reviewers' routes (kaizenlm/annotate/api.py): a review key passes the scope check there.
REVIEW_ROUTES = {("GET", "/admin/v1/annotate/queue"), ("GET", "/admin/v1/annotate/next"),
                 ("POST", "/admin/v1/annotate/items/{item_id}/labels"), ("GET", "/admin/v1/annotate/stats")}


def test_widget_and_review_keys_are_refused_on_every_controller_route_but_the_reviewers(tmp_path):
    cfg = Config(paths=PathsConfig(home=str(tmp_path / "home")))
    review_key, _ = auth.create_key(cfg.keys_file, [auth.REVIEW], "reviewer", reviewer="alice")
    app = controller.create_app(cfg, start_sink=False)
    routes = [(m, p) for m, p, _ in api_routes(app.routes) if p not in UNAUTHENTICATED]
    assert set(routes) >= REVIEW_ROUTES
    with TestClient(app) as client:
        for method, route_path in routes:
            path = route_path.replace("{", "").replace("}", "")
            for key in (cfg.auth.widget_key, review_key):
                r = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, json={})
                if key == review_key and (method, route_path) in REVIEW_ROUTES:
                    assert r.status_code not in (401, 403), (method, route_path, r.status_code, r.text)
                else:
                    assert r.status_code == 403, (method, route_path, r.status_code, r.text)


def test_keys_file_stores_digests_and_the_keyring_follows_it(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    ring = auth.Keyring(Config().auth, path)
    assert ring.lookup("kz_nothing_yet") is None  # no file: the config keys only
    key, record = auth.create_key(path, [auth.FEEDBACK, auth.CHAT], "shop widget")
    assert key not in path.read_text() and record["sha256"] in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert ring.lookup(key) is None  # looked less than a second ago: the file is not stat'ed again yet
    clock[0] += 1.0
    info = ring.lookup(key)
    assert info is not None and info.scopes == {auth.FEEDBACK, auth.CHAT} and info.key_id == record["id"]
    reviewer_key, _ = auth.create_key(path, [auth.REVIEW], reviewer="bob")
    clock[0] += 1.0
    assert ring.lookup(reviewer_key).reviewer == "bob"
    auth.revoke_key(path, record["id"])
    clock[0] += 1.0
    assert ring.lookup(key) is None and ring.lookup(reviewer_key) is not None
    path.write_text("{ half written")  # a broken file keeps the keys read before, and says why in the log
    clock[0] += 1.0
    assert ring.lookup(reviewer_key) is not None
    with pytest.raises(auth.KeysFileError, match="not valid JSON"):
        auth.read_keys_file(path)


@pytest.mark.parametrize("scopes, reviewer, problem", [
    (["bogus"], None, "scope: bogus"),
    ([], None, "none given"),
    (["review"], None, "must name its reviewer"),
    (["review"], "  ", "reviewer: must not be empty"),
])
def test_create_key_refuses_bad_input(tmp_path, scopes, reviewer, problem):
    with pytest.raises(ValueError, match=problem):
        auth.create_key(tmp_path / "keys.json", scopes, reviewer=reviewer)
    assert not (tmp_path / "keys.json").exists()


def test_keys_command(tmp_path, capsys, monkeypatch):
    from kaizenlm.cli import main

    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path))
    monkeypatch.delenv("KAIZEN_KEYS_FILE", raising=False)
    assert main(["keys", "create", "--scope", "review", "--reviewer", "alice", "--name", "alice's key"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("kz_") and "only time the key is shown" in out.err
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "review" in listing and "alice" in listing and key not in listing
    key_id = listing.splitlines()[1].split()[0]
    assert main(["keys", "revoke", key_id]) == 0
    assert f"revoked {key_id}" in capsys.readouterr().out
    assert main(["keys", "list"]) == 0 and key_id not in capsys.readouterr().out
    assert main(["keys", "list", "--all"]) == 0 and key_id in capsys.readouterr().out
    assert main(["keys", "create", "--scope", "root"]) == 2
    assert "scope: root" in capsys.readouterr().err
    assert main(["keys", "revoke", "k-nope"]) == 2
    assert "no key k-nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------ safe defaults


def test_loopback_addresses():
    assert all(auth.is_loopback(h) for h in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"))
    assert not any(auth.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal", ""))


def test_servers_refuse_default_secrets_beyond_loopback(tmp_path, capsys, monkeypatch):
    from kaizenlm.cli import main

    for var in ("KAIZEN_INGEST_KEY", "KAIZEN_WIDGET_KEY", "KAIZEN_ADMIN_KEY", "KAIZEN_FEEDBACK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAIZEN_HOME", str(tmp_path))
    assert main(["gateway", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start the gateway on 0.0.0.0" in err
    for name in ("auth.ingest_key", "auth.widget_key", "auth.admin_key", "auth.feedback_secret"):
        assert name in err
    toml = tmp_path / "kaizen.toml"
    toml.write_text('[controller]\nhost = "0.0.0.0"\n[auth]\nadmin_key = "a-real-admin-key"\n')
    assert main(["--config", str(toml), "controller"]) == 2
    err = capsys.readouterr().err
    assert "controller on 0.0.0.0" in err and "auth.ingest_key" in err and "auth.admin_key" not in err
    assert main(["--config", str(toml), "up"]) == 2
    secrets = {"ingest_key": "ingest-secret-1", "widget_key": "widget-secret-1", "admin_key": "admin-secret-1",
               "feedback_secret": "feedback-secret-0123456789"}
    assert auth.unsafe_defaults(config.from_dict({"auth": secrets}).auth) == []


@pytest.mark.parametrize("raw, key, problem", [
    ({"auth": {"widget_key": "kz-ingest-dev"}}, "auth.widget_key", "must all differ"),
    ({"auth": {"feedback_secret": "short"}}, "auth.feedback_secret", "at least 16"),
    ({"auth": {"feedback_secret_previous": "kz-feedback-secret-dev"}}, "auth.feedback_secret_previous", "must differ"),
    ({"auth": {"feedback_token_ttl_s": 5}}, "auth.feedback_token_ttl_s", "60..31622400"),
    ({"gateway": {"cors_origins": ["https://shop.example.com/page"]}}, "gateway.cors_origins[0]", "not an origin"),
    ({"gateway": {"rate_burst_per_user": 0}}, "gateway.rate_burst_per_user", "1..1000000"),
    ({"curation": {"anomaly_correction_rate": 0}}, "curation.anomaly_correction_rate", "(0, 1]"),
])
def test_security_settings_are_checked_by_name(raw, key, problem):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw)
    assert f"'{key}'" in str(e.value) and problem in str(e.value)
