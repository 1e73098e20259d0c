"""Feedback tokens: proof that a turn was served (or logged) by this system to a given user.

A public (widget) key may only post feedback and signals that carry the token of their turn,
so nobody can write feedback on a turn they were not served, or as a user they are not.
The gateway issues a token with every chat answer (`feedback_token` in the body, header
`X-Kaizen-Feedback-Token`) and every turn logged through POST /v1/turns
(`feedback_tokens`); the SDK and the widget send it back with the feedback.

Form: ``v1.<expiry>.<user>.<signature>``

- ``expiry``: Unix seconds after which the token is refused (issued + `auth.feedback_token_ttl_s`);
- ``user``: the user id, base64url: the widget need not know it (a request may still name it,
  and must then name the same one);
- ``signature``: base64url of HMAC-SHA256(`auth.feedback_secret`, "kaizen-feedback-v1", turn
  id, user id, expiry), which binds all three: altering any of them, or moving the token to
  another turn, breaks it.

Rotation: tokens are signed with `feedback_secret` and accepted when either it or
`feedback_secret_previous` verifies them, so a new secret can be rolled out while tokens
signed with the old one run out (docs/SECURITY.md). Tokens are never stored: the gateway
checks them and drops them before an event is published.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from datetime import UTC, datetime

VERSION = "v1"
DOMAIN = b"kaizen-feedback-v1"  # what the MAC is for: no other HMAC under this secret can pass as a token


class TokenError(ValueError):
    """A token that does not prove its turn and user; the message names the problem."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackTokens:
    """Issues and checks feedback tokens (one per gateway process; a few microseconds each)."""

    def __init__(self, secret: str, previous: str = "", ttl_s: int = 604_800):
        self.ttl_s = ttl_s
        # HMAC objects keyed once: copying one is cheaper than keying a new one per token.
        self._signers = [hmac.new(s.encode(), digestmod=hashlib.sha256) for s in (secret, previous) if s]

    @classmethod
    def from_config(cls, auth_cfg) -> FeedbackTokens:
        return cls(auth_cfg.feedback_secret, auth_cfg.feedback_secret_previous, auth_cfg.feedback_token_ttl_s)

    def _mac(self, signer, turn_id: str, user_id: str, expiry: int) -> bytes:
        h = signer.copy()
        h.update(b"\n".join((DOMAIN, turn_id.encode(), user_id.encode(), str(expiry).encode())))
        return h.digest()

    def issue(self, turn_id: str, user_id: str, now: float | None = None) -> str:
        """The token of a turn served to `user_id`, valid for ttl_s from now."""
        expiry = int(now if now is not None else time.time()) + self.ttl_s
        mac = self._mac(self._signers[0], turn_id, user_id, expiry)
        return f"{VERSION}.{expiry}.{_b64(user_id.encode())}.{_b64(mac)}"

    def verify(self, token: object, turn_id: str, user_id: str | None = None, now: float | None = None) -> str:
        """The user id the token was issued to, if it proves (turn_id, that user) and has not
        expired; raises TokenError naming the problem otherwise. `user_id`, when given, must be
        the token's user."""
        if token is None or token == "":
            raise TokenError("feedback_token: missing; with a widget (feedback-scope) key every event must carry "
                             "the feedback_token its turn came with (the chat answer's `feedback_token`, or "
                             "`feedback_tokens` of POST /v1/turns)")
        parts = token.split(".") if isinstance(token, str) and len(token) <= 512 else []
        try:
            version, expiry_text, user_b64, mac_b64 = parts
            if version != VERSION or not expiry_text.isdigit():
                raise ValueError
            expiry = int(expiry_text)
            token_user = _unb64(user_b64).decode("utf-8")
            mac = _unb64(mac_b64)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise TokenError("feedback_token: malformed; send the token string exactly as the gateway issued it") \
                from None
        # Every secret is tried, whichever matches, so the timing says nothing about which did.
        valid = False
        for signer in self._signers:
            valid |= hmac.compare_digest(mac, self._mac(signer, turn_id, token_user, expiry))
        if not valid:
            raise TokenError(f"feedback_token: not valid for turn_id '{turn_id}' (issued for another turn, altered, "
                             "or signed with a secret this gateway no longer accepts)")
        if user_id is not None and user_id != token_user:
            raise TokenError(f"user_id: '{user_id}' is not the user turn '{turn_id}' was served to (its feedback_token "
                             "names another user)")
        if (now if now is not None else time.time()) > expiry:
            when = datetime.fromtimestamp(expiry, UTC).isoformat(timespec="seconds")
            raise TokenError(f"feedback_token: expired at {when}; feedback on a turn is accepted for "
                             f"auth.feedback_token_ttl_s ({self.ttl_s} s) after it was served")
        return token_user
