"""Helpers for the recipient-import tests: writing CSV files as operators produce them, and
snapshotting what the database holds."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import sqlalchemy as sa

TABLES = ("recipients", "lists", "list_members", "optouts", "import_batches", "import_rejects", "actions")


def write_csv(
    path: Path,
    rows: list[list[str]],
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    bom: bool = False,
) -> Path:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    data = buf.getvalue().encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def table_counts(url: str | None = None) -> dict[str, int]:
    """Rows per table (of those the importer may touch); {} if the database has no schema yet."""
    from broadcaster.db import make_engine

    engine = make_engine(url or os.environ["BROADCASTER_DATABASE_URL"])
    try:
        names = set(sa.inspect(engine).get_table_names())
        if "recipients" not in names:
            return {}
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))
