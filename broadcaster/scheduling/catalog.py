"""Load ``schedules/*.toml`` into jobs, file by file: a broken file is reported (file, job, field)
and never takes down the other campaigns; on a reload it keeps its previous good version.

Relative slogan pool paths resolve against the TOML file's folder first, then the templates folder
(so ``file = "slogans/general.txt"`` finds ``templates/slogans/general.txt``).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import ValidationError

from broadcaster.scheduling.occurrences import build_trigger, local_end, local_start
from broadcaster.scheduling.rotation import Pool
from broadcaster.scheduling.spec import CRON_FIELDS, CampaignFile, CronSpec, IntervalSpec, JobSpec
from broadcaster.slogans import SloganError, load_pool
from broadcaster.templating import TemplateError, TemplateStore

JOB_KEY_MAX = 200


@dataclass(frozen=True)
class Issue:
    """One problem in one file, precise enough to fix without reading code."""

    file: str
    message: str
    job: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.job:
            where += f": job {self.job!r}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "job": self.job, "field": self.field, "message": self.message}


@dataclass(frozen=True, eq=False)
class Job:
    """One scheduled job, ready to plan: zone, trigger and window are resolved."""

    key: str  # "<campaign id>:<job id>": the run ledger's job_id
    campaign_id: str
    job_id: str
    name: str
    campaign_name: str
    zone: ZoneInfo
    trigger: BaseTrigger
    wall_clock: bool  # cron/date: skip the repeated fall-back hour
    start: datetime | None  # inclusive, aware
    end: datetime | None  # exclusive, aware
    grace: timedelta
    template: str
    lists: tuple[str, ...]
    variables: dict[str, Any]
    priority: int
    sender: str | None
    quiet_hours: str | None
    pool: Pool | None
    enabled: bool
    source: str
    #: sha256 of the content of each file the job was built from (its campaign file, its slogan
    #: file): recorded with each run it creates, so the trail says which schedules were in force.
    files_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def timezone(self) -> str:
        return self.zone.key

    def describe_trigger(self) -> str:
        return str(self.trigger)


@dataclass(frozen=True)
class CampaignEntry:
    file: str
    campaign_id: str
    name: str
    enabled: bool
    jobs: tuple[Job, ...]
    stale: bool = False  # the file is broken now; this is its last good version


@dataclass
class Catalog:
    campaigns: dict[str, CampaignEntry] = field(default_factory=dict)  # by file
    issues: list[Issue] = field(default_factory=list)

    @property
    def jobs(self) -> dict[str, Job]:
        return {job.key: job for entry in self.campaigns.values() for job in entry.jobs}

    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.enabled]

    def find(self, name: str) -> Job:
        """A job by key (``campaign:job``) or by job id alone when that is unambiguous."""
        jobs = self.jobs
        if name in jobs:
            return jobs[name]
        matches = [j for j in jobs.values() if j.job_id == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            keys = ", ".join(sorted(j.key for j in matches))
            raise KeyError(f"job {name!r} is ambiguous: {keys}")
        known = ", ".join(sorted(jobs)) or "none"
        raise KeyError(f"no job {name!r} (known: {known})")


def _loc_field(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "trigger" and part in ("cron", "date", "interval"):
            continue  # pydantic's union tag, not a field the user wrote
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            parts.append(str(part))
    return ".".join(parts)


def _validation_issues(label: str, raw: dict[str, Any], exc: ValidationError) -> list[Issue]:
    issues = []
    raw_jobs = raw.get("jobs") if isinstance(raw.get("jobs"), list) else []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        job = None
        if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
            index = loc[1]
            item = raw_jobs[index] if index < len(raw_jobs) else None
            job_id = item.get("id") if isinstance(item, dict) else None
            job = f"{job_id}" if isinstance(job_id, str) else f"jobs[{index}]"
            loc = loc[2:]
        issues.append(Issue(label, message, job=job, field=_loc_field(loc) or None))
    return issues


def _resolve_pool_file(name: str, toml_path: Path, templates_dir: Path) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    for base in (toml_path.parent, templates_dir):
        if (base / path).is_file():
            return base / path
    return toml_path.parent / path


def _build_jobs(
    label: str,
    path: Path,
    spec: CampaignFile,
    store: TemplateStore,
    default_grace: timedelta,
    file_sha256: str,
) -> tuple[list[Job], list[Issue]]:
    campaign = spec.campaign
    zone = ZoneInfo(campaign.timezone)
    jobs: list[Job] = []
    issues: list[Issue] = []
    c_start = local_start(campaign.start_date, zone) if campaign.start_date else None
    c_end = local_end(campaign.end_date, zone) if campaign.end_date else None
    base_vars: dict[str, Any] = dict(campaign.variables)
    if campaign.signature is not None:
        base_vars["signature"] = campaign.signature
    for job in spec.jobs:
        found: list[Issue] = []

        def problem(fld: str, message: str, _job: JobSpec = job, _found: list[Issue] = found) -> None:
            _found.append(Issue(label, message, job=_job.id, field=fld))

        key = f"{campaign.id}:{job.id}"
        if len(key) > JOB_KEY_MAX:
            problem("id", f"campaign id + job id are longer than {JOB_KEY_MAX} characters")
        start = c_start
        if job.start is not None:
            j_start = local_start(job.start, zone)
            start = j_start if start is None else max(start, j_start)
        end = c_end
        if job.end is not None:
            j_end = local_end(job.end, zone)
            end = j_end if end is None else min(end, j_end)
        if start is not None and end is not None and end <= start:
            problem("end", "the job's window is empty (end is not after start, campaign dates included)")
        trigger = None
        if isinstance(job.trigger, CronSpec):
            for fld in CRON_FIELDS:  # find which field APScheduler refuses, to name it
                value = getattr(job.trigger, fld)
                if value is None:
                    continue
                try:
                    build_trigger(CronSpec(type="cron", **{fld: value}), zone, None)
                except ValueError as exc:
                    problem(f"trigger.{fld}", str(exc))
        if isinstance(job.trigger, IntervalSpec) and job.trigger.start is None and start is None:
            problem("trigger.start", "an interval trigger needs a start (here, the job's or the campaign's)")
        if not found:
            try:
                trigger = build_trigger(job.trigger, zone, start)
            except ValueError as exc:
                problem("trigger", str(exc))
        if start is None and isinstance(trigger, IntervalTrigger):
            start = trigger.start_date
        try:
            store.load(job.template)
        except TemplateError as exc:
            problem("template", str(exc))
        pool = None
        files_sha256 = {label: file_sha256}
        if job.pool is not None:
            if start is None:
                problem(
                    "pool",
                    "a slogan rotation counts occurrences from a start: give the job a start "
                    "or the campaign a start_date",
                )
            slogans: list[str] = []
            source = "inline"
            if job.pool.file is not None:
                pool_path = _resolve_pool_file(job.pool.file, path, store.folder)
                source = str(pool_path)
                try:
                    slogans = load_pool(pool_path)
                    files_sha256[source] = hashlib.sha256(pool_path.read_bytes()).hexdigest()
                except SloganError as exc:
                    problem("pool.file", str(exc))
                except OSError as exc:
                    problem("pool.file", f"cannot read {pool_path}: {exc}")
            else:
                slogans = list(job.pool.slogans or [])
            if slogans:
                pool = Pool(tuple(slogans), job.pool.order, seed=key, source=source)
        if found or trigger is None:
            issues.extend(found)
            continue
        grace = job.misfire_grace if job.misfire_grace is not None else campaign.misfire_grace
        jobs.append(
            Job(
                key=key,
                campaign_id=campaign.id,
                job_id=job.id,
                name=job.name or job.id,
                campaign_name=campaign.name or campaign.id,
                zone=zone,
                trigger=trigger,
                wall_clock=not isinstance(trigger, IntervalTrigger),
                start=start,
                end=end,
                grace=grace if grace is not None else default_grace,
                template=job.template,
                lists=tuple(job.lists),
                variables={**base_vars, **job.variables},
                priority=job.priority,
                sender=job.sender or campaign.sender,
                quiet_hours=job.quiet_hours or campaign.quiet_hours,
                pool=pool,
                enabled=campaign.enabled and job.enabled,
                source=label,
                files_sha256=files_sha256,
            )
        )
    return jobs, issues


def load_file(
    path: Path, store: TemplateStore, default_grace: timedelta, label: str | None = None
) -> tuple[CampaignEntry | None, list[Issue]]:
    """One campaign file → its jobs, or the reasons it cannot be used (all of them at once)."""
    label = label or str(path)
    try:
        content = path.read_bytes()
        raw = tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, [Issue(label, f"not UTF-8: {exc}")]
    except tomllib.TOMLDecodeError as exc:
        return None, [Issue(label, f"not valid TOML: {exc}")]
    except OSError as exc:
        return None, [Issue(label, f"cannot read: {exc}")]
    try:
        spec = CampaignFile.model_validate(raw)
    except ValidationError as exc:
        return None, _validation_issues(label, raw, exc)
    jobs, issues = _build_jobs(label, path, spec, store, default_grace, hashlib.sha256(content).hexdigest())
    if issues:
        return None, issues
    entry = CampaignEntry(
        file=label,
        campaign_id=spec.campaign.id,
        name=spec.campaign.name or spec.campaign.id,
        enabled=spec.campaign.enabled,
        jobs=tuple(jobs),
    )
    return entry, []


def load_catalog(
    folder: Path,
    store: TemplateStore,
    *,
    default_grace: timedelta,
    previous: Catalog | None = None,
) -> Catalog:
    """Every ``*.toml`` in ``folder`` (sorted by name). A file that fails keeps its entry from
    ``previous`` (marked stale) so a bad edit never stops a campaign that was running."""
    catalog = Catalog()
    folder = Path(folder)
    paths = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if not folder.is_dir():
        catalog.issues.append(Issue(str(folder), "schedules folder not found"))
    owners: dict[str, str] = {}
    for path in paths:
        label = str(path)
        entry, issues = load_file(path, store, default_grace, label)
        if entry is not None and entry.campaign_id in owners:
            issues = [
                Issue(
                    label,
                    f"campaign id {entry.campaign_id!r} is already used by {owners[entry.campaign_id]}",
                    field="campaign.id",
                )
            ]
            entry = None
        if entry is None:
            catalog.issues.extend(issues)
            old = previous.campaigns.get(label) if previous else None
            if old is not None and old.campaign_id not in owners:
                entry = CampaignEntry(old.file, old.campaign_id, old.name, old.enabled, old.jobs, stale=True)
        if entry is not None:
            owners[entry.campaign_id] = label
            catalog.campaigns[label] = entry
    return catalog


def fingerprint(*folders: Path) -> str:
    """A digest of every file under the folders (names and contents): changes when anything does."""
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            digest.update(f"missing:{folder}".encode())
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
    return digest.hexdigest()
