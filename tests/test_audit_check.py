"""`audit check RUN`: every intended recipient has one message whose state explains itself, and the
run's counts add up; anything else is named and the command exits 1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_helpers import cancel_run, materialised_run, seed_run

from broadcaster import db, run_control
from broadcaster.audit.completeness import check_run
from broadcaster.models import Message
from broadcaster.runs import create_run, materialise

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
messages_t = Message.__table__


def _engine() -> sa.Engine:
    return db.open_database(os.environ["BROADCASTER_DATABASE_URL"])


def test_finished_run_adds_up_and_explains_every_message(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seeded = seed_run(engine, tmp_path)
    result = cli("audit", "check", str(seeded.run_id), "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["ok"] and data["issues"] == [] and data["pending_total"] == 0
    assert data["intended"] == data["messages"] == data["counts_total"] == 6
    assert data["counts"] == {"delivered": 3, "failed": 2, "suppressed": 1}
    text = cli("audit", "check", str(seeded.run_id))
    assert text.code == 0 and "intended 6, messages 6" in text.out and "OK" in text.out
    engine.dispose()


def test_run_in_progress_lists_its_pending_messages(engine: sa.Engine, tmp_path: Path) -> None:
    seeded = seed_run(engine, tmp_path)
    second = materialised_run(engine, seeded)
    with db.reading(engine) as conn:
        result = check_run(conn, second)
    assert result.ok
    assert result.pending_total == 4  # 6 minus one suppressed and one that cannot be rendered
    assert {p["status"] for p in result.pending} == {"queued"}
    assert all(p["next_attempt_at"] is not None for p in result.pending)


def test_cancelled_messages_need_the_run_cancelled_action(engine: sa.Engine, tmp_path: Path) -> None:
    seeded = seed_run(engine, tmp_path)
    second = materialised_run(engine, seeded)
    third = materialised_run(engine, seeded)
    cancel_run(engine, second, seeded.clock.now())
    cancel_run(engine, third, seeded.clock.now(), record=False)
    with db.reading(engine) as conn:
        ok, bad = check_run(conn, second), check_run(conn, third)
    assert ok.ok and ok.counts["cancelled"] == 4
    assert not bad.ok and bad.issues_total == 4
    assert bad.issues[0]["problem"] == "cancelled but the run has no run.cancelled action"


@SQLITE_ONLY
def test_changes_behind_the_application_are_named(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seeded = seed_run(engine, tmp_path)
    with db.writing(engine) as conn:
        ids = conn.execute(sa.select(messages_t.c.id).order_by(messages_t.c.id)).scalars().all()
        failed = conn.execute(
            sa.select(messages_t.c.id).where(messages_t.c.error_code == "21211")
        ).scalar_one()
        conn.execute(sa.update(messages_t).where(messages_t.c.id == failed).values(error_code=None))
        delivered = (
            conn.execute(sa.select(messages_t.c.id).where(messages_t.c.status == "delivered"))
            .scalars()
            .first()
        )
        conn.execute(sa.update(messages_t).where(messages_t.c.id == delivered).values(status="sent"))
    result = cli("audit", "check", str(seeded.run_id), "--json")
    assert result.code == 1 and "not complete" in result.err
    issues = {i["message_id"]: i["problem"] for i in result.json()["issues"]}
    assert issues == {
        failed: "failed without an error code and text",
        delivered: "state sent but its last event leads to delivered",
    }
    with db.writing(engine) as conn:  # a message lost: the counts no longer reach the intended number
        conn.exec_driver_sql(f"DELETE FROM message_events WHERE message_id = {ids[0]}")
        conn.exec_driver_sql(f"DELETE FROM messages WHERE id = {ids[0]}")
    data = cli("audit", "check", str(seeded.run_id), "--json").json()
    assert not data["ok"] and data["messages"] == 5 and data["intended"] == 6
    assert "intended 6 but 5 messages" in [i["problem"] for i in data["issues"]]
    assert cli("audit", "check", "999").code == 1
    engine.dispose()


def test_a_run_cancelled_before_materialisation_gets_no_messages_and_adds_up(
    engine: sa.Engine, tmp_path: Path
) -> None:
    seeded = seed_run(engine, tmp_path)
    ref = create_run(
        engine,
        template="notice",
        list_names=["public"],
        variables={},
        clock=seeded.clock,
        actor="operator",
        timezone="Asia/Shanghai",
        store=seeded.store,
    )
    run_control.cancel_run(engine, ref.id, clock=seeded.clock, actor="operator")
    # A materialiser that was already on its way (a daemon pass, a resumed send) writes nothing.
    assert materialise(engine, ref.id, store=seeded.store, clock=seeded.clock) == 0
    with db.reading(engine) as conn:
        result = check_run(conn, ref.id)
    assert result.ok, result.issues
    assert (result.run_status, result.intended, result.messages) == ("cancelled", 0, 0)
