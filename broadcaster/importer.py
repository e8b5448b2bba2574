"""Batch imports from CSV: recipients into a list, and opt-outs.

How one import goes (``docs/recipients.md`` has the operator's view):
- :func:`csv_source.inspect` reads the whole file first, so a file that cannot be processed is
  refused before anything is written.
- Rows are then streamed in chunks of a few thousand, prepared by :mod:`import_rows` (normalised,
  rejects sorted out; in a helper process for big files). Per chunk, here: the accepted numbers
  are written to a temporary staging table with one Core executemany; set-based statements joining
  it with the real tables find repeats and stored numbers, insert new recipients and memberships;
  changed recipients are updated with one executemany, rejects inserted with another. Commits come
  every COMMIT_ROWS rows or COMMIT_SECONDS, so a sending dispatcher is never blocked for long.
- Numbers already seen earlier in the same file are remembered in another temporary table on the
  import's own connection, not in memory, so memory stays flat whatever the file size.
- Counts: ``rows = imported + updated + duplicates + rejected``, with
  ``duplicates = duplicates_in_file + already_stored``.
- Re-importing changes nothing: numbers already stored with the same details count as
  ``already_stored``. The import is still recorded (import_batches and the action trail), and the
  report names the earlier batch of the same file (same SHA-256) into the same list.
- Merge rule for a number already stored: a non-empty name in the file replaces the stored name;
  attributes are merged key by key, non-empty cells in the file replacing stored values, keys the
  file does not have (or leaves empty) kept. Within one file, the first row of a number wins.
"""

from __future__ import annotations

import builtins
import contextlib
import csv
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster import db
from broadcaster.clock import Clock
from broadcaster.csv_source import Layout, SourceError, inspect
from broadcaster.import_rows import CHUNK, ROW_REASONS, Prepared, RowRules, prepared_chunks
from broadcaster.lists import ListError, ensure_list, find_list, list_summary, validate_list_name
from broadcaster.models import ImportBatch, ImportReject, ListMember, OptOut, Recipient, UTCDateTime
from broadcaster.optouts import add_optouts
from broadcaster.phones import REASONS
from broadcaster.trail import current_host, record_action

COMMIT_ROWS = 50_000
COMMIT_SECONDS = 5.0
SQLITE_CACHE_KIB = 64 * 1024  # page cache of the import's connection (SQLite's default is 2 MiB)
FIRST_REJECTS = 10

batches_t = ImportBatch.__table__
rejects_t = ImportReject.__table__
recipients_t = Recipient.__table__
members_t = ListMember.__table__
optouts_t = OptOut.__table__

Progress = Callable[[int, int], None]  # (rows done, rows in the file)


class ImportFailed(Exception):
    """The import cannot start (bad file, list name, region or rejects path); nothing was written."""


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do). ``as_dict`` is the ``--json`` output."""

    kind: str
    file: str
    sha256: str
    encoding: str
    dry_run: bool
    list: str | None = None
    batch: int | None = None
    rows: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    duplicates_in_file: int = 0
    already_stored: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    added_to_list: int = 0
    list_size: int | None = None  # the list after the import (dry run: as it is now)
    list_opted_out: int | None = None  # of its members, how many are opted out (never sent to)
    list_created: bool = False
    unchanged: bool = False
    previous_batch: dict[str, Any] | None = None
    rejects_file: str | None = None
    # (builtins.list: `list` is a field name in this class)
    first_rejects: list[dict[str, Any]] = field(default_factory=builtins.list)  # up to FIRST_REJECTS
    phone_column: str | None = None
    attributes: list[str] = field(default_factory=builtins.list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RejectsFile:
    """The operator's CSV of rejected rows (row, value, reason, message), UTF-8 with BOM for Excel.

    Written to a temporary name and renamed when the import ends, so it is never half written.
    """

    HEADER = ("row", "value", "reason", "message")

    def __init__(self, path: Path | None, source: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".partial") if path else None
        if path is not None and path.resolve() == source.resolve():
            raise ImportFailed(f"--rejects {path} would overwrite the file being imported")
        self._file: Any = None
        self._writer: Any = None

    def __enter__(self) -> RejectsFile:
        if self._tmp is not None:
            try:
                self._file = self._tmp.open("w", encoding="utf-8-sig", newline="")
            except OSError as exc:
                raise ImportFailed(f"cannot write rejects file {self.path}: {exc.strerror or exc}") from None
            self._writer = csv.writer(self._file)
            self._writer.writerow(self.HEADER)
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._writer is not None:
            self._writer.writerows((r["row_number"], r["raw_value"], r["reason"], r["detail"]) for r in rows)

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._file is None:
            return
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)  # type: ignore[arg-type]
        else:
            self._tmp.unlink(missing_ok=True)  # type: ignore[union-attr]


class _Staging:
    """Two temporary tables on the import's own connection, so that memory stays flat.

    ``seen``: every number met so far in this file (finds repeats across chunks).
    ``stage``: the current chunk's accepted numbers, first occurrence each, with ``dup`` set when
    the number was met in an earlier chunk. Set-based statements join it with the real tables, so
    every statement's SQL is the same from chunk to chunk (no IN lists of thousands of values, which
    would each compile, and be cached by sqlite3, as a new statement).
    """

    def __init__(self) -> None:
        metadata = sa.MetaData()
        # Keyed by the E.164 digits as an integer: on SQLite that is the rowid itself, the cheapest
        # B-tree there is to insert into and probe.
        self.seen = sa.Table(
            "broadcaster_import_seen",
            metadata,
            sa.Column(
                "key",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=False,
            ),
            prefixes=["TEMPORARY"],
        )
        self.stage = sa.Table(
            "broadcaster_import_stage",
            metadata,
            sa.Column("phone", sa.String(20), primary_key=True),
            sa.Column("row_number", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(200)),
            sa.Column("attributes", sa.Text()),  # JSON text, serialised by import_rows
            sa.Column("region", sa.String(4)),
            sa.Column("dup", sa.Boolean(create_constraint=False), nullable=False, server_default=sa.false()),
            prefixes=["TEMPORARY"],
        )

    def create(self, conn: Connection) -> None:
        self.drop(conn)  # left over by an import that died on this pooled connection
        self.seen.create(conn)
        self.stage.create(conn)

    def drop(self, conn: Connection) -> None:
        for table in (self.stage, self.seen):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")

    def load(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Stage a chunk (phone, row_number, name, attributes, region); returns how many were met before."""
        stage, seen = self.stage, self.seen
        conn.execute(sa.delete(stage))
        conn.execute(sa.insert(stage), rows)
        key = sa.cast(sa.func.substr(stage.c.phone, 2), seen.c.key.type)  # +8613800138000 → 8613800138000
        # EXISTS, not IN (SELECT …): SQLite would drive an IN from the whole `seen` table (O(file)).
        met = sa.exists().where(seen.c.key == key)
        repeated = conn.execute(sa.update(stage).where(met).values(dup=True)).rowcount
        conn.execute(sa.insert(seen).from_select(["key"], sa.select(key).where(~stage.c.dup)))
        return repeated

    @property
    def fresh(self) -> sa.ColumnElement[bool]:
        """Staged rows met for the first time in this file."""
        return ~self.stage.c.dup


def _sqlite_cache(conn: Connection, kib: int | None) -> None:
    """Give the import's own SQLite connection a bigger page cache (None: back to the default).

    The temporary tables get a quarter of it: `seen` holds 8-byte keys.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA main.cache_size = {-kib if kib else -2000}")
        conn.exec_driver_sql(f"PRAGMA temp.cache_size = {-(kib // 4) if kib else -2000}")


def _open(path: Path, encoding: str, phone_column: str | None) -> Layout:
    try:
        return inspect(path, encoding=encoding, phone_column=phone_column)
    except SourceError as exc:
        raise ImportFailed(str(exc)) from None


def _rules(region: str, **kwargs: Any) -> RowRules:
    rules = RowRules(region.upper(), **kwargs)
    try:
        rules.normaliser()
    except ValueError as exc:
        raise ImportFailed(str(exc)) from None
    return rules


class _Import:
    """What recipient and opt-out imports share: the batch record, rejects, dedupe, chunking."""

    kind = ""

    def __init__(
        self,
        engine: Engine,
        layout: Layout,
        rules: RowRules,
        report: ImportReport,
        *,
        clock: Clock,
        actor: str,
        rejects: RejectsFile,
        progress: Progress | None,
        chunk_size: int,
        helper: bool | None,
        commit_rows: int = COMMIT_ROWS,
    ) -> None:
        self.engine = engine
        self.commit_rows = commit_rows
        self.layout = layout
        self.rules = rules
        self.report = report
        self.clock = clock
        self.actor = actor
        self.rejects = rejects
        self.progress = progress
        self.chunk_size = chunk_size
        self.helper = helper
        self.staging = _Staging()
        self.batch_id: int | None = None
        self.started_at: datetime | None = None
        self.reasons: Counter[str] = Counter()

    def run(self) -> ImportReport:
        if self.report.dry_run:
            with db.reading(self.engine) as conn:
                self._run(conn, writes=False)
                self.staging.drop(conn)
            return self.report
        with self.engine.connect() as conn:
            try:
                self._run(conn, writes=True)
            finally:
                with contextlib.suppress(sa.exc.SQLAlchemyError):  # never hide the first error
                    if conn.in_transaction():
                        conn.rollback()
                    with conn.begin():
                        self.staging.drop(conn)
                        _sqlite_cache(conn, None)
        return self.report

    def _run(self, conn: Connection, *, writes: bool) -> None:
        def transaction() -> Any:
            return conn.begin() if writes else contextlib.nullcontext()

        self.started_at = self.clock.now()
        with transaction():
            if writes:
                _sqlite_cache(conn, SQLITE_CACHE_KIB)
            self.staging.create(conn)
            self.start(conn)
            if writes:
                self.batch_id = self._insert_batch(conn)
                self.report.batch = self.batch_id

        # Chunks are written in transactions of about COMMIT_ROWS rows: each commit rewrites the
        # index pages the chunk touched, and random phone numbers touch most of a big index.
        # A transaction also ends after COMMIT_SECONDS, so that other writers (a dispatcher) wait
        # for SQLite's lock a few seconds at most.
        open_tx: list[Any] = []
        pending, began = 0, 0.0
        chunks = prepared_chunks(self.layout, self.rules, chunk_size=self.chunk_size, helper=self.helper)
        with contextlib.closing(chunks):  # stops the helper process if the import fails
            for prepared in chunks:
                if writes and not open_tx:
                    open_tx.append(conn.begin())
                    began = time.monotonic()
                self._count(prepared)
                self._write(conn, prepared)
                pending += prepared.rows
                if open_tx and (pending >= self.commit_rows or time.monotonic() - began >= COMMIT_SECONDS):
                    open_tx.pop().commit()
                    pending = 0
                if self.progress:
                    self.progress(self.report.rows, self.layout.data_rows)
        if open_tx:
            open_tx.pop().commit()
        self._totals()
        with transaction():
            self.finish(conn)
            if writes:
                self._finish_batch(conn)

    def _count(self, prepared: Prepared) -> None:
        """The report's figures for a chunk, and its rejects in the operator's rejects file."""
        report, rejects = self.report, prepared.rejects
        report.rows += prepared.rows
        report.duplicates_in_file += prepared.repeats
        if rejects:
            report.rejected += len(rejects)
            self.reasons.update(r["reason"] for r in rejects)
            self.rejects.write(rejects)
            room = FIRST_REJECTS - len(report.first_rejects)
            report.first_rejects.extend(
                {
                    "row": r["row_number"],
                    "value": r["raw_value"],
                    "reason": r["reason"],
                    "message": r["detail"],
                }
                for r in rejects[:room]
            )

    def _write(self, conn: Connection, prepared: Prepared) -> None:
        """The database half of a chunk (within the current transaction)."""
        if prepared.staged:
            repeated = self.staging.load(conn, prepared.staged)
            self.report.duplicates_in_file += repeated
            fresh = len(prepared.staged) - repeated
            if fresh:
                self.accept(conn, prepared.staged, fresh)
        if prepared.rejects and not self.report.dry_run:
            conn.execute(sa.insert(rejects_t).values(batch_id=self.batch_id), prepared.rejects)

    def _insert_batch(self, conn: Connection) -> int:
        return conn.execute(
            sa.insert(batches_t)
            .values(
                list_id=self.list_id,
                kind=self.kind,
                file_name=str(self.layout.path.resolve()),
                sha256=self.layout.sha256,
                encoding=self.layout.encoding,
                actor=self.actor,
                host=current_host(),
                started_at=self.started_at,
            )
            .returning(batches_t.c.id)
        ).scalar_one()

    def _totals(self) -> None:
        r = self.report
        r.duplicates = r.duplicates_in_file + r.already_stored
        r.rejected_by_reason = dict(sorted(self.reasons.items()))

    def _finish_batch(self, conn: Connection) -> None:
        r = self.report
        now = self.clock.now()
        counts = {
            "rows": r.rows,
            "imported": r.imported,
            "updated": r.updated,
            "duplicates": r.duplicates,
            "rejected": r.rejected,
            "added_to_list": r.added_to_list,
        }
        conn.execute(
            sa.update(batches_t).where(batches_t.c.id == self.batch_id).values(finished_at=now, **counts)
        )
        record_action(
            conn,
            at=now,
            actor=self.actor,
            action=f"{self.kind}.imported",
            details={
                "batch": self.batch_id,
                "list": r.list,
                "file": str(self.layout.path.resolve()),
                "sha256": r.sha256,
                "encoding": r.encoding,
                **counts,
                "duplicates_in_file": r.duplicates_in_file,
                "already_stored": r.already_stored,
                "rejected_by_reason": r.rejected_by_reason,
            },
        )

    def _previous_batch(self, conn: Connection, list_id: int | None) -> dict[str, Any] | None:
        row = (
            conn.execute(
                sa.select(batches_t.c.id, batches_t.c.finished_at, batches_t.c.actor)
                .where(
                    batches_t.c.sha256 == self.layout.sha256,
                    batches_t.c.kind == self.kind,
                    batches_t.c.list_id == list_id if list_id is not None else batches_t.c.list_id.is_(None),
                    batches_t.c.finished_at.is_not(None),
                )
                .order_by(batches_t.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        return None if row is None else {"batch": row["id"], "at": row["finished_at"], "actor": row["actor"]}

    # --- specific to each kind of import ---
    list_id: int | None = None

    def start(self, conn: Connection) -> None:
        raise NotImplementedError

    def accept(self, conn: Connection, staged: list[dict[str, Any]], fresh: int) -> None:
        """Store the chunk's ``fresh`` staged numbers (``staged``: the chunk's staging rows)."""
        raise NotImplementedError

    def finish(self, conn: Connection) -> None:
        raise NotImplementedError


class _RecipientsImport(_Import):
    kind = "recipients"

    def __init__(self, *args: Any, list_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.list_name = list_name
        self._update = (
            sa.update(recipients_t)
            .where(recipients_t.c.id == sa.bindparam("b_id"))
            .values(
                name=sa.bindparam("b_name", type_=recipients_t.c.name.type),
                attributes=sa.bindparam("b_attributes", type_=recipients_t.c.attributes.type),
            )
        )

    def start(self, conn: Connection) -> None:
        if self.report.dry_run:
            found = find_list(conn, self.list_name)
            self.list_id = found["id"] if found else None
            self.report.list_created = found is None
        else:
            self.list_id, self.report.list_created = ensure_list(
                conn, self.list_name, at=self.started_at, actor=self.actor
            )  # type: ignore[arg-type]
        if self.list_id is not None:
            self.report.previous_batch = self._previous_batch(conn, self.list_id)

    def accept(self, conn: Connection, staged: list[dict[str, Any]], fresh: int) -> None:
        report, dry_run = self.report, self.report.dry_run
        stage, fresh_rows = self.staging.stage, self.staging.fresh
        now = sa.literal(self.clock.now(), UTCDateTime())
        if dry_run:
            stored = self._stored(conn)
            report.imported += fresh - len(stored)
        else:
            attributes = (  # JSON text into a JSON column: PostgreSQL wants the cast, SQLite no cast
                sa.cast(stage.c.attributes, recipients_t.c.attributes.type)
                if conn.dialect.name == "postgresql"
                else stage.c.attributes
            )
            new = (
                sa.select(stage.c.phone, stage.c.name, attributes, stage.c.region, now, now)
                .where(fresh_rows, ~sa.exists().where(recipients_t.c.phone == stage.c.phone))
                .order_by(stage.c.row_number)  # ids in file order
            )
            inserted = set(
                conn.execute(
                    db.insert_ignore(conn, recipients_t)
                    .from_select(["phone", "name", "attributes", "region", "created_at", "updated_at"], new)
                    .on_conflict_do_nothing(index_elements=["phone"])
                    .returning(recipients_t.c.phone)
                ).scalars()
            )
            report.imported += len(inserted)
            # The rest were stored before (by an earlier import, or by another one meanwhile): look
            # them up only if there are any, which a first import of new numbers never has.
            stored = {}
            if len(inserted) < fresh:
                stored = {p: row for p, row in self._stored(conn).items() if p not in inserted}
        updates = []
        first = {entry["phone"]: entry for entry in staged} if stored else {}
        for phone, current in stored.items():
            entry = first[phone]
            name = entry["name"] or current.name
            attributes = {**(current.attributes or {}), **json.loads(entry["attributes"])}
            if name != current.name or attributes != (current.attributes or {}):
                updates.append({"b_id": current.id, "b_name": name, "b_attributes": attributes})
            else:
                report.already_stored += 1
        report.updated += len(updates)
        if updates and not dry_run:
            conn.execute(self._update.values(updated_at=now), updates)
        report.added_to_list += self._add_members(conn, now)

    def _stored(self, conn: Connection) -> dict[str, Any]:
        """Recipients stored for the chunk's first-time numbers."""
        stage, r = self.staging.stage, recipients_t
        rows = conn.execute(
            sa.select(r.c.id, r.c.phone, r.c.name, r.c.attributes)
            .join_from(stage, r, r.c.phone == stage.c.phone)
            .where(self.staging.fresh)
        )
        return {row.phone: row for row in rows}

    def _add_members(self, conn: Connection, now: sa.ColumnElement[Any]) -> int:
        stage, r, m = self.staging.stage, recipients_t, members_t
        if self.report.dry_run:
            fresh = sa.select(sa.func.count()).select_from(stage).where(self.staging.fresh)
            if self.list_id is None:
                return conn.execute(fresh).scalar_one()
            member = sa.exists().where(m.c.list_id == self.list_id, m.c.recipient_id == r.c.id)
            missing = (
                sa.select(sa.func.count())
                .select_from(stage.outerjoin(r, r.c.phone == stage.c.phone))
                .where(self.staging.fresh, sa.or_(r.c.id.is_(None), ~member))
            )
            return conn.execute(missing).scalar_one()
        rows = (
            sa.select(
                sa.literal(self.list_id, sa.Integer()), r.c.id, sa.literal(self.batch_id, sa.Integer()), now
            )
            .join_from(stage, r, r.c.phone == stage.c.phone)
            .where(self.staging.fresh)
            .order_by(stage.c.row_number)
        )
        stmt = (
            db.insert_ignore(conn, m)
            .from_select(["list_id", "recipient_id", "batch_id", "added_at"], rows)
            .on_conflict_do_nothing(index_elements=["list_id", "recipient_id"])
            .execution_options(preserve_rowcount=True)  # else -1 with psycopg for INSERT … SELECT
        )
        return conn.execute(stmt).rowcount

    def finish(self, conn: Connection) -> None:
        r = self.report
        r.unchanged = r.imported == 0 and r.updated == 0 and r.added_to_list == 0 and not r.list_created
        if self.list_id is not None:
            summary = list_summary(conn, self.list_name)
            r.list_size, r.list_opted_out = summary["size"], summary["opted_out"]
        else:
            r.list_size, r.list_opted_out = 0, 0


class _OptoutsImport(_Import):
    kind = "optouts"

    def __init__(self, *args: Any, reason: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reason = reason

    def start(self, conn: Connection) -> None:
        self.report.previous_batch = self._previous_batch(conn, None)

    def accept(self, conn: Connection, staged: list[dict[str, Any]], fresh: int) -> None:
        stage = self.staging.stage
        if self.report.dry_run:
            known = sa.exists().where(optouts_t.c.phone == stage.c.phone)
            before = conn.execute(
                sa.select(sa.func.count()).select_from(stage).where(self.staging.fresh, known)
            ).scalar_one()
            added = fresh - before
        else:
            phones = conn.execute(
                sa.select(stage.c.phone).where(self.staging.fresh).order_by(stage.c.row_number)
            ).scalars()
            added = len(
                add_optouts(
                    conn,
                    phones,
                    source="import",
                    at=self.clock.now(),
                    actor=self.actor,
                    reason=self.reason,
                    details={"batch": self.batch_id},
                )
            )
        self.report.imported += added
        self.report.already_stored += fresh - added

    def finish(self, conn: Connection) -> None:
        self.report.unchanged = self.report.imported == 0


def import_recipients(
    engine: Engine,
    path: Path,
    *,
    list_name: str,
    clock: Clock,
    actor: str,
    region: str = "CN",
    encoding: str = "auto",
    phone_column: str | None = None,
    allow_landline: bool = False,
    dry_run: bool = False,
    rejects_path: Path | None = None,
    progress: Progress | None = None,
    chunk_size: int = CHUNK,
    commit_rows: int = COMMIT_ROWS,
    helper: bool | None = None,
) -> ImportReport:
    """Import recipients from ``path`` into the list ``list_name`` (created if missing).

    ``progress(done, total)`` is called after each chunk, between statements; an exception it
    raises stops the import: what was committed stays, the batch is left without ``finished_at``.
    ``helper``: prepare rows in a helper process (None: for big files; see :mod:`import_rows`).
    """
    try:
        validate_list_name(list_name)
    except ListError as exc:
        raise ImportFailed(str(exc)) from None
    return _import(
        _RecipientsImport,
        engine,
        path,
        _rules(region, allow_landline=allow_landline),
        encoding=encoding,
        phone_column=phone_column,
        dry_run=dry_run,
        rejects_path=rejects_path,
        clock=clock,
        actor=actor,
        progress=progress,
        chunk_size=chunk_size,
        commit_rows=commit_rows,
        helper=helper,
        list_name=list_name,
    )


def import_optouts(
    engine: Engine,
    path: Path,
    *,
    clock: Clock,
    actor: str,
    region: str = "CN",
    encoding: str = "auto",
    phone_column: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    rejects_path: Path | None = None,
    progress: Progress | None = None,
    chunk_size: int = CHUNK,
    helper: bool | None = None,
) -> ImportReport:
    """Opt out every valid number of ``path`` (any number type; source ``import``)."""
    return _import(
        _OptoutsImport,
        engine,
        path,
        _rules(region, mobile_only=False, check_name=False),
        encoding=encoding,
        phone_column=phone_column,
        dry_run=dry_run,
        rejects_path=rejects_path,
        clock=clock,
        actor=actor,
        progress=progress,
        chunk_size=chunk_size,
        helper=helper,
        reason=reason,
    )


def _import(
    job_class: type[_Import],
    engine: Engine,
    path: Path,
    rules: RowRules,
    *,
    encoding: str,
    phone_column: str | None,
    dry_run: bool,
    rejects_path: Path | None,
    **options: Any,
) -> ImportReport:
    """What both kinds of import do: inspect the file (refusing it before anything is written), then
    run the job with the operator's rejects file open."""
    layout = _open(path, encoding, phone_column)
    report = ImportReport(
        kind=job_class.kind,
        file=str(layout.path),
        sha256=layout.sha256,
        encoding=layout.encoding,
        dry_run=dry_run,
        list=options.get("list_name"),
        rejects_file=str(rejects_path) if rejects_path else None,
        phone_column=layout.phone_header,
        attributes=[key for _, key in layout.attributes],
    )
    with RejectsFile(rejects_path, path) as rejects:
        return job_class(engine, layout, rules, report, rejects=rejects, **options).run()


def reason_text(code: str) -> str:
    """The operator's sentence for a reject reason code."""
    return REASONS.get(code) or ROW_REASONS.get(code, code)


def batches(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest import batches, newest first."""
    from broadcaster.models import RecipientList

    lists_t = RecipientList.__table__
    rows = conn.execute(
        sa.select(batches_t, lists_t.c.name.label("list"))
        .outerjoin(lists_t, lists_t.c.id == batches_t.c.list_id)
        .order_by(batches_t.c.id.desc())
        .limit(limit)
    ).mappings()
    return [dict(r) for r in rows]


def batch_rejects(conn: Connection, batch_id: int) -> list[dict[str, Any]]:
    """The rows refused by one import batch, in file order."""
    if conn.execute(sa.select(batches_t.c.id).where(batches_t.c.id == batch_id)).first() is None:
        raise ImportFailed(f"no import batch {batch_id}")
    rows = conn.execute(
        sa.select(rejects_t.c.row_number, rejects_t.c.raw_value, rejects_t.c.reason, rejects_t.c.detail)
        .where(rejects_t.c.batch_id == batch_id)
        .order_by(rejects_t.c.row_number)
    ).mappings()
    return [dict(r) for r in rows]
