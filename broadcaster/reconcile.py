"""Uncertain attempts: leases whose holder is gone, and ``unknown`` messages settled by asking the provider.

A ``sending`` row whose lease expired (or whose worker process is gone) may or may not have reached
the provider, so it becomes ``unknown``, never ``queued``. An ``unknown`` message is looked up at
the provider by recipient, from shortly before its attempt started: found with the same body (and a
provider id no other message already has) it is ``sent``; not found it goes back to ``queued`` (or
``cancelled`` if its run was cancelled meanwhile, ``failed`` when out of attempts). A provider that
cannot look messages up leaves them to an operator (``broadcaster runs resolve``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.claims import holder_is_gone
from broadcaster.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUN_CANCELLED,
    SENDING,
    SENT,
    UNKNOWN,
    Message,
    Run,
)
from broadcaster.providers.base import Found, Provider, ProviderError
from broadcaster.transitions import Change, apply_changes, sweep

log = logging.getLogger(__name__)
messages_t = Message.__table__
runs_t = Run.__table__

SOURCE = "reconcile"
#: The error code of a message given up on: out of attempts, and the provider does not have it.
NOT_FOUND = "not-found"
#: How far before the attempt's start a lookup reaches back (clock differences between hosts).
LOOKUP_MARGIN = timedelta(seconds=60)
PAGE = 500
#: Lookups at the provider running at once while reconciling.
LOOKUP_THREADS = 8


def recover_stale_leases(engine: Engine, *, now: datetime, worker_id: str, retry_after: timedelta) -> int:
    """Turn ``sending`` rows whose lease expired or whose holder is gone into ``unknown``."""
    with db.reading(engine) as conn:
        owners = conn.execute(
            sa.select(messages_t.c.lease_owner).where(messages_t.c.status == SENDING).distinct()
        ).scalars()
        gone = [o for o in owners if o and holder_is_gone(o, worker_id)]
    stale = sa.or_(messages_t.c.lease_expires_at < now, messages_t.c.lease_owner.in_(gone))

    def to_unknown(r: sa.Row) -> Change:  # type: ignore[type-arg]
        reason = "worker gone" if r.lease_owner in gone else "lease expired"
        return Change(
            r.id,
            r.run_id,
            UNKNOWN,
            {"next_attempt_at": now + retry_after, "lease_expires_at": None},
            {"reason": reason, "worker": r.lease_owner, "attempt": r.attempts},
            attempt=r.attempts,
        )

    return sweep(
        engine,
        [messages_t.c.status == SENDING, stale],
        to_unknown,
        from_states=[SENDING],
        at=now,
        source=SOURCE,
        page=PAGE,
    )


def _match(found: list[Found], body: str, taken: set[str]) -> Found | None:
    for candidate in found:
        if candidate.body == body and candidate.provider_id not in taken:
            return candidate
    return None


def _known_provider_ids(conn: Connection, found: list[Found], message_id: int) -> set[str]:
    ids = [f.provider_id for f in found]
    if not ids:
        return set()
    return set(
        conn.execute(
            sa.select(messages_t.c.provider_id).where(
                messages_t.c.provider_id.in_(ids), messages_t.c.id != message_id
            )
        ).scalars()
    )


def reconcile_unknown(
    engine: Engine,
    provider: Provider,
    *,
    now: datetime,
    max_attempts: int,
    retry_after: timedelta,
    limit: int = PAGE,
    lookup_threads: int = LOOKUP_THREADS,
) -> dict[str, int]:
    """Settle ``unknown`` messages that are due for a look; returns counts by outcome.

    The lookups run in parallel (``lookup_threads``): after a crash a worker may find a whole
    claimed batch uncertain, and one lookup at a time would take minutes at a real API's latency.
    The answers are then applied in one transaction, one message after the other, so a provider id
    matched to one message is never matched to a second."""
    outcome = {SENT: 0, QUEUED: 0, CANCELLED: 0, FAILED: 0, "deferred": 0}
    if not provider.can_lookup:
        return outcome
    with db.reading(engine) as conn:
        rows = conn.execute(
            sa.select(
                messages_t.c.id,
                messages_t.c.run_id,
                messages_t.c.phone,
                messages_t.c.body,
                messages_t.c.attempts,
                messages_t.c.attempt_started_at,
                runs_t.c.status.label("run_status"),
            )
            .join(runs_t, runs_t.c.id == messages_t.c.run_id)
            .where(messages_t.c.status == UNKNOWN, messages_t.c.next_attempt_at <= now)
            .order_by(messages_t.c.next_attempt_at, messages_t.c.id)
            .limit(limit)
        ).all()
    if not rows:
        return outcome

    def since(r: sa.Row) -> datetime:  # type: ignore[type-arg]
        return (r.attempt_started_at or now) - LOOKUP_MARGIN

    def look(r: sa.Row) -> list[Found] | ProviderError:  # type: ignore[type-arg]
        try:
            return provider.lookup(r.phone, since(r))
        except ProviderError as exc:
            return exc

    if len(rows) == 1 or lookup_threads <= 1:
        answers = [look(r) for r in rows]
    else:
        with ThreadPoolExecutor(min(lookup_threads, len(rows)), thread_name_prefix="lookup") as pool:
            answers = list(pool.map(look, rows))
    with db.writing(engine) as conn:
        for r, found in zip(rows, answers, strict=True):
            if isinstance(found, ProviderError):
                log.warning("lookup for message %s failed (%s); trying again later", r.id, found.text)
                conn.execute(
                    sa.update(messages_t)
                    .where(messages_t.c.id == r.id, messages_t.c.status == UNKNOWN)
                    .values(next_attempt_at=now + retry_after)
                )
                outcome["deferred"] += 1
                continue
            change = _settle(conn, r, found, now=now, since=since(r), max_attempts=max_attempts)
            if apply_changes(conn, [change], from_states=[UNKNOWN], at=now, source=SOURCE):
                outcome[change.to_status] += 1
    return outcome


def _settle(
    conn: Connection,
    r: sa.Row,  # type: ignore[type-arg]
    found: list[Found],
    *,
    now: datetime,
    since: datetime,
    max_attempts: int,
) -> Change:
    """What one lookup's answer means for an ``unknown`` message."""
    match = _match(found, r.body, _known_provider_ids(conn, found, r.id))
    detail: dict[str, object] = {"looked_up_since": since.isoformat(), "found": len(found)}
    if match is not None:
        return Change(
            r.id,
            r.run_id,
            SENT,
            {
                "provider_id": match.provider_id,
                "sent_at": match.created_at or now,
                "error_code": None,
                "error_text": None,
            },
            {**detail, "provider_id": match.provider_id},
            attempt=r.attempts,
        )
    if r.run_status == RUN_CANCELLED:
        return Change(r.id, r.run_id, CANCELLED, {"final_at": now}, {**detail, "reason": "run cancelled"})
    if r.attempts >= max_attempts:
        text = f"not at the provider after {r.attempts} attempts"
        values = {"final_at": now, "error_code": NOT_FOUND, "error_text": text}
        return Change(r.id, r.run_id, FAILED, values, {**detail, "code": NOT_FOUND, "text": text})
    return Change(r.id, r.run_id, QUEUED, {"next_attempt_at": now}, {**detail, "reason": "not found"})
