"""Apply a provider's delivery status report (a Twilio status callback) to a message, forward only.

Callbacks arrive late, twice, or out of order, so a message's state only ever moves up the ranks
``queued < sending = unknown < sent < delivered = undelivered = failed``: a repeated or stale callback
changes nothing and records nothing, and a final state is never left. Changes go through the
dispatcher's guarded transitions (:func:`broadcaster.transitions.apply_changes`), so each applied
change is recorded as a message event (source ``twilio-callback``) in the same transaction.

A callback that names our message id (the ``m`` query parameter the adapter puts in the signed
StatusCallback URL) resolves a message whose create request got no answer (``unknown``), or whose
``sent`` outcome the dispatcher has not committed yet: the callback proves Twilio has it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.clock import Clock
from broadcaster.events import record_events
from broadcaster.models import (
    DELIVERED,
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    UNDELIVERED,
    UNKNOWN,
    Message,
)
from broadcaster.optouts import add_optout
from broadcaster.transitions import Change, apply_changes

log = logging.getLogger(__name__)
messages_t = Message.__table__

SOURCE = "twilio-callback"

#: How far along a message is; states not listed (suppressed, cancelled) are never touched.
RANK = {QUEUED: 0, SENDING: 1, UNKNOWN: 1, SENT: 2, DELIVERED: 3, UNDELIVERED: 3, FAILED: 3}
FINAL = frozenset({DELIVERED, UNDELIVERED, FAILED})

#: Twilio's message statuses → ours. Every status before "delivered" proves Twilio has the message.
TWILIO_STATUS = {
    "accepted": SENT,
    "scheduled": SENT,
    "queued": SENT,
    "sending": SENT,
    "sent": SENT,
    "delivered": DELIVERED,
    "read": DELIVERED,
    "undelivered": UNDELIVERED,
    "failed": FAILED,
    "canceled": FAILED,
}

#: Delivery error codes (Twilio's descriptions) for error_text.
ERROR_TEXT = {
    "21610": "recipient has opted out (replied STOP)",
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error",
    "30034": "message from an unregistered number",
    "30500": "carrier error",
}
OPT_OUT_ERROR = "21610"


@dataclass(frozen=True)
class CallbackResult:
    """``outcome``: applied | unchanged | unknown-sid | ignored-status | conflict."""

    outcome: str
    message_id: int | None = None
    from_status: str | None = None
    to_status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _find(conn: Connection, sid: str, message_id: int | None, to: str | None) -> dict[str, Any] | None:
    row = (
        conn.execute(sa.select(messages_t).where(messages_t.c.provider_id == sid).limit(1).with_for_update())
        .mappings()
        .first()
    )
    if row is None and message_id is not None:
        row = (
            conn.execute(sa.select(messages_t).where(messages_t.c.id == message_id).with_for_update())
            .mappings()
            .first()
        )
        if row is not None and to and row["phone"] != to:
            log.warning("status callback for %s names message %s of another number: ignored", sid, message_id)
            return None
    return dict(row) if row is not None else None


def apply_status_callback(
    conn: Connection,
    clock: Clock,
    *,
    sid: str,
    status: str,
    error_code: str | None = None,
    message_id: int | None = None,
    to: str | None = None,
) -> CallbackResult:
    """Apply one status report inside the caller's (writing) transaction."""
    ours = TWILIO_STATUS.get(status.strip().lower())
    if ours is None:
        log.info("status callback %s: status %r ignored", sid, status)
        return CallbackResult("ignored-status")
    row = _find(conn, sid, message_id, to)
    if row is None:
        log.info("status callback for unknown message sid %s (%s): ignored", sid, status)
        return CallbackResult("unknown-sid")
    now = clock.now()
    current = row["status"]
    code = (error_code or "").strip() or None
    detail = {"sid": sid, "twilio_status": status, "error_code": code}
    if row["provider_id"] not in (None, sid):
        # Our message was accepted under another sid: it went out twice. Say so; change nothing.
        log.warning("message %s has sid %s but a callback came for %s", row["id"], row["provider_id"], sid)
        record_events(
            conn,
            [
                {
                    "message_id": row["id"],
                    "run_id": row["run_id"],
                    "at": now,
                    "from_status": current,
                    "to_status": current,
                    "source": SOURCE,
                    "detail": {
                        **detail,
                        "note": "second provider message for this message",
                        "recorded_sid": row["provider_id"],
                    },
                }
            ],
        )
        return CallbackResult("conflict", row["id"], current, current)
    if current not in RANK or RANK[ours] <= RANK[current]:
        return CallbackResult("unchanged", row["id"], current, current)

    values: dict[str, Any] = {"provider_id": sid, "lease_owner": None, "lease_expires_at": None}
    if row["sent_at"] is None:
        values["sent_at"] = now
    if ours in FINAL:
        values["final_at"] = now
    if ours in (UNDELIVERED, FAILED):
        values["error_code"] = code
        values["error_text"] = ERROR_TEXT.get(
            code or "", f"Twilio error {code}" if code else f"{status} at Twilio"
        )
    elif ours == DELIVERED:
        values["error_code"] = None
        values["error_text"] = None
    # The shared guarded transition: only from a state below this one, with its event.
    earlier = [state for state, rank in RANK.items() if rank < RANK[ours]]
    change = Change(row["id"], row["run_id"], ours, values, detail)
    if not apply_changes(conn, [change], from_states=earlier, at=now, source=SOURCE):
        return CallbackResult("unchanged", row["id"], current, current)  # cannot happen under the lock
    if code == OPT_OUT_ERROR:
        add_optout(
            conn,
            row["phone"],
            source="provider",
            at=now,
            actor="twilio",
            reason=f"Twilio error 21610 on {sid}",
        )
    return CallbackResult("applied", row["id"], current, ours)
