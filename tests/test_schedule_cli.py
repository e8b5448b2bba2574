"""`schedule simulate`, `daemon --once` and `status` through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.scheduling import leader
from tests.scheduler_helpers import REPO, phones, runs, seed_audience, write_templates

PUBLIC = phones(4)
MACHINERY = phones(2, start=100)
BUREAUS = phones(2, start=200)


@pytest.fixture
def quality_month(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    """The shipped schedule, test templates, and an audience (one public number opted out)."""
    schedules = workdir / "schedules"
    schedules.mkdir()
    (schedules / "quality-month-2011.toml").write_text(
        (REPO / "schedules" / "quality-month-2011.toml").read_text("utf-8"), "utf-8"
    )
    monkeypatch.setenv("BROADCASTER_SCHEDULES_DIR", str(schedules))
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(write_templates(workdir / "templates")))
    engine = db.open_database(os.environ["BROADCASTER_DATABASE_URL"])
    seed_audience(
        engine,
        {"public": PUBLIC, "machinery": MACHINERY, "bureau-contacts": BUREAUS},
        optouts=(PUBLIC[3],),
    )
    yield engine
    engine.dispose()


def general_slogans() -> list[str]:
    text = (REPO / "templates" / "slogans" / "general.txt").read_text("utf-8")
    return [s.strip() for s in text.splitlines() if s.strip()]


def test_simulate_shows_every_send_of_the_campaign_in_order(quality_month: sa.Engine, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("schedule", "simulate", "--from", "2011-08-31", "--until", "2011-10-31", "--json")
    assert result.code == 0, result.err
    sim = result.json()
    sends = [(r["at_local"][:16], r["job"].split(":")[1]) for r in sim["runs"]]
    assert sends == sorted(sends)
    assert sends[0] == ("2011-08-31T09:00", "public-service-0831")
    days = [at for at, job in sends if job == "daily-slogan"]
    assert days == [f"2011-09-{d:02d}T09:00" for d in range(1, 31)]
    assert [r["slogan"] for r in sim["runs"] if r["job"].endswith("daily-slogan")] == general_slogans() * 3
    assert [at for at, job in sends if job == "machinery-slogan"] == [
        f"2011-09-{d:02d}T10:00" for d in (5, 12, 19, 26)
    ]
    assert sends.index(("2011-09-09T08:30", "food-lab-open-day")) + 1 == sends.index(
        ("2011-09-09T09:00", "daily-slogan")
    )
    assert [at for at, job in sends if job == "summary-reminder"] == ["2011-10-24T10:00", "2011-10-28T10:00"]
    assert len(sends) == 1 + 30 + 4 + 1 + 2 and sim["missed"] == [] and sim["errors"] == []
    by_job = {r["job"].split(":")[1]: r for r in sim["runs"]}
    assert by_job["public-service-0831"]["counts"] == {"sent": 3, "suppressed": 1}
    assert by_job["machinery-slogan"]["counts"] == {"sent": 2}
    assert (
        by_job["summary-reminder"]["body"]
        == "【国家质检总局】请于10月31日前报送质量月活动总结至qualitymonth@aqsiq.gov.cn。"
    )
    assert sim["totals"]["sent"] == 3 * 32 + 2 * 4 + 2 * 2
    assert sim["audience"] == {"public": 4, "machinery": 2, "bureau-contacts": 2}
    assert runs(quality_month) == []  # the operator's database was only read
    text = cli("schedule", "simulate", "--from", "2011-09-09", "--until", "2011-09-09")
    assert text.code == 0
    lines = text.out.splitlines()
    assert "food-lab-open-day" in lines[0] and "2011-09-09 08:30 CST" in lines[0]
    assert "9月9日食品检测实验室开放日" in lines[1]
    assert "daily-slogan" in lines[2] and general_slogans()[8] in lines[3]
    assert lines[-1].startswith("2 run(s), 8 message(s)")


def test_once_catches_up_and_status_shows_missed_runs_and_next_fires(
    quality_month: sa.Engine, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    never = cli("status", "--json")
    assert (
        never.code == 0 and never.json()["daemon"]["alive"] is False and never.json()["daemon"]["id"] is None
    )
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-30T12:00:00+08:00")
    first = cli("daemon", "--once")
    assert first.code == 0, first.err
    assert first.out.startswith("0 run(s), 0 missed") and "2011-08-31T09:00:00+08:00" in first.out
    # down until September 2 at 09:30: the blast (6 h grace) and September 1 (3 h) are missed,
    # September 2 is 30 minutes late and runs, with the slogan that was due that day
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-09-02T09:30:00+08:00")
    second = cli("daemon", "--once")
    assert second.code == 0, second.err
    assert second.out.startswith("1 run(s), 2 missed")
    ledger = runs(quality_month)
    assert [(r["job_id"].split(":")[1], r["status"] == "missed") for r in ledger] == [
        ("public-service-0831", True),
        ("daily-slogan", True),
        ("daily-slogan", False),
    ]
    assert ledger[2]["variables"]["slogan"] == general_slogans()[1]
    again = cli("daemon", "--once")
    assert again.out.startswith("0 run(s), 0 missed")  # a second pass doubles nothing

    status = cli("status", "--json")
    assert status.code == 0, status.err
    info = status.json()
    assert set(info) == {
        "now",
        "daemon",
        "standby",
        "next_fires",
        "last_runs",
        "missed",
        "schedule_errors",
        "sending",
    }
    assert info["sending"] == []  # the pass has sent what it had and left
    assert set(info["daemon"]) == {
        "alive",
        "id",
        "host",
        "pid",
        "role",
        "started_at",
        "beat_at",
        "age_seconds",
        "info",
    }
    nxt = {f["job"].split(":")[1]: f for f in info["next_fires"]}
    assert nxt["daily-slogan"]["at_local"] == "2011-09-03T09:00:00+08:00"
    assert nxt["daily-slogan"]["slogan"] == general_slogans()[2]
    assert nxt["machinery-slogan"]["at_local"] == "2011-09-05T10:00:00+08:00"
    (last,) = info["last_runs"]
    assert last["counts"] == {"sent": 3, "suppressed": 1} and last["intended"] == 4
    assert last["scheduled_local"] == "2011-09-02T09:00:00+08:00"
    assert [m["scheduled_local"] for m in info["missed"]] == [
        "2011-09-01T09:00:00+08:00",
        "2011-08-31T09:00:00+08:00",
    ]
    assert all("misfire grace" in m["note"] for m in info["missed"])
    text = cli("status")
    assert "daemon: never started on this database" in text.out
    assert "missed:" in text.out and "quality-month-2011:daily-slogan" in text.out


def test_once_refuses_while_a_daemon_holds_the_lock(quality_month: sa.Engine, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    lock = leader.make_lock(quality_month, workdir / "var")
    assert lock.try_acquire()
    try:
        result = cli("daemon", "--once")
        assert result.code == 1 and "another daemon is active" in result.err
    finally:
        lock.release()
    assert cli("daemon", "--once").code == 0


def test_rehearsal_clock_is_refused_with_a_real_provider(
    workdir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-31T09:00:00+08:00")
    monkeypatch.setenv("BROADCASTER_PROVIDER", "twilio")
    result = cli("status")
    assert result.code == 1 and "log provider only" in result.err
    monkeypatch.setenv("BROADCASTER_PROVIDER", "log")
    monkeypatch.setenv("BROADCASTER_CLOCK_START", "2011-08-31T09:00:00")
    result = cli("status")
    assert result.code == 1 and "give an offset" in result.err
