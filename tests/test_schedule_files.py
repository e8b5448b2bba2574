"""Campaign files: validation that names file, job and field; isolation of broken files; the
shipped quality-month-2011 schedule; `schedule check`, `list` and `preview` through the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broadcaster.scheduling.occurrences import upcoming
from tests.scheduler_helpers import REPO, catalog_of, write_campaign, write_templates

SH = ZoneInfo("Asia/Shanghai")
GOOD = """
[campaign]
id = "good"
timezone = "Asia/Shanghai"

[[jobs]]
id = "morning"
trigger = { type = "cron", hour = 9 }
template = "hello"
lists = ["public"]
"""


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "schedules", write_templates(tmp_path / "templates")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirs: tuple[Path, Path]) -> tuple[Path, Path]:
    """CLI settings pointing at this test's own folders and a SQLite file (file-only commands)."""
    schedules, templates = dirs
    schedules.mkdir(exist_ok=True)
    monkeypatch.setenv("BROADCASTER_SCHEDULES_DIR", str(schedules))
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(templates))
    monkeypatch.setenv("BROADCASTER_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'b.db'}")
    monkeypatch.setenv("BROADCASTER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)
    return schedules, templates


def issues_of(schedules: Path, templates: Path) -> list[str]:
    return [str(i) for i in catalog_of(schedules, templates).issues]


def test_errors_name_the_file_the_job_and_the_field(dirs) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = dirs
    write_campaign(
        schedules,
        "broken.toml",
        """
        [campaign]
        id = "broken"
        timezone = "Asia/Shangai"

        [[jobs]]
        id = "weekly"
        trigger = { type = "cron", day_of_week = "0", hour = 9 }
        template = "hello"
        lists = ["public"]

        [[jobs]]
        id = "late"
        trigger = { type = "cron", hour = 25 }
        template = "hello"
        lists = []
        misfire_grace = "soon"
        """,
    )
    found = issues_of(schedules, templates)
    path = str(schedules / "broken.toml")
    assert any(f.startswith(f"{path}: campaign.timezone: ") and "Asia/Shangai" in f for f in found), found
    assert any(
        f.startswith(f"{path}: job 'weekly': trigger.day_of_week: ") and "weekday names" in f for f in found
    ), found
    assert any(f.startswith(f"{path}: job 'late': lists: ") for f in found), found
    assert any(f.startswith(f"{path}: job 'late': misfire_grace: ") and "soon" in f for f in found), found


def test_semantic_errors_name_the_field(dirs) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = dirs
    write_campaign(
        schedules,
        "c.toml",
        """
        [campaign]
        id = "c"
        timezone = "Asia/Shanghai"

        [[jobs]]
        id = "bad-hour"
        trigger = { type = "cron", hour = 25 }
        template = "hello"
        lists = ["public"]

        [[jobs]]
        id = "no-template"
        trigger = { type = "cron", hour = 9 }
        template = "nope"
        lists = ["public"]

        [[jobs]]
        id = "no-pool-file"
        trigger = { type = "cron", hour = 9 }
        start = 2011-09-01
        template = "slogan"
        lists = ["public"]
        pool = { file = "slogans/missing.txt" }

        [[jobs]]
        id = "rotation-without-start"
        trigger = { type = "cron", hour = 9 }
        template = "slogan"
        lists = ["public"]
        pool = { slogans = ["a", "b"] }

        [[jobs]]
        id = "interval-without-start"
        trigger = { type = "interval", hours = 6 }
        template = "hello"
        lists = ["public"]
        """,
    )
    found = issues_of(schedules, templates)
    path = str(schedules / "c.toml")
    expected = [
        ("bad-hour", "trigger.hour"),
        ("no-template", "template"),
        ("no-pool-file", "pool.file"),
        ("rotation-without-start", "pool"),
        ("interval-without-start", "trigger.start"),
    ]
    for job, field in expected:
        assert any(f.startswith(f"{path}: job {job!r}: {field}: ") for f in found), (job, field, found)


def test_a_broken_file_never_takes_down_the_other_campaigns(dirs) -> None:  # type: ignore[no-untyped-def]
    schedules, templates = dirs
    write_campaign(schedules, "a-good.toml", GOOD)
    write_campaign(schedules, "b-not-toml.toml", "[campaign\nid=")
    write_campaign(schedules, "c-same-id.toml", GOOD.replace('id = "morning"', 'id = "other"'))
    catalog = catalog_of(schedules, templates)
    assert list(catalog.jobs) == ["good:morning"]
    found = [str(i) for i in catalog.issues]
    assert any("b-not-toml.toml: not valid TOML" in f for f in found), found
    assert any("c-same-id.toml: campaign.id: campaign id 'good' is already used by" in f for f in found), (
        found
    )


def test_a_broken_edit_keeps_the_previous_good_version(dirs) -> None:  # type: ignore[no-untyped-def]
    from broadcaster.scheduling.catalog import load_catalog
    from broadcaster.templating import TemplateStore

    schedules, templates = dirs
    path = write_campaign(schedules, "a.toml", GOOD)
    store = TemplateStore(templates)
    first = load_catalog(schedules, store, default_grace=timedelta(hours=1))
    path.write_text(GOOD.replace("hour = 9", "hour = 99"), encoding="utf-8")
    second = load_catalog(schedules, store, default_grace=timedelta(hours=1), previous=first)
    assert list(second.jobs) == ["good:morning"]
    assert second.jobs["good:morning"] is first.jobs["good:morning"]
    assert next(iter(second.campaigns.values())).stale
    assert any("trigger.hour" in str(i) for i in second.issues)


def test_shipped_quality_month_schedule(tmp_path: Path) -> None:
    templates = write_templates(tmp_path / "templates")
    catalog = catalog_of(REPO / "schedules", templates)
    assert not catalog.issues, [str(i) for i in catalog.issues]
    jobs = catalog.jobs
    assert all(j.timezone == "Asia/Shanghai" for j in jobs.values())
    after = datetime(2011, 8, 1, tzinfo=UTC)

    def local(key: str, n: int = 100) -> list[datetime]:
        return [
            t.astimezone(SH).replace(tzinfo=None)
            for t in upcoming(jobs[f"quality-month-2011:{key}"], after, n)
        ]

    blast = local("public-service-0831", 2)
    assert blast == [datetime(2011, 8, 31, 9, 0), datetime(2012, 8, 31, 9, 0)]  # yearly
    assert jobs["quality-month-2011:public-service-0831"].lists == ("public",)
    days = local("daily-slogan")
    assert days == [datetime(2011, 9, d, 9, 0) for d in range(1, 31)]
    assert local("machinery-slogan") == [datetime(2011, 9, d, 10, 0) for d in (5, 12, 19, 26)]
    assert jobs["quality-month-2011:machinery-slogan"].lists == ("machinery",)
    assert len(jobs["quality-month-2011:machinery-slogan"].pool.slogans) == 3
    assert local("food-lab-open-day") == [datetime(2011, 9, 9, 8, 30)]
    assert local("summary-reminder") == [datetime(2011, 10, 24, 10, 0), datetime(2011, 10, 28, 10, 0)]
    assert jobs["quality-month-2011:summary-reminder"].lists == ("bureau-contacts",)


def test_cli_check_list_and_preview(env, cli) -> None:  # type: ignore[no-untyped-def]
    schedules, _ = env
    (schedules / "q.toml").write_text(
        (REPO / "schedules" / "quality-month-2011.toml").read_text("utf-8"), "utf-8"
    )
    result = cli("schedule", "check")
    assert result.code == 0, result.err
    assert "quality-month-2011, 5 job(s)" in result.out

    listing = cli("schedule", "list", "--json")
    assert listing.code == 0
    by_key = {j["job"]: j for j in listing.json()["jobs"]}
    blast = by_key["quality-month-2011:public-service-0831"]
    assert blast["next_fire_local"].endswith("-08-31T09:00:00+08:00")
    assert blast["next_fire"].endswith("-08-31T01:00:00+00:00")
    assert by_key["quality-month-2011:daily-slogan"]["next_fire"] is None  # September 2011 is over
    assert by_key["quality-month-2011:daily-slogan"]["pool"]["size"] == 10

    preview = cli("schedule", "preview", "daily-slogan", "--from", "2011-09-01", "--count", "12", "--json")
    assert preview.code == 0, preview.err
    fires = preview.json()["fires"]
    general = (REPO / "templates" / "slogans" / "general.txt").read_text("utf-8").split("\n")
    general = [s.strip() for s in general if s.strip()]
    assert [f["at_local"][:16] for f in fires] == [f"2011-09-{d:02d}T09:00" for d in range(1, 13)]
    assert [f["slogan"] for f in fires] == general + general[:2]
    assert fires[0]["body"] == f"【国家质检总局】{general[0]} 回TD退订"
    assert fires[0]["encoding"] == "UCS-2" and fires[0]["segments"] == 1

    text = cli("schedule", "preview", "quality-month-2011:food-lab-open-day", "--from", "2011-09-01")
    assert text.code == 0
    assert "2011-09-09 08:30 CST" in text.out and "9月9日食品检测实验室开放日" in text.out


def test_cli_check_fails_with_one_line_per_error(env, cli) -> None:  # type: ignore[no-untyped-def]
    schedules, _ = env
    write_campaign(schedules, "a.toml", GOOD)
    write_campaign(schedules, "b.toml", GOOD.replace('"good"', '"b"').replace("hour = 9", 'hour = "x"'))
    result = cli("schedule", "check")
    assert result.code == 1
    assert "ok    " in result.out and "a.toml" in result.out
    assert "b.toml: job 'morning': trigger.hour:" in result.err
    assert "Traceback" not in result.err
    data = cli("schedule", "check", "--json")
    assert data.code == 1
    assert data.json()["errors"][0]["field"] == "trigger.hour"
    assert data.json()["errors"][0]["job"] == "morning"
    # the good campaign is still listed and previewable
    listing = cli("schedule", "list", "--json")
    assert listing.code == 0 and [j["job"] for j in listing.json()["jobs"]] == ["good:morning"]
    missing = cli("schedule", "preview", "nope")
    assert missing.code == 1 and "no job 'nope'" in missing.err
