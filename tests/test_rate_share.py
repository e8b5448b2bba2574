"""One rate limit shared by the dispatchers sending through one database: shares, joining, leaving,
dying; and, with real worker processes on PostgreSQL, never above the limit at the provider."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster.clock import ManualClock
from broadcaster.rate_share import JOIN_WAIT, TTL, RateShare
from broadcaster.ratelimit import RateLimiter
from tests.delivery_helpers import children, finish, worker_env
from tests.dispatch_helpers import make_run, phone, seed_list, template_store

RATE = 30.0


def _share(engine: sa.Engine, clock: ManualClock, name: str) -> RateShare:
    return RateShare(engine, RateLimiter(RATE), clock, f"host:{name}")


def test_dispatchers_share_the_rate_and_a_newcomer_waits(engine: sa.Engine) -> None:
    clock = ManualClock(datetime(2011, 9, 1, 1, 0, tzinfo=UTC))
    a, b, c = (_share(engine, clock, n) for n in "abc")
    assert a.join() == 0.0  # alone: full rate at once
    assert a.limiter.rate == RATE
    assert b.join() == JOIN_WAIT  # a is sending: b waits until a has slowed down
    assert b.limiter.rate == RATE / 2
    assert a.refresh() == 2 and a.limiter.rate == RATE / 2
    assert c.join() == JOIN_WAIT and c.limiter.rate == RATE / 3
    assert [s.refresh() for s in (a, b)] == [3, 3]
    assert {s.limiter.rate for s in (a, b, c)} == {RATE / 3}

    b.leave()  # out of work
    assert a.refresh() == 2 and a.limiter.rate == RATE / 2
    b.leave()  # twice is harmless


def test_a_dispatcher_that_died_is_forgotten_after_the_ttl(engine: sa.Engine) -> None:
    clock = ManualClock(datetime(2011, 9, 1, 1, 0, tzinfo=UTC))
    a, dead = _share(engine, clock, "a"), _share(engine, clock, "dead")
    a.join()
    dead.join()
    clock.advance(TTL - timedelta(seconds=1))
    assert a.refresh() == 2  # not yet: until then a sends below the limit, never above
    clock.advance(timedelta(seconds=2))
    assert a.refresh() == 1 and a.limiter.rate == RATE
    clock.advance(TTL * 10)
    a.refresh()  # long-dead rows are deleted
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT worker_id FROM sending_workers").scalars().all() == ["host:a"]


def test_a_lower_rate_holds_for_the_window_already_under_way() -> None:
    now = [0.0]
    limiter = RateLimiter(10, monotonic=lambda: now[0])
    for _ in range(10):  # a second's worth, taken just now
        while (wait := limiter.try_take("s", 1)) > 0:
            now[0] += wait
    limiter.set_rate(5)
    assert limiter.try_take("s", 1) > 0  # the window still holds 10 > 5
    now[0] += 1.0
    assert limiter.try_take("s", 1) == 0.0


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    with children() as start:
        yield start


@pytest.mark.slow
def test_two_worker_processes_on_postgresql_stay_within_one_limit(
    pg_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from broadcaster.db import open_database
    from broadcaster.twilio_fake import spawn_fake_twilio

    limit, n = 40, 320
    engine = open_database(pg_url)
    seed_list(engine, "public", range(1, n + 1), datetime.now(UTC), phone)
    run_id = make_run(
        engine, template_store(tmp_path / "templates"), ManualClock(datetime.now(UTC)), ["public"]
    )
    with spawn_fake_twilio(latency_ms=20, extra_args=["--no-progress"]) as fake:
        env = worker_env(
            pg_url,
            tmp_path,
            fake,
            BROADCASTER_RATE_LIMIT=str(limit),
            BROADCASTER_RATE_UNIT="messages",
            BROADCASTER_BATCH_SIZE="20",  # small claims, so both workers keep getting work
        )
        workers = [spawn(env, "worker", "--run", str(run_id), "--once") for _ in range(2)]
        for proc in workers:
            finish(proc, timeout=60)
        arrivals = sorted(m["received_ts"] for m in fake.messages())
    assert len(arrivals) == n
    busiest = max(sum(1 for t in arrivals[i:] if t < start + 1.0) for i, start in enumerate(arrivals))
    # One limit for both, not one each (that measured 78). The 1% line is the benchmark's
    # (bench/shared_rate.py); a loaded CI machine may bunch a request or two on the way.
    assert busiest <= limit * 1.05 + 1, busiest
    rate = n / (arrivals[-1] - arrivals[0])
    assert rate >= limit * 0.75, rate  # and both together still use it (a join waits ~3 s once)


def test_status_shows_who_is_sending_and_their_share(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import os

    from broadcaster.clock import SystemClock
    from broadcaster.db import open_database

    engine = open_database(os.environ["BROADCASTER_DATABASE_URL"])
    a, b = (RateShare(engine, RateLimiter(RATE), SystemClock(), f"host:{n}") for n in "ab")
    a.join()
    b.join()
    result = cli("status", "--json")
    assert result.code == 0, result.err
    sending = result.json()["sending"]
    assert [(w["worker_id"], w["live"], w["share"]) for w in sending] == [
        ("host:a", True, RATE),  # as of its join (alone); its next refresh records RATE / 2
        ("host:b", True, RATE / 2),
    ]
    b.leave()
    text = cli("status")
    assert "sending: host:a since" in text.out and "host:b" not in text.out
    engine.dispose()
