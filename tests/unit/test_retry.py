"""The retry helper: bounded attempts and time, full jitter, Retry-After honoured."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from cleanup.retry import Retrier, RetryPolicy, parse_retry_after


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def retrier(policy: RetryPolicy, fake: FakeTime) -> Retrier:
    return Retrier(policy, sleep=fake.sleep, clock=fake.clock, rng=random.Random(1))


async def test_attempts_are_bounded():
    """A policy of 4 attempts allows 3 waits."""
    fake = FakeTime()
    budget = retrier(RetryPolicy(attempts=4, total_s=1e9), fake).budget()
    results = [await budget.wait() for _ in range(5)]
    assert results == [True, True, True, False, False]


async def test_backoff_grows_within_its_ceiling():
    """Each wait is at most base * 2**(n-1), capped at max_delay_s."""
    fake = FakeTime()
    policy = RetryPolicy(attempts=10, base_delay_s=1, max_delay_s=4, total_s=1e9)
    budget = retrier(policy, fake).budget()
    while await budget.wait():
        pass
    ceilings = [min(4, 2**i) for i in range(len(fake.sleeps))]
    assert all(0 <= s <= c for s, c in zip(fake.sleeps, ceilings, strict=True))


async def test_total_time_is_bounded():
    """No wait starts that would end past total_s."""
    fake = FakeTime()
    budget = retrier(RetryPolicy(attempts=100, base_delay_s=10, total_s=25), fake).budget()
    while await budget.wait():
        pass
    assert fake.now <= 25


async def test_retry_after_is_a_minimum():
    """Retry-After sets the wait (plus at most base_delay_s of jitter)."""
    fake = FakeTime()
    budget = retrier(RetryPolicy(base_delay_s=0.5), fake).budget()
    assert await budget.wait(retry_after=12)
    assert 12 <= fake.sleeps[0] <= 12.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("Wed, 02 Dec 2026 10:00:30 GMT", 30.0),
    ],
)
def test_parse_retry_after(value, expected):
    """Retry-After as delta-seconds or HTTP-date; anything else is None."""
    now = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(value, now) == expected
