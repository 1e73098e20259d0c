"""API keys and scopes: the one check every route of the gateway and the controller uses.

A request names its key as `Authorization: Bearer <key>`. A missing or unknown key is
answered 401, a known key without the route's scope 403. Keys are compared in constant time
(`hmac.compare_digest` against every configured key), so the answer's timing does not tell
how much of a guessed key was right.

Scopes: `ingest` (log turns, feedback and signals; call the chat endpoint) and `admin` (the
controller's admin API). `auth.ingest_key` has `ingest`; `auth.admin_key` has both.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

INGEST, ADMIN = "ingest", "admin"
# Which configured key carries a scope: named in the 401/403 answers, so the caller knows what to send.
KEY_FOR_SCOPE = {INGEST: "auth.ingest_key (or KAIZEN_INGEST_KEY)", ADMIN: "auth.admin_key (or KAIZEN_ADMIN_KEY)"}


class AuthError(Exception):
    """401 (no or unknown key) or 403 (the key lacks the scope); `message` says what to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def keys_and_scopes(auth_cfg) -> list[tuple[str, frozenset[str]]]:
    """Every configured key with its scopes (auth_cfg: the [auth] section of the config)."""
    return [(auth_cfg.admin_key, frozenset({INGEST, ADMIN})), (auth_cfg.ingest_key, frozenset({INGEST}))]


def bearer_key(authorization: str) -> str:
    """The key of an `Authorization: Bearer <key>` header value, or '' when there is none."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def scopes_of(auth_cfg, key: str) -> frozenset[str] | None:
    """The scopes of `key`, or None for an unknown key. Compares against every key, always."""
    found = None
    for known, scopes in keys_and_scopes(auth_cfg):
        if hmac.compare_digest(key.encode(), known.encode()):
            found = scopes
    return found


def check(auth_cfg, authorization: str, scope: str) -> None:
    """Raise AuthError unless the header names a key with `scope`."""
    key = bearer_key(authorization)
    wanted = KEY_FOR_SCOPE.get(scope, f"a key with the '{scope}' scope")
    if not key:
        raise AuthError(401, f"missing API key: send 'Authorization: Bearer <key>' with {wanted}")
    scopes = scopes_of(auth_cfg, key)
    if scopes is None:
        raise AuthError(401, f"unknown API key: this route needs {wanted}")
    if scope not in scopes:
        raise AuthError(403, f"this key lacks the '{scope}' scope: this route needs {wanted}")


def require(scope: str):
    """A FastAPI dependency that answers 401/403 (with the message as `detail`) unless the
    request's key has `scope`. The app provides `app.state.cfg`."""

    def dependency(request: Request) -> None:
        try:
            check(request.app.state.cfg.auth, request.headers.get("authorization", ""), scope)
        except AuthError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            raise HTTPException(e.status, e.message, headers=headers) from None

    return dependency


require_admin = require(ADMIN)
Admin = Annotated[None, Depends(require_admin)]
"""Declare `_: Admin` on a route (or `dependencies=[Depends(require_admin)]` on a router)."""
