"""Only one active daemon per database: a leader lock, and heartbeats that say who is alive.

- SQLite: an exclusive ``flock`` on ``<database file>.daemon.lock``. The kernel frees it when the
  holder dies, even by ``kill -9``.
- PostgreSQL: ``pg_try_advisory_lock`` on a dedicated connection (session lock, per database);
  freed when that session ends, which is also what happens when its process dies.

A daemon that cannot take the lock is a standby: it polls, and takes over when the lock frees.
Even without the lock, UNIQUE(job, scheduled_for) keeps a second daemon from doubling a run; the
lock keeps two from racing for every fire.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.models import DaemonHeartbeat

hb_t = DaemonHeartbeat.__table__

ACTIVE = "active"
STANDBY = "standby"
STOPPED = "stopped"
LOCK_NAME = "broadcaster.scheduler.leader"


class LeaderLock(Protocol):
    description: str

    def try_acquire(self) -> bool: ...

    def held(self) -> bool:
        """Still ours? (False when a PostgreSQL session holding it was lost.)"""
        ...

    def release(self) -> None: ...


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"file lock {self.path}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PgAdvisoryLock:
    def __init__(self, engine: Engine, name: str = LOCK_NAME) -> None:
        self.engine = engine
        self.key = _advisory_key(name)
        self.description = f"PostgreSQL advisory lock {self.key}"
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return True
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar_one()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1")).scalar_one()
            return True
        except sa.exc.DBAPIError:
            self._conn.invalidate()
            self._conn = None
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        except sa.exc.DBAPIError:
            pass
        finally:
            self._conn.close()
            self._conn = None


def make_lock(engine: Engine, var_dir: Path) -> LeaderLock:
    if db.is_sqlite(engine):
        database = engine.url.database
        if database and database != ":memory:":
            return FileLock(Path(database + ".daemon.lock"))
        return FileLock(Path(var_dir) / "daemon.lock")
    return PgAdvisoryLock(engine)


def beat(
    engine: Engine,
    *,
    daemon_id: str,
    role: str,
    now: datetime,
    started_at: datetime,
    info: dict[str, Any] | None = None,
) -> None:
    values = {
        "daemon_id": daemon_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "role": role,
        "started_at": started_at,
        "beat_at": now,
        "stopped_at": now if role == STOPPED else None,
        "info": info or {},
    }
    with db.writing(engine) as conn:
        stmt = db.insert_ignore(conn, hb_t).values(**values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["daemon_id"],
                set_={k: v for k, v in values.items() if k not in ("daemon_id", "started_at")},
            )
        )


def heartbeats(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(hb_t).order_by(hb_t.c.beat_at.desc())).mappings().all()
    return [dict(r) for r in rows]


def is_alive(row: dict[str, Any], now: datetime, interval: float) -> bool:
    """Beat within three intervals and not stopped."""
    return row["role"] != STOPPED and now - row["beat_at"] <= timedelta(seconds=3 * interval)


def prune(engine: Engine, now: datetime, keep: timedelta = timedelta(days=30)) -> None:
    """Forget daemons that have not beaten for a month (one row per process start otherwise)."""
    with db.writing(engine) as conn:
        conn.execute(sa.delete(hb_t).where(hb_t.c.beat_at < now - keep))
