"""Opt-outs, keyed by E.164 phone. Every change is recorded in the action trail with its source
(operator, import, STOP reply, provider 21610)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster import db
from broadcaster.models import OptOut
from broadcaster.trail import record_action

optouts_t = OptOut.__table__

SOURCES = ("operator", "import", "reply", "provider")


def add_optout(
    conn: Connection,
    phone: str,
    *,
    source: str,
    at: datetime,
    actor: str,
    reason: str | None = None,
) -> bool:
    """Record an opt-out; returns False if the number was already opted out (nothing changes)."""
    return bool(add_optouts(conn, [phone], source=source, at=at, actor=actor, reason=reason))


def add_optouts(
    conn: Connection,
    phones: Iterable[str],
    *,
    source: str,
    at: datetime,
    actor: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[str]:
    """Record many opt-outs in one statement; returns the numbers that were not opted out before.

    Each newly opted-out number gets its own ``optout.added`` action (the trail must still tell who
    opted a number out after the opt-out itself is lifted); ``details`` are added to each.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown opt-out source {source!r}")
    rows = [
        {"phone": p, "source": source, "reason": reason, "actor": actor, "created_at": at}
        for p in dict.fromkeys(phones)
    ]
    if not rows:
        return []
    stmt = (
        db.insert_ignore(conn, optouts_t)
        .on_conflict_do_nothing(index_elements=["phone"])
        .returning(optouts_t.c.phone)
    )
    added = set(conn.execute(stmt, rows).scalars())
    ordered = [r["phone"] for r in rows if r["phone"] in added]
    for phone in ordered:
        record_action(
            conn,
            at=at,
            actor=actor,
            action="optout.added",
            details={"phone": phone, "source": source, "reason": reason, **(details or {})},
        )
    return ordered


def remove_optout(
    conn: Connection, phone: str, *, source: str, at: datetime, actor: str, reason: str | None = None
) -> bool:
    """Lift an opt-out; returns False if the number was not opted out."""
    result = conn.execute(sa.delete(optouts_t).where(optouts_t.c.phone == phone))
    if result.rowcount == 0:
        return False
    record_action(
        conn,
        at=at,
        actor=actor,
        action="optout.removed",
        details={"phone": phone, "source": source, "reason": reason},
    )
    return True


def is_opted_out(conn: Connection, phone: str) -> bool:
    return conn.execute(sa.select(optouts_t.c.id).where(optouts_t.c.phone == phone)).first() is not None


def list_optouts(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(optouts_t).order_by(optouts_t.c.created_at, optouts_t.c.id)).mappings()
    return [dict(r) for r in rows]
