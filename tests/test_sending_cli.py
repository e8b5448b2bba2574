"""The sending commands as an operator uses them: send (dry run, confirmation, JSON), runs (list,
show, pause, resume, cancel, resolve), log (table, CSV, JSONL, filters) and worker --once."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import SystemClock
from broadcaster.db import open_database
from broadcaster.models import Action
from broadcaster.optouts import add_optout
from broadcaster.sendlog import LOG_COLUMNS
from tests.dispatch_helpers import make_run, phone, seed_list, template_store

RUN_KEYS = {
    "id",
    "kind",
    "template",
    "lists",
    "status",
    "created_at",
    "created_by",
    "intended",
    "counts",
    "job_id",
    "scheduled_for",
}


@pytest.fixture
def setup(workdir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Ten recipients in "public", three in "duty" (one in both), one opted out; a template."""
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(workdir / "templates"))
    monkeypatch.setenv("BROADCASTER_RATE_LIMIT", "0")
    template_store(workdir / "templates")
    engine = open_database(db_url)
    now = datetime.now(UTC)
    seed_list(engine, "public", range(1, 11), now)
    seed_list(engine, "duty", range(10, 13), now)
    with db.writing(engine) as conn:
        add_optout(conn, phone(3), source="operator", at=now, actor="tester")
    yield engine
    engine.dispose()


def _sent_file(workdir: Path) -> list[dict]:
    path = workdir / "var" / "log-provider.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _quiet_now() -> str:
    """Quiet hours around the present moment in Shanghai, so nothing is sent."""
    local = datetime.now(ZoneInfo("Asia/Shanghai"))
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_dry_run_counts_and_writes_nothing(setup, cli, workdir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_RATE_LIMIT", "2")
    result = cli("send", "--template", "notice", "--list", "public", "--list", "duty", "--dry-run", "--json")
    assert result.code == 0, result.err
    out = result.json()
    assert out["run"] is None and out["dry_run"] is True
    assert out["intended"] == 12 and out["counts"] == {"queued": 11, "suppressed": 1}
    assert out["segments"] == 11 and out["estimate_seconds"] == 5.5
    text = cli("send", "-t", "notice", "-l", "public", "--dry-run")
    assert text.code == 0 and "recipients: 10" in text.out and "suppressed: 1" in text.out
    assert "nothing written" in text.out
    assert cli("runs", "--json").out == ""
    assert _sent_file(workdir) == []


def test_send_refuses_without_confirmation_off_a_terminal(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("send", "--template", "notice", "--list", "public")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "--yes" in result.err and "Traceback" not in result.err
    assert cli("runs", "--json").out == "" and _sent_file(workdir) == []


def test_send_with_yes_sends_once_per_recipient_and_reports(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "send", "-t", "notice", "-l", "public", "-l", "duty", "--yes", "--json", "--var", "year=2011"
    )
    assert result.code == 0, result.err
    out = result.json()
    assert out["counts"] == {"sent": 11, "suppressed": 1} and out["intended"] == 12
    assert out["dry_run"] is False and isinstance(out["run"], int)
    sent = _sent_file(workdir)
    assert sorted(x["to"] for x in sent) == sorted(phone(i) for i in range(1, 13) if i != 3)

    runs = [json.loads(line) for line in cli("runs", "--json").out.splitlines()]
    assert len(runs) == 1 and set(runs[0]) == RUN_KEYS
    assert runs[0]["status"] == "completed" and runs[0]["counts"] == {"sent": 11, "suppressed": 1}
    assert runs[0]["lists"] == ["public", "duty"] and runs[0]["created_by"] == "tester"
    shown = cli("runs", "show", str(out["run"]), "--json").json()
    assert shown["variables"] == {"year": "2011"} and shown["segments"] == 11
    created = [a for a in shown["actions"] if a["action"] == "run.created"][0]
    assert created["actor"] == "tester" and created["details"]["confirmed_by"] == "--yes"
    table = cli("runs")
    assert table.code == 0 and "completed" in table.out and "sent 11, suppressed 1" in table.out


def test_log_formats_and_filters(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = cli("send", "-t", "notice", "-l", "public", "--yes", "--json").json()["run"]

    rows = list(csv.DictReader(io.StringIO(cli("log", "--format", "csv").out)))
    assert len(rows) == 10 and tuple(rows[0]) == LOG_COLUMNS
    assert {r["status"] for r in rows} == {"sent", "suppressed"}
    sent = [r for r in rows if r["status"] == "sent"]
    assert all(r["provider_id"].startswith("LG") and r["attempts"] == "1" for r in sent)
    assert all(datetime.fromisoformat(r["sent_at"]).tzinfo is not None for r in sent)
    assert sent[0]["body"].startswith("【质量月】用户") and sent[0]["encoding"] == "UCS-2"

    lines = [
        json.loads(x) for x in cli("log", "--format", "jsonl", "--status", "suppressed").out.splitlines()
    ]
    assert len(lines) == 1 and lines[0]["phone"] == phone(3) and lines[0]["error_text"] == "opted out"
    assert list(lines[0]) == list(LOG_COLUMNS)

    one = cli("log", "--format", "jsonl", "--to", phone(5), "--run", str(run_id)).out.splitlines()
    assert len(one) == 1 and json.loads(one[0])["run_id"] == run_id
    assert cli("log", "--format", "jsonl", "--since", "2100-01-01").out == ""
    assert len(cli("log", "--format", "jsonl", "--until", "2100-01-01T00:00:00+08:00").out.splitlines()) == 10
    table = cli("log", "--run", str(run_id))
    assert table.code == 0 and len(table.out.splitlines()) == 11 and phone(5) in table.out

    bad = cli("log", "--status", "lost")
    assert bad.code == 2 and "--status" in bad.err
    assert cli("log", "--since", "yesterday").code == 2


def test_pause_resume_cancel_from_the_command_line(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    sent = cli("send", "-t", "notice", "-l", "public", "--yes", "--json", "--quiet-hours", _quiet_now())
    assert sent.code == 0, sent.err
    run_id = sent.json()["run"]
    assert sent.json()["counts"] == {"queued": 9, "suppressed": 1}  # all waiting for the window
    assert "still pending" in cli("runs", "resume", str(run_id)).err  # resuming does not break quiet hours

    assert cli("runs", "pause", str(run_id), "--json").json() == {
        "run": run_id,
        "from": "ready",
        "to": "paused",
    }
    again = cli("runs", "pause", str(run_id))
    assert again.code == 1 and "paused" in again.err
    detached = cli("runs", "resume", str(run_id), "--detach", "--json").json()
    assert detached["to"] == "ready"  # nothing was ever claimed
    cancelled = cli("runs", "cancel", str(run_id), "--json").json()
    assert cancelled["to"] == "cancelled" and cancelled["cancelled"] == 9
    shown = cli("runs", "show", str(run_id), "--json").json()
    assert shown["counts"] == {"cancelled": 9, "suppressed": 1} and shown["status"] == "cancelled"
    assert [a["action"] for a in shown["actions"]] == [
        "run.created",
        "run.resumed",
        "run.paused",
        "run.resumed",
        "run.cancelled",
    ]
    assert all(a["actor"] == "tester" for a in shown["actions"])
    assert cli("runs", "resume", str(run_id)).code == 1
    assert _sent_file(workdir) == []


def test_interrupted_run_is_resumed_and_worker_once_sends_what_is_due(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    store = template_store(workdir / "templates")
    first = make_run(setup, store, SystemClock(), ["public"])  # materialised, never dispatched
    result = cli("runs", "resume", str(first), "--json")
    assert result.code == 0, result.err
    assert result.json()["counts"] == {"sent": 9, "suppressed": 1}
    second = make_run(setup, store, SystemClock(), ["duty"])
    worker = cli("worker", "--once")
    assert worker.code == 0 and "sent 3" in worker.out
    assert len(_sent_file(workdir)) == 12
    assert cli("runs", "show", str(second), "--json").json()["status"] == "completed"


def test_resolve_needs_one_decision_and_records_it(setup, cli, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = cli("send", "-t", "notice", "-l", "duty", "--yes", "--json").json()["run"]
    assert cli("runs", "resolve", str(run_id)).code == 2
    assert cli("runs", "resolve", str(run_id), "--resend", "--mark-sent").code == 2
    result = cli("runs", "resolve", str(run_id), "--mark-sent", "--json")
    assert result.json() == {"run": run_id, "decision": "mark-sent", "messages": 0}
    with db.reading(setup) as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(Action.__table__)
                .where(Action.__table__.c.action == "run.resolved")
            ).scalar_one()
            == 1
        )


def test_send_errors_are_one_line(setup, cli) -> None:  # type: ignore[no-untyped-def]
    missing_list = cli("send", "-t", "notice", "-l", "nobody", "--yes")
    assert missing_list.code == 1 and "unknown list(s): nobody" in missing_list.err
    missing_template = cli("send", "-t", "nothing", "-l", "public", "--dry-run")
    assert missing_template.code == 1 and "template 'nothing' not found" in missing_template.err
    bad_quiet = cli("send", "-t", "notice", "-l", "public", "--yes", "--quiet-hours", "late")
    assert bad_quiet.code == 2 and "quiet hours 'late'" in bad_quiet.err
    bad_priority = cli("send", "-t", "notice", "-l", "public", "--yes", "--priority", "asap")
    assert bad_priority.code == 2
    assert cli("runs", "show", "999").code == 1
    for result in (missing_list, missing_template, bad_quiet):
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert cli("runs", "--json").out == ""
