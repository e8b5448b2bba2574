"""Jinja2 message templates, rendered in a sandbox with undefined variables as errors.

A template is a file ``templates/NAME.j2``; its rendered body is stripped of surrounding
whitespace so that a trailing newline in the file never costs a segment.

Why it is built this way:

- The sandbox (Jinja2's immutable sandbox) refuses ``__class__``-style introspection, calls of
  unsafe or mutating methods, huge ``range`` and huge ``*``/``**`` results: a template file can
  only produce text, never reach Python internals or change the data it is given.
- Undefined variables are errors (``StrictUndefined``): a message with a hole in it is never sent.
  Errors name the template, the line and the variable.
- A template is self-contained (no ``include``/``extends``/``import``), and what is compiled is
  exactly the text whose SHA-256 is returned, so a run's recorded ``template_sha256`` proves what
  every one of its messages was rendered from.
"""

from __future__ import annotations

import hashlib
import operator
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from broadcaster.slogans import SloganError, load_pool

TEMPLATE_SUFFIX = ".j2"
SLOGANS_FOLDER = "slogans"
_WEEKDAYS_CN = "一二三四五六日"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Names the renderer always sets; a run variable cannot take them.
RESERVED_NAMES = frozenset({"send_date", "send_time", "vars", "recipient"})
RECIPIENT_FIELDS = ("name", "phone")

MAX_REPEAT = 10_000  # longest string/list a template may build with ``*``
MAX_EXPONENT = 100


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; the message names the template.

    ``template``, ``path`` and ``line`` say where, when known (``line`` is 1-based).
    """

    def __init__(
        self,
        message: str,
        *,
        template: str | None = None,
        path: Path | None = None,
        line: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.template = template
        self.path = path
        self.line = line
        self.reason = reason or message  # the cause alone, without the template's name


def _as_date(value: Any, filter_name: str) -> date:
    if isinstance(value, date):  # datetime is a date too
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise ValueError(f"{filter_name}: expected a date or YYYY-MM-DD, got {value!r}")


def cn_date(value: date | datetime | str) -> str:
    """2011年8月31日 (also accepts a ``YYYY-MM-DD`` string, e.g. from ``--var``)."""
    d = _as_date(value, "cn_date")
    return f"{d.year}年{d.month}月{d.day}日"


def cn_month_day(value: date | datetime | str) -> str:
    """8月31日"""
    d = _as_date(value, "cn_month_day")
    return f"{d.month}月{d.day}日"


def cn_weekday(value: date | datetime | str) -> str:
    """星期三"""
    return "星期" + _WEEKDAYS_CN[_as_date(value, "cn_weekday").weekday()]


class SloganPools(Mapping[str, tuple[str, ...]]):
    """The ``slogans`` template global: ``templates/slogans/POOL.txt`` by pool name, read lazily.

    A missing pool is a missing key (so ``slogans.nope`` is an undefined-variable error).
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder  # private: the sandbox refuses ``_`` attributes, so no path escapes
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def _names(self) -> list[str]:
        if not self._folder.is_dir():
            return []
        return sorted(p.stem for p in self._folder.glob("*.txt"))

    def __getitem__(self, pool: str) -> tuple[str, ...]:
        path = self._folder / f"{pool}.txt"
        if not isinstance(pool, str) or not _NAME_RE.match(pool) or not path.is_file():
            raise KeyError(pool)
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(pool)
            if cached is None or cached[0] != mtime:
                cached = (mtime, tuple(load_pool(path)))
                self._cache[pool] = cached
        return cached[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class MessageSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on ``*`` and ``**`` so a template cannot eat the memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise jinja2.exceptions.SecurityError(f"exponent {right} is too large (max {MAX_EXPONENT})")
            return operator.pow(left, right)
        if isinstance(left, int) and isinstance(right, str | list | tuple):
            left, right = right, left
        if isinstance(left, str | list | tuple) and isinstance(right, int) and len(left) * right > MAX_REPEAT:
            raise jinja2.exceptions.SecurityError(
                f"repetition result of {len(left) * right} items is too large (max {MAX_REPEAT})"
            )
        return operator.mul(left, right)


@dataclass(frozen=True)
class Template:
    name: str
    source: str
    sha256: str
    compiled: jinja2.Template
    path: Path | None = None
    # Names the template reads from its context (Jinja2's find_undeclared_variables).
    variables: frozenset[str] = field(default_factory=frozenset)


def _error_line(exc: BaseException, filename: str) -> int | None:
    """The template line an exception was raised at (Jinja2 rewrites tracebacks to template lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class TemplateStore:
    """Loads templates from one folder; compiled templates are cached by content hash."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.env = MessageSandbox(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        self.env.filters.update(cn_date=cn_date, cn_month_day=cn_month_day, cn_weekday=cn_weekday)
        self.slogans = SloganPools(self.folder / SLOGANS_FOLDER)
        self.env.globals["slogans"] = self.slogans
        self._cache: dict[str, Template] = {}
        self._lock = threading.Lock()

    @property
    def global_names(self) -> frozenset[str]:
        """Names every template can use without any recipient or run variable."""
        return frozenset(self.env.globals)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name[: -len(TEMPLATE_SUFFIX)] for p in self.folder.glob(f"*{TEMPLATE_SUFFIX}") if p.is_file()
        )

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{TEMPLATE_SUFFIX}"

    def load(self, name: str) -> Template:
        """Read, check and compile ``NAME.j2``; a syntax error names the file and the line."""
        path = self.path(name)
        if not _NAME_RE.match(name):
            raise TemplateError(
                f"template name {name!r} is not valid: letters, digits, '_', '.', '-' "
                "(first a letter or digit)",
                template=name,
            )
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise TemplateError(
                f"template {name!r} not found in {self.folder} (known: {known})", template=name, path=path
            )
        try:
            raw = path.read_bytes()
            source = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TemplateError(
                f"template {name!r} ({path}) is not UTF-8: {exc}", template=name, path=path
            ) from exc
        return self.compile(name, source, hashlib.sha256(raw).hexdigest(), path)

    def compile(self, name: str, source: str, sha256: str, path: Path | None = None) -> Template:
        """A template from its text (a run's snapshot, or a file's content), cached by hash."""
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached.sha256 == sha256:
            return cached
        filename = str(path) if path is not None else f"<{name} as recorded>"
        try:
            ast = self.env.parse(source, name, filename)
            self._refuse_composition(ast, name, filename, path)
            code = self.env.compile(ast, name, filename)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template {name!r} ({filename}) line {exc.lineno}: {exc.message}",
                template=name,
                path=path,
                line=exc.lineno,
                reason=exc.message,
            ) from exc
        compiled = self.env.template_class.from_code(self.env, code, self.env.make_globals(None), None)
        template = Template(
            name=name,
            source=source,
            sha256=sha256,
            compiled=compiled,
            path=path,
            variables=frozenset(meta.find_undeclared_variables(ast)),
        )
        with self._lock:
            self._cache[name] = template
        return template

    @staticmethod
    def _refuse_composition(ast: nodes.Template, name: str, filename: str, path: Path | None) -> None:
        for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            keyword = {"Extends": "extends", "Include": "include"}.get(type(node).__name__, "import")
            raise TemplateError(
                f"template {name!r} ({filename}) line {node.lineno}: {{% {keyword} %}} is not allowed: "
                "a message template must be self-contained (its SHA-256 is recorded with each run)",
                template=name,
                path=path,
                line=node.lineno,
                reason=f"{{% {keyword} %}} is not allowed",
            )

    def render(self, template: Template, context: dict[str, Any]) -> str:
        """The message body. Any failure is a :class:`TemplateError` naming template, line and cause."""
        try:
            return template.compiled.render(context).strip()
        except Exception as exc:
            filename = template.compiled.filename
            line = _error_line(exc, filename) if filename else None
            if isinstance(exc, jinja2.UndefinedError | jinja2.exceptions.SecurityError):
                reason = exc.message or str(exc)
            elif isinstance(exc, SloganError | ValueError):
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__}: {exc}"
            where = f" line {line}" if line else ""
            raise TemplateError(
                f"template {template.name!r}{where}: {reason}",
                template=template.name,
                path=template.path,
                line=line,
                reason=reason,
            ) from exc


def check_variables(variables: Mapping[str, Any]) -> None:
    """Run variables may not take the names the renderer sets itself."""
    clash = sorted(RESERVED_NAMES.intersection(variables))
    if clash:
        raise TemplateError(
            f"run variable(s) {', '.join(clash)} not allowed: reserved names are "
            + ", ".join(sorted(RESERVED_NAMES))
        )


def _present(value: Any) -> bool:
    return value is not None and value != ""


def build_context(
    *,
    recipient: dict[str, Any] | None,
    variables: dict[str, Any],
    send_time: datetime,
) -> dict[str, Any]:
    """The names a template sees, lowest precedence first.

    1. recipient attributes (``recipient["attributes"]``), 2. recipient fields ``name`` and ``phone``,
    3. run variables, 4. ``send_time``, ``send_date``, ``vars`` (the run variables) and
    ``recipient`` (fields and attributes), which nothing overrides. Empty values (None or "")
    are left out, so that ``{{ name }}`` fails for a recipient without a name instead of printing
    "None", while ``{{ name | default("您") }}`` falls back.

    ``send_time`` must be aware and already in the campaign's zone: ``send_date`` is its local date.
    """
    if send_time.tzinfo is None:
        raise ValueError("send_time must be timezone-aware")
    check_variables(variables)
    context: dict[str, Any] = {}
    if recipient is not None:
        fields = {k: v for k, v in dict(recipient.get("attributes") or {}).items() if _present(v)}
        fields.update({k: recipient.get(k) for k in RECIPIENT_FIELDS if _present(recipient.get(k))})
        context.update(fields)
        context["recipient"] = fields
    context.update(variables)
    context["vars"] = dict(variables)
    context["send_time"] = send_time
    context["send_date"] = send_time.date()
    return context
