"""Exports of the message log and the action trail as CSV, JSON Lines or Excel.

Phone numbers are masked unless ``unmask`` is given; every export is recorded in the trail
(``audit.exported``: what, filters, format, unmasked, rows, file, sha256) after the file is complete,
and the file is removed again if that record cannot be written. CSV and Excel cells that a
spreadsheet would run as formulas are neutralised.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from broadcaster import db
from broadcaster.audit.masking import neutralise_cell
from broadcaster.audit.queries import (
    ACTION_KEYS,
    MESSAGE_KEYS,
    ActionFilter,
    MessageFilter,
    iter_actions,
    iter_messages,
    masked_action,
    masked_message,
)
from broadcaster.clock import Clock
from broadcaster.trail import record_action

FORMATS = ("csv", "jsonl", "xlsx")
WHAT = ("messages", "trail")


class ExportError(ValueError):
    pass


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    sha256: str
    action_id: int

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "rows": self.rows, "sha256": self.sha256, "action_id": self.action_id}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _local(value: Any, zone: ZoneInfo) -> Any:
    return value.astimezone(zone).isoformat() if isinstance(value, datetime) else value


def _records(
    engine: Engine, what: str, flt: MessageFilter | ActionFilter, *, unmask: bool, region: str, zone: ZoneInfo
) -> tuple[tuple[str, ...], Iterator[dict[str, Any]]]:
    def messages() -> Iterator[dict[str, Any]]:
        assert isinstance(flt, MessageFilter)
        with db.reading(engine) as conn:
            for m in iter_messages(conn, flt, region=region):
                m = m if unmask else masked_message(m)
                yield {k: _local(v, zone) for k, v in m.items()}

    def actions() -> Iterator[dict[str, Any]]:
        assert isinstance(flt, ActionFilter)
        with db.reading(engine) as conn:
            for a in iter_actions(conn, flt):
                a = a if unmask else masked_action(a)
                yield {k: _local(v, zone) for k, v in a.items()}

    if what == "messages":
        return MESSAGE_KEYS, messages()
    return ACTION_KEYS, actions()


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def _write_csv(fh: IO[str], keys: tuple[str, ...], records: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(fh)
    writer.writerow(keys)
    n = 0
    for rec in records:
        writer.writerow([neutralise_cell(_cell(rec[k])) for k in keys])
        n += 1
    return n


def _write_jsonl(fh: IO[str], keys: tuple[str, ...], records: Iterable[dict[str, Any]]) -> int:
    n = 0
    for rec in records:
        fh.write(json.dumps({k: _jsonable(rec[k]) for k in keys}, ensure_ascii=False) + "\n")
        n += 1
    return n


def _write_xlsx(path: Path, keys: tuple[str, ...], records: Iterable[dict[str, Any]]) -> int:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("export")
    ws.append(list(keys))
    n = 0
    for rec in records:
        row = []
        for k in keys:
            value = _cell(rec[k])
            if isinstance(value, str):
                cell = WriteOnlyCell(ws, value=ILLEGAL_CHARACTERS_RE.sub("", neutralise_cell(value)))
                cell.data_type = "s"  # text, never a formula
            else:
                cell = WriteOnlyCell(ws, value=value)
            row.append(cell)
        ws.append(row)
        n += 1
    wb.save(path)
    return n


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export(
    engine: Engine,
    *,
    what: str,
    flt: MessageFilter | ActionFilter,
    fmt: str,
    path: Path,
    unmask: bool,
    actor: str,
    clock: Clock,
    region: str,
    zone: ZoneInfo,
    host: str | None = None,
    via: str = "cli",
) -> ExportResult:
    """Write the export to ``path`` (replacing it only once complete), then record it."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if what not in WHAT:
        raise ExportError(f"export {what!r}: choose one of {', '.join(WHAT)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    keys, records = _records(engine, what, flt, unmask=unmask, region=region, zone=zone)
    try:
        if fmt == "xlsx":
            rows = _write_xlsx(partial, keys, records)
        else:
            # utf-8-sig: Excel opens Chinese text in a CSV correctly only with the BOM
            encoding = "utf-8-sig" if fmt == "csv" else "utf-8"
            with open(partial, "w", encoding=encoding, newline="") as fh:
                rows = (_write_csv if fmt == "csv" else _write_jsonl)(fh, keys, records)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    digest = _sha256(path)
    try:
        with db.writing(engine) as conn:
            action_id = record_action(
                conn,
                at=clock.now(),
                actor=actor,
                host=host,
                action="audit.exported",
                details={
                    "what": what,
                    "filters": flt.as_dict(),
                    "format": fmt,
                    "unmasked": unmask,
                    "rows": rows,
                    "file": path.name,
                    "sha256": digest,
                    "via": via,
                },
            )
    except Exception:
        path.unlink(missing_ok=True)  # an export nobody can account for must not exist
        raise
    return ExportResult(path, rows, digest, action_id)
