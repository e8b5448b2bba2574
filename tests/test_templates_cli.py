"""``broadcaster templates list|check|render`` through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.models import ListMember, Recipient, RecipientList

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["food-lab-open-day", "public-service-0831", "slogan", "summary-reminder"]
NOW = datetime(2011, 8, 20, tzinfo=UTC)

# Only the SQLite half of the workdir fixture, for commands that never touch the database.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def seed_list(db_url: str, list_name: str, recipients: list[dict[str, Any]]) -> None:
    """A list and its recipients, inserted with Core (independent of the import command)."""
    engine = db.open_database(db_url)
    try:
        with db.writing(engine) as conn:
            list_id = conn.execute(
                sa.insert(RecipientList.__table__)
                .values(name=list_name, created_at=NOW)
                .returning(RecipientList.__table__.c.id)
            ).scalar_one()
            ids = []
            for r in recipients:
                row = {"name": None, "attributes": {}, **r, "created_at": NOW, "updated_at": NOW}
                ids.append(
                    conn.execute(
                        sa.insert(Recipient.__table__).values(**row).returning(Recipient.__table__.c.id)
                    ).scalar_one()
                )
            if ids:
                conn.execute(
                    sa.insert(ListMember.__table__),
                    [{"list_id": list_id, "recipient_id": i, "added_at": NOW} for i in ids],
                )
    finally:
        engine.dispose()


@pytest.fixture
def custom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    """A templates folder of the test's own, with the shipped slogan pools."""
    folder = tmp_path / "custom-templates"
    (folder / "slogans").mkdir(parents=True)
    for pool in ("general", "machinery"):
        src = REPO / "templates" / "slogans" / f"{pool}.txt"
        (folder / "slogans" / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(folder))
    return folder


def write(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.j2").write_text(source, encoding="utf-8")


# --- templates list ---------------------------------------------------------------------------


@sqlite_only
def test_list_shipped_templates(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("templates", "list", "--json")
    assert res.code == 0, res.err
    rows = {r["name"]: r for r in res.json()}
    assert sorted(rows) == SHIPPED
    for name, row in rows.items():
        assert set(row) == {"name", "sha256", "encoding", "segments", "characters", "error"}
        assert row["sha256"] == hashlib.sha256((REPO / "templates" / f"{name}.j2").read_bytes()).hexdigest()
    assert rows["public-service-0831"]["encoding"] == "UCS-2"
    assert rows["public-service-0831"]["segments"] == 1
    assert rows["slogan"]["encoding"] is None  # needs the run variable slogan
    assert rows["slogan"]["segments"] is None
    assert "slogan" in rows["slogan"]["error"]
    text = cli("templates", "list")
    assert text.code == 0
    assert "public-service-0831" in text.out


@sqlite_only
def test_list_shows_broken_and_recipient_dependent_templates(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "broken", "{% if x %}")
    write(custom, "personal", "【质检】{{ name }}您好")
    write(custom, "plain", "Quality month: Sept 2011")
    rows = {r["name"]: r for r in cli("templates", "list", "--json").json()}
    assert rows["broken"]["encoding"] is None
    assert rows["broken"]["sha256"] == hashlib.sha256(b"{% if x %}").hexdigest()
    assert rows["personal"]["encoding"] is None
    assert (rows["plain"]["encoding"], rows["plain"]["segments"], rows["plain"]["characters"]) == (
        "GSM-7",
        1,
        24,
    )


# --- templates check --------------------------------------------------------------------------


@sqlite_only
def test_check_every_shipped_template_is_clean(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("templates", "check", "--json")
    assert res.code == 0, res.out + res.err
    results = {r["template"]: r for r in res.json()}
    assert sorted(results) == SHIPPED
    for name, r in results.items():
        assert r["ok"] is True, (name, r)
        assert r["errors"] == [] and r["warnings"] == [], (name, r)
        assert (r["encoding"], r["segments"]) == ("UCS-2", 1), (name, r)
        assert r["characters"] <= 70
    assert results["slogan"]["variables"] == ["slogan"]
    assert results["public-service-0831"]["variables"] == []
    assert "province" in results["summary-reminder"]["variables"]


@sqlite_only
def test_check_reports_syntax_error_with_file_and_line(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "good", "【质检】你好")
    write(custom, "bad", "【质检】\n{{ name \n")
    res = cli("templates", "check", "--json")
    assert res.code == 1
    results = {r["template"]: r for r in res.json()}
    assert results["good"]["ok"] is True
    assert results["bad"]["ok"] is False
    assert f"{custom / 'bad.j2'}:2:" in results["bad"]["errors"][0]
    text = cli("templates", "check", "bad")
    assert text.code == 1
    assert "bad.j2:2:" in text.out


@sqlite_only
def test_check_length_segments_and_signature(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "long", "【质检】" + "好" * 80)
    write(custom, "huge", "A" * 1601)
    write(custom, "unsigned", "质量月快乐")
    write(custom, "signed-at-end", "质量月快乐【质检】")
    write(custom, "empty", "{# nothing #}\n")
    results = {r["template"]: r for r in cli("templates", "check", "--json").json()}
    assert results["long"]["ok"] is True
    assert results["long"]["segments"] == 2
    assert any("2 segments" in w for w in results["long"]["warnings"])
    assert results["huge"]["ok"] is False
    assert any("1601 characters" in e and "21617" in e for e in results["huge"]["errors"])
    assert any("signature" in w for w in results["unsigned"]["warnings"])
    assert results["signed-at-end"]["warnings"] == []
    assert results["empty"]["ok"] is False
    assert cli("templates", "check", "long").code == 0  # warnings only
    assert cli("templates", "check", "huge").code == 1


@sqlite_only
def test_check_without_list_warns_about_unknown_variables(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "invite", "【质检】{{ name }}，请到{{ venue }}参加开放日")
    res = cli("templates", "check", "invite", "--json")
    assert res.code == 0
    (r,) = res.json()
    assert r["variables"] == ["name", "venue"]
    assert r["errors"] == []
    assert any("'venue' is undefined" in w for w in r["warnings"])
    assert r["segments"] is None
    res = cli("templates", "check", "invite", "--json", "--var", "venue=北京")
    (r,) = res.json()
    assert (r["warnings"], r["segments"]) == ([], 1)


@sqlite_only
def test_check_sandbox_violation_is_an_error(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "evil", "{{ ''.__class__.__mro__ }}")
    res = cli("templates", "check", "evil", "--json")
    assert res.code == 1
    assert "unsafe" in res.json()[0]["errors"][0]


@sqlite_only
def test_check_slogan_template_over_every_slogan(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "shout", "【质检】{{ slogan }}" + "！" * 46)
    (r,) = cli("templates", "check", "shout", "--json").json()
    # 4 + 46 + 21: only the longest slogan passes 70 characters, and the warning names it
    assert r["segments"] == 2
    (warning,) = r["warnings"]
    assert "2 segments" in warning and "全员全过程全方位参与" in warning
    (r,) = cli("templates", "check", "shout", "--json", "--var", "slogan=好").json()
    assert (r["segments"], r["warnings"]) == (1, [])


@sqlite_only
def test_check_usage_errors(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(custom, "a", "x")
    res = cli("templates", "check", "nope")
    assert res.code == 1
    assert "'nope' not found" in res.err
    res = cli("templates", "check", "--var", "send_date=2011-09-01")
    assert res.code == 2
    assert "send_date" in res.err
    res = cli("templates", "check", "--var", "novalue")
    assert res.code == 2


def test_check_against_list_attributes(cli, custom: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    seed_list(
        db_url,
        "bureaus",
        [
            {"phone": "+8613800138001", "name": "李四", "attributes": {"province": "广东省"}},
            {
                "phone": "+8613800138002",
                "name": "王五",
                "attributes": {"province": "四川省", "venue": "成都"},
            },
            {"phone": "+8613800138003", "name": "赵六", "attributes": {}},
        ],
    )
    write(custom, "needs-province", "【质检】{{ name }}（{{ province }}）您好")
    write(custom, "needs-venue", "【质检】{{ venue_hall }}见")
    write(
        custom, "guarded", "【质检】{{ name }}{% if province is defined %}（{{ province }}）{% endif %}您好"
    )
    res = cli("templates", "check", "--list", "bureaus", "--json")
    assert res.code == 1
    results = {r["template"]: r for r in res.json()}

    (error,) = results["needs-province"]["errors"]
    assert "'province' is undefined" in error
    assert "1 of 3 recipients of list 'bureaus'" in error
    assert "+8613800138003" in error

    (error,) = results["needs-venue"]["errors"]
    assert "'venue_hall' is undefined" in error and "3 of 3" in error

    assert results["guarded"]["ok"] is True
    assert results["guarded"]["warnings"] == []
    assert results["guarded"]["characters"] == len("【质检】李四（广东省）您好")  # the longest values

    res = cli("templates", "check", "needs-venue", "--list", "bureaus", "--var", "venue_hall=礼堂", "--json")
    assert res.code == 0
    assert res.json()[0]["warnings"] == []


def test_check_against_list_with_shipped_templates(cli, workdir: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    seed_list(
        db_url,
        "contacts",
        [
            {"phone": "+8613800138001", "name": "李四", "attributes": {"province": "内蒙古自治区"}},
            {"phone": "+8613800138002", "name": None, "attributes": {}},
        ],
    )
    res = cli("templates", "check", "--list", "contacts", "--json")
    assert res.code == 0, res.out + res.err
    results = {r["template"]: r for r in res.json()}
    assert all(r["ok"] for r in results.values())
    assert results["summary-reminder"]["segments"] == 1
    # nobody in the list has a venue: the invitation falls back to its text without one
    assert any("'venue'" in w for w in results["food-lab-open-day"]["warnings"])


def test_check_unknown_and_empty_lists(cli, custom: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    write(custom, "a", "【质检】{{ name }}")
    res = cli("templates", "check", "--list", "nope")
    assert res.code == 1
    assert "list 'nope' not found" in res.err
    seed_list(db_url, "empty", [])
    res = cli("templates", "check", "--list", "empty", "--json")
    assert res.code == 0
    assert any("no members" in w for w in res.json()[0]["warnings"])


# --- templates render -------------------------------------------------------------------------


@sqlite_only
def test_render_with_sample_recipient(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("templates", "render", "food-lab-open-day", "--date", "2011-09-05")
    assert res.code == 0, res.err
    assert res.out.startswith("【国家质检总局】张三您好！9月9日是“食品检测实验室开放日”")
    assert res.out.endswith("回TD退订\n")
    assert "sample recipient" in res.err
    res = cli(
        "templates", "render", "food-lab-open-day", "--date", "2011-09-09", "--var", "venue=北京市质检院"
    )
    assert "今天是“食品检测实验室开放日”" in res.out
    assert "地点：北京市质检院。回TD退订" in res.out


@sqlite_only
def test_render_json(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("templates", "render", "public-service-0831", "--json", "--date", "2011-08-31")
    assert res.code == 0, res.err
    out = res.json()
    assert {"body", "encoding", "segments", "characters"} <= set(out)
    assert out["body"].startswith("【国家质检总局】")
    assert "建设质量强国，共创美好生活" in out["body"]
    assert out["body"].endswith("回TD退订")
    assert (out["encoding"], out["segments"], out["characters"]) == ("UCS-2", 1, len(out["body"]))
    assert out["characters"] <= 70
    assert out["send_date"] == "2011-08-31"
    assert out["recipient"] is None


@sqlite_only
def test_render_dates_and_zone(cli, custom: Path) -> None:  # type: ignore[no-untyped-def]
    write(
        custom,
        "d",
        "{{ send_date | cn_date }} {{ send_date | cn_weekday }} {{ send_time.strftime('%H:%M') }}",
    )
    assert cli("templates", "render", "d", "--date", "2011-08-31").out == "2011年8月31日 星期三 00:00\n"
    assert cli("templates", "render", "d", "--date", "2011-08-31T09:30").out == "2011年8月31日 星期三 09:30\n"
    # an aware time is converted to the configured zone (Asia/Shanghai)
    assert (
        cli("templates", "render", "d", "--date", "2011-08-30T16:30+00:00").out
        == "2011年8月31日 星期三 00:30\n"
    )
    res = cli("templates", "render", "d", "--date", "31/08/2011")
    assert res.code == 2
    assert "--date" in res.err
    # default: today in the configured zone
    from zoneinfo import ZoneInfo

    before = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    out = cli("templates", "render", "d", "--json").json()["send_date"]
    after = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert out in {before.isoformat(), after.isoformat()}


@sqlite_only
def test_render_slogan_for_every_slogan_in_one_segment(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    slogans = []
    for pool in ("general", "machinery"):
        slogans += (REPO / "templates" / "slogans" / f"{pool}.txt").read_text(encoding="utf-8").splitlines()
    assert len(slogans) == 13
    for slogan in slogans:
        res = cli("templates", "render", "slogan", "--json", "--var", f"slogan={slogan}")
        assert res.code == 0, res.err
        out = res.json()
        assert out["body"] == f"【国家质检总局】2011年全国“质量月”宣传口号：{slogan}。回TD退订"
        assert (out["encoding"], out["segments"]) == ("UCS-2", 1)


@sqlite_only
def test_render_undefined_variable_fails_naming_it(cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("templates", "render", "slogan")
    assert res.code == 1
    assert res.out == ""
    assert "template 'slogan'" in res.err
    assert "'slogan' is undefined" in res.err


def test_render_for_recipient_from_database(cli, workdir: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    seed_list(
        db_url,
        "bureaus",
        [
            {"phone": "+8613800138001", "name": "李四", "attributes": {"province": "广东省"}},
            {"phone": "+8613800138002", "name": None, "attributes": {}},
        ],
    )
    seed_list(db_url, "others", [{"phone": "+8613900139000", "name": "王五"}])
    res = cli("templates", "render", "summary-reminder", "--recipient", "+8613800138001", "--json")
    assert res.code == 0, res.err
    out = res.json()
    assert (
        out["body"]
        == "【国家质检总局】李四同志：请于10月31日前将广东省“质量月”活动总结报送qualitymonth@aqsiq.gov.cn"
    )
    assert (out["recipient"], out["segments"]) == ("+8613800138001", 1)
    assert "sample" not in res.err
    # national format of the default region is accepted
    res = cli("templates", "render", "summary-reminder", "--recipient", "138 0013 8002")
    assert (
        res.out
        == "【国家质检总局】您好：请于10月31日前将本地区“质量月”活动总结报送qualitymonth@aqsiq.gov.cn\n"
    )
    # --list alone: the list's first member
    res = cli("templates", "render", "summary-reminder", "--list", "bureaus")
    assert "李四同志" in res.out
    assert "+8613800138001" in res.err
    # --recipient and --list: must be a member
    res = cli("templates", "render", "summary-reminder", "--recipient", "+8613900139000", "--list", "bureaus")
    assert res.code == 1
    assert "+8613900139000" in res.err and "bureaus" in res.err
    res = cli("templates", "render", "summary-reminder", "--recipient", "+8613700137000")
    assert res.code == 1
    assert "no recipient +8613700137000" in res.err
    res = cli("templates", "render", "summary-reminder", "--list", "nope")
    assert res.code == 1
    assert "list 'nope' not found" in res.err
