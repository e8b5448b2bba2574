"""The action trail as written by the rest of the system: what a run records when it is created, and
databases that had actions before the chain existed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from audit_helpers import seed_people, write_template

from broadcaster import db
from broadcaster.audit.chain import verify
from broadcaster.clock import ManualClock
from broadcaster.models import Action
from broadcaster.runs import create_run
from broadcaster.trail import record_action


def test_run_created_records_the_template_and_schedules_in_force(engine: sa.Engine, tmp_path: Path) -> None:
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    seed_people(engine, clock.now())
    store = write_template(tmp_path / "t")
    ref = create_run(
        engine,
        template="notice",
        list_names=["public"],
        variables={},
        clock=clock,
        actor="scheduler",
        timezone="Asia/Shanghai",
        store=store,
        job_id="quality-month",
        scheduled_for=clock.now(),
        schedules_sha256={"schedules/quality-month.toml": "ab" * 32},
    )
    t = Action.__table__
    with db.reading(engine) as conn:
        details = conn.execute(
            sa.select(t.c.details).where(t.c.action == "run.created", t.c.run_id == ref.id)
        ).scalar_one()
    assert details["template_sha256"] == store.load("notice").sha256
    assert details["schedules_sha256"] == {"schedules/quality-month.toml": "ab" * 32}
    assert verify(engine).ok


def test_actions_written_before_the_chain_are_chained_by_the_upgrade(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    cfg = db.migrations_config(engine)
    command.upgrade(cfg, "0001")
    at = datetime(2011, 8, 30, tzinfo=UTC)
    with db.writing(engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO actions (at, actor, host, action, details) "
                "VALUES (:at, 'old', 'h', 'import', '{}')"
            ),
            [{"at": at.replace(tzinfo=None)}, {"at": at.replace(tzinfo=None)}],
        )
    db.upgrade(engine)
    with db.writing(engine) as conn:
        new_id = record_action(conn, at=at, actor="new", action="after.upgrade")
    report = verify(engine)
    assert report.ok, report.as_dict()
    assert report.chains["actions"].entries == 3 and report.chains["actions"].head["id"] == new_id
    engine.dispose()
