"""Feedback tokens (HMAC over turn id, user id and expiry, with secret rotation) and the token
buckets that rate-limit the public routes: the parts, without processes."""

from __future__ import annotations

import math

import pytest

from kaizenlm.config import GatewayConfig
from kaizenlm.feedback.ratelimit import PublicRateLimits, TokenBuckets
from kaizenlm.feedback.tokens import FeedbackTokens, TokenError

SECRET, OLD, NEW = "s" * 20, "old-secret-0123456789", "new-secret-0123456789"
NOW = 1_750_000_000.0


def test_a_token_proves_its_turn_and_user_until_it_expires():
    tokens = FeedbackTokens(SECRET, ttl_s=3600)
    token = tokens.issue("turn-1", "alice", now=NOW)
    assert token.startswith(f"v1.{int(NOW) + 3600}.")
    assert tokens.verify(token, "turn-1", now=NOW + 10) == "alice"
    assert tokens.verify(token, "turn-1", "alice", now=NOW + 3600) == "alice"
    problems = {
        "expired at": lambda: tokens.verify(token, "turn-1", now=NOW + 3601),
        "not valid for turn_id 'turn-2'": lambda: tokens.verify(token, "turn-2", now=NOW),
        "user_id: 'bob' is not the user": lambda: tokens.verify(token, "turn-1", "bob", now=NOW),
        "missing": lambda: tokens.verify(None, "turn-1", now=NOW),
        "malformed": lambda: tokens.verify("v1.x.y", "turn-1", now=NOW),
    }
    for phrase, call in problems.items():
        with pytest.raises(TokenError, match=phrase):
            call()
    _, expiry, user, mac = token.split(".")
    forged_user = FeedbackTokens(SECRET).issue("turn-1", "bob", now=NOW).split(".")[2]
    for altered in (f"v1.{int(expiry) + 1}.{user}.{mac}",  # a longer life
                    f"v1.{expiry}.{forged_user}.{mac}",  # another user
                    f"v1.{expiry}.{user}.{mac[:-1]}{'B' if mac[-1] != 'B' else 'C'}",
                    FeedbackTokens("another-secret-0123").issue("turn-1", "alice", now=NOW)):
        with pytest.raises(TokenError, match="not valid for turn_id 'turn-1'"):
            tokens.verify(altered, "turn-1", now=NOW)


def test_two_secrets_are_valid_during_a_rotation():
    before = FeedbackTokens(OLD).issue("t", "u", now=NOW)
    rotating = FeedbackTokens(NEW, previous=OLD)
    after = rotating.issue("t", "u", now=NOW)
    assert rotating.verify(before, "t", now=NOW) == "u" and rotating.verify(after, "t", now=NOW) == "u"
    assert FeedbackTokens(NEW).verify(after, "t", now=NOW) == "u"  # new tokens are signed with the new secret
    with pytest.raises(TokenError, match="no longer accepts"):
        FeedbackTokens(NEW).verify(before, "t", now=NOW)  # rotation done: the old secret is retired


def test_token_buckets_refill_at_the_rate_and_forget_the_least_recent():
    buckets = TokenBuckets(rate=2.0, burst=4, max_keys=2)
    assert buckets.wait_s("a", 4, NOW) == 0
    buckets.take("a", 4, NOW)
    assert buckets.wait_s("a", 1, NOW) == pytest.approx(0.5)
    assert buckets.wait_s("a", 1, NOW + 0.5) == 0  # one token back after half a second
    assert buckets.wait_s("a", 4, NOW + 10) == 0  # never more than the burst
    assert math.isinf(buckets.wait_s("a", 5, NOW))  # more than the burst at once: never
    buckets.take("b", 4, NOW)
    buckets.wait_s("c", 1, NOW)  # a third key: the least recently used ("a") goes, and comes back full
    assert set(buckets._buckets) == {"b", "c"}
    assert TokenBuckets(rate=0, burst=1).wait_s("x", 10**6, NOW) == 0  # rate 0: the limit is off


def test_public_limits_refuse_a_request_whole():
    limits = PublicRateLimits(GatewayConfig(rate_limit_per_user=1.0, rate_burst_per_user=3,
                                            rate_limit_per_address=1.0, rate_burst_per_address=10))
    assert limits.charge_users({"u1": 2, "u2": 3}, now=NOW) is None
    refused = limits.charge_users({"u1": 1, "u2": 1}, now=NOW)  # u2 is out: u1 pays nothing either
    assert refused.limit == "user" and "user 'u2'" in refused.message and refused.retry_after_s == pytest.approx(1.0)
    assert limits.by_user.wait_s("u1", 1, NOW) == 0
    over = limits.charge_address("10.0.0.1", 11, now=NOW)
    assert over.limit == "address" and "over the burst of 10" in over.message
    assert limits.charge_address("10.0.0.1", 10, now=NOW) is None
    assert limits.charge_address("10.0.0.2", 1, now=NOW) is None  # each address has its own bucket
