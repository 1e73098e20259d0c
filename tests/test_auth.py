"""One auth scheme for every route of both processes (kaizenlm/auth.py): 401 for a missing or
unknown key, 403 for a key without the route's scope, the right key passes. Checked on the real
apps' route tables, so a route added without the check fails here."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from route_helpers import api_routes

from kaizenlm import auth
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
    assert e.value.status == 401 and "auth.admin_key" in e.value.message
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
