"""Exponential backoff with full jitter, bounded by attempts and total time, honouring Retry-After.

Small on purpose: the Azure DevOps adapter decides what is worth retrying; this module only
decides how long to wait and when to give up. Sleep, clock and randomness are injectable so tests
run without waiting.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one call is retried."""

    attempts: int = 6
    """Tries in all, the first included."""
    base_delay_s: float = 0.5
    """Upper bound of the first backoff; doubles with every retry."""
    max_delay_s: float = 30.0
    """Upper bound of any one backoff (a longer Retry-After is still honoured)."""
    total_s: float = 120.0
    """Most time, from the first try, after which no further try starts."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter backoff before retry number `retry` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        return rng.uniform(0, ceiling)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class Retrier:
    """Hands out one `RetryBudget` per call; shares the policy, sleep, clock and randomness."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security  # nosec B311

    def budget(self) -> RetryBudget:
        return RetryBudget(self.policy, self._sleep, self._clock, self._rng)


class RetryBudget:
    """The retries left to one call."""

    def __init__(self, policy: RetryPolicy, sleep: Sleep, clock: Clock, rng: random.Random) -> None:
        self._policy = policy
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._deadline = clock() + policy.total_s
        self.retries = 0

    async def wait(self, retry_after: float | None = None) -> bool:
        """Sleep before the next try and return True; False (at once) when the budget is spent.

        A `Retry-After` is honoured as a minimum (plus a little jitter so that concurrent
        callers do not return together); one that reaches past the deadline ends the retries.
        """
        if self.retries + 1 >= self._policy.attempts:
            return False
        retry = self.retries + 1
        delay = self._policy.backoff(retry, self._rng)
        if retry_after is not None:
            delay = retry_after + self._rng.uniform(0, self._policy.base_delay_s)
        if self._clock() + delay > self._deadline:
            return False
        self.retries = retry
        await self._sleep(delay)
        return True
