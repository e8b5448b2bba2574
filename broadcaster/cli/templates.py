"""``broadcaster templates list|check|render``: see docs/formats-templates.md."""

from __future__ import annotations

import hashlib
import sys
from datetime import datetime
from typing import Any

import phonenumbers
import typer

from broadcaster import db
from broadcaster.cli.common import (
    EXIT_USAGE,
    AppContext,
    CliError,
    app_context,
    parse_vars,
    print_json,
)
from broadcaster.segments import measure
from broadcaster.template_check import (
    SAMPLE_RECIPIENT,
    ListNotFound,
    check_template,
    first_member,
    lookup_recipient,
    profile_list,
    sample_measure,
)
from broadcaster.templating import TemplateError, build_context, check_variables

templates_app = typer.Typer(
    help="Message templates: list them, check them, render one.", no_args_is_help=True
)

VAR_HELP = "Run variable key=value (repeatable)."
DATE_HELP = "Send date YYYY-MM-DD (or YYYY-MM-DDTHH:MM) in the configured time zone; default: now."


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(templates_app, name="templates")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")  # one line, never wrapped
    sys.stderr.flush()


def _send_time(app: AppContext, value: str | None) -> datetime:
    """The send time in the campaign zone: ``--date`` read in that zone, else the clock's now."""
    tz = app.settings.tz
    if value is None:
        return app.clock.now().astimezone(tz)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"--date {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM", EXIT_USAGE) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(tz)


def _variables(pairs: list[str] | None) -> dict[str, str]:
    variables = parse_vars(pairs)
    try:
        check_variables(variables)
    except TemplateError as exc:
        raise CliError(f"--var: {exc}", EXIT_USAGE) from None
    return variables


def _e164(value: str, region: str) -> str:
    """``--recipient`` as stored (E.164); national forms of the default region are accepted too."""
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return value.strip()
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@templates_app.command("list")
def list_templates(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="JSON list of {name, sha256, encoding, segments, …}."),
) -> None:
    """Templates in the templates folder, with the measure of a sample render without recipient data."""
    app = app_context(ctx)
    store = app.templates()
    now = _send_time(app, None)
    rows: list[dict[str, Any]] = []
    for name in store.names():
        row: dict[str, Any] = {"name": name, "sha256": None, "encoding": None, "segments": None}
        row.update(characters=None, error=None)
        try:
            template = store.load(name)
        except TemplateError as exc:
            row["sha256"] = hashlib.sha256(store.path(name).read_bytes()).hexdigest()
            row["error"] = exc.reason
        else:
            row["sha256"] = template.sha256
            m = sample_measure(store, template, now)
            if m is None:
                row["error"] = "needs recipient data or run variables: " + ", ".join(
                    sorted(template.variables)
                )
            else:
                row.update(encoding=m.encoding, segments=m.segments, characters=m.characters)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    if not rows:
        _note(f"no templates in {store.folder}")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        if r["encoding"]:
            what = f"{r['encoding']}, {r['segments']} segment(s), {r['characters']} characters"
        else:
            what = f"- ({r['error']})"
        _out(f"{r['name']:<{width}}  {r['sha256'][:12]}  {what}")


@templates_app.command("check")
def check(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Template to check; default: every template."),
    list_name: str = typer.Option(None, "--list", help="Check against the members of this list."),
    var: list[str] = typer.Option(None, "--var", help=VAR_HELP),
    date: str = typer.Option(None, "--date", help=DATE_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="JSON list of {template, ok, errors, warnings, variables, …}."
    ),
) -> None:
    """Syntax, variables, length and segments, signature. Exit 1 if any template has an error."""
    app = app_context(ctx)
    store = app.templates()
    variables = _variables(var)
    send_time = _send_time(app, date)
    known = store.names()
    if name is not None and name not in known:
        raise CliError(f"template {name!r} not found in {store.folder} (known: {', '.join(known) or 'none'})")
    if not known:
        raise CliError(f"no templates in {store.folder}")
    names = [name] if name is not None else known
    profile = None
    if list_name is not None:
        try:
            with db.reading(app.engine) as conn:
                profile = profile_list(conn, list_name)
        except ListNotFound as exc:
            raise CliError(str(exc)) from None
    results = [
        check_template(store, n, variables=variables, send_time=send_time, profile=profile) for n in names
    ]
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        width = max(len(r.template) for r in results)
        for r in results:
            status = "ok" if r.ok else "ERROR"
            m = r.measure
            what = (
                f"{m.encoding}, {m.segments} segment(s), {m.characters} characters" if m else "not measured"
            )
            _out(f"{r.template:<{width}}  {status:<5}  {what}")
            for e in r.errors:
                _out(f"  error: {e}")
            for w in r.warnings:
                _out(f"  warning: {w}")
    failed = [r.template for r in results if not r.ok]
    if failed:
        raise CliError(f"{len(failed)} of {len(results)} template(s) with errors: {', '.join(failed)}")


@templates_app.command("render")
def render(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Template to render."),
    var: list[str] = typer.Option(None, "--var", help=VAR_HELP),
    recipient: str = typer.Option(
        None, "--recipient", help="Render for this recipient (E.164) from the database."
    ),
    list_name: str = typer.Option(
        None, "--list", help="With --recipient: must be a member; alone: render for the list's first member."
    ),
    date: str = typer.Option(None, "--date", help=DATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON {body, encoding, segments, characters, …}."),
) -> None:
    """Print the body one recipient would get (a sample recipient if none is given)."""
    app = app_context(ctx)
    store = app.templates()
    variables = _variables(var)
    send_time = _send_time(app, date)
    template = store.load(name)
    person: dict[str, Any] | None
    if recipient is None and list_name is None:
        person = SAMPLE_RECIPIENT
        _note(
            f"note: no --recipient: sample recipient name={SAMPLE_RECIPIENT['name']} "
            f"phone={SAMPLE_RECIPIENT['phone']}, no attributes"
        )
    else:
        try:
            with db.reading(app.engine) as conn:
                if recipient is not None:
                    phone = _e164(recipient, app.settings.default_region)
                    person = lookup_recipient(conn, phone, list_name)
                    if person is None:
                        where = f"in list {list_name!r}" if list_name else "in the database"
                        raise CliError(f"--recipient {recipient}: no recipient {phone} {where}")
                else:
                    person = first_member(conn, list_name)
                    if person is None:
                        raise CliError(f"list {list_name!r} has no members")
                    _note(f"note: rendering for the first member of list {list_name!r}: {person['phone']}")
        except ListNotFound as exc:
            raise CliError(str(exc)) from None
    body = store.render(template, build_context(recipient=person, variables=variables, send_time=send_time))
    m = measure(body)
    if m.too_long:
        _note(f"warning: {m.characters} characters: Twilio refuses bodies over 1600 (error 21617)")
    if as_json:
        print_json(
            {
                "template": template.name,
                "sha256": template.sha256,
                "body": body,
                **m.as_dict(),
                "send_date": send_time.date(),
                "recipient": None if person is SAMPLE_RECIPIENT else person["phone"],
            }
        )
    else:
        _out(body)
