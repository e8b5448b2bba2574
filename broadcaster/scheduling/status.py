"""``broadcaster status``: is a daemon alive, what fires next, how the last runs went, what was missed.

JSON keys (stable): ``now``; ``daemon`` {alive, id, host, pid, role, started_at, beat_at,
age_seconds, info}; ``standby`` [same keys]; ``next_fires`` [{job, campaign, at, at_local,
timezone, template, lists, slogan}]; ``last_runs`` [{id, job, scheduled_for, scheduled_local,
status, intended, counts, created_at, finished_at}]; ``missed`` [{id, job, scheduled_for,
scheduled_local, note, created_at}]; ``schedule_errors`` [{file, job, field, message}];
``sending`` [{worker_id, joined_at, seen_at, age_seconds, live, share}] (dispatchers sending now,
among which the rate limit is shared).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.models import RUN_MISSED, Run
from broadcaster.rate_share import sending_now
from broadcaster.runs import counts_by_status
from broadcaster.scheduling import leader
from broadcaster.scheduling.catalog import Catalog
from broadcaster.scheduling.ledger import SCHEDULED, occurrence_variables
from broadcaster.scheduling.occurrences import next_occurrence

runs_t = Run.__table__


def _daemon(row: dict[str, Any], now: datetime, interval: float) -> dict[str, Any]:
    return {
        "alive": leader.is_alive(row, now, interval),
        "id": row["daemon_id"],
        "host": row["host"],
        "pid": row["pid"],
        "role": row["role"],
        "started_at": row["started_at"],
        "beat_at": row["beat_at"],
        "age_seconds": round((now - row["beat_at"]).total_seconds(), 3),
        "info": row["info"],
    }


def next_fires(catalog: Catalog, now: datetime, limit: int = 20) -> list[dict[str, Any]]:
    out = []
    for job in catalog.active_jobs():
        at = next_occurrence(job, now)
        if at is None:
            continue
        variables, _pick = occurrence_variables(job, at)
        out.append(
            {
                "job": job.key,
                "campaign": job.campaign_id,
                "at": at.astimezone(UTC),
                "at_local": at,
                "timezone": job.timezone,
                "template": job.template,
                "lists": list(job.lists),
                "slogan": variables.get("slogan"),
            }
        )
    out.sort(key=lambda f: (f["at"], f["job"]))
    return out[:limit]


def _local(at: datetime | None, zone: str) -> datetime | None:
    return at.astimezone(ZoneInfo(zone)) if at is not None else None


def gather(
    engine: Engine, catalog: Catalog, now: datetime, *, heartbeat_seconds: float, limit: int = 10
) -> dict[str, Any]:
    with db.reading(engine) as conn:
        beats = [_daemon(h, now, heartbeat_seconds) for h in leader.heartbeats(conn)]
        runs = (
            conn.execute(
                sa.select(runs_t)
                .where(runs_t.c.kind == SCHEDULED, runs_t.c.status != RUN_MISSED)
                .order_by(runs_t.c.scheduled_for.desc(), runs_t.c.id.desc())
                .limit(limit)
            )
            .mappings()
            .all()
        )
        last_runs = [
            {
                "id": r["id"],
                "job": r["job_id"],
                "scheduled_for": r["scheduled_for"],
                "scheduled_local": _local(r["scheduled_for"], r["timezone"]),
                "status": r["status"],
                "intended": r["intended"],
                "counts": counts_by_status(conn, r["id"]),
                "created_at": r["created_at"],
                "finished_at": r["finished_at"],
            }
            for r in runs
        ]
        sending = sending_now(conn, now)
        missed_rows = (
            conn.execute(
                sa.select(runs_t)
                .where(runs_t.c.status == RUN_MISSED)
                .order_by(runs_t.c.scheduled_for.desc(), runs_t.c.id.desc())
                .limit(max(limit, 20))
            )
            .mappings()
            .all()
        )
    active = [b for b in beats if b["role"] == leader.ACTIVE and b["alive"]]
    others = [b for b in beats if b["role"] != leader.STANDBY]  # the latest active or stopped one
    daemon = active[0] if active else (others[0] if others else None)
    return {
        "now": now,
        "daemon": daemon
        or {
            "alive": False,
            "id": None,
            "host": None,
            "pid": None,
            "role": None,
            "started_at": None,
            "beat_at": None,
            "age_seconds": None,
            "info": {},
        },
        "standby": [b for b in beats if b["role"] == leader.STANDBY and b["alive"]],
        "next_fires": next_fires(catalog, now),
        "last_runs": last_runs,
        "missed": [
            {
                "id": r["id"],
                "job": r["job_id"],
                "scheduled_for": r["scheduled_for"],
                "scheduled_local": _local(r["scheduled_for"], r["timezone"]),
                "note": r["note"],
                "created_at": r["created_at"],
            }
            for r in missed_rows
        ],
        "schedule_errors": [i.as_dict() for i in catalog.issues],
        "sending": sending,
    }
