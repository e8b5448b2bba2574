"""Hash chains over the action trail and the message events: tamper evidence.

Each chained entry carries ``chain_seq`` (its position, 1, 2, 3, …), ``prev_hash`` (the hash of the
entry before it) and ``hash`` = sha256 of a canonical JSON of its fields, its position and
``prev_hash``. Changing, removing or inserting an entry in the middle breaks the chain at that point.

Two ways of chaining, chosen for the write rate of each table:

* **Actions** (rare) are chained at insert time by :func:`append_action` (called only by
  ``trail.record_action``) under a lock: SQLite's ``BEGIN IMMEDIATE`` already serialises writers; on
  PostgreSQL a transaction-scoped advisory lock does. An action is protected from its commit on.
* **Message events** (the hot path: thousands per materialise batch, one per dispatcher outcome) are
  written unchained by ``events.record_events`` and *sealed* later, in id order, by
  :func:`seal_events` (``broadcaster audit seal``, automatically by ``audit verify``/``audit report``,
  and periodically by the daemon). On PostgreSQL every ``record_events`` transaction holds a *shared*
  advisory lock and the sealer takes it *exclusively*, so when the sealer looks, every event id handed
  out so far is committed or rolled back: no event with a smaller id can appear after sealing, and
  an unsealed event older than the sealed head can only have been inserted behind the application's
  back. Writers never wait for each other, only (briefly) for a sealing batch. An event is protected
  from the seal that follows it; before that it can be altered without trace.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster.models import Action, MessageEvent

GENESIS = "0" * 64
ACTIONS = "actions"
EVENTS = "message_events"
CHAINS = (ACTIONS, EVENTS)
PRUNED_ACTION = "audit.pruned"

# pg_advisory_xact_lock(namespace, key): the two-int form keeps clear of single-bigint lock users.
LOCK_NAMESPACE = 0x4243  # "BC"
LOCK_ACTIONS = 1
LOCK_EVENTS = 2

actions_t = Action.__table__
events_t = MessageEvent.__table__

_FIELDS: dict[str, tuple[str, ...]] = {
    ACTIONS: ("id", "chain_seq", "at", "actor", "host", "action", "run_id", "details"),
    EVENTS: ("id", "chain_seq", "message_id", "run_id", "at", "from_status", "to_status", "source", "detail"),
}
_TABLES: dict[str, sa.Table] = {ACTIONS: actions_t, EVENTS: events_t}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    raise TypeError(f"cannot hash a {type(value).__name__}")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_encode)


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 text, times as UTC ISO with µs."""
    return _CANONICAL.encode(value)


def entry_hash(table: str, row: Mapping[str, Any], prev_hash: str) -> str:
    """sha256 over the entry's own fields (its id and chain position included) and ``prev_hash``."""
    payload = {name: row[name] for name in _FIELDS[table]}
    payload["table"] = table
    payload["prev_hash"] = prev_hash
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _columns(table: str) -> list[sa.ColumnElement[Any]]:
    t = _TABLES[table]
    return [t.c[name] for name in _FIELDS[table]] + [t.c.prev_hash, t.c.hash]


def _pg_lock(conn: Connection, key: int, *, shared: bool = False) -> None:
    if conn.dialect.name == "postgresql":
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        conn.execute(sa.text(f"SELECT {fn}(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": key})


def lock_events_for_append(conn: Connection) -> None:
    """Taken by ``record_events`` before inserting (PostgreSQL; SQLite serialises writers anyway)."""
    _pg_lock(conn, LOCK_EVENTS, shared=True)


def _head(conn: Connection, table: str) -> sa.Row[Any] | None:
    t = _TABLES[table]
    return conn.execute(
        sa.select(t.c.id, t.c.chain_seq, t.c.hash, t.c.at)
        .where(t.c.chain_seq.is_not(None))
        .order_by(t.c.chain_seq.desc())
        .limit(1)
    ).first()


# --- actions: chained at insert time ---------------------------------------------------------------


def append_action(conn: Connection, values: dict[str, Any]) -> int:
    """Insert one action as the new head of the chain; returns its id.

    The hash is computed from the row as the database returns it, so that ``verify`` (which reads
    the same way) always agrees, whatever the JSON and time round-trips do.
    """
    _pg_lock(conn, LOCK_ACTIONS)
    head = _head(conn, ACTIONS)
    seq = head.chain_seq + 1 if head else 1
    prev = head.hash if head else GENESIS
    new_id = conn.execute(
        sa.insert(actions_t).values(**values, chain_seq=seq, prev_hash=prev).returning(actions_t.c.id)
    ).scalar_one()
    stored = conn.execute(sa.select(*_columns(ACTIONS)).where(actions_t.c.id == new_id)).mappings().one()
    conn.execute(
        sa.update(actions_t).where(actions_t.c.id == new_id).values(hash=entry_hash(ACTIONS, stored, prev))
    )
    return int(new_id)


def chain_unchained_actions(conn: Connection) -> int:
    """Chain actions written before the chain existed (migration 0005 only), in id order."""
    _pg_lock(conn, LOCK_ACTIONS)
    head = _head(conn, ACTIONS)
    seq, prev = (head.chain_seq, head.hash) if head else (0, GENESIS)
    cols = [actions_t.c[name] for name in _FIELDS[ACTIONS] if name != "chain_seq"]
    rows = conn.execute(
        sa.select(*cols).where(actions_t.c.chain_seq.is_(None)).order_by(actions_t.c.id)
    ).mappings()
    updates = []
    for row in rows:
        seq += 1
        values = {**row, "chain_seq": seq}
        digest = entry_hash(ACTIONS, values, prev)
        updates.append({"_id": row["id"], "_seq": seq, "_prev": prev, "_hash": digest})
        prev = digest
    _apply_chain_updates(conn, actions_t, updates)
    return len(updates)


def _apply_chain_updates(conn: Connection, table: sa.Table, updates: list[dict[str, Any]]) -> None:
    if not updates:
        return
    if conn.dialect.name == "postgresql":  # one UPDATE … FROM unnest(arrays): far faster than executemany
        conn.execute(
            sa.text(
                f"UPDATE {table.name} AS t SET chain_seq = v.seq, prev_hash = v.prev, hash = v.digest "
                "FROM unnest(CAST(:ids AS integer[]), CAST(:seqs AS bigint[]), CAST(:prevs AS varchar[]), "
                "CAST(:digests AS varchar[])) AS v(id, seq, prev, digest) WHERE t.id = v.id"
            ),
            {
                "ids": [u["_id"] for u in updates],
                "seqs": [u["_seq"] for u in updates],
                "prevs": [u["_prev"] for u in updates],
                "digests": [u["_hash"] for u in updates],
            },
        )
    else:
        conn.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("_id"))
            .values(
                chain_seq=sa.bindparam("_seq"), prev_hash=sa.bindparam("_prev"), hash=sa.bindparam("_hash")
            ),
            updates,
        )


# --- message events: sealed in id order -------------------------------------------------------------


def seal_batch(conn: Connection, batch: int = 5000) -> int:
    """Chain up to ``batch`` unsealed events after the current head, in id order; returns how many.

    An unsealed event with an id below the head's was inserted outside ``record_events``: it is left
    unsealed, and ``verify`` names it.
    """
    _pg_lock(conn, LOCK_EVENTS)
    head = _head(conn, EVENTS)
    seq, prev, after_id = (head.chain_seq, head.hash, head.id) if head else (0, GENESIS, 0)
    cols = [events_t.c[name] for name in _FIELDS[EVENTS] if name != "chain_seq"]
    rows = conn.execute(
        sa.select(*cols)
        .where(events_t.c.chain_seq.is_(None), events_t.c.id > after_id)
        .order_by(events_t.c.id)
        .limit(batch)
    ).mappings()
    updates = []
    for row in rows:
        seq += 1
        digest = entry_hash(EVENTS, {**row, "chain_seq": seq}, prev)
        updates.append({"_id": row["id"], "_seq": seq, "_prev": prev, "_hash": digest})
        prev = digest
    _apply_chain_updates(conn, events_t, updates)
    return len(updates)


def seal_events(engine: Engine, *, batch: int = 5000) -> int:
    """Seal every unsealed event, one short transaction per batch (writers wait at most one batch)."""
    from broadcaster import db

    total = 0
    while True:
        with db.writing(engine) as conn:
            n = seal_batch(conn, batch)
        total += n
        if n < batch:
            return total


# --- verification -------------------------------------------------------------------------------------


@dataclass
class Problem:
    table: str
    kind: str  # changed | removed | inserted
    id: int | None
    seq: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChainStatus:
    table: str
    entries: int = 0
    first_seq: int | None = None
    head: dict[str, Any] | None = None
    unsealed: int = 0
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problem"] = self.problem.as_dict() if self.problem else None
        return out


@dataclass
class VerifyReport:
    chains: dict[str, ChainStatus] = field(default_factory=dict)
    sealed_now: int = 0
    anchor_problems: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        found = [c.problem for c in self.chains.values() if c.problem is not None]
        return found + self.anchor_problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sealed_now": self.sealed_now,
            "chains": {name: c.as_dict() for name, c in self.chains.items()},
            "problems": [p.as_dict() for p in self.problems],
        }


def chain_start(conn: Connection) -> dict[str, tuple[int, str]]:
    """Where each chain begins: position 1 after GENESIS, or where the latest prune left it."""
    start = {name: (1, GENESIS) for name in CHAINS}
    details = conn.execute(
        sa.select(actions_t.c.details)
        .where(actions_t.c.action == PRUNED_ACTION, actions_t.c.chain_seq.is_not(None))
        .order_by(actions_t.c.chain_seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    for name, info in ((details or {}).get("chains") or {}).items():
        if name in start and info.get("first_seq"):
            start[name] = (int(info["first_seq"]), str(info["prev_hash"]))
    return start


def _stream(conn: Connection, table: str) -> Iterator[Mapping[str, Any]]:
    t = _TABLES[table]
    result = conn.execution_options(stream_results=True, yield_per=5000).execute(
        sa.select(*_columns(table)).where(t.c.chain_seq.is_not(None)).order_by(t.c.chain_seq)
    )
    yield from result.mappings()


def walk(table: str, rows: Iterable[Mapping[str, Any]], start_seq: int, start_prev: str) -> ChainStatus:
    """Check a chain in position order and stop at the first entry that does not fit."""
    status = ChainStatus(table)
    it = iter(rows)
    cur = next(it, None)
    expected_seq, expected_prev = start_seq, start_prev
    prev: Mapping[str, Any] | None = None
    while cur is not None:
        nxt = next(it, None)
        problem = _check(table, cur, nxt, prev, expected_seq, expected_prev)
        if problem is not None:
            status.problem = problem
            break
        if status.first_seq is None:
            status.first_seq = cur["chain_seq"]
        status.entries += 1
        expected_seq, expected_prev, prev = cur["chain_seq"] + 1, cur["hash"], cur
        cur = nxt
    if prev is not None:
        status.head = {"seq": prev["chain_seq"], "id": prev["id"], "hash": prev["hash"], "at": prev["at"]}
    return status


def _where(row: Mapping[str, Any] | None) -> str:
    return f"id {row['id']}" if row is not None else "the start of the chain"


def _check(
    table: str,
    cur: Mapping[str, Any],
    nxt: Mapping[str, Any] | None,
    prev: Mapping[str, Any] | None,
    expected_seq: int,
    expected_prev: str,
) -> Problem | None:
    seq, id_ = cur["chain_seq"], cur["id"]
    if seq < expected_seq:
        return Problem(table, "inserted", id_, seq, f"{table} id {id_} repeats chain position {seq}")
    if nxt is not None and nxt["prev_hash"] == expected_prev:
        return Problem(
            table,
            "inserted",
            id_,
            seq,
            f"{table} id {id_} was inserted: the next entry (id {nxt['id']}) links past it to {_where(prev)}",
        )
    if seq > expected_seq:
        missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
        return Problem(
            table,
            "removed",
            None,
            expected_seq,
            f"{table} chain position {missing} removed (between {_where(prev)} and id {id_})",
        )
    if prev is not None and id_ <= prev["id"]:
        return Problem(
            table, "inserted", id_, seq, f"{table} id {id_} is out of order after id {prev['id']}: inserted"
        )
    if entry_hash(table, cur, cur["prev_hash"] or "") != cur["hash"]:
        return Problem(
            table,
            "changed",
            id_,
            seq,
            f"{table} id {id_} was changed: its content no longer matches its hash",
        )
    if cur["prev_hash"] != expected_prev:
        if prev is None:
            return Problem(
                table, "changed", id_, seq, f"{table} id {id_}: link to the start of the chain was changed"
            )
        return Problem(
            table,
            "changed",
            prev["id"],
            prev["chain_seq"],
            f"{table} id {prev['id']} was changed and re-hashed: id {id_} still links to its old hash",
        )
    return None


def _unchained(conn: Connection, table: str, head_id: int | None) -> tuple[int, Problem | None]:
    """Count entries outside the chain; name the first one that cannot be a legitimate pending entry."""
    t = _TABLES[table]
    pending = conn.execute(
        sa.select(sa.func.count()).select_from(t).where(t.c.chain_seq.is_(None))
    ).scalar_one()
    if not pending:
        return 0, None
    cond = [t.c.chain_seq.is_(None)]
    if table == EVENTS:  # events wait for the sealer, but never below the sealed head
        if head_id is None:
            return pending, None
        cond.append(t.c.id < head_id)
    first = conn.execute(sa.select(sa.func.min(t.c.id)).where(*cond)).scalar_one_or_none()
    if first is None:
        return pending, None
    why = "is not in the chain" if table == ACTIONS else "is older than the sealed head but was never sealed"
    return pending, Problem(table, "inserted", first, None, f"{table} id {first} {why}: inserted")


def verify_chains(conn: Connection) -> VerifyReport:
    """Walk both chains (read-only). Unsealed events are reported as ``unsealed``, not checked."""
    report = VerifyReport()
    starts = chain_start(conn)
    for table in CHAINS:
        start_seq, start_prev = starts[table]
        status = walk(table, _stream(conn, table), start_seq, start_prev)
        head_id = status.head["id"] if status.head else None
        status.unsealed, outside = _unchained(conn, table, head_id)
        if status.problem is None and outside is not None:
            status.problem = outside
        report.chains[table] = status
    return report


def verify(engine: Engine, *, seal: bool = True, anchor: Mapping[str, Any] | None = None) -> VerifyReport:
    """Seal pending events (unless ``seal=False``), then walk both chains; with ``anchor`` (an
    earlier report's ``chains``), also check that each anchored head is still there, unchanged."""
    from broadcaster import db

    sealed = seal_events(engine) if seal else 0
    with db.reading(engine) as conn:
        report = verify_chains(conn)
        if anchor:
            report.anchor_problems = check_anchor(conn, anchor)
    report.sealed_now = sealed
    return report


def check_anchor(conn: Connection, anchor: Mapping[str, Any]) -> list[Problem]:
    """An anchor is ``{table: {"head": {"seq", "id", "hash"}}}`` from an earlier ``verify --json``
    kept outside the database: it catches a truncated tail or a chain rewritten from some point."""
    problems = []
    starts = chain_start(conn)
    for table in CHAINS:
        head = ((anchor.get(table) or {}).get("head")) or None
        if not head:
            continue
        t = _TABLES[table]
        seq = int(head["seq"])
        if seq < starts[table][0]:
            continue  # pruned (and archived) since the anchor was taken
        row = conn.execute(sa.select(t.c.id, t.c.hash).where(t.c.chain_seq == seq)).first()
        if row is None:
            problems.append(
                Problem(
                    table,
                    "removed",
                    head.get("id"),
                    seq,
                    f"{table} anchored entry id {head.get('id')} "
                    f"(position {seq}) is gone: the chain was truncated",
                )
            )
        elif row.hash != head["hash"] or (head.get("id") is not None and row.id != head["id"]):
            problems.append(
                Problem(
                    table,
                    "changed",
                    row.id,
                    seq,
                    f"{table} id {row.id} (position {seq}) differs from "
                    "the anchored hash: the chain was rewritten",
                )
            )
    return problems
