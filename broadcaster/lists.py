"""Recipient lists: named sets of recipients that runs send to. Changes go to the action trail."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster import db
from broadcaster.models import ListMember, OptOut, Recipient, RecipientList
from broadcaster.trail import record_action

lists_t = RecipientList.__table__
members_t = ListMember.__table__
recipients_t = Recipient.__table__
optouts_t = OptOut.__table__

MAX_NAME = 200
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


class ListError(Exception):
    """A list operation that cannot be done; the message says why."""


def validate_list_name(name: str) -> str:
    if not name or name != name.strip():
        raise ListError(f"list name {name!r}: must be non-empty, without leading or trailing spaces")
    if len(name) > MAX_NAME or _BAD_NAME.search(name):
        raise ListError(f"list name {name!r}: at most {MAX_NAME} printable characters")
    return name


def find_list(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(lists_t).where(lists_t.c.name == name)).mappings().first()
    return dict(row) if row else None


def ensure_list(conn: Connection, name: str, *, at: datetime, actor: str) -> tuple[int, bool]:
    """The list's id, creating it if needed; ``created`` is True when this call created it."""
    validate_list_name(name)
    stmt = (
        db.insert_ignore(conn, lists_t)
        .values(name=name, created_at=at)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(lists_t.c.id)
    )
    list_id = conn.execute(stmt).scalar()
    created = list_id is not None
    if list_id is None:
        list_id = conn.execute(sa.select(lists_t.c.id).where(lists_t.c.name == name)).scalar_one()
    if created:
        record_action(conn, at=at, actor=actor, action="list.created", details={"list": name})
    return list_id, created


def _summary_select() -> sa.Select[Any]:
    return (
        sa.select(
            lists_t.c.id,
            lists_t.c.name,
            lists_t.c.description,
            lists_t.c.created_at,
            sa.func.count(members_t.c.recipient_id).label("size"),
            sa.func.count(optouts_t.c.id).label("opted_out"),
        )
        .select_from(lists_t)
        .outerjoin(members_t, members_t.c.list_id == lists_t.c.id)
        .outerjoin(recipients_t, recipients_t.c.id == members_t.c.recipient_id)
        .outerjoin(optouts_t, optouts_t.c.phone == recipients_t.c.phone)
        .group_by(lists_t.c.id, lists_t.c.name, lists_t.c.description, lists_t.c.created_at)
    )


def list_summaries(conn: Connection) -> list[dict[str, Any]]:
    """Every list with its size and how many of its members are opted out, by name."""
    rows = conn.execute(_summary_select().order_by(lists_t.c.name)).mappings()
    return [dict(r) for r in rows]


def list_summary(conn: Connection, name: str) -> dict[str, Any]:
    row = conn.execute(_summary_select().where(lists_t.c.name == name)).mappings().first()
    if row is None:
        raise ListError(f"no list named {name!r}")
    return dict(row)


def list_members(conn: Connection, list_id: int, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Members in the order they were added (then by recipient id), with their opt-out state."""
    stmt = (
        sa.select(
            recipients_t.c.id,
            recipients_t.c.phone,
            recipients_t.c.name,
            recipients_t.c.attributes,
            members_t.c.added_at,
            members_t.c.batch_id,
            (optouts_t.c.id.is_not(None)).label("opted_out"),
        )
        .select_from(members_t)
        .join(recipients_t, recipients_t.c.id == members_t.c.recipient_id)
        .outerjoin(optouts_t, optouts_t.c.phone == recipients_t.c.phone)
        .where(members_t.c.list_id == list_id)
        .order_by(members_t.c.added_at, recipients_t.c.id)
    )
    if limit:
        stmt = stmt.limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def remove_member(conn: Connection, name: str, phone: str, *, at: datetime, actor: str) -> bool:
    """Take a number off a list (the recipient stays, as do other lists); False if not a member."""
    found = find_list(conn, name)
    if found is None:
        raise ListError(f"no list named {name!r}")
    recipient_id = conn.execute(
        sa.select(recipients_t.c.id).where(recipients_t.c.phone == phone)
    ).scalar_one_or_none()
    if recipient_id is None:
        return False
    result = conn.execute(
        sa.delete(members_t).where(
            members_t.c.list_id == found["id"], members_t.c.recipient_id == recipient_id
        )
    )
    if result.rowcount == 0:
        return False
    record_action(
        conn, at=at, actor=actor, action="list.member_removed", details={"list": name, "phone": phone}
    )
    return True
