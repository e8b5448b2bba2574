"""The importer's package API: chunk boundaries, counts, stored rejects, dry-run parity."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from import_helpers import write_csv

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.importer import ImportFailed, import_optouts, import_recipients
from broadcaster.models import ImportBatch, ImportReject, ListMember, Recipient

CLOCK = ManualClock(datetime(2011, 8, 20, 2, 0, tzinfo=UTC))

ROWS = [
    ["手机号码", "姓名", "城市"],
    ["13800138000", "甲", "北京"],  # 2
    ["13800138001", "乙", "上海"],  # 3
    ["bad", "丙", ""],  # 4
    ["+86 138 0013 8000", "甲二", "天津"],  # 5 repeat of row 2 in a later chunk
    ["13800138002", "丁", ""],  # 6
    ["13800138001", "乙", "上海"],  # 7 repeat of row 3
    ["0086 138 0013 8003", "戊", ""],  # 8
]


def _run(engine: sa.Engine, path: Path, **kwargs):  # type: ignore[no-untyped-def]
    return import_recipients(engine, path, list_name="l", clock=CLOCK, actor="api", **kwargs)


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_counts_do_not_depend_on_chunk_boundaries(engine: sa.Engine, tmp_path: Path, chunk_size: int) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    dry = _run(engine, path, chunk_size=chunk_size, dry_run=True)
    report = _run(engine, path, chunk_size=chunk_size)
    for r in (dry, report):
        assert (r.rows, r.imported, r.updated, r.duplicates_in_file, r.already_stored, r.rejected) == (
            7,
            4,
            0,
            2,
            0,
            1,
        )
        assert r.added_to_list == 4
    with db.reading(engine) as conn:
        recipients = conn.execute(
            sa.select(Recipient.__table__.c.phone, Recipient.__table__.c.name).order_by(
                Recipient.__table__.c.id
            )
        ).all()
        members = conn.execute(sa.select(ListMember.__table__.c.batch_id)).scalars().all()
        rejects = conn.execute(sa.select(ImportReject.__table__)).mappings().all()
        batch = conn.execute(sa.select(ImportBatch.__table__)).mappings().one()
    # File order, first row of each number wins.
    assert recipients == [
        ("+8613800138000", "甲"),
        ("+8613800138001", "乙"),
        ("+8613800138002", "丁"),
        ("+8613800138003", "戊"),
    ]
    assert members == [report.batch] * 4
    assert [(r["batch_id"], r["row_number"], r["raw_value"], r["reason"]) for r in rejects] == [
        (report.batch, 4, "bad", "not_a_number")
    ]
    assert rejects[0]["detail"] == "not a phone number"
    assert (
        batch["rows"],
        batch["imported"],
        batch["duplicates"],
        batch["rejected"],
        batch["added_to_list"],
    ) == (
        7,
        4,
        2,
        1,
        4,
    )
    assert batch["started_at"] == CLOCK.now() and batch["finished_at"] == CLOCK.now()
    assert batch["encoding"] == "utf-8" and batch["kind"] == "recipients" and batch["actor"] == "api"

    again = _run(engine, path, chunk_size=chunk_size)
    assert (again.imported, again.updated, again.already_stored, again.duplicates_in_file) == (0, 0, 4, 2)
    assert again.unchanged and again.previous_batch["batch"] == report.batch


def test_adding_a_stored_number_to_another_list_counts_for_the_list(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    _run(engine, path)
    other = import_recipients(engine, path, list_name="other", clock=CLOCK, actor="api")
    assert (other.imported, other.already_stored, other.added_to_list, other.unchanged) == (0, 4, 4, False)
    assert other.previous_batch is None  # the same file, but never into this list


def test_nothing_is_written_when_the_import_cannot_start(engine: sa.Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    with pytest.raises(ImportFailed, match="would overwrite"):
        _run(engine, path, rejects_path=path)
    with pytest.raises(ImportFailed, match="cannot write rejects file"):
        _run(engine, path, rejects_path=tmp_path / "missing-dir" / "r.csv")
    with db.reading(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ImportBatch.__table__)).scalar_one() == 0


def test_optout_import_through_the_api(engine: sa.Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "o.csv", [["phone"], ["13800138000"], ["13800138000"], ["x"]])
    report = import_optouts(engine, path, clock=CLOCK, actor="api", chunk_size=1)
    assert (report.rows, report.imported, report.duplicates_in_file, report.rejected) == (3, 1, 1, 1)


def test_an_interrupted_import_keeps_what_it_committed_and_a_second_run_completes_it(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)

    def stored_count() -> int:
        with db.reading(engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(Recipient.__table__)).scalar_one()

    def interrupt_once_something_is_committed(done: int, total: int) -> None:
        deadline = time.monotonic() + 10
        while stored_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(engine, path, chunk_size=2, commit_rows=2, progress=interrupt_once_something_is_committed)
    with db.reading(engine) as conn:
        batch = conn.execute(sa.select(ImportBatch.__table__)).mappings().one()
        stored = conn.execute(sa.select(sa.func.count()).select_from(Recipient.__table__)).scalar_one()
    assert batch["finished_at"] is None  # shown as incomplete by `recipients batches`
    assert 1 <= stored < 4  # the first chunk(s) are committed, not the whole file

    report = _run(engine, path, chunk_size=2)
    assert report.imported + report.already_stored == 4 and report.imported == 4 - stored
    with db.reading(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Recipient.__table__)).scalar_one() == 4
        assert conn.execute(sa.select(sa.func.count()).select_from(ListMember.__table__)).scalar_one() == 4
