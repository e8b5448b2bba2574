"""What the hash chains cost: appending message events (the hot path) and actions, sealing, verifying.

    .venv/bin/python bench/audit_chain.py [--url URL] [--events 10000]

Default: a fresh SQLite file. With ``--url postgresql://postgres@127.0.0.1:5432/DB`` it uses that
(throw-away!) database. Prints figures and ratios against the baseline measured in the same run:
the plain insert that ``record_events`` does, without any chaining.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from broadcaster import db
from broadcaster.audit.chain import seal_batch, seal_events, verify
from broadcaster.events import record_events
from broadcaster.models import Action, Message, MessageEvent, Recipient, Run
from broadcaster.trail import record_action

AT = datetime(2011, 8, 31, 1, 0, tzinfo=UTC)


def events(n: int) -> list[dict]:
    return [
        {
            "message_id": 1,
            "run_id": 1,
            "at": AT,
            "from_status": "queued",
            "to_status": "sending",
            "source": "bench:1",
            "detail": {"attempt": 1, "i": i},
        }
        for i in range(n)
    ]


def seed(engine: sa.Engine) -> None:
    with db.writing(engine) as conn:
        conn.execute(
            sa.insert(Recipient.__table__),
            {"id": 1, "phone": "+8613800138000", "attributes": {}, "created_at": AT, "updated_at": AT},
        )
        conn.execute(
            sa.insert(Run.__table__),
            {
                "id": 1,
                "kind": "manual",
                "template": "t",
                "variables": {},
                "list_names": [],
                "timezone": "Asia/Shanghai",
                "status": "sending",
                "created_at": AT,
            },
        )
        conn.execute(
            sa.insert(Message.__table__),
            {
                "id": 1,
                "run_id": 1,
                "recipient_id": 1,
                "phone": "+8613800138000",
                "body": "b",
                "encoding": "UCS-2",
                "status": "queued",
                "segments": 1,
                "characters": 1,
                "attempts": 0,
                "created_at": AT,
                "updated_at": AT,
            },
        )


def plain_insert(engine: sa.Engine, rows: list[dict]) -> None:
    with db.writing(engine) as conn:
        conn.execute(sa.insert(MessageEvent.__table__), rows)


def timed(label: str, fn, baseline: float | None = None, per: int | None = None) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    extra = f"  {took / per * 1e6:8.1f} µs each" if per else ""
    ratio = f"  x{took / baseline:5.2f} of baseline" if baseline else ""
    print(f"{label:<58} {took * 1000:9.1f} ms{extra}{ratio}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=500, help="one-event transactions (dispatcher outcomes)")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = db.open_database(url)
    seed(engine)
    n, k = args.events, args.small
    print(f"database: {engine.dialect.name}; batch of {n} events; {k} one-event transactions")

    base = timed(
        f"baseline: plain insert of {n} events (1 tx)", lambda: plain_insert(engine, events(n)), per=n
    )
    timed(
        f"record_events of {n} events (1 tx, takes the shared lock)",
        lambda: _in_tx(engine, lambda c: record_events(c, events(n))),
        base,
        n,
    )
    timed(f"seal those {2 * n} events afterwards (batches of 5000)", lambda: seal_events(engine), base, 2 * n)

    def chained_inline() -> None:  # the alternative: chain inside the writer's transaction
        with db.writing(engine) as conn:
            record_events(conn, events(n))
            seal_batch(conn, n)

    timed(f"alternative: record + chain in the same tx ({n} events)", chained_inline, base, n)

    small_base = timed(
        f"baseline: {k} x plain insert of 1 event (1 tx each)",
        lambda: [plain_insert(engine, events(1)) for _ in range(k)],
        per=k,
    )
    timed(
        f"{k} x record_events of 1 event",
        lambda: [_in_tx(engine, lambda c: record_events(c, events(1))) for _ in range(k)],
        small_base,
        k,
    )

    def small_inline() -> None:
        for _ in range(k):
            with db.writing(engine) as conn:
                record_events(conn, events(1))
                seal_batch(conn, 10)

    timed(f"alternative: {k} x record + chain in the same tx", small_inline, small_base, k)
    seal_events(engine)

    def plain_actions() -> None:
        for i in range(k):
            with db.writing(engine) as conn:
                conn.execute(
                    sa.insert(Action.__table__), {"at": AT, "actor": "b", "action": "x", "details": {"i": i}}
                )

    a_base = timed(f"baseline: {k} x plain action insert (1 tx each)", plain_actions, per=k)
    with db.writing(engine) as conn:
        conn.execute(sa.delete(Action.__table__))

    def chained_actions() -> None:
        for i in range(k):
            with db.writing(engine) as conn:
                record_action(conn, at=AT, actor="b", action="x", details={"i": i})

    timed(f"{k} x record_action (chained at insert)", chained_actions, a_base, k)
    total = 3 * n + 2 * k
    report = None

    def run_verify() -> None:
        nonlocal report
        report = verify(engine, seal=False)

    timed(f"verify both chains ({total + k} entries)", run_verify, per=total + k)
    assert report is not None and report.ok, report.as_dict() if report else None
    engine.dispose()


def _in_tx(engine: sa.Engine, fn) -> None:  # type: ignore[no-untyped-def]
    with db.writing(engine) as conn:
        fn(conn)


if __name__ == "__main__":
    main()
