"""A seeded database, console accounts and a console app for the console tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from audit_helpers import Seeded, seed_run

from broadcaster import db
from broadcaster.accounts import add_user
from broadcaster.settings import Settings, load_settings
from broadcaster.web.console import create_console_app

PASSWORDS = {"alice": "alice-audits-2011", "sam": "sam-supervises-2011"}


@dataclass
class ConsoleWorld:
    engine: sa.Engine
    settings: Settings
    seeded: Seeded


def console_world(db_url: str, tmp_path: Path) -> ConsoleWorld:
    engine = db.open_database(db_url)
    seeded = seed_run(engine, tmp_path)
    with db.writing(engine) as conn:
        add_user(conn, "alice", "auditor", PASSWORDS["alice"], at=seeded.clock.now(), actor="admin")
        add_user(conn, "sam", "supervisor", PASSWORDS["sam"], at=seeded.clock.now(), actor="admin")
    settings = load_settings(
        database_url=db_url,
        templates_dir=seeded.templates,
        var_dir=tmp_path / "var",
        console_session_minutes=120,
        console_idle_minutes=30,
    )
    return ConsoleWorld(engine, settings, seeded)


def console_app(world: ConsoleWorld):  # type: ignore[no-untyped-def]
    return create_console_app(world.settings, world.engine, world.seeded.clock)
