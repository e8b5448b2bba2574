"""``broadcaster audit``, ``broadcaster users`` and ``broadcaster console``: review, check and prove
the record; manage console accounts; serve the console.

JSON keys (``--json``), stable:
* ``audit check``: ok, run_id, run_status, intended, messages, counts{state: n}, counts_total,
  issues_total, pending_total, issues[{problem, message_id, status}],
  pending[{message_id, status, attempts, next_attempt_at, lease_expires_at, error_code, error_text,
  last_event_detail}] (each list holds at most 1000 entries; the totals are exact)
* ``audit verify``: ok, sealed_now, chains{actions|message_events: {table, entries, first_seq,
  head{seq, id, hash, at}, unsealed, problem}}, problems[{table, kind, id, seq, message}]
* ``audit seal``: sealed
* ``audit log``: [message] with id, run_id, campaign_id, recipient_id, phone, status, error_code,
  error_text, body, encoding, segments, characters, attempts, provider_id, sender, created_at,
  sent_at, final_at, updated_at, next_attempt_at
* ``audit trail``: [action] with id, at, actor, host, action, run_id, details, chain_seq, hash
* ``audit show``: message{…as in log}, run{id, kind, campaign_id, job_id, scheduled_for, template,
  template_sha256, status, created_by, created_at}, events[{id, at, from_status, to_status, source,
  detail, chain_seq, hash}], actions[…as in trail]
* ``audit export``: file, rows, sha256, action_id
* ``audit prune``: before, archive, archive_sha256, counts{runs, messages, message_events, actions},
  kept_runs, action_id
* ``users list``: [{name, role, created_at, created_by, last_login_at, active_sessions}]
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from broadcaster import db
from broadcaster.cli.common import (
    EXIT_USAGE,
    AppContext,
    CliError,
    app_context,
    is_terminal,
    print_json,
    shorten,
    to_json,
)

audit_app = typer.Typer(
    help="Audit: completeness, tamper evidence, review, reports, exports, retention.", no_args_is_help=True
)
users_app = typer.Typer(help="Accounts of the audit console.", no_args_is_help=True)
console_app = typer.Typer(help="The read-only audit web console.", no_args_is_help=True)


def _local(value: Any, ctx: AppContext) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(ctx.settings.tz).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _when(value: str | None, ctx: AppContext, name: str, end: bool = False) -> datetime | None:
    from broadcaster.audit.queries import FilterError, parse_when

    try:
        return parse_when(value, ctx.settings.tz, end=end, name=name)
    except FilterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _record(ctx: AppContext, action: str, details: dict[str, Any], run_id: int | None = None) -> None:
    from broadcaster.trail import record_action

    with db.writing(ctx.engine) as conn:
        record_action(
            conn, at=ctx.clock.now(), actor=ctx.actor, action=action, details=details, run_id=run_id
        )


# --- completeness and tamper evidence --------------------------------------------------------------


@audit_app.command("check")
def check(
    ctx: typer.Context,
    run_id: int = typer.Argument(..., metavar="RUN"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Prove a run complete: one message per intended recipient, each in a state that explains itself."""
    from broadcaster.audit.completeness import CheckError, check_run

    app = app_context(ctx)
    try:
        with db.reading(app.engine) as conn:
            result = check_run(conn, run_id)
    except CheckError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        print_json(result.as_dict())
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items()) or "none"
        verdict = "OK" if result.ok else f"{result.issues_total} ISSUE(S)"
        typer.echo(
            f"run {run_id} ({result.run_status}): intended {result.intended}, messages {result.messages}, "
            f"by state: {counts} (sum {result.counts_total}); pending {result.pending_total}: {verdict}"
        )
        for issue in result.issues:
            where = f"message {issue['message_id']} ({issue['status']}): " if issue["message_id"] else ""
            typer.echo(f"  issue: {where}{issue['problem']}")
        for p in result.pending[:20]:
            typer.echo(
                f"  pending: message {p['message_id']} {p['status']} attempts {p['attempts']} "
                f"next {_local(p['next_attempt_at'], app)}"
            )
        if result.pending_total > 20:
            typer.echo(f"  … {result.pending_total - 20} more pending (--json lists up to 1000)")
    if not result.ok:
        raise CliError(f"run {run_id} is not complete: {result.issues_total} issue(s)")


@audit_app.command("verify")
def verify(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
    no_seal: bool = typer.Option(False, "--no-seal", help="Only read: do not seal pending events first."),
    anchor: Path = typer.Option(None, "--anchor", help="An earlier `verify --json` output kept elsewhere."),
) -> None:
    """Walk both hash chains; name the first entry changed, removed or inserted (exit 1 if any)."""
    from broadcaster.audit.chain import verify as verify_chains

    app = app_context(ctx)
    anchor_data = None
    if anchor is not None:
        try:
            anchor_data = json.loads(anchor.read_text(encoding="utf-8")).get("chains")
        except (OSError, ValueError, AttributeError) as exc:
            raise CliError(f"anchor {anchor}: not a `verify --json` output ({exc})") from exc
    report = verify_chains(app.engine, seal=not no_seal, anchor=anchor_data)
    if as_json:
        print_json(report.as_dict())
    else:
        for name, c in report.chains.items():
            head = f"head #{c.head['seq']} id {c.head['id']} {c.head['hash']}" if c.head else "empty"
            typer.echo(f"{name}: {c.entries} entries checked, {head}; unsealed {c.unsealed}")
        if report.sealed_now:
            typer.echo(f"sealed {report.sealed_now} event(s) first")
        for p in report.problems:
            typer.echo(f"BROKEN: {p.table} {p.kind}: {p.message}")
        if report.ok:
            typer.echo("OK: no entry changed, removed or inserted")
    if not report.ok:
        first = report.problems[0]
        raise CliError(f"the record was altered: {first.message}")


@audit_app.command("seal")
def seal(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Chain every message event written since the last seal."""
    from broadcaster.audit.chain import seal_events

    app = app_context(ctx)
    n = seal_events(app.engine, batch=app.settings.audit_seal_batch)
    if as_json:
        print_json({"sealed": n})
    else:
        typer.echo(f"sealed {n} event(s)")


# --- review ----------------------------------------------------------------------------------------


def _message_filter(
    app: AppContext,
    run: int | None,
    campaign: str | None,
    status: list[str] | None,
    phone: str | None,
    error_code: str | None,
    since: str | None,
    until: str | None,
):  # type: ignore[no-untyped-def]
    from broadcaster.audit.queries import MessageFilter

    return MessageFilter(
        run_id=run,
        campaign=campaign,
        statuses=list(status or []),
        phone=phone,
        error_code=error_code,
        since=_when(since, app, "--since"),
        until=_when(until, app, "--until", end=True),
    )


RUN_OPT = typer.Option(None, "--run", help="Run id.")
CAMPAIGN_OPT = typer.Option(None, "--campaign")
STATUS_OPT = typer.Option(None, "--status", help="Message state (repeatable).")
PHONE_OPT = typer.Option(None, "--phone", help="A full number, or its last 4+ digits.")
CODE_OPT = typer.Option(None, "--error-code")
SINCE_OPT = typer.Option(None, "--since", help="Date or ISO time (campaign zone unless an offset is given).")
UNTIL_OPT = typer.Option(None, "--until", help="Date (the whole day included) or ISO time.")
UNMASK_OPT = typer.Option(False, "--unmask", help="Show full phone numbers (recorded in the trail).")


@audit_app.command("log")
def log(
    ctx: typer.Context,
    run: int = RUN_OPT,
    campaign: str = CAMPAIGN_OPT,
    status: list[str] = STATUS_OPT,
    phone: str = PHONE_OPT,
    error_code: str = CODE_OPT,
    since: str = SINCE_OPT,
    until: str = UNTIL_OPT,
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    before: int = typer.Option(None, "--before", help="Page: only messages with a smaller id."),
    unmask: bool = UNMASK_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Who received what, when, with what outcome (newest first)."""
    from broadcaster.audit.queries import FilterError, list_messages, masked_message

    app = app_context(ctx)
    flt = _message_filter(app, run, campaign, status, phone, error_code, since, until)
    try:
        with db.reading(app.engine) as conn:
            rows = list_messages(conn, flt, region=app.settings.default_region, limit=limit, before_id=before)
    except FilterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    if unmask:
        _record(app, "audit.unmasked", {"command": "audit log", "filters": flt.as_dict(), "rows": len(rows)})
    else:
        rows = [masked_message(m) for m in rows]
    if as_json:
        print_json(rows)
        return
    for m in rows:
        error = (
            f" {m['error_code'] or ''} {m['error_text'] or ''}".rstrip()
            if (m["error_code"] or m["error_text"])
            else ""
        )
        body = shorten(m["body"], 40)
        typer.echo(
            f"{m['id']:>8}  run {m['run_id']:<5} {m['phone']:<18} {m['status']:<11} "
            f"sent {_local(m['sent_at'], app)}  {body}{error}"
        )
    if not rows:
        typer.echo("no messages match")


@audit_app.command("trail")
def trail(
    ctx: typer.Context,
    action: str = typer.Option(None, "--action", help="Exact name, or a prefix ending in '.' (run.)."),
    actor: str = typer.Option(None, "--by", help="Only actions by this actor."),
    run: int = RUN_OPT,
    since: str = SINCE_OPT,
    until: str = UNTIL_OPT,
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    before: int = typer.Option(None, "--before"),
    unmask: bool = UNMASK_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Who imported, changed or launched what (newest first)."""
    from broadcaster.audit.queries import ActionFilter, list_actions, masked_action

    app = app_context(ctx)
    flt = ActionFilter(
        action=action,
        actor=actor,
        run_id=run,
        since=_when(since, app, "--since"),
        until=_when(until, app, "--until", end=True),
    )
    with db.reading(app.engine) as conn:
        rows = list_actions(conn, flt, limit=limit, before_id=before)
    if unmask:
        _record(app, "audit.unmasked", {"command": "audit trail", "rows": len(rows)})
    else:
        rows = [masked_action(a) for a in rows]
    if as_json:
        print_json(rows)
        return
    for a in rows:
        run_part = f" run {a['run_id']}" if a["run_id"] else ""
        typer.echo(
            f"{a['id']:>7}  {_local(a['at'], app)}  {a['actor']}@{a['host'] or '-'}  "
            f"{a['action']}{run_part}  "
            f"{to_json(a['details'], sort_keys=True)}"
        )
    if not rows:
        typer.echo("no actions match")


@audit_app.command("show")
def show(
    ctx: typer.Context,
    message_id: int = typer.Argument(..., metavar="MESSAGE"),
    unmask: bool = UNMASK_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The whole history of one message."""
    from broadcaster.audit.queries import masked_history, message_history

    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        history = message_history(conn, message_id)
    if history is None:
        raise CliError(f"message {message_id} not found")
    if unmask:
        _record(app, "audit.unmasked", {"command": "audit show", "message_id": message_id})
    else:
        history = masked_history(history)
    if as_json:
        print_json(history)
        return
    m, r = history["message"], history["run"]
    typer.echo(
        f"message {m['id']} to {m['phone']}: {m['status']}"
        + (
            f" ({m['error_code'] or ''} {m['error_text'] or ''})".replace("( ", "(")
            if m["error_code"] or m["error_text"]
            else ""
        )
    )
    typer.echo(f"  run {r['id']} {r['template']} ({r['status']}), campaign {r['campaign_id'] or '-'}")
    typer.echo(f"  body: {m['body']}")
    typer.echo(
        f"  {m['encoding']}, {m['segments']} segment(s); attempts {m['attempts']}; "
        f"provider id {m['provider_id'] or '-'}"
    )
    typer.echo("  history:")
    for e in history["events"]:
        seal_note = f"#{e['chain_seq']}" if e["chain_seq"] else "unsealed"
        typer.echo(
            f"    {_local(e['at'], app)}  {e['from_status'] or '-'} -> {e['to_status']}  by {e['source']}  "
            f"{to_json(e['detail'], sort_keys=True)}  [{seal_note}]"
        )
    if history["actions"]:
        typer.echo("  related actions:")
        for a in history["actions"]:
            typer.echo(
                f"    {_local(a['at'], app)}  {a['actor']}  {a['action']}  "
                f"{to_json(a['details'], sort_keys=True)}"
            )


# --- reports and exports ---------------------------------------------------------------------------


@audit_app.command("report")
def report(
    ctx: typer.Context,
    run_id: int = typer.Argument(..., metavar="RUN"),
    output: Path = typer.Option(None, "-o", "--output", help="Default: run-RUN-report.html"),
) -> None:
    """A self-contained HTML report of a run (template, variables, counts, errors, cost, charts)."""
    from broadcaster.audit.chain import seal_events
    from broadcaster.audit.report import ReportError, render_report_html, run_report

    app = app_context(ctx)
    seal_events(app.engine, batch=app.settings.audit_seal_batch)
    try:
        with db.reading(app.engine) as conn:
            data = run_report(
                conn,
                run_id,
                zone=app.settings.tz,
                cost_per_segment=app.settings.cost_per_segment,
                currency=app.settings.cost_currency,
                store=app.templates(),
            )
    except ReportError as exc:
        raise CliError(str(exc)) from exc
    html = render_report_html(data, generated_at=app.clock.now(), generated_by=app.actor)
    path = output or Path(f"run-{run_id}-report.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc
    _record(
        app,
        "audit.reported",
        {"file": path.name, "sha256": hashlib.sha256(html.encode()).hexdigest()},
        run_id=run_id,
    )
    typer.echo(f"wrote {path}")


@audit_app.command("export")
def export(
    ctx: typer.Context,
    fmt: str = typer.Option("csv", "--format", help="csv, jsonl or xlsx."),
    what: str = typer.Option("messages", "--what", help="messages (the log) or trail (the actions)."),
    output: Path = typer.Option(
        None, "-o", "--output", help="Default: WHAT-TIME.FORMAT in the current folder."
    ),
    run: int = RUN_OPT,
    campaign: str = CAMPAIGN_OPT,
    status: list[str] = STATUS_OPT,
    phone: str = PHONE_OPT,
    error_code: str = CODE_OPT,
    action: str = typer.Option(None, "--action", help="Trail: action name or prefix ending in '.'."),
    since: str = SINCE_OPT,
    until: str = UNTIL_OPT,
    unmask: bool = UNMASK_OPT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the message log or the trail; numbers masked unless --unmask; recorded in the trail."""
    from broadcaster.audit import exports
    from broadcaster.audit.queries import ActionFilter, FilterError

    app = app_context(ctx)
    if fmt not in exports.FORMATS:
        raise CliError(f"--format {fmt!r}: choose one of {', '.join(exports.FORMATS)}", EXIT_USAGE)
    if what not in exports.WHAT:
        raise CliError(f"--what {what!r}: choose one of {', '.join(exports.WHAT)}", EXIT_USAGE)
    if what == "messages":
        flt: Any = _message_filter(app, run, campaign, status, phone, error_code, since, until)
    else:
        flt = ActionFilter(
            action=action,
            run_id=run,
            since=_when(since, app, "--since"),
            until=_when(until, app, "--until", end=True),
        )
    path = output or Path(f"{what}-{app.clock.now().strftime('%Y%m%dT%H%M%SZ')}.{fmt}")
    try:
        result = exports.export(
            app.engine,
            what=what,
            flt=flt,
            fmt=fmt,
            path=path,
            unmask=unmask,
            actor=app.actor,
            clock=app.clock,
            region=app.settings.default_region,
            zone=app.settings.tz,
        )
    except FilterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if as_json:
        print_json(result.as_dict())
    else:
        typer.echo(
            f"wrote {result.rows} row(s) to {result.path} (sha256 {result.sha256}); "
            f"{'UNMASKED' if unmask else 'numbers masked'}; recorded as action {result.action_id}"
        )


# --- retention -------------------------------------------------------------------------------------


@audit_app.command("prune")
def prune(
    ctx: typer.Context,
    before: str = typer.Option(None, "--before", help="Date; default: today minus the retention period."),
    archive_dir: Path = typer.Option(
        None, "--archive-dir", help="Default: BROADCASTER_AUDIT_ARCHIVE_DIR or VAR/archive."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Archive, then delete, finished runs and actions older than DATE; records that it did."""
    from datetime import timedelta

    from broadcaster.audit.retention import PruneError
    from broadcaster.audit.retention import prune as do_prune

    app = app_context(ctx)
    settings = app.settings
    cutoff = _when(before, app, "--before") if before else None
    if cutoff is None:
        day = (app.clock.now() - timedelta(days=settings.audit_retention_days)).astimezone(settings.tz).date()
        cutoff = _when(day.isoformat(), app, "--before")
    assert cutoff is not None
    folder = archive_dir or settings.audit_archive_dir or settings.var_dir / "archive"
    try:
        result = do_prune(
            app.engine,
            before=cutoff,
            archive_dir=folder,
            retention_days=settings.audit_retention_days,
            actor=app.actor,
            clock=app.clock,
        )
    except PruneError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        print_json(result.as_dict())
    else:
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
        typer.echo(f"archived to {result.archive} (sha256 {result.archive_sha256}), then deleted: {counts}")
        if result.kept_runs:
            typer.echo(
                f"kept {len(result.kept_runs)} older run(s) still open or with newer events: "
                + ", ".join(map(str, result.kept_runs[:20]))
            )


# --- console accounts and server -------------------------------------------------------------------


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    role: str = typer.Option(
        ..., "--role", help="auditor (reads, masked numbers) or supervisor (may unmask, export)."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
) -> None:
    """Create a console account."""
    from broadcaster.accounts import AccountError, add_user, validate_new_user

    app = app_context(ctx)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif is_terminal():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise CliError("no terminal to ask for the password: use --password-stdin", EXIT_USAGE)
    try:
        validate_new_user(name, role, password)
        with db.writing(app.engine) as conn:
            add_user(conn, name, role, password, at=app.clock.now(), actor=app.actor)
    except AccountError as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"user {name} added ({role})")


@users_app.command("remove")
def users_remove(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Delete a console account and end its sessions."""
    from broadcaster.accounts import AccountError, remove_user

    app = app_context(ctx)
    try:
        with db.writing(app.engine) as conn:
            remove_user(conn, name, at=app.clock.now(), actor=app.actor)
    except AccountError as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"user {name} removed")


@users_app.command("list")
def users_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Console accounts and their roles."""
    from broadcaster.accounts import list_users

    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        users = list_users(conn, now=app.clock.now())
    if as_json:
        print_json(users)
        return
    for u in users:
        typer.echo(
            f"{u['name']:<20} {u['role']:<11} created {_local(u['created_at'], app)} by "
            f"{u['created_by'] or '-'}; last login {_local(u['last_login_at'], app)}; "
            f"{u['active_sessions']} active session(s)"
        )
    if not users:
        typer.echo("no users (add one: broadcaster users add NAME --role auditor)")


@console_app.command("serve")
def console_serve(
    ctx: typer.Context,
    host: str = typer.Option(None, "--host", help="Default: BROADCASTER_CONSOLE_HOST (127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Default: BROADCASTER_CONSOLE_PORT (8470)."),
) -> None:
    """Serve the audit console (read-only; login required)."""
    import uvicorn

    from broadcaster.web.console import create_console_app

    app = app_context(ctx)
    bind_host = host or app.settings.console_host
    bind_port = port or app.settings.console_port
    web = create_console_app(app.settings, app.engine, app.clock)
    typer.echo(f"audit console on http://{bind_host}:{bind_port}/ (Ctrl-C to stop)")
    # No access log: the URLs of searches carry their filters, phone numbers included.
    uvicorn.run(web, host=bind_host, port=bind_port, log_level="info", server_header=False, access_log=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(users_app, name="users")
    app.add_typer(console_app, name="console")
