"""The per-token rate limiter of the gateway (hevlayer.gateway.ratelimit), on an injected clock:
no sleeps, no timing assertions."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.clock import Clock

from hevlayer.common import metrics
from hevlayer.common.auth import READER, STAGER, WORKER, Principal
from hevlayer.common.config import ConfigError
from hevlayer.common.errors import ResourceExhausted
from hevlayer.gateway.ratelimit import DEFAULT_RATE, Rate, RateLimiter, TokenBucket, parse_rates
from hevlayer.gateway.settings import GatewaySettings


def principal(token_id: str, role: str = READER) -> Principal:
    return Principal(token_id=token_id, name="t", role=role, all_pipelines=True, pipelines=frozenset())


rates = st.builds(
    Rate,
    per_second=st.floats(min_value=0.01, max_value=1000.0, allow_nan=False, allow_infinity=False),
    burst=st.integers(min_value=1, max_value=200),
)
steps = st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False, allow_infinity=False), max_size=300)


@settings(max_examples=200, deadline=None)
@given(rate=rates, gaps=steps)
def test_a_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate: Rate, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, 50.0)
    now, admitted = 50.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted.append(now)
    # Over every window, not only since the start: an idle spell saves at most a burst.
    for i, first in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate.burst + rate.per_second * (admitted[j] - first) + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=rates, gaps=steps)
def test_a_refusal_names_the_time_at_which_the_next_call_is_admitted(rate: Rate, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, 0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait:
            assert wait > 0
            if wait * rate.per_second > 1e-6:  # a little earlier (beyond rounding): still refused
                assert copy.copy(bucket).take(now + wait * 0.999) > 0
            now += wait * (1 + 1e-9) + 1e-9
            assert bucket.take(now) == 0.0


@given(rate=rates)
def test_a_new_bucket_admits_its_burst_at_once_then_refuses(rate: Rate) -> None:
    bucket = TokenBucket(rate, 7.0)
    assert [bucket.take(7.0) for _ in range(rate.burst)] == [0.0] * rate.burst
    assert bucket.take(7.0) == pytest.approx(1 / rate.per_second)


def refused_count(role: str, transport: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "gateway_rate_limited_total", {"role": role, "transport": transport}
    )
    return value or 0.0


def test_the_limiter_refuses_one_token_and_not_another() -> None:
    clock = Clock()
    limiter = RateLimiter({READER: Rate(2.0, 3)}, clock=clock)
    busy, calm = principal("tok_busy"), principal("tok_calm")
    before = refused_count(READER, "grpc")
    for _ in range(3):
        limiter.check(busy, "grpc")
    with pytest.raises(ResourceExhausted) as caught:
        limiter.check(busy, "grpc")
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after == pytest.approx(0.5)
    assert "tok_busy" in error.message
    assert "GATEWAY_RATE_LIMITS" in error.message
    assert error.metadata == {"role": READER, "calls_per_second": "2", "burst": "3"}
    assert refused_count(READER, "grpc") == before + 1
    limiter.check(calm, "grpc")  # another token has its own bucket
    clock.now += 0.5
    limiter.check(busy, "grpc")  # admitted when RetryInfo said
    with pytest.raises(ResourceExhausted):
        limiter.check(busy, "rest")  # one bucket for both transports
    assert refused_count(READER, "rest") >= 1


def test_a_role_without_a_limit_is_never_refused_and_holds_no_bucket() -> None:
    limiter = RateLimiter({WORKER: Rate(0.0, 0), READER: Rate(1.0, 1)}, clock=Clock())
    for _ in range(1000):
        limiter.check(principal("tok_w", WORKER), "grpc")
    assert len(limiter) == 0


def test_full_buckets_are_dropped_and_at_most_max_buckets_are_held() -> None:
    clock = Clock()
    limiter = RateLimiter({READER: Rate(10.0, 5)}, clock=clock, max_buckets=100)
    for i in range(500):
        limiter.check(principal(f"tok_{i}"), "grpc")
        assert len(limiter) <= 100
    # One call took one of 5 tokens: every bucket is full again 0.1 s later, so dropped.
    clock.now += 0.1
    limiter.check(principal("tok_new"), "grpc")
    assert len(limiter) == 1
    # A dropped bucket was full: the token starts again from a full burst, as it would have.
    for _ in range(5):
        limiter.check(principal("tok_7"), "grpc")
    with pytest.raises(ResourceExhausted):
        limiter.check(principal("tok_7"), "grpc")


def test_parse_rates_defaults_overrides_and_errors() -> None:
    assert parse_rates("") == dict.fromkeys(("admin", STAGER, WORKER, READER), DEFAULT_RATE)
    rates = parse_rates(" reader=50:100 , worker=0, stager=2.5")
    assert rates[READER] == Rate(50.0, 100)
    assert not rates[WORKER].limited
    assert rates[STAGER] == Rate(2.5, 3)
    assert rates["admin"] == DEFAULT_RATE
    for bad in (
        "reader",
        "root=1:2",
        "reader=x:2",
        "reader=1:y",
        "reader=-1:2",
        "reader=1:0",
        "reader=inf:2",
    ):
        with pytest.raises(ConfigError) as caught:
            parse_rates(bad)
        assert str(caught.value).startswith("GATEWAY_RATE_LIMITS:"), bad


def test_the_gateway_settings_reject_bad_rate_limits() -> None:
    GatewaySettings(rate_limits="reader=5:10").validate()
    with pytest.raises(ConfigError, match="GATEWAY_RATE_LIMITS"):
        GatewaySettings(rate_limits="reader=5:0").validate()
