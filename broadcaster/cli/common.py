"""What every command shares: settings, the database, the clock, output and errors.

Errors a user can act on are raised as :class:`CliError` (or one of the domain errors listed in
``USER_ERRORS``) and printed as one line on stderr with exit code 1, never as a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.engine import Engine

from broadcaster.clock import Clock, SystemClock
from broadcaster.settings import Settings, load_settings
from broadcaster.trail import current_actor

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """An error for the operator: printed on stderr, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class AppContext:
    actor_override: str | None = None
    clock: Clock = field(default_factory=SystemClock)
    _settings: Settings | None = None
    _engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ValidationError as exc:
                raise CliError(f"invalid settings: {settings_problems(exc)}") from None
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from broadcaster.db import open_database

            self._engine = open_database(self.settings.database_url)
        return self._engine

    @property
    def actor(self) -> str:
        return current_actor(self.actor_override or self.settings.actor)

    def templates(self):  # type: ignore[no-untyped-def]
        from broadcaster.templating import TemplateStore

        return TemplateStore(self.settings.templates_dir)


def settings_problems(exc: ValidationError) -> str:
    """One line naming each bad variable and why (never the value: it may be a secret)."""
    parts = []
    for error in exc.errors():
        field = "_".join(str(p) for p in error["loc"]).upper()
        name = field if field.startswith("TWILIO_") else f"BROADCASTER_{field}"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):
        obj = AppContext()
        ctx.find_root().obj = obj
    return obj


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any, *, sort_keys: bool = False) -> str:
    """One line of JSON, UTF-8 text as is, times in ISO 8601."""
    return json.dumps(value, ensure_ascii=False, default=_default, sort_keys=sort_keys)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when cut (table columns)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def print_json(value: Any) -> None:
    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def parse_vars(pairs: list[str] | None) -> dict[str, str]:
    """``--var key=value`` options into a dict; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--var {pair!r}: expected key=value", EXIT_USAGE)
        out[key.strip()] = value
    return out


def is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (previous handlers restored after)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handler(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: give up waiting (leases will be reconciled)
        stop.set()

    for sig in previous:
        signal.signal(sig, _handler)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stoppable_progress(bar: bool, label: str, kept: str) -> Iterator[Callable[..., None]]:
    """A progress callback ``update(done, total=None)`` for long work done in steps (import chunks,
    pages of a run): a Rich bar on stderr when ``bar`` (a person watches a terminal), and Ctrl-C or
    SIGTERM taking effect at the next step, where nothing is half written; a second Ctrl-C stops at
    once. Interrupted, the command ends with one line, ``interrupted: {kept}``, and exit 130."""
    with stop_on_signals() as stop, ExitStack() as stack:
        show: Callable[[int, int | None], None] | None = None
        if bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress_bar = stack.enter_context(
                Progress(
                    TextColumn(label),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=err_console,
                    transient=True,
                )
            )
            task = progress_bar.add_task(label, total=None)

            def show(done: int, total: int | None) -> None:
                progress_bar.update(task, completed=done, total=total)

        def update(done: int, total: int | None = None) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            if show is not None:
                show(done, total)

        try:
            yield update
        except KeyboardInterrupt:
            raise CliError(f"interrupted: {kept}", exit_code=EXIT_INTERRUPTED) from None
