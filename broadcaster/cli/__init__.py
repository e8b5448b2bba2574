"""The ``broadcaster`` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from broadcaster.cli import audit, db_cmd, demo, recipients, schedule, sending, templates, webhooks
from broadcaster.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, AppContext, CliError, err_console

app = typer.Typer(
    name="broadcaster",
    help="SMS campaign broadcaster: recipient lists, templates, schedules, exactly-once delivery, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    actor: str = typer.Option(None, "--actor", help="Who is acting (for the trail); default: OS user."),
) -> None:
    ctx.obj = AppContext(actor_override=actor)


for module in (db_cmd, recipients, templates, sending, webhooks, schedule, audit, demo):
    module.register(app)


def _user_errors() -> tuple[type[BaseException], ...]:
    from broadcaster.db import DatabaseError
    from broadcaster.providers import ProviderConfigError
    from broadcaster.runs import RunError
    from broadcaster.templating import TemplateError

    return (CliError, DatabaseError, ProviderConfigError, RunError, TemplateError)


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; errors become one line on stderr."""
    try:
        # Without standalone mode, click returns (not raises) the code of a ``typer.Exit(code)``.
        code = app(args=argv, prog_name="broadcaster", standalone_mode=False)
    except typer.Abort:
        err_console.print("aborted")
        return EXIT_ERROR
    except typer.Exit as exc:
        return exc.exit_code
    except _user_errors() as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return getattr(exc, "exit_code", EXIT_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # click's usage errors and the unexpected: one line, no traceback
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click (vendored by Typer)
            exc.show()
            return exc.exit_code
        if os.environ.get("BROADCASTER_DEBUG"):
            traceback.print_exc()
        err_console.print(
            f"error: {type(exc).__name__}: {exc}", markup=False, highlight=False, soft_wrap=True
        )
        return EXIT_ERROR
    return code if isinstance(code, int) else 0


def main() -> None:
    """The ``broadcaster`` command, reached through :mod:`broadcaster.entry` (the console script and
    ``python -m broadcaster``), which also makes a Ctrl-C during loading one line."""
    sys.exit(run())
