"""Dispatcher throughput on SQLite with the log provider: messages per second, in-process.

Baseline, measured in the same run: the log provider alone (append + fsync per message, one thread,
no database). The ratio says how much of the provider's own speed the whole delivery path keeps
(claims, leases, events, outcome writes). A second figure adds a simulated provider latency
(BROADCASTER_LOG_PROVIDER_DELAY_MS) to show the thread pool at work.

    .venv/bin/python bench/dispatch_throughput.py [--messages 5000] [--concurrency 8] [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadcaster.clock import SystemClock  # noqa: E402
from broadcaster.db import open_database  # noqa: E402
from broadcaster.dispatch import Dispatcher  # noqa: E402
from broadcaster.providers.base import Outbound  # noqa: E402
from broadcaster.providers.log import LogProvider  # noqa: E402
from tests.dispatch_helpers import make_run, seed_list, template_store  # noqa: E402


def provider_alone(folder: Path, n: int) -> float:
    provider = LogProvider(folder / "alone.jsonl")
    start = time.perf_counter()
    for i in range(n):
        provider.send(Outbound(i, f"+86138{i:08d}", "【质量月】质量月活动9月1日开始。回TD退订"))
    return n / (time.perf_counter() - start)


def dispatcher(folder: Path, n: int, concurrency: int, delay: float) -> tuple[float, dict[str, int]]:
    engine = open_database(f"sqlite:///{folder / 'bench.db'}")
    clock = SystemClock()
    seed_list(engine, f"list-{delay}", range(1, n + 1), datetime.now(UTC))
    run_id = make_run(engine, template_store(folder / "templates"), clock, [f"list-{delay}"])
    provider = LogProvider(folder / f"sent-{delay}.jsonl", clock, delay)
    start = time.perf_counter()
    stats = Dispatcher(engine, provider, clock, concurrency=concurrency).run_until_idle(run_id)
    rate = stats.sent / (time.perf_counter() - start)
    engine.dispose()
    return rate, stats.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        baseline = provider_alone(folder, args.messages)
        print(f"log provider alone (baseline):      {baseline:8.0f} msg/s")
        rate, stats = dispatcher(folder, args.messages, args.concurrency, 0.0)
        assert stats["sent"] == args.messages, stats
        print(f"dispatcher, SQLite, no delay:       {rate:8.0f} msg/s  ratio {rate / baseline:.2f}")
        rate, stats = dispatcher(folder, args.messages, args.concurrency, args.delay_ms / 1000)
        assert stats["sent"] == args.messages, stats
        ideal = args.concurrency / (args.delay_ms / 1000)
        print(
            f"dispatcher, SQLite, {args.delay_ms:g} ms/request, {args.concurrency} threads: {rate:8.0f} msg/s"
            f"  ({rate / ideal:.2f} of the {ideal:.0f} msg/s the threads allow)"
        )


if __name__ == "__main__":
    main()
