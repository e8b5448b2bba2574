"""Sending: ``send``, ``runs`` (list, show, pause, resume, cancel, resolve), ``log`` and ``worker``.

``send`` and ``runs resume`` dispatch in-process through the same :class:`Dispatcher` as the
``worker`` daemon. SIGINT/SIGTERM stop claiming; what is in flight finishes (or is handed back)
before the command returns, so an interrupted run is resumed with ``broadcaster runs resume ID``.
"""

from __future__ import annotations

import csv
import gc
import logging
import sys
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import typer

from broadcaster import db
from broadcaster.audit.queries import CREATED, FilterError, MessageFilter, parse_when
from broadcaster.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AppContext,
    CliError,
    app_context,
    is_terminal,
    parse_vars,
    print_json,
    shorten,
    stop_on_signals,
    stoppable_progress,
    to_json,
)
from broadcaster.dispatch import Dispatcher, dispatcher_from_settings
from broadcaster.models import MESSAGE_STATES
from broadcaster.providers import make_provider
from broadcaster.quiet_hours import QuietHoursError, effective
from broadcaster.run_control import MARK_SENT, RESEND, cancel_run, pause_run, resolve_unknown, resume_run
from broadcaster.runs import OutboxSummary, create_run, materialise, outbox_summary, preview
from broadcaster.sendlog import LOG_COLUMNS, iter_messages, list_runs, run_detail
from broadcaster.templating import TemplateStore

PRIORITY_VALUES = {"normal": 0, "urgent": 10}


class Priority(StrEnum):
    normal = "normal"
    urgent = "urgent"


class LogFormat(StrEnum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


# ---- helpers -----------------------------------------------------------------------------------


def _dispatcher(app: AppContext) -> Dispatcher:
    dispatcher = dispatcher_from_settings(
        app.engine, make_provider(app.settings, app.clock), app.clock, app.settings
    )
    # What is loaded by now (SQLAlchemy, the SDK, ...) lives as long as the process: keep it out of
    # the garbage collector's full passes, which otherwise stop every thread for ~100 ms now and
    # then (a hiccup in sending, and a burst at the provider when it ends).
    gc.freeze()
    return dispatcher


def _estimate(app: AppContext, summary: OutboxSummary) -> float | None:
    rate = app.settings.rate_limit
    return round(summary.units(app.settings.rate_unit) / rate, 1) if rate > 0 else None


def _describe(app: AppContext, summary: OutboxSummary) -> str:
    counts = summary.counts
    to_send = counts.get("queued", 0)
    lines = [
        f"recipients: {summary.intended}",
        f"to send:    {to_send} messages, {summary.segments} segments",
        f"suppressed: {counts.get('suppressed', 0)} (opted out)",
    ]
    if counts.get("failed"):
        lines.append(f"failed:     {counts['failed']} (could not be rendered)")
    seconds = _estimate(app, summary)
    if seconds is not None:
        lines.append(
            f"estimate:   {timedelta(seconds=round(seconds))} at {app.settings.rate_limit:g} "
            f"{app.settings.rate_unit}/s per sender"
        )
    return "\n".join(lines)


def _format_counts(counts: dict[str, int]) -> str:
    return (
        ", ".join(f"{status} {counts[status]}" for status in MESSAGE_STATES if counts.get(status)) or "none"
    )


def report_run(app: AppContext, run_id: int, as_json: bool, stopped: bool) -> None:
    with db.reading(app.engine) as conn:
        summary = outbox_summary(conn, run_id)
    if as_json:
        print_json(
            {
                "run": run_id,
                "intended": summary.intended,
                "counts": summary.counts,
                "segments": summary.segments,
                "dry_run": False,
                "interrupted": stopped,
            }
        )
    else:
        typer.echo(f"run {run_id}: {_format_counts(summary.counts)}")
    pending = sum(summary.counts.get(s, 0) for s in ("queued", "sending", "unknown"))
    if stopped:
        typer.echo(f"interrupted: resume with `broadcaster runs resume {run_id}`", err=True)
    elif pending:
        typer.echo(
            f"{pending} message(s) still pending (retries, quiet hours or uncertain attempts): "
            f"a running `broadcaster worker` or `broadcaster runs resume {run_id}` sends them",
            err=True,
        )


def _materialise(
    app: AppContext, run_id: int, store: TemplateStore, *, bar: bool, total: int | None = None
) -> None:
    """Write the run's messages (a bar on a terminal); Ctrl-C stops between pages, resumably."""
    kept = (
        f"run {run_id} keeps the messages written so far and sends nothing yet; "
        f"`broadcaster runs resume {run_id}` writes the rest and sends"
    )
    with stoppable_progress(bar, f"run {run_id}: writing messages", kept) as progress:
        materialise(
            app.engine, run_id, store=store, clock=app.clock, progress=lambda done: progress(done, total)
        )


def dispatch_in_process(app: AppContext, run_id: int, max_wait: float) -> bool:
    """Send the run in-process; True if a signal interrupted it."""
    dispatcher = _dispatcher(app)
    with stop_on_signals() as stop:
        dispatcher.run_to_end(run_id, stop, timedelta(seconds=max_wait))
        return stop.is_set()


def _parse_time(value: str | None, app: AppContext, option: str) -> datetime | None:
    """An ISO 8601 date (its midnight) or time; without an offset, in the configured zone."""
    try:
        return parse_when(value, app.settings.tz, name=option)
    except FilterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _local(value: Any, app: AppContext) -> Any:
    """Times for people: ISO 8601 in the configured zone (machine formats use UTC, see _utc)."""
    return value.astimezone(app.settings.tz).isoformat() if isinstance(value, datetime) else value


def _utc(value: Any, _app: AppContext) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


MAX_WAIT_HELP = "Keep waiting for retries and reconciliations due within this many seconds."

# ---- send --------------------------------------------------------------------------------------


def send(
    ctx: typer.Context,
    template: str = typer.Option(..., "--template", "-t", help="Template name (templates/NAME.j2)."),
    lists: list[str] = typer.Option(..., "--list", "-l", help="Recipient list; repeat for several."),
    var: list[str] = typer.Option(None, "--var", help="Template variable key=value; repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render and count only; write nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Send without asking (required off a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: run, intended, counts, segments."),
    priority: Priority = typer.Option(
        Priority.normal, "--priority", help="urgent runs go before normal ones."
    ),
    quiet_hours: str = typer.Option(
        None, "--quiet-hours", help="HH:MM-HH:MM in the run's zone, or none (default: setting)."
    ),
    max_wait: float = typer.Option(120.0, "--max-wait", help=MAX_WAIT_HELP),
) -> None:
    """Send a template to one or more lists, once per distinct recipient."""
    app = app_context(ctx)
    variables = parse_vars(var)
    if quiet_hours is not None:
        try:
            effective(quiet_hours, None)
        except QuietHoursError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
    store = app.templates()
    timezone = app.settings.timezone
    if dry_run or not yes:
        if not dry_run and not is_terminal():
            raise CliError(
                "refusing to send without confirmation: stdin is not a terminal "
                "(add --yes to send, or --dry-run to preview)",
                EXIT_USAGE,
            )
        summary = preview(
            app.engine,
            template=template,
            list_names=lists,
            variables=variables,
            timezone=timezone,
            store=store,
            clock=app.clock,
        )
        if dry_run:
            if as_json:
                print_json(
                    {
                        "run": None,
                        "intended": summary.intended,
                        "counts": summary.counts,
                        "segments": summary.segments,
                        "dry_run": True,
                        "estimate_seconds": _estimate(app, summary),
                    }
                )
            else:
                typer.echo(_describe(app, summary))
                typer.echo("dry run: nothing written, nothing sent")
            return
        typer.echo(_describe(app, summary), err=as_json)  # with --json, stdout carries only the JSON
        typer.confirm(f"Send {summary.counts.get('queued', 0)} messages now?", abort=True, err=as_json)
    ref = create_run(
        app.engine,
        template=template,
        list_names=lists,
        variables=variables,
        clock=app.clock,
        actor=app.actor,
        timezone=timezone,
        store=store,
        priority=PRIORITY_VALUES[priority.value],
        quiet_hours=quiet_hours,
        extra_details={"confirmed_by": "--yes" if yes else "prompt", "priority": priority.value},
    )
    total = None if yes else summary.intended
    _materialise(app, ref.id, store, bar=is_terminal() and not as_json, total=total)
    if yes and not as_json:
        with db.reading(app.engine) as conn:
            typer.echo(f"run {ref.id}\n" + _describe(app, outbox_summary(conn, ref.id)))
    stopped = dispatch_in_process(app, ref.id, max_wait)
    report_run(app, ref.id, as_json, stopped)
    if stopped:
        raise typer.Exit(EXIT_INTERRUPTED)


# ---- runs --------------------------------------------------------------------------------------

runs_app = typer.Typer(help="The run ledger: list, show, pause, resume, cancel, resolve.")


@runs_app.callback(invoke_without_command=True)
def runs_list(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    limit: int = typer.Option(None, "--limit", help="Only the newest N runs."),
) -> None:
    """One line per run with its messages counted by status."""
    if ctx.invoked_subcommand is not None:
        return
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        runs = list_runs(conn, limit=limit)
    for run in runs:
        if as_json:
            print_json(run)
        else:
            lists = ",".join(run["lists"])
            created = _local(run["created_at"], app)
            typer.echo(
                f"{run['id']:>5}  {run['status']:<9}  {created}  {run['template']} -> {lists}  "
                f"({run['intended']}): {_format_counts(run['counts'])}"
            )


@runs_app.command("show")
def runs_show(
    ctx: typer.Context, run_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")
) -> None:
    """One run in detail: counts, segments, pending work and its action trail."""
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        detail = run_detail(conn, run_id)
    if as_json:
        print_json(detail)
        return
    for key in (
        "id",
        "kind",
        "status",
        "template",
        "lists",
        "variables",
        "timezone",
        "priority",
        "quiet_hours",
        "job_id",
        "scheduled_for",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "intended",
        "segments",
        "next_attempt_at",
    ):
        value = detail[key]
        if key == "lists":
            value = ", ".join(value)
        typer.echo(f"{key + ':':<17}{'' if value is None else _local(value, app)}")
    typer.echo(f"{'counts:':<17}{_format_counts(detail['counts'])}")
    if detail["counts"].get("unknown"):
        typer.echo(
            f"{detail['counts']['unknown']} uncertain message(s): reconciled automatically when the provider "
            f"can look messages up; otherwise `broadcaster runs resolve {run_id} --resend|--mark-sent`"
        )
    for action in detail["actions"]:
        at, details = _local(action["at"], app), to_json(action["details"])
        typer.echo(f"  {at}  {action['actor']}  {action['action']}  {details}")


def _control_output(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
    else:
        extra = f", {result['cancelled']} queued message(s) cancelled" if "cancelled" in result else ""
        typer.echo(f"run {result['run']}: {result['from']} -> {result['to']}{extra}")


@runs_app.command("pause")
def runs_pause(
    ctx: typer.Context, run_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Stop claiming this run's messages; they stay queued, messages in flight finish."""
    app = app_context(ctx)
    _control_output(pause_run(app.engine, run_id, clock=app.clock, actor=app.actor), as_json)


@runs_app.command("cancel")
def runs_cancel(
    ctx: typer.Context, run_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Cancel the run: its queued messages become cancelled; messages in flight finish."""
    app = app_context(ctx)
    _control_output(cancel_run(app.engine, run_id, clock=app.clock, actor=app.actor), as_json)


@runs_app.command("resume")
def runs_resume(
    ctx: typer.Context,
    run_id: int = typer.Argument(...),
    detach: bool = typer.Option(False, "--detach", help="Only mark it resumed; leave sending to a worker."),
    as_json: bool = typer.Option(False, "--json"),
    max_wait: float = typer.Option(120.0, "--max-wait", help=MAX_WAIT_HELP),
) -> None:
    """Resume a paused or interrupted run: reconcile uncertain messages, then send only what was not sent."""
    app = app_context(ctx)
    result = resume_run(app.engine, run_id, clock=app.clock, actor=app.actor)
    if result["to"] == "pending":  # materialisation was interrupted: finish it (idempotent)
        _materialise(app, run_id, app.templates(), bar=is_terminal() and not as_json)
    if detach:
        _control_output(result, as_json)
        return
    stopped = dispatch_in_process(app, run_id, max_wait)
    report_run(app, run_id, as_json, stopped)
    if stopped:
        raise typer.Exit(EXIT_INTERRUPTED)


@runs_app.command("resolve")
def runs_resolve(
    ctx: typer.Context,
    run_id: int = typer.Argument(...),
    resend: bool = typer.Option(False, "--resend", help="Send the uncertain messages again."),
    mark_sent: bool = typer.Option(False, "--mark-sent", help="Record the uncertain messages as sent."),
    message: list[int] = typer.Option(None, "--message", help="Only this message id; repeatable."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Settle uncertain (``unknown``) messages by hand, for providers that cannot look messages up."""
    if resend == mark_sent:
        raise CliError("say either --resend or --mark-sent", EXIT_USAGE)
    app = app_context(ctx)
    decision = RESEND if resend else MARK_SENT
    n = resolve_unknown(
        app.engine, run_id, decision=decision, clock=app.clock, actor=app.actor, message_ids=message
    )
    if as_json:
        print_json({"run": run_id, "decision": decision, "messages": n})
    else:
        typer.echo(f"run {run_id}: {n} uncertain message(s) -> {'queued' if resend else 'sent'}")


# ---- log ---------------------------------------------------------------------------------------


def log_command(
    ctx: typer.Context,
    run_id: int = typer.Option(None, "--run", help="Only this run."),
    status: str = typer.Option(None, "--status", help="Only this status."),
    to: str = typer.Option(None, "--to", help="Only this phone number (E.164, or its last 4+ digits)."),
    since: str = typer.Option(None, "--since", help="Created at or after (ISO 8601; zone default: setting)."),
    until: str = typer.Option(None, "--until", help="Created before (ISO 8601)."),
    fmt: LogFormat = typer.Option(LogFormat.table, "--format", help="table, csv or jsonl."),
) -> None:
    """The send log, one line per message (streamed)."""
    app = app_context(ctx)
    if status is not None and status not in MESSAGE_STATES:
        raise CliError(f"--status {status!r}: expected one of {', '.join(MESSAGE_STATES)}", EXIT_USAGE)
    flt = MessageFilter(
        run_id=run_id,
        statuses=[status] if status else [],
        phone=to,
        since=_parse_time(since, app, "--since"),
        until=_parse_time(until, app, "--until"),
        time_basis=CREATED,
    )
    try:
        messages = iter_messages(app.engine, flt, region=app.settings.default_region)
    except FilterError as exc:
        raise CliError(f"--to: {exc}", EXIT_USAGE) from exc
    out = sys.stdout
    convert = _local if fmt is LogFormat.table else _utc
    rows = ({k: convert(v, app) for k, v in row.items()} for row in messages)
    if fmt is LogFormat.jsonl:
        for row in rows:
            out.write(to_json(row) + "\n")
    elif fmt is LogFormat.csv:
        writer = csv.DictWriter(out, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        out.write(
            f"{'id':>8} {'run':>5} {'phone':<16} {'status':<11} {'att':>3} {'seg':>3} {'sent_at':<25} body\n"
        )
        for row in rows:
            body = shorten(row["body"].replace("\n", " "), 40)
            error = (
                f" [{row['error_code']}: {row['error_text']}]"
                if row["error_code"] or row["error_text"]
                else ""
            )
            out.write(
                f"{row['id']:>8} {row['run_id']:>5} {row['phone']:<16} {row['status']:<11} "
                f"{row['attempts']:>3} {row['segments']:>3} {row['sent_at'] or '-':<25} {body}{error}\n"
            )
    out.flush()


# ---- worker ------------------------------------------------------------------------------------


def worker(
    ctx: typer.Context,
    run_id: int = typer.Option(None, "--run", help="Only this run."),
    once: bool = typer.Option(False, "--once", help="Send what is due now, then exit."),
) -> None:
    """Run a dispatcher until stopped (SIGTERM/SIGINT: finish or hand back what is in flight, exit 0)."""
    app = app_context(ctx)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    dispatcher = _dispatcher(app)
    logging.getLogger("broadcaster.worker").info(
        "worker %s started (run %s, concurrency %d, rate %s %s/s)",
        dispatcher.worker_id,
        run_id if run_id is not None else "any",
        dispatcher.concurrency,
        app.settings.rate_limit or "unlimited",
        app.settings.rate_unit,
    )
    with stop_on_signals() as stop:
        if once:
            stats = dispatcher.run_until_idle(run_id, stop)
        else:
            stats = dispatcher.run_forever(stop, run_id=run_id)
    counts = ", ".join(f"{k} {v}" for k, v in stats.as_dict().items() if v)
    typer.echo(f"worker {dispatcher.worker_id} stopped: {counts or 'nothing to do'}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("send")(send)
    app.add_typer(runs_app, name="runs")
    app.command("log")(log_command)
    app.command("worker")(worker)
