"""Operator control of a run: pause, resume, cancel, resolve uncertain messages; and run completion.

Each operator action is written to the action trail in the same transaction as the change it
makes. Pausing only stops claims (the run's unsent messages stay ``queued``; messages already in
flight finish); cancelling turns queued messages into ``cancelled``, one event each.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.models import (
    CANCELLED,
    PENDING_STATES,
    QUEUED,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_PAUSED,
    RUN_PENDING,
    RUN_READY,
    RUN_SENDING,
    SENT,
    UNKNOWN,
    Message,
    Run,
)
from broadcaster.runs import RunError, get_run
from broadcaster.trail import record_action
from broadcaster.transitions import Change, apply_changes, sweep

messages_t = Message.__table__
runs_t = Run.__table__

RESEND = "resend"
MARK_SENT = "mark-sent"
#: Trail action names (``audit check`` explains a cancelled message by its run's CANCEL_ACTION).
PAUSE_ACTION = "run.paused"
RESUME_ACTION = "run.resumed"
CANCEL_ACTION = "run.cancelled"
RESOLVE_ACTION = "run.resolved"


def _set_status(
    engine: Engine,
    run_id: int,
    *,
    allowed: tuple[str, ...],
    to: str | None,
    clock: Clock,
    actor: str,
    action: str,
    verb: str,
) -> dict[str, Any]:
    now = clock.now()
    with db.writing(engine) as conn:
        run = get_run(conn, run_id)
        if run["status"] not in allowed:
            raise RunError(f"run {run_id} is {run['status']}: it cannot be {verb}")
        if to is None:  # resume: a paused run goes back to where it was; an interrupted one stays
            paused_from = RUN_SENDING if run["started_at"] else RUN_READY
            to = paused_from if run["status"] == RUN_PAUSED else run["status"]
        if to != run["status"]:
            conn.execute(sa.update(runs_t).where(runs_t.c.id == run_id).values(status=to))
        record_action(
            conn, at=now, actor=actor, action=action, run_id=run_id, details={"from": run["status"], "to": to}
        )
    return {"run": run_id, "from": run["status"], "to": to}


def pause_run(engine: Engine, run_id: int, *, clock: Clock, actor: str) -> dict[str, Any]:
    return _set_status(
        engine,
        run_id,
        allowed=(RUN_READY, RUN_SENDING),
        to=RUN_PAUSED,
        clock=clock,
        actor=actor,
        action=PAUSE_ACTION,
        verb="paused",
    )


def resume_run(engine: Engine, run_id: int, *, clock: Clock, actor: str) -> dict[str, Any]:
    """A paused run goes back to sending; an interrupted one (still pending/ready/sending) is noted."""
    return _set_status(
        engine,
        run_id,
        allowed=(RUN_PAUSED, RUN_PENDING, RUN_READY, RUN_SENDING),
        to=None,
        clock=clock,
        actor=actor,
        action=RESUME_ACTION,
        verb="resumed",
    )


def cancel_run(engine: Engine, run_id: int, *, clock: Clock, actor: str) -> dict[str, Any]:
    result = _set_status(
        engine,
        run_id,
        allowed=(RUN_PENDING, RUN_READY, RUN_SENDING, RUN_PAUSED),
        to=RUN_CANCELLED,
        clock=clock,
        actor=actor,
        action=CANCEL_ACTION,
        verb="cancelled",
    )
    result["cancelled"] = cancel_queued(engine, run_id, now=clock.now())
    return result


def cancel_queued(engine: Engine, run_id: int, *, now: datetime) -> int:
    """Turn the queued messages of a cancelled run into ``cancelled`` (resumable)."""
    return sweep(
        engine,
        [messages_t.c.run_id == run_id, messages_t.c.status == QUEUED],
        lambda r: Change(r.id, r.run_id, CANCELLED, {"final_at": now}, {"reason": "run cancelled"}),
        from_states=[QUEUED],
        at=now,
        source="operator",
    )


def cancelled_runs_with_queued(engine: Engine) -> list[int]:
    """Cancelled runs that still have queued messages (a cancel interrupted half-way, or a retry)."""
    with db.reading(engine) as conn:
        return list(
            conn.execute(
                sa.select(runs_t.c.id).where(
                    runs_t.c.status == RUN_CANCELLED,
                    sa.exists().where(messages_t.c.run_id == runs_t.c.id, messages_t.c.status == QUEUED),
                )
            ).scalars()
        )


def resolve_unknown(
    engine: Engine,
    run_id: int,
    *,
    decision: str,
    clock: Clock,
    actor: str,
    message_ids: list[int] | None = None,
) -> int:
    """An operator settles ``unknown`` messages: send again, or record them as sent."""
    if decision not in (RESEND, MARK_SENT):
        raise RunError(f"unknown decision {decision!r}")
    now = clock.now()
    with db.writing(engine) as conn:
        get_run(conn, run_id)
        query = sa.select(messages_t.c.id).where(
            messages_t.c.run_id == run_id, messages_t.c.status == UNKNOWN
        )
        if message_ids:
            query = query.where(messages_t.c.id.in_(message_ids))
        ids = conn.execute(query.order_by(messages_t.c.id)).scalars().all()
        if decision == RESEND:
            to, values = QUEUED, {"next_attempt_at": now}
        else:
            to, values = SENT, {"sent_at": now}
        detail = {"reason": f"operator: {decision}", "decision": decision, "actor": actor}
        applied = apply_changes(
            conn,
            (Change(i, run_id, to, dict(values), detail) for i in ids),
            from_states=[UNKNOWN],
            at=now,
            source="operator",
        )
        record_action(
            conn,
            at=now,
            actor=actor,
            action=RESOLVE_ACTION,
            run_id=run_id,
            details={"decision": decision, "messages": [c.message_id for c in applied]},
        )
    return len(applied)


def complete_finished_runs(engine: Engine, *, now: datetime) -> list[int]:
    """Runs with nothing pending are completed (cancelled ones get their finish time)."""
    pending = sa.exists().where(messages_t.c.run_id == runs_t.c.id, messages_t.c.status.in_(PENDING_STATES))
    with db.writing(engine) as conn:
        done = (
            conn.execute(
                sa.select(runs_t.c.id).where(runs_t.c.status.in_([RUN_READY, RUN_SENDING]), ~pending)
            )
            .scalars()
            .all()
        )
        if done:
            conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.id.in_(done), runs_t.c.status.in_([RUN_READY, RUN_SENDING]))
                .values(status=RUN_COMPLETED, finished_at=now)
            )
        conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.status == RUN_CANCELLED, runs_t.c.finished_at.is_(None), ~pending)
            .values(finished_at=now)
        )
    return list(done)
