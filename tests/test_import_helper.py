"""Big imports prepare rows in a helper process: same results as in-process, and it never outlives
or hides a failure (killed helper, failing import, Ctrl-C, a file that changes under it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from import_helpers import write_csv

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.csv_source import SourceError, inspect
from broadcaster.import_rows import HelperFailed, RowRules, prepared_chunks
from broadcaster.importer import import_optouts, import_recipients
from broadcaster.models import ImportBatch, ImportReject, ListMember, OptOut, Recipient
from tests.conftest import subprocess_env

CLOCK = ManualClock(datetime(2011, 8, 20, 2, 0, tzinfo=UTC))
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "recipients" / "public-sample.csv"


def _mobile(i: int) -> str:
    return f"139{i * 7919 % 100_000_000:08d}"


def _big_file(path: Path, rows: int) -> Path:
    """A GBK file with every kind of row: plain, formatted, repeats, bad numbers, long names."""
    data = [["手机号码", "姓名", "城市"]]
    for i in range(rows):
        if i % 50 == 7:
            phone = "12345"  # too short
        elif i % 40 == 3:
            phone = _mobile(i // 2)  # a repeat of an earlier row
        elif i % 9 == 0:
            n = _mobile(i)
            phone = f"+86 {n[:3]} {n[3:7]} {n[7:]}"
        else:
            phone = _mobile(i)
        name = "名" * 201 if i % 997 == 5 else f"用户{i}"
        data.append([phone, name, "北京" if i % 2 else ""])
    return write_csv(path, data, encoding="gbk")


def _helpers(parent: int | None = None) -> list[int]:
    """Pids of the import helpers still running under ``parent`` (default: this process)."""
    parent = parent or os.getpid()
    found = []
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
        return []  # the parent itself has ended
    for task in tasks:
        try:
            with open(f"/proc/{parent}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"broadcaster.import_rows" in cmdline:
                found.append(int(pid))
    return found


def _snapshot(engine: sa.Engine) -> dict[str, Any]:
    r, m, j, o = Recipient.__table__, ListMember.__table__, ImportReject.__table__, OptOut.__table__
    with db.reading(engine) as conn:
        return {
            "recipients": conn.execute(
                sa.select(r.c.id, r.c.phone, r.c.name, r.c.attributes, r.c.region).order_by(r.c.id)
            ).all(),
            "members": conn.execute(
                sa.select(m.c.list_id, m.c.recipient_id).order_by(m.c.recipient_id)
            ).all(),
            "rejects": conn.execute(
                sa.select(j.c.row_number, j.c.raw_value, j.c.reason, j.c.detail).order_by(j.c.row_number)
            ).all(),
            "optouts": conn.execute(sa.select(o.c.phone).order_by(o.c.phone)).scalars().all(),
        }


def _import(engine: sa.Engine, path: Path, **kwargs: Any) -> Any:
    return import_recipients(engine, path, list_name="l", clock=CLOCK, actor="t", helper=True, **kwargs)


def _comparable(report: Any) -> dict[str, Any]:
    fields = report.as_dict()
    fields.pop("rejects_file")
    return fields


@pytest.mark.parametrize("source", ["sample", "generated"])
def test_a_helper_process_gives_exactly_the_in_process_result(tmp_path: Path, source: str) -> None:
    path = SAMPLE if source == "sample" else _big_file(tmp_path / "big.csv", 3000)
    results = {}
    for helper in (False, True):
        engine = db.open_database(f"sqlite:///{tmp_path / f'{helper}.db'}")
        rejects = tmp_path / f"rejects-{helper}.csv"
        dry = import_recipients(
            engine, path, list_name="l", clock=CLOCK, actor="t", chunk_size=97, dry_run=True, helper=helper
        )
        report = import_recipients(
            engine,
            path,
            list_name="l",
            clock=CLOCK,
            actor="t",
            chunk_size=97,
            helper=helper,
            rejects_path=rejects,
        )
        optouts = import_optouts(engine, path, clock=CLOCK, actor="t", chunk_size=97, helper=helper)
        results[helper] = (
            _comparable(dry),
            _comparable(report),
            _comparable(optouts),
            _snapshot(engine),
            rejects.read_bytes(),
        )
        engine.dispose()
    assert results[True] == results[False]
    report = results[True][1]
    assert report["rows"] == report["imported"] + report["duplicates"] + report["rejected"]
    assert report["imported"] > 0 and report["rejected"] > 0 and report["duplicates_in_file"] > 0
    if source == "generated":
        assert report["rejected_by_reason"]["name_too_long"] == 4  # rows 5, 1002, 1999, 2996


def test_big_files_use_a_helper_and_small_ones_do_not(tmp_path: Path) -> None:
    big = inspect(_big_file(tmp_path / "big.csv", 20_000))
    small = inspect(SAMPLE)
    seen: dict[str, list[int]] = {}
    for name, layout in (("big", big), ("small", small)):
        chunks = prepared_chunks(layout, RowRules())
        first = next(chunks)
        seen[name] = _helpers()
        rows = first.rows + sum(c.rows for c in chunks)
        assert rows == layout.data_rows
    assert len(seen["big"]) == 1 and seen["small"] == []
    assert _helpers() == []  # ended with the file


def test_a_failing_import_stops_its_helper_and_keeps_what_it_committed(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = _big_file(tmp_path / "big.csv", 6000)
    helpers_during: list[list[int]] = []

    def fail_after_two_chunks(done: int, total: int) -> None:
        helpers_during.append(_helpers())
        if done >= 2000:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _import(engine, path, chunk_size=1000, commit_rows=1000, progress=fail_after_two_chunks)
    assert len(helpers_during[0]) == 1
    assert _helpers() == []
    with db.reading(engine) as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(Recipient.__table__)).scalar_one()
        batch = conn.execute(sa.select(ImportBatch.__table__)).mappings().one()
    assert 0 < stored < 2000 and batch["finished_at"] is None

    report = _import(engine, path)
    assert report.already_stored == stored
    assert report.rows == report.imported + report.duplicates + report.rejected == 6000


def test_a_killed_helper_is_reported_not_taken_for_the_end_of_the_file(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = _big_file(tmp_path / "big.csv", 30_000)

    def kill_the_helper(done: int, total: int) -> None:
        for pid in _helpers():
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(HelperFailed, match="exit code -9"):
        _import(engine, path, chunk_size=500, progress=kill_the_helper)
    with db.reading(engine) as conn:
        batch = conn.execute(sa.select(ImportBatch.__table__)).mappings().one()
    assert batch["finished_at"] is None  # incomplete, as `recipients batches` shows


def test_a_file_that_stops_being_readable_is_a_source_error_from_the_helper(tmp_path: Path) -> None:
    path = _big_file(tmp_path / "big.csv", 500)
    layout = inspect(path)
    with path.open("ab") as f:
        f.write(b'"13900000001,\xff\xfe broken\r\n')  # appended after inspection: bad GBK
    with pytest.raises(SourceError, match="big.csv"):
        list(prepared_chunks(layout, RowRules(), chunk_size=100, helper=True))
    assert _helpers() == []


def test_ctrl_c_stops_the_cli_import_and_its_helper(tmp_path: Path) -> None:
    path = _big_file(tmp_path / "big.csv", 150_000)
    env = subprocess_env(
        BROADCASTER_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", BROADCASTER_VAR_DIR=str(tmp_path / "var")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster", "recipients", "import", str(path), "--list", "l", "--json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 30
    helper = None
    while helper is None and time.monotonic() < deadline and proc.poll() is None:
        helper = next(iter(_helpers(proc.pid)), None)
        time.sleep(0.02)
    assert helper is not None, "the import never started its helper"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.decode().startswith("error: interrupted: the rows imported so far are kept") and out == b""
    assert len(err.decode().strip().splitlines()) == 1
    deadline = time.monotonic() + 5
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        not Path(f"/proc/{helper}").exists() or b"Z" in Path(f"/proc/{helper}/stat").read_bytes().split()[2]
    )

    listing = subprocess.run(
        [sys.executable, "-m", "broadcaster", "recipients", "batches", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    (batch,) = json.loads(listing.stdout)
    assert batch["finished_at"] is None
