"""The delivery engine end to end with the real parts: the real twilio SDK, the fake Twilio server
on loopback (in its own process where workers are killed), real ``broadcaster worker`` and
``broadcaster webhooks serve`` processes, SQLite files and a real PostgreSQL database.

The fake's record of what it accepted is the judge of "exactly once"."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import SystemClock
from broadcaster.db import open_database
from broadcaster.dispatch import Dispatcher
from broadcaster.models import Message, OptOut, Run
from broadcaster.providers.twilio import TwilioProvider
from broadcaster.retry import Backoff
from broadcaster.status_updates import RANK
from broadcaster.twilio_fake import FakeTwilioHandle, run_fake_twilio, spawn_fake_twilio
from tests.delivery_helpers import (
    assert_each_received_once,
    children,
    created,
    event_counts,
    finish,
    reasons,
    start_webhooks,
    wait_until,
    worker_env,
)
from tests.dispatch_helpers import events, make_run, messages, phone, seed_list, template_store

pytestmark = pytest.mark.slow


def prepare(url: str, tmp_path: Path, phones: list[str]) -> tuple[sa.Engine, int]:
    """Recipients with these phones in list ``public`` and one materialised run for them."""
    engine = open_database(url)
    seed_list(engine, "public", range(1, len(phones) + 1), datetime.now(UTC), lambda i: phones[i - 1])
    run_id = make_run(engine, template_store(tmp_path / "templates"), SystemClock(), ["public"])
    return engine, run_id


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``spawn(env, *args)``: a ``broadcaster`` child process, killed at the end if still running."""
    with children() as start:
        yield start


def held_by(engine: sa.Engine, pid: int) -> int:
    """Messages whose lease a worker process holds now (default worker ids are host:pid:token)."""
    m = Message.__table__
    with db.reading(engine) as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(m.c.status == "sending", m.c.lease_owner.like(f"%:{pid}:%"))
        ).scalar_one()


def run_status(engine: sa.Engine, run_id: int) -> str:
    with db.reading(engine) as conn:
        return conn.execute(
            sa.select(Run.__table__.c.status).where(Run.__table__.c.id == run_id)
        ).scalar_one()


def numbers(n: int) -> list[str]:
    return [phone(i) for i in range(1, n + 1)]


# ---- crash test -------------------------------------------------------------------------------


def test_workers_killed_mid_run_through_twilio_send_everyone_exactly_once(
    sqlite_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """SIGKILL three times while requests are in flight and answers are being lost, restart each
    time: every recipient gets exactly one message, and the messages the provider accepted but the
    dead worker never recorded are found by lookup rather than sent again."""
    n = 1200
    engine, run_id = prepare(sqlite_url, tmp_path, numbers(n))
    with spawn_fake_twilio(latency_ms=20, extra_args=["--no-progress", "--seed", "7"]) as fake:
        fake.add_fault("500-after", rate=0.01)  # accepted, then the answer is a 500
        fake.add_fault("timeout-after", rate=0.004, hang_ms=1500)  # accepted, no answer in time
        fake.add_fault("500", rate=0.01)  # refused before anything was recorded
        fake.add_fault("429", rate=0.01)
        env = worker_env(
            sqlite_url, tmp_path, fake, BROADCASTER_CONCURRENCY="16", BROADCASTER_BATCH_SIZE="48"
        )
        for target in (150, 450, 800):
            proc = spawn(env, "worker", "--run", str(run_id))
            wait_until(f"{target} messages at the fake", lambda t=target: created(fake) >= t, [proc])
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)  # reaped: its pid is gone, so its leases are recovered at once
        assert created(fake) < n  # the kills really fell mid-run
        final = spawn(env, "worker", "--run", str(run_id))
        wait_until("the run to complete", lambda: run_status(engine, run_id) == "completed", [final], 30)
        final.send_signal(signal.SIGTERM)
        finish(final)
        assert_each_received_once(engine, run_id, fake, set(numbers(n)))
        faults = fake.stats()
    assert faults["fault:500-after"] > 0 and faults["fault:500"] > 0 and faults["fault:429"] > 0
    counts = event_counts(engine, run_id)
    assert reasons(engine, run_id, "reconcile", "unknown")["worker gone"] > 0  # leases of the dead
    assert counts[("dispatcher", "sending", "unknown")] > 0  # answers lost: 500 or timeout
    assert counts[("reconcile", "unknown", "sent")] > 0  # ... and found at the provider, not resent
    assert counts[("reconcile", "unknown", "queued")] > 0  # not at the provider: sent again, once
    assert counts[("dispatcher", "sending", "queued")] > 0  # 429: retried after a backoff


# ---- error injection --------------------------------------------------------------------------

MAX_ATTEMPTS = 3
#: phone → (fault kind or None, fault options, final status, error code)
PLAN: dict[str, tuple[str | None, dict[str, object], str, str | None]] = {
    "+8613900000001": ("429", {"count": 2}, "sent", None),
    "+8613900000002": ("429", {}, "failed", "20429"),  # throttled on every attempt
    "+8613900000003": ("500", {"count": 1}, "sent", None),
    "+8613900000004": ("500-after", {"count": 1}, "sent", None),
    "+8613900000005": ("timeout", {"count": 1, "hang_ms": 800}, "sent", None),
    "+8613900000006": ("timeout-after", {"count": 1, "hang_ms": 800}, "sent", None),
    "+8613900000007": ("error", {"count": 1, "code": 30001, "status": 400}, "sent", None),
    "+8613900000008": ("500", {}, "failed", "not-found"),  # never accepted: out of attempts
    "+8613900000009": ("error", {"count": 1, "code": 30007, "status": 400}, "failed", "30007"),
    "+15005550001": (None, {}, "failed", "21211"),
    "+15005550002": (None, {}, "failed", "21612"),
    "+15005550003": (None, {}, "failed", "21408"),
    "+15005550009": (None, {}, "failed", "21614"),
    "+15005550004": (None, {}, "failed", "21610"),
    **{f"+86137000000{i:02d}": (None, {}, "sent", None) for i in range(10)},
}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeTwilioHandle]:
    with run_fake_twilio(progress=False) as fake:
        yield fake


@pytest.mark.parametrize("send_mode", ["auto", "threads"])  # the event loop (send_async), threads (send)
def test_injected_errors_end_with_every_message_terminal_and_explained(
    sqlite_url: str, tmp_path: Path, fake_server: FakeTwilioHandle, send_mode: str
) -> None:
    fake = fake_server
    fake.reset()
    phones = list(PLAN)
    engine, run_id = prepare(sqlite_url, tmp_path, phones)
    for to, (kind, options, _, _) in PLAN.items():
        if kind is not None:
            fake.add_fault(kind, to=to, **options)
    provider = TwilioProvider(
        fake.account_sid,
        fake.auth_token,
        from_number=fake.from_number,
        base_url=fake.base_url,
        read_timeout=0.3,
    )
    dispatcher = Dispatcher(
        engine,
        provider,
        SystemClock(),
        concurrency=4,
        max_attempts=MAX_ATTEMPTS,
        backoff=Backoff(0.05, 0.2),
        reconcile_delay=timedelta(0),
        housekeeping_interval=0.2,
        send_mode=send_mode,
    )
    dispatcher.run_to_end(run_id, threading.Event(), timedelta(seconds=10))

    rows = {m["phone"]: m for m in messages(engine, run_id)}
    got = {p: (m["status"], m["error_code"]) for p, m in rows.items()}
    assert got == {p: (status, code) for p, (_, _, status, code) in PLAN.items()}
    assert run_status(engine, run_id) == "completed"
    received = fake.counts()
    for p, m in rows.items():
        assert received[p] == (1 if m["status"] == "sent" else 0), p  # nobody twice, failures never
        if m["status"] == "failed":
            assert m["error_text"] and m["final_at"] is not None, m
    sids = {r["to"]: r["sid"] for r in fake.messages()}
    assert all(m["provider_id"] == sids[p] for p, m in rows.items() if m["status"] == "sent")
    assert "20500" not in rows["+8613900000008"]["error_text"]
    assert f"not at the provider after {MAX_ATTEMPTS} attempts" in rows["+8613900000008"]["error_text"]
    assert "21610" in rows["+15005550004"]["error_text"]
    with db.reading(engine) as conn:
        optouts = conn.execute(sa.select(OptOut.__table__.c.phone, OptOut.__table__.c.source)).all()
    assert [tuple(o) for o in optouts] == [("+15005550004", "provider")]

    def history(p: str) -> list[tuple[str, str]]:
        return [(e["source"], e["to_status"]) for e in events(engine, rows[p]["id"])][1:]  # after materialise

    # An answer lost after Twilio recorded the message: looked up and found, never sent again.
    assert history("+8613900000004") == [
        ("dispatcher", "sending"),
        ("dispatcher", "unknown"),
        ("reconcile", "sent"),
    ]
    assert history("+8613900000006") == history("+8613900000004")
    # Refused before recording: looked up, not found, sent again.
    assert history("+8613900000003") == [
        ("dispatcher", "sending"),
        ("dispatcher", "unknown"),
        ("reconcile", "queued"),
        ("dispatcher", "sending"),
        ("dispatcher", "sent"),
    ]
    assert history("+8613900000005") == history("+8613900000003")
    # Throttled: retried after a backoff, with the code in each retry's event.
    retries = [e for e in events(engine, rows["+8613900000001"]["id"]) if e["to_status"] == "queued"][1:]
    assert [e["detail"]["code"] for e in retries] == ["20429", "20429"] and rows["+8613900000001"][
        "attempts"
    ] == 3
    assert [
        e["detail"]["code"] for e in events(engine, rows["+8613900000002"]["id"])[1:] if "code" in e["detail"]
    ] == ["20429"] * MAX_ATTEMPTS


# ---- PostgreSQL: three workers ----------------------------------------------------------------


def test_three_twilio_workers_on_postgresql_one_killed_send_everyone_once(
    pg_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = 400
    engine, run_id = prepare(pg_url, tmp_path, numbers(n))
    with spawn_fake_twilio(latency_ms=20, extra_args=["--no-progress"]) as fake:
        # Threads here (the crash test above uses the event loop): both senders face a kill.
        env = worker_env(
            pg_url,
            tmp_path,
            fake,
            BROADCASTER_CONCURRENCY="8",
            BROADCASTER_SEND_MODE="threads",
            BROADCASTER_BATCH_SIZE="40",  # small claims, so all three get a share of 400
        )
        workers = [spawn(env, "worker", "--run", str(run_id), "--once") for _ in range(3)]
        wait_until(
            "the first worker sending, a quarter of the run at the fake",
            lambda: held_by(engine, workers[0].pid) > 0 and created(fake) >= n // 4,
            workers,
        )
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        for proc in workers[1:]:
            finish(proc)
        # The survivors recover the dead worker's leases; one more pass settles what was still
        # waiting for its reconcile delay when they ran out of work.
        finish(spawn(env, "worker", "--run", str(run_id), "--once"))
        rows = assert_each_received_once(engine, run_id, fake, set(numbers(n)))
    owners = {m["lease_owner"] for m in rows}
    assert len(owners) >= 2, owners  # the work was shared
    assert reasons(engine, run_id, "reconcile", "unknown")["worker gone"] > 0
    assert run_status(engine, run_id) == "completed"


# ---- status callbacks through a real webhooks process -----------------------------------------


def test_status_callbacks_from_the_fake_reach_a_webhooks_process_out_of_order_and_twice(
    sqlite_url: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = 40
    phones = numbers(n)
    outcome = {
        phones[0]: ("undelivered", "30003"),
        phones[1]: ("failed", "30005"),
        phones[2]: ("failed", "21610"),
    }
    engine, run_id = prepare(sqlite_url, tmp_path, phones)
    fail_args = [a for p, (s, c) in outcome.items() for a in ("--fail-number", f"{p}={s}:{c}")]
    extra = ["--callback-delay-ms", "20", "--duplicate-callbacks", "--out-of-order-callbacks", *fail_args]
    with spawn_fake_twilio(latency_ms=5, extra_args=extra) as fake:
        hooks_env = worker_env(sqlite_url, tmp_path, fake)
        hooks, hooks_url = start_webhooks(hooks_env, spawn)
        try:
            env = worker_env(
                sqlite_url,
                tmp_path,
                fake,
                BROADCASTER_WEBHOOK_BASE_URL=hooks_url,
                BROADCASTER_TWILIO_READ_TIMEOUT="5",  # no lost answers here: callbacks are the subject
            )
            finish(spawn(env, "worker", "--run", str(run_id), "--once"))
            # queued, then the final status before "sent" (out of order), each posted twice
            expected = n * 3 * 2
            wait_until("every callback answered", lambda: len(fake.callbacks()) >= expected, [hooks])
            callbacks = fake.callbacks()
            received = {m["to"]: m for m in fake.messages()}
        finally:
            hooks.terminate()
            hooks.wait(10)
    assert len(callbacks) == expected and {c["http_status"] for c in callbacks} == {200}
    assert all(c["url"].startswith(f"{hooks_url}/twilio/status?m=") for c in callbacks)
    rows = {m["phone"]: m for m in messages(engine, run_id)}
    for p, m in rows.items():
        status, code = outcome.get(p, ("delivered", None))
        assert (m["status"], m["error_code"]) == (status, code), p
        assert m["provider_id"] == received[p]["sid"] and m["final_at"] is not None
        assert received[p]["status"] == status  # the database agrees with Twilio's final word
        history = [e["to_status"] for e in events(engine, m["id"])]
        ranks = [RANK[s] for s in history]
        assert ranks == sorted(ranks) and len(set(history)) == len(history), (p, history)  # forward, once
    assert Counter(e for e in (m["error_text"] for m in rows.values()) if e) == Counter(
        {
            "unreachable destination handset": 1,
            "unknown destination handset": 1,
            "recipient has opted out (replied STOP)": 1,
        }
    )
    with db.reading(engine) as conn:
        optouts = conn.execute(sa.select(OptOut.__table__.c.phone, OptOut.__table__.c.source)).all()
    assert [tuple(o) for o in optouts] == [(phones[2], "provider")]
