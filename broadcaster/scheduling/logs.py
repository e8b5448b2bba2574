"""Structured logs of the scheduler: one event name and its fields per line, as text or JSON lines.

Every fire, run, miss, reload, lock change and error goes through :func:`emit`, so the JSON form
(``BROADCASTER_DAEMON_LOG_FORMAT=json``) carries the same fields as the text form.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime
from typing import Any, TextIO

LOGGER_NAME = "broadcaster.scheduler"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def emit(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"event": event, "fields": fields})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        if not hasattr(record, "event"):
            out["logger"] = record.name
        out.update(_plain(getattr(record, "fields", {})))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")
        event = getattr(record, "event", None) or record.getMessage()
        fields = " ".join(
            f"{k}={json.dumps(_plain(v), ensure_ascii=False) if not isinstance(v, str) or ' ' in v else v}"
            for k, v in getattr(record, "fields", {}).items()
        )
        line = f"{ts} {record.levelname:<7} {event}" + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(fmt: str = "text", stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the scheduler's (and APScheduler's warnings) to ``stream`` (stderr: the journal)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name, lvl in ((LOGGER_NAME, level), ("apscheduler", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(lvl)
        logger.propagate = False
    return handler
