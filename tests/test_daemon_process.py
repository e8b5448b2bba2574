"""The daemon as a real process: killed with -9 and restarted, a standby taking over, SIGHUP and
SIGTERM. The rehearsal clock (BROADCASTER_CLOCK_START, log provider only) puts a process just
before or after a fire time, so nothing waits for a real 09:00; the SIGHUP test runs on the real
clock, with APScheduler firing the job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.models import DaemonHeartbeat
from broadcaster.scheduling.status import gather
from tests.conftest import subprocess_env
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

pytestmark = pytest.mark.slow
SH = ZoneInfo("Asia/Shanghai")
BLAST = """
[campaign]
id = "c"
timezone = "Asia/Shanghai"

[[jobs]]
id = "blast"
trigger = { type = "date", at = 2011-08-31T09:00:00 }
template = "hello"
lists = ["public"]
"""


class Daemons:
    """Start ``broadcaster daemon`` processes on one database; stop them all at the end."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp = tmp_path
        self.db_url = db_url
        self.templates = write_templates(tmp_path / "templates")
        self.schedules = tmp_path / "schedules"
        self.schedules.mkdir(exist_ok=True)
        self.log = tmp_path / "var" / "sent.jsonl"
        self.procs: list[subprocess.Popen] = []

    def start(self, clock_start: str | None, name: str, *args: str, **env: str) -> subprocess.Popen:
        environment = subprocess_env(
            BROADCASTER_DATABASE_URL=self.db_url,
            BROADCASTER_VAR_DIR=str(self.tmp / "var"),
            BROADCASTER_SCHEDULES_DIR=str(self.schedules),
            BROADCASTER_TEMPLATES_DIR=str(self.templates),
            BROADCASTER_PROVIDER="log",
            BROADCASTER_LOG_PROVIDER_FILE=str(self.log),
            BROADCASTER_CLOCK_START=clock_start or "",
            BROADCASTER_DAEMON_HEARTBEAT_SECONDS="0.2",
            BROADCASTER_DAEMON_STANDBY_POLL_SECONDS="0.2",
            TZ="America/New_York",  # the machine's zone must not matter
            **env,
        )
        stderr = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "daemon", *args],
            env=environment,
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        self.procs.append(proc)
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(encoding="utf-8")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def daemons(tmp_path: Path, db_url: str) -> Iterator[Daemons]:
    d = Daemons(tmp_path, db_url)
    try:
        yield d
    finally:
        d.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def heartbeats(engine: sa.Engine) -> dict[int, str]:
    t = DaemonHeartbeat.__table__
    with db.reading(engine) as conn:
        return {pid: role for pid, role in conn.execute(sa.select(t.c.pid, t.c.role)).all()}


def test_daemon_killed_and_restarted_sends_everyone_once(daemons: Daemons) -> None:
    write_campaign(daemons.schedules, "c.toml", BLAST)
    engine = db.open_database(daemons.db_url)
    everyone = phones(150)  # more than one claim batch: some are still queued at the kill
    seed_audience(engine, {"public": everyone})
    # a daemon ran the day before (so the job is known); down until just after 09:00
    clock = ManualClock(datetime(2011, 8, 30, 12, tzinfo=SH))
    make_runner(engine, clock, daemons.schedules, daemons.templates, "yesterday").tick()
    first = daemons.start("2011-08-31T09:00:01+08:00", "first")
    wait_for("the first sends", lambda: len(sent_log(daemons.log)) >= 1)
    first.send_signal(signal.SIGKILL)  # mid-run, as hard as it gets
    first.wait(10)
    # back 30 seconds later (within the grace): no second run, the rest is sent
    sent_by_first = len(sent_log(daemons.log))
    second = daemons.start("2011-08-31T09:00:30+08:00", "second", BROADCASTER_RECONCILE_DELAY_SECONDS="0")
    wait_for("the restarted daemon to be active", lambda: heartbeats(engine).get(second.pid) == "active")

    def settled() -> bool:  # the killed daemon's in-flight messages are reconciled, not left behind
        states = [m["status"] for m in messages(engine)]
        return len(states) == 150 and set(states) == {"sent"}

    wait_for("the run to be finished", settled)
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, daemons.output("second")
    (run,) = runs(engine)
    assert run["scheduled_for"] == datetime(2011, 8, 31, 9, tzinfo=SH)
    sent = Counter(line["to"] for line in sent_log(daemons.log))
    assert max(sent.values()) == 1  # nobody twice
    assert sum(sent.values()) > sent_by_first  # the restarted daemon sent the rest
    # everyone exactly once: a message the killed daemon had in flight was looked up in the
    # provider's record before anything was resent
    assert set(sent) == set(everyone)
    assert len(actions(engine, "daemon.started")) == 2
    assert len(actions(engine, "daemon.stopped")) == 1  # the killed one could not say goodbye
    assert len(actions(engine, "run.created")) == 1
    engine.dispose()


def test_standby_takes_over_when_the_active_daemon_dies(daemons: Daemons) -> None:
    write_campaign(daemons.schedules, "c.toml", BLAST)
    engine = db.open_database(daemons.db_url)
    seed_audience(engine, {"public": phones(3)})
    active = daemons.start("2011-08-31T08:59:00+08:00", "active")
    wait_for("the first daemon to be active", lambda: heartbeats(engine).get(active.pid) == "active")
    standby = daemons.start("2011-08-31T09:00:10+08:00", "standby", "--log-format", "json")
    wait_for("the second daemon to wait", lambda: heartbeats(engine).get(standby.pid) == "standby")
    assert runs(engine) == []  # the standby plans nothing, though its clock is past 09:00
    active.send_signal(signal.SIGKILL)
    active.wait(10)
    wait_for("the takeover", lambda: heartbeats(engine).get(standby.pid) == "active")
    wait_for("the catch-up run", lambda: [m["status"] for m in messages(engine)] == ["sent"] * 3)
    hb = DaemonHeartbeat.__table__
    with db.reading(engine) as conn:  # "now" on the daemons' rehearsal clock
        now = conn.execute(sa.select(sa.func.max(hb.c.beat_at))).scalar_one()
    info = gather(engine, catalog_of(daemons.schedules, daemons.templates), now, heartbeat_seconds=0.2)
    assert info["daemon"]["pid"] == standby.pid and info["daemon"]["role"] == "active"
    assert info["daemon"]["alive"] and info["standby"] == []
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(20) == 0
    (run,) = runs(engine)
    assert run["scheduled_for"] == datetime(2011, 8, 31, 9, tzinfo=SH)
    assert sorted(line["to"] for line in sent_log(daemons.log)) == phones(3)
    (takeover,) = actions(engine, "daemon.takeover")
    assert takeover["details"]["pid"] == standby.pid
    events = [
        json.loads(line)["event"] for line in daemons.output("standby").splitlines() if line.startswith("{")
    ]
    assert events.index("daemon.standby") < events.index("daemon.takeover") < events.index("run.created")
    assert events[-1] == "daemon.stopped"
    engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sighup_reloads_and_sigterm_stops_cleanly(daemons: Daemons) -> None:
    engine = db.open_database(daemons.db_url)
    seed_audience(engine, {"public": phones(2)})
    proc = daemons.start(
        None,  # the real clock: APScheduler fires the job
        "daemon",
        "--log-format",
        "json",
        BROADCASTER_DAEMON_RELOAD_POLL_SECONDS="600",  # only SIGHUP reloads here
    )
    wait_for("the daemon to be active", lambda: heartbeats(engine).get(proc.pid) == "active")
    write_campaign(
        daemons.schedules,
        "c.toml",
        """
        [campaign]
        id = "c"
        timezone = "Asia/Shanghai"

        [[jobs]]
        id = "every-second"
        trigger = { type = "interval", seconds = 1, start = 2011-08-31T00:00:00 }
        template = "hello"
        lists = ["public"]
        """,
    )
    proc.send_signal(signal.SIGHUP)
    wait_for("two runs of the new job", lambda: len(runs(engine, "c:every-second")) >= 2)
    first_run = runs(engine, "c:every-second")[0]["id"]
    wait_for("the first run sent", lambda: {m["status"] for m in messages(engine, first_run)} == {"sent"})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    ledger = runs(engine, "c:every-second")
    times = [r["scheduled_for"] for r in ledger]
    assert len(set(times)) == len(times)
    assert all((b - a).total_seconds() == 1 for a, b in zip(times, times[1:], strict=False))
    # in-flight sends were finished before exit; a run fired just before SIGTERM may still be
    # queued (released: the next daemon or a worker sends it), never half-claimed
    states = Counter(m["status"] for m in messages(engine))
    assert set(states) <= {"sent", "queued"} and states["sent"] >= 2
    sent = [(line["message_id"]) for line in sent_log(daemons.log)]
    assert len(sent) == len(set(sent)) == states["sent"]
    assert {m["status"] for m in messages(engine, ledger[0]["id"])} == {"sent"}
    lines = [json.loads(line) for line in daemons.output("daemon").splitlines()]
    events = [line["event"] for line in lines]
    assert "daemon.reload" in events and events[-1] == "daemon.stopped"
    assert events.index("daemon.reload") < events.index("apscheduler.fire") < events.index("run.created")
    created = [line for line in lines if line["event"] == "run.created"]
    assert created[0]["job"] == "c:every-second" and created[0]["intended"] == 2
    (stopped,) = actions(engine, "daemon.stopped")
    assert stopped["details"]["pid"] == proc.pid
    engine.dispose()
