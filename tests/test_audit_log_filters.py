"""One message filter serves ``broadcaster log``, ``audit log``, exports and the console: the same
filters select the same messages; filters recorded in the trail are JSON (times as ISO 8601)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from console_helpers import PASSWORDS, console_app, console_world
from fastapi.testclient import TestClient

from broadcaster import db
from broadcaster.clock import SystemClock
from broadcaster.db import open_database
from broadcaster.dispatch import Dispatcher
from broadcaster.optouts import add_optout
from tests.dispatch_helpers import ScriptedProvider, make_run, permanent, phone, seed_list, template_store
from tests.scheduler_helpers import actions


@pytest.fixture
def two_runs(workdir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(workdir / "templates"))
    store = template_store(workdir / "templates")
    engine = open_database(db_url)
    now = SystemClock().now()
    seed_list(engine, "public", range(1, 7), now)
    with db.writing(engine) as conn:
        add_optout(conn, phone(3), source="operator", at=now, actor="clerk")
    runs = [make_run(engine, store, SystemClock(), ["public"]) for _ in range(2)]
    provider = ScriptedProvider(SystemClock(), {phone(5): [permanent()]})
    Dispatcher(engine, provider, SystemClock()).run_until_idle(runs[0])
    yield runs
    engine.dispose()


def log_ids(cli, *args: str) -> list[int]:  # type: ignore[no-untyped-def]
    result = cli("log", "--format", "jsonl", *args)
    assert result.code == 0, result.err
    return [json.loads(line)["id"] for line in result.out.splitlines()]


def audit_ids(cli, *args: str) -> list[int]:  # type: ignore[no-untyped-def]
    result = cli("audit", "log", "--json", "--limit", 1000, *args)
    assert result.code == 0, result.err
    return sorted(m["id"] for m in result.json())


def test_log_and_audit_log_select_the_same_messages(two_runs, cli) -> None:  # type: ignore[no-untyped-def]
    first, second = two_runs
    cases = [
        (("--run", first), ("--run", first)),
        (("--status", "suppressed"), ("--status", "suppressed")),
        (("--run", second, "--status", "queued"), ("--run", second, "--status", "queued")),
        (("--to", phone(5)), ("--phone", phone(5))),
        (("--to", "13800000005"), ("--phone", "13800000005")),  # a national spelling
        (("--to", "0005"), ("--phone", "0005")),  # the last digits
        (("--run", first, "--to", phone(5)), ("--run", first, "--phone", phone(5))),
    ]
    for log_args, audit_args in cases:
        found = log_ids(cli, *log_args)
        assert found and found == audit_ids(cli, *audit_args), (log_args, found)
    assert len(log_ids(cli, "--to", "13800000005")) == 2
    assert log_ids(cli, "--to", phone(5)) == log_ids(cli, "--to", "+86 138 0000 0005")

    bad = cli("log", "--to", "12")
    assert bad.code == 2 and "--to" in bad.err and bad.err.count("\n") == 1
    bad_time = cli("log", "--since", "yesterday")
    assert bad_time.code == 2 and "--since 'yesterday'" in bad_time.err
    # log filters on when a message entered the outbox, audit log on when it happened: both take
    # a date as its midnight in the configured zone
    assert log_ids(cli, "--since", "2000-01-01") == sorted(log_ids(cli))
    assert log_ids(cli, "--until", "2000-01-01") == []


def test_console_records_unmasked_date_filters_as_text(sqlite_url: str, tmp_path: Path) -> None:
    world = console_world(sqlite_url, tmp_path)
    client = TestClient(console_app(world))
    page = client.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    client.post(
        "/login",
        data={"username": "sam", "password": PASSWORDS["sam"], "csrf_token": token, "next": ""},
        follow_redirects=False,
    )
    response = client.get("/messages", params={"since": "2011-08-31", "until": "2011-08-31", "unmask": "1"})
    assert response.status_code == 200
    (unmasked,) = actions(world.engine, "audit.unmasked")
    assert unmasked["details"]["filters"] == {
        "since": "2011-08-31T00:00:00+08:00",
        "until": "2011-09-01T00:00:00+08:00",
    }
