"""``broadcaster demo``: the main job on the embedded defaults, end to end and idempotent.

Imports the sample recipients, sends the August 31 public-service SMS of the 2011 Quality Month
through the configured provider (the log provider by default: nothing leaves the machine) and
prints the run's summary from the send log. The run is keyed like a scheduled occurrence
(job ``demo:public-service-0831`` at 2011-08-31 09:00 Asia/Shanghai), so running the demo again
finds the same run and sends nobody a second copy.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import typer

from broadcaster import db
from broadcaster.cli.common import AppContext, CliError, app_context, print_json
from broadcaster.cli.sending import dispatch_in_process, report_run
from broadcaster.importer import ImportFailed, import_recipients
from broadcaster.runs import create_run, materialise, outbox_summary

SAMPLES = (
    ("public-sample.csv", "public"),
    ("bureau-contacts.csv", "bureau-contacts"),
    ("machinery-enterprises.csv", "machinery"),
)
DEMO_JOB = "demo:public-service-0831"
DEMO_TEMPLATE = "public-service-0831"
DEMO_ZONE = "Asia/Shanghai"
DEMO_OCCURRENCE = datetime(2011, 8, 31, 9, 0, tzinfo=ZoneInfo(DEMO_ZONE))


def _import_samples(app: AppContext, quiet: bool) -> list[dict[str, object]]:
    reports = []
    for file_name, list_name in SAMPLES:
        path = app.settings.recipients_dir / file_name
        if not path.is_file():
            raise CliError(f"sample file {path} not found (BROADCASTER_RECIPIENTS_DIR)")
        try:
            report = import_recipients(
                app.engine,
                path,
                list_name=list_name,
                clock=app.clock,
                actor=app.actor,
                region=app.settings.default_region,
            ).as_dict()
        except ImportFailed as exc:
            raise CliError(str(exc)) from None
        reports.append(report)
        if not quiet:
            typer.echo(
                f"imported {path.name} into list {list_name!r}: {report['rows']} rows, "
                f"{report['imported']} new, {report['updated']} updated, "
                f"{report['duplicates']} duplicates, {report['rejected']} rejected",
            )
    return reports


def demo(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: imports, run, counts."),
    max_wait: float = typer.Option(300.0, "--max-wait", help="Seconds to wait for retries before returning."),
) -> None:
    """Import the sample lists and send the August 31 public-service SMS (log provider by default)."""
    app = app_context(ctx)
    typer.echo(
        f"database {app.engine.url.render_as_string(hide_password=True)}, provider {app.settings.provider}",
        err=True,
    )
    imports = _import_samples(app, quiet=as_json)
    store = app.templates()
    ref = create_run(
        app.engine,
        template=DEMO_TEMPLATE,
        list_names=["public"],
        variables={},
        clock=app.clock,
        actor=app.actor,
        timezone=DEMO_ZONE,
        store=store,
        job_id=DEMO_JOB,
        campaign_id="quality-month-2011",
        scheduled_for=DEMO_OCCURRENCE,
    )
    materialise(app.engine, ref.id, store=store, clock=app.clock)
    if not as_json:
        typer.echo(
            f"run {ref.id}: {'created' if ref.created else 'already exists (nobody is sent a second copy)'}"
        )
    stopped = dispatch_in_process(app, ref.id, max_wait)
    if as_json:
        with db.reading(app.engine) as conn:
            summary = outbox_summary(conn, ref.id)
        print_json(
            {
                "imports": imports,
                "run": ref.id,
                "created": ref.created,
                "intended": summary.intended,
                "counts": summary.counts,
                "segments": summary.segments,
                "interrupted": stopped,
                "provider_file": str(app.settings.log_provider_path)
                if app.settings.provider == "log"
                else None,
            }
        )
        return
    report_run(app, ref.id, as_json=False, stopped=stopped)
    if app.settings.provider == "log":
        typer.echo(f"the log provider recorded what it 'sent' in {app.settings.log_provider_path}")
    typer.echo(f"next: `broadcaster log --run {ref.id}`, `broadcaster audit check {ref.id}`")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
