"""Several worker processes, one rate limit: what the provider sees.

N ``broadcaster worker --run ID --once`` processes share one run on PostgreSQL (a throw-away
database on 127.0.0.1:5432) and send through the fake Twilio server (its own process, with request
latency). Measured at the fake, from its record of arrival times: the achieved rate (first to last
arrival) and the largest count in any one-second window. The same workers with
``BROADCASTER_RATE_SHARING=false`` (each pacing at the whole limit, as before sharing existed) are
the baseline, in the same run.

Target: the busiest second at most the limit + 1%, and at least 90% of the limit achieved.

    .venv/bin/python bench/shared_rate.py [--workers 3] [--rate 100] [--messages 5000] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.dispatch_bench import BODY, busiest_second, prefix_phone  # noqa: E402
from broadcaster.clock import SystemClock  # noqa: E402
from broadcaster.db import open_database  # noqa: E402
from broadcaster.twilio_fake import FakeTwilioHandle, spawn_fake_twilio  # noqa: E402
from tests.conftest import subprocess_env, throwaway_pg_database  # noqa: E402
from tests.dispatch_helpers import make_run, seed_list, template_store  # noqa: E402


def run_workers(
    url: str,
    folder: Path,
    fake: FakeTwilioHandle,
    prefix: str,
    first_id: int,
    args: argparse.Namespace,
    sharing: bool,
) -> tuple[float, float, int]:
    """(seconds, achieved msg/s at the provider, busiest second) for one run sent by N workers."""
    engine = open_database(url)
    name = f"bench-{prefix}"
    seed_list(
        engine, name, range(first_id, first_id + args.messages), datetime.now(UTC), prefix_phone(prefix)
    )
    run_id = make_run(engine, template_store(folder / "templates", text=BODY), SystemClock(), [name])
    engine.dispose()
    env = subprocess_env(
        BROADCASTER_DATABASE_URL=url,
        BROADCASTER_VAR_DIR=str(folder / "var"),
        BROADCASTER_TEMPLATES_DIR=str(folder / "templates"),
        BROADCASTER_RATE_LIMIT=str(args.rate),
        BROADCASTER_RATE_UNIT="messages",
        BROADCASTER_RATE_SHARING="true" if sharing else "false",
        BROADCASTER_BATCH_SIZE="50",
        BROADCASTER_ACTOR="bench",
        **fake.env(),
    )
    start = time.perf_counter()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "worker", "--run", str(run_id), "--once"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(args.workers)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            sys.exit(f"worker failed: {err.decode()[-2000:]}")
    seconds = time.perf_counter() - start
    arrived = [m["received_ts"] for m in fake.messages() if m["to"].startswith(f"+86{prefix}")]
    assert len(arrived) == args.messages, (len(arrived), args.messages)
    achieved = (len(arrived) - 1) / (max(arrived) - min(arrived))
    return seconds, achieved, busiest_second(arrived)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()

    import tempfile

    with (
        tempfile.TemporaryDirectory() as tmp,
        throwaway_pg_database("bench_shared") as url,
        spawn_fake_twilio(latency_ms=args.latency_ms, extra_args=["--no-progress"]) as fake,
    ):
        print(
            f"{args.workers} worker processes, PostgreSQL, fake Twilio with {args.latency_ms:g} ms latency,"
            f" limit {args.rate:g} msg/s, {args.messages} messages per case;"
            f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        results = {}
        for sharing, prefix, first in ((True, "134", 1), (False, "135", args.messages + 1)):
            seconds, achieved, busiest = run_workers(url, Path(tmp), fake, prefix, first, args, sharing)
            results[sharing] = (achieved, busiest)
            label = "shared limit (now)" if sharing else "baseline: each worker at the whole limit"
            print(
                f"{label}: {seconds:.1f} s end to end; achieved {achieved:.1f} msg/s at the provider"
                f" ({achieved / args.rate:.1%} of the limit); busiest second {busiest}"
                f" ({busiest / args.rate:.1%} of the limit)"
            )
        shared, alone = results[True], results[False]
        met = shared[1] <= args.rate * 1.01 and shared[0] >= 0.9 * args.rate
        print(
            f"ratio busiest second shared/baseline: {shared[1] / alone[1]:.2f};"
            f" targets (busiest <= limit + 1%, achieved >= 90%): {'met' if met else 'NOT met'}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
