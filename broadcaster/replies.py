"""Inbound SMS (replies): keywords that opt a number out or back in, HELP, and the record of each.

The keyword is the whole body, trimmed, in any case (and in any width: ＳＴＯＰ counts). Twilio's own
opt-out words are honoured by Twilio too; the Chinese ones (退订, TD, T) only by us, so for those we
confirm the opt-out ourselves. Every opt-out change goes through :mod:`broadcaster.optouts`, which
writes it to the action trail with source ``reply``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from broadcaster.clock import Clock
from broadcaster.models import InboundMessage
from broadcaster.optouts import add_optout, remove_optout

inbound_t = InboundMessage.__table__

TWILIO_OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
CHINESE_OPT_OUT_WORDS = frozenset({"退订", "TD", "T"})
OPT_OUT_WORDS = TWILIO_OPT_OUT_WORDS | CHINESE_OPT_OUT_WORDS
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

OPT_OUT, OPT_IN, HELP, NONE = "opt-out", "opt-in", "help", "none"


def keyword(body: str) -> str:
    return unicodedata.normalize("NFKC", body).strip().upper()


def classify(body: str) -> str:
    word = keyword(body)
    if word in OPT_OUT_WORDS:
        return OPT_OUT
    if word in OPT_IN_WORDS:
        return OPT_IN
    if word in HELP_WORDS:
        return HELP
    return NONE


@dataclass(frozen=True)
class ReplyResult:
    action: str
    changed: bool  # an opt-out was recorded or lifted just now
    reply: str | None  # text to answer with (TwiML), if any
    duplicate: bool = False  # the same inbound message (same sid) was handled before


def reply_text(body: str, action: str, *, help_text: str, optout_text: str) -> str | None:
    if action == HELP:
        return help_text or None
    if action == OPT_OUT and keyword(body) in CHINESE_OPT_OUT_WORDS:
        return optout_text or None  # Twilio confirms its own keywords itself
    return None


def handle_reply(
    conn: Connection,
    clock: Clock,
    *,
    sid: str,
    from_number: str,
    to_number: str | None,
    body: str,
    help_text: str,
    optout_text: str,
) -> ReplyResult:
    """Record an inbound message and act on its keyword, inside the caller's writing transaction.
    A message seen before (Twilio retried the webhook) is answered again but not acted on twice."""
    action = classify(body)
    text = reply_text(body, action, help_text=help_text, optout_text=optout_text)
    seen = conn.execute(sa.select(inbound_t.c.action).where(inbound_t.c.sid == sid)).first()
    if seen is not None:
        return ReplyResult(seen.action, False, text, duplicate=True)
    now = clock.now()
    changed = False
    reason = f"replied {body.strip()[:40]!r} ({sid})"
    if action == OPT_OUT:
        changed = add_optout(conn, from_number, source="reply", at=now, actor=from_number, reason=reason)
    elif action == OPT_IN:
        changed = remove_optout(conn, from_number, source="reply", at=now, actor=from_number, reason=reason)
    conn.execute(
        sa.insert(inbound_t),
        {
            "sid": sid,
            "from_number": from_number,
            "to_number": to_number,
            "body": body,
            "received_at": now,
            "action": action,
            "changed": changed,
        },
    )
    return ReplyResult(action, changed, text)
