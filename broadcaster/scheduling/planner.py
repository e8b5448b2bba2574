"""The catch-up planner: a pure function from (jobs, ledger watermarks, now) to what to do now.

For each job, every occurrence after its watermark and up to now is either *due* (late by no more
than the job's misfire grace: it runs now, once) or *missed* (later than that: recorded as missed,
visible in ``status`` and the log, never silently dropped). A job seen for the first time starts
from now: the planner never back-fills the history of a new job or a new database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broadcaster.scheduling.catalog import Job
from broadcaster.scheduling.occurrences import next_occurrence, occurrences

DEFAULT_LIMIT = 1000  # occurrences per job per pass; a longer backlog is worked through in passes


@dataclass(frozen=True)
class Occurrence:
    job: Job
    at: datetime  # the trigger's fire time, aware in the job's zone
    late_by: timedelta

    @property
    def key(self) -> str:
        return self.job.key


@dataclass
class Plan:
    due: list[Occurrence] = field(default_factory=list)
    missed: list[Occurrence] = field(default_factory=list)
    # The watermark each job reaches once its due and missed occurrences are dealt with.
    watermarks: dict[str, datetime] = field(default_factory=dict)
    # Jobs seen for the first time: their watermark starts here, nothing before it is planned.
    new_jobs: list[str] = field(default_factory=list)
    next_wake: datetime | None = None  # the earliest future occurrence of any job
    backlog: bool = False  # a job hit the per-pass limit: plan again at once

    def actions(self) -> list[Occurrence]:
        """Due and missed occurrences in the order they should be dealt with: by time, then the
        more urgent job first, then by key (a stable order across daemons)."""
        return sorted(self.due + self.missed, key=lambda o: (o.at, -o.job.priority, o.key))


def plan(
    jobs: Iterable[Job],
    watermarks: Mapping[str, datetime],
    now: datetime,
    *,
    limit: int = DEFAULT_LIMIT,
) -> Plan:
    result = Plan()
    for job in jobs:
        mark = watermarks.get(job.key)
        if mark is None:
            result.new_jobs.append(job.key)
            result.watermarks[job.key] = now
        elif not job.enabled:
            result.watermarks[job.key] = max(mark, now)  # a disabled job's time passes unplanned
        else:
            last = mark
            for n, at in enumerate(occurrences(job, mark, until=now)):
                if n >= limit:
                    result.backlog = True
                    break
                late = now - at
                (result.due if late <= job.grace else result.missed).append(Occurrence(job, at, late))
                last = at
            else:
                last = now
            result.watermarks[job.key] = max(mark, last)
        if job.enabled:
            upcoming = next_occurrence(job, max(now, mark or now))
            if upcoming is not None and (result.next_wake is None or upcoming < result.next_wake):
                result.next_wake = upcoming
    return result
