"""The dispatcher: claims due messages from the outbox, sends them, records every outcome.

First version: one thread, claims in batches with a lease, commits ``sending`` before calling the
provider and the outcome right after. (The delivery engine work extends this with concurrency,
rate limits, retries with backoff, reconciliation of uncertain attempts and several workers.)
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.events import record_events
from broadcaster.models import (
    FAILED,
    PENDING_STATES,
    QUEUED,
    RUN_COMPLETED,
    RUN_READY,
    RUN_SENDING,
    SENDING,
    SENT,
    SUPPRESSED,
    UNKNOWN,
    Message,
    OptOut,
    Run,
)
from broadcaster.providers.base import Outbound, Provider, ProviderError

messages_t = Message.__table__
runs_t = Run.__table__
optouts_t = OptOut.__table__


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    suppressed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        clock: Clock,
        *,
        worker_id: str | None = None,
        batch: int = 100,
        lease: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
    ) -> None:
        self.engine = engine
        self.provider = provider
        self.clock = clock
        self.worker_id = worker_id or default_worker_id()
        self.batch = batch
        self.lease = lease
        self.max_attempts = max_attempts

    def claim(self, run_id: int | None = None) -> list[dict]:
        now = self.clock.now()
        with db.writing(self.engine) as conn:
            active_runs = sa.select(runs_t.c.id).where(runs_t.c.status.in_([RUN_READY, RUN_SENDING]))
            cond = [
                messages_t.c.status == QUEUED,
                messages_t.c.next_attempt_at <= now,
                messages_t.c.run_id.in_(active_runs),
            ]
            if run_id is not None:
                cond.append(messages_t.c.run_id == run_id)
            ids = (
                conn.execute(
                    sa.select(messages_t.c.id)
                    .where(*cond)
                    .order_by(messages_t.c.priority.desc(), messages_t.c.id)
                    .limit(self.batch)
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            conn.execute(
                sa.update(messages_t)
                .where(messages_t.c.id.in_(ids), messages_t.c.status == QUEUED)
                .values(
                    status=SENDING,
                    lease_owner=self.worker_id,
                    lease_expires_at=now + self.lease,
                    attempt_started_at=now,
                    attempts=messages_t.c.attempts + 1,
                    updated_at=now,
                )
            )
            rows = (
                conn.execute(
                    sa.select(messages_t, optouts_t.c.id.label("optout_id"))
                    .outerjoin(optouts_t, optouts_t.c.phone == messages_t.c.phone)
                    .where(
                        messages_t.c.id.in_(ids),
                        messages_t.c.lease_owner == self.worker_id,
                        messages_t.c.status == SENDING,
                    )
                )
                .mappings()
                .all()
            )
            record_events(
                conn,
                (
                    {
                        "message_id": r["id"],
                        "run_id": r["run_id"],
                        "at": now,
                        "from_status": QUEUED,
                        "to_status": SENDING,
                        "source": self.worker_id,
                        "detail": {"attempt": r["attempts"]},
                    }
                    for r in rows
                ),
            )
            conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.id.in_({r["run_id"] for r in rows}), runs_t.c.status == RUN_READY)
                .values(status=RUN_SENDING, started_at=now)
            )
        return [dict(r) for r in rows]

    def _finish(self, msg: dict, to_status: str, detail: dict, **values: object) -> None:
        now = self.clock.now()
        with db.writing(self.engine) as conn:
            result = conn.execute(
                sa.update(messages_t)
                .where(
                    messages_t.c.id == msg["id"],
                    messages_t.c.status == SENDING,
                    messages_t.c.lease_owner == self.worker_id,
                )
                .values(status=to_status, updated_at=now, lease_owner=None, lease_expires_at=None, **values)
            )
            if result.rowcount:
                record_events(
                    conn,
                    [
                        {
                            "message_id": msg["id"],
                            "run_id": msg["run_id"],
                            "at": now,
                            "from_status": SENDING,
                            "to_status": to_status,
                            "source": self.worker_id,
                            "detail": detail,
                        }
                    ],
                )

    def send_one(self, msg: dict, stats: DispatchStats) -> None:
        now = self.clock.now()
        if msg["optout_id"] is not None:
            stats.suppressed += 1
            self._finish(msg, SUPPRESSED, {"reason": "opted out"}, error_text="opted out", final_at=now)
            return
        try:
            accepted = self.provider.send(
                Outbound(message_id=msg["id"], to=msg["phone"], body=msg["body"], sender=msg["sender"])
            )
        except ProviderError as exc:
            detail = {"code": exc.code, "text": exc.text, "http_status": exc.http_status}
            if exc.accepted_maybe:
                stats.unknown += 1
                self._finish(msg, UNKNOWN, detail, error_code=exc.code, error_text=exc.text)
            elif exc.transient and msg["attempts"] < self.max_attempts:
                stats.retried += 1
                self._finish(
                    msg,
                    QUEUED,
                    detail,
                    error_code=exc.code,
                    error_text=exc.text,
                    next_attempt_at=now + timedelta(seconds=2 ** msg["attempts"]),
                )
            else:
                stats.failed += 1
                self._finish(msg, FAILED, detail, error_code=exc.code, error_text=exc.text, final_at=now)
            return
        stats.sent += 1
        self._finish(
            msg,
            SENT,
            {"provider_id": accepted.provider_id},
            provider_id=accepted.provider_id,
            sent_at=self.clock.now(),
            error_code=None,
            error_text=None,
        )

    def run_until_idle(self, run_id: int | None = None) -> DispatchStats:
        """Send everything due now (of one run, or of all active runs), then return."""
        stats = DispatchStats()
        while batch := self.claim(run_id):
            stats.claimed += len(batch)
            for msg in batch:
                self.send_one(msg, stats)
        self.complete_finished_runs()
        return stats

    def run_forever(self, stop: threading.Event, poll: float = 1.0) -> DispatchStats:
        total = DispatchStats()
        while not stop.is_set():
            stats = self.run_until_idle()
            for key, value in stats.as_dict().items():
                setattr(total, key, getattr(total, key) + value)
            if not stats.claimed:
                stop.wait(poll)
        return total

    def complete_finished_runs(self) -> None:
        now = self.clock.now()
        with db.writing(self.engine) as conn:
            pending = sa.select(messages_t.c.id).where(
                messages_t.c.run_id == runs_t.c.id, messages_t.c.status.in_(PENDING_STATES)
            )
            conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.status.in_([RUN_READY, RUN_SENDING]), ~pending.exists())
                .values(status=RUN_COMPLETED, finished_at=now)
            )
