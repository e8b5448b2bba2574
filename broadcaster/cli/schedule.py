"""``broadcaster schedule check|list|preview|simulate``, ``broadcaster daemon``, ``broadcaster status``.

JSON keys are documented in docs/schedules.md and docs/operations-daemon.md.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer

from broadcaster.cli.common import EXIT_USAGE, AppContext, CliError, app_context, print_json
from broadcaster.clock import Clock

schedule_app = typer.Typer(help="Scheduled campaigns: schedules/*.toml.", no_args_is_help=True)


def _clock(actx: AppContext) -> Clock:
    from broadcaster.scheduling.rehearsal import RehearsalError, clock_for

    try:
        return clock_for(actx.settings, actx.clock)
    except RehearsalError as exc:
        raise CliError(str(exc)) from exc


def _catalog(actx: AppContext):  # type: ignore[no-untyped-def]
    from broadcaster.scheduling.catalog import load_catalog

    return load_catalog(
        actx.settings.schedules_dir,
        actx.templates(),
        default_grace=timedelta(seconds=actx.settings.schedule_default_grace_seconds),
    )


def _warn_issues(catalog) -> None:  # type: ignore[no-untyped-def]
    for issue in catalog.issues:
        typer.echo(f"error: {issue}", err=True)


def _parse_when(value: str, zone: ZoneInfo, *, end_of_day: bool = False, option: str) -> datetime:
    """A date (local midnight; with ``end_of_day`` the last instant of that day) or an ISO
    datetime (naive = local to ``zone``)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            if end_of_day:
                return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone) - timedelta(
                    microseconds=1
                )
            return datetime.combine(day, time(0), tzinfo=zone)
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CliError(f"{option} {value!r}: expected a date (2011-09-01) or a datetime", EXIT_USAGE) from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=zone)


def _fmt_local(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M %Z") if at else "-"


@schedule_app.command("check")
def check(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Validate every campaign file (syntax, fields, zones, triggers, templates, slogan pools)."""
    actx = app_context(ctx)
    catalog = _catalog(actx)
    if as_json:
        print_json(
            {
                "ok": not catalog.issues,
                "files": [
                    {"file": e.file, "campaign": e.campaign_id, "jobs": [j.key for j in e.jobs]}
                    for e in catalog.campaigns.values()
                ],
                "errors": [i.as_dict() for i in catalog.issues],
            }
        )
    else:
        for entry in catalog.campaigns.values():
            typer.echo(f"ok    {entry.file}: campaign {entry.campaign_id}, {len(entry.jobs)} job(s)")
        _warn_issues(catalog)
    if catalog.issues:
        raise CliError(f"{len(catalog.issues)} problem(s) in the campaign files")


@schedule_app.command("list")
def list_jobs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every job of the valid files, with its next fire time."""
    from broadcaster.scheduling.occurrences import next_occurrence

    actx = app_context(ctx)
    catalog = _catalog(actx)
    now = _clock(actx).now()
    jobs = []
    for job in sorted(catalog.jobs.values(), key=lambda j: j.key):
        upcoming = next_occurrence(job, now) if job.enabled else None
        jobs.append(
            {
                "job": job.key,
                "campaign": job.campaign_id,
                "id": job.job_id,
                "name": job.name,
                "file": job.source,
                "enabled": job.enabled,
                "trigger": job.describe_trigger(),
                "timezone": job.timezone,
                "start": job.start,
                "end": job.end,
                "template": job.template,
                "lists": list(job.lists),
                "priority": job.priority,
                "misfire_grace_seconds": job.grace.total_seconds(),
                "pool": (
                    {"source": job.pool.source, "order": job.pool.order, "size": len(job.pool.slogans)}
                    if job.pool
                    else None
                ),
                "next_fire": upcoming.astimezone(UTC) if upcoming else None,
                "next_fire_local": upcoming,
            }
        )
    if as_json:
        print_json({"now": now, "jobs": jobs, "errors": [i.as_dict() for i in catalog.issues]})
    else:
        for j in jobs:
            state = "" if j["enabled"] else " (disabled)"
            typer.echo(f"{j['job']:<45} {_fmt_local(j['next_fire_local']):<24} {j['trigger']}{state}")
        if not jobs:
            typer.echo("no jobs")
        _warn_issues(catalog)


@schedule_app.command("preview")
def preview_job(
    ctx: typer.Context,
    job_name: str = typer.Argument(..., metavar="JOB", help="campaign:job, or the job id if unique"),
    count: int = typer.Option(5, "--count", "-n", min=1, max=1000),
    start: str = typer.Option(None, "--from", help="Preview from this date/datetime (default: now)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The next N fire times of a job, each with the body it would send (rotation pick included)."""
    from broadcaster.scheduling.preview import preview, sample_recipient

    actx = app_context(ctx)
    catalog = _catalog(actx)
    try:
        job = catalog.find(job_name)
    except KeyError as exc:
        _warn_issues(catalog)
        raise CliError(str(exc.args[0])) from exc
    after = (
        _parse_when(start, job.zone, option="--from") - timedelta(microseconds=1)
        if start
        else _clock(actx).now()
    )
    recipient = sample_recipient(actx.settings.database_url, job)
    fires = preview(job, actx.templates(), after=after, count=count, recipient=recipient)
    if as_json:
        print_json(
            {
                "job": job.key,
                "timezone": job.timezone,
                "template": job.template,
                "recipient": recipient,
                "fires": fires,
            }
        )
        return
    typer.echo(f"{job.key}  ({job.describe_trigger()}, {job.timezone}; recipient: {recipient['source']})")
    for f in fires:
        pick = f" [slogan {f['slogan_number']}]" if f["slogan_number"] else ""
        typer.echo(f"{_fmt_local(f['at_local'])}{pick}  {f['segments']} seg {f['encoding']}")
        typer.echo(f"    {f['body']}")
    if not fires:
        typer.echo("no more fire times")


@schedule_app.command("simulate")
def simulate_cmd(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="First day (local to BROADCASTER_TIMEZONE) or datetime."),
    until: str = typer.Option(..., "--until", help="Last day, included (or a datetime)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the scratch folder (database, sent.jsonl)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay the calendar in fast time against the log provider and a scratch database."""
    import sqlalchemy as sa

    from broadcaster import db
    from broadcaster.scheduling.simulate import simulate

    actx = app_context(ctx)
    settings = actx.settings
    zone = settings.tz
    t0 = _parse_when(start, zone, option="--from")
    t1 = _parse_when(until, zone, end_of_day=True, option="--until")
    if t1 < t0:
        raise CliError("--until is before --from", EXIT_USAGE)
    catalog = _catalog(actx)
    _warn_issues(catalog)
    source = None
    url = db.normalise_url(settings.database_url)
    path = url.startswith("sqlite") and sa.engine.make_url(url).database
    if not url.startswith("sqlite") or (path and Path(path).is_file()):
        source = db.make_engine(url)
    folder = Path(tempfile.mkdtemp(prefix="broadcaster-simulation-"))
    try:
        sim = simulate(
            catalog, actx.templates(), source=source, start=t0, until=t1, folder=folder, settings=settings
        )
    finally:
        if source is not None:
            source.dispose()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "from": t0,
        "until": t1,
        "folder": str(folder) if keep else None,
        "audience": sim.audience,
        "runs": sim.runs,
        "missed": sim.missed,
        "errors": sim.errors,
        "totals": sim.totals(),
    }
    if as_json:
        print_json(result)
        return
    for run in sim.runs:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(run["counts"].items())) or "no recipients"
        typer.echo(f"{_fmt_local(run['at_local'])}  {run['job']}  run {run['run_id']}: {counts}")
        if run["body"]:
            typer.echo(f"    {run['body']}  ({run['segments']} seg)")
    for m in sim.missed:
        typer.echo(f"{_fmt_local(m['at_local'])}  {m['job']}  MISSED: {m['reason']}")
    totals = sim.totals()
    typer.echo(
        f"{totals['runs']} run(s), {totals['messages']} message(s), {totals['segments']} segment(s), "
        f"{totals['missed']} missed" + (f"; scratch folder kept: {folder}" if keep else "")
    )
    for error in sim.errors:
        typer.echo(f"error: {error}", err=True)


def daemon(
    ctx: typer.Context,
    dispatch: str = typer.Option(
        None, "--dispatch", help="inline | workers (default: BROADCASTER_DAEMON_DISPATCH)"
    ),
    log_format: str = typer.Option(
        None, "--log-format", help="text | json (default: BROADCASTER_DAEMON_LOG_FORMAT)"
    ),
    once: bool = typer.Option(False, "--once", help="One planning pass (catch-up included), then exit."),
) -> None:
    """Run the scheduler: fire every job at its time, catch up after downtime, never twice."""
    from broadcaster.scheduling.daemon import EXIT_LOST_LOCK, Daemon, LockHeldError
    from broadcaster.scheduling.logs import configure

    actx = app_context(ctx)
    settings = actx.settings
    if dispatch not in (None, "inline", "workers"):
        raise CliError(f"--dispatch {dispatch!r}: expected inline or workers", EXIT_USAGE)
    if log_format not in (None, "text", "json"):
        raise CliError(f"--log-format {log_format!r}: expected text or json", EXIT_USAGE)
    configure(log_format or settings.daemon_log_format)
    clock = _clock(actx)
    engine = actx.engine
    d = Daemon(settings, engine, clock=clock, dispatch=dispatch, use_apscheduler=not settings.clock_start)
    if once:
        try:
            report, sealed = d.run_once()
        except LockHeldError as exc:
            raise CliError(f"{exc}; --once does nothing") from exc
        typer.echo(
            f"{len(report.runs)} run(s), {len(report.missed)} missed, {len(report.errors)} error(s); "
            f"next fire {report.next_wake.isoformat() if report.next_wake else 'none'}; "
            f"sealed {sealed} event(s)"
        )
        if report.errors:
            raise CliError(f"{len(report.errors)} fire(s) failed: {report.errors[0]}")
        return
    handlers = {
        signal.SIGTERM: lambda *_: d.request_stop(),
        signal.SIGINT: lambda *_: d.request_stop(),
        signal.SIGHUP: lambda *_: d.request_reload(),
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        code = d.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == EXIT_LOST_LOCK:
        raise CliError("lost the leader lock (database connection gone?); exiting", exit_code=code)


def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Is a daemon alive, what fires next, the last scheduled runs and their counts, what was missed."""
    from broadcaster.scheduling.status import gather

    actx = app_context(ctx)
    catalog = _catalog(actx)
    info = gather(
        actx.engine, catalog, _clock(actx).now(), heartbeat_seconds=actx.settings.daemon_heartbeat_seconds
    )
    if as_json:
        print_json(info)
        return
    d = info["daemon"]
    if d["alive"]:
        typer.echo(f"daemon: alive, {d['role']} {d['id']} (last beat {d['age_seconds']:.0f} s ago)")
    elif d["id"]:
        typer.echo(f"daemon: NOT RUNNING (last seen {d['beat_at'].isoformat()}, {d['role']} {d['id']})")
    else:
        typer.echo("daemon: never started on this database")
    for s in info["standby"]:
        typer.echo(f"standby: {s['id']} (last beat {s['age_seconds']:.0f} s ago)")
    typer.echo("next fires:")
    for f in info["next_fires"]:
        typer.echo(f"  {_fmt_local(f['at_local']):<24} {f['job']}")
    typer.echo("last runs:")
    for r in info["last_runs"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())) or "-"
        typer.echo(
            f"  {_fmt_local(r['scheduled_local']):<24} {r['job']} run {r['id']} {r['status']}: {counts}"
        )
    for w in info["sending"]:
        state = f"share {w['share']:g}/s" if w["live"] else "GONE (forgotten after 5 s)"
        typer.echo(f"sending: {w['worker_id']} since {_fmt_local(w['joined_at'])}, {state}")
    if info["missed"]:
        typer.echo("missed:")
        for m in info["missed"]:
            typer.echo(f"  {_fmt_local(m['scheduled_local']):<24} {m['job']} run {m['id']}: {m['note']}")
    _warn_issues(catalog)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(schedule_app, name="schedule")
    app.command("daemon")(daemon)
    app.command("status")(status)
