"""Shared fixtures: real SQLite files, a fresh real PostgreSQL database per test, and the CLI.

PostgreSQL: BROADCASTER_TEST_PG_ADMIN_URL (default: the local server's ``postgres`` database)
is used to create and drop a throw-away database for each test that asks for one.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "BROADCASTER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broadcaster.db'}"


@contextmanager
def throwaway_pg_database(prefix: str = "bc_test") -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped (connections and all) on leaving."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on a SQLite file and once on a fresh PostgreSQL database."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    from broadcaster.db import open_database

    eng = open_database(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    """A working folder with the environment a CLI user would have (settings from env vars)."""
    var = tmp_path / "var"
    var.mkdir()
    env = {
        "BROADCASTER_DATABASE_URL": db_url,
        "BROADCASTER_VAR_DIR": str(var),
        "BROADCASTER_TEMPLATES_DIR": str(REPO / "templates"),
        "BROADCASTER_SCHEDULES_DIR": str(REPO / "schedules"),
        "BROADCASTER_RECIPIENTS_DIR": str(REPO / "recipients"),
        "BROADCASTER_PROVIDER": "log",
        "BROADCASTER_ACTOR": "tester",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):  # type: ignore[no-untyped-def]
        import json

        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run ``broadcaster ARGS`` in-process through the same entry point as the console script."""
    from broadcaster.cli import run

    def invoke(*args: str, input: str | None = None) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a real ``python -m broadcaster`` child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
