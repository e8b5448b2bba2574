"""Jinja2 message templates, rendered in a sandbox with undefined variables as errors.

A template is a file ``templates/NAME.j2``; its rendered body is stripped of surrounding
whitespace so that a trailing newline in the file never costs a segment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_SUFFIX = ".j2"
_WEEKDAYS_CN = "一二三四五六日"


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; the message names the template."""


def cn_date(value: date | datetime) -> str:
    """2011年8月31日"""
    return f"{value.year}年{value.month}月{value.day}日"


def cn_month_day(value: date | datetime) -> str:
    """8月31日"""
    return f"{value.month}月{value.day}日"


def cn_weekday(value: date | datetime) -> str:
    """星期三"""
    return "星期" + _WEEKDAYS_CN[value.weekday()]


@dataclass(frozen=True)
class Template:
    name: str
    source: str
    sha256: str
    compiled: jinja2.Template


class TemplateStore:
    """Loads templates from one folder; compiled templates are cached by Jinja2."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.folder)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            auto_reload=True,
        )
        self.env.filters.update(cn_date=cn_date, cn_month_day=cn_month_day, cn_weekday=cn_weekday)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(TEMPLATE_SUFFIX)] for p in self.folder.glob(f"*{TEMPLATE_SUFFIX}"))

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{TEMPLATE_SUFFIX}"

    def load(self, name: str) -> Template:
        path = self.path(name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise TemplateError(f"template {name!r} not found in {self.folder} (known: {known})")
        try:
            source = path.read_text(encoding="utf-8")
            compiled = self.env.get_template(f"{name}{TEMPLATE_SUFFIX}")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"template {name!r} ({path}) is not UTF-8: {exc}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {name!r} ({path}) line {exc.lineno}: {exc.message}") from exc
        return Template(name, source, hashlib.sha256(source.encode()).hexdigest(), compiled)

    def render(self, template: Template, context: dict[str, Any]) -> str:
        try:
            return template.compiled.render(context).strip()
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {template.name!r}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {template.name!r}: {exc}") from exc


def build_context(
    *,
    recipient: dict[str, Any] | None,
    variables: dict[str, Any],
    send_time: datetime,
) -> dict[str, Any]:
    """Recipient fields and attributes, then run variables (which win), then the send date.

    ``send_time`` must be aware and already in the campaign's zone: ``send_date`` is its local date.
    """
    if send_time.tzinfo is None:
        raise ValueError("send_time must be timezone-aware")
    context: dict[str, Any] = {}
    if recipient is not None:
        attributes = dict(recipient.get("attributes") or {})
        fields = {"phone": recipient.get("phone"), "name": recipient.get("name"), **attributes}
        context.update(fields)
        context["recipient"] = fields
    context.update(variables)
    context["vars"] = dict(variables)
    context["send_time"] = send_time
    context["send_date"] = send_time.date()
    return context
