"""``broadcaster recipients``, ``broadcaster lists`` and ``broadcaster optout``.

JSON keys are documented in docs/recipients.md; they are stable (scripts depend on them).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from broadcaster import db
from broadcaster.cli.common import (
    AppContext,
    CliError,
    app_context,
    is_terminal,
    print_json,
    stoppable_progress,
)
from broadcaster.csv_source import SourceError
from broadcaster.import_rows import HelperFailed
from broadcaster.importer import (
    ImportFailed,
    ImportReport,
    batch_rejects,
    batches,
    import_optouts,
    import_recipients,
)
from broadcaster.lists import ListError, list_members, list_summaries, list_summary, remove_member
from broadcaster.optouts import add_optout, list_optouts, remove_optout
from broadcaster.phones import normalise_one

# A file that cannot be read (found before anything is written), or that stops being readable, or a
# helper process that died: one line each. What an import committed before it stopped stays.
IMPORT_ERRORS = (ImportFailed, SourceError, HelperFailed)

recipients_app = typer.Typer(help="Import recipients from CSV files; import history.", no_args_is_help=True)
lists_app = typer.Typer(help="Recipient lists: names and sizes (no subcommand), members.")
optout_app = typer.Typer(help="Numbers that must never be sent to.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON (stable keys, see docs/recipients.md).")
ENCODING = typer.Option(
    "auto", "--encoding", help="auto (UTF-8 with or without BOM, UTF-16 with BOM, else GB18030), or a codec."
)
PHONE_COLUMN = typer.Option(
    None, "--phone-column", help="Header (or 1-based number) of the phone column, if not recognised."
)
REGION = typer.Option(
    None,
    "--region",
    help="Region for numbers without country code (default: BROADCASTER_DEFAULT_REGION, CN).",
)
REJECTS = typer.Option(
    None, "--rejects", help="Write rejected rows (row, value, reason, message) to this CSV."
)
DRY_RUN = typer.Option(False, "--dry-run", help="Check the file and report what would change; write nothing.")


def _resolve(app: AppContext, file: Path) -> Path:
    """FILE as given, or else relative to the recipients folder (BROADCASTER_RECIPIENTS_DIR)."""
    if file.exists() or file.is_absolute():
        return file
    candidate = app.settings.recipients_dir / file
    return candidate if candidate.exists() else file


def _local(app: AppContext, value: datetime | None) -> str:
    return value.astimezone(app.settings.tz).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


# --- recipients ---------------------------------------------------------------------------------


@recipients_app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="CSV file (Excel export, GBK/GB18030 or UTF-8); also looked up in the recipients folder."
    ),
    list_name: str = typer.Option(..., "--list", help="List to add the recipients to (created if missing)."),
    region: str = REGION,
    encoding: str = ENCODING,
    phone_column: str = PHONE_COLUMN,
    allow_landline: bool = typer.Option(False, "--allow-landline", help="Accept fixed-line numbers too."),
    rejects: Path = REJECTS,
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Import recipients from a CSV file into a list; rejected rows never stop the import."""
    _run_import(
        ctx,
        import_recipients,
        file,
        as_json=as_json,
        list_name=list_name,
        region=region,
        encoding=encoding,
        phone_column=phone_column,
        allow_landline=allow_landline,
        dry_run=dry_run,
        rejects_path=rejects,
    )


def _run_import(ctx: typer.Context, do_import: Any, file: Path, *, as_json: bool, **options: Any) -> None:
    """Both import commands: the file resolved, progress and Ctrl-C between chunks, one-line errors."""
    app = app_context(ctx)
    options["region"] = options["region"] or app.settings.default_region
    kept = (
        "nothing was written (dry run)"
        if options["dry_run"]
        else "the rows imported so far are kept and the batch is marked unfinished; "
        "import the same file again to complete it"
    )
    with stoppable_progress(is_terminal() and not as_json, f"importing {file.name}", kept) as progress:
        try:
            report = do_import(
                app.engine,
                _resolve(app, file),
                clock=app.clock,
                actor=app.actor,
                progress=progress,
                **options,
            )
        except IMPORT_ERRORS as exc:
            raise CliError(str(exc)) from None
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(app, report)


def _print_report(app: AppContext, r: ImportReport) -> None:
    target = f' into list "{r.list}"' if r.list else ""
    where = "dry run, nothing written" if r.dry_run else f"batch {r.batch}"
    typer.echo(f"{'checked' if r.dry_run else 'imported'} {r.file}{target} ({where}; encoding {r.encoding})")
    if r.phone_column or r.attributes:
        typer.echo(
            f"  phone column {r.phone_column or '(no header)'}"
            + (f"; attributes: {', '.join(r.attributes)}" if r.attributes else "")
        )
    new = "new recipients" if r.kind == "recipients" else "newly opted out"
    stored = "already stored" if r.kind == "recipients" else "already opted out"
    lines = [
        ("rows", r.rows, ""),
        ("imported", r.imported, new),
        ("updated", r.updated, "name or attributes changed") if r.kind == "recipients" else None,
        (
            "duplicates",
            r.duplicates,
            f"{r.duplicates_in_file} repeated in the file, {r.already_stored} {stored}",
        ),
        ("rejected", r.rejected, ", ".join(f"{k} {v}" for k, v in r.rejected_by_reason.items())),
        ("added to list", r.added_to_list, f"list now {r.list_size}, of whom {r.list_opted_out} opted out")
        if r.kind == "recipients"
        else None,
    ]
    for line in filter(None, lines):
        label, count, note = line
        typer.echo(f"  {label:<14}{count:>8}" + (f"  ({note})" if note else ""))
    if r.list_created:
        typer.echo(f'  list "{r.list}" {"would be" if r.dry_run else "was"} created')
    if r.rejected:
        if r.rejects_file:
            typer.echo(f"rejected rows written to {r.rejects_file}")
        else:
            for x in r.first_rejects:
                typer.echo(f"  row {x['row']}: {x['value']!r}: {x['reason']}: {x['message']}")
            more = r.rejected - len(r.first_rejects)
            hint = f"broadcaster recipients rejects {r.batch}" if r.batch else "--rejects PATH"
            if more > 0:
                typer.echo(f"  … {more} more rejected rows: see {hint}")
    if r.unchanged and not r.dry_run:
        earlier = ""
        if r.previous_batch:
            p = r.previous_batch
            when = _local(app, p["at"])
            earlier = f": this file was imported before as batch {p['batch']} ({when}, by {p['actor']})"
        typer.echo(f"nothing changed{earlier}")


@recipients_app.command("batches")
def batches_cmd(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", min=1, help="How many of the latest batches."),
    as_json: bool = JSON,
) -> None:
    """Import history: the latest import batches, newest first."""
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        rows = batches(conn, limit=limit)
    keys = (
        "id", "kind", "list", "file_name", "sha256", "encoding", "rows", "imported", "updated", "duplicates",
        "rejected", "added_to_list", "actor", "host", "started_at", "finished_at",
    )  # fmt: skip
    if as_json:
        print_json([{k: r[k] for k in keys} for r in rows])
        return
    if not rows:
        typer.echo("no imports yet")
    for r in rows:
        state = "" if r["finished_at"] else "  INCOMPLETE (interrupted?)"
        typer.echo(
            f"batch {r['id']}  {_local(app, r['started_at'])}  {r['kind']}"
            + (f" → {r['list']}" if r["list"] else "")
            + f"  {Path(r['file_name']).name}  rows {r['rows']}, imported {r['imported']}, "
            f"updated {r['updated']}, duplicates {r['duplicates']}, rejected {r['rejected']}  "
            f"by {r['actor']}@{r['host']}{state}"
        )


@recipients_app.command("rejects")
def rejects_cmd(
    ctx: typer.Context, batch: int = typer.Argument(..., help="Batch id."), as_json: bool = JSON
) -> None:
    """The rows an import batch refused, with their row number, value and reason."""
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        try:
            rows = batch_rejects(conn, batch)
        except IMPORT_ERRORS as exc:
            raise CliError(str(exc)) from None
    if as_json:
        print_json(
            [
                {
                    "row": r["row_number"],
                    "value": r["raw_value"],
                    "reason": r["reason"],
                    "message": r["detail"],
                }
                for r in rows
            ]
        )
        return
    if not rows:
        typer.echo(f"batch {batch} rejected no rows")
    for r in rows:
        typer.echo(f"row {r['row_number']}: {r['raw_value']!r}: {r['reason']}: {r['detail']}")


# --- lists --------------------------------------------------------------------------------------


@lists_app.callback(invoke_without_command=True)
def lists_cmd(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Recipient lists with their sizes (``lists show NAME`` for members)."""
    if ctx.invoked_subcommand is not None:
        return
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        rows = list_summaries(conn)
    if as_json:
        print_json([_list_json(r) for r in rows])
        return
    if not rows:
        typer.echo("no lists yet (broadcaster recipients import FILE --list NAME)")
    for r in rows:
        opted = f", {r['opted_out']} opted out" if r["opted_out"] else ""
        typer.echo(f"{r['name']}  {r['size']} members{opted}  created {_local(app, r['created_at'])}")


def _list_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": r["name"],
        "description": r["description"],
        "size": r["size"],
        "opted_out": r["opted_out"],
        "created_at": r["created_at"],
    }


@lists_app.command("show")
def lists_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="List name."),
    limit: int = typer.Option(50, "--limit", min=0, help="Members to show (0: all)."),
    as_json: bool = JSON,
) -> None:
    """A list's size and its members (phone, name, attributes, opt-out state)."""
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        try:
            summary = list_summary(conn, name)
        except ListError as exc:
            raise CliError(str(exc)) from None
        members = list_members(conn, summary["id"], limit=limit or None)
    if as_json:
        out = _list_json(summary)
        out["members"] = [
            {k: m[k] for k in ("phone", "name", "attributes", "opted_out", "added_at", "batch_id")}
            for m in members
        ]
        print_json(out)
        return
    typer.echo(f"{summary['name']}: {summary['size']} members, {summary['opted_out']} opted out")
    for m in members:
        attrs = ", ".join(f"{k}={v}" for k, v in (m["attributes"] or {}).items())
        flag = "  [opted out]" if m["opted_out"] else ""
        typer.echo(f"  {m['phone']}  {m['name'] or '-'}  {attrs}{flag}")
    if limit and summary["size"] > len(members):
        typer.echo(f"  … {summary['size'] - len(members)} more (--limit 0 for all)")


@lists_app.command("remove-member")
def lists_remove_member(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="List name."),
    phone: str = typer.Argument(..., help="Phone number (any format)."),
    as_json: bool = JSON,
) -> None:
    """Take a number off a list (the recipient stays in other lists)."""
    app = app_context(ctx)
    e164 = _phone_arg(app, phone)
    with db.writing(app.engine) as conn:
        try:
            removed = remove_member(conn, name, e164, at=app.clock.now(), actor=app.actor)
        except ListError as exc:
            raise CliError(str(exc)) from None
    if as_json:
        print_json({"list": name, "phone": e164, "removed": removed})
    else:
        typer.echo(f"removed {e164} from {name}" if removed else f"{e164} is not a member of {name}")


# --- opt-outs -----------------------------------------------------------------------------------


def _phone_arg(app: AppContext, raw: str) -> str:
    result = normalise_one(raw, app.settings.default_region)
    if not result.ok:
        raise CliError(f"{raw!r} is not a valid phone number: {result.message}")
    return result.phone  # type: ignore[return-value]


@optout_app.command("add")
def optout_add(
    ctx: typer.Context,
    phone: str = typer.Argument(..., help="Phone number (any format; stored as E.164)."),
    reason: str = typer.Option(None, "--reason", help="Why (kept with the opt-out and in the trail)."),
    as_json: bool = JSON,
) -> None:
    """Opt a number out: it will never be sent to, in any list or run."""
    app = app_context(ctx)
    e164 = _phone_arg(app, phone)
    with db.writing(app.engine) as conn:
        added = add_optout(conn, e164, source="operator", at=app.clock.now(), actor=app.actor, reason=reason)
    if as_json:
        print_json({"phone": e164, "added": added})
    else:
        typer.echo(f"opted out {e164}" if added else f"{e164} was already opted out")


@optout_app.command("remove")
def optout_remove(
    ctx: typer.Context,
    phone: str = typer.Argument(..., help="Phone number (any format)."),
    reason: str = typer.Option(None, "--reason", help="Why (kept in the trail)."),
    as_json: bool = JSON,
) -> None:
    """Lift an opt-out (for instance after the person asked to receive messages again)."""
    app = app_context(ctx)
    e164 = _phone_arg(app, phone)
    with db.writing(app.engine) as conn:
        removed = remove_optout(
            conn, e164, source="operator", at=app.clock.now(), actor=app.actor, reason=reason
        )
    if as_json:
        print_json({"phone": e164, "removed": removed})
    else:
        typer.echo(f"{e164} may be sent to again" if removed else f"{e164} was not opted out")


@optout_app.command("list")
def optout_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Every opted-out number, oldest first, with its source, reason and who recorded it."""
    app = app_context(ctx)
    with db.reading(app.engine) as conn:
        rows = list_optouts(conn)
    keys = ("phone", "source", "reason", "actor", "created_at")
    if as_json:
        print_json([{k: r[k] for k in keys} for r in rows])
        return
    if not rows:
        typer.echo("no opted-out numbers")
    for r in rows:
        reason = f"  {r['reason']}" if r["reason"] else ""
        typer.echo(f"{r['phone']}  {r['source']}  {_local(app, r['created_at'])}  by {r['actor']}{reason}")


@optout_app.command("import")
def optout_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV file with a phone column (or just one column of numbers)."),
    reason: str = typer.Option(None, "--reason", help="Reason recorded with each opt-out."),
    region: str = REGION,
    encoding: str = ENCODING,
    phone_column: str = PHONE_COLUMN,
    rejects: Path = REJECTS,
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Opt out every number of a CSV file (source "import"); bad rows are rejected, not fatal."""
    _run_import(
        ctx,
        import_optouts,
        file,
        as_json=as_json,
        reason=reason,
        region=region,
        encoding=encoding,
        phone_column=phone_column,
        dry_run=dry_run,
        rejects_path=rejects,
    )


def register(app: typer.Typer) -> None:
    """Add ``recipients``, ``lists`` and ``optout`` to the root app."""
    app.add_typer(recipients_app, name="recipients")
    app.add_typer(lists_app, name="lists")
    app.add_typer(optout_app, name="optout")
