"""The dispatcher: claims due messages from the outbox, sends them, records every outcome.

One loop thread does all database writes: it claims batches (committed as ``sending`` with a lease
before any provider call), hands them to its sender (one event-loop thread for a provider with
``send_async``, else a pool of threads; :mod:`broadcaster.senders`), and writes the outcomes the
sender reports in small groups (one transaction at most every ``flush_interval`` seconds). Senders
only wait for the rate limiter and call the provider. Between batches the loop does its
housekeeping: dead leases become ``unknown``, ``unknown`` messages are reconciled with the
provider, cancelled runs are swept, quiet runs are deferred, finished runs completed.

Exactly-once rests on three rules (docs/delivery.md): ``sending`` is committed before the request;
an attempt whose fate is unclear becomes ``unknown`` and is looked up at the provider before any
resend; every change is guarded by the state (and attempt) it starts from.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.claims import ACTIVE_RUN_STATES, Claimed, claim, default_worker_id, register_worker
from broadcaster.clock import Clock
from broadcaster.models import FAILED, QUEUED, SENDING, SENT, UNKNOWN, Message, Run
from broadcaster.optouts import add_optout
from broadcaster.providers.base import Accepted, AsyncSending, Outbound, Provider, ProviderError
from broadcaster.quiet_hours import QuietHours, defer_due_messages, effective, quiet_now, run_windows
from broadcaster.rate_share import RateShare
from broadcaster.ratelimit import RateLimiter, default_concurrency
from broadcaster.reconcile import reconcile_unknown, recover_stale_leases
from broadcaster.retry import Backoff, Decision, decide
from broadcaster.run_control import cancel_queued, cancelled_runs_with_queued, complete_finished_runs
from broadcaster.senders import LoopSender, Sender, ThreadSender
from broadcaster.settings import Settings
from broadcaster.transitions import Change, apply_changes

log = logging.getLogger(__name__)
OUTCOME_WRITE_ATTEMPTS = 5
#: Lookups per housekeeping pass (run 8 at a time), so a slow provider API never stalls the loop long;
#: a full pass makes the next one due at once, so a backlog after a crash clears quickly.
RECONCILE_BATCH = 32
COLLECT_TICK = 0.005  # seconds between looks at the senders' outcomes while requests are in flight
#: auto: a provider with ``send_async`` sends from one event loop, others from a thread pool.
SEND_MODES = ("auto", "threads")
messages_t = Message.__table__
runs_t = Run.__table__

__all__ = ["DispatchStats", "Dispatcher", "default_worker_id", "dispatcher_from_settings"]


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    suppressed: int = 0
    released: int = 0  # claimed, then handed back unsent (stopping, lease too old, quiet hours began)
    recovered: int = 0  # dead leases turned unknown
    reconciled: int = 0  # unknown settled by a lookup
    deferred: int = 0  # messages moved to the end of quiet hours
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, other: DispatchStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class _Outcome:
    change: Change
    from_states: tuple[str, ...]
    stat: str
    opt_out_phone: str | None = None


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        clock: Clock,
        *,
        worker_id: str | None = None,
        batch: int = 250,
        lease: timedelta = timedelta(minutes=2),
        max_attempts: int = 5,
        limiter: RateLimiter | None = None,
        rate_unit: str = "messages",
        concurrency: int = 1,
        backoff: Backoff | None = None,
        quiet_hours: str | None = None,
        reconcile_delay: timedelta = timedelta(seconds=30),
        flush_interval: float = 0.2,
        housekeeping_interval: float = 1.0,
        rng: random.Random | None = None,
        send_mode: str = "auto",
        share_rate: bool = False,
    ) -> None:
        if send_mode not in SEND_MODES:
            raise ValueError(f"send mode {send_mode!r}: expected one of {', '.join(SEND_MODES)}")
        effective(None, quiet_hours)  # a malformed default fails here, not in the middle of a run
        self.engine = engine
        self.provider = provider
        self.clock = clock
        self.worker_id = worker_id or default_worker_id()
        register_worker(self.worker_id)
        self.batch = batch
        self.lease = lease
        self.max_attempts = max_attempts
        self.limiter = limiter
        # The limiter's rate is shared with every other dispatcher sending through this database.
        self.share = RateShare(engine, limiter, clock, self.worker_id) if limiter and share_rate else None
        self.rate_unit = rate_unit
        self.concurrency = max(1, concurrency)
        self.backoff = backoff or Backoff()
        self.quiet_hours = quiet_hours
        self.reconcile_delay = reconcile_delay
        self.flush_interval = flush_interval
        self.housekeeping_interval = housekeeping_interval
        self.rng = rng or random.Random()
        self.send_mode = send_mode
        self._windows: dict[int, tuple[QuietHours, ZoneInfo]] = {}
        self._reconcile_backlog = False

    # ---- public entry points -------------------------------------------------------------------

    def run_until_idle(self, run_id: int | None = None, stop: threading.Event | None = None) -> DispatchStats:
        """Send everything due now (of one run, or of all active runs), then return (early if ``stop``)."""
        return self._loop(run_id, stop=stop, until_idle=True)

    def run_forever(
        self, stop: threading.Event, poll: float = 1.0, run_id: int | None = None
    ) -> DispatchStats:
        """Keep sending until ``stop`` is set; then finish or hand back what is in flight and return."""
        return self._loop(run_id, stop=stop, until_idle=False, poll=poll)

    def run_to_end(self, run_id: int, stop: threading.Event, max_wait: timedelta) -> DispatchStats:
        """Send one run until nothing is pending, waiting for retries, reconciliations and expiring
        leases that fall due within ``max_wait`` (``broadcaster send`` and ``runs resume``)."""
        total = DispatchStats()
        while not stop.is_set():
            total.add(self.run_until_idle(run_id, stop))
            due = self.next_due(run_id)
            if due is None or due - self.clock.now() > max_wait:
                break
            stop.wait(max(0.05, (due - self.clock.now()).total_seconds()))
        return total

    def next_due(self, run_id: int) -> datetime | None:
        """When this run next has something to do here; None if it is done or waits for someone else
        (paused, cancelled, or uncertain messages only an operator can settle)."""
        waiting = [
            sa.select(sa.func.min(messages_t.c.next_attempt_at)).where(
                messages_t.c.run_id == run_id, messages_t.c.status == QUEUED
            ),
            sa.select(sa.func.min(messages_t.c.lease_expires_at)).where(
                messages_t.c.run_id == run_id, messages_t.c.status == SENDING
            ),
        ]
        if self.provider.can_lookup:
            waiting.append(
                sa.select(sa.func.min(messages_t.c.next_attempt_at)).where(
                    messages_t.c.run_id == run_id, messages_t.c.status == UNKNOWN
                )
            )
        with db.reading(self.engine) as conn:
            status = conn.execute(
                sa.select(runs_t.c.status).where(runs_t.c.id == run_id)
            ).scalar_one_or_none()
            if status not in ACTIVE_RUN_STATES:
                return None
            times = [t for t in (conn.execute(q).scalar_one() for q in waiting) if t is not None]
        return min(times, default=None)

    def housekeeping(self) -> DispatchStats:
        """Dead leases to ``unknown``, reconcile ``unknown``, sweep cancelled runs, complete finished runs.

        For all runs, whichever run this dispatcher sends: any worker may settle anyone's leftovers."""
        stats = DispatchStats()
        now = self.clock.now()
        if self.share is not None and self.share.joined:
            self.share.refresh()
        stats.recovered = recover_stale_leases(
            self.engine, now=now, worker_id=self.worker_id, retry_after=self.reconcile_delay
        )
        settled = reconcile_unknown(
            self.engine,
            self.provider,
            now=now,
            max_attempts=self.max_attempts,
            retry_after=self.reconcile_delay,
            limit=RECONCILE_BATCH,
        )
        stats.reconciled = sum(n for k, n in settled.items() if k != "deferred")
        self._reconcile_backlog = sum(settled.values()) >= RECONCILE_BATCH
        for cancelled_run in cancelled_runs_with_queued(self.engine):
            stats.cancelled += cancel_queued(self.engine, cancelled_run, now=now)
        completed = complete_finished_runs(self.engine, now=now)
        if stats.recovered or stats.reconciled or stats.cancelled or completed:
            log.info(
                "housekeeping: %d dead lease(s) -> unknown, %d reconciled %s, %d cancelled, runs done %s",
                stats.recovered,
                stats.reconciled,
                {k: n for k, n in settled.items() if n},
                stats.cancelled,
                completed,
            )
        return stats

    # ---- the loop ------------------------------------------------------------------------------

    def _loop(
        self, run_id: int | None, stop: threading.Event | None, until_idle: bool, poll: float = 1.0
    ) -> DispatchStats:
        stats = DispatchStats()
        halt = threading.Event()  # sender threads: start no new provider call
        results: queue.Queue[_Outcome] = queue.Queue()
        buffer: list[_Outcome] = []
        buffered_since = 0.0
        in_flight = 0
        last_housekeeping = float("-inf")
        claim_after = 0.0  # after a short claim, wait a little before asking again
        sender = self._sender(halt, results)
        try:
            while True:
                stopping = stop is not None and stop.is_set()
                if stopping:
                    halt.set()  # what waits in the pool is handed back, requests in flight finish
                interval = 0.0 if self._reconcile_backlog else self.housekeeping_interval
                if not stopping and time.monotonic() - last_housekeeping >= interval:
                    if buffer:  # lookups can be slow: do not let outcomes wait behind them
                        self._write_outcomes(buffer, stats)
                        buffer = []
                    stats.add(self.housekeeping())
                    last_housekeeping = time.monotonic()
                claimed: list[Claimed] = []
                drained = in_flight == 0  # nothing in flight: an empty claim now means idle
                prefetch = self._prefetch()
                room = prefetch - in_flight
                refill = drained or (in_flight <= prefetch // 2 and time.monotonic() >= claim_after)
                if not stopping and room > 0 and refill:
                    claimed = self._claim(run_id, room, stats)
                    if claimed and self.share is not None and not self.share.joined:
                        (stop or halt).wait(self.share.join())  # others sending: let them slow down first
                    sender.submit(claimed)
                    in_flight += len(claimed)
                    if len(claimed) < room:
                        claim_after = time.monotonic() + min(poll, 0.25)
                if in_flight and not claimed:
                    # Let outcomes gather: one wake-up of this thread per tick, not one per message
                    # (each wake-up takes the GIL from the senders).
                    time.sleep(COLLECT_TICK)
                while True:  # collect what the senders reported
                    try:
                        outcome = results.get_nowait()
                    except queue.Empty:
                        break
                    if not buffer:
                        buffered_since = time.monotonic()
                    buffer.append(outcome)
                    in_flight -= 1
                if buffer and (
                    in_flight == 0
                    or stopping
                    or len(buffer) >= self.batch
                    or time.monotonic() - buffered_since >= self.flush_interval
                ):
                    self._write_outcomes(buffer, stats)
                    buffer = []
                if stopping and not in_flight:
                    break
                if in_flight or claimed or not drained:
                    continue
                if until_idle:
                    extra = self.housekeeping()  # anything reconciled or recovered is due now
                    stats.add(extra)
                    last_housekeeping = time.monotonic()
                    if not (extra.recovered or extra.reconciled or extra.cancelled):
                        break
                elif stop is not None:
                    if self.share is not None:
                        self.share.leave()  # idle: the others may take this dispatcher's part
                    stop.wait(poll)
        finally:
            halt.set()
            sender.shutdown()
            if self.share is not None:
                self.share.leave()
            while True:
                try:
                    buffer.append(results.get_nowait())
                except queue.Empty:
                    break
            if buffer:
                self._write_outcomes(buffer, stats)
        return stats

    def _prefetch(self) -> int:
        """How many messages may be claimed ahead: enough to keep threads busy, ~1 s at the rate limit."""
        ahead = self.concurrency * 2
        if self.limiter is None:
            return max(ahead, self.batch)
        return max(ahead, min(self.batch, int(self.limiter.rate)))

    def _claim(self, run_id: int | None, limit: int, stats: DispatchStats) -> list[Claimed]:
        now = self.clock.now()
        with db.writing(self.engine) as conn:
            windows = run_windows(conn, default=self.quiet_hours, run_id=run_id)
            quiet = quiet_now(windows, now)
            claimed, suppressed = claim(
                conn,
                worker_id=self.worker_id,
                now=now,
                lease=self.lease,
                limit=limit,
                run_id=run_id,
                exclude_runs=quiet.keys(),
            )
        self._windows = windows  # read by sender threads: a run turning quiet hands its messages back
        if quiet:
            stats.deferred += defer_due_messages(self.engine, quiet, now=now)
        stats.claimed += len(claimed)
        stats.suppressed += len(suppressed)
        return claimed

    # ---- sending (sender threads or the sender event loop) -------------------------------------

    def _sender(self, halt: threading.Event, results: queue.Queue[_Outcome]) -> Sender:
        provider = self.provider
        if self.send_mode == "auto" and isinstance(provider, AsyncSending):

            async def attempt_async(msg: Claimed) -> None:
                try:
                    results.put(await self._send_async(msg, halt, provider))
                except Exception as exc:  # a bug or an unforeseen error: the request may have gone out
                    results.put(self._unexpected(msg, exc))

            return LoopSender(attempt_async, self.concurrency, close=provider.aclose)

        def attempt(msg: Claimed) -> None:
            try:
                results.put(self._send(msg, halt))
            except Exception as exc:  # a bug or an unforeseen error: the request may have gone out
                results.put(self._unexpected(msg, exc))

        return ThreadSender(attempt, self.concurrency)

    def _unexpected(self, msg: Claimed, exc: Exception) -> _Outcome:
        log.error("message %s: unexpected error while sending", msg.id, exc_info=exc)
        return self._uncertain(msg, ProviderError(f"unexpected error: {type(exc).__name__}: {exc}"))

    def _send(self, msg: Claimed, halt: threading.Event) -> _Outcome:
        if halt.is_set():
            return self._release(msg, "worker stopping")
        if self.limiter is not None and not self.limiter.acquire(*self._rate_key(msg), cancel=halt):
            return self._release(msg, "worker stopping")
        held = self._hold_back(msg)
        if held is not None:
            return held
        try:
            accepted = self.provider.send(self._outbound(msg))
        except ProviderError as exc:
            return self._failure(msg, exc)
        return self._accepted(msg, accepted)

    async def _send_async(self, msg: Claimed, halt: threading.Event, provider: AsyncSending) -> _Outcome:
        """:meth:`_send` on the sender event loop: the same checks, in the same order."""
        if halt.is_set():
            return self._release(msg, "worker stopping")
        if self.limiter is not None and not await self.limiter.acquire_async(
            *self._rate_key(msg), cancel=halt
        ):
            return self._release(msg, "worker stopping")
        held = self._hold_back(msg)
        if held is not None:
            return held
        try:
            accepted = await provider.send_async(self._outbound(msg))
        except ProviderError as exc:
            return self._failure(msg, exc)
        return self._accepted(msg, accepted)

    def _rate_key(self, msg: Claimed) -> tuple[str, float]:
        return msg.sender or "default", msg.segments if self.rate_unit == "segments" else 1

    def _hold_back(self, msg: Claimed) -> _Outcome | None:
        """Hand the message back instead of starting a request that could outlive its lease, or
        that would fall into quiet hours."""
        now = self.clock.now()
        if now >= msg.lease_expires_at - self.lease / 2:
            return self._release(msg, "lease too old to start a request")
        window = self._windows.get(msg.run_id)
        if window is not None and window[0].opens_at(now, window[1]) is not None:
            return self._release(msg, "quiet hours began")
        return None

    @staticmethod
    def _outbound(msg: Claimed) -> Outbound:
        return Outbound(message_id=msg.id, to=msg.phone, body=msg.body, sender=msg.sender)

    def _accepted(self, msg: Claimed, accepted: Accepted) -> _Outcome:
        change = Change(
            msg.id,
            msg.run_id,
            SENT,
            {
                "provider_id": accepted.provider_id,
                "sent_at": self.clock.now(),
                "error_code": None,
                "error_text": None,
                "lease_expires_at": None,
            },
            {"provider_id": accepted.provider_id, "provider_status": accepted.status, "attempt": msg.attempt},
            attempt=msg.attempt,
        )
        return _Outcome(change, (SENDING, UNKNOWN), "sent")

    def _release(self, msg: Claimed, reason: str) -> _Outcome:
        change = Change(
            msg.id,
            msg.run_id,
            QUEUED,
            {"attempts": msg.attempt - 1, "lease_expires_at": None},
            {"reason": f"released: {reason}", "attempt": msg.attempt},
            attempt=msg.attempt,
        )
        return _Outcome(change, (SENDING,), "released")

    def _uncertain(self, msg: Claimed, exc: ProviderError) -> _Outcome:
        change = Change(
            msg.id,
            msg.run_id,
            UNKNOWN,
            {
                "error_code": exc.code,
                "error_text": exc.text,
                "next_attempt_at": self.clock.now() + self.reconcile_delay,
                "lease_expires_at": None,
            },
            _error_detail(exc, msg.attempt),
            attempt=msg.attempt,
        )
        return _Outcome(change, (SENDING,), "unknown")

    def _failure(self, msg: Claimed, exc: ProviderError) -> _Outcome:
        decision = decide(exc, msg.attempt, self.max_attempts)
        if decision is Decision.UNKNOWN:
            return self._uncertain(msg, exc)
        now = self.clock.now()
        detail = _error_detail(exc, msg.attempt)
        values: dict[str, object] = {"error_code": exc.code, "error_text": exc.text, "lease_expires_at": None}
        if decision is Decision.RETRY:
            retry_at = now + self.backoff.delay(msg.attempt, self.rng)
            values["next_attempt_at"] = retry_at
            detail["retry_at"] = retry_at.isoformat()
            change = Change(msg.id, msg.run_id, QUEUED, values, detail, attempt=msg.attempt)
            return _Outcome(change, (SENDING, UNKNOWN), "retried")
        values["final_at"] = now
        change = Change(msg.id, msg.run_id, FAILED, values, detail, attempt=msg.attempt)
        return _Outcome(change, (SENDING, UNKNOWN), "failed", msg.phone if exc.opt_out else None)

    # ---- outcomes ------------------------------------------------------------------------------

    def _write_outcomes(self, outcomes: list[_Outcome], stats: DispatchStats) -> None:
        """Record a group of outcomes in one transaction, trying again if the database hiccups:
        these are the only record of what the provider accepted."""
        for attempt in range(1, OUTCOME_WRITE_ATTEMPTS + 1):
            try:
                applied = self._write_outcomes_once(outcomes)
                break
            except sa.exc.DBAPIError as exc:
                if attempt == OUTCOME_WRITE_ATTEMPTS:
                    raise  # the leases expire and reconciliation settles these messages
                log.warning("recording %d outcomes failed (%s); trying again", len(outcomes), exc.orig)
                time.sleep(min(2.0**attempt, 10.0))
        for outcome in applied:
            setattr(stats, outcome.stat, getattr(stats, outcome.stat) + 1)
        if len(applied) < len(outcomes):
            late = sorted({o.change.message_id for o in outcomes} - {o.change.message_id for o in applied})
            log.warning("outcomes of messages %s not recorded: they moved on meanwhile", late)

    def _write_outcomes_once(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        """A row that moved on meanwhile (another worker, an operator) is left alone."""
        now = self.clock.now()
        groups: dict[tuple[str, ...], list[_Outcome]] = {}
        for outcome in outcomes:
            groups.setdefault(outcome.from_states, []).append(outcome)
        done: list[_Outcome] = []
        with db.writing(self.engine) as conn:
            for from_states, group in groups.items():
                by_id = {o.change.message_id: o for o in group}
                applied = apply_changes(
                    conn, [o.change for o in group], from_states=from_states, at=now, source="dispatcher"
                )
                for change in applied:
                    outcome = by_id[change.message_id]
                    done.append(outcome)
                    if outcome.opt_out_phone:
                        add_optout(
                            conn,
                            outcome.opt_out_phone,
                            source="provider",
                            at=now,
                            actor=f"provider:{self.provider.name}",
                            reason=f"provider refused: {change.values.get('error_code')}",
                        )
        return done


def _error_detail(exc: ProviderError, attempt: int) -> dict[str, object]:
    return {"code": exc.code, "text": exc.text, "http_status": exc.http_status, "attempt": attempt}


def dispatcher_from_settings(
    engine: Engine, provider: Provider, clock: Clock, settings: Settings, **overrides: object
) -> Dispatcher:
    """A dispatcher configured from BROADCASTER_* settings (rate limit, concurrency, leases, ...)."""
    # A hair below the limit: jitter between here and the provider (scheduling, the network) must
    # not push any second at the provider over it.
    rate = settings.rate_limit * (1 - settings.rate_margin)
    limiter = RateLimiter(rate) if settings.rate_limit > 0 else None
    event_loop = settings.send_mode == "auto" and isinstance(provider, AsyncSending)
    concurrency = settings.concurrency or default_concurrency(settings.rate_limit, event_loop=event_loop)
    options: dict[str, object] = {
        "worker_id": settings.worker_id,
        "batch": settings.batch_size,
        "lease": timedelta(seconds=settings.lease_seconds),
        "max_attempts": settings.max_attempts,
        "limiter": limiter,
        "rate_unit": settings.rate_unit,
        "concurrency": concurrency,
        "backoff": Backoff(settings.backoff_base_seconds, settings.backoff_max_seconds),
        "quiet_hours": settings.quiet_hours,
        "reconcile_delay": timedelta(seconds=settings.reconcile_delay_seconds),
        "send_mode": settings.send_mode,
        "share_rate": settings.rate_sharing,
    }
    options.update(overrides)
    return Dispatcher(engine, provider, clock, **options)  # type: ignore[arg-type]
