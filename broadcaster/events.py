"""Message state changes and their append-only history, always written together.

Events are written unchained; the audit sealer chains them later in id order (see
:mod:`broadcaster.audit.chain`). On PostgreSQL each call takes the shared side of the sealer's lock
until commit, so that no event id can be committed behind a seal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from broadcaster.audit.chain import lock_events_for_append
from broadcaster.models import MessageEvent


def record_events(conn: Connection, events: Iterable[dict[str, Any]]) -> int:
    """Append events in one batch. Each needs message_id, run_id, at, to_status; may have
    from_status, source, detail."""
    rows = [
        {
            "message_id": e["message_id"],
            "run_id": e["run_id"],
            "at": e["at"],
            "from_status": e.get("from_status"),
            "to_status": e["to_status"],
            "source": e.get("source", "system"),
            "detail": e.get("detail") or {},
        }
        for e in events
    ]
    if rows:
        lock_events_for_append(conn)
        conn.execute(insert(MessageEvent.__table__), rows)
    return len(rows)
