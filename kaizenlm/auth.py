"""API keys and scopes: the one check every route of the gateway and the controller uses.

A request names its key as `Authorization: Bearer <key>`. A missing or unknown key is
answered 401, a known key without the route's scope 403. Keys are known by their SHA-256
digest only, and a presented key is looked up by its digest (one dict lookup, however many
keys there are). The lookup's timing can tell an attacker at most how much of a *digest*
matched, and a digest leads back to no key (that would take a SHA-256 preimage), so the
guessing a plain string compare would allow is not possible.

Scopes (docs/SECURITY.md has who holds which and why):

- `chat`: POST /v1/chat/completions, GET /v1/models and /v1/routing;
- `ingest`: server side: POST /v1/turns, and feedback and signals on any turn as any user;
- `feedback`: public (the widget): feedback and signals that carry a valid feedback token
  for their turn and user (kaizenlm.feedback.tokens), nothing else;
- `review`: human review of training data (kaizenlm.annotate); a key carries a reviewer name;
- `admin`: the controller's admin API.

Keys: `auth.ingest_key` (chat + ingest + feedback), `auth.widget_key` (feedback),
`auth.admin_key` (all), and any number of keys in the keys file (`auth.keys_file`, default
<home>/keys.json; `kaizen keys create|list|revoke`), which stores each key's digest, never
the key, and is re-read within a second of a change (`Keyring`), so adding or revoking a
key needs no restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, HTTPException, Request

log = logging.getLogger(__name__)

CHAT, INGEST, FEEDBACK, REVIEW, ADMIN = "chat", "ingest", "feedback", "review", "admin"
SCOPES = (CHAT, INGEST, FEEDBACK, REVIEW, ADMIN)
INGEST_KEY_SCOPES = frozenset({CHAT, INGEST, FEEDBACK})
WIDGET_KEY_SCOPES = frozenset({FEEDBACK})
ADMIN_KEY_SCOPES = frozenset(SCOPES)
# Which keys carry a scope: named in the 401/403 answers, so the caller knows what to send.
KEY_FOR_SCOPE = {
    CHAT: "auth.ingest_key (KAIZEN_INGEST_KEY), the admin key, or a keys-file key with 'chat'",
    INGEST: "auth.ingest_key (KAIZEN_INGEST_KEY), the admin key, or a keys-file key with 'ingest'",
    FEEDBACK: "auth.widget_key (KAIZEN_WIDGET_KEY), the ingest or admin key, or a keys-file key with 'feedback'",
    REVIEW: "a keys-file key with 'review' (`kaizen keys create --scope review --reviewer NAME`) or the admin key",
    ADMIN: "auth.admin_key (KAIZEN_ADMIN_KEY) or a keys-file key with 'admin'",
}
RELOAD_EVERY_S = 1.0  # the keys file is stat'ed at most this often, never per request
KEYS_FILE_FORMAT = 1


class AuthError(Exception):
    """401 (no or unknown key) or 403 (the key lacks the scope); `message` says what to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class KeysFileError(ValueError):
    """The keys file cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class KeyInfo:
    """What a request's key may do. `key_id` names the key without revealing it: the config key
    ("auth.widget_key") or the keys file's id ("k-3f9a1c2b"); it is what logs may show."""

    key_id: str
    scopes: frozenset[str]
    reviewer: str | None = None
    name: str = ""

    @property
    def server_side(self) -> bool:
        """A server key (scope `ingest`): its feedback needs no feedback token."""
        return INGEST in self.scopes


def key_digest(key: str) -> bytes:
    """SHA-256 of a key: what the keys file stores and what lookups compare. Keys made by
    `kaizen keys create` carry 256 random bits, so a fast hash is as safe as a slow one and
    costs a microsecond per request instead of tens of milliseconds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key() -> str:
    """A fresh key: 'kz_' + 43 characters of base64url (256 random bits)."""
    return "kz_" + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------------------------
# The keys file


def read_keys_file(path: Path) -> list[dict]:
    """The records of a keys file (revoked ones included); [] when the file does not exist."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeysFileError(f"{path}: cannot read the keys file ({e.strerror})") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise KeysFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != KEYS_FILE_FORMAT or not isinstance(doc.get("keys"), list):
        raise KeysFileError(f"{path}: not a kaizen keys file (expected {{\"format\": 1, \"keys\": [...]}})")
    for i, rec in enumerate(doc["keys"]):
        problem = _record_problem(rec)
        if problem:
            raise KeysFileError(f"{path}: keys[{i}]: {problem}")
    return doc["keys"]


def _record_problem(rec: object) -> str | None:
    if not isinstance(rec, dict):
        return "must be an object"
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "id: missing"
    digest = rec.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return "sha256: must be 64 lowercase hex digits"
    scopes = rec.get("scopes")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        return f"scopes: must be a non-empty list of {', '.join(SCOPES)}"
    if rec.get("reviewer") is not None and not isinstance(rec["reviewer"], str):
        return "reviewer: must be a string or null"
    return None


def write_keys_file(path: Path, records: list[dict]) -> None:
    """Replace the keys file atomically (a temporary file renamed over it), readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps({"format": KEYS_FILE_FORMAT, "keys": records}, option=orjson.OPT_INDENT_2)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_key(path: Path, scopes: list[str], name: str = "", reviewer: str | None = None) -> tuple[str, dict]:
    """Add a new key to the keys file; returns (the key, its record). The key itself is
    returned once and stored nowhere."""
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValueError(f"scope: {', '.join(unknown) or 'none given'}: choose from {', '.join(SCOPES)}")
    if reviewer is not None and not reviewer.strip():
        raise ValueError("reviewer: must not be empty")
    if REVIEW in scopes and reviewer is None:
        raise ValueError("reviewer: a key with the 'review' scope must name its reviewer (--reviewer NAME)")
    records = read_keys_file(path)
    key = new_key()
    taken = {r["id"] for r in records}
    key_id = next(i for i in (f"k-{secrets.token_hex(4)}" for _ in range(100)) if i not in taken)
    record = {"id": key_id, "name": name, "scopes": sorted(set(scopes), key=SCOPES.index),
              "reviewer": reviewer.strip() if reviewer else None, "sha256": key_digest(key).hex(),
              "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "revoked_at": None}
    write_keys_file(path, [*records, record])
    return key, record


def revoke_key(path: Path, key_id: str) -> dict:
    """Mark a key revoked (kept in the file, so the listing shows when); returns its record."""
    records = read_keys_file(path)
    for rec in records:
        if rec["id"] == key_id:
            if rec.get("revoked_at") is None:
                rec["revoked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                write_keys_file(path, records)
            return rec
    known = ", ".join(r["id"] for r in records) or "none"
    raise LookupError(f"no key {key_id} in {path}; known ids: {known}")


# ---------------------------------------------------------------------------------------------
# Looking keys up


class Keyring:
    """The keys one process accepts: the three config keys and the keys file's live keys. The
    file is stat'ed at most once a second (never per request) and re-read when its mtime,
    size or inode changed; a file that fails to parse keeps the previous keys and logs why."""

    def __init__(self, auth_cfg, keys_file: Path | None = None):
        self._fixed = [(key_digest(auth_cfg.admin_key), KeyInfo("auth.admin_key", ADMIN_KEY_SCOPES, "admin", "admin")),
                       (key_digest(auth_cfg.ingest_key), KeyInfo("auth.ingest_key", INGEST_KEY_SCOPES)),
                       (key_digest(auth_cfg.widget_key), KeyInfo("auth.widget_key", WIDGET_KEY_SCOPES))]
        self.keys_file = Path(keys_file) if keys_file is not None else None
        self._by_digest = dict(self._fixed)
        self._stamp: tuple | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def lookup(self, key: str) -> KeyInfo | None:
        """The key's KeyInfo, or None for an unknown or revoked key (see the module docstring on timing)."""
        if self.keys_file is not None and time.monotonic() >= self._next_check:
            self._reload()
        return self._by_digest.get(key_digest(key))

    def _reload(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return
            self._next_check = now + RELOAD_EVERY_S
            try:
                st = os.stat(self.keys_file)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp:
                return
            try:
                records = read_keys_file(self.keys_file) if stamp is not None else []
            except KeysFileError as e:
                log.error("keys file not reloaded, keeping the keys read before: %s", e)
                return
            self._stamp = stamp
            live = [(bytes.fromhex(r["sha256"]), KeyInfo(r["id"], frozenset(r["scopes"]), r.get("reviewer"),
                                                        r.get("name") or ""))
                    for r in records if r.get("revoked_at") is None]
            # the config keys win over a file entry with the same digest: they cannot be revoked there
            self._by_digest = {**dict(live), **dict(self._fixed)}


_config_keyrings: dict[tuple, Keyring] = {}


def keyring_for(auth_cfg) -> Keyring:
    """A Keyring of the config's three keys only (no keys file), cached per distinct keys."""
    cache_key = (auth_cfg.admin_key, auth_cfg.ingest_key, auth_cfg.widget_key)
    ring = _config_keyrings.get(cache_key)
    if ring is None:
        ring = _config_keyrings[cache_key] = Keyring(auth_cfg)
    return ring


def bearer_key(authorization: str) -> str:
    """The key of an `Authorization: Bearer <key>` header value, or '' when there is none."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def check(keys, authorization: str, scope: str) -> KeyInfo:
    """The request's KeyInfo; raises AuthError unless the header names a key with `scope`.

    keys: a Keyring (the processes keep one in `app.state.keyring`) or an [auth] config section."""
    ring = keys if isinstance(keys, Keyring) else keyring_for(keys)
    key = bearer_key(authorization)
    wanted = KEY_FOR_SCOPE.get(scope, f"a key with the '{scope}' scope")
    if not key:
        raise AuthError(401, f"missing API key: send 'Authorization: Bearer <key>' with {wanted}")
    info = ring.lookup(key)
    if info is None:
        raise AuthError(401, f"unknown API key (a revoked key is unknown too): this route needs {wanted}")
    if scope not in info.scopes:
        raise AuthError(403, f"this key ({info.key_id}) lacks the '{scope}' scope: this route needs {wanted}")
    return info


def keyring_of(app) -> Keyring:
    """The app's Keyring (`app.state.keyring`), or one of its config's keys."""
    ring = getattr(app.state, "keyring", None)
    return ring if ring is not None else keyring_for(app.state.cfg.auth)


def require(scope: str):
    """A FastAPI dependency that answers 401/403 (with the message as `detail`) unless the
    request's key has `scope`; it returns the KeyInfo (a reviewer's name, say). The app
    provides `app.state.cfg` and, to accept keys-file keys, `app.state.keyring`."""

    def dependency(request: Request) -> KeyInfo:
        try:
            return check(keyring_of(request.app), request.headers.get("authorization", ""), scope)
        except AuthError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            raise HTTPException(e.status, e.message, headers=headers) from None

    return dependency


require_admin = require(ADMIN)
Admin = Annotated[KeyInfo, Depends(require_admin)]
"""Declare `_: Admin` on a route (or `dependencies=[Depends(require_admin)]` on a router)."""
require_review = require(REVIEW)
Reviewer = Annotated[KeyInfo, Depends(require_review)]
"""Declare `key: Reviewer` on a review route; `key.reviewer` is who reviews."""


# ---------------------------------------------------------------------------------------------
# Safe defaults


SECRET_SETTINGS = (("ingest_key", "KAIZEN_INGEST_KEY"), ("widget_key", "KAIZEN_WIDGET_KEY"),
                   ("admin_key", "KAIZEN_ADMIN_KEY"), ("feedback_secret", "KAIZEN_FEEDBACK_SECRET"))


def unsafe_defaults(auth_cfg) -> list[str]:
    """The [auth] keys and secrets still at their development defaults, by config key and variable.
    (The defaults are read from a default-built section of the same class: auth.py may not
    import kaizenlm.config, which sits in the same layer.)"""
    defaults = type(auth_cfg)()
    return [f"auth.{name} ({env})" for name, env in SECRET_SETTINGS if getattr(auth_cfg, name) == getattr(defaults, name)]


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only (127.0.0.0/8, ::1, localhost).
    Any other name, and 0.0.0.0 or ::, counts as reachable from outside."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
