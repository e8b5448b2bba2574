"""One rate limit shared by every dispatcher that sends through the same database.

Why: the provider's limit belongs to the account and sender, not to a process. N workers each
pacing at the full rate would send N times too fast (and be answered with 429s). So a dispatcher
that has messages to send records itself in ``sending_workers``, refreshes its row about every
second, and paces at ``rate / (dispatchers sending now)``; when it runs out of work it leaves.

Never above the limit, even while the number changes: a dispatcher that joins while others send
waits :data:`JOIN_WAIT` before its first message, long enough for the others to see it (one refresh)
and for what they sent at their old, larger share to leave the limiter's one-second window. One that
leaves deletes its row; one that dies is forgotten after :data:`TTL`, and until then the others send
below the limit, never above. Joins are serialised (SQLite's write lock; an advisory lock on
PostgreSQL), so two dispatchers starting at once cannot both believe they are alone.

Times come from the injected clock: hosts sharing a PostgreSQL database need synchronised clocks
(NTP), as they already do for leases.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.models import SendingWorker
from broadcaster.ratelimit import WINDOW, RateLimiter

REFRESH_SECONDS = 1.0  # how often a sending dispatcher refreshes its row (its housekeeping interval)
TTL = timedelta(seconds=5)  # a row not refreshed for this long belongs to a dispatcher that died
JOIN_WAIT = 2 * REFRESH_SECONDS + WINDOW  # seconds a newcomer waits when others are sending
_JOIN_LOCK = 0x62636A6F  # pg_advisory_xact_lock key for joins ("bcjo")

workers_t = SendingWorker.__table__


class RateShare:
    """This dispatcher's part of ``limiter``'s rate; :meth:`join`, :meth:`refresh`, :meth:`leave`."""

    def __init__(
        self,
        engine: Engine,
        limiter: RateLimiter,
        clock: Clock,
        worker_id: str,
        *,
        ttl: timedelta = TTL,
        join_wait: float = JOIN_WAIT,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.clock = clock
        self.worker_id = worker_id
        self.rate = limiter.rate  # the whole rate, shared among the dispatchers sending now
        self.ttl = ttl
        self.join_wait = join_wait
        self.joined = False

    def join(self) -> float:
        """Record this dispatcher as sending; returns how long to wait before the first message."""
        with db.writing(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_JOIN_LOCK)))
            now = self.clock.now()
            live = self._others(conn, now) + 1
            self._upsert(conn, now, live, joined=True)
        self.joined = True
        self._apply(live)
        return self.join_wait if live > 1 else 0.0

    def refresh(self) -> int:
        """Keep this dispatcher's row fresh and take its current share; returns how many share."""
        with db.writing(self.engine) as conn:
            now = self.clock.now()
            live = self._others(conn, now) + 1
            self._upsert(conn, now, live, joined=False)
            # Rows of dispatchers that died long ago: nobody else would ever delete them.
            conn.execute(sa.delete(workers_t).where(workers_t.c.seen_at < now - 10 * self.ttl))
        self._apply(live)
        return live

    def leave(self) -> None:
        """This dispatcher has nothing to send: the others may take its part."""
        if not self.joined:
            return
        self.joined = False
        with contextlib.suppress(sa.exc.SQLAlchemyError), db.writing(self.engine) as conn:  # TTL covers it
            conn.execute(sa.delete(workers_t).where(workers_t.c.worker_id == self.worker_id))

    def _upsert(self, conn: Connection, now: datetime, live: int, *, joined: bool) -> None:
        share = self.rate / live
        stmt = db.insert_ignore(conn, workers_t).values(
            worker_id=self.worker_id, joined_at=now, seen_at=now, share=share
        )
        changes = {"seen_at": now, "share": share, **({"joined_at": now} if joined else {})}
        conn.execute(stmt.on_conflict_do_update(index_elements=["worker_id"], set_=changes))

    def _others(self, conn: Connection, now: datetime) -> int:
        """Other dispatchers sending now (refreshed within the TTL)."""
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(workers_t)
            .where(workers_t.c.seen_at >= now - self.ttl, workers_t.c.worker_id != self.worker_id)
        ).scalar_one()

    def _apply(self, live: int) -> None:
        self.limiter.set_rate(self.rate / live)


def sending_now(conn: Connection, now: datetime, *, ttl: timedelta = TTL) -> list[dict[str, Any]]:
    """The dispatchers recorded as sending, oldest first, each with ``live`` (refreshed within the
    TTL; the others died and are being forgotten) and its share of the rate limit."""
    rows = conn.execute(
        sa.select(workers_t).order_by(workers_t.c.joined_at, workers_t.c.worker_id)
    ).mappings()
    return [
        {
            "worker_id": r["worker_id"],
            "joined_at": r["joined_at"],
            "seen_at": r["seen_at"],
            "age_seconds": round((now - r["seen_at"]).total_seconds(), 3),
            "live": r["seen_at"] >= now - ttl,
            "share": round(r["share"], 3),
        }
        for r in rows
    ]
