"""Small pieces shared by the audit integration tests (daemon sealing, trail completeness)."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from broadcaster import db
from broadcaster.models import MessageEvent
from broadcaster.scheduling import leader


def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def unsealed(engine: sa.Engine) -> int:
    """Message events not chained yet."""
    t = MessageEvent.__table__
    with db.reading(engine) as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(t).where(t.c.chain_seq.is_(None))
        ).scalar_one()


def role_in_db(engine: sa.Engine, daemon_id: str) -> str | None:
    """The role a daemon's last heartbeat recorded."""
    with db.reading(engine) as conn:
        return next((h["role"] for h in leader.heartbeats(conn) if h["daemon_id"] == daemon_id), None)
