"""The action trail: who did what, from where. Every operator and system action goes through
:func:`record_action`, inside the same transaction as the change it describes.

Each action is chained by hashes as it is written (see :mod:`broadcaster.audit.chain`). On
PostgreSQL this takes a transaction-scoped lock on the trail until commit, so call it late in a long
transaction rather than early."""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from broadcaster.audit.chain import append_action


def current_actor(explicit: str | None = None) -> str:
    """``--actor`` if given, else BROADCASTER_ACTOR, else the OS user."""
    if explicit:
        return explicit
    env = os.environ.get("BROADCASTER_ACTOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def current_host() -> str:
    return socket.gethostname()


def record_action(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    details: dict[str, Any] | None = None,
    run_id: int | None = None,
    host: str | None = None,
) -> int:
    """Append one action to the chained trail; returns its id."""
    return append_action(
        conn,
        {
            "at": at,
            "actor": actor,
            "host": host or current_host(),
            "action": action,
            "run_id": run_id,
            "details": details or {},
        },
    )
