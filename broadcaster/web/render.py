"""One Jinja2 environment for the console pages and the standalone run report."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup

from broadcaster.audit.masking import mask_phone

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _localtime(value: datetime | None, zone: ZoneInfo, seconds: bool = True) -> str:
    if value is None:
        return "—"
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return value.astimezone(zone).strftime(fmt)


def _pretty(value: Any) -> str:
    def default(v: Any) -> Any:
        return v.isoformat() if isinstance(v, datetime) else str(v)

    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=default)


@lru_cache(maxsize=8)
def environment(zone: ZoneInfo) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["localtime"] = lambda v, seconds=True: _localtime(v, zone, seconds)
    env.filters["pretty"] = _pretty
    env.filters["mask"] = mask_phone
    env.filters["short"] = lambda v, n=12: (v[:n] + "…") if v and len(v) > n else (v or "—")
    env.filters["svg"] = Markup  # charts are built by broadcaster.audit.charts, which escapes all text
    env.globals["zone"] = zone.key
    return env


def inline_css() -> str:
    return (STATIC / "console.css").read_text(encoding="utf-8")
