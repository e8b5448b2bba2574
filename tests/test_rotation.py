"""Slogan rotation: a pure function of the occurrence, so restarts and catch-ups agree."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.providers.log import LogProvider
from broadcaster.scheduling.ledger import occurrence_variables
from broadcaster.scheduling.occurrences import upcoming
from broadcaster.scheduling.rotation import Pool
from tests.scheduler_helpers import (
    REPO,
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


def test_in_order_cycles_through_the_pool() -> None:
    pool = Pool(tuple("abc"), "in-order", seed="x", source="inline")
    assert [pool.pick(k).text for k in range(7)] == list("abcabca")
    assert [pool.pick(k).cycle for k in (0, 2, 3, 6)] == [1, 1, 2, 3]


def test_shuffled_never_repeats_within_a_cycle_nor_back_to_back() -> None:
    for n in (1, 2, 3, 4, 10):
        pool = Pool(tuple(f"s{i}" for i in range(n)), "shuffled", seed="qm:daily", source="inline")
        picks = [pool.pick(k).text for k in range(n * 40)]
        for c in range(40):
            assert sorted(picks[c * n : (c + 1) * n]) == sorted(pool.slogans)  # each exactly once
        if n > 1:
            assert all(a != b for a, b in zip(picks, picks[1:], strict=False))
        again = Pool(pool.slogans, "shuffled", seed="qm:daily", source="inline")
        assert [again.pick(k).text for k in range(n * 40)] == picks  # deterministic
    ten = tuple(f"s{i}" for i in range(10))
    one = [Pool(ten, "shuffled", seed="a", source="").pick(k).text for k in range(10)]
    other = [Pool(ten, "shuffled", seed="b", source="").pick(k).text for k in range(10)]
    assert one != other and one != list(ten)  # really shuffled, per job


CAMPAIGN = """
[campaign]
id = "qm"
timezone = "Asia/Shanghai"
signature = "【质量月】"
start_date = 2011-08-31

[[jobs]]
id = "daily"
trigger = {{ type = "cron", hour = 9 }}
start = 2011-09-01
end = 2011-09-30
template = "slogan"
lists = ["public"]
misfire_grace = "3h"
pool = {pool}
"""


def _september(engine: sa.Engine, tmp_path: Path, pool: str) -> tuple[list[dict], Path]:
    """Thirty September days with two restarts, a catch-up within grace and a fire missed."""
    templates = write_templates(tmp_path / "templates")
    schedules = tmp_path / "schedules"
    write_campaign(schedules, "qm.toml", CAMPAIGN.format(pool=pool))
    seed_audience(engine, {"public": phones(3)})
    log = tmp_path / "sent.jsonl"
    clock = ManualClock(datetime(2011, 8, 31, 12, tzinfo=SH))

    def daemon(name: str):  # type: ignore[no-untyped-def]
        return make_runner(engine, clock, schedules, templates, name), Dispatcher(
            engine, LogProvider(log, clock), clock
        )

    runner, dispatcher = daemon("first")
    runner.tick()  # the job is seen for the first time before September
    for day in range(1, 11):
        clock.set(datetime(2011, 9, day, 9, 0, tzinfo=SH))
        runner.tick()
        dispatcher.run_until_idle()
    # down from the 10th after the fire until the 13th at 10:30: 11th and 12th are missed, the
    # 13th (90 minutes late, grace 3 h) runs on start
    clock.set(datetime(2011, 9, 13, 10, 30, tzinfo=SH))
    runner, dispatcher = daemon("second")
    runner.tick()
    dispatcher.run_until_idle()
    for day in range(14, 21):
        clock.set(datetime(2011, 9, day, 9, 0, 5, tzinfo=SH))
        runner.tick()
        dispatcher.run_until_idle()
    runner, dispatcher = daemon("third")  # a restart without downtime
    for day in range(21, 31):
        clock.set(datetime(2011, 9, day, 9, 0, tzinfo=SH))
        runner.tick()
        dispatcher.run_until_idle()
    clock.set(datetime(2011, 10, 5, tzinfo=SH))
    runner.tick()
    return runs(engine, "qm:daily"), log


def test_rotation_across_restarts_gives_30_distinct_in_order_picks(engine: sa.Engine, tmp_path: Path) -> None:
    thirty = [f"口号{i:02d}" for i in range(1, 31)]
    ledger, log = _september(engine, tmp_path, "{ slogans = [" + ", ".join(f'"{s}"' for s in thirty) + "] }")
    assert [r["scheduled_for"].astimezone(SH).day for r in ledger] == list(range(1, 31))
    assert [r["variables"]["slogan"] for r in ledger] == thirty  # the pick that was due, even if missed
    assert [r["status"] for r in ledger].count("missed") == 2
    assert {r["scheduled_for"].astimezone(SH).day for r in ledger if r["status"] == "missed"} == {11, 12}
    for r in ledger:
        assert len(messages(engine, r["id"])) == (0 if r["status"] == "missed" else 3), r
    sent = [m["body"] for m in sent_log(log)]
    expected = [s for i, s in enumerate(thirty, start=1) if i not in (11, 12)]
    assert sent == [f"【质量月】{s} 回TD退订" for s in expected for _ in range(3)]


def test_shipped_daily_slogan_goes_round_the_ten_general_slogans_three_times(tmp_path: Path) -> None:
    catalog = catalog_of(REPO / "schedules", write_templates(tmp_path / "templates"))
    job = catalog.jobs["quality-month-2011:daily-slogan"]
    days = upcoming(job, datetime(2011, 9, 1, tzinfo=SH), 100)
    picks = [occurrence_variables(job, at)[0] for at in days]
    general = [
        s.strip()
        for s in (REPO / "templates/slogans/general.txt").read_text("utf-8").splitlines()
        if s.strip()
    ]
    assert len(general) == 10
    assert [p["slogan"] for p in picks] == general * 3
    assert [p["slogan_number"] for p in picks] == list(range(1, 11)) * 3
    # a pick depends on the occurrence only: asking for day 17 alone gives day 17's slogan
    assert occurrence_variables(job, days[16])[0]["slogan"] == general[6]
    machinery = catalog.jobs["quality-month-2011:machinery-slogan"]
    mondays = upcoming(machinery, datetime(2011, 9, 1, tzinfo=SH), 10)
    assert [occurrence_variables(machinery, at)[1].number for at in mondays] == [1, 2, 3, 1]
