"""What a job will send: its next fire times, each with the body it would render (rotation pick
included), measured in SMS segments. Nothing is written anywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broadcaster import db
from broadcaster.models import ListMember, Recipient, RecipientList
from broadcaster.scheduling.catalog import Job
from broadcaster.scheduling.ledger import occurrence_variables
from broadcaster.scheduling.occurrences import upcoming
from broadcaster.segments import measure
from broadcaster.templating import TemplateStore, build_context

EXAMPLE_RECIPIENT = {"phone": "+8613800138000", "name": "张三", "attributes": {}}


def sample_recipient(database_url: str, job: Job) -> dict[str, Any]:
    """The first member of the job's first list, if the database has one; else an example.
    Only reads: a missing database file is not created."""
    try:
        url = db.normalise_url(database_url)
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if not path or path == ":memory:" or not Path(path).is_file():
                raise LookupError
        engine = db.make_engine(url)
        try:
            if "list_members" not in sa.inspect(engine).get_table_names():
                raise LookupError
            lists_t, members_t, people_t = RecipientList.__table__, ListMember.__table__, Recipient.__table__
            with db.reading(engine) as conn:
                row = conn.execute(
                    sa.select(people_t.c.phone, people_t.c.name, people_t.c.attributes)
                    .join(members_t, members_t.c.recipient_id == people_t.c.id)
                    .join(lists_t, lists_t.c.id == members_t.c.list_id)
                    .where(lists_t.c.name == job.lists[0])
                    .order_by(people_t.c.id)
                    .limit(1)
                ).first()
        finally:
            engine.dispose()
        if row is None:
            raise LookupError
        return {
            "phone": row.phone,
            "name": row.name,
            "attributes": dict(row.attributes or {}),
            "source": f"list {job.lists[0]}",
        }
    except (LookupError, sa.exc.SQLAlchemyError, OSError):
        return {**EXAMPLE_RECIPIENT, "source": "example"}


def preview(
    job: Job, store: TemplateStore, *, after: datetime, count: int, recipient: dict[str, Any]
) -> list[dict[str, Any]]:
    template = store.load(job.template)
    fires = []
    for at in upcoming(job, after, count):
        variables, pick = occurrence_variables(job, at)
        body = store.render(template, build_context(recipient=recipient, variables=variables, send_time=at))
        m = measure(body)
        fires.append(
            {
                "at": at.astimezone(UTC),
                "at_local": at,
                "slogan": pick.text if pick else None,
                "slogan_number": pick.number if pick else None,
                "occurrence_index": pick.index if pick else None,
                "body": body,
                "encoding": m.encoding,
                "segments": m.segments,
                "characters": m.characters,
            }
        )
    return fires
