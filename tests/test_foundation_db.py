"""The schema, its migrations and time handling, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.models import Action


def test_fresh_database_is_upgraded_to_head_on_first_use(db_url: str) -> None:
    engine = db.open_database(db_url)
    assert db.current_revision(engine) == db.head_revision(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {
        "recipients",
        "lists",
        "list_members",
        "optouts",
        "import_batches",
        "runs",
        "messages",
        "message_events",
        "actions",
    } <= names


def test_times_come_back_aware_in_utc_and_naive_times_are_refused(engine: sa.Engine) -> None:
    shanghai = timezone(timedelta(hours=8))
    at = datetime(2011, 8, 31, 9, 0, tzinfo=shanghai)
    with db.writing(engine) as conn:
        conn.execute(sa.insert(Action.__table__), {"at": at, "actor": "a", "action": "x", "details": {}})
    with db.reading(engine) as conn:
        stored = conn.execute(sa.select(Action.__table__.c.at)).scalar_one()
    assert stored == at and stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored.astimezone(UTC).hour == 1
    with pytest.raises(sa.exc.StatementError, match="naive"), db.writing(engine) as conn:
        conn.execute(
            sa.insert(Action.__table__), {"at": datetime(2011, 8, 31, 9), "actor": "a", "action": "x"}
        )


def test_cli_db_current_reports_revision(workdir, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("db", "upgrade").code == 0
    result = cli("db", "current", "--json")
    assert result.code == 0
    info = result.json()
    assert info["current"] == info["head"] is not None


def test_unknown_command_is_a_usage_error_without_traceback(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("no-such-command")
    assert result.code == 2
    assert "Traceback" not in result.err + result.out


def test_exit_code_of_a_command_reaches_the_shell(workdir, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("templates", "render", "no-such-template")
    assert result.code == 1
    assert result.err.count("\n") == 1 and "no-such-template" in result.err


def test_a_bad_setting_is_one_line_naming_the_variable(workdir, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_TIMEZONE", "Mars/Olympus_Mons")
    result = cli("runs", "--json")
    assert result.code == 1
    assert result.err.startswith("error: invalid settings: BROADCASTER_TIMEZONE")
    assert result.err.count("\n") == 1


def test_ctrl_c_while_the_command_is_still_loading_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import subprocess_env

    # Loading the command line (Typer, Rich, SQLAlchemy, ...) takes several tenths of a second: a
    # Ctrl-C 0.15 s after start lands in those imports, not in the command.
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster", "runs", "--json"],
        env=subprocess_env(BROADCASTER_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.15)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err.decode(), err.decode()
    assert proc.returncode == 130 and err.decode() == "interrupted\n"
