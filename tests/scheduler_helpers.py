"""Helpers for the scheduler tests: tiny templates, campaign files, an audience, a runner."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.models import ListMember, Message, Recipient, RecipientList, Run
from broadcaster.optouts import add_optout
from broadcaster.scheduling.catalog import Catalog, load_catalog
from broadcaster.scheduling.runner import ScheduleRunner
from broadcaster.templating import TemplateStore

REPO = Path(__file__).resolve().parent.parent
SHANGHAI = "Asia/Shanghai"

# The template names the quality-month file uses (their real wording ships with the templates work).
TEMPLATES = {
    "public-service-0831": "{{ signature }}{{ theme }}。{{ send_date | cn_date }}质量月公益短信。回TD退订",
    "slogan": "{{ signature }}{{ slogan }} 回TD退订",
    "food-lab-open-day": "{{ signature }}{{ send_date | cn_month_day }}食品检测实验室开放日，欢迎参观。",
    "summary-reminder": "{{ signature }}请于{{ deadline }}前报送质量月活动总结至{{ mailbox }}。",
    "hello": "【测试】{{ name }}，{{ send_date | cn_date }} {{ send_time.strftime('%H:%M') }}",
}


def write_templates(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in TEMPLATES.items():
        (folder / f"{name}.j2").write_text(source + "\n", encoding="utf-8")
    slogans = folder / "slogans"
    slogans.mkdir(exist_ok=True)
    for name in ("general.txt", "machinery.txt"):
        (slogans / name).write_text((REPO / "templates" / "slogans" / name).read_text(encoding="utf-8"))
    return folder


def write_campaign(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def seed_audience(engine: sa.Engine, lists: dict[str, list[str]], optouts: tuple[str, ...] = ()) -> None:
    """Lists of phone numbers (a number may be in several lists), with Core inserts."""
    now = datetime(2011, 8, 1, tzinfo=UTC)
    phones = sorted({p for members in lists.values() for p in members})
    ids = {p: i for i, p in enumerate(phones, start=1)}
    with db.writing(engine) as conn:
        conn.execute(
            sa.insert(RecipientList.__table__),
            [{"id": i, "name": n, "created_at": now} for i, n in enumerate(lists, start=1)],
        )
        if phones:
            conn.execute(
                sa.insert(Recipient.__table__),
                [
                    {
                        "id": ids[p],
                        "phone": p,
                        "name": f"n{ids[p]}",
                        "attributes": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for p in phones
                ],
            )
        members = [
            {"list_id": li, "recipient_id": ids[p], "added_at": now}
            for li, members_ in enumerate(lists.values(), start=1)
            for p in members_
        ]
        if members:
            conn.execute(sa.insert(ListMember.__table__), members)
        for phone in optouts:
            add_optout(conn, phone, source="operator", at=now, actor="test")


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+86138{start + i:08d}" for i in range(n)]


def catalog_of(schedules: Path, templates: Path, grace: timedelta = timedelta(hours=1)) -> Catalog:
    return load_catalog(schedules, TemplateStore(templates), default_grace=grace)


def make_runner(
    engine: sa.Engine, clock: Clock, schedules: Path, templates: Path, name: str = "test"
) -> ScheduleRunner:
    """A freshly started scheduler (as after a process start): nothing carried over in memory."""
    runner = ScheduleRunner(engine, clock, TemplateStore(templates), daemon_id=name)
    catalog = catalog_of(schedules, templates)
    assert not catalog.issues, [str(i) for i in catalog.issues]
    runner.set_catalog(catalog)
    return runner


def runs(engine: sa.Engine, job: str | None = None) -> list[dict]:
    t = Run.__table__
    query = sa.select(t).order_by(t.c.scheduled_for, t.c.id)
    if job is not None:
        query = query.where(t.c.job_id == job)
    with db.reading(engine) as conn:
        return [dict(r) for r in conn.execute(query).mappings().all()]


def messages(engine: sa.Engine, run_id: int | None = None) -> list[dict]:
    t = Message.__table__
    query = sa.select(t).order_by(t.c.id)
    if run_id is not None:
        query = query.where(t.c.run_id == run_id)
    with db.reading(engine) as conn:
        return [dict(r) for r in conn.execute(query).mappings().all()]


def actions(engine: sa.Engine, name: str) -> list[dict]:
    from broadcaster.models import Action

    t = Action.__table__
    with db.reading(engine) as conn:
        return [
            dict(r) for r in conn.execute(sa.select(t).where(t.c.action == name).order_by(t.c.id)).mappings()
        ]


def sent_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
