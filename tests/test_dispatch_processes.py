"""Real worker processes: killed with SIGKILL mid-run, stopped with SIGTERM, three at once on
PostgreSQL. The log provider's JSONL file is the record of what really went out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import SystemClock
from broadcaster.db import open_database
from broadcaster.models import MessageEvent
from tests.conftest import subprocess_env
from tests.dispatch_helpers import make_run, messages, phone, seed_list, template_store

pytestmark = pytest.mark.slow


def _seed(url: str, tmp_path: Path, n: int) -> sa.Engine:
    engine = open_database(url)
    seed_list(engine, "public", range(1, n + 1), datetime.now(UTC))
    template_store(tmp_path / "templates")
    return engine


def _prepare(url: str, tmp_path: Path, n: int) -> tuple[sa.Engine, int]:
    engine = _seed(url, tmp_path, n)
    run_id = make_run(engine, template_store(tmp_path / "templates"), SystemClock(), ["public"])
    return engine, run_id


def _env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(
        BROADCASTER_DATABASE_URL=url,
        BROADCASTER_VAR_DIR=str(tmp_path / "var"),
        BROADCASTER_TEMPLATES_DIR=str(tmp_path / "templates"),
        BROADCASTER_PROVIDER="log",
        BROADCASTER_LOG_PROVIDER_FILE=str(tmp_path / "sent.jsonl"),
        BROADCASTER_RATE_LIMIT="0",
        BROADCASTER_RECONCILE_DELAY_SECONDS="0",
        BROADCASTER_ACTOR="tester",
        **extra,
    )


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return _broadcaster(env, "worker", *args)


def _broadcaster(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "broadcaster", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _sent_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a record torn by the kill: it never counted as sent
    return lines


def _wait_for_lines(path: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= at_least:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"worker ended early ({proc.returncode}): {err.decode()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} messages sent in {timeout}s")


def _assert_exactly_once(engine: sa.Engine, run_id: int, sent_file: Path, n: int) -> list[dict]:
    lines = _sent_lines(sent_file)
    per_phone = Counter(line["to"] for line in lines)
    twice = {p: c for p, c in per_phone.items() if c > 1}
    assert not twice, f"sent more than once: {twice}"
    assert set(per_phone) == {phone(i) for i in range(1, n + 1)}, "some recipient got nothing"
    rows = messages(engine, run_id)
    assert Counter(m["status"] for m in rows) == {"sent": n}
    sid_by_phone = {line["to"]: line["sid"] for line in lines}
    assert all(m["provider_id"] == sid_by_phone[m["phone"]] for m in rows), (
        "the log disagrees with the provider"
    )
    return rows


def test_worker_killed_repeatedly_mid_run_sends_everyone_exactly_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    n = 2000
    engine, run_id = _prepare(sqlite_url, tmp_path, n)
    sent_file = tmp_path / "sent.jsonl"
    env = _env(sqlite_url, tmp_path, BROADCASTER_LOG_PROVIDER_DELAY_MS="2", BROADCASTER_CONCURRENCY="8")
    for target in (250, 800, 1300):
        proc = _worker(env, "--run", str(run_id), "--once")
        _wait_for_lines(sent_file, target, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert len(_sent_lines(sent_file)) < n  # the kills really fell mid-run
    final = _worker(env, "--run", str(run_id), "--once")
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err.decode()[-2000:]
    _assert_exactly_once(engine, run_id, sent_file, n)
    with db.reading(engine) as conn:
        reconciled = conn.execute(
            sa.select(MessageEvent.__table__.c.to_status, sa.func.count())
            .where(MessageEvent.__table__.c.source == "reconcile")
            .group_by(MessageEvent.__table__.c.to_status)
        ).all()
        run_status = conn.execute(
            sa.text("select status from runs where id = :id"), {"id": run_id}
        ).scalar_one()
    outcome = dict(reconciled)
    # Messages the provider had but the dead worker never recorded were found, not sent again.
    assert outcome.get("sent", 0) > 0, outcome
    assert run_status == "completed"


def test_three_workers_on_postgresql_share_one_run_without_duplicates(pg_url: str, tmp_path: Path) -> None:
    n = 600
    engine, run_id = _prepare(pg_url, tmp_path, n)
    sent_file = tmp_path / "sent.jsonl"
    # 10 ms a message, 4 at a time: one worker alone needs 1.5 s, longer than the others take to start.
    env = _env(pg_url, tmp_path, BROADCASTER_LOG_PROVIDER_DELAY_MS="10", BROADCASTER_CONCURRENCY="4")
    workers = [_worker(env, "--run", str(run_id), "--once") for _ in range(3)]
    for proc in workers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    rows = _assert_exactly_once(engine, run_id, sent_file, n)
    with db.reading(engine) as conn:
        owners = conn.execute(
            sa.select(sa.func.count(sa.distinct(sa.text("lease_owner")))).select_from(sa.text("messages"))
        ).scalar_one()
    assert owners >= 2, "the work was not shared"
    assert all(m["attempts"] == 1 for m in rows)


def test_sigterm_stops_a_worker_cleanly(sqlite_url: str, tmp_path: Path) -> None:
    n = 200
    engine, run_id = _prepare(sqlite_url, tmp_path, n)
    sent_file = tmp_path / "sent.jsonl"
    env = _env(sqlite_url, tmp_path, BROADCASTER_LOG_PROVIDER_DELAY_MS="20", BROADCASTER_CONCURRENCY="4")
    proc = _worker(env)  # no --once: runs until stopped
    _wait_for_lines(sent_file, 20, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "stopped" in out.decode()
    rows = messages(engine, run_id)
    statuses = Counter(m["status"] for m in rows)
    assert set(statuses) <= {"sent", "queued"}, statuses  # nothing left in flight or uncertain
    assert 20 <= statuses["sent"] < n
    assert statuses["sent"] == len(_sent_lines(sent_file))
    assert all(m["attempts"] == 0 for m in rows if m["status"] == "queued")  # handed back, attempt undone
    with db.reading(engine) as conn:
        released = conn.execute(
            sa.select(sa.func.count())
            .select_from(MessageEvent.__table__)
            .where(
                MessageEvent.__table__.c.to_status == "queued",
                MessageEvent.__table__.c.from_status == "sending",
            )
        ).scalar_one()
    assert released > 0  # claimed ahead but not started when the signal came: handed back, not sent
    # Another worker finishes the run, still exactly once.
    final = _worker(env, "--once")
    final.communicate(timeout=60)
    assert final.returncode == 0
    _assert_exactly_once(engine, run_id, sent_file, n)


def test_interrupted_send_is_resumed_without_duplicates(sqlite_url: str, tmp_path: Path) -> None:
    n = 200
    engine = _seed(sqlite_url, tmp_path, n)
    sent_file = tmp_path / "sent.jsonl"
    env = _env(sqlite_url, tmp_path, BROADCASTER_LOG_PROVIDER_DELAY_MS="10", BROADCASTER_CONCURRENCY="4")
    send = _broadcaster(env, "send", "-t", "notice", "-l", "public", "--yes", "--json")
    _wait_for_lines(sent_file, 30, send)
    send.send_signal(signal.SIGINT)  # Ctrl-C: stop claiming, finish what is in flight
    out, err = send.communicate(timeout=10)
    assert send.returncode == 130, err.decode()[-2000:]
    report = json.loads(out)
    assert report["interrupted"] is True and "runs resume" in err.decode()
    assert set(report["counts"]) <= {"sent", "queued"} and report["counts"]["sent"] < n
    run_id = str(report["run"])

    resume = _broadcaster(env, "runs", "resume", run_id)
    _wait_for_lines(sent_file, 100, resume)
    resume.send_signal(signal.SIGKILL)  # this time no chance to clean up
    resume.wait(10)
    final = _broadcaster(env, "runs", "resume", run_id, "--json")
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err.decode()[-2000:]
    assert json.loads(out)["counts"] == {"sent": n}
    _assert_exactly_once(engine, int(run_id), sent_file, n)


def test_ctrl_c_while_a_send_writes_its_messages_stops_between_pages_and_resumes(
    sqlite_url: str, tmp_path: Path
) -> None:
    n = 6000  # six pages of messages to write
    engine = _seed(sqlite_url, tmp_path, n)
    sent_file = tmp_path / "sent.jsonl"
    env = _env(sqlite_url, tmp_path)
    send = _broadcaster(env, "send", "-t", "notice", "-l", "public", "--yes", "--json")
    deadline = time.monotonic() + 30
    while send.poll() is None and time.monotonic() < deadline:
        with db.reading(engine) as conn:
            if conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one():
                break  # the first page is written
        time.sleep(0.01)
    send.send_signal(signal.SIGINT)
    out, err = send.communicate(timeout=30)
    assert send.returncode == 130, err.decode()[-2000:]
    assert err.decode().startswith("error: interrupted: run 1 keeps the messages written so far")
    assert len(err.decode().strip().splitlines()) == 1 and out == b""
    with db.reading(engine) as conn:
        status = conn.exec_driver_sql("SELECT status FROM runs WHERE id = 1").scalar_one()
        written = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
    assert status == "pending" and 0 < written < n  # stopped between pages, nothing sent
    assert not sent_file.exists()

    resume = _broadcaster(env, "runs", "resume", "1", "--json")
    out, err = resume.communicate(timeout=120)
    assert resume.returncode == 0, err.decode()[-2000:]
    assert json.loads(out)["counts"] == {"sent": n}
    _assert_exactly_once(engine, 1, sent_file, n)
