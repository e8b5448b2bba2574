"""Guarded changes of message state, each written with its event in the same transaction.

Every change names the states it may start from (and, for an outcome, the attempt it belongs to).
A row that has moved on meanwhile (another worker, an operator, a reconciliation) is left alone, and
only the changes really applied get an event, so the history never tells something that did not
happen. On PostgreSQL the rows are locked first (``FOR UPDATE``, ordered by id so two writers never
deadlock; ``SKIP LOCKED`` for sweeps that can come back later).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.events import record_events
from broadcaster.models import Message

messages_t = Message.__table__


@dataclass
class Change:
    message_id: int
    run_id: int
    to_status: str
    values: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    attempt: int | None = None  # when set: only if the message is still at this attempt
    from_status: str | None = None  # filled in when applied


def apply_changes(
    conn: Connection,
    changes: Iterable[Change],
    *,
    from_states: Collection[str],
    at: datetime,
    source: str,
    skip_locked: bool = False,
) -> list[Change]:
    """Apply the changes whose message is in one of ``from_states``; return those applied."""
    changes = list(changes)
    if not changes:
        return []
    query = (
        sa.select(messages_t.c.id, messages_t.c.status, messages_t.c.attempts)
        .where(
            messages_t.c.id.in_([c.message_id for c in changes]),
            messages_t.c.status.in_(list(from_states)),
        )
        .order_by(messages_t.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    current = {row.id: row for row in conn.execute(query)}
    applied: list[Change] = []
    for change in changes:
        row = current.pop(change.message_id, None)  # pop: one change per message
        if row is None or (change.attempt is not None and change.attempt != row.attempts):
            continue
        change.from_status = row.status
        applied.append(change)
    by_columns: dict[tuple[str, ...], list[Change]] = defaultdict(list)
    for change in applied:
        by_columns[tuple(sorted(change.values))].append(change)
    for columns, group in by_columns.items():
        stmt = (
            sa.update(messages_t)
            .where(messages_t.c.id == sa.bindparam("m_id"))
            .values(
                status=sa.bindparam("m_status"),
                updated_at=at,
                **{col: sa.bindparam(f"m_{col}") for col in columns},
            )
        )
        conn.execute(
            stmt,
            [
                {
                    "m_id": c.message_id,
                    "m_status": c.to_status,
                    **{f"m_{col}": c.values[col] for col in columns},
                }
                for c in group
            ],
        )
    record_events(
        conn,
        (
            {
                "message_id": c.message_id,
                "run_id": c.run_id,
                "at": at,
                "from_status": c.from_status,
                "to_status": c.to_status,
                "source": source,
                "detail": c.detail,
            }
            for c in applied
        ),
    )
    return applied


def sweep(
    engine: Engine,
    conditions: list[sa.ColumnElement[bool]],
    make_change: Callable[[sa.Row[Any]], Change],
    *,
    from_states: Collection[str],
    at: datetime,
    source: str,
    page: int = 1000,
) -> int:
    """Apply a change to every message matching ``conditions``, one page per transaction, so a big
    sweep never holds the write lock long and an interrupted one simply runs again. Rows another
    worker holds (PostgreSQL) are skipped and come back on the next sweep. Returns changes applied.

    Each row offers ``id, run_id, attempts, lease_owner`` to ``make_change``."""
    total = 0
    while True:
        with db.writing(engine) as conn:
            rows = conn.execute(
                sa.select(
                    messages_t.c.id, messages_t.c.run_id, messages_t.c.attempts, messages_t.c.lease_owner
                )
                .where(*conditions)
                .order_by(messages_t.c.id)
                .limit(page)
            ).all()
            applied = apply_changes(
                conn,
                [make_change(r) for r in rows],
                from_states=from_states,
                at=at,
                source=source,
                skip_locked=True,
            )
        total += len(applied)
        if len(rows) < page or not applied:
            return total
