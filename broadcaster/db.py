"""Engines and transactions for SQLite (embedded default) and PostgreSQL (several workers or hosts).

SQLite: WAL, busy timeout, and ``BEGIN IMMEDIATE`` for every writing transaction, because a deferred
BEGIN that reads then writes fails at once with "database is locked" under a concurrent writer.
Read-only work uses :func:`reading`, which takes a plain deferred BEGIN and never blocks writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from broadcaster import models  # noqa: F401  (registers the tables on SQLModel.metadata)

_READ_ONLY = "broadcaster_read_only"


class DatabaseError(Exception):
    """A database problem worth one clear line to the operator."""


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and route them to psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, synchronous: str = "NORMAL") -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine, synchronous)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """An INSERT of the connection's dialect, so that ``.on_conflict_do_nothing()`` is available
    (both SQLite and PostgreSQL have it): how idempotent writes are made everywhere."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One writing transaction: committed on success, rolled back on any error."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that never takes SQLite's write lock."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_READ_ONLY: True})
        with conn.begin():
            yield conn


def migrations_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(migrations_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (Alembic); safe to call on an up-to-date database."""
    from alembic import command

    command.upgrade(migrations_config(engine), "head")


def ensure_schema(engine: Engine) -> None:
    """Upgrade on first use, so that a fresh machine needs no separate migration step."""
    try:
        if current_revision(engine) != head_revision(engine):
            upgrade(engine)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot open database {engine.url.render_as_string()}: {exc.orig}") from exc


def open_database(url: str) -> Engine:
    engine = make_engine(url)
    ensure_schema(engine)
    return engine
