"""The run ledger: create a run (once per occurrence) and materialise its outbox in batches.

Materialisation is idempotent and resumable: messages are keyed UNIQUE(run, recipient) and written
with ON CONFLICT DO NOTHING, recipients are paged by id, so a crash half-way is finished by running
it again and never writes a second message for anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.events import record_events
from broadcaster.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUN_CANCELLED,
    RUN_PENDING,
    RUN_READY,
    SUPPRESSED,
    ListMember,
    Message,
    OptOut,
    Recipient,
    RecipientList,
    Run,
)
from broadcaster.segments import measure
from broadcaster.templating import Template, TemplateError, TemplateStore, build_context
from broadcaster.trail import record_action

BATCH = 1000

runs_t = Run.__table__
messages_t = Message.__table__
recipients_t = Recipient.__table__
members_t = ListMember.__table__
lists_t = RecipientList.__table__
optouts_t = OptOut.__table__


class RunError(Exception):
    """A run that cannot be created or materialised; the message says why."""


@dataclass(frozen=True)
class RunRef:
    id: int
    created: bool  # False when the occurrence already had a run


def list_ids(conn: Connection, names: list[str]) -> list[int]:
    rows = conn.execute(sa.select(lists_t.c.id, lists_t.c.name).where(lists_t.c.name.in_(names))).all()
    found = {name: id_ for id_, name in rows}
    missing = [n for n in names if n not in found]
    if missing:
        raise RunError(f"unknown list(s): {', '.join(missing)}")
    return [found[n] for n in names]


def create_run(
    engine: Engine,
    *,
    template: str,
    list_names: list[str],
    variables: dict[str, Any],
    clock: Clock,
    actor: str,
    timezone: str,
    store: TemplateStore,
    job_id: str | None = None,
    campaign_id: str | None = None,
    scheduled_for: datetime | None = None,
    sender: str | None = None,
    priority: int = 0,
    quiet_hours: str | None = None,
    kind: str = "manual",
    extra_details: dict[str, Any] | None = None,
    schedules_sha256: dict[str, str] | None = None,
) -> RunRef:
    """Insert the run, or find the existing one for (job_id, scheduled_for).

    The ``run.created`` action records what was in force: the template's sha256 and, for scheduled
    runs, ``schedules_sha256`` ({schedule file or job: sha256 of its content})."""
    if not list_names:
        raise RunError("a run needs at least one recipient list")
    if (job_id is None) != (scheduled_for is None):
        raise RunError("job_id and scheduled_for go together")
    ZoneInfo(timezone)
    loaded = store.load(template)  # fails early, before anything is written
    now = clock.now()
    with db.writing(engine) as conn:
        list_ids(conn, list_names)
        values = {
            "kind": kind,
            "campaign_id": campaign_id,
            "job_id": job_id,
            "scheduled_for": scheduled_for,
            "template": template,
            "template_sha256": loaded.sha256,
            "template_source": loaded.source,
            "variables": variables,
            "list_names": list_names,
            "sender": sender,
            "timezone": timezone,
            "priority": priority,
            "quiet_hours": quiet_hours,
            "status": RUN_PENDING,
            "intended": 0,
            "created_by": actor,
            "created_at": now,
        }
        if job_id is not None:
            stmt = (
                db.insert_ignore(conn, runs_t)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["job_id", "scheduled_for"])
                .returning(runs_t.c.id)
            )
            # RETURNING, not rowcount: SQLAlchemy 2.1 with psycopg reports rowcount -1 for INSERT
            created = conn.execute(stmt).first() is not None
            run_id = conn.execute(
                sa.select(runs_t.c.id).where(
                    runs_t.c.job_id == job_id, runs_t.c.scheduled_for == scheduled_for
                )
            ).scalar_one()
        else:
            run_id = conn.execute(sa.insert(runs_t).values(**values).returning(runs_t.c.id)).scalar_one()
            created = True
        if created:
            record_action(
                conn,
                at=now,
                actor=actor,
                action="run.created",
                run_id=run_id,
                details={
                    "template": template,
                    "template_sha256": loaded.sha256,
                    "lists": list_names,
                    "variables": variables,
                    "job_id": job_id,
                    "scheduled_for": scheduled_for.isoformat() if scheduled_for else None,
                    **({"schedules_sha256": schedules_sha256} if schedules_sha256 else {}),
                    **(extra_details or {}),
                },
            )
    return RunRef(run_id, created)


def materialise(
    engine: Engine,
    run_id: int,
    *,
    store: TemplateStore,
    clock: Clock,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write one message per distinct recipient of the run's lists; returns the intended count.

    Opted-out numbers get a ``suppressed`` message (so the log shows why they got nothing); a body
    that cannot be rendered for one recipient fails that message with the reason, not the run.
    A run cancelled meanwhile gets no further pages; its ``intended`` is what was written before.
    ``progress(recipients done)`` is called after each page is committed; an exception it raises
    stops here, the run stays ``pending`` and materialising it again finishes it.
    """
    with db.reading(engine) as conn:
        run = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).mappings().one_or_none()
        if run is None:
            raise RunError(f"run {run_id} not found")
        ids = list_ids(conn, list(run["list_names"]))
    template = run_template(run, store)
    zone = ZoneInfo(run["timezone"])
    send_time = (run["scheduled_for"] or run["created_at"]).astimezone(zone)
    last_id, done = 0, 0
    rendered: dict[str, Any] = {}  # bodies repeat a lot: measure each distinct body once
    while True:
        with db.writing(engine) as conn:
            # Locked (PostgreSQL) so that a cancel commits either before this page or after it.
            status = conn.execute(
                sa.select(runs_t.c.status).where(runs_t.c.id == run_id).with_for_update()
            ).scalar_one()
            page = _recipient_page(conn, ids, last_id) if status != RUN_CANCELLED else []
            if not page:
                break
            last_id = page[-1].id
            now = clock.now()
            rows = _message_rows(page, run, template, store, send_time, now, rendered)
            stmt = db.insert_ignore(conn, messages_t).on_conflict_do_nothing(
                index_elements=["run_id", "recipient_id"]
            )
            conn.execute(stmt, rows)
            written = conn.execute(
                sa.select(messages_t.c.id, messages_t.c.status, messages_t.c.error_text).where(
                    messages_t.c.run_id == run_id,
                    messages_t.c.recipient_id.in_([r["recipient_id"] for r in rows]),
                    messages_t.c.created_at == now,
                )
            ).all()
            record_events(
                conn,
                (
                    {
                        "message_id": w.id,
                        "run_id": run_id,
                        "at": now,
                        "to_status": w.status,
                        "source": "materialise",
                        "detail": {"reason": w.error_text} if w.error_text else {},
                    }
                    for w in written
                ),
            )
        done += len(page)
        if progress is not None:
            progress(done)
    with db.writing(engine) as conn:
        intended = conn.execute(
            sa.select(sa.func.count()).select_from(messages_t).where(messages_t.c.run_id == run_id)
        ).scalar_one()
        conn.execute(
            sa.update(runs_t)
            .where(runs_t.c.id == run_id, runs_t.c.status.in_([RUN_PENDING, RUN_CANCELLED]))
            .values(
                status=sa.case((runs_t.c.status == RUN_PENDING, RUN_READY), else_=runs_t.c.status),
                intended=intended,
            )
        )
    return intended


def run_template(run: Mapping[str, Any], store: TemplateStore) -> Template:
    """The template as it was when the run was created, whatever the file says now.

    Runs created before the snapshot was kept (``template_source`` NULL) use the file, and only
    while its hash still matches the recorded one: never a text other than the recorded one.
    """
    if run["template_source"] is not None:
        return store.compile(run["template"], run["template_source"], run["template_sha256"])
    current = store.load(run["template"])
    if run["template_sha256"] is not None and current.sha256 != run["template_sha256"]:
        raise RunError(
            f"run {run['id']}: template {run['template']!r} has changed since the run was created "
            f"(sha256 {run['template_sha256'][:12]}…, now {current.sha256[:12]}…): restore that version "
            "of the file, or cancel the run and start a new one"
        )
    return current


def _recipient_page(conn: Connection, list_ids_: list[int], after_id: int) -> list[Any]:
    """The next page of distinct recipients of the lists (a recipient in two lists comes once).

    Driven by each list's (list_id, recipient_id) key from ``after_id`` on, at most a page per list
    (the next page overall is among those), so a page costs the same at the end of a list of a
    million members as at its start. (Filtering recipients by "id IN (members of the lists)" made
    every page read the whole membership: 920,000 messages took 180 s of page queries.)
    """
    m = members_t
    arms = [
        sa.select(m.c.recipient_id.label("rid"))
        .where(m.c.list_id == list_id, m.c.recipient_id > after_id)
        .order_by(m.c.recipient_id)
        .limit(BATCH)
        .subquery()
        for list_id in sorted(set(list_ids_))
    ]
    ids = arms[0] if len(arms) == 1 else sa.union(*(sa.select(a.c.rid) for a in arms)).subquery()
    return list(
        conn.execute(
            sa.select(
                recipients_t.c.id,
                recipients_t.c.phone,
                recipients_t.c.name,
                recipients_t.c.attributes,
                optouts_t.c.id.label("optout_id"),
            )
            .join_from(ids, recipients_t, recipients_t.c.id == ids.c.rid)
            .outerjoin(optouts_t, optouts_t.c.phone == recipients_t.c.phone)
            .order_by(recipients_t.c.id)
            .limit(BATCH)
        ).all()
    )


def _message_rows(
    page: list[Any],
    run: Mapping[str, Any],
    template: Template,
    store: TemplateStore,
    send_time: datetime,
    now: datetime,
    rendered: dict[str, Any],
) -> list[dict[str, Any]]:
    """Outbox rows for a page of recipients: rendered, measured, suppressed if opted out."""
    rows = []
    for r in page:
        status, error_code, error_text = QUEUED, None, None
        try:
            body = store.render(
                template,
                build_context(
                    recipient={"phone": r.phone, "name": r.name, "attributes": r.attributes},
                    variables=dict(run["variables"]),
                    send_time=send_time,
                ),
            )
        except TemplateError as exc:
            body, status, error_code, error_text = "", FAILED, "template", str(exc)
        if body not in rendered:
            if len(rendered) > 10_000:
                rendered.clear()
            rendered[body] = measure(body)
        m = rendered[body]
        if r.optout_id is not None and status == QUEUED:
            status, error_text = SUPPRESSED, "opted out"
        rows.append(
            {
                "run_id": run["id"],
                "recipient_id": r.id,
                "phone": r.phone,
                "body": body,
                "encoding": m.encoding,
                "segments": m.segments,
                "characters": m.characters,
                "status": status,
                "priority": run["priority"],
                "sender": run["sender"],
                "attempts": 0,
                "next_attempt_at": now if status == QUEUED else None,
                "error_code": error_code,
                "error_text": error_text,
                "created_at": now,
                "updated_at": now,
                "final_at": None if status == QUEUED else now,
            }
        )
    return rows


@dataclass(frozen=True)
class OutboxSummary:
    """What a run will send (or sent): messages by status, and the segments of those still to go."""

    intended: int
    counts: dict[str, int]
    segments: int  # segments of the messages not suppressed or failed before sending

    def units(self, unit: str) -> int:
        """Messages or segments to send, whichever the rate limit counts."""
        return self.segments if unit == "segments" else self.counts.get(QUEUED, 0)


def preview(
    engine: Engine,
    *,
    template: str,
    list_names: list[str],
    variables: dict[str, Any],
    timezone: str,
    store: TemplateStore,
    clock: Clock,
) -> OutboxSummary:
    """Render and count what a run would write, writing nothing (``send --dry-run``)."""
    loaded = store.load(template)
    now = clock.now()
    run = {"id": None, "variables": variables, "priority": 0, "sender": None}
    counts: dict[str, int] = {}
    segments = 0
    rendered: dict[str, Any] = {}
    last_id = 0
    with db.reading(engine) as conn:
        ids = list_ids(conn, list_names)
        while page := _recipient_page(conn, ids, last_id):
            last_id = page[-1].id
            for row in _message_rows(
                page, run, loaded, store, now.astimezone(ZoneInfo(timezone)), now, rendered
            ):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
                segments += row["segments"] if row["status"] == QUEUED else 0
    return OutboxSummary(sum(counts.values()), counts, segments)


def outbox_summary(conn: Connection, run_id: int) -> OutboxSummary:
    """The same summary, from a run's outbox."""
    rows = conn.execute(
        sa.select(
            messages_t.c.status, sa.func.count(), sa.func.coalesce(sa.func.sum(messages_t.c.segments), 0)
        )
        .where(messages_t.c.run_id == run_id)
        .group_by(messages_t.c.status)
    ).all()
    counts = {status: n for status, n, _ in rows}
    segments = sum(int(seg) for status, _, seg in rows if status not in (SUPPRESSED, FAILED, CANCELLED))
    return OutboxSummary(sum(counts.values()), counts, segments)


def get_run(conn: Connection, run_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).mappings().one_or_none()
    if row is None:
        raise RunError(f"run {run_id} not found")
    return dict(row)


def counts_by_status(conn: Connection, run_id: int) -> dict[str, int]:
    rows = conn.execute(
        sa.select(messages_t.c.status, sa.func.count())
        .where(messages_t.c.run_id == run_id)
        .group_by(messages_t.c.status)
    ).all()
    return {status: n for status, n in rows}
