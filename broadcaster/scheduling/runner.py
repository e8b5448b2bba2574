"""One planning pass of the scheduler, driven by an injected clock: no threads, no sleeps.

``tick()`` reads the watermarks, asks the planner what is due or missed, settles each occurrence
through the ledger in time order, and moves the watermarks forward. The daemon calls it whenever
it wakes (an APScheduler fire, its own timer, a reload); tests and ``schedule simulate`` call it
with a manual clock. Calling it twice, from two processes, or after a crash changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.scheduling.catalog import Catalog
from broadcaster.scheduling.ledger import Outcome, advance_watermark, load_watermarks, settle
from broadcaster.scheduling.logs import emit, get_logger
from broadcaster.scheduling.planner import DEFAULT_LIMIT, plan
from broadcaster.templating import TemplateStore

SCHEDULER_ACTOR = "scheduler"


@dataclass
class TickReport:
    now: datetime
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    next_wake: datetime | None = None

    @property
    def runs(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind != "missed"]

    @property
    def missed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "missed"]


class ScheduleRunner:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        store: TemplateStore,
        *,
        daemon_id: str,
        actor: str = SCHEDULER_ACTOR,
        retry: timedelta = timedelta(seconds=60),
        logger: logging.Logger | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.store = store
        self.daemon_id = daemon_id
        self.actor = actor
        self.retry = retry
        self.log = logger or get_logger()
        self.limit = limit
        self.catalog = Catalog()
        self._retry_at: dict[str, datetime] = {}
        self._last_error: dict[tuple[str, datetime], str] = {}

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a (re)loaded catalog; the next tick plans from the ledger, so nothing is lost
        or doubled by the swap."""
        self.catalog = catalog

    def tick(self) -> TickReport:
        now = self.clock.now()
        report = TickReport(now)
        jobs = list(self.catalog.jobs.values())
        with db.reading(self.engine) as conn:
            marks = load_watermarks(conn)
        p = plan(jobs, marks, now, limit=self.limit)
        for key in p.new_jobs:
            emit(self.log, "schedule.job_new", job=key, watermark=now, note="starts from now, no back-fill")
        blocked: set[str] = set()
        for occ in p.actions():
            key = occ.key
            if key in blocked:
                continue
            within_grace = occ.late_by <= occ.job.grace
            if within_grace and now < self._retry_at.get(key, now):
                blocked.add(key)
                continue
            emit(self.log, "schedule.fire", job=key, at=occ.at, late_by_seconds=occ.late_by.total_seconds())
            try:
                outcome = settle(
                    self.engine,
                    occ,
                    store=self.store,
                    clock=self.clock,
                    actor=self.actor,
                    daemon_id=self.daemon_id,
                    reason_if_missed=self._last_error.get((key, occ.at)),
                )
            except Exception as exc:  # a fire must never take the daemon (or other jobs) down
                message = f"{type(exc).__name__}: {exc}"
                report.errors.append(f"{key} at {occ.at.isoformat()}: {message}")
                self._last_error[(key, occ.at)] = message
                self._retry_at[key] = now + self.retry
                blocked.add(key)
                emit(
                    self.log,
                    "schedule.error",
                    logging.ERROR,
                    job=key,
                    at=occ.at,
                    error=message,
                    retry_at=now + self.retry,
                    missed_after=occ.at + occ.job.grace,
                )
                continue
            self._retry_at.pop(key, None)
            self._last_error.pop((key, occ.at), None)
            with db.writing(self.engine) as conn:
                advance_watermark(conn, key, occ.at, now=now, by=self.daemon_id)
            report.outcomes.append(outcome)
            self._log_outcome(outcome, occ.late_by)
        with db.writing(self.engine) as conn:
            for key, mark in p.watermarks.items():
                if key not in blocked and (marks.get(key) is None or mark > marks[key]):
                    advance_watermark(conn, key, mark, now=now, by=self.daemon_id)
        wakes = [w for w in (p.next_wake, *(self._retry_at.get(k) for k in blocked)) if w is not None]
        if p.backlog:
            wakes.append(now)
        report.next_wake = min(wakes) if wakes else None
        return report

    def _log_outcome(self, outcome: Outcome, late_by: timedelta) -> None:
        if outcome.kind == "missed":
            emit(
                self.log,
                "schedule.missed",
                logging.WARNING,
                job=outcome.job,
                at=outcome.at,
                run_id=outcome.run_id,
                late_by_seconds=late_by.total_seconds(),
                reason=outcome.reason,
            )
            return
        emit(
            self.log,
            "run.created" if outcome.kind == "created" else f"run.{outcome.kind}",
            job=outcome.job,
            at=outcome.at,
            run_id=outcome.run_id,
            intended=outcome.intended,
            **({"slogan_number": outcome.pick.number} if outcome.pick else {}),
        )
