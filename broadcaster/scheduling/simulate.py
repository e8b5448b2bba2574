"""``schedule simulate``: replay a period of the calendar in fast time, sending nothing.

The operator's database is only read (lists, their members, opt-outs are copied); runs, messages
and the log provider's file live in a scratch folder. The same runner as the daemon's plans each
occurrence with a manual clock set to its fire time, and the same dispatcher sends it to the log
provider, so what the simulation shows is what the daemon would do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.models import RUN_MISSED, ListMember, Message, OptOut, Recipient, RecipientList, Run
from broadcaster.providers.log import LogProvider
from broadcaster.runs import counts_by_status
from broadcaster.scheduling.catalog import Catalog
from broadcaster.scheduling.dispatching import make_dispatcher
from broadcaster.scheduling.ledger import advance_watermark
from broadcaster.scheduling.runner import ScheduleRunner
from broadcaster.settings import Settings
from broadcaster.templating import TemplateStore

PAGE = 5000
_TICK = timedelta(microseconds=1)


@dataclass
class Simulation:
    start: datetime
    until: datetime
    database: Path
    log_file: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    audience: dict[str, int] = field(default_factory=dict)  # list name -> members copied

    def totals(self) -> dict[str, int]:
        out = {"runs": len(self.runs), "missed": len(self.missed), "messages": 0, "segments": 0}
        for run in self.runs:
            out["messages"] += run["intended"]
            out["segments"] += run["segments_total"]
            for status, n in run["counts"].items():
                out[status] = out.get(status, 0) + n
        return out


def _has_tables(engine: Engine) -> bool:
    return {"lists", "recipients", "list_members", "optouts"} <= set(sa.inspect(engine).get_table_names())


def copy_audience(source: Engine | None, target: Engine, list_names: set[str]) -> dict[str, int]:
    """Copy the named lists, their members and all opt-outs (reading only, in pages)."""
    copied: dict[str, int] = {}
    if source is None or not _has_tables(source):
        return copied
    lists_t, members_t = RecipientList.__table__, ListMember.__table__
    recipients_t, optouts_t = Recipient.__table__, OptOut.__table__
    with db.reading(source) as src:
        lists = src.execute(sa.select(lists_t).where(lists_t.c.name.in_(sorted(list_names)))).mappings().all()
        optouts = src.execute(sa.select(optouts_t)).mappings().all()
    list_ids = [row["id"] for row in lists]
    with db.writing(target) as dst:
        if lists:
            dst.execute(sa.insert(lists_t), [dict(r) for r in lists])
        if optouts:
            dst.execute(sa.insert(optouts_t), [dict(r) for r in optouts])
    member_ids = sa.select(members_t.c.recipient_id).where(members_t.c.list_id.in_(list_ids))
    last = 0
    while list_ids:
        with db.reading(source) as src:
            people = (
                src.execute(
                    sa.select(recipients_t)
                    .where(recipients_t.c.id.in_(member_ids), recipients_t.c.id > last)
                    .order_by(recipients_t.c.id)
                    .limit(PAGE)
                )
                .mappings()
                .all()
            )
            if not people:
                break
            ids = [p["id"] for p in people]
            members = (
                src.execute(
                    sa.select(members_t.c.list_id, members_t.c.recipient_id, members_t.c.added_at).where(
                        members_t.c.recipient_id.in_(ids), members_t.c.list_id.in_(list_ids)
                    )
                )
                .mappings()
                .all()
            )
        last = ids[-1]
        with db.writing(target) as dst:
            dst.execute(sa.insert(recipients_t), [dict(p) for p in people])
            dst.execute(sa.insert(members_t), [dict(m) for m in members])
    with db.reading(target) as dst:
        for row in lists:
            copied[row["name"]] = dst.execute(
                sa.select(sa.func.count()).select_from(members_t).where(members_t.c.list_id == row["id"])
            ).scalar_one()
    return copied


def simulate(
    catalog: Catalog,
    store: TemplateStore,
    *,
    source: Engine | None,
    start: datetime,
    until: datetime,
    folder: Path,
    settings: Settings | None = None,
) -> Simulation:
    """Every occurrence in [start, until] of every enabled job, in order, sent to a log file."""
    folder.mkdir(parents=True, exist_ok=True)
    sim = Simulation(start, until, folder / "simulation.db", folder / "sent.jsonl")
    engine = db.open_database(f"sqlite:///{sim.database}")
    try:
        jobs = catalog.active_jobs()
        sim.audience = copy_audience(source, engine, {name for job in jobs for name in job.lists})
        clock = ManualClock(start)
        quiet = logging.getLogger("broadcaster.scheduler.simulation")
        quiet.propagate = False
        quiet.addHandler(logging.NullHandler())
        runner = ScheduleRunner(
            engine, clock, store, daemon_id="simulation", actor="simulation", logger=quiet
        )
        runner.set_catalog(catalog)
        with db.writing(engine) as conn:  # as if a daemon had been running since `start`
            for job in jobs:
                advance_watermark(conn, job.key, start - _TICK, now=start, by="simulation")
        provider = LogProvider(sim.log_file, clock)
        dispatcher = (
            make_dispatcher(engine, provider, clock, settings, worker_id="simulation")
            if settings is not None
            else Dispatcher(engine, provider, clock, worker_id="simulation")
        )
        errors: dict[str, None] = {}
        while True:
            report = runner.tick()
            for message in report.errors:
                errors[message] = None
            dispatcher.run_until_idle()
            wake = report.next_wake
            if wake is None or wake > until:
                break
            clock.set(max(wake, clock.now()))
        sim.errors = list(errors)
        _collect(engine, sim)
    finally:
        engine.dispose()
    return sim


def _collect(engine: Engine, sim: Simulation) -> None:
    runs_t, messages_t = Run.__table__, Message.__table__
    with db.reading(engine) as conn:
        rows = conn.execute(sa.select(runs_t).order_by(runs_t.c.scheduled_for, runs_t.c.id)).mappings().all()
        for run in rows:
            local = run["scheduled_for"].astimezone(ZoneInfo(run["timezone"]))
            base = {
                "at": run["scheduled_for"],
                "at_local": local,
                "job": run["job_id"],
                "campaign": run["campaign_id"],
                "run_id": run["id"],
                "status": run["status"],
                "template": run["template"],
                "lists": list(run["list_names"]),
                "slogan": run["variables"].get("slogan"),
                "slogan_number": run["variables"].get("slogan_number"),
            }
            if run["status"] == RUN_MISSED:
                sim.missed.append({**base, "reason": run["note"]})
                continue
            first = conn.execute(
                sa.select(messages_t.c.body, messages_t.c.encoding, messages_t.c.segments)
                .where(messages_t.c.run_id == run["id"], messages_t.c.body != "")
                .order_by(messages_t.c.id)
                .limit(1)
            ).first()
            distinct, segments = conn.execute(
                sa.select(
                    sa.func.count(sa.distinct(messages_t.c.body)),
                    sa.func.coalesce(sa.func.sum(messages_t.c.segments), 0),
                ).where(messages_t.c.run_id == run["id"])
            ).one()
            sim.runs.append(
                {
                    **base,
                    "intended": run["intended"],
                    "counts": counts_by_status(conn, run["id"]),
                    "body": first.body if first else None,
                    "encoding": first.encoding if first else None,
                    "segments": first.segments if first else None,
                    "distinct_bodies": distinct,
                    "segments_total": int(segments),
                }
            )
