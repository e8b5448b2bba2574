"""The daemon and the audit trail: it seals message events by itself (periodically, by its clock, and
on stop), and the runs it creates record the schedule files in force (their content hashes)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.audit.chain import verify
from broadcaster.clock import ManualClock
from broadcaster.runs import create_run, materialise
from broadcaster.scheduling.daemon import Daemon
from broadcaster.settings import load_settings
from broadcaster.templating import TemplateStore
from tests.audit_integration_helpers import unsealed, wait_for
from tests.scheduler_helpers import actions, phones, runs, seed_audience, write_campaign, write_templates

CAMPAIGN = """
[campaign]
id = "qm"
timezone = "Asia/Shanghai"
start_date = 2011-08-01
signature = "【质量月】"

[[jobs]]
id = "slogan"
trigger = { type = "cron", hour = 9, minute = 0 }
template = "slogan"
lists = ["public"]
pool = { file = "slogans/general.txt" }
"""


def write_events(engine: sa.Engine, store: TemplateStore, clock: ManualClock) -> int:
    """A manual run materialised: one unsealed event per recipient."""
    ref = create_run(
        engine,
        template="hello",
        list_names=["public"],
        variables={},
        clock=clock,
        actor="operator",
        timezone="Asia/Shanghai",
        store=store,
    )
    return materialise(engine, ref.id, store=store, clock=clock)


def test_daemon_seals_events_every_interval_of_its_clock_and_on_stop(db_url: str, tmp_path: Path) -> None:
    engine = db.open_database(db_url)
    templates = write_templates(tmp_path / "templates")
    (tmp_path / "schedules").mkdir()
    store = TemplateStore(templates)
    seed_audience(engine, {"public": phones(3)})
    clock = ManualClock(datetime(2011, 8, 30, 1, 0, tzinfo=UTC))
    assert write_events(engine, store, clock) == 3
    settings = load_settings(
        schedules_dir=tmp_path / "schedules",
        templates_dir=templates,
        var_dir=tmp_path / "var",
        daemon_heartbeat_seconds=0.05,
        daemon_dispatch="workers",
        audit_seal_interval_seconds=60,
    )
    daemon = Daemon(settings, engine, clock=clock, use_apscheduler=False)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert wait_for(lambda: daemon.role == "active")
        assert wait_for(lambda: unsealed(engine) == 0)  # sealed on becoming active
        write_events(engine, store, clock)
        time.sleep(0.5)  # many loop turns, but no time passed on the daemon's clock
        assert unsealed(engine) == 3
        clock.advance(timedelta(seconds=59))
        time.sleep(0.3)
        assert unsealed(engine) == 3
        clock.advance(timedelta(seconds=2))
        assert wait_for(lambda: unsealed(engine) == 0)
        write_events(engine, store, clock)
        assert unsealed(engine) == 3
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
    assert unsealed(engine) == 0  # the last seal on stop
    report = verify(engine, seal=False)
    assert report.ok and report.chains["message_events"].entries == 9
    engine.dispose()


def test_a_standby_daemon_does_not_seal(sqlite_url: str, tmp_path: Path) -> None:
    engine = db.open_database(sqlite_url)
    templates = write_templates(tmp_path / "templates")
    (tmp_path / "schedules").mkdir()
    seed_audience(engine, {"public": phones(2)})
    clock = ManualClock(datetime(2011, 8, 30, 1, 0, tzinfo=UTC))
    settings = load_settings(
        schedules_dir=tmp_path / "schedules",
        templates_dir=templates,
        var_dir=tmp_path / "var",
        daemon_heartbeat_seconds=0.05,
        daemon_standby_poll_seconds=0.05,
        daemon_dispatch="workers",
        audit_seal_interval_seconds=1,
    )
    active = Daemon(settings, engine, clock=clock, use_apscheduler=False)
    standby = Daemon(settings, engine, clock=clock, use_apscheduler=False)
    assert active.lock.try_acquire()  # another daemon holds the lock
    thread = threading.Thread(target=standby.run)
    thread.start()
    try:
        assert wait_for(lambda: standby.role == "standby")
        write_events(engine, TemplateStore(templates), clock)
        clock.advance(timedelta(seconds=5))
        time.sleep(0.3)
        assert unsealed(engine) == 2
    finally:
        standby.request_stop()
        thread.join(10)
        active.lock.release()
    assert not thread.is_alive()
    assert unsealed(engine) == 2
    engine.dispose()


@pytest.fixture
def campaign(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    schedules = workdir / "schedules"
    write_campaign(schedules, "qm.toml", CAMPAIGN)
    monkeypatch.setenv("BROADCASTER_SCHEDULES_DIR", str(schedules))
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(write_templates(workdir / "templates")))
    engine = db.open_database(os.environ["BROADCASTER_DATABASE_URL"])
    seed_audience(engine, {"public": phones(3)})
    yield engine
    engine.dispose()


def test_daemon_once_records_the_schedules_in_force_and_seals_what_it_sent(
    campaign: sa.Engine, cli, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    toml = workdir / "schedules" / "qm.toml"
    slogans = workdir / "templates" / "slogans" / "general.txt"
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-31T08:00:00+08:00")
    assert cli("daemon", "--once").code == 0  # the job is new: it counts from now
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-31T09:00:10+08:00")
    result = cli("daemon", "--once")
    assert result.code == 0, result.err
    assert result.out.startswith("1 run(s), 0 missed") and "sealed 9 event(s)" in result.out
    assert unsealed(campaign) == 0  # materialised, claimed and sent: all chained
    (run,) = runs(campaign)
    (created,) = actions(campaign, "run.created")
    assert created["run_id"] == run["id"]
    assert created["details"]["schedules_sha256"] == {
        str(toml): hashlib.sha256(toml.read_bytes()).hexdigest(),
        str(slogans): hashlib.sha256(slogans.read_bytes()).hexdigest(),
    }
    assert created["details"]["template_sha256"] == run["template_sha256"]

    # The file is edited: the next run records the new content's hash, the first keeps the old one.
    toml.write_text(toml.read_text("utf-8").replace('"【质量月】"', '"【质量月活动】"'), "utf-8")
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-09-01T09:00:10+08:00")
    assert cli("daemon", "--once").code == 0
    first, second = actions(campaign, "run.created")
    assert first == created
    assert second["details"]["schedules_sha256"][str(toml)] == hashlib.sha256(toml.read_bytes()).hexdigest()
    assert (
        second["details"]["schedules_sha256"][str(toml)] != created["details"]["schedules_sha256"][str(toml)]
    )
    trail = cli("audit", "trail", "--action", "run.created", "--json")
    assert trail.code == 0 and all("schedules_sha256" in a["details"] for a in trail.json())
