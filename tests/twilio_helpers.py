"""Helpers for the Twilio adapter, fake server and webhooks tests: seeding rows with Core inserts,
signing requests like Twilio, and a small server that records what it is sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from broadcaster import db
from broadcaster.models import Message, MessageEvent, Recipient, Run
from broadcaster.serving import serve_in_thread

messages_t = Message.__table__
events_t = MessageEvent.__table__


def seed_messages(engine: sa.Engine, now: datetime, rows: list[dict[str, Any]]) -> list[int]:
    """One run and one message per row (keys: phone, status, provider_id, ...); returns message ids."""
    with db.writing(engine) as conn:
        run_id = conn.execute(
            sa.insert(Run.__table__).returning(Run.__table__.c.id),
            {
                "kind": "manual",
                "template": "t",
                "variables": {},
                "list_names": [],
                "timezone": "Asia/Shanghai",
                "priority": 0,
                "status": "sending",
                "intended": len(rows),
                "created_at": now,
            },
        ).scalar_one()
        ids = []
        for i, row in enumerate(rows):
            phone = row.get("phone", f"+86138001380{i:02d}")
            rid = conn.execute(
                sa.insert(Recipient.__table__).returning(Recipient.__table__.c.id),
                {"phone": phone, "attributes": {}, "created_at": now, "updated_at": now},
            ).scalar_one()
            values = {
                "run_id": run_id,
                "recipient_id": rid,
                "phone": phone,
                "body": row.get("body", "【质量月】好质量 好生活"),
                "encoding": "UCS-2",
                "segments": 1,
                "characters": 11,
                "status": row.get("status", "sent"),
                "priority": 0,
                "attempts": 1,
                "provider_id": row.get("provider_id"),
                "created_at": now,
                "updated_at": now,
                "sent_at": now if row.get("status", "sent") == "sent" else None,
            }
            ids.append(conn.execute(sa.insert(messages_t).returning(messages_t.c.id), values).scalar_one())
    return ids


def message(engine: sa.Engine, message_id: int) -> dict[str, Any]:
    with db.reading(engine) as conn:
        return dict(conn.execute(sa.select(messages_t).where(messages_t.c.id == message_id)).mappings().one())


def events(engine: sa.Engine, message_id: int) -> list[dict[str, Any]]:
    with db.reading(engine) as conn:
        rows = conn.execute(
            sa.select(events_t).where(events_t.c.message_id == message_id).order_by(events_t.c.id)
        ).mappings()
        return [dict(r) for r in rows]


def sign(token: str, url: str, params: dict[str, str]) -> str:
    return RequestValidator(token).compute_signature(url, params)


@dataclass
class Received:
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)


@contextmanager
def recording_server() -> Iterator[tuple[str, Received]]:
    """A server that answers 200 to any POST and keeps (path+query, headers, form) of each."""
    received = Received()

    async def record(request: Request) -> PlainTextResponse:
        form = await request.form()
        entry = {
            "url": str(request.url),
            "path": request.url.path,
            "query": request.url.query,
            "signature": request.headers.get("X-Twilio-Signature"),
            "form": {k: str(v) for k, v in form.items()},
        }
        with received.lock:
            received.requests.append(entry)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    with serve_in_thread(app) as base_url:
        yield base_url, received
