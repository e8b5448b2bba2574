"""Retention: ``audit prune --before DATE`` archives, then deletes, runs (with their messages and
events) and actions older than DATE, and records that it did.

What goes:
* finished runs (completed, cancelled, missed) created before DATE whose every event is before
  DATE, with their messages and events;
* actions before DATE.

Both chains are cut only at the front, never in the middle: everything up to a chain position goes,
so ``verify`` can check the rest from where the ``audit.pruned`` action says it now starts. A run
that is kept (not finished, or with newer events) therefore also keeps every event and action from
its first one on. The head (newest entry) of each chain is always kept.

The archive (gzip'd JSON Lines: a header, then one line per deleted row) is written and synced
before anything is deleted, in the same transaction that deletes (on PostgreSQL both chain locks are
held, so writers wait until the prune commits).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.audit.chain import (
    ACTIONS,
    EVENTS,
    LOCK_ACTIONS,
    LOCK_EVENTS,
    PRUNED_ACTION,
    _pg_lock,
    chain_start,
    seal_events,
)
from broadcaster.clock import Clock
from broadcaster.models import RUN_CANCELLED, RUN_COMPLETED, RUN_MISSED, Action, Message, MessageEvent, Run
from broadcaster.trail import record_action

runs_t = Run.__table__
messages_t = Message.__table__
events_t = MessageEvent.__table__
actions_t = Action.__table__
FINISHED = (RUN_COMPLETED, RUN_CANCELLED, RUN_MISSED)


class PruneError(ValueError):
    pass


@dataclass
class PruneResult:
    before: datetime
    archive: Path | None
    archive_sha256: str | None
    counts: dict[str, int] = field(default_factory=dict)
    kept_runs: list[int] = field(default_factory=list)
    action_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before.isoformat(),
            "archive": str(self.archive) if self.archive else None,
            "archive_sha256": self.archive_sha256,
            "counts": self.counts,
            "kept_runs": self.kept_runs,
            "action_id": self.action_id,
        }


def _first_seq_at_or_after(conn: Connection, table: sa.Table, before: datetime) -> int | None:
    return conn.execute(
        sa.select(sa.func.min(table.c.chain_seq)).where(table.c.chain_seq.is_not(None), table.c.at >= before)
    ).scalar_one_or_none()


def _head_seq(conn: Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.chain_seq), 0))).scalar_one()


def _plan(conn: Connection, before: datetime) -> tuple[int, int, list[int], list[int]]:
    """Cut positions for both chains and the runs that go, such that no kept run loses history."""
    candidates = set(
        conn.execute(
            sa.select(runs_t.c.id).where(
                runs_t.c.status.in_(FINISHED),
                runs_t.c.created_at < before,
                ~sa.exists().where(events_t.c.run_id == runs_t.c.id, events_t.c.at >= before),
                ~sa.exists().where(events_t.c.run_id == runs_t.c.id, events_t.c.chain_seq.is_(None)),
            )
        ).scalars()
    )
    span = {
        run_id: (lo, hi)
        for run_id, lo, hi in conn.execute(
            sa.select(
                events_t.c.run_id, sa.func.min(events_t.c.chain_seq), sa.func.max(events_t.c.chain_seq)
            ).group_by(events_t.c.run_id)
        ).all()
    }
    heads = {EVENTS: _head_seq(conn, events_t), ACTIONS: _head_seq(conn, actions_t)}
    limit_e = (
        min(x for x in (_first_seq_at_or_after(conn, events_t, before), heads[EVENTS]) if x is not None) - 1
    )
    kept_first = [lo for run_id, (lo, _hi) in span.items() if run_id not in candidates and lo is not None]
    cut_e = min([limit_e, *(lo - 1 for lo in kept_first)])
    while True:  # a candidate reaching past the cut is kept, which may pull the cut further back
        late = {r for r in candidates if r in span and span[r][1] is not None and span[r][1] > cut_e}
        if not late:
            break
        candidates -= late
        cut_e = min([cut_e, *(span[r][0] - 1 for r in late)])
    pruned = sorted(candidates)
    kept_ids = select_kept_runs(conn, pruned, before)
    limit_a = (
        min(x for x in (_first_seq_at_or_after(conn, actions_t, before), heads[ACTIONS]) if x is not None) - 1
    )
    first_kept_action = conn.execute(
        sa.select(sa.func.min(actions_t.c.chain_seq)).where(actions_t.c.run_id.in_(kept_ids))
    ).scalar_one_or_none()
    cut_a = min(limit_a, first_kept_action - 1) if first_kept_action is not None else limit_a
    return max(cut_e, 0), max(cut_a, 0), pruned, kept_ids


def select_kept_runs(conn: Connection, pruned: list[int], before: datetime) -> list[int]:
    """Runs created before the cut-off that stay (unfinished, or with newer or unsealed events)."""
    return list(
        conn.execute(
            sa.select(runs_t.c.id)
            .where(runs_t.c.created_at < before, runs_t.c.id.not_in(pruned))
            .order_by(runs_t.c.id)
        ).scalars()
    )


def _row(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _dump(fh: Any, table: str, rows: Any) -> int:
    n = 0
    for row in rows.mappings():
        fh.write(
            json.dumps({"table": table, "row": {k: _row(v) for k, v in row.items()}}, ensure_ascii=False)
        )
        fh.write("\n")
        n += 1
    return n


def _boundary(conn: Connection, table: sa.Table, cut: int, current: tuple[int, str]) -> dict[str, Any]:
    if cut < current[0]:
        return {"first_seq": current[0], "prev_hash": current[1]}
    last_hash = conn.execute(sa.select(table.c.hash).where(table.c.chain_seq == cut)).scalar_one()
    return {"first_seq": cut + 1, "prev_hash": last_hash}


def prune(
    engine: Engine,
    *,
    before: datetime,
    archive_dir: Path,
    retention_days: int,
    actor: str,
    clock: Clock,
    host: str | None = None,
) -> PruneResult:
    now = clock.now()
    if before.tzinfo is None:
        raise PruneError("--before must be timezone-aware")
    oldest_allowed = now - timedelta(days=retention_days)
    if before > oldest_allowed:
        raise PruneError(
            f"--before {before.date()} would delete records younger than the retention period "
            f"({retention_days} days, BROADCASTER_AUDIT_RETENTION_DAYS): "
            f"use {oldest_allowed.date()} or earlier"
        )
    seal_events(engine)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    archive = Path(archive_dir) / f"audit-archive-before-{before.date()}-{stamp}.jsonl.gz"
    with db.writing(engine) as conn:
        # The order writers use (events, then an action), so that a prune cannot deadlock with them.
        _pg_lock(conn, LOCK_EVENTS)
        _pg_lock(conn, LOCK_ACTIONS)
        start = chain_start(conn)
        cut_e, cut_a, pruned, kept = _plan(conn, before)
        result = PruneResult(before, None, None, kept_runs=kept)
        ev_cond = [events_t.c.chain_seq <= cut_e]
        ac_cond = [actions_t.c.chain_seq <= cut_a]
        chains = {
            ACTIONS: _boundary(conn, actions_t, cut_a, start[ACTIONS]),
            EVENTS: _boundary(conn, events_t, cut_e, start[EVENTS]),
        }
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        counts: dict[str, int] = {}
        try:
            with gzip.open(partial, "wt", encoding="utf-8") as fh:
                header = {
                    "kind": "broadcaster-audit-archive",
                    "version": 1,
                    "before": before.isoformat(),
                    "created_at": now.isoformat(),
                    "created_by": actor,
                    "chains_after_prune": chains,
                }
                fh.write(json.dumps(header, ensure_ascii=False) + "\n")
                counts["runs"] = _dump(
                    fh, "runs", conn.execute(sa.select(runs_t).where(runs_t.c.id.in_(pruned)))
                )
                counts["messages"] = _dump(
                    fh, "messages", conn.execute(sa.select(messages_t).where(messages_t.c.run_id.in_(pruned)))
                )
                counts["message_events"] = _dump(
                    fh,
                    "message_events",
                    conn.execute(sa.select(events_t).where(*ev_cond).order_by(events_t.c.chain_seq)),
                )
                counts["actions"] = _dump(
                    fh,
                    "actions",
                    conn.execute(sa.select(actions_t).where(*ac_cond).order_by(actions_t.c.chain_seq)),
                )
            with open(partial, "rb") as raw:
                os.fsync(raw.fileno())
                digest = hashlib.sha256(raw.read()).hexdigest()
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
        result.archive, result.archive_sha256, result.counts = archive, digest, counts
        result.action_id = record_action(
            conn,
            at=now,
            actor=actor,
            host=host,
            action=PRUNED_ACTION,
            details={
                "before": before.isoformat(),
                "archive": archive.name,
                "archive_sha256": digest,
                "counts": counts,
                "kept_runs": kept[:100],
                "chains": chains,
            },
        )
        conn.execute(sa.delete(events_t).where(*ev_cond))
        conn.execute(sa.delete(messages_t).where(messages_t.c.run_id.in_(pruned)))
        conn.execute(sa.delete(runs_t).where(runs_t.c.id.in_(pruned)))
        conn.execute(sa.delete(actions_t).where(*ac_cond))
    return result
