"""The action trail records every action the audit issue lists, each with when, who, from which
host, what and its details: runs created, started (when dispatch begins), paused, resumed,
cancelled; opt-outs by an operator, a STOP reply and a provider's 21610; exports; the daemon's
start, takeover and stop, a ``daemon --once`` pass, and missed occurrences."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from twilio.request_validator import RequestValidator

from broadcaster import db
from broadcaster.clock import ManualClock, SystemClock
from broadcaster.db import open_database
from broadcaster.dispatch import Dispatcher
from broadcaster.optouts import add_optout, remove_optout
from broadcaster.providers.base import ProviderError
from broadcaster.scheduling.daemon import Daemon
from broadcaster.serving import serve_in_thread
from broadcaster.settings import Settings, load_settings
from broadcaster.trail import current_host
from broadcaster.webhooks import create_app
from tests.audit_integration_helpers import role_in_db, wait_for
from tests.dispatch_helpers import ScriptedProvider, make_run, phone, seed_list, template_store
from tests.scheduler_helpers import phones, seed_audience, write_campaign, write_templates

TOKEN = "trail-test-token"
PUBLIC = "https://hooks.example.org/bc"


def trail(cli, *args: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The trail as audit staff read it, oldest first, numbers shown."""
    result = cli("audit", "trail", "--json", "--unmask", "--limit", 1000, *args)
    assert result.code == 0, result.err
    return list(reversed(result.json()))


def assert_complete(action: dict[str, Any]) -> None:
    """When, who, from where, what, and details."""
    assert datetime.fromisoformat(action["at"]).tzinfo is not None
    assert action["actor"] and action["host"] and action["action"]
    assert isinstance(action["details"], dict) and action["details"]


def stop_reply(engine: sa.Engine, number: str) -> None:
    """A recipient answers STOP: Twilio calls the inbound webhook (signed), on a real server."""
    settings = Settings(twilio_auth_token=TOKEN, webhook_base_url=PUBLIC)  # type: ignore[arg-type]
    params = {
        "MessageSid": "SMstop1",
        "From": number,
        "To": "+15005550006",
        "Body": "STOP",
        "AccountSid": "AC1",
    }
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/inbound", params)
    with (
        serve_in_thread(create_app(settings, engine, SystemClock())) as base_url,
        httpx.Client(base_url=base_url) as client,
    ):
        response = client.post("/twilio/inbound", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200


@pytest.fixture
def setup(workdir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(workdir / "templates"))
    monkeypatch.setenv("BROADCASTER_RATE_LIMIT", "0")
    store = template_store(workdir / "templates")
    engine = open_database(db_url)
    seed_list(engine, "public", range(1, 5), SystemClock().now())
    yield engine, store
    engine.dispose()


def test_runs_opt_outs_and_exports_are_in_the_trail(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    engine, store = setup
    now = SystemClock().now()
    with db.writing(engine) as conn:  # what `broadcaster optout add` does
        add_optout(conn, phone(4), source="operator", at=now, actor="clerk", reason="asked by letter")
        remove_optout(conn, phone(4), source="operator", at=now, actor="clerk", reason="asked again")
        add_optout(conn, phone(4), source="operator", at=now, actor="clerk", reason="changed mind")

    sent = cli("send", "-t", "notice", "-l", "public", "--yes", "--json")
    assert sent.code == 0, sent.err
    sent_run = sent.json()["run"]
    paused_run = make_run(engine, store, SystemClock(), ["public"])
    assert cli("runs", "pause", paused_run).code == 0
    assert cli("runs", "resume", paused_run).code == 0
    cancelled_run = make_run(engine, store, SystemClock(), ["public"])
    assert cli("runs", "cancel", cancelled_run).code == 0
    refused_run = make_run(engine, store, SystemClock(), ["public"])
    stopped = ProviderError("Attempt to send to unsubscribed recipient", code="21610", opt_out=True)
    provider = ScriptedProvider(SystemClock(), {phone(2): [stopped]})
    Dispatcher(engine, provider, SystemClock()).run_until_idle(refused_run)
    stop_reply(engine, phone(1))
    out = workdir / "log.csv"
    assert cli("audit", "export", "--run", sent_run, "-o", out).code == 0

    actions = trail(cli)
    for action in actions:
        assert_complete(action)
    by_run: dict[int | None, list[str]] = {}
    for a in actions:
        by_run.setdefault(a["run_id"], []).append(a["action"])
    assert by_run[sent_run] == ["run.created", "run.started"]
    assert by_run[paused_run] == ["run.created", "run.paused", "run.resumed", "run.started"]
    assert by_run[cancelled_run] == ["run.created", "run.cancelled"]  # never dispatched
    assert by_run[refused_run] == ["run.created", "run.started"]

    (started,) = [a for a in actions if a["action"] == "run.started" and a["run_id"] == sent_run]
    (created,) = [a for a in actions if a["action"] == "run.created" and a["run_id"] == sent_run]
    assert started["actor"] == "dispatcher" and started["host"] == current_host()
    assert started["details"]["worker"].startswith(current_host() + ":")
    assert started["details"]["created_by"] == "tester"
    assert started["details"]["template_sha256"] == created["details"]["template_sha256"]
    assert created["at"] <= started["at"]
    paused, resumed = [a for a in actions if a["run_id"] == paused_run and a["action"] != "run.created"][:2]
    assert (paused["actor"], paused["details"]) == ("tester", {"from": "ready", "to": "paused"})
    assert (resumed["actor"], resumed["details"]) == ("tester", {"from": "paused", "to": "ready"})
    (cancel,) = [a for a in actions if a["action"] == "run.cancelled"]
    assert cancel["actor"] == "tester" and cancel["details"]["to"] == "cancelled"

    optouts = [
        (a["action"], a["actor"], a["details"]["source"], a["details"]["phone"])
        for a in actions
        if a["action"].startswith("optout.")
    ]
    assert optouts == [
        ("optout.added", "clerk", "operator", phone(4)),
        ("optout.removed", "clerk", "operator", phone(4)),
        ("optout.added", "clerk", "operator", phone(4)),
        ("optout.added", "provider:scripted", "provider", phone(2)),
        ("optout.added", phone(1), "reply", phone(1)),
    ]
    assert all(a["details"]["reason"] for a in actions if a["action"].startswith("optout."))

    (exported,) = [a for a in actions if a["action"] == "audit.exported"]
    assert exported["actor"] == "tester" and exported["details"]["rows"] == 4
    assert exported["details"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert exported["details"]["unmasked"] is False and exported["details"]["filters"] == {"run_id": sent_run}

    masked = cli("audit", "trail", "--json", "--action", "optout.").json()
    assert phone(1) not in str(masked) and len(masked) == 5  # numbers masked unless --unmask


DAILY = """
[campaign]
id = "c"
timezone = "Asia/Shanghai"

[[jobs]]
id = "daily"
trigger = { type = "cron", hour = 9, minute = 0 }
template = "hello"
lists = ["public"]
misfire_grace = "1h"
"""


def test_daemon_life_and_missed_occurrences_are_in_the_trail(
    workdir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = workdir / "schedules", write_templates(workdir / "templates")
    write_campaign(schedules, "c.toml", DAILY)
    monkeypatch.setenv("BROADCASTER_SCHEDULES_DIR", str(schedules))
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(templates))
    engine = db.open_database(os.environ["BROADCASTER_DATABASE_URL"])
    seed_audience(engine, {"public": phones(2)})

    # A catch-up pass after downtime: the occurrence of Aug 31 is a day late, beyond its grace.
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-30T12:00:00+08:00")
    assert cli("daemon", "--once").code == 0
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-09-01T08:00:00+08:00")
    assert cli("daemon", "--once").out.startswith("0 run(s), 1 missed")
    monkeypatch.delenv("BROADCASTER_CLOCK_START")

    # A daemon runs, a standby waits; the first stops and the standby takes over.
    clock = ManualClock(datetime(2011, 9, 1, 2, 0, tzinfo=UTC))
    settings = load_settings(
        daemon_heartbeat_seconds=0.05, daemon_standby_poll_seconds=0.05, daemon_dispatch="workers"
    )
    first, second = (Daemon(settings, engine, clock=clock, use_apscheduler=False) for _ in range(2))
    threads = [threading.Thread(target=d.run) for d in (first, second)]
    threads[0].start()
    assert wait_for(lambda: first.role == "active")
    threads[1].start()
    assert wait_for(lambda: role_in_db(engine, second.id) == "standby")
    first.request_stop()
    threads[0].join(10)
    assert wait_for(lambda: second.role == "active")
    second.request_stop()
    threads[1].join(10)
    assert not any(t.is_alive() for t in threads)
    engine.dispose()

    actions = [a for a in trail(cli) if a["action"].startswith(("daemon.", "schedule."))]
    for action in actions:
        assert_complete(action)
        assert action["actor"] == "scheduler" and action["host"] == current_host()
    assert [(a["action"], a["details"].get("once")) for a in actions] == [
        ("daemon.started", True),
        ("daemon.stopped", True),
        ("daemon.started", True),
        ("schedule.missed", None),
        ("daemon.stopped", True),
        ("daemon.started", None),
        ("daemon.started", None),
        ("daemon.stopped", None),
        ("daemon.takeover", None),
        ("daemon.stopped", None),
    ]
    missed = actions[3]
    assert missed["details"]["scheduled_for"] == "2011-08-31T09:00:00+08:00"
    assert "misfire grace" in missed["details"]["reason"] and missed["run_id"] is not None
    assert actions[4]["details"]["missed"] == [missed["run_id"]]
    assert [a["details"]["daemon"] for a in actions[5:]] == [
        first.id,
        second.id,
        first.id,
        second.id,
        second.id,
    ]
    assert actions[8]["details"]["previous"] == []  # it stopped cleanly: no active daemon was displaced
    assert (
        actions[7]["details"]["role_before"] == "active" and actions[9]["details"]["role_before"] == "active"
    )
