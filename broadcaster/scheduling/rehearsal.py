"""The rehearsal clock (``BROADCASTER_CLOCK_START``): for dress rehearsals and tests only.

The process's clock starts at the given instant and runs at real speed, so a daemon can be watched
firing "on 31 August 2011 at 09:00" today. It is refused unless the provider is ``log``: a real
provider must never send on a make-believe calendar.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from broadcaster.clock import Clock
from broadcaster.settings import Settings


class RehearsalError(Exception):
    pass


class RehearsalClock:
    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the rehearsal clock needs an aware start")
        self._start = start.astimezone(UTC)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)


def clock_for(settings: Settings, default: Clock) -> Clock:
    if not settings.clock_start:
        return default
    if settings.provider != "log":
        raise RehearsalError(
            "BROADCASTER_CLOCK_START is for rehearsals with the log provider only "
            f"(provider is {settings.provider!r})"
        )
    try:
        start = datetime.fromisoformat(settings.clock_start)
    except ValueError as exc:
        raise RehearsalError(
            f"BROADCASTER_CLOCK_START={settings.clock_start!r}: not an ISO datetime"
        ) from exc
    if start.tzinfo is None:
        raise RehearsalError(f"BROADCASTER_CLOCK_START={settings.clock_start!r}: give an offset, e.g. +08:00")
    return RehearsalClock(start)
