"""The shape of ``schedules/*.toml`` (pydantic), before any file system or zone is looked at.

See docs/schedules.md for every field. Times without an offset are local to the campaign's zone.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
QUIET_HOURS_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$"
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")


def _check_variables(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise ValueError(
                f"{key!r} = {item!r}: a variable is text, a number or true/false (quote dates and times)"
            )
    return value


def parse_duration(value: object) -> timedelta:
    """``3600``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` → a timedelta."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '90s', '15m', '2h', '1d'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and any(match.groups()):
            d, h, m, s = (int(g or 0) for g in match.groups())
            return timedelta(days=d, hours=h, minutes=m, seconds=s)
    raise ValueError(f"{value!r} is not a duration: use seconds or a string such as '90s', '15m', '2h', '1d'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CronSpec(_Strict):
    """APScheduler 3.x cron fields. Weekdays must be names: numbers mean different days in crontab
    (0 = Sunday) and in APScheduler 3 (0 = Monday)."""

    type: Literal["cron"]
    year: str | int | None = None
    month: str | int | None = None
    day: str | int | None = None
    week: str | int | None = None
    day_of_week: str | None = None
    hour: str | int | None = None
    minute: str | int | None = None
    second: str | int | None = None

    @field_validator("day_of_week", mode="before")
    @classmethod
    def _weekday_names(cls, value: object) -> object:
        if value is not None and re.search(r"\d", str(value)):
            raise ValueError(
                f"{value!r}: write weekday names (mon, tue, wed, thu, fri, sat, sun, ranges like "
                "'mon-fri'); numbers mean different days in crontab and APScheduler"
            )
        return value

    @model_validator(mode="after")
    def _something_set(self) -> CronSpec:
        if all(getattr(self, f) is None for f in CRON_FIELDS):
            raise ValueError("a cron trigger needs at least one field (e.g. hour = 9)")
        return self


class DateSpec(_Strict):
    """One occurrence at ``at`` (local to the campaign unless it carries an offset)."""

    type: Literal["date"]
    at: datetime


class IntervalSpec(_Strict):
    """Every so often from ``start`` (default: the job's start, else the campaign's start_date)."""

    type: Literal["interval"]
    weeks: int = Field(default=0, ge=0)
    days: int = Field(default=0, ge=0)
    hours: int = Field(default=0, ge=0)
    minutes: int = Field(default=0, ge=0)
    seconds: int = Field(default=0, ge=0)
    start: datetime | date | None = None

    @model_validator(mode="after")
    def _positive(self) -> IntervalSpec:
        if self.length() <= timedelta(0):
            raise ValueError("an interval trigger needs a positive length (e.g. hours = 6)")
        return self

    def length(self) -> timedelta:
        return timedelta(
            weeks=self.weeks, days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds
        )


TriggerSpec = Annotated[CronSpec | DateSpec | IntervalSpec, Field(discriminator="type")]


class PoolSpec(_Strict):
    """Where a job's ``slogan`` comes from: a file (one per line) or a list, in order or shuffled."""

    file: str | None = None
    slogans: list[Annotated[str, Field(min_length=1)]] | None = None
    order: Literal["in-order", "shuffled"] = "in-order"

    @model_validator(mode="after")
    def _one_source(self) -> PoolSpec:
        if (self.file is None) == (self.slogans is None):
            raise ValueError("a pool needs exactly one of 'file' or 'slogans'")
        if self.slogans is not None and not self.slogans:
            raise ValueError("'slogans' is empty")
        return self


def _grace(value: object) -> object:
    return None if value is None else parse_duration(value)


# Fields that campaigns and jobs both have, validated the same way in both.
Grace = Annotated[timedelta | None, BeforeValidator(_grace)]
Variables = Annotated[dict[str, Any], AfterValidator(_check_variables)]


class JobSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str | None = None
    enabled: bool = True
    trigger: TriggerSpec
    template: str = Field(min_length=1)
    lists: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    variables: Variables = Field(default_factory=dict)
    misfire_grace: Grace = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    start: datetime | date | None = None
    end: datetime | date | None = None
    sender: str | None = None
    quiet_hours: str | None = Field(default=None, pattern=QUIET_HOURS_PATTERN)
    pool: PoolSpec | None = None


class CampaignSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str | None = None
    timezone: str
    sender: str | None = None
    signature: str | None = None
    quiet_hours: str | None = Field(default=None, pattern=QUIET_HOURS_PATTERN)
    enabled: bool = True
    start_date: date | None = None
    end_date: date | None = None
    misfire_grace: Grace = None
    variables: Variables = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from exc
        return value

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _plain_date(cls, value: object) -> object:
        if isinstance(value, datetime):
            raise ValueError("a date without a time is expected here (e.g. 2011-09-01)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> CampaignSpec:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        return self


class CampaignFile(_Strict):
    campaign: CampaignSpec
    jobs: list[JobSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_job_ids(self) -> CampaignFile:
        seen: set[str] = set()
        for job in self.jobs:
            if job.id in seen:
                raise ValueError(f"job id {job.id!r} appears twice")
            seen.add(job.id)
        return self
