"""Seed data for the audit tests through the package API (runs, materialise, Dispatcher, trail)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.events import record_events
from broadcaster.models import (
    CANCELLED,
    DELIVERED,
    QUEUED,
    RUN_CANCELLED,
    SENT,
    ListMember,
    Message,
    Recipient,
    RecipientList,
    Run,
)
from broadcaster.optouts import add_optout
from broadcaster.providers.base import Accepted, Outbound, ProviderError
from broadcaster.providers.log import LogProvider
from broadcaster.runs import create_run, materialise
from broadcaster.templating import TemplateStore
from broadcaster.trail import record_action

START = datetime(2011, 8, 31, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
PHONES = {
    1: "+8613800138001",
    2: "+8613800138002",
    3: "+8613800138003",  # opted out
    4: "+15005550001",  # the provider refuses: 21211 invalid To
    5: "+8613800138005",  # no "city" attribute: the template cannot be rendered
    6: "+8613800138006",
}
TEMPLATE = "【质量月】{{ name }}，{{ city }}欢迎您参加{{ send_date | cn_date }}的活动。回TD退订"


class MagicNumbersProvider(LogProvider):
    """The log provider, refusing Twilio's test "magic" numbers the way Twilio does."""

    REFUSED = {"+15005550001": ("21211", "The 'To' number is not a valid phone number.")}

    def send(self, message: Outbound) -> Accepted:
        if message.to in self.REFUSED:
            code, text = self.REFUSED[message.to]
            raise ProviderError(text, code=code, http_status=400)
        return super().send(message)


@dataclass
class Seeded:
    run_id: int
    clock: ManualClock
    store: TemplateStore
    templates: Path


def write_template(folder: Path, name: str = "notice", text: str = TEMPLATE) -> TemplateStore:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.j2").write_text(text, encoding="utf-8")
    return TemplateStore(folder)


def seed_people(engine: sa.Engine, now: datetime, names: dict[int, str] | None = None) -> None:
    names = names or {}
    with db.writing(engine) as conn:
        conn.execute(sa.insert(RecipientList.__table__), [{"id": 1, "name": "public", "created_at": now}])
        conn.execute(
            sa.insert(Recipient.__table__),
            [
                {
                    "id": i,
                    "phone": phone,
                    "name": names.get(i, f"用户{i}"),
                    "attributes": {} if i == 5 else {"city": "北京"},
                    "created_at": now,
                    "updated_at": now,
                }
                for i, phone in PHONES.items()
            ],
        )
        conn.execute(
            sa.insert(ListMember.__table__),
            [{"list_id": 1, "recipient_id": i, "added_at": now} for i in PHONES],
        )
        add_optout(conn, PHONES[3], source="reply", at=now, actor="twilio", reason="TD")


def seed_run(
    engine: sa.Engine,
    tmp_path: Path,
    *,
    deliver: bool = True,
    names: dict[int, str] | None = None,
    campaign: str = "quality-month-2011",
    template: str = TEMPLATE,
) -> Seeded:
    """One run over six recipients: sent (later delivered), suppressed, failed 21211, failed template."""
    clock = ManualClock(START)
    seed_people(engine, clock.now(), names)
    store = write_template(tmp_path / "templates", text=template)
    ref = create_run(
        engine,
        template="notice",
        list_names=["public"],
        variables={"topic": "质量月"},
        clock=clock,
        actor="operator",
        timezone="Asia/Shanghai",
        store=store,
        campaign_id=campaign,
    )
    clock.advance(timedelta(minutes=1))
    materialise(engine, ref.id, store=store, clock=clock)
    clock.advance(timedelta(minutes=1))
    Dispatcher(engine, MagicNumbersProvider(tmp_path / "sent.jsonl", clock), clock).run_until_idle(ref.id)
    if deliver:
        clock.advance(timedelta(minutes=2))
        deliver_sent(engine, ref.id, clock.now())
    return Seeded(ref.id, clock, store, tmp_path / "templates")


def _move_all(
    conn: sa.Connection, run_id: int, at: datetime, *, before: str, to: str, source: str, detail: dict
) -> int:
    """Every message of the run in state ``before`` to ``to``, each with its event: what the
    application's transitions do, written here directly."""
    messages_t = Message.__table__
    ids = (
        conn.execute(
            sa.select(messages_t.c.id).where(messages_t.c.run_id == run_id, messages_t.c.status == before)
        )
        .scalars()
        .all()
    )
    conn.execute(
        sa.update(messages_t).where(messages_t.c.id.in_(ids)).values(status=to, final_at=at, updated_at=at)
    )
    record_events(
        conn,
        [
            {
                "message_id": i,
                "run_id": run_id,
                "at": at,
                "from_status": before,
                "to_status": to,
                "source": source,
                "detail": detail,
            }
            for i in ids
        ],
    )
    return len(ids)


def deliver_sent(engine: sa.Engine, run_id: int, at: datetime) -> int:
    """What a provider's "delivered" status callback does to every sent message of a run."""
    with db.writing(engine) as conn:
        return _move_all(
            conn,
            run_id,
            at,
            before=SENT,
            to=DELIVERED,
            source="callback",
            detail={"MessageStatus": "delivered"},
        )


def materialised_run(engine: sa.Engine, seeded: Seeded) -> int:
    """A second run over the same list, materialised but not sent (status ready)."""
    clock = seeded.clock
    ref = create_run(
        engine,
        template="notice",
        list_names=["public"],
        variables={},
        clock=clock,
        actor="operator",
        timezone="Asia/Shanghai",
        store=seeded.store,
        campaign_id="second",
    )
    clock.advance(timedelta(minutes=1))
    materialise(engine, ref.id, store=seeded.store, clock=clock)
    return ref.id


def cancel_run(engine: sa.Engine, run_id: int, at: datetime, *, record: bool = True) -> None:
    """What cancelling a run does: queued messages become cancelled, with the operator's action."""
    runs_t = Run.__table__
    with db.writing(engine) as conn:
        _move_all(
            conn,
            run_id,
            at,
            before=QUEUED,
            to=CANCELLED,
            source="operator",
            detail={"reason": "run cancelled"},
        )
        conn.execute(
            sa.update(runs_t).where(runs_t.c.id == run_id).values(status=RUN_CANCELLED, finished_at=at)
        )
        if record:
            record_action(conn, at=at, actor="operator", action="run.cancelled", run_id=run_id, details={})


def add_actions(engine: sa.Engine, n: int, at: datetime) -> None:
    with db.writing(engine) as conn:
        for i in range(n):
            record_action(
                conn, at=at + timedelta(seconds=i), actor="tester", action="test.step", details={"i": i}
            )
