"""Tamper evidence: the action trail and the message events are hash-chained; `audit verify` names
the first entry changed, removed or inserted, by table and id. The tampering is done the way an
intruder would: straight on the SQLite file (sqlite3) or on the PostgreSQL rows (plain SQL)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_helpers import START, add_actions, seed_run

from broadcaster import db
from broadcaster.audit.chain import entry_hash, seal_events, verify
from broadcaster.events import record_events
from broadcaster.models import Action, Message
from broadcaster.trail import record_action

# The core tamperings run on both databases; their variations on SQLite only, to keep the suite fast.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@contextmanager
def tamper(engine: sa.Engine) -> Iterator[object]:
    """A raw connection outside the application: sqlite3 on the file, or psycopg on the database."""
    if engine.dialect.name == "sqlite":
        raw = sqlite3.connect(engine.url.database)
        try:
            yield raw
            raw.commit()
        finally:
            raw.close()
    else:
        import psycopg

        url = engine.url
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as raw:
            yield raw


def run_sql(engine: sa.Engine, sql: str, *params: object) -> None:
    with tamper(engine) as raw:
        if engine.dialect.name != "sqlite":
            sql = sql.replace("?", "%s")
        raw.execute(sql, params)  # type: ignore[attr-defined]


def problem(engine: sa.Engine, table: str) -> dict:
    report = verify(engine).as_dict()
    assert not report["ok"]
    return report["chains"][table]["problem"]


@pytest.fixture
def seeded(engine: sa.Engine, tmp_path: Path):  # type: ignore[no-untyped-def]
    seeded = seed_run(engine, tmp_path)
    add_actions(engine, 5, START)
    return seeded


def test_untouched_record_verifies_and_reports_both_heads(engine: sa.Engine, seeded) -> None:
    report = verify(engine)
    assert report.ok, report.as_dict()
    assert report.sealed_now == 17
    actions, events = report.chains["actions"], report.chains["message_events"]
    # optout.added, run.created, run.started, 5 steps
    assert actions.entries == 8 and events.entries == 17
    assert events.head["seq"] == 17 and len(events.head["hash"]) == 64
    assert verify(engine).sealed_now == 0  # nothing new to seal


def test_changed_action_is_named(engine: sa.Engine, seeded) -> None:
    run_sql(engine, "UPDATE actions SET actor = 'someone-else' WHERE id = 4")
    p = problem(engine, "actions")
    assert (p["kind"], p["id"]) == ("changed", 4)


@SQLITE_ONLY
def test_changed_action_details_json_is_named(engine: sa.Engine, seeded) -> None:
    run_sql(engine, "UPDATE actions SET details = ? WHERE id = 5", json.dumps({"i": 99}))
    p = problem(engine, "actions")
    assert (p["kind"], p["id"]) == ("changed", 5)


def test_removed_action_is_named_by_its_position_and_neighbours(engine: sa.Engine, seeded) -> None:
    run_sql(engine, "DELETE FROM actions WHERE id = 3")
    p = problem(engine, "actions")
    assert p["kind"] == "removed" and p["seq"] == 3
    assert "between id 2 and id 4" in p["message"]


def test_inserted_action_outside_the_trail_is_named(engine: sa.Engine, seeded) -> None:
    run_sql(
        engine,
        "INSERT INTO actions (id, at, actor, host, action, details) "
        "VALUES (100, ?, 'ghost', 'h', 'run.created', '{}')",
        "2011-08-31 02:00:00",
    )
    p = problem(engine, "actions")
    assert (p["kind"], p["id"]) == ("inserted", 100)


@SQLITE_ONLY
def test_inserted_action_with_a_forged_link_is_named(engine: sa.Engine, seeded) -> None:
    """An intruder who makes room (shifts the positions after 3) and forges a self-consistent entry."""
    with db.reading(engine) as conn:
        third = conn.execute(sa.text("SELECT hash FROM actions WHERE chain_seq = 3")).scalar_one()
    forged = {
        "id": 100,
        "chain_seq": 4,
        "at": START,
        "actor": "ghost",
        "host": "h",
        "action": "optout.removed",
        "run_id": None,
        "details": {},
    }
    digest = entry_hash("actions", forged, third)
    run_sql(engine, "UPDATE actions SET chain_seq = chain_seq + 1000 WHERE chain_seq >= 4")
    run_sql(engine, "UPDATE actions SET chain_seq = chain_seq - 999 WHERE chain_seq >= 1000")
    run_sql(
        engine,
        "INSERT INTO actions (id, at, actor, host, action, details, chain_seq, prev_hash, hash) "
        "VALUES (100, ?, 'ghost', 'h', 'optout.removed', '{}', 4, ?, ?)",
        "2011-08-31 01:00:00" if engine.dialect.name == "sqlite" else START,
        third,
        digest,
    )
    p = problem(engine, "actions")
    assert (p["kind"], p["id"]) == ("inserted", 100)


@SQLITE_ONLY
def test_changed_and_rehashed_entry_is_named(engine: sa.Engine, seeded) -> None:
    """Recomputing the changed entry's own hash does not help: the next entry still links to the old one."""
    actions_t = Action.__table__
    with db.reading(engine) as conn:
        row = conn.execute(sa.select(actions_t).where(actions_t.c.id == 4)).mappings().one()
    fields = dict(row) | {"actor": "someone-else"}
    run_sql(
        engine,
        "UPDATE actions SET actor = 'someone-else', hash = ? WHERE id = 4",
        entry_hash("actions", fields, row["prev_hash"]),
    )
    p = problem(engine, "actions")
    assert (p["kind"], p["id"]) == ("changed", 4)
    assert "re-hashed" in p["message"]


def test_changed_event_is_named(engine: sa.Engine, seeded) -> None:
    verify(engine)  # seals
    run_sql(engine, "UPDATE message_events SET to_status = 'delivered' WHERE id = 9")
    p = problem(engine, "message_events")
    assert (p["kind"], p["id"]) == ("changed", 9)


def test_removed_event_is_named(engine: sa.Engine, seeded) -> None:
    verify(engine)
    run_sql(engine, "DELETE FROM message_events WHERE id = 12")
    p = problem(engine, "message_events")
    assert p["kind"] == "removed" and p["seq"] == 12 and "between id 11 and id 13" in p["message"]


@SQLITE_ONLY
def test_event_inserted_below_the_sealed_head_is_named_and_never_sealed(engine: sa.Engine, seeded) -> None:
    verify(engine)
    run_sql(engine, "DELETE FROM message_events WHERE id = 12")
    run_sql(
        engine,
        "INSERT INTO message_events (id, message_id, run_id, at, from_status, to_status, source, detail) "
        "VALUES (12, 1, 1, ?, 'sending', 'sent', 'ghost', '{}')",
        "2011-08-31 01:02:00" if engine.dialect.name == "sqlite" else START,
    )
    for _ in range(2):  # the sealer leaves it out: it stays named
        report = verify(engine).as_dict()
        assert not report["ok"]
    p = report["chains"]["message_events"]["problem"]
    assert p["kind"] == "removed" and p["seq"] == 12
    run_sql(engine, "DELETE FROM message_events WHERE id = 12")
    run_sql(
        engine,
        "INSERT INTO message_events (id, message_id, run_id, at, from_status, to_status, source, detail, "
        "chain_seq) VALUES (12, 1, 1, ?, 'sending', 'sent', 'ghost', '{}', NULL)",
        "2011-08-31 01:02:00" if engine.dialect.name == "sqlite" else START,
    )
    p = problem(engine, "message_events")
    assert p["kind"] == "removed"  # the first break in chain order comes first


def test_unsealed_event_slipped_in_below_the_head_is_named(engine: sa.Engine, seeded) -> None:
    verify(engine)
    run_sql(
        engine,
        "INSERT INTO message_events (id, message_id, run_id, at, from_status, to_status, source, detail) "
        "VALUES (0, 1, 1, ?, NULL, 'queued', 'ghost', '{}')",
        "2011-08-31 01:00:00" if engine.dialect.name == "sqlite" else START,
    )
    p = problem(engine, "message_events")
    assert (p["kind"], p["id"]) == ("inserted", 0)


@SQLITE_ONLY
def test_truncated_tail_is_caught_only_with_an_anchor(engine: sa.Engine, seeded) -> None:
    anchor = verify(engine).as_dict()["chains"]
    run_sql(engine, "DELETE FROM actions WHERE chain_seq = 8")
    assert verify(engine).ok  # a removed tail leaves a shorter, valid chain …
    report = verify(engine, anchor=json.loads(json.dumps(anchor, default=str)))
    assert not report.ok  # … which the anchor kept elsewhere exposes
    assert report.problems[0].table == "actions" and report.problems[0].kind == "removed"


def test_concurrent_writers_and_sealer_keep_one_valid_chain(engine: sa.Engine, seeded) -> None:
    """Threads append events and actions while another seals: the chains stay whole and in order."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        try:
            for i in range(15):
                with db.writing(engine) as conn:
                    record_events(
                        conn,
                        [
                            {
                                "message_id": 1,
                                "run_id": 1,
                                "at": START,
                                "to_status": "sent",
                                "detail": {"k": k, "i": i},
                            }
                        ]
                        * 3,
                    )
                    if i % 5 == 0:
                        record_action(
                            conn, at=START, actor=f"w{k}", action="test.concurrent", details={"i": i}
                        )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def sealer() -> None:
        try:
            while not stop.is_set():
                seal_events(engine, batch=7)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    seal_thread = threading.Thread(target=sealer)
    seal_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    seal_thread.join()
    assert not errors, errors
    report = verify(engine)
    assert report.ok, report.as_dict()
    assert report.chains["message_events"].entries == 17 + 4 * 15 * 3
    assert report.chains["actions"].entries == 8 + 4 * 3


@SQLITE_ONLY
def test_cli_verify_json_exits_1_and_names_the_entry(workdir: Path, cli, tmp_path: Path) -> None:
    engine = db.open_database(__import__("os").environ["BROADCASTER_DATABASE_URL"])
    seed_run(engine, tmp_path)
    good = cli("audit", "verify", "--json")
    assert good.code == 0, good.err
    heads = good.json()
    assert heads["ok"] and heads["chains"]["message_events"]["head"]["seq"] == 17
    (tmp_path / "anchor.json").write_text(good.out, encoding="utf-8")
    assert cli("audit", "verify", "--anchor", str(tmp_path / "anchor.json")).code == 0
    with db.reading(engine) as conn:
        target = conn.execute(sa.select(sa.func.min(Message.__table__.c.id))).scalar_one()
    run_sql(
        engine, 'UPDATE message_events SET detail = \'{"reason": "edited"}\' WHERE message_id = ?', target
    )
    bad = cli("audit", "verify", "--json")
    assert bad.code == 1 and "the record was altered" in bad.err
    p = bad.json()["problems"][0]
    assert p["table"] == "message_events" and p["kind"] == "changed" and p["id"] == 1
    text = cli("audit", "verify")
    assert text.code == 1 and "BROKEN: message_events changed: message_events id 1" in text.out
    engine.dispose()
