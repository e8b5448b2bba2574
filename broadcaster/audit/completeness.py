"""``audit check RUN``: does every intended recipient of a run have one message whose state explains
itself, and do the run's counts add up?

A message explains itself when its state carries its reason: ``failed`` a code and a text,
``undelivered`` a code or a text, ``suppressed`` a reason, ``cancelled`` a ``run.cancelled`` action of
its run, ``sent``/``delivered``/``undelivered`` the provider's id (or, for ``sent``, an operator's
``runs resolve --mark-sent`` decision as its last event); and its newest event leads to the
state it is in (nothing changed it without leaving history). Messages still in ``queued``,
``sending`` or ``unknown`` are listed as pending (with when they are due), and are an issue only
once the run is finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.models import (
    CANCELLED,
    DELIVERED,
    FAILED,
    MESSAGE_STATES,
    PENDING_STATES,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_MISSED,
    RUN_PENDING,
    SENT,
    SUPPRESSED,
    UNDELIVERED,
    Action,
    Message,
    MessageEvent,
    Run,
)
from broadcaster.run_control import CANCEL_ACTION, MARK_SENT
from broadcaster.runs import counts_by_status

LISTED = 1000  # issues and pending messages listed in full; the totals are always exact

messages_t = Message.__table__
events_t = MessageEvent.__table__
actions_t = Action.__table__
runs_t = Run.__table__


class CheckError(LookupError):
    pass


@dataclass
class CheckResult:
    run_id: int
    run_status: str
    intended: int
    messages: int
    counts: dict[str, int]
    counts_total: int
    issues_total: int = 0
    pending_total: int = 0
    issues: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.issues_total == 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def _issue(self, problem: str, message: dict[str, Any] | None = None) -> None:
        self.issues_total += 1
        if len(self.issues) < LISTED:
            entry: dict[str, Any] = {"problem": problem, "message_id": None, "status": None}
            if message is not None:
                entry.update(message_id=message["id"], status=message["status"])
            self.issues.append(entry)


def _marked_sent(m: dict[str, Any]) -> bool:
    """An operator recorded an uncertain message as sent (a provider that cannot look it up)."""
    detail = m["last_event_detail"] or {}
    return (
        m["status"] == SENT and m["last_event_source"] == "operator" and detail.get("decision") == MARK_SENT
    )


def _explains_itself(m: dict[str, Any], cancel_action: bool) -> str | None:
    status = m["status"]
    if status not in MESSAGE_STATES:
        return f"unknown state {status!r}"
    if m["last_event_status"] is None:
        return "no event history"
    if m["last_event_status"] != status:
        return f"state {status} but its last event leads to {m['last_event_status']}"
    if status == FAILED and not (m["error_code"] and m["error_text"]):
        return "failed without an error code and text"
    if status == UNDELIVERED and not (m["error_code"] or m["error_text"]):
        return "undelivered without an error code or text"
    if status in (SENT, DELIVERED, UNDELIVERED) and not m["provider_id"] and not _marked_sent(m):
        return f"{status} without the provider's message id"
    if status == SUPPRESSED and not m["error_text"]:
        return "suppressed without a reason"
    if status == CANCELLED and not cancel_action:
        return "cancelled but the run has no run.cancelled action"
    return None


def check_run(conn: Connection, run_id: int) -> CheckResult:
    run = conn.execute(
        sa.select(runs_t.c.id, runs_t.c.status, runs_t.c.intended).where(runs_t.c.id == run_id)
    ).first()
    if run is None:
        raise CheckError(f"run {run_id} not found")
    counts = counts_by_status(conn, run_id)
    total = conn.execute(
        sa.select(sa.func.count()).select_from(messages_t).where(messages_t.c.run_id == run_id)
    ).scalar_one()
    result = CheckResult(run_id, run.status, run.intended, total, counts, sum(counts.values()))
    if run.status == RUN_PENDING:
        result._issue("run not materialised yet (status pending): its messages are not all written")
    if run.intended != total:
        result._issue(f"intended {run.intended} but {total} messages")
    if result.counts_total != total:
        result._issue(f"counts by state add up to {result.counts_total}, not {total}")
    cancel_action = (
        conn.execute(
            sa.select(actions_t.c.id)
            .where(actions_t.c.run_id == run_id, actions_t.c.action == CANCEL_ACTION)
            .limit(1)
        ).first()
        is not None
    )
    finished = run.status in (RUN_COMPLETED, RUN_CANCELLED, RUN_MISSED)
    last = (
        sa.select(events_t.c.message_id, sa.func.max(events_t.c.id).label("last_id"))
        .where(events_t.c.run_id == run_id)
        .group_by(events_t.c.message_id)
        .subquery()
    )
    rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
        sa.select(
            messages_t.c.id,
            messages_t.c.status,
            messages_t.c.error_code,
            messages_t.c.error_text,
            messages_t.c.provider_id,
            messages_t.c.attempts,
            messages_t.c.next_attempt_at,
            messages_t.c.lease_expires_at,
            events_t.c.to_status.label("last_event_status"),
            events_t.c.source.label("last_event_source"),
            events_t.c.detail.label("last_event_detail"),
        )
        .outerjoin(last, last.c.message_id == messages_t.c.id)
        .outerjoin(events_t, events_t.c.id == last.c.last_id)
        .where(messages_t.c.run_id == run_id)
        .order_by(messages_t.c.id)
    )
    for row in rows.mappings():
        m = dict(row)
        problem = _explains_itself(m, cancel_action)
        if problem:
            result._issue(problem, m)
        if m["status"] in PENDING_STATES:
            result.pending_total += 1
            if finished:
                result._issue(f"still {m['status']} although the run is {run.status}", m)
            if len(result.pending) < LISTED:
                result.pending.append(
                    {
                        "message_id": m["id"],
                        "status": m["status"],
                        "attempts": m["attempts"],
                        "next_attempt_at": m["next_attempt_at"],
                        "lease_expires_at": m["lease_expires_at"],
                        "error_code": m["error_code"],
                        "error_text": m["error_text"],
                        "last_event_detail": m["last_event_detail"],
                    }
                )
    return result
