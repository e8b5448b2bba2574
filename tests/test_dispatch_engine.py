"""The dispatcher through its package API, on SQLite and PostgreSQL, with a manual clock and a
scripted provider: retries, permanent failures, opt-outs, uncertain attempts and their
reconciliation, dead leases, pause/resume/cancel, quiet hours, priorities."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.claims import claim
from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.models import Action, OptOut, Run
from broadcaster.optouts import is_opted_out
from broadcaster.providers.base import ProviderError
from broadcaster.retry import Backoff
from broadcaster.run_control import cancel_run, pause_run, resolve_unknown, resume_run
from broadcaster.runs import counts_by_status, get_run
from tests.dispatch_helpers import (
    PROVIDER_KINDS,
    ScriptedProvider,
    events,
    make_run,
    messages,
    permanent,
    phone,
    seed_list,
    template_store,
    transient,
)

START = datetime(2011, 8, 31, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai


@pytest.fixture(params=sorted(PROVIDER_KINDS))
def scripted(request: pytest.FixtureRequest) -> type[ScriptedProvider]:
    """The scripted provider with a blocking send (thread pool) or with send_async (event loop)."""
    return PROVIDER_KINDS[request.param]


def _setup(engine: sa.Engine, tmp_path: Path, n: int = 3, **run_options):  # type: ignore[no-untyped-def]
    clock = ManualClock(START)
    seed_list(engine, "public", range(1, n + 1), clock.now())
    store = template_store(tmp_path / "templates")
    run_id = make_run(engine, store, clock, ["public"], **run_options)
    return clock, store, run_id


def _dispatcher(engine, provider, clock, **options) -> Dispatcher:  # type: ignore[no-untyped-def]
    options.setdefault("reconcile_delay", timedelta(seconds=30))
    options.setdefault("rng", random.Random(7))
    return Dispatcher(engine, provider, clock, **options)


def _counts(engine: sa.Engine, run_id: int) -> dict[str, int]:
    with db.reading(engine) as conn:
        return counts_by_status(conn, run_id)


def _run_status(engine: sa.Engine, run_id: int) -> str:
    with db.reading(engine) as conn:
        return get_run(conn, run_id)["status"]


def test_transient_errors_back_off_then_succeed(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    clock, _, run_id = _setup(engine, tmp_path)
    provider = scripted(clock, {phone(1): [transient("30001"), transient("20429", 429)]})
    dispatcher = _dispatcher(engine, provider, clock, backoff=Backoff(base=2, cap=300))

    stats = dispatcher.run_until_idle()
    assert (stats.sent, stats.retried) == (2, 1)
    first = messages(engine, run_id)[0]
    assert first["status"] == "queued" and first["attempts"] == 1 and first["error_code"] == "30001"
    assert timedelta(seconds=1) <= first["next_attempt_at"] - clock.now() <= timedelta(seconds=2)
    assert _run_status(engine, run_id) == "sending"  # not complete while a retry is pending

    clock.advance(timedelta(seconds=2))
    assert dispatcher.run_until_idle().retried == 1
    second = messages(engine, run_id)[0]
    assert second["attempts"] == 2 and second["error_code"] == "20429"
    assert timedelta(seconds=2) <= second["next_attempt_at"] - clock.now() <= timedelta(seconds=4)

    clock.advance(timedelta(seconds=4))
    assert dispatcher.run_until_idle().sent == 1
    done = messages(engine, run_id)[0]
    assert done["status"] == "sent" and done["attempts"] == 3 and done["error_code"] is None
    assert done["provider_id"] == provider.sent[-1].provider_id
    assert provider.sent_to(phone(1)) == 1
    path = [(e["from_status"], e["to_status"]) for e in events(engine, done["id"])]
    assert path == [
        (None, "queued"),
        ("queued", "sending"),
        ("sending", "queued"),
        ("queued", "sending"),
        ("sending", "queued"),
        ("queued", "sending"),
        ("sending", "sent"),
    ]
    assert _run_status(engine, run_id) == "completed"


def test_transient_errors_fail_when_attempts_run_out(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=1)
    provider = ScriptedProvider(clock, {phone(1): [transient("21611")] * 5})
    dispatcher = _dispatcher(engine, provider, clock, max_attempts=2, backoff=Backoff(base=1, cap=1))
    dispatcher.run_until_idle()
    clock.advance(timedelta(seconds=1))
    dispatcher.run_until_idle()
    msg = messages(engine, run_id)[0]
    assert (msg["status"], msg["attempts"], msg["error_code"]) == ("failed", 2, "21611")
    assert msg["final_at"] == clock.now()
    assert _run_status(engine, run_id) == "completed"


def test_permanent_error_fails_at_once_with_code_and_text(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=2)
    provider = ScriptedProvider(clock, {phone(2): [permanent("21211", "The 'To' number is not valid")]})
    stats = _dispatcher(engine, provider, clock).run_until_idle()
    assert (stats.sent, stats.failed, stats.retried) == (1, 1, 0)
    failed = [m for m in messages(engine, run_id) if m["phone"] == phone(2)][0]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert (failed["error_code"], failed["error_text"]) == ("21211", "The 'To' number is not valid")
    assert events(engine, failed["id"])[-1]["detail"]["code"] == "21211"


def test_provider_opt_out_fails_the_message_and_records_the_opt_out(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    clock, store, run_id = _setup(engine, tmp_path, n=2)
    refusal = ProviderError("recipient unsubscribed", code="21610", http_status=400, opt_out=True)
    provider = scripted(clock, {phone(1): [refusal]})
    _dispatcher(engine, provider, clock).run_until_idle()
    msg = [m for m in messages(engine, run_id) if m["phone"] == phone(1)][0]
    assert (msg["status"], msg["error_code"]) == ("failed", "21610")
    with db.reading(engine) as conn:
        assert is_opted_out(conn, phone(1))
        source = conn.execute(sa.select(OptOut.__table__.c.source)).scalar_one()
        actions = conn.execute(sa.select(Action.__table__.c.action)).scalars().all()
    assert source == "provider" and "optout.added" in actions

    # The next run suppresses the number instead of trying again.
    second = make_run(engine, store, clock, ["public"])
    _dispatcher(engine, provider, clock).run_until_idle()
    assert _counts(engine, second) == {"sent": 1, "suppressed": 1}
    assert len([c for c in provider.calls if c.to == phone(1)]) == 1


def test_opt_out_after_materialising_is_suppressed_at_claim_time(engine: sa.Engine, tmp_path: Path) -> None:
    from broadcaster.optouts import add_optout

    clock, _, run_id = _setup(engine, tmp_path, n=2)
    with db.writing(engine) as conn:
        add_optout(conn, phone(2), source="reply", at=clock.now(), actor="sms")
    provider = ScriptedProvider(clock)
    assert _dispatcher(engine, provider, clock).run_until_idle().suppressed == 1
    assert _counts(engine, run_id) == {"sent": 1, "suppressed": 1}
    assert [c.to for c in provider.calls] == [phone(1)]


def test_lost_answer_is_reconciled_as_sent_without_a_second_request(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=2)
    provider = scripted(clock, {phone(1): ["lost"]})
    dispatcher = _dispatcher(engine, provider, clock)
    assert dispatcher.run_until_idle().unknown == 1
    msg = [m for m in messages(engine, run_id) if m["phone"] == phone(1)][0]
    assert msg["status"] == "unknown" and msg["provider_id"] is None
    assert _run_status(engine, run_id) == "sending"

    clock.advance(timedelta(seconds=29))
    dispatcher.run_until_idle()
    assert provider.lookups == []  # not before the reconcile delay

    clock.advance(timedelta(seconds=1))
    assert dispatcher.run_until_idle().reconciled == 1
    msg = [m for m in messages(engine, run_id) if m["phone"] == phone(1)][0]
    assert msg["status"] == "sent" and msg["provider_id"] == provider.sent[0].provider_id
    assert provider.sent_to(phone(1)) == 1 and len(provider.calls) == 2
    assert provider.lookups == [(phone(1), START - timedelta(seconds=60))]
    assert _run_status(engine, run_id) == "completed"


def test_uncertain_attempt_not_found_is_resent_exactly_once(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=1)
    provider = scripted(
        clock, {phone(1): [ProviderError("502 bad gateway", http_status=502, accepted_maybe=True)]}
    )
    dispatcher = _dispatcher(engine, provider, clock)
    dispatcher.run_until_idle()
    assert messages(engine, run_id)[0]["status"] == "unknown"
    clock.advance(timedelta(seconds=31))
    stats = dispatcher.run_until_idle()
    assert (stats.reconciled, stats.sent) == (1, 1)
    msg = messages(engine, run_id)[0]
    assert msg["status"] == "sent" and msg["attempts"] == 2
    assert provider.sent_to(phone(1)) == 1 and len(provider.calls) == 2
    reasons = [e["detail"].get("reason") for e in events(engine, msg["id"])]
    assert "not found" in reasons
    # Nothing more to do: a further pass neither looks up nor sends.
    clock.advance(timedelta(minutes=5))
    dispatcher.run_until_idle()
    assert len(provider.calls) == 2 and provider.sent_to(phone(1)) == 1


def test_a_dead_workers_lease_is_reconciled_never_blindly_resent(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=2)
    provider = ScriptedProvider(clock)
    # Another worker claimed both, reached the provider for the first, then died.
    with db.writing(engine) as conn:
        claimed, _ = claim(
            conn, worker_id="elsewhere:1:dead", now=clock.now(), lease=timedelta(minutes=2), limit=10
        )
    assert len(claimed) == 2
    first = claimed[0]
    from broadcaster.providers.base import Outbound

    provider.send(Outbound(first.id, first.phone, first.body))
    dispatcher = _dispatcher(engine, provider, clock, reconcile_delay=timedelta(0))
    assert dispatcher.run_until_idle().claimed == 0  # the lease still runs: nothing to do
    clock.advance(timedelta(minutes=2, seconds=1))
    stats = dispatcher.run_until_idle()
    assert (stats.recovered, stats.reconciled, stats.sent) == (2, 2, 1)
    assert provider.sent_to(phone(1)) == 1 and provider.sent_to(phone(2)) == 1
    assert _counts(engine, run_id) == {"sent": 2}
    details = [e["detail"] for e in events(engine, first.id)]
    assert {"reason": "lease expired", "worker": "elsewhere:1:dead", "attempt": 1} in details


def test_without_lookup_unknown_waits_for_the_operator(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=2)
    provider = ScriptedProvider(clock, {phone(1): ["lost"], phone(2): ["lost"]}, can_lookup=False)
    dispatcher = _dispatcher(engine, provider, clock)
    dispatcher.run_until_idle()
    clock.advance(timedelta(hours=1))
    dispatcher.run_until_idle()
    assert _counts(engine, run_id) == {"unknown": 2}
    assert _run_status(engine, run_id) == "sending"

    ids = [m["id"] for m in messages(engine, run_id)]
    assert (
        resolve_unknown(engine, run_id, decision="mark-sent", clock=clock, actor="op", message_ids=[ids[0]])
        == 1
    )
    assert resolve_unknown(engine, run_id, decision="resend", clock=clock, actor="op") == 1
    dispatcher.run_until_idle()
    assert _counts(engine, run_id) == {"sent": 2}
    assert provider.sent_to(phone(2)) == 2  # the operator chose to resend
    with db.reading(engine) as conn:
        details = (
            conn.execute(
                sa.select(Action.__table__.c.details).where(Action.__table__.c.action == "run.resolved")
            )
            .scalars()
            .all()
        )
    assert [d["decision"] for d in details] == ["mark-sent", "resend"]
    assert _run_status(engine, run_id) == "completed"


def test_pause_resume_and_cancel(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=4)
    provider = ScriptedProvider(clock)
    dispatcher = _dispatcher(engine, provider, clock)
    pause_run(engine, run_id, clock=clock, actor="op")
    assert dispatcher.run_until_idle().claimed == 0
    assert _counts(engine, run_id) == {"queued": 4} and _run_status(engine, run_id) == "paused"

    assert resume_run(engine, run_id, clock=clock, actor="op")["to"] == "ready"
    with db.writing(engine) as conn:  # send two, then cancel the rest
        claimed, _ = claim(
            conn, worker_id=dispatcher.worker_id, now=clock.now(), lease=timedelta(minutes=2), limit=2
        )
    result = cancel_run(engine, run_id, clock=clock, actor="op")
    assert result["cancelled"] == 2
    stats = dispatcher.run_until_idle()
    assert stats.claimed == 0
    assert _counts(engine, run_id) == {"sending": 2, "cancelled": 2}
    cancelled = [m for m in messages(engine, run_id) if m["status"] == "cancelled"]
    assert all(events(engine, m["id"])[-1]["detail"] == {"reason": "run cancelled"} for m in cancelled)
    with db.reading(engine) as conn:
        actions = (
            conn.execute(
                sa.select(Action.__table__.c.action)
                .where(Action.__table__.c.run_id == run_id)
                .order_by(Action.__table__.c.id)
            )
            .scalars()
            .all()
        )
        run = get_run(conn, run_id)
    assert actions == ["run.created", "run.paused", "run.resumed", "run.started", "run.cancelled"]
    assert run["status"] == "cancelled" and run["finished_at"] is None  # two still in flight


def test_quiet_hours_defer_once_then_send_when_the_window_opens(engine: sa.Engine, tmp_path: Path) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=2, quiet_hours="21:00-08:00")
    clock.set(datetime(2011, 8, 31, 14, 30, tzinfo=UTC))  # 22:30 in Shanghai
    provider = ScriptedProvider(clock)
    dispatcher = _dispatcher(engine, provider, clock)
    assert dispatcher.run_until_idle().deferred == 2
    dispatcher.run_until_idle()
    opens = datetime(2011, 9, 1, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    for msg in messages(engine, run_id):
        assert msg["status"] == "queued" and msg["next_attempt_at"] == opens
        deferrals = [
            e for e in events(engine, msg["id"]) if e["detail"].get("reason") == "deferred: quiet hours"
        ]
        assert len(deferrals) == 1 and deferrals[0]["detail"]["until"] == opens.isoformat()
    assert provider.calls == []
    clock.set(opens - timedelta(seconds=1))
    assert dispatcher.run_until_idle().sent == 0
    clock.set(opens)
    assert dispatcher.run_until_idle().sent == 2


def test_setting_quiet_hours_apply_unless_the_run_says_none(engine: sa.Engine, tmp_path: Path) -> None:
    clock, store, quiet_run = _setup(engine, tmp_path, n=1)
    loud_run = make_run(engine, store, clock, ["public"], quiet_hours="none")
    clock.set(datetime(2011, 8, 31, 13, 30, tzinfo=UTC))  # 21:30 in Shanghai
    provider = ScriptedProvider(clock)
    _dispatcher(engine, provider, clock, quiet_hours="21:00-08:00").run_until_idle()
    assert _counts(engine, quiet_run) == {"queued": 1}
    assert _counts(engine, loud_run) == {"sent": 1}


def test_urgent_run_overtakes_a_bulk_run_in_progress(engine: sa.Engine, tmp_path: Path) -> None:
    clock, store, bulk = _setup(engine, tmp_path, n=40)
    seed_list(engine, "duty", range(1001, 1006), clock.now())
    state: dict[str, int] = {}

    def create_urgent_midway(message) -> None:  # type: ignore[no-untyped-def]
        if len(provider.calls) == 10 and "urgent" not in state:
            state["urgent"] = make_run(engine, store, clock, ["duty"], priority=10)

    provider = ScriptedProvider(clock, on_send=create_urgent_midway)
    _dispatcher(engine, provider, clock, batch=4, concurrency=1).run_until_idle()
    order = [c.to for c in provider.calls]
    urgent_positions = [i for i, to in enumerate(order) if to in {phone(i) for i in range(1001, 1006)}]
    assert len(order) == 45 and len(urgent_positions) == 5
    # Once created, the urgent run waits at most for what was already claimed (4 ahead), not the bulk.
    assert urgent_positions[0] <= 10 + 4 and urgent_positions == list(
        range(urgent_positions[0], urgent_positions[0] + 5)
    )
    assert _counts(engine, bulk) == {"sent": 40} and _counts(engine, state["urgent"]) == {"sent": 5}


def test_sending_is_committed_before_the_provider_is_called(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    clock, _, run_id = _setup(engine, tmp_path, n=1)
    seen: list[tuple[str, str | None]] = []

    def look(message) -> None:  # type: ignore[no-untyped-def]
        with db.reading(engine) as conn:  # another connection sees the claim already committed
            row = conn.execute(
                sa.select(messages_t.c.status, messages_t.c.lease_owner).where(
                    messages_t.c.id == message.message_id
                )
            ).one()
        seen.append((row.status, row.lease_owner))

    from tests.dispatch_helpers import messages_t

    provider = scripted(clock, on_send=look)
    dispatcher = _dispatcher(engine, provider, clock)
    dispatcher.run_until_idle()
    assert seen == [("sending", dispatcher.worker_id)]
    with db.reading(engine) as conn:
        assert conn.execute(sa.select(Run.__table__.c.status)).scalar_one() == "completed"


def test_an_answer_arriving_after_the_lease_was_taken_over_is_still_recorded(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    from broadcaster.reconcile import recover_stale_leases

    clock, _, run_id = _setup(engine, tmp_path, n=1)

    def stall(message) -> None:  # type: ignore[no-untyped-def]
        # The request hangs past the lease; meanwhile another worker declares the attempt uncertain.
        clock.advance(timedelta(minutes=3))
        recover_stale_leases(
            engine, now=clock.now(), worker_id="other:1:x", retry_after=timedelta(seconds=30)
        )

    provider = scripted(clock, on_send=stall)
    _dispatcher(engine, provider, clock).run_until_idle()
    msg = messages(engine, run_id)[0]
    assert msg["status"] == "sent" and msg["provider_id"] == provider.sent[0].provider_id
    assert [e["to_status"] for e in events(engine, msg["id"])] == ["queued", "sending", "unknown", "sent"]
    assert len(provider.calls) == 1


def test_dispatcher_keeps_to_the_rate_limit_in_segments(
    sqlite_url: str, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    from broadcaster.db import open_database
    from broadcaster.ratelimit import RateLimiter
    from tests.dispatch_helpers import FakeTime, worst_second

    engine = open_database(sqlite_url)
    clock = ManualClock(START)
    seed_list(engine, "public", range(1, 61), clock.now())
    long_text = "【质量月】{{ name }}：" + "质量" * 40  # UCS-2, 2 segments
    store = template_store(tmp_path / "templates", "long", long_text)
    make_run(engine, store, clock, ["public"], template="long")
    fake = FakeTime()
    sent_at: list[tuple[float, int]] = []
    provider = scripted(clock, on_send=lambda m: sent_at.append((fake.now, 2)))
    limiter = RateLimiter(10, monotonic=fake.monotonic, sleep=fake.sleep, async_sleep=fake.async_sleep)
    stats = _dispatcher(engine, provider, clock, limiter=limiter, rate_unit="segments").run_until_idle()
    assert stats.sent == 60
    assert worst_second(sent_at) <= 10  # 10 segments/s = 5 two-segment messages in any second
    assert sent_at[-1][0] - sent_at[0][0] >= (60 * 2 - 10) / 10


def test_stopping_finishes_requests_in_flight_and_hands_back_the_rest(
    engine: sa.Engine, tmp_path: Path, scripted: type[ScriptedProvider]
) -> None:
    import threading
    import time

    clock, _, run_id = _setup(engine, tmp_path, n=30)
    stop = threading.Event()

    def stop_after_five(message) -> None:  # type: ignore[no-untyped-def]
        if len(provider.calls) == 5:
            stop.set()
        time.sleep(0.03)  # a request takes a while: the loop notices the signal meanwhile

    provider = scripted(clock, on_send=stop_after_five)
    stats = _dispatcher(engine, provider, clock, concurrency=2).run_until_idle(run_id, stop)
    rows = messages(engine, run_id)
    sent = [m for m in rows if m["status"] == "sent"]
    assert {m["status"] for m in rows} == {"sent", "queued"}  # nothing left in flight or uncertain
    assert len(sent) == len(provider.calls) == stats.sent and 5 <= stats.sent <= 8
    assert stats.claimed == 30 and stats.released == 30 - stats.sent  # claimed ahead, never started
    assert all(m["attempts"] == 0 for m in rows if m["status"] == "queued")
    if hasattr(provider, "closed"):
        assert provider.closed == 1  # the event loop's HTTP session was closed before the loop ended
