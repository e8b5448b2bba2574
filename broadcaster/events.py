"""Message state changes and their append-only history, always written together."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

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
        conn.execute(insert(MessageEvent.__table__), rows)
    return len(rows)
