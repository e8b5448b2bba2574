"""``broadcaster recipients import`` and ``lists`` through the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from import_helpers import read_rejects, table_counts, write_csv

from broadcaster.db import open_database
from broadcaster.models import Action

HEADER = ["手机号码", "姓名", "城市", "单位"]

# Every Excel artefact and written form, duplicates and bad rows; row 1 is the header.
ROWS = [
    HEADER,
    ["13800138000", "张伟", "北京", "质监局"],  # 2 plain
    ["+86 138 0013 8001", "王芳", "上海", "电气集团"],  # 3
    ["0086-138-0013-8002", "李娜", "天津", ""],  # 4
    ["8613800138003", "刘洋", "重庆", ""],  # 5
    ["１３８００１３８００４", "陈静", "广州", ""],  # 6 full-width
    ["'13800138005", "杨磊", "杭州", ""],  # 7 Excel text prefix
    ['="13800138006"', "赵敏", "南京", ""],  # 8 Excel formula
    ["13800138007.0", "黄勇", "武汉", ""],  # 9 float cell
    ["13800138000", "张伟", "北京", "质监局"],  # 10 repeat of row 2
    ["138 0013 8001", "王芳二", "上海", ""],  # 11 row 3 written another way (first row wins)
    ["010-62345678", "马明", "北京", ""],  # 12 landline
    ["12345", "胡平", "", ""],  # 13 too short
    ["15400138012", "郭刚", "", ""],  # 14 154 prefix
    ["1.38001E+10", "何桂英", "", ""],  # 15 Excel scientific notation
    ["", "林华", "福州", ""],  # 16 no number
]
EXPECTED_REJECTS = [
    ("12", "010-62345678", "landline"),
    ("13", "12345", "too_short"),
    ("14", "15400138012", "invalid"),
    ("15", "1.38001E+10", "excel_scientific"),
    ("16", "", "empty"),
]
JSON_KEYS = {
    "rows", "imported", "updated", "duplicates", "rejected", "list", "batch", "added_to_list", "encoding",
    "sha256", "dry_run", "rejects_file", "duplicates_in_file", "already_stored", "rejected_by_reason",
    "list_created", "unchanged", "previous_batch", "list_size", "list_opted_out", "first_rejects", "file",
    "kind", "phone_column", "attributes", "updated",
}  # fmt: skip


def _import(cli, path: Path, *args: str):  # type: ignore[no-untyped-def]
    result = cli("recipients", "import", path, *args, "--json")
    assert result.code == 0, result.err
    return result.json()


def test_gbk_excel_export_is_imported_with_every_artefact_normalised(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(workdir / "public.csv", ROWS, encoding="gbk")
    report = _import(cli, path, "--list", "public", "--rejects", workdir / "rejects.csv")
    assert set(report) == JSON_KEYS
    assert report["encoding"] == "gb18030"
    assert report["list"] == "public" and report["list_created"] is True
    assert isinstance(report["batch"], int) and report["dry_run"] is False
    assert (
        report["rows"],
        report["imported"],
        report["updated"],
        report["duplicates"],
        report["rejected"],
    ) == (
        15,
        8,
        0,
        2,
        5,
    )
    assert report["duplicates_in_file"] == 2 and report["already_stored"] == 0
    assert report["added_to_list"] == 8 and report["list_size"] == 8
    assert report["rejected_by_reason"] == {
        "empty": 1,
        "excel_scientific": 1,
        "invalid": 1,
        "landline": 1,
        "too_short": 1,
    }
    assert report["phone_column"] == "手机号码" and report["attributes"] == ["城市", "单位"]

    rejects = read_rejects(workdir / "rejects.csv")
    assert [(r["row"], r["value"], r["reason"]) for r in rejects] == EXPECTED_REJECTS
    assert "Excel scientific notation" in rejects[3]["message"]

    shown = cli("lists", "show", "public", "--json").json()
    members = {m["phone"]: m for m in shown["members"]}
    assert sorted(members) == [f"+861380013800{i}" for i in range(8)]
    assert members["+8613800138000"]["attributes"] == {"城市": "北京", "单位": "质监局"}
    assert members["+8613800138001"]["name"] == "王芳"  # the first row of a number wins
    assert members["+8613800138002"]["attributes"] == {"城市": "天津"}  # empty cells are not stored

    stored = cli("recipients", "rejects", str(report["batch"]), "--json").json()
    assert [(str(r["row"]), r["value"], r["reason"]) for r in stored] == EXPECTED_REJECTS


def test_reimporting_the_same_file_changes_nothing_and_says_so(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(workdir / "public.csv", ROWS, encoding="gbk")
    first = _import(cli, path, "--list", "public")
    before = table_counts()
    again = _import(cli, path, "--list", "public")
    assert (again["imported"], again["updated"], again["added_to_list"]) == (0, 0, 0)
    assert again["unchanged"] is True and again["list_created"] is False
    assert again["duplicates"] == 10 and again["already_stored"] == 8 and again["rejected"] == 5
    assert again["previous_batch"]["batch"] == first["batch"]
    assert again["sha256"] == first["sha256"]
    after = table_counts()
    # The attempt is recorded (who re-imported what, when); recipients and lists are untouched.
    assert after["import_batches"] == before["import_batches"] + 1
    for table in ("recipients", "lists", "list_members"):
        assert after[table] == before[table]

    human = cli("recipients", "import", path, "--list", "public")
    assert human.code == 0
    assert f"nothing changed: this file was imported before as batch {again['batch']}" in human.out


def test_duplicates_across_files_and_changed_details_are_merged(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _import(cli, write_csv(workdir / "a.csv", ROWS[:4]), "--list", "public")
    second = [
        ["mobile", "name", "城市", "职务"],
        ["+8613800138000", "张伟", "北京", ""],  # same details: already stored
        ["13800138001", "王芳芳", "", "科长"],  # new name, new attribute, empty city kept
        ["13800138009", "新人", "", ""],  # new
    ]
    report = _import(cli, write_csv(workdir / "b.csv", second), "--list", "bureau")
    assert (report["imported"], report["updated"], report["already_stored"], report["duplicates"]) == (
        1,
        1,
        1,
        1,
    )
    assert report["added_to_list"] == 3 and report["list_created"] is True
    members = {m["phone"]: m for m in cli("lists", "show", "bureau", "--json").json()["members"]}
    assert members["+8613800138001"]["name"] == "王芳芳"
    assert members["+8613800138001"]["attributes"] == {"城市": "上海", "单位": "电气集团", "职务": "科长"}
    lists = {x["name"]: x for x in cli("lists", "--json").json()}
    assert {n: x["size"] for n, x in lists.items()} == {"public": 3, "bureau": 3}
    assert set(lists["public"]) == {"name", "description", "size", "opted_out", "created_at"}


def test_dry_run_reports_and_writes_nothing(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = write_csv(workdir / "public.csv", ROWS, encoding="gbk")
    assert cli("lists").code == 0  # creates the schema
    before = table_counts()
    report = _import(cli, path, "--list", "public", "--dry-run", "--rejects", workdir / "r.csv")
    assert report["dry_run"] is True and report["batch"] is None
    assert (report["imported"], report["rejected"], report["added_to_list"]) == (8, 5, 8)
    assert report["list_created"] is True
    assert table_counts() == before
    assert len(read_rejects(workdir / "r.csv")) == 5  # the rejects file is still written: check first

    _import(cli, path, "--list", "public")
    changed = write_csv(
        workdir / "changed.csv", [HEADER, ["13800138000", "张大伟", "", ""], ["13800138099", "", "", ""]]
    )
    before = table_counts()
    report = _import(cli, changed, "--list", "public", "--dry-run")
    assert (report["imported"], report["updated"], report["added_to_list"]) == (1, 1, 1)
    assert table_counts() == before


UNPROCESSABLE = {
    "no-phone-column": (b"name,city\n\xe5\xbc\xa0,Beijing\n", "no phone column"),
    "binary-junk": (bytes(range(256)) * 4, "cannot decode"),
    "nul-bytes": (b"phone,name\n13800138000,a\x00b\n", "binary data"),
    "empty": (b"", "is empty"),
    "blank-lines": (b"\n\n", "no rows"),
    "header-only": ("手机号码,姓名\n".encode(), "no data rows"),
    "xlsx": (b"PK\x03\x04\x14\x00\x06\x00", "Excel workbook"),
}


def test_a_file_that_cannot_be_processed_fails_with_one_line_and_writes_nothing(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _import(cli, write_csv(workdir / "ok.csv", ROWS[:3]), "--list", "public")
    before = table_counts()
    for case, (content, message) in UNPROCESSABLE.items():
        bad = workdir / f"{case}.csv"
        bad.write_bytes(content)
        result = cli("recipients", "import", bad, "--list", "public", "--rejects", workdir / "r.csv")
        assert result.code == 1, case
        assert result.out == "", case
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, result.err)
        assert f"{case}.csv" in lines[0], case
        assert table_counts() == before, case
        assert not (workdir / "r.csv").exists(), case


def test_missing_file_and_unknown_options_fail_cleanly(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("recipients", "import", workdir / "nope.csv", "--list", "x")
    assert result.code == 1 and "cannot read" in result.err and "nope.csv" in result.err
    path = write_csv(workdir / "a.csv", ROWS[:3])
    result = cli("recipients", "import", path, "--list", "x", "--encoding", "klingon")
    assert result.code == 1 and "unknown encoding" in result.err
    result = cli("recipients", "import", path, "--list", "x", "--region", "XX")
    assert result.code == 1 and "unknown region" in result.err
    result = cli("recipients", "import", path, "--list", " x")
    assert result.code == 1 and "list name" in result.err
    assert cli("recipients", "import", path).code == 2  # --list is required


def test_utf8_with_bom_semicolons_and_english_headers(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rows = [
        ["Name", "Phone Number", "Province"],
        ["Zhang", "13800138000", "Hebei"],
        ["Li", "13800138001", ""],
    ]
    report = _import(cli, write_csv(workdir / "a.csv", rows, bom=True, delimiter=";"), "--list", "x")
    assert report["encoding"] == "utf-8-sig" and report["imported"] == 2
    assert report["phone_column"] == "Phone Number" and report["attributes"] == ["Province"]
    members = cli("lists", "show", "x", "--json").json()["members"]
    assert members[0]["name"] == "Zhang" and members[0]["attributes"] == {"Province": "Hebei"}

    # Excel's "Unicode text": UTF-16 with BOM, tab-separated.
    unicode_text = [["手机号码", "姓名"], ["13800138002", "王五"]]
    report = _import(
        cli, write_csv(workdir / "u.txt", unicode_text, encoding="utf-16", delimiter="\t"), "--list", "x"
    )
    assert report["encoding"] == "utf-16" and report["imported"] == 1


def test_phone_column_option_landlines_and_tab_separated(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rows = [["单位", "办公电话", "备用"], ["质监局", "010-62345678", "13800138000"]]
    path = write_csv(workdir / "a.tsv", rows, delimiter="\t")
    result = cli("recipients", "import", path, "--list", "x")
    assert result.code == 1 and "no phone column" in result.err and "--phone-column" in result.err
    result = cli("recipients", "import", path, "--list", "x", "--phone-column", "备用", "--json")
    assert result.json()["imported"] == 1
    report = _import(cli, path, "--list", "y", "--phone-column", "办公电话", "--allow-landline")
    assert report["imported"] == 1 and report["rejected"] == 0
    result = cli("recipients", "import", path, "--list", "x", "--phone-column", "nope")
    assert result.code == 1 and "no column 'nope'" in result.err


def test_headerless_single_column_and_multiline_cells_keep_spreadsheet_row_numbers(
    workdir: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    (workdir / "numbers.csv").write_text("13800138000\n12345\n\n13800138001\n", encoding="utf-8")
    report = _import(cli, workdir / "numbers.csv", "--list", "x", "--rejects", workdir / "r1.csv")
    assert (report["rows"], report["imported"], report["rejected"]) == (3, 2, 1)
    assert [r["row"] for r in read_rejects(workdir / "r1.csv")] == ["2"]

    text = 'phone,name,note\n13800138002,"张\n三",x\n1.5E+10,b,"line\nbreak"\n13800138003,c,d,extra\n'
    (workdir / "multi.csv").write_text(text, encoding="utf-8")
    report = _import(cli, workdir / "multi.csv", "--list", "x", "--rejects", workdir / "r2.csv")
    rejects = read_rejects(workdir / "r2.csv")
    assert [(r["row"], r["reason"]) for r in rejects] == [("3", "excel_scientific"), ("4", "extra_fields")]


def test_import_is_recorded_in_batches_and_the_action_trail(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    report = _import(cli, write_csv(workdir / "a.csv", ROWS, encoding="gbk"), "--list", "public")
    batches = cli("recipients", "batches", "--json").json()
    assert len(batches) == 1
    batch = batches[0]
    assert batch["id"] == report["batch"] and batch["list"] == "public" and batch["kind"] == "recipients"
    assert batch["sha256"] == report["sha256"] and batch["actor"] == "tester" and batch["host"]
    assert (batch["rows"], batch["imported"], batch["rejected"], batch["duplicates"]) == (15, 8, 5, 2)
    assert batch["finished_at"] >= batch["started_at"]
    assert batch["file_name"].endswith("a.csv")

    engine = open_database(os.environ["BROADCASTER_DATABASE_URL"])
    with engine.connect() as conn:
        actions = conn.execute(sa.select(Action.__table__).order_by(Action.__table__.c.id)).mappings().all()
    engine.dispose()
    assert [a["action"] for a in actions] == ["list.created", "recipients.imported"]
    details = actions[1]["details"]
    assert details["batch"] == report["batch"] and details["imported"] == 8 and details["list"] == "public"
    assert actions[1]["actor"] == "tester"


def test_lists_remove_member_and_human_output(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("lists").out.startswith("no lists yet")
    human = cli(
        "recipients", "import", write_csv(workdir / "a.csv", ROWS, encoding="gbk"), "--list", "public"
    )
    assert human.code == 0
    assert "row 15: '1.38001E+10': excel_scientific" in human.out
    result = cli("lists", "remove-member", "public", "138 0013 8000", "--json")
    assert result.json() == {"list": "public", "phone": "+8613800138000", "removed": True}
    assert cli("lists", "remove-member", "public", "13800138000", "--json").json()["removed"] is False
    assert cli("lists", "show", "public", "--json").json()["size"] == 7
    assert cli("lists", "show", "nope").code == 1
    assert "public  7 members" in cli("lists").out
