"""The scheduler's side of the run ledger: one run per (job, occurrence), whatever calls it.

Every fire, catch-up, retry and second daemon ends in :func:`settle`, which finds or creates the
run for the occurrence (``runs.create_run``: UNIQUE(job_id, scheduled_for)) and materialises it
(``runs.materialise``: idempotent), or records it as missed with the same key so that it can
never run later by accident. Per-job watermarks (``schedule_state``) say up to where every
occurrence has been dealt with; they only ever move forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.models import RUN_MISSED, RUN_PENDING, Message, Run, ScheduleState
from broadcaster.runs import create_run, materialise
from broadcaster.scheduling.catalog import Job
from broadcaster.scheduling.occurrences import occurrence_index
from broadcaster.scheduling.planner import Occurrence
from broadcaster.scheduling.rotation import Pick
from broadcaster.templating import TemplateStore
from broadcaster.trail import record_action

runs_t = Run.__table__
state_t = ScheduleState.__table__
messages_t = Message.__table__

SCHEDULED = "scheduled"


@dataclass(frozen=True)
class Outcome:
    kind: str  # created | resumed | existing | missed
    job: str
    at: datetime
    run_id: int | None
    intended: int = 0
    pick: Pick | None = None
    reason: str | None = None


def occurrence_variables(job: Job, at: datetime) -> tuple[dict[str, Any], Pick | None]:
    """The run variables of one occurrence: campaign and job variables, plus the rotation pick
    (``slogan``, ``slogan_number``), a pure function of the occurrence."""
    variables = dict(job.variables)
    pick = None
    if job.pool is not None:
        pick = job.pool.pick(occurrence_index(job, at))
        variables["slogan"] = pick.text
        variables["slogan_number"] = pick.number
    return variables, pick


def load_watermarks(conn: Connection) -> dict[str, datetime]:
    return {k: w for k, w in conn.execute(sa.select(state_t.c.job_key, state_t.c.watermark)).all()}


def advance_watermark(conn: Connection, job_key: str, to: datetime, *, now: datetime, by: str) -> None:
    """Move the job's watermark forward to ``to`` (never back: a slower second daemon is harmless)."""
    insert = db.insert_ignore(conn, state_t).values(
        job_key=job_key, watermark=to, updated_at=now, updated_by=by
    )
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["job_key"],
            set_={"watermark": to, "updated_at": now, "updated_by": by},
            where=state_t.c.watermark < to,
        )
    )


def find_run(conn: Connection, job_key: str, at: datetime) -> dict[str, Any] | None:
    row = (
        conn.execute(
            sa.select(runs_t.c.id, runs_t.c.status, runs_t.c.intended).where(
                runs_t.c.job_id == job_key, runs_t.c.scheduled_for == at
            )
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def settle(
    engine: Engine,
    occ: Occurrence,
    *,
    store: TemplateStore,
    clock: Clock,
    actor: str,
    daemon_id: str,
    reason_if_missed: str | None = None,
) -> Outcome:
    """Make sure the occurrence is dealt with exactly once: an existing run is resumed (finished
    materialising if a crash interrupted it), a due one is created and materialised, one later
    than its grace is recorded as missed."""
    job, at = occ.job, occ.at
    with db.reading(engine) as conn:
        existing = find_run(conn, job.key, at)
    if existing is None and occ.late_by > job.grace:
        reason = reason_if_missed or (
            f"not run within its misfire grace of {int(job.grace.total_seconds())} s "
            f"(late by {int(occ.late_by.total_seconds())} s: daemon down or fire failing)"
        )
        return record_missed(engine, occ, now=clock.now(), reason=reason, actor=actor, daemon_id=daemon_id)
    variables, pick = occurrence_variables(job, at)
    kind = "existing"
    if existing is None:
        ref = create_run(
            engine,
            template=job.template,
            list_names=list(job.lists),
            variables=variables,
            clock=clock,
            actor=actor,
            timezone=job.timezone,
            store=store,
            job_id=job.key,
            campaign_id=job.campaign_id,
            scheduled_for=at,
            sender=job.sender,
            priority=job.priority,
            quiet_hours=job.quiet_hours,
            kind=SCHEDULED,
            schedules_sha256=dict(job.files_sha256),
            extra_details={
                "daemon": daemon_id,
                "late_by_seconds": round(occ.late_by.total_seconds(), 3),
                **({"slogan_number": pick.number, "occurrence_index": pick.index} if pick else {}),
            },
        )
        kind = "created" if ref.created else "existing"
        with db.reading(engine) as conn:
            existing = find_run(conn, job.key, at)
        assert existing is not None and existing["id"] == ref.id
    if existing["status"] == RUN_MISSED:
        return Outcome("missed", job.key, at, existing["id"], pick=pick, reason="already recorded as missed")
    intended = existing["intended"]
    if existing["status"] == RUN_PENDING:
        intended = materialise(engine, existing["id"], store=store, clock=clock)
        if kind == "existing":
            kind = "resumed"
    return Outcome(kind, job.key, at, existing["id"], intended=intended, pick=pick)


def record_missed(
    engine: Engine, occ: Occurrence, *, now: datetime, reason: str, actor: str, daemon_id: str
) -> Outcome:
    """A ``missed`` run row under the occurrence's own key (so it can never run later), and a
    ``schedule.missed`` entry in the trail. A run already created for the occurrence is left
    alone, unless it is still pending with no message written (its fire failed): then it becomes
    the missed record."""
    job, at = occ.job, occ.at
    variables, _ = occurrence_variables(job, at)
    details = {
        "job": job.key,
        "scheduled_for": at.isoformat(),
        "late_by_seconds": round(occ.late_by.total_seconds(), 3),
        "grace_seconds": job.grace.total_seconds(),
        "reason": reason,
        "daemon": daemon_id,
    }
    with db.writing(engine) as conn:
        existing = find_run(conn, job.key, at)
        if existing is not None:
            has_messages = conn.execute(
                sa.select(messages_t.c.id).where(messages_t.c.run_id == existing["id"]).limit(1)
            ).first()
            if existing["status"] != RUN_PENDING or has_messages:
                return Outcome("existing", job.key, at, existing["id"], intended=existing["intended"])
            conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.id == existing["id"], runs_t.c.status == RUN_PENDING)
                .values(status=RUN_MISSED, note=reason, finished_at=now)
            )
            run_id = existing["id"]
        else:
            inserted = conn.execute(
                db.insert_ignore(conn, runs_t)
                .values(
                    kind=SCHEDULED,
                    campaign_id=job.campaign_id,
                    job_id=job.key,
                    scheduled_for=at,
                    template=job.template,
                    variables=variables,
                    list_names=list(job.lists),
                    sender=job.sender,
                    timezone=job.timezone,
                    priority=job.priority,
                    quiet_hours=job.quiet_hours,
                    status=RUN_MISSED,
                    intended=0,
                    created_by=actor,
                    created_at=now,
                    finished_at=now,
                    note=reason,
                )
                .on_conflict_do_nothing(index_elements=["job_id", "scheduled_for"])
                .returning(runs_t.c.id)
            ).first()
            row = find_run(conn, job.key, at)
            assert row is not None
            if row["status"] != RUN_MISSED:  # another daemon created the run meanwhile
                return Outcome("existing", job.key, at, row["id"], intended=row["intended"])
            if inserted is None:  # another daemon recorded the same miss meanwhile
                return Outcome("missed", job.key, at, row["id"], reason=reason)
            run_id = row["id"]
        record_action(conn, at=now, actor=actor, action="schedule.missed", run_id=run_id, details=details)
    return Outcome("missed", job.key, at, run_id, reason=reason)
