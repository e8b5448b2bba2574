"""A run end to end through the package API: lists, opt-outs, materialisation, dispatch, log."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.dispatch import Dispatcher
from broadcaster.models import ListMember, Message, Recipient, RecipientList
from broadcaster.optouts import add_optout
from broadcaster.providers.log import LogProvider
from broadcaster.runs import RunError, counts_by_status, create_run, materialise
from broadcaster.templating import TemplateStore
from tests.dispatch_helpers import seed_list


def _seed(engine: sa.Engine, now: datetime) -> None:
    with db.writing(engine) as conn:
        conn.execute(
            sa.insert(RecipientList.__table__),
            [{"id": 1, "name": "a", "created_at": now}, {"id": 2, "name": "b", "created_at": now}],
        )
        conn.execute(
            sa.insert(Recipient.__table__),
            [
                {
                    "id": i,
                    "phone": f"+861380013800{i}",
                    "name": f"n{i}",
                    "attributes": {"city": "京"},
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, 6)
            ],
        )
        conn.execute(
            sa.insert(ListMember.__table__),
            [{"list_id": 1, "recipient_id": i, "added_at": now} for i in (1, 2, 3)]
            + [{"list_id": 2, "recipient_id": i, "added_at": now} for i in (3, 4, 5)],
        )
        add_optout(conn, "+8613800138004", source="operator", at=now, actor="t")


def test_run_sends_each_recipient_once_and_suppresses_opt_outs(engine: sa.Engine, tmp_path: Path) -> None:
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    _seed(engine, clock.now())
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hello.j2").write_text(
        "【质量月】{{ name }}，{{ send_date | cn_date }}。\n", encoding="utf-8"
    )
    store = TemplateStore(tmp_path / "t")
    ref = create_run(
        engine,
        template="hello",
        list_names=["a", "b"],
        variables={},
        clock=clock,
        actor="t",
        timezone="Asia/Shanghai",
        store=store,
    )
    assert materialise(engine, ref.id, store=store, clock=clock) == 5  # recipient 3 is in both lists
    assert materialise(engine, ref.id, store=store, clock=clock) == 5  # idempotent
    provider = LogProvider(tmp_path / "sent.jsonl", clock)
    stats = Dispatcher(engine, provider, clock).run_until_idle()
    assert stats.sent == 4
    with db.reading(engine) as conn:
        assert counts_by_status(conn, ref.id) == {"sent": 4, "suppressed": 1}
        bodies = conn.execute(sa.select(Message.__table__.c.body)).scalars().all()
    assert "【质量月】n1，2011年8月31日。" in bodies
    lines = [json.loads(x) for x in (tmp_path / "sent.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(x["to"] for x in lines) == [f"+861380013800{i}" for i in (1, 2, 3, 5)]
    assert Dispatcher(engine, provider, clock).run_until_idle().claimed == 0


def test_messages_are_rendered_from_the_template_as_it_was_when_the_run_was_created(
    engine: sa.Engine, tmp_path: Path
) -> None:
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    _seed(engine, clock.now())
    (tmp_path / "t").mkdir()
    path = tmp_path / "t" / "hello.j2"
    path.write_text("【质量月】{{ name }}：第一版。\n", encoding="utf-8")
    store = TemplateStore(tmp_path / "t")
    ref = create_run(
        engine,
        template="hello",
        list_names=["a"],
        variables={},
        clock=clock,
        actor="t",
        timezone="Asia/Shanghai",
        store=store,
    )
    # The operator edits the file before the run is materialised (say the process died in between).
    path.write_text("【质量月】{{ name }}：第二版。\n", encoding="utf-8")
    assert materialise(engine, ref.id, store=TemplateStore(tmp_path / "t"), clock=clock) == 3
    with db.reading(engine) as conn:
        bodies = set(conn.execute(sa.select(Message.__table__.c.body)).scalars())
        run = conn.exec_driver_sql("SELECT template_sha256, template_source FROM runs").one()
    assert bodies == {f"【质量月】n{i}：第一版。" for i in (1, 2, 3)}
    assert run.template_source == "【质量月】{{ name }}：第一版。\n"
    assert run.template_sha256 == hashlib.sha256(run.template_source.encode()).hexdigest()


def test_a_run_without_a_snapshot_refuses_a_changed_template(engine: sa.Engine, tmp_path: Path) -> None:
    """Runs created before snapshots were kept: never rendered from a text other than the recorded one."""
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    _seed(engine, clock.now())
    (tmp_path / "t").mkdir()
    path = tmp_path / "t" / "hello.j2"
    path.write_text("{{ name }}：第一版\n", encoding="utf-8")
    store = TemplateStore(tmp_path / "t")
    kwargs = dict(
        list_names=["a"], variables={}, clock=clock, actor="t", timezone="Asia/Shanghai", store=store
    )
    old = create_run(engine, template="hello", **kwargs)
    same = create_run(engine, template="hello", **kwargs)
    with db.writing(engine) as conn:
        conn.exec_driver_sql("UPDATE runs SET template_source = NULL")
    assert materialise(engine, same.id, store=store, clock=clock) == 3  # unchanged file: fine
    path.write_text("{{ name }}：第二版\n", encoding="utf-8")
    with pytest.raises(
        RunError, match=rf"run {old.id}: template 'hello' has changed since the run was created"
    ):
        materialise(engine, old.id, store=TemplateStore(tmp_path / "t"), clock=clock)
    with db.reading(engine) as conn:
        written = conn.execute(sa.select(Message.__table__.c.run_id)).scalars().all()
    assert set(written) == {same.id}


def test_materialise_pages_through_overlapping_lists_each_recipient_once(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Pages of 1,000 recipients driven by each list's members: a recipient in both lists comes
    once, and nobody is skipped at a page boundary (list a: 1–1500, list b: 1000–2600)."""
    now = datetime(2011, 8, 31, 1, 0, tzinfo=UTC)
    seed_list(engine, "a", range(1, 1501), now)
    seed_list(engine, "b", range(1000, 2601), now)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hello.j2").write_text("{{ name }}\n", encoding="utf-8")
    store = TemplateStore(tmp_path / "t")
    clock = ManualClock(now)
    kwargs = dict(variables={}, clock=clock, actor="t", timezone="Asia/Shanghai", store=store)
    both = create_run(engine, template="hello", list_names=["b", "a"], **kwargs)
    only_b = create_run(engine, template="hello", list_names=["b"], **kwargs)
    assert materialise(engine, both.id, store=store, clock=clock) == 2600
    assert materialise(engine, only_b.id, store=store, clock=clock) == 1601
    with db.reading(engine) as conn:
        m = Message.__table__
        for run_id, expected in ((both.id, range(1, 2601)), (only_b.id, range(1000, 2601))):
            got = conn.execute(sa.select(m.c.recipient_id).where(m.c.run_id == run_id)).scalars().all()
            assert sorted(got) == list(expected)
