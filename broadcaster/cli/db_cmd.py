"""``broadcaster db``: schema migrations (commands also upgrade on first use)."""

from __future__ import annotations

import typer

from broadcaster import db
from broadcaster.cli.common import app_context, print_json

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Bring the schema to the newest revision."""
    settings = app_context(ctx).settings
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    typer.echo(f"database at revision {db.current_revision(engine)}")


@db_app.command("current")
def current(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the schema revision of the database and the newest one known."""
    settings = app_context(ctx).settings
    engine = db.make_engine(settings.database_url)
    info = {
        "url": engine.url.render_as_string(hide_password=True),
        "current": db.current_revision(engine),
        "head": db.head_revision(engine),
    }
    if as_json:
        print_json(info)
    else:
        typer.echo(f"{info['url']}: revision {info['current']} (newest {info['head']})")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
