"""Reading the send log: runs with their counts, one run in detail, and the messages themselves.

The outbox is the send log, so these are plain queries. :func:`iter_messages` streams (a server-side
cursor on PostgreSQL, paged fetches on SQLite) so a log of millions of rows never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.audit.queries import MessageFilter
from broadcaster.models import QUEUED, SENDING, UNKNOWN, Action, Message, Run
from broadcaster.runs import get_run, outbox_summary

messages_t = Message.__table__
runs_t = Run.__table__
actions_t = Action.__table__

#: Columns of ``broadcaster log`` (CSV header and JSONL keys), in order.
LOG_COLUMNS = (
    "id",
    "run_id",
    "phone",
    "status",
    "attempts",
    "provider_id",
    "error_code",
    "error_text",
    "segments",
    "encoding",
    "created_at",
    "sent_at",
    "final_at",
    "body",
)


def _run_record(row: Any, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "template": row["template"],
        "lists": list(row["list_names"]),
        "status": row["status"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "intended": row["intended"],
        "counts": counts,
        "job_id": row["job_id"],
        "scheduled_for": row["scheduled_for"],
    }


def list_runs(conn: Connection, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs, newest last, each with its messages counted by status (one grouped query)."""
    query = sa.select(runs_t).order_by(runs_t.c.id.desc())
    if limit:
        query = query.limit(limit)
    rows = list(reversed(conn.execute(query).mappings().all()))
    if not rows:
        return []
    counts: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
    grouped = conn.execute(
        sa.select(messages_t.c.run_id, messages_t.c.status, sa.func.count())
        .where(messages_t.c.run_id.between(rows[0]["id"], rows[-1]["id"]))
        .group_by(messages_t.c.run_id, messages_t.c.status)
    )
    for run_id, status, n in grouped:
        if run_id in counts:
            counts[run_id][status] = n
    return [_run_record(r, counts[r["id"]]) for r in rows]


def run_detail(conn: Connection, run_id: int) -> dict[str, Any]:
    """One run: its ledger row, counts, segments still to send, pending work and its action trail."""
    run = get_run(conn, run_id)
    summary = outbox_summary(conn, run_id)
    record = _run_record(run, summary.counts)
    record.update(
        {
            "template_sha256": run["template_sha256"],
            "variables": run["variables"],
            "sender": run["sender"],
            "timezone": run["timezone"],
            "priority": run["priority"],
            "quiet_hours": run["quiet_hours"],
            "started_at": run["started_at"],
            "finished_at": run["finished_at"],
            "segments": summary.segments,
            "next_attempt_at": conn.execute(
                sa.select(sa.func.min(messages_t.c.next_attempt_at)).where(
                    messages_t.c.run_id == run_id, messages_t.c.status.in_([QUEUED, UNKNOWN])
                )
            ).scalar_one(),
            "in_flight": summary.counts.get(SENDING, 0),
            "actions": [
                {
                    "at": a["at"],
                    "actor": a["actor"],
                    "host": a["host"],
                    "action": a["action"],
                    "details": a["details"],
                }
                for a in conn.execute(
                    sa.select(actions_t).where(actions_t.c.run_id == run_id).order_by(actions_t.c.id)
                ).mappings()
            ],
        }
    )
    return record


def iter_messages(
    engine: Engine, flt: MessageFilter, *, region: str, page: int = 1000
) -> Iterator[dict[str, Any]]:
    """Messages in id order, streamed; each a dict with :data:`LOG_COLUMNS`. The filter is the audit
    log's own (``flt.conditions``); a bad filter value raises FilterError here, before any row."""
    query = (
        sa.select(*[messages_t.c[name] for name in LOG_COLUMNS])
        .where(*flt.conditions(region))
        .order_by(messages_t.c.id)
    )
    return _stream(engine, query, page)


def _stream(engine: Engine, query: sa.Select[Any], page: int) -> Iterator[dict[str, Any]]:
    with db.reading(engine) as conn:
        result = conn.execution_options(stream_results=True, yield_per=page).execute(query)
        for row in result.mappings():
            yield dict(row)
