"""When a job fires: APScheduler 3.11 trigger objects, always with an explicit zone.

An occurrence is a fire time computed by the trigger, never read from a clock or a counter, so a
planner, a preview, a simulation and a restarted daemon all see the same calendar.

Daylight saving, for wall-clock (cron and date) triggers:
- a local time that does not exist (spring forward) fires once, at the same instant on the other
  side of the gap (02:30 in New York on the spring change day fires at 03:30 EDT);
- a local time that happens twice (fall back) fires once, the first time; APScheduler alone would
  fire it twice (01:30 EDT and 01:30 EST), which would be a second send the same day.
Interval triggers count elapsed time, so they are not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from broadcaster.scheduling.spec import CRON_FIELDS, CronSpec, DateSpec, IntervalSpec

if TYPE_CHECKING:
    from broadcaster.scheduling.catalog import Job

_TICK = timedelta(microseconds=1)


def local_start(value: date | datetime, zone: ZoneInfo) -> datetime:
    """A TOML date (midnight) or datetime (naive = local to ``zone``) as an aware instant."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=zone) if value.tzinfo is None else value
    return datetime.combine(value, time(0), tzinfo=zone)


def local_end(value: date | datetime, zone: ZoneInfo) -> datetime:
    """The exclusive end: a date means 'through the end of that local day'."""
    if isinstance(value, datetime):
        return (value.replace(tzinfo=zone) if value.tzinfo is None else value) + _TICK
    return datetime.combine(value + timedelta(days=1), time(0), tzinfo=zone)


def build_trigger(
    spec: CronSpec | DateSpec | IntervalSpec, zone: ZoneInfo, anchor: datetime | None
) -> BaseTrigger:
    """The APScheduler trigger of a job. ``anchor`` starts interval triggers (required for them:
    an interval counted from 'now' would move with every restart)."""
    if isinstance(spec, CronSpec):
        fields = {f: getattr(spec, f) for f in CRON_FIELDS if getattr(spec, f) is not None}
        return CronTrigger(**fields, timezone=zone)
    if isinstance(spec, DateSpec):
        at = spec.at if spec.at.tzinfo is not None else spec.at.replace(tzinfo=zone)
        return DateTrigger(run_date=at, timezone=zone)
    start = local_start(spec.start, zone) if spec.start is not None else anchor
    if start is None:
        raise ValueError(
            "an interval trigger needs a start (trigger.start, the job's start or the campaign's start_date)"
        )
    return IntervalTrigger(
        weeks=spec.weeks,
        days=spec.days,
        hours=spec.hours,
        minutes=spec.minutes,
        seconds=spec.seconds,
        start_date=start,
        timezone=zone,
    )


def _repeated_wall_time(at: datetime, zone: ZoneInfo) -> bool:
    """True for the second of two instants that share one local wall time (the fall-back hour)."""
    wall = at.astimezone(zone).replace(tzinfo=None)
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC) != at.astimezone(UTC)


def occurrences(job: Job, after: datetime | None, until: datetime | None = None) -> Iterator[datetime]:
    """Fire times strictly after ``after`` (from the job's start if None) and at or before
    ``until``, inside the job's window, in order; aware, in the job's zone."""
    begin = job.start
    if after is not None:
        begin = after + _TICK if begin is None else max(begin, after + _TICK)
    if begin is None:
        raise ValueError(f"job {job.key}: occurrences need a starting point")
    trigger = job.trigger
    at = trigger.get_next_fire_time(None, begin.astimezone(job.zone))
    while at is not None:
        if job.end is not None and at >= job.end:
            return
        if until is not None and at > until:
            return
        if at >= begin and not (job.wall_clock and _repeated_wall_time(at, job.zone)):
            yield at.astimezone(job.zone)
        at = trigger.get_next_fire_time(at, at)


def next_occurrence(job: Job, after: datetime) -> datetime | None:
    return next(occurrences(job, after), None)


def upcoming(job: Job, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for at in occurrences(job, after):
        out.append(at)
        if len(out) >= count:
            break
    return out


def occurrence_index(job: Job, at: datetime) -> int:
    """How many occurrences the job had before ``at`` since its start: the rotation's position.

    Computed from the trigger every time (cached per job definition), never counted in memory, so a
    catch-up or a restarted daemon picks what was due.
    """
    if job.start is None:
        raise ValueError(f"job {job.key}: a rotation needs a start to count occurrences from")
    if isinstance(job.trigger, IntervalTrigger):
        first = next_occurrence(job, job.start - _TICK)
        if first is None or at < first:
            return 0
        return int((at - first) // job.trigger.interval)
    return _count_before(job, at.astimezone(UTC))


@lru_cache(maxsize=4096)
def _count_before(job: Job, at: datetime) -> int:
    n = 0
    for t in occurrences(job, None, until=at):
        if t >= at:
            break
        n += 1
    return n
