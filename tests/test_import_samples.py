"""The sample files in recipients/ import as documented (docs/formats-csv.md, docs/recipients.md)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SAMPLES = REPO / "recipients"


def test_public_sample_is_a_gbk_excel_export_showing_every_case(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    raw = (SAMPLES / "public-sample.csv").read_bytes()
    raw.decode("gbk")  # an Excel export from a Chinese operator: GBK, not UTF-8
    assert not raw.startswith(b"\xef\xbb\xbf")
    result = cli("recipients", "import", SAMPLES / "public-sample.csv", "--list", "public", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["encoding"] == "gb18030" and report["phone_column"] == "手机号码"
    assert report["attributes"] == ["性别", "城市", "单位"]
    assert (report["rows"], report["imported"], report["duplicates"], report["rejected"]) == (40, 29, 3, 8)
    assert report["rejected_by_reason"] == {
        "empty": 1,
        "excel_scientific": 1,
        "invalid": 2,
        "landline": 2,
        "not_mobile": 1,
        "too_short": 1,
    }
    members = cli("lists", "show", "public", "--limit", "0", "--json").json()["members"]
    phones = [m["phone"] for m in members]
    assert phones[:12] == [f"+86138001380{i:02d}" for i in range(12)]  # file order, every format
    assert all(p.startswith("+8613800138") for p in phones)


def test_bureau_and_machinery_samples_import_cleanly_into_their_lists(workdir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    for name, list_name, rows in (
        ("bureau-contacts.csv", "bureau-contacts", 12),
        ("machinery-enterprises.csv", "machinery", 8),
    ):
        # A bare file name is also looked up in the recipients folder (BROADCASTER_RECIPIENTS_DIR).
        result = cli("recipients", "import", name, "--list", list_name, "--json")
        assert result.code == 0, result.err
        report = result.json()
        assert (report["rows"], report["imported"], report["rejected"]) == (rows, rows, 0), name
    bureau = cli("lists", "show", "bureau-contacts", "--json").json()["members"]
    assert bureau[0]["name"] == "赵建国" and bureau[0]["attributes"] == {
        "province": "北京市",
        "title": "质量处处长",
    }
    machinery = cli("lists", "show", "machinery", "--json").json()["members"]
    assert machinery[0]["name"] == "高建军" and machinery[0]["attributes"]["企业名称"] == "沈阳机床集团"
    assert {x["name"]: x["size"] for x in cli("lists", "--json").json()} == {
        "bureau-contacts": 12,
        "machinery": 8,
    }
