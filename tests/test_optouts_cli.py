"""``broadcaster optout`` through the CLI, and opted-out imported recipients never being sent to."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from import_helpers import read_rejects, table_counts, write_csv

from broadcaster.clock import ManualClock
from broadcaster.db import open_database, reading
from broadcaster.models import Action
from broadcaster.runs import counts_by_status, create_run, materialise
from broadcaster.templating import TemplateStore


def _actions(name: str) -> list[dict]:
    engine = open_database(os.environ["BROADCASTER_DATABASE_URL"])
    try:
        with reading(engine) as conn:
            t = Action.__table__
            rows = conn.execute(sa.select(t).where(t.c.action == name).order_by(t.c.id)).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def test_add_list_remove_normalise_and_record_in_the_trail(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("optout", "list").out.startswith("no opted-out numbers")
    added = cli("optout", "add", "１３８ ００１３ ８０００", "--reason", "回TD退订", "--json")
    assert added.code == 0 and added.json() == {"phone": "+8613800138000", "added": True}
    again = cli("optout", "add", "+86 138-0013-8000")
    assert again.code == 0 and "already opted out" in again.out
    assert cli("optout", "add", "010-12345678", "--json").json()["added"] is True  # any valid number

    listed = cli("optout", "list", "--json").json()
    assert [x["phone"] for x in listed] == ["+8613800138000", "+861012345678"]
    assert set(listed[0]) == {"phone", "source", "reason", "actor", "created_at"}
    assert (listed[0]["source"], listed[0]["reason"], listed[0]["actor"]) == (
        "operator",
        "回TD退订",
        "tester",
    )

    removed = cli("optout", "remove", "13800138000", "--reason", "asked again", "--json")
    assert removed.json() == {"phone": "+8613800138000", "removed": True}
    assert cli("optout", "remove", "13800138000", "--json").json()["removed"] is False
    assert [x["phone"] for x in cli("optout", "list", "--json").json()] == ["+861012345678"]

    assert [a["details"]["phone"] for a in _actions("optout.added")] == ["+8613800138000", "+861012345678"]
    removal = _actions("optout.removed")
    assert [(a["details"]["phone"], a["details"]["reason"], a["actor"]) for a in removal] == [
        ("+8613800138000", "asked again", "tester")
    ]


def test_invalid_numbers_are_refused_with_one_line(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    for bad in ("12", "1.38001E+10", "hello"):
        result = cli("optout", "add", bad)
        assert result.code == 1 and result.out == ""
        assert len(result.err.strip().splitlines()) == 1 and "not a valid phone number" in result.err


def test_import_opts_out_every_valid_number_in_batches(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cli("optout", "add", "13800138001")
    path = workdir / "stop.csv"
    path.write_text("13800138000\n+86 138 0013 8001\n12\n138 0013 8000\n010-12345678\n", encoding="utf-8")
    dry = cli("optout", "import", path, "--dry-run", "--json").json()
    assert (dry["imported"], dry["duplicates"], dry["rejected"], dry["batch"]) == (2, 2, 1, None)
    before = table_counts()
    assert cli("optout", "import", path, "--dry-run").code == 0
    assert table_counts() == before

    report = cli(
        "optout", "import", path, "--reason", "TD replies", "--rejects", workdir / "r.csv", "--json"
    ).json()
    assert report["kind"] == "optouts" and report["list"] is None
    assert (report["rows"], report["imported"], report["rejected"]) == (5, 2, 1)
    assert (report["duplicates_in_file"], report["already_stored"]) == (1, 1)
    assert [(r["row"], r["value"], r["reason"]) for r in read_rejects(workdir / "r.csv")] == [
        ("3", "12", "too_short")
    ]
    listed = {x["phone"]: x for x in cli("optout", "list", "--json").json()}
    assert set(listed) == {"+8613800138000", "+8613800138001", "+861012345678"}
    assert (listed["+8613800138000"]["source"], listed["+8613800138000"]["reason"]) == (
        "import",
        "TD replies",
    )
    assert listed["+8613800138001"]["source"] == "operator"  # already opted out: untouched

    added = [a["details"] for a in _actions("optout.added")]
    assert [(d["phone"], d["source"], d.get("batch")) for d in added[1:]] == [
        ("+8613800138000", "import", report["batch"]),
        ("+861012345678", "import", report["batch"]),
    ]
    summary = _actions("optouts.imported")
    assert len(summary) == 1 and summary[0]["details"]["batch"] == report["batch"]

    again = cli("optout", "import", path, "--json").json()
    assert again["imported"] == 0 and again["unchanged"] is True
    assert again["previous_batch"]["batch"] == report["batch"]


def test_opted_out_imported_recipients_are_suppressed_in_a_run(workdir: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [["手机号码", "姓名"], ["13800138000", "张伟"], ["13800138001", "王芳"], ["13800138002", "李娜"]]
    assert (
        cli(
            "recipients", "import", write_csv(workdir / "a.csv", rows, encoding="gbk"), "--list", "public"
        ).code
        == 0
    )
    assert cli("optout", "add", "13800138001").code == 0
    listed = cli("lists", "--json").json()
    assert (listed[0]["size"], listed[0]["opted_out"]) == (3, 1)

    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "hi.j2").write_text("【质量月】{{ name }}您好", encoding="utf-8")
    store = TemplateStore(tmp_path / "tpl")
    clock = ManualClock(datetime(2011, 8, 31, 1, tzinfo=UTC))
    engine = open_database(os.environ["BROADCASTER_DATABASE_URL"])
    try:
        ref = create_run(
            engine,
            template="hi",
            list_names=["public"],
            variables={},
            clock=clock,
            actor="t",
            timezone="Asia/Shanghai",
            store=store,
        )
        assert materialise(engine, ref.id, store=store, clock=clock) == 3
        with reading(engine) as conn:
            assert counts_by_status(conn, ref.id) == {"queued": 2, "suppressed": 1}
    finally:
        engine.dispose()
