"""Read side of the audit: the message log with filters, the action trail, one message's history.

Every function returns plain dicts with stable keys (the CLI's ``--json``, the console and the
exports all use them). Phone numbers come back as stored; masking is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.audit.masking import mask_actor, mask_phone
from broadcaster.models import MESSAGE_STATES, Action, Message, MessageEvent, Run

messages_t = Message.__table__
events_t = MessageEvent.__table__
actions_t = Action.__table__
runs_t = Run.__table__

MESSAGE_KEYS = (
    "id",
    "run_id",
    "campaign_id",
    "recipient_id",
    "phone",
    "status",
    "error_code",
    "error_text",
    "body",
    "encoding",
    "segments",
    "characters",
    "attempts",
    "provider_id",
    "sender",
    "created_at",
    "sent_at",
    "final_at",
    "updated_at",
    "next_attempt_at",
)
ACTION_KEYS = ("id", "at", "actor", "host", "action", "run_id", "details", "chain_seq", "hash")
EVENT_KEYS = ("id", "at", "from_status", "to_status", "source", "detail", "chain_seq", "hash")
# Keys under which action details and event details carry phone numbers (masked for review).
PHONE_KEYS = frozenset({"phone", "phones", "to", "from", "number"})


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items() if v not in (None, [])
    }


class FilterError(ValueError):
    """A filter value that cannot be understood; the message names the filter."""


def parse_when(
    value: str | None, zone: ZoneInfo, *, end: bool = False, name: str = "time"
) -> datetime | None:
    """``2011-08-31`` (the whole day: start, or the next midnight with ``end``) or an ISO datetime;
    without an offset, in the campaign zone."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(0), tzinfo=zone)
            if end:
                moment = datetime.combine(date.fromordinal(day.toordinal() + 1), time(0), tzinfo=zone)
            return moment
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FilterError(f"{name} {text!r}: expected a date (2011-08-31) or an ISO time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def phone_condition(column: sa.ColumnElement[str], value: str, region: str) -> sa.ColumnElement[bool]:
    """A full number (any usual spelling) matches exactly; 4+ digits alone match the number's end."""
    text = value.strip()
    try:
        number = phonenumbers.parse(text, region)
        if phonenumbers.is_possible_number(number):
            return column == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) >= 4 and len(digits) == len(text.lstrip("*")):
        return column.like(f"%{digits}")
    raise FilterError(f"phone {value!r}: give a full number or at least its last 4 digits")


#: What ``since``/``until`` of a :class:`MessageFilter` compare with: when the message happened
#: (:func:`message_time`: the audit's review and exports), or when it entered the outbox
#: (``created_at``: ``broadcaster log``).
HAPPENED = "happened"
CREATED = "created"


@dataclass
class MessageFilter:
    """The one filter of the message log: ``broadcaster log``, ``audit log``, exports, the console."""

    run_id: int | None = None
    campaign: str | None = None
    statuses: list[str] = field(default_factory=list)
    phone: str | None = None
    error_code: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    time_basis: str = HAPPENED

    def as_dict(self) -> dict[str, Any]:
        """The filters given, JSON-ready (times in ISO 8601), as the trail records them."""
        out = _given(asdict(self))
        if self.time_basis == HAPPENED:
            del out["time_basis"]
        return out

    def conditions(self, region: str) -> list[sa.ColumnElement[bool]]:
        cond: list[sa.ColumnElement[bool]] = []
        if self.run_id is not None:
            cond.append(messages_t.c.run_id == self.run_id)
        if self.campaign:
            cond.append(
                messages_t.c.run_id.in_(sa.select(runs_t.c.id).where(runs_t.c.campaign_id == self.campaign))
            )
        if self.statuses:
            unknown = [s for s in self.statuses if s not in MESSAGE_STATES]
            if unknown:
                raise FilterError(f"status {unknown[0]!r}: known: {', '.join(MESSAGE_STATES)}")
            cond.append(messages_t.c.status.in_(self.statuses))
        if self.phone:
            cond.append(phone_condition(messages_t.c.phone, self.phone, region))
        if self.error_code:
            cond.append(messages_t.c.error_code == self.error_code)
        when = messages_t.c.created_at if self.time_basis == CREATED else message_time()
        if self.since is not None:
            cond.append(when >= self.since)
        if self.until is not None:
            cond.append(when < self.until)
        return cond


def message_time() -> sa.ColumnElement[datetime]:
    """When a message "happened" for time filters: sent, else settled, else written."""
    return sa.func.coalesce(messages_t.c.sent_at, messages_t.c.final_at, messages_t.c.created_at)


def _message_select() -> sa.Select[Any]:
    cols = [messages_t.c[k] for k in MESSAGE_KEYS if k != "campaign_id"]
    return sa.select(*cols, runs_t.c.campaign_id).join(runs_t, runs_t.c.id == messages_t.c.run_id)


def _message_dict(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in MESSAGE_KEYS}


def list_messages(
    conn: Connection, flt: MessageFilter, *, region: str, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Newest first, one page; pass the last id as ``before_id`` for the next page."""
    cond = flt.conditions(region)
    if before_id is not None:
        cond.append(messages_t.c.id < before_id)
    rows = conn.execute(
        _message_select().where(*cond).order_by(messages_t.c.id.desc()).limit(limit)
    ).mappings()
    return [_message_dict(r) for r in rows]


def count_messages(conn: Connection, flt: MessageFilter, *, region: str) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(messages_t).where(*flt.conditions(region))
    ).scalar_one()


def iter_messages(conn: Connection, flt: MessageFilter, *, region: str) -> Iterator[dict[str, Any]]:
    """Every matching message in id order, streamed (for exports)."""
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(
        _message_select().where(*flt.conditions(region)).order_by(messages_t.c.id)
    )
    for row in result.mappings():
        yield _message_dict(row)


@dataclass
class ActionFilter:
    action: str | None = None  # exact name, or a prefix ending in "." ("run.")
    actor: str | None = None
    run_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The filters given, JSON-ready (times in ISO 8601), as the trail records them."""
        return _given(asdict(self))

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        cond: list[sa.ColumnElement[bool]] = []
        if self.action:
            if self.action.endswith("."):
                cond.append(actions_t.c.action.startswith(self.action, autoescape=True))
            else:
                cond.append(actions_t.c.action == self.action)
        if self.actor:
            cond.append(actions_t.c.actor == self.actor)
        if self.run_id is not None:
            cond.append(actions_t.c.run_id == self.run_id)
        if self.since is not None:
            cond.append(actions_t.c.at >= self.since)
        if self.until is not None:
            cond.append(actions_t.c.at < self.until)
        return cond


def list_actions(
    conn: Connection, flt: ActionFilter, *, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    cond = flt.conditions()
    if before_id is not None:
        cond.append(actions_t.c.id < before_id)
    cols = [actions_t.c[k] for k in ACTION_KEYS]
    rows = conn.execute(sa.select(*cols).where(*cond).order_by(actions_t.c.id.desc()).limit(limit)).mappings()
    return [dict(r) for r in rows]


def iter_actions(conn: Connection, flt: ActionFilter) -> Iterator[dict[str, Any]]:
    cols = [actions_t.c[k] for k in ACTION_KEYS]
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(
        sa.select(*cols).where(*flt.conditions()).order_by(actions_t.c.id)
    )
    for row in result.mappings():
        yield dict(row)


def mask_details(value: Any, key: str | None = None) -> Any:
    """Mask phone numbers inside action or event details (under the keys in ``PHONE_KEYS``)."""
    if isinstance(value, dict):
        return {k: mask_details(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_details(v, key) for v in value]
    if key in PHONE_KEYS and isinstance(value, str):
        return mask_phone(value)
    return value


def message_history(conn: Connection, message_id: int) -> dict[str, Any] | None:
    """Everything about one message: the message, its run, every event, and the actions that
    explain it (its run's actions, opt-out changes of its number)."""
    row = conn.execute(_message_select().where(messages_t.c.id == message_id)).mappings().one_or_none()
    if row is None:
        return None
    message = _message_dict(row)
    run = (
        conn.execute(
            sa.select(
                runs_t.c.id,
                runs_t.c.kind,
                runs_t.c.campaign_id,
                runs_t.c.job_id,
                runs_t.c.scheduled_for,
                runs_t.c.template,
                runs_t.c.template_sha256,
                runs_t.c.status,
                runs_t.c.created_by,
                runs_t.c.created_at,
            ).where(runs_t.c.id == message["run_id"])
        )
        .mappings()
        .one()
    )
    events = conn.execute(
        sa.select(*[events_t.c[k] for k in EVENT_KEYS])
        .where(events_t.c.message_id == message_id)
        .order_by(events_t.c.id)
    ).mappings()
    cols = [actions_t.c[k] for k in ACTION_KEYS]
    actions = conn.execute(
        sa.select(*cols)
        .where(
            sa.or_(
                actions_t.c.run_id == message["run_id"],
                sa.and_(
                    actions_t.c.action.startswith("optout."),
                    actions_t.c.details["phone"].as_string() == message["phone"],
                ),
            )
        )
        .order_by(actions_t.c.id)
    ).mappings()
    return {
        "message": message,
        "run": dict(run),
        "events": [dict(e) for e in events],
        "actions": [dict(a) for a in actions],
    }


def masked_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message for review: its number masked."""
    return {**message, "phone": mask_phone(message["phone"])}


def masked_action(action: dict[str, Any]) -> dict[str, Any]:
    """An action for review: numbers masked in its details, and its actor if that is a number."""
    return {**action, "actor": mask_actor(action["actor"]), "details": mask_details(action["details"])}


def masked_history(history: dict[str, Any]) -> dict[str, Any]:
    out = dict(history)
    out["message"] = masked_message(history["message"])
    out["events"] = [{**e, "detail": mask_details(e["detail"])} for e in history["events"]]
    out["actions"] = [masked_action(a) for a in history["actions"]]
    return out
