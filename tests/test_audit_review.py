"""Reviewing the record: the message log and its filters, one message's history, the trail, masked
numbers, exports (CSV/JSONL/XLSX, recorded, formula-safe), the HTML report, and retention."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from html import unescape
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_helpers import PHONES, materialised_run, seed_run

from broadcaster import db
from broadcaster.audit.masking import mask_phone, neutralise_cell
from broadcaster.models import Action

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _engine() -> sa.Engine:
    return db.open_database(os.environ["BROADCASTER_DATABASE_URL"])


def _actions(engine: sa.Engine, name: str) -> list[dict]:
    t = Action.__table__
    with db.reading(engine) as conn:
        return [
            dict(r) for r in conn.execute(sa.select(t).where(t.c.action == name).order_by(t.c.id)).mappings()
        ]


def test_mask_phone_hides_the_middle_and_keeps_the_country() -> None:
    assert mask_phone("+8613800138000") == "+86 138****8000"
    assert mask_phone("+15005550006") == "+1 50****0006"
    assert mask_phone("+442071838750") == "+44 20****8750"
    assert mask_phone("not a number: 12345") == "***45"
    assert neutralise_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert [neutralise_cell(v) for v in ("+86 1", "-1", "@SUM", "ok", 5)] == [
        "'+86 1",
        "'-1",
        "'@SUM",
        "ok",
        5,
    ]


def test_log_filters_by_run_campaign_status_phone_code_and_time(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seeded = seed_run(engine, tmp_path)
    materialised_run(engine, seeded)

    def ids(*args: str) -> list[int]:
        result = cli("audit", "log", "--json", *args)
        assert result.code == 0, result.err
        return [m["id"] for m in result.json()]

    assert len(ids()) == 12
    assert len(ids("--run", "1")) == 6 and len(ids("--campaign", "second")) == 6
    assert len(ids("--run", "1", "--status", "failed")) == 2
    assert len(ids("--status", "failed", "--status", "suppressed")) == 5
    [refused] = cli("audit", "log", "--json", "--error-code", "21211").json()
    assert refused["phone"] == "+1 50****0001" and refused["error_text"].startswith("The 'To' number")
    assert ids("--phone", "138 0013 8001") == ids("--phone", "8001") == ids("--phone", "+8613800138001")
    assert len(ids("--phone", "8001")) == 2
    # sent 09:02 Shanghai time; suppressed and unrenderable ones settled 09:01; run 2 written 09:05
    assert len(ids("--run", "1", "--since", "2011-08-31 09:02")) == 4
    assert len(ids("--run", "1", "--until", "2011-08-31T09:02:00+08:00")) == 2
    assert ids("--until", "2011-08-30") == []
    assert len(ids("--since", "2011-08-31", "--until", "2011-08-31")) == 12  # a date means the whole day
    bad = cli("audit", "log", "--status", "lost")
    assert bad.code == 2 and "status 'lost'" in bad.err
    assert cli("audit", "log", "--since", "yesterday").code == 2
    engine.dispose()


@SQLITE_ONLY
def test_unmasked_output_is_recorded_in_the_trail(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seed_run(engine, tmp_path)
    masked = cli("audit", "log", "--json", "--phone", "8001").json()
    assert masked[0]["phone"] == "+86 138****8001" and _actions(engine, "audit.unmasked") == []
    full = cli("audit", "log", "--json", "--phone", "8001", "--unmask").json()
    assert full[0]["phone"] == PHONES[1]
    [recorded] = _actions(engine, "audit.unmasked")
    assert recorded["actor"] == "tester" and recorded["details"]["filters"] == {"phone": "8001"}
    engine.dispose()


@SQLITE_ONLY
def test_show_gives_the_whole_history_of_a_message(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seed_run(engine, tmp_path)
    [sent] = cli("audit", "log", "--json", "--phone", PHONES[1]).json()
    history = cli("audit", "show", str(sent["id"]), "--json").json()
    assert history["message"]["phone"] == "+86 138****8001" and history["message"]["status"] == "delivered"
    assert [(e["from_status"], e["to_status"]) for e in history["events"]] == [
        (None, "queued"),
        ("queued", "sending"),
        ("sending", "sent"),
        ("sent", "delivered"),
    ]
    assert history["run"]["template_sha256"]
    assert [a["action"] for a in history["actions"]] == ["run.created", "run.started"]
    [suppressed] = cli("audit", "log", "--json", "--status", "suppressed").json()
    why = cli("audit", "show", str(suppressed["id"]), "--json").json()
    assert why["events"][0]["detail"] == {"reason": "opted out"}
    optout = [a for a in why["actions"] if a["action"] == "optout.added"]
    assert (
        optout
        and optout[0]["details"]["source"] == "reply"
        and optout[0]["details"]["phone"] == "+86 138****8003"
    )
    text = cli("audit", "show", str(sent["id"]))
    assert text.code == 0 and "sending -> sent" in text.out
    assert cli("audit", "show", "999").code == 1
    trail = cli("audit", "trail", "--json", "--action", "optout.").json()
    assert [a["details"]["phone"] for a in trail] == ["+86 138****8003"]
    engine.dispose()


def test_exports_mask_neutralise_and_are_recorded(workdir: Path, cli, tmp_path: Path) -> None:
    engine = _engine()
    seed_run(
        engine, tmp_path, names={1: '=HYPERLINK("http://evil")'}, template="{{ name }}：质量月{{ city }}"
    )
    out = tmp_path / "out"
    result = cli("audit", "export", "--format", "csv", "-o", out / "log.csv", "--run", "1", "--json")
    assert result.code == 0, result.err
    info = result.json()
    raw = (out / "log.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and info["rows"] == 6
    assert info["sha256"] == hashlib.sha256(raw).hexdigest()
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    first = next(r for r in rows if "HYPERLINK" in r["body"])
    assert first["body"].startswith("'=HYPERLINK") and first["phone"] == "'+86 138****8001"
    assert PHONES[1] not in raw.decode("utf-8-sig")
    [action] = _actions(engine, "audit.exported")
    assert action["details"]["unmasked"] is False and action["details"]["rows"] == 6
    assert action["details"]["filters"] == {"run_id": 1} and action["details"]["sha256"] == info["sha256"]

    unmasked = cli(
        "audit", "export", "--format", "jsonl", "-o", out / "log.jsonl", "--unmask", "--status", "failed"
    )
    assert unmasked.code == 0, unmasked.err
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {x["phone"] for x in lines} == {PHONES[4], PHONES[5]}
    assert _actions(engine, "audit.exported")[-1]["details"]["unmasked"] is True

    from openpyxl import load_workbook

    assert cli("audit", "export", "--format", "xlsx", "-o", out / "log.xlsx").code == 0
    sheet = load_workbook(out / "log.xlsx").active
    header = [c.value for c in sheet[1]]
    cells = {c.value: c for row in sheet.iter_rows(min_row=2) for c in row if isinstance(c.value, str)}
    body = next(v for v in cells if "HYPERLINK" in v)
    assert body.startswith("'=") and cells[body].data_type == "s"
    assert header[:5] == ["id", "run_id", "campaign_id", "recipient_id", "phone"]
    assert "'+86 138****8002" in cells

    trail = cli("audit", "export", "--what", "trail", "--format", "csv", "-o", out / "trail.csv")
    assert trail.code == 0
    trail_text = (out / "trail.csv").read_text(encoding="utf-8-sig")
    assert "optout.added" in trail_text and PHONES[3] not in trail_text
    assert cli("audit", "export", "--format", "pdf").code == 2
    assert len(_actions(engine, "audit.exported")) == 4
    engine.dispose()


@SQLITE_ONLY
def test_report_is_one_self_contained_html_file(workdir: Path, cli, tmp_path: Path, monkeypatch) -> None:
    engine = _engine()
    seed_run(engine, tmp_path)
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(tmp_path / "templates"))
    result = cli("audit", "report", "1", "-o", tmp_path / "r" / "run-1.html")
    assert result.code == 0, result.err
    html = unescape((tmp_path / "r" / "run-1.html").read_text(encoding="utf-8"))
    for needed in (
        "<svg",
        "Sends and outcomes over time",
        "21211",
        "opted out",
        "【质量月】{{ name }}",
        '"topic": "质量月"',
    ):
        assert needed in html, needed
    with db.reading(engine) as conn:
        sha = conn.exec_driver_sql("SELECT template_sha256 FROM runs WHERE id = 1").scalar_one()
    assert sha in html
    assert "0.15 CNY" in html  # 3 accepted one-segment messages at the default 0.05 per segment
    for external in ("<script", "<link", "src=", "@import", "url(", "https://"):
        assert external not in html, external
    assert _actions(engine, "audit.reported")[0]["run_id"] == 1
    # The report shows the template the run used (its snapshot), not what the file says today.
    for template in (tmp_path / "templates").glob("*.j2"):
        template.write_text("edited after the run {{ name }}", encoding="utf-8")
    assert cli("audit", "report", "1", "-o", tmp_path / "r" / "again.html").code == 0
    again = unescape((tmp_path / "r" / "again.html").read_text(encoding="utf-8"))
    assert "【质量月】{{ name }}" in again and "edited after the run" not in again
    assert cli("audit", "report", "42").code == 1
    engine.dispose()


def test_prune_archives_first_keeps_open_runs_and_the_chain_verifies(
    workdir: Path, cli, tmp_path: Path
) -> None:
    engine = _engine()
    seeded = seed_run(engine, tmp_path)
    open_run = materialised_run(engine, seeded)
    refused = cli("audit", "prune", "--before", "2999-01-01")
    assert refused.code == 1 and "retention period" in " ".join(refused.err.split())
    result = cli("audit", "prune", "--before", "2012-01-01", "--archive-dir", tmp_path / "archive", "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert info["counts"] == {"runs": 1, "messages": 6, "message_events": 17, "actions": 3}
    assert info["kept_runs"] == [open_run]
    archive = Path(info["archive"])
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == info["archive_sha256"]
    with gzip.open(archive, "rt", encoding="utf-8") as fh:
        lines = [json.loads(x) for x in fh]
    assert lines[0]["kind"] == "broadcaster-audit-archive"
    assert sum(1 for x in lines[1:] if x["table"] == "messages") == 6
    [pruned] = _actions(engine, "audit.pruned")
    assert pruned["details"]["archive_sha256"] == info["archive_sha256"]
    assert cli("audit", "log", "--json", "--run", "1").json() == []
    assert cli("audit", "check", str(open_run)).code == 0
    verified = cli("audit", "verify", "--json")
    assert verified.code == 0, verified.out
    assert verified.json()["chains"]["message_events"]["first_seq"] == 18
    engine.dispose()
