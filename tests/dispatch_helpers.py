"""Shared pieces for the delivery tests: seeding recipients with Core, a run, and a scripted provider."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.models import ListMember, Message, MessageEvent, Recipient, RecipientList
from broadcaster.providers.base import Accepted, Found, Outbound, ProviderError
from broadcaster.runs import create_run, materialise
from broadcaster.templating import TemplateStore

messages_t = Message.__table__
events_t = MessageEvent.__table__

TEMPLATE = "【质量月】{{ name }}您好，{{ send_date | cn_date }}起开展质量月活动。回TD退订"


def phone(i: int) -> str:
    return f"+86138{i:08d}"


def seed_list(
    engine: sa.Engine, name: str, ids: range, now: datetime, phone_of: Callable[[int], str] = phone
) -> None:
    """Recipients ``ids`` (created if new, with phone ``phone_of(id)``) in list ``name``."""
    with db.writing(engine) as conn:
        list_id = conn.execute(
            sa.insert(RecipientList.__table__)
            .values(name=name, created_at=now)
            .returning(RecipientList.__table__.c.id)
        ).scalar_one()
        existing = set(
            conn.execute(sa.select(Recipient.__table__.c.id).where(Recipient.__table__.c.id.in_(list(ids))))
            .scalars()
            .all()
        )
        new = [
            {
                "id": i,
                "phone": phone_of(i),
                "name": f"用户{i}",
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }
            for i in ids
            if i not in existing
        ]
        if new:
            conn.execute(sa.insert(Recipient.__table__), new)
        conn.execute(
            sa.insert(ListMember.__table__),
            [{"list_id": list_id, "recipient_id": i, "added_at": now} for i in ids],
        )


def template_store(folder: Path, name: str = "notice", text: str = TEMPLATE) -> TemplateStore:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.j2").write_text(text, encoding="utf-8")
    return TemplateStore(folder)


def make_run(
    engine: sa.Engine,
    store: TemplateStore,
    clock: Clock,
    lists: list[str],
    *,
    template: str = "notice",
    priority: int = 0,
    quiet_hours: str | None = None,
) -> int:
    ref = create_run(
        engine,
        template=template,
        list_names=lists,
        variables={},
        clock=clock,
        actor="tester",
        timezone="Asia/Shanghai",
        store=store,
        priority=priority,
        quiet_hours=quiet_hours,
    )
    materialise(engine, ref.id, store=store, clock=clock)
    return ref.id


def messages(engine: sa.Engine, run_id: int | None = None) -> list[dict[str, Any]]:
    query = sa.select(messages_t).order_by(messages_t.c.id)
    if run_id is not None:
        query = query.where(messages_t.c.run_id == run_id)
    with db.reading(engine) as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def events(engine: sa.Engine, message_id: int) -> list[dict[str, Any]]:
    with db.reading(engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.select(events_t).where(events_t.c.message_id == message_id).order_by(events_t.c.id)
            ).mappings()
        ]


class ScriptedProvider:
    """A deterministic provider. ``script[phone]`` lists what successive sends to that phone do:
    None (accept), a ProviderError (raise it), or "lost" (record the message, then raise an
    accepted_maybe error as if the answer was lost on the way back)."""

    name = "scripted"

    def __init__(
        self,
        clock: Clock,
        script: dict[str, list[Any]] | None = None,
        *,
        can_lookup: bool = True,
        on_send: Callable[[Outbound], None] | None = None,
    ) -> None:
        self.clock = clock
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.can_lookup = can_lookup
        self.on_send = on_send
        self.sent: list[Found] = []  # what the provider really has
        self.calls: list[Outbound] = []
        self.lookups: list[tuple[str, datetime]] = []
        self._lock = threading.Lock()

    def send(self, message: Outbound) -> Accepted:
        with self._lock:
            self.calls.append(message)
            steps = self.script.get(message.to)
            step = steps.pop(0) if steps else None
        if self.on_send is not None:
            self.on_send(message)
        if isinstance(step, ProviderError):
            raise step
        sid = "SM" + uuid.uuid4().hex
        with self._lock:
            self.sent.append(Found(sid, message.to, message.body, "queued", self.clock.now()))
        if step == "lost":
            raise ProviderError("read timed out", accepted_maybe=True)
        return Accepted(sid, "queued")

    def lookup(self, to: str, since: datetime) -> list[Found]:
        if not self.can_lookup:
            raise AssertionError("lookup called on a provider that cannot look up")
        with self._lock:
            self.lookups.append((to, since))
            return [f for f in self.sent if f.to == to and (f.created_at is None or f.created_at >= since)]

    def sent_to(self, to: str) -> int:
        return sum(1 for f in self.sent if f.to == to)


class AsyncScriptedProvider(ScriptedProvider):
    """The same script, sent through ``send_async``: the dispatcher then uses its event-loop sender."""

    name = "scripted-async"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = 0

    async def send_async(self, message: Outbound) -> Accepted:
        await asyncio.sleep(0)  # let other attempts interleave, as a real request would
        return self.send(message)

    async def aclose(self) -> None:
        self.closed += 1


#: Both kinds of scripted provider, for tests that hold for the thread pool and the event loop alike.
PROVIDER_KINDS = {"threads": ScriptedProvider, "event-loop": AsyncScriptedProvider}


def transient(code: str = "30001", status: int | None = None) -> ProviderError:
    return ProviderError(f"transient {code}", code=code, http_status=status, transient=True)


def permanent(code: str = "21211", text: str = "invalid To") -> ProviderError:
    return ProviderError(text, code=code, http_status=400)


class FakeTime:
    """Injected time for the rate limiter: sleeping moves it on at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.slept += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def worst_second(sent: list[tuple[float, int]]) -> float:
    """The most units let through in any window [t, t+1) that starts at a send."""
    worst = 0.0
    for i, (start, _) in enumerate(sent):
        worst = max(worst, sum(c for at, c in sent[i:] if at < start + 1.0))
    return worst
