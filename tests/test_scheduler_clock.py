"""The scheduler with an injected clock (no sleeps): zones, daylight saving, downtime and grace,
two daemons on one database, restarts mid-run, reloads while running."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.models import Message
from broadcaster.providers.base import Outbound
from broadcaster.providers.log import LogProvider
from broadcaster.runs import create_run
from broadcaster.scheduling.daemon import Daemon
from broadcaster.scheduling.ledger import settle
from broadcaster.scheduling.planner import Occurrence
from broadcaster.settings import load_settings
from broadcaster.templating import TemplateStore
from tests.scheduler_helpers import (
    actions,
    catalog_of,
    make_runner,
    messages,
    phones,
    runs,
    seed_audience,
    sent_log,
    write_campaign,
    write_templates,
)

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")

DAILY = """
[campaign]
id = "c"
timezone = "{zone}"

[[jobs]]
id = "daily"
trigger = {{ type = "cron", hour = {hour}, minute = {minute} }}
template = "hello"
lists = ["public"]
misfire_grace = "{grace}"
"""


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "schedules", write_templates(tmp_path / "templates")


def daily(folders, zone: str = "Asia/Shanghai", hour: int = 9, minute: int = 0, grace: str = "1h") -> None:  # type: ignore[no-untyped-def]
    write_campaign(folders[0], "c.toml", DAILY.format(zone=zone, hour=hour, minute=minute, grace=grace))


def test_fires_at_0900_shanghai_whatever_the_machine_zone(
    engine: sa.Engine, folders, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        daily(folders)
        seed_audience(engine, {"public": phones(2)})
        clock = ManualClock(datetime(2011, 8, 31, 8, 59, 59, tzinfo=SH))
        runner = make_runner(engine, clock, *folders)
        report = runner.tick()
        assert report.outcomes == [] and report.next_wake == datetime(2011, 8, 31, 9, tzinfo=SH)
        clock.set(report.next_wake)
        report = runner.tick()
        assert [o.kind for o in report.outcomes] == ["created"]
        (run,) = runs(engine)
        assert run["scheduled_for"] == datetime(2011, 8, 31, 1, 0, tzinfo=UTC)
        assert (
            run["kind"] == "scheduled" and run["job_id"] == "c:daily" and run["timezone"] == "Asia/Shanghai"
        )
        assert {m["body"] for m in messages(engine, run["id"])} == {
            f"【测试】n{i}，2011年8月31日 09:00" for i in (1, 2)
        }
        assert report.next_wake == datetime(2011, 9, 1, 9, tzinfo=SH)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def _run_through(runner, clock: ManualClock, until: datetime) -> None:  # type: ignore[no-untyped-def]
    """Wake exactly when the planner asks, like the daemon does."""
    while True:
        report = runner.tick()
        if report.next_wake is None or report.next_wake > until:
            return
        clock.set(report.next_wake)


def test_daylight_saving_new_york_across_both_changes(tmp_path: Path, folders) -> None:  # type: ignore[no-untyped-def]
    write_campaign(
        folders[0],
        "ny.toml",
        """
        [campaign]
        id = "ny"
        timezone = "America/New_York"

        [[jobs]]
        id = "nine"
        trigger = { type = "cron", hour = 9, minute = 0 }
        template = "hello"
        lists = ["public"]

        [[jobs]]
        id = "one-thirty"
        trigger = { type = "cron", hour = 1, minute = 30 }
        template = "hello"
        lists = ["public"]

        [[jobs]]
        id = "two-thirty"
        trigger = { type = "cron", hour = 2, minute = 30 }
        template = "hello"
        lists = ["public"]
        """,
    )
    fired: dict[str, list[datetime]] = {"nine": [], "one-thirty": [], "two-thirty": []}
    bodies: set[str] = set()
    for n, (first, last) in enumerate(
        ((datetime(2024, 3, 8), datetime(2024, 3, 12)), (datetime(2024, 11, 1), datetime(2024, 11, 5)))
    ):
        engine = db.open_database(f"sqlite:///{tmp_path / f'dst{n}.db'}")
        seed_audience(engine, {"public": phones(1)})
        clock = ManualClock(first.replace(tzinfo=NY))
        _run_through(make_runner(engine, clock, *folders), clock, last.replace(tzinfo=NY))
        for job, times in fired.items():
            times.extend(r["scheduled_for"] for r in runs(engine, f"ny:{job}"))
        bodies |= {m["body"] for r in runs(engine, "ny:nine") for m in messages(engine, r["id"])}
        engine.dispose()

    def local(job: str) -> list[str]:
        return [t.astimezone(NY).isoformat() for t in fired[job]]

    assert local("nine") == [
        "2024-03-08T09:00:00-05:00",
        "2024-03-09T09:00:00-05:00",
        "2024-03-10T09:00:00-04:00",  # spring forward: still 09:00 local, an hour earlier in UTC
        "2024-03-11T09:00:00-04:00",
        "2024-11-01T09:00:00-04:00",
        "2024-11-02T09:00:00-04:00",
        "2024-11-03T09:00:00-05:00",  # fall back
        "2024-11-04T09:00:00-05:00",
    ]
    assert [t.astimezone(UTC).hour for t in fired["nine"]] == [14, 14, 13, 13, 13, 13, 14, 14]
    assert all(b.endswith(" 09:00") for b in bodies) and bodies
    # 01:30 happens twice on November 3: it fires once (the first), not twice
    assert [f for f in local("one-thirty") if f.startswith("2024-11-03")] == ["2024-11-03T01:30:00-04:00"]
    assert len(fired["one-thirty"]) == 8
    # 02:30 does not exist on March 10: it fires once, at 03:30 EDT (the instant 02:30 EST would be)
    march10 = [t for t in fired["two-thirty"] if t.astimezone(NY).month == 3 and t.astimezone(NY).day == 10]
    assert march10 == [datetime(2024, 3, 10, 7, 30, tzinfo=UTC)]
    assert len(fired["two-thirty"]) == 8


def test_downtime_within_and_beyond_grace(engine: sa.Engine, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daily(folders, grace="1h")
    seed_audience(engine, {"public": phones(3)})
    clock = ManualClock(datetime(2011, 8, 30, 9, 0, tzinfo=SH))
    runner = make_runner(engine, clock, *folders)
    runner.tick()  # new job: starts from now, the 09:00 of today is not back-filled
    assert runs(engine) == []
    # down from Aug 30 09:00 until Sep 1 09:40: Aug 31 is 24h40m late (missed), Sep 1 is 40 min late (runs)
    clock.set(datetime(2011, 9, 1, 9, 40, tzinfo=SH))
    report = make_runner(engine, clock, *folders).tick()
    assert [(o.kind, o.at.day) for o in report.outcomes] == [("missed", 31), ("created", 1)]
    missed, ran = runs(engine)
    assert missed["status"] == "missed" and missed["intended"] == 0 and "grace" in missed["note"]
    assert messages(engine, missed["id"]) == []
    assert ran["status"] == "ready" and len(messages(engine, ran["id"])) == 3
    (trail,) = actions(engine, "schedule.missed")
    assert trail["run_id"] == missed["id"] and trail["details"]["job"] == "c:daily"
    assert trail["details"]["late_by_seconds"] == (24 * 60 + 40) * 60
    # a restart the same day changes nothing; the missed occurrence can never run later
    assert make_runner(engine, clock, *folders).tick().outcomes == []
    store = TemplateStore(folders[1])
    job = catalog_of(*folders).jobs["c:daily"]
    again = settle(
        engine,
        Occurrence(job, missed["scheduled_for"].astimezone(SH), timedelta(0)),
        store=store,
        clock=clock,
        actor="t",
        daemon_id="t",
    )
    assert again.kind == "missed" and again.run_id == missed["id"]
    assert len(runs(engine)) == 2 and messages(engine, missed["id"]) == []


def test_two_daemons_against_one_database_create_one_run(db_url: str, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daily(folders)
    engines = [db.open_database(db_url), db.open_database(db_url)]  # two processes' pools
    try:
        seed_audience(engines[0], {"public": phones(20)})
        clock = ManualClock(datetime(2011, 8, 31, 8, 0, tzinfo=SH))
        runners = [make_runner(e, clock, *folders, name=f"d{i}") for i, e in enumerate(engines)]
        for r in runners:
            r.tick()
        clock.set(datetime(2011, 8, 31, 9, 0, tzinfo=SH))
        barrier = threading.Barrier(2)
        kinds: list[str] = []
        log = tmp_path / "sent.jsonl"

        def daemon(i: int) -> None:
            barrier.wait()
            kinds.extend(o.kind for o in runners[i].tick().outcomes)
            barrier.wait()
            Dispatcher(engines[i], LogProvider(log, clock), clock, worker_id=f"w{i}").run_until_idle()

        threads = [threading.Thread(target=daemon, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        (run,) = runs(engines[0])
        assert sorted(kinds) in (["created", "existing"], ["created", "resumed"])
        assert len(messages(engines[0], run["id"])) == 20
        sent = [m["to"] for m in sent_log(log)]
        assert sorted(sent) == sorted(phones(20))  # everyone once, nobody twice
        assert len(actions(engines[0], "run.created")) == 1
    finally:
        for e in engines:
            e.dispose()


def test_restart_mid_run_resumes_without_doubling(engine: sa.Engine, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daily(folders)
    seed_audience(engine, {"public": phones(10)}, optouts=(phones(10)[9],))
    log = tmp_path / "sent.jsonl"
    clock = ManualClock(datetime(2011, 8, 30, 12, tzinfo=SH))
    make_runner(engine, clock, *folders, name="first").tick()
    # the first daemon fired at 09:00 and died right after creating the run, before materialising
    clock.set(datetime(2011, 8, 31, 9, 0, tzinfo=SH))
    job = catalog_of(*folders).jobs["c:daily"]
    ref = create_run(
        engine,
        template=job.template,
        list_names=list(job.lists),
        variables=dict(job.variables),
        clock=clock,
        actor="scheduler",
        timezone=job.timezone,
        store=TemplateStore(folders[1]),
        job_id=job.key,
        campaign_id=job.campaign_id,
        scheduled_for=datetime(2011, 8, 31, 9, 0, tzinfo=SH),
        kind="scheduled",
    )
    assert messages(engine, ref.id) == []
    # restarted 30 s later: the same run is materialised, not a second one created
    clock.set(datetime(2011, 8, 31, 9, 0, 30, tzinfo=SH))
    report = make_runner(engine, clock, *folders, name="second").tick()
    assert [(o.kind, o.run_id) for o in report.outcomes] == [("resumed", ref.id)]
    assert len(messages(engine, ref.id)) == 10
    # it dies again mid-dispatch, holding two messages under its lease; the provider had already
    # accepted the first of them (its line is in the provider's log), the crash lost the record
    held = [m for m in messages(engine, ref.id) if m["status"] == "queued"][:2]
    messages_t = Message.__table__
    with db.writing(engine) as conn:
        conn.execute(
            sa.update(messages_t)
            .where(messages_t.c.id.in_([m["id"] for m in held]))
            .values(
                status="sending",
                lease_owner="second",
                lease_expires_at=clock.now() + timedelta(minutes=5),
                attempt_started_at=clock.now(),
                attempts=1,
            )
        )
    LogProvider(log, clock).send(
        Outbound(message_id=held[0]["id"], to=held[0]["phone"], body=held[0]["body"])
    )
    # third start: nothing to plan again; the rest is sent; the held ones are not resent blindly
    clock.set(datetime(2011, 8, 31, 9, 1, tzinfo=SH))
    assert make_runner(engine, clock, *folders, name="third").tick().outcomes == []
    Dispatcher(engine, LogProvider(log, clock), clock, worker_id="third").run_until_idle(ref.id)
    sent = [m["to"] for m in sent_log(log)]
    assert len(sent) == len(set(sent)) == 9 - 1  # nobody twice; the second held one never reached it
    states = {m["phone"]: m["status"] for m in messages(engine, ref.id)}
    assert states[phones(10)[9]] == "suppressed"
    assert {states[m["phone"]] for m in held} <= {"sending", "unknown"}
    assert set(sent) | {m["phone"] for m in held} | {phones(10)[9]} == set(phones(10))
    assert len(runs(engine)) == 1


def test_reload_while_running_neither_loses_nor_doubles(engine: sa.Engine, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = folders
    daily(folders)
    seed_audience(engine, {"public": phones(2)})
    settings = load_settings(schedules_dir=schedules, templates_dir=templates, var_dir=tmp_path / "var")
    clock = ManualClock(datetime(2011, 8, 31, 8, 0, tzinfo=SH))
    daemon = Daemon(settings, engine, clock=clock, use_apscheduler=False)
    daemon.load()
    daemon.runner.tick()
    clock.set(datetime(2011, 8, 31, 9, 0, tzinfo=SH))
    assert [o.kind for o in daemon.runner.tick().outcomes] == ["created"]
    # edit while running: a second job, every hour at :30; the 09:00 job unchanged
    (schedules / "c.toml").write_text(
        (schedules / "c.toml").read_text()
        + '\n[[jobs]]\nid = "half"\ntrigger = { type = "cron", minute = 30 }\n'
        + 'template = "hello"\nlists = ["public"]\n'
    )
    clock.set(datetime(2011, 8, 31, 9, 10, tzinfo=SH))
    daemon.load()
    assert daemon.runner.tick().outcomes == []  # the 09:00 run is not created again
    clock.set(datetime(2011, 8, 31, 9, 30, tzinfo=SH))
    assert [(o.kind, o.job) for o in daemon.runner.tick().outcomes] == [("created", "c:half")]
    # a broken edit: the previous good version keeps running, the error names file, job and field
    (schedules / "c.toml").write_text(
        (schedules / "c.toml").read_text().replace("minute = 30", "minute = 61")
    )
    daemon.load()
    assert any("job 'half': trigger.minute" in str(i) for i in daemon.catalog.issues)
    clock.set(datetime(2011, 8, 31, 10, 30, tzinfo=SH))
    assert [(o.kind, o.job) for o in daemon.runner.tick().outcomes] == [("created", "c:half")]
    # a template change is picked up by the next run
    (templates / "hello.j2").write_text("【新】{{ name }}\n", encoding="utf-8")
    daemon.load()
    clock.set(datetime(2011, 9, 1, 9, 0, tzinfo=SH))
    outcomes = daemon.runner.tick().outcomes
    nine = [o for o in outcomes if o.job == "c:daily"]
    assert [o.kind for o in nine] == ["created"]
    assert {m["body"] for m in messages(engine, nine[0].run_id)} == {"【新】n1", "【新】n2"}
    keys = [(r["job_id"], r["scheduled_for"]) for r in runs(engine)]
    assert len(keys) == len(set(keys))
    assert [r["scheduled_for"].astimezone(SH).hour for r in runs(engine, "c:daily")] == [9, 9]


def test_a_failing_fire_is_retried_within_grace_then_recorded_missed(engine: sa.Engine, folders) -> None:  # type: ignore[no-untyped-def]
    daily(folders, grace="10m")
    seed_audience(engine, {"others": phones(1)})  # the list "public" does not exist yet
    clock = ManualClock(datetime(2011, 8, 31, 8, 0, tzinfo=SH))
    runner = make_runner(engine, clock, *folders)
    runner.tick()
    clock.set(datetime(2011, 8, 31, 9, 0, tzinfo=SH))
    report = runner.tick()
    assert report.outcomes == [] and "unknown list(s): public" in report.errors[0]
    assert report.next_wake == datetime(2011, 8, 31, 9, 1, tzinfo=SH)  # retry after 60 s
    clock.set(datetime(2011, 8, 31, 9, 11, tzinfo=SH))
    report = runner.tick()
    assert [o.kind for o in report.outcomes] == ["missed"]
    (row,) = runs(engine)
    assert row["status"] == "missed" and "unknown list(s): public" in row["note"]


def test_a_change_under_schedules_reloads_a_running_daemon(sqlite_url: str, folders, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = folders
    schedules.mkdir()
    engine = db.open_database(sqlite_url)
    settings = load_settings(
        schedules_dir=schedules,
        templates_dir=templates,
        var_dir=tmp_path / "var",
        daemon_reload_poll_seconds=0.05,
        daemon_heartbeat_seconds=0.05,
        daemon_dispatch="workers",
    )
    daemon = Daemon(settings, engine)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.role != "active" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.role == "active" and daemon.catalog.jobs == {}
        daily(folders)  # no SIGHUP: the watcher sees the new file
        while "c:daily" not in daemon.catalog.jobs and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "c:daily" in daemon.catalog.jobs
        (templates / "hello.j2").write_text("{{ nope", encoding="utf-8")  # a broken template
        while not daemon.catalog.issues and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "c:daily" in daemon.catalog.jobs  # the last good version is kept
        assert any(i.field == "template" for i in daemon.catalog.issues)
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
    assert [a["details"]["daemon"] for a in actions(engine, "daemon.stopped")] == [daemon.id]
    engine.dispose()
