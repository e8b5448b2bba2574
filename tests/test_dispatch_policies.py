"""Pure policies of the delivery engine: the rate limiter (with injected time), backoff, the retry
decision and quiet-hours windows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from broadcaster.providers.base import ProviderError
from broadcaster.quiet_hours import QuietHours, QuietHoursError, effective
from broadcaster.ratelimit import RateLimiter, default_concurrency
from broadcaster.retry import Backoff, Decision, decide
from tests.dispatch_helpers import FakeTime, worst_second

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _drive(
    limiter: RateLimiter, clock: FakeTime, costs: list[int], key: str = "k"
) -> list[tuple[float, int]]:
    sent = []
    for cost in costs:
        assert limiter.acquire(key, cost)
        sent.append((clock.now, cost))
    return sent


@pytest.mark.parametrize(
    ("rate", "costs"),
    [
        (100, [1] * 1000),
        (10, [random.Random(1).choice([1, 2, 3]) for _ in range(300)]),
        (1000, [random.Random(2).choice([1, 1, 2, 4]) for _ in range(5000)]),
        (1, [1] * 20),
    ],
)
def test_rate_limiter_never_exceeds_the_rate_in_any_second_and_keeps_pace(
    rate: int, costs: list[int]
) -> None:
    clock = FakeTime()
    limiter = RateLimiter(rate, monotonic=clock.monotonic, sleep=clock.sleep)
    sent = _drive(limiter, clock, costs)
    assert worst_second(sent) <= rate * 1.01
    elapsed = sent[-1][0] - sent[0][0]
    units_after_first = sum(costs) - costs[0]
    assert units_after_first / elapsed >= rate * 0.85  # and it does not crawl either


def test_rate_limiter_counts_each_sender_separately() -> None:
    clock = FakeTime()
    limiter = RateLimiter(5, monotonic=clock.monotonic, sleep=clock.sleep)
    times = {"a": [], "b": []}
    for _ in range(20):
        for key in ("a", "b"):
            assert limiter.acquire(key, 1)
            times[key].append(clock.now)
    for key in ("a", "b"):
        assert worst_second([(t, 1) for t in times[key]]) <= 5
    assert clock.now - 1000.0 < 4.5  # 40 messages in ~4 s: the two senders went in parallel


def test_rate_limiter_lets_an_oversized_message_through_alone_and_can_be_cancelled() -> None:
    import threading

    clock = FakeTime()
    limiter = RateLimiter(2, monotonic=clock.monotonic, sleep=clock.sleep)
    sent = _drive(limiter, clock, [5, 1, 5])
    assert [c for _, c in sent] == [5, 1, 5]
    assert sent[1][0] - sent[0][0] >= 1.0 and sent[2][0] - sent[1][0] >= 1.0
    cancel = threading.Event()
    cancel.set()
    assert limiter.try_take("k", 1) > 0
    assert limiter.acquire("k", 1, cancel=cancel) is False


def test_default_concurrency_reaches_the_rate_at_200ms_per_request() -> None:
    assert default_concurrency(100) == 25
    assert default_concurrency(1) == 1
    assert default_concurrency(10_000) == 64
    assert default_concurrency(0) == 8
    # The event loop: twice the need, so a provider slower than 200 ms still gets the full rate.
    assert default_concurrency(200, event_loop=True) == 80
    assert default_concurrency(100_000, event_loop=True) == 256
    assert default_concurrency(0, event_loop=True) == 32


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    backoff = Backoff(base=2, cap=60)
    rng = random.Random(3)
    for attempt, (low, high) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (30, 60)}.items():
        delays = [backoff.delay(attempt, rng).total_seconds() for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert max(delays) - min(delays) > (high - low) / 2  # really jittered


def test_retry_decision_follows_the_adapters_classification() -> None:
    maybe = ProviderError("timeout", accepted_maybe=True, transient=True)
    busy = ProviderError("429", code="20429", http_status=429, transient=True)
    stop = ProviderError("unsubscribed", code="21610", opt_out=True)
    bad = ProviderError("invalid", code="21211")
    assert decide(maybe, 9, 5) is Decision.UNKNOWN
    assert decide(busy, 1, 5) is Decision.RETRY
    assert decide(busy, 5, 5) is Decision.FAIL
    assert decide(stop, 1, 5) is Decision.FAIL
    assert decide(bad, 1, 5) is Decision.FAIL


def test_quiet_hours_across_midnight_open_at_the_next_morning() -> None:
    window = QuietHours.parse("21:00-08:00")
    assert str(window) == "21:00-08:00"
    evening = datetime(2011, 8, 31, 22, 30, tzinfo=SHANGHAI)
    night = datetime(2011, 9, 1, 3, 0, tzinfo=SHANGHAI)
    morning = datetime(2011, 9, 1, 8, 0, tzinfo=SHANGHAI)
    opens = datetime(2011, 9, 1, 8, 0, tzinfo=SHANGHAI)
    assert window.opens_at(evening, SHANGHAI) == opens
    assert window.opens_at(night, SHANGHAI) == opens
    assert window.opens_at(night, SHANGHAI).tzinfo == UTC
    assert window.opens_at(morning, SHANGHAI) is None
    assert window.opens_at(datetime(2011, 9, 1, 20, 59, 59, tzinfo=SHANGHAI), SHANGHAI) is None
    # The same instant seen from UTC: 13:30 UTC is 21:30 in Shanghai.
    assert window.opens_at(datetime(2011, 8, 31, 13, 30, tzinfo=UTC), SHANGHAI) == opens


def test_quiet_hours_within_a_day_and_bad_values() -> None:
    lunch = QuietHours.parse(" 12:00 - 13:30 ")
    assert lunch.contains(time(12, 0)) and not lunch.contains(time(13, 30))
    noon = datetime(2011, 9, 9, 12, 15, tzinfo=SHANGHAI)
    assert lunch.opens_at(noon, SHANGHAI) == noon.replace(hour=13, minute=30)
    for bad in ("21-08", "25:00-08:00", "21:00-21:00", "21:00", "evening"):
        with pytest.raises(QuietHoursError, match="quiet hours"):
            QuietHours.parse(bad)


def test_a_runs_quiet_hours_win_over_the_setting() -> None:
    assert effective(None, "21:00-08:00") == QuietHours.parse("21:00-08:00")
    assert effective("22:00-07:00", "21:00-08:00") == QuietHours.parse("22:00-07:00")
    assert effective("none", "21:00-08:00") is None
    assert effective("OFF", None) is None
    assert effective(None, None) is None
    assert effective(None, "21:00-08:00").opens_at(  # type: ignore[union-attr]
        datetime(2011, 8, 31, 23, 0, tzinfo=SHANGHAI), SHANGHAI
    ) == datetime(2011, 9, 1, 8, 0, tzinfo=SHANGHAI) - timedelta(0)


def test_a_lease_holder_is_gone_only_when_its_process_surely_is() -> None:
    import os
    import socket
    import subprocess
    import sys

    from broadcaster.claims import holder_is_gone, register_worker

    host, me = socket.gethostname(), f"{socket.gethostname()}:{os.getpid()}:aaaaaa"
    register_worker(me)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert holder_is_gone(f"{host}:{child.pid}:bbbbbb", me)  # that process has exited
    assert not holder_is_gone(f"{host}:{os.getppid()}:cccccc", me)  # alive
    assert holder_is_gone(f"{host}:{os.getpid()}:dddddd", me)  # our pid, not one of our dispatchers
    sibling = f"{host}:{os.getpid()}:eeeeee"
    register_worker(sibling)
    assert not holder_is_gone(sibling, me)  # another dispatcher of this very process
    assert not holder_is_gone("elsewhere:1:ffffff", me)  # another host: wait for the lease
    assert not holder_is_gone("custom-worker-7", me)
