"""Run materialisation: one message per recipient of a big list, in a fresh SQLite database.

Imports N generated recipients (the import benchmark's realistic file), creates a run of the August
31 public-service SMS for them and times ``materialise`` (render, measure, write the outbox rows and
their events, page by page). Baseline, measured in the same run: rendering and measuring the same
recipients' bodies in a plain loop, with no database at all. Pages must cost the same at the end of
the list as at its start, so the first and last tenth are timed too.

    .venv/bin/python bench/materialise_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench.import_bench import generate  # noqa: E402
from broadcaster import db  # noqa: E402
from broadcaster.clock import SystemClock  # noqa: E402
from broadcaster.importer import import_recipients  # noqa: E402
from broadcaster.models import Message, Recipient  # noqa: E402
from broadcaster.runs import create_run, materialise  # noqa: E402
from broadcaster.segments import measure  # noqa: E402
from broadcaster.templating import TemplateStore, build_context  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "public-service-0831"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder / "list.csv", args.rows, "gbk")
        engine = db.open_database(f"sqlite:///{folder / 'bench.db'}")
        clock = SystemClock()
        report = import_recipients(
            engine, folder / "list.csv", list_name="national", clock=clock, actor="bench"
        )
        store = TemplateStore(REPO / "templates")
        run = create_run(
            engine,
            template=TEMPLATE,
            list_names=["national"],
            variables={},
            clock=clock,
            actor="bench",
            timezone="Asia/Shanghai",
            store=store,
        )
        print(
            f"{report.imported:,} recipients in list 'national'; template {TEMPLATE};"
            f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        start = time.perf_counter()
        intended = materialise(engine, run.id, store=store, clock=clock)
        seconds = time.perf_counter() - start
        m = Message.__table__
        with db.reading(engine) as conn:
            created = (
                conn.execute(sa.select(m.c.created_at).where(m.c.run_id == run.id).order_by(m.c.id))
                .scalars()
                .all()
            )
            recipients = conn.execute(
                sa.select(
                    Recipient.__table__.c.phone, Recipient.__table__.c.name, Recipient.__table__.c.attributes
                )
            ).all()
        tenth = max(1, len(created) // 10)
        first = (created[tenth - 1] - created[0]).total_seconds()
        last = (created[-1] - created[-tenth]).total_seconds()
        print(
            f"materialise: {intended:,} messages in {seconds:.1f} s = {intended / seconds:,.0f} msg/s;"
            f" first tenth {first:.1f} s, last tenth {last:.1f} s (last/first {last / first:.2f}:"
            " near 1 when a page costs the same at the end of the list as at its start)"
        )

        template = store.load(TEMPLATE)
        send_time = datetime.now(UTC)
        start = time.perf_counter()
        for phone, name, attributes in recipients:
            body = store.render(
                template,
                build_context(
                    recipient={"phone": phone, "name": name, "attributes": attributes},
                    variables={},
                    send_time=send_time,
                ),
            )
            measure(body)
        base = time.perf_counter() - start
        print(
            f"baseline: render + measure only, no database: {len(recipients):,} in {base:.1f} s"
            f" = {len(recipients) / base:,.0f} msg/s; ratio materialise/baseline {seconds / base:.2f}"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
