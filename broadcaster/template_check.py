"""Checking templates before they send: syntax, variables, length and segments, signature.

Used by ``broadcaster templates check``; plain functions over a :class:`TemplateStore` and a
database connection, so tests and other commands call them directly.

Against a recipient list, recipients are grouped by the set of names they provide (fields and
attributes with a value); the template is rendered once per group, for the group's member with
the longest values, so a missing attribute shows up with the count of recipients it affects and an
example phone number, and the segment count is the worst case of the list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.models import ListMember, Recipient, RecipientList
from broadcaster.segments import MAX_BODY_CHARACTERS, Measure, measure
from broadcaster.slogans import SloganError
from broadcaster.templating import (
    RESERVED_NAMES,
    Template,
    TemplateError,
    TemplateStore,
    build_context,
)

# The recipient used when no real one is given: the conventional placeholder name and the
# placeholder number of the field notes. It has no attributes.
SAMPLE_RECIPIENT: dict[str, Any] = {"name": "张三", "phone": "+8613800138000", "attributes": {}}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SIGNATURE = re.compile(r"^【[^【】]+】|【[^【】]+】$")

recipients_t = Recipient.__table__
members_t = ListMember.__table__
lists_t = RecipientList.__table__


class ListNotFound(LookupError):
    pass


@dataclass(frozen=True)
class RecipientGroup:
    """Recipients of a list that provide the same names."""

    keys: frozenset[str]
    count: int
    example: dict[str, Any]  # {"phone", "name", "attributes"} of the member with the longest values


@dataclass(frozen=True)
class ListProfile:
    name: str
    members: int
    groups: tuple[RecipientGroup, ...]

    @property
    def provided(self) -> frozenset[str]:
        """Every name at least one member provides."""
        out: set[str] = set()
        for g in self.groups:
            out |= g.keys
        return frozenset(out)


_WITH_NAME = frozenset({"name", "phone"})
_WITHOUT_NAME = frozenset({"phone"})
_PARSE_CACHE_MAX = 100_000


def _attributes(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(value, str):
        return dict(json.loads(value) or {})
    return dict(value or {})


def _attribute_profile(attributes: Mapping[str, Any]) -> tuple[frozenset[str], int]:
    present = {k: v for k, v in attributes.items() if v is not None and v != ""}
    return frozenset(present), sum(len(str(v)) for v in present.values())


def group_recipients(
    rows: Iterable[tuple[str, str | None, str | Mapping[str, Any] | None]],
) -> tuple[int, list[RecipientGroup]]:
    """(count, groups) of (phone, name, attributes) rows, grouped by the names they provide.

    ``attributes`` may be the JSON text: recipients often share the same attributes (a province,
    a city), so each distinct text is parsed once.
    """
    best: dict[frozenset[str], list[Any]] = {}  # keys -> [count, weight, row]
    parsed: dict[Any, tuple[frozenset[str], int]] = {}
    total = 0
    for row in rows:
        total += 1
        _, name, attributes = row
        if isinstance(attributes, str) or attributes is None:
            profile = parsed.get(attributes)
            if profile is None:
                profile = _attribute_profile(_attributes(attributes))
                if len(parsed) < _PARSE_CACHE_MAX:
                    parsed[attributes] = profile
        else:
            profile = _attribute_profile(attributes)
        keys, weight = profile
        if name:
            keys, weight = keys | _WITH_NAME, weight + len(name)
        else:
            keys = keys | _WITHOUT_NAME
        entry = best.get(keys)
        if entry is None:
            best[keys] = [1, weight, row]
        else:
            entry[0] += 1
            if weight > entry[1]:
                entry[1], entry[2] = weight, row
    groups = [
        RecipientGroup(keys, count, {"phone": row[0], "name": row[1], "attributes": _attributes(row[2])})
        for keys, (count, _, row) in best.items()
    ]
    groups.sort(key=lambda g: (-g.count, sorted(g.keys)))
    return total, groups


def require_list(conn: Connection, list_name: str) -> int:
    """The id of list ``list_name``; :class:`ListNotFound` (naming some known lists) if none."""
    list_id = conn.execute(sa.select(lists_t.c.id).where(lists_t.c.name == list_name)).scalar_one_or_none()
    if list_id is None:
        known = conn.execute(sa.select(lists_t.c.name).order_by(lists_t.c.name).limit(20)).scalars().all()
        raise ListNotFound(f"list {list_name!r} not found (known: {', '.join(known) or 'none'})")
    return list_id


def profile_list(conn: Connection, list_name: str) -> ListProfile:
    """Group the members of ``list_name``; one streaming pass over its recipients."""
    list_id = require_list(conn, list_name)
    rows = conn.execution_options(yield_per=5000).execute(
        sa.select(recipients_t.c.phone, recipients_t.c.name, sa.cast(recipients_t.c.attributes, sa.Text))
        .join(members_t, members_t.c.recipient_id == recipients_t.c.id)
        .where(members_t.c.list_id == list_id)
        .order_by(members_t.c.recipient_id)  # the primary key's order: deterministic examples, no sort
    )
    total, groups = group_recipients(rows)  # type: ignore[arg-type]  (Row unpacks like a tuple)
    return ListProfile(list_name, total, tuple(groups))


_RECIPIENT_COLUMNS = (recipients_t.c.id, recipients_t.c.phone, recipients_t.c.name, recipients_t.c.attributes)


def _recipient(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {**row, "attributes": dict(row["attributes"] or {})}


def lookup_recipient(conn: Connection, phone: str, list_name: str | None = None) -> dict[str, Any] | None:
    """A recipient by E.164 number (and membership of ``list_name`` if given), else None."""
    stmt = sa.select(*_RECIPIENT_COLUMNS).where(recipients_t.c.phone == phone)
    if list_name is not None:
        list_id = require_list(conn, list_name)
        stmt = stmt.join(members_t, members_t.c.recipient_id == recipients_t.c.id).where(
            members_t.c.list_id == list_id
        )
    return _recipient(conn.execute(stmt.limit(1)).mappings().first())


def first_member(conn: Connection, list_name: str) -> dict[str, Any] | None:
    """The member of ``list_name`` with the lowest recipient id, or None for an empty list."""
    list_id = require_list(conn, list_name)
    stmt = (
        sa.select(*_RECIPIENT_COLUMNS)
        .join(members_t, members_t.c.recipient_id == recipients_t.c.id)
        .where(members_t.c.list_id == list_id)
        .order_by(recipients_t.c.id)
        .limit(1)
    )
    return _recipient(conn.execute(stmt).mappings().first())


def is_chinese(body: str) -> bool:
    return _CJK.search(body) is not None


def has_signature(body: str) -> bool:
    """A 【…】 signature at the start or the end, as Chinese carriers require."""
    return _SIGNATURE.search(body) is not None


def body_problems(body: str, m: Measure) -> tuple[list[str], list[str]]:
    """(errors, warnings) about one rendered body."""
    errors: list[str] = []
    warnings: list[str] = []
    if not body:
        errors.append("renders an empty body (Twilio refuses an empty message)")
    if m.too_long:
        errors.append(
            f"body has {m.characters} characters: over Twilio's {MAX_BODY_CHARACTERS}-character limit "
            "(error 21617)"
        )
    if m.segments > 1:
        per = "67 UCS-2 units" if m.encoding == "UCS-2" else "153 GSM-7 septets"
        warnings.append(
            f"{m.segments} segments ({m.encoding}, {m.characters} characters, {m.units} units; "
            f"{per} per segment): each is billed"
        )
    if is_chinese(body) and not has_signature(body):
        warnings.append("Chinese body without a 【signature】 at its start or end")
    return errors, warnings


@dataclass
class CheckResult:
    template: str
    sha256: str | None = None
    variables: list[str] = field(default_factory=list)
    measure: Measure | None = None  # the worst body measured (most segments, then characters)
    example: str | None = None  # the phone number of the worst body's recipient (None: sample)
    variants: int = 1  # how many sets of run variables were tried (one per slogan, see variable_sets)
    # message -> notes of the variants it was seen with, in order of first appearance
    _errors: dict[str, list[str]] = field(default_factory=dict)
    _warnings: dict[str, list[str]] = field(default_factory=dict)

    def add(self, errors: Iterable[str] = (), warnings: Iterable[str] = (), variant: str = "") -> None:
        for target, messages in ((self._errors, errors), (self._warnings, warnings)):
            for message in messages:
                notes = target.setdefault(message, [])
                if variant and variant not in notes:
                    notes.append(variant)

    def _render(self, messages: dict[str, list[str]]) -> list[str]:
        out = []
        for message, notes in messages.items():
            if len(notes) == 1:
                message += f" (with {notes[0]})"
            elif notes:
                message += f" (with {len(notes)} of {self.variants}, e.g. {notes[0]})"
            out.append(message)
        return out

    @property
    def errors(self) -> list[str]:
        return self._render(self._errors)

    @property
    def warnings(self) -> list[str]:
        return self._render(self._warnings)

    @property
    def ok(self) -> bool:
        return not self._errors

    def as_dict(self) -> dict[str, Any]:
        m = self.measure
        return {
            "template": self.template,
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "variables": self.variables,
            "sha256": self.sha256,
            "encoding": m.encoding if m else None,
            "segments": m.segments if m else None,
            "characters": m.characters if m else None,
        }


def _where(err: TemplateError) -> str:
    if err.path is not None and err.line is not None:
        return f"{err.path}:{err.line}: "
    if err.line is not None:
        return f"line {err.line}: "
    return ""


SLOGAN_VARIABLE = "slogan"


def variable_sets(
    store: TemplateStore, template: Template, variables: Mapping[str, Any]
) -> list[tuple[dict[str, Any], str]]:
    """The run variables to check with, each with a note for messages about it.

    A template reading ``slogan`` without ``--var slogan=…`` is checked with every slogan of every
    pool under ``templates/slogans/`` (the scheduler passes one of them), so its worst case is known.
    """
    if SLOGAN_VARIABLE in template.variables and SLOGAN_VARIABLE not in variables:
        sets = [
            ({**variables, SLOGAN_VARIABLE: slogan}, f"slogan {slogan!r} of pool {pool!r}")
            for pool in store.slogans
            for slogan in store.slogans[pool]
        ]
        if sets:
            return sets
    return [(dict(variables), "")]


def check_template(
    store: TemplateStore,
    name: str,
    *,
    variables: Mapping[str, Any],
    send_time: datetime,
    profile: ListProfile | None = None,
) -> CheckResult:
    """Check one template, with a sample recipient or against every group of a list's members."""
    result = CheckResult(template=name)
    try:
        template = store.load(name)
    except TemplateError as exc:
        result.add(errors=[f"{_where(exc)}{exc.reason}"])
        return result
    result.sha256 = template.sha256
    result.variables = sorted(template.variables)
    if profile is not None and profile.members == 0:
        result.add(warnings=[f"list {profile.name!r} has no members: checked with a sample recipient"])
        profile = None
    try:
        sets = variable_sets(store, template, variables)
    except SloganError as exc:
        result.add(errors=[str(exc)])
        sets = [(dict(variables), "")]
    result.variants = len(sets)
    for run_vars, note in sets:
        if profile is None:
            _check_with_sample(store, template, result, run_vars, send_time, note)
        else:
            _check_with_list(store, template, result, run_vars, send_time, profile, note)
    return result


def _measure_into(result: CheckResult, body: str, phone: str | None, note: str, where: str = "") -> None:
    m = measure(body)
    errors, warnings = body_problems(body, m)
    errors, warnings = [e + where for e in errors], [w + where for w in warnings]
    result.add(errors, warnings, note)
    if result.measure is None or (m.segments, m.characters) > (
        result.measure.segments,
        result.measure.characters,
    ):
        result.measure, result.example = m, phone


def _check_with_sample(
    store: TemplateStore,
    template: Template,
    result: CheckResult,
    variables: dict[str, Any],
    send_time: datetime,
    note: str,
) -> None:
    context = build_context(recipient=SAMPLE_RECIPIENT, variables=variables, send_time=send_time)
    try:
        body = store.render(template, context)
    except TemplateError as exc:
        if isinstance(exc.__cause__, jinja2.UndefinedError):
            result.add(
                warnings=[
                    f"{_where(exc)}{exc.reason}: length not checked; give it with --var or check "
                    "against a list with --list"
                ],
                variant=note,
            )
        else:
            result.add(errors=[f"{_where(exc)}{exc.reason}"], variant=note)
        return
    _measure_into(result, body, None, note)


def _check_with_list(
    store: TemplateStore,
    template: Template,
    result: CheckResult,
    variables: dict[str, Any],
    send_time: datetime,
    profile: ListProfile,
    note: str,
) -> None:
    failures: dict[str, list[RecipientGroup]] = {}
    for group in profile.groups:
        context = build_context(recipient=group.example, variables=variables, send_time=send_time)
        try:
            body = store.render(template, context)
        except TemplateError as exc:
            failures.setdefault(f"{_where(exc)}{exc.reason}", []).append(group)
            continue
        _measure_into(result, body, group.example["phone"], note, f" for list {profile.name!r}")
    for reason, groups in failures.items():
        affected = sum(g.count for g in groups)
        result.add(
            errors=[
                f"{reason}: for {affected} of {profile.members} recipients of list {profile.name!r} "
                f"(e.g. {groups[0].example['phone']})"
            ],
            variant=note,
        )
    # Names the template reads that neither the run variables nor any member provide: an error
    # above when a render failed on them; when every render passed, the template's fallback is used.
    available = RESERVED_NAMES | set(variables) | store.global_names | profile.provided
    if not failures:
        for missing in sorted(template.variables - available):
            result.add(
                warnings=[
                    f"{missing!r} is given neither by --var nor by any recipient of list {profile.name!r}: "
                    "the template's fallback is used"
                ]
            )


def sample_measure(store: TemplateStore, template: Template, send_time: datetime) -> Measure | None:
    """Measure of the body rendered without recipient data or run variables, or None if it needs some."""
    try:
        body = store.render(template, build_context(recipient=None, variables={}, send_time=send_time))
    except TemplateError:
        return None
    return measure(body)
