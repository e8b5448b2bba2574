"""Claiming due messages with a lease, and telling whether a lease's holder is gone.

A claim moves a batch from ``queued`` to ``sending`` and commits it before any provider call, with
the worker's id, the lease's expiry and the attempt's start time: whatever happens next, the row
says who was trying since when. PostgreSQL workers share the outbox with ``FOR UPDATE SKIP
LOCKED``; on SQLite the writing transaction (BEGIN IMMEDIATE) already serialises claims.

Worker ids default to ``host:pid:token``. A lease held by a process of this host that no longer
exists (or by an earlier process that had our pid) is dead at once, without waiting for its expiry.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.events import record_events
from broadcaster.models import QUEUED, RUN_READY, RUN_SENDING, SENDING, SUPPRESSED, Message, OptOut, Run
from broadcaster.trail import record_action
from broadcaster.transitions import Change, apply_changes

messages_t = Message.__table__
runs_t = Run.__table__
optouts_t = OptOut.__table__

ACTIVE_RUN_STATES = (RUN_READY, RUN_SENDING)
SOURCE = "dispatcher"
#: The trail's record of a run's first claim (when dispatch begins), by the dispatcher.
START_ACTION = "run.started"
STARTED_BY = "dispatcher"


_IN_THIS_PROCESS: set[str] = set()  # worker ids of dispatchers created by this process


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def register_worker(worker_id: str) -> None:
    """Note a dispatcher of this process, so its leases are never taken for a dead process's."""
    _IN_THIS_PROCESS.add(worker_id)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_gone(owner: str, me: str) -> bool:
    """True when ``owner`` is a default-style id of this host whose process is surely dead."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    if owner == me or owner in _IN_THIS_PROCESS:
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True  # an earlier process that had our pid: not one of ours, so it is dead
    return not _pid_alive(pid)


@dataclass(frozen=True)
class Claimed:
    id: int
    run_id: int
    phone: str
    body: str
    sender: str | None
    segments: int
    attempt: int
    attempt_started_at: datetime
    lease_expires_at: datetime


def claim(
    conn: Connection,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    run_id: int | None = None,
    exclude_runs: Collection[int] = (),
) -> tuple[list[Claimed], list[Change]]:
    """Claim up to ``limit`` due messages, urgent runs first; opted-out numbers become ``suppressed``.

    Returns the claimed messages (committed as ``sending`` by the caller's transaction) and the
    suppressions applied. A run claimed for the first time becomes ``sending`` and its start is
    recorded in the trail (``run.started``: the worker, and the template with its sha256).
    """
    active = sa.select(runs_t.c.id).where(runs_t.c.status.in_(ACTIVE_RUN_STATES))
    cond = [
        messages_t.c.status == QUEUED,
        messages_t.c.next_attempt_at <= now,
        messages_t.c.run_id.in_(active),
    ]
    if run_id is not None:
        cond.append(messages_t.c.run_id == run_id)
    if exclude_runs:
        cond.append(messages_t.c.run_id.not_in(list(exclude_runs)))
    query = (
        sa.select(
            messages_t.c.id,
            messages_t.c.run_id,
            messages_t.c.phone,
            messages_t.c.body,
            messages_t.c.sender,
            messages_t.c.segments,
            messages_t.c.attempts,
            optouts_t.c.id.label("optout_id"),
        )
        .outerjoin(optouts_t, optouts_t.c.phone == messages_t.c.phone)
        .where(*cond)
        .order_by(messages_t.c.priority.desc(), messages_t.c.next_attempt_at, messages_t.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=messages_t, skip_locked=True)
    rows = conn.execute(query).all()
    if not rows:
        return [], []
    suppressed = apply_changes(
        conn,
        (
            Change(
                r.id,
                r.run_id,
                SUPPRESSED,
                {"error_text": "opted out", "final_at": now},
                {"reason": "opted out"},
            )
            for r in rows
            if r.optout_id is not None
        ),
        from_states=[QUEUED],
        at=now,
        source=SOURCE,
    )
    to_send = [r for r in rows if r.optout_id is None]
    expires = now + lease
    if to_send:
        updated = set(
            conn.execute(
                sa.update(messages_t)
                .where(messages_t.c.id.in_([r.id for r in to_send]), messages_t.c.status == QUEUED)
                .values(
                    status=SENDING,
                    lease_owner=worker_id,
                    lease_expires_at=expires,
                    attempt_started_at=now,
                    attempts=messages_t.c.attempts + 1,
                    updated_at=now,
                )
                .returning(messages_t.c.id)
            ).scalars()
        )
        to_send = [r for r in to_send if r.id in updated]  # only what this transaction really took
        record_events(
            conn,
            (
                {
                    "message_id": r.id,
                    "run_id": r.run_id,
                    "at": now,
                    "from_status": QUEUED,
                    "to_status": SENDING,
                    "source": SOURCE,
                    "detail": {"attempt": r.attempts + 1, "worker": worker_id},
                }
                for r in to_send
            ),
        )
    started = conn.execute(
        sa.update(runs_t)
        .where(runs_t.c.id.in_({r.run_id for r in rows}), runs_t.c.status == RUN_READY)
        .values(status=RUN_SENDING, started_at=now)
        .returning(runs_t.c.id, runs_t.c.template, runs_t.c.template_sha256, runs_t.c.created_by)
    ).all()
    for run in sorted(started):
        record_action(
            conn,
            at=now,
            actor=STARTED_BY,
            action=START_ACTION,
            run_id=run.id,
            details={
                "worker": worker_id,
                "created_by": run.created_by,
                "template": run.template,
                "template_sha256": run.template_sha256,
            },
        )
    claimed = [
        Claimed(r.id, r.run_id, r.phone, r.body, r.sender, r.segments, r.attempts + 1, now, expires)
        for r in to_send
    ]
    return claimed, suppressed
