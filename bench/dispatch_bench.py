"""The delivery engine against the fake Twilio server on loopback (its own process), in one run:

(a) no latency: messages per second through the real twilio SDK in one worker process (this one:
    outbox in SQLite, claims, leases, events, outcomes, the SDK; no rate limit);
(b) 200 ms latency per request, rate limit 200 msg/s, 5,000 messages: achieved rate and the largest
    count the fake received in any one-second window (from its record of arrival times);
(c) the same messages through a plain loop of ``client.messages.create`` (no database, one request
    at a time) as the baseline, measured here too: without latency (against (a)) and with 200 ms
    latency (against (b)).

Targets: (a) ≥ 1,000 msg/s; (b) ≥ 97% of the limit and never above it by more than 1%.

    .venv/bin/python bench/dispatch_bench.py [--messages 5000] [--rate 200] [--latency-ms 200]
        [--baseline-messages N] [--send-mode auto|threads] [--database-url URL]

A plain loop at 200 ms per request takes ~1,000 s for 5,000 messages; ``--baseline-messages N``
times only the first N of them (the per-request time is flat, so the rate is the same).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.twilio_sdk import cpu_seconds  # noqa: E402
from broadcaster.clock import SystemClock  # noqa: E402
from broadcaster.db import open_database  # noqa: E402
from broadcaster.dispatch import dispatcher_from_settings  # noqa: E402
from broadcaster.providers.twilio import TwilioProvider  # noqa: E402
from broadcaster.settings import Settings  # noqa: E402
from broadcaster.twilio_fake import FakeTwilioHandle, spawn_fake_twilio  # noqa: E402
from tests.dispatch_helpers import make_run, seed_list, template_store  # noqa: E402

BODY = "【质量月】建设质量强国，共创美好生活。9月是全国质量月。回TD退订"


def prefix_phone(prefix: str):  # type: ignore[no-untyped-def]
    return lambda i: f"+86{prefix}{i:08d}"


class Case:
    """A run of ``n`` messages to phones ``+86<prefix>########`` in a fresh list."""

    def __init__(self, engine, folder: Path, name: str, prefix: str, n: int, first_id: int) -> None:  # type: ignore[no-untyped-def]
        self.prefix = f"+86{prefix}"
        ids = range(first_id, first_id + n)  # recipients of their own, not those of another case
        seed_list(engine, name, ids, datetime.now(UTC), prefix_phone(prefix))
        self.run_id = make_run(engine, template_store(folder / "templates"), SystemClock(), [name])
        self.n = n

    def received(self, fake: FakeTwilioHandle) -> list[dict]:
        return [m for m in fake.messages() if m["to"].startswith(self.prefix)]


def provider_for(fake: FakeTwilioHandle) -> TwilioProvider:
    return TwilioProvider(
        fake.account_sid, fake.auth_token, from_number=fake.from_number, base_url=fake.base_url, pool_size=100
    )


def dispatch(
    engine, fake: FakeTwilioHandle, case: Case, **settings: object
) -> tuple[float, dict, float, float]:  # type: ignore[no-untyped-def]
    """Send the case's run like ``broadcaster worker --once``; returns (seconds, stats, cpu, fake cpu)."""
    options = Settings(**settings)  # type: ignore[arg-type]
    clock = SystemClock()
    dispatcher = dispatcher_from_settings(engine, provider_for(fake), clock, options)
    gc.freeze()  # as `broadcaster worker` does once set up
    c0, f0, t0 = cpu_seconds(), cpu_seconds(fake.pid), time.perf_counter()
    stats = dispatcher.run_until_idle(case.run_id, threading.Event())
    seconds = time.perf_counter() - t0
    assert stats.sent == case.n, stats.as_dict()
    return seconds, stats.as_dict(), cpu_seconds() - c0, cpu_seconds(fake.pid) - f0


def plain_loop(fake: FakeTwilioHandle, prefix: str, n: int) -> float:
    """The baseline: ``client.messages.create`` in a loop, one message after the other."""
    client = provider_for(fake).client
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        client.messages.create(to=f"+86{prefix}{i:08d}", from_=fake.from_number, body=BODY)
    return n / (time.perf_counter() - t0)


def busiest_second(times: list[float]) -> tuple[int, float]:
    """The most timestamps in any window [t, t + 1 s), and where it starts (relative to the first)."""
    times = sorted(times)
    best, at, j = 0, 0.0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        if j - i > best:
            best, at = j - i, start - times[0]
    return best, at


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--baseline-messages", type=int, default=None, help="default: --messages")
    parser.add_argument("--send-mode", default="auto", choices=["auto", "threads"])
    parser.add_argument("--concurrency", type=int, default=None, help="(a) only; default: the worker's")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    n = args.messages
    base_n = min(args.baseline_messages or n, n)

    with tempfile.TemporaryDirectory() as tmp, spawn_fake_twilio(extra_args=["--no-progress"]) as fake:
        folder = Path(tmp)
        engine = open_database(args.database_url or f"sqlite:///{folder / 'bench.db'}")
        template_store(folder / "templates", text=BODY)
        where = engine.url.render_as_string()
        print(
            f"fake Twilio in process {fake.pid}; database {where}; send mode {args.send_mode};"
            f" machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )

        # (a) no latency, no rate limit, one worker process (this one)
        case_a = Case(engine, folder, "bench-a", "130", n, first_id=1)
        common = {"send_mode": args.send_mode, "rate_unit": "messages"}
        common_a = {**common, "concurrency": args.concurrency} if args.concurrency else common
        seconds, stats, cpu, fake_cpu = dispatch(engine, fake, case_a, rate_limit=0, **common_a)
        rate_a = n / seconds
        assert len(case_a.received(fake)) == n
        print(
            f"(a) no latency, one worker process: {n} msgs in {seconds:.2f} s = {rate_a:.0f} msg/s"
            f"   [target >= 1000: {'met' if rate_a >= 1000 else 'NOT met'}]"
        )
        print(
            f"    cpu per message: worker {cpu / n * 1000:.2f} ms (one core's worth: {n / cpu:.0f} msg/s),"
            f" fake {fake_cpu / n * 1000:.2f} ms"
        )
        # (c, no latency) the plain loop on the same server
        base_a = plain_loop(fake, "131", n)
        print(
            f"(c) plain loop of messages.create, no latency: {base_a:.0f} msg/s"
            f"   ratio (a)/(c) {rate_a / base_a:.2f}"
        )

        # (b) 200 ms latency, rate limit
        fake.configure(latency_ms=args.latency_ms)
        case_b = Case(engine, folder, "bench-b", "132", n, first_id=n + 1)
        seconds, stats, cpu, fake_cpu = dispatch(engine, fake, case_b, rate_limit=args.rate, **common)
        arrived = [m["received_ts"] for m in case_b.received(fake)]
        answered = [m["created_ts"] for m in case_b.received(fake)]
        assert len(arrived) == n, (len(arrived), n)
        achieved = (n - 1) / (max(arrived) - min(arrived))  # at the provider: first to last arrival
        end_to_end = n / seconds  # with start-up and the last answer's latency
        busiest, at = busiest_second(arrived)
        busiest_answered, _ = busiest_second(answered)
        met = achieved >= 0.97 * args.rate and busiest <= args.rate * 1.01
        print(
            f"(b) {args.latency_ms:g} ms latency, limit {args.rate:g} msg/s, {n} msgs:"
            f" achieved {achieved:.1f} msg/s at the provider ({achieved / args.rate:.1%} of the limit);"
            f" end to end {seconds:.2f} s = {end_to_end:.1f} msg/s ({end_to_end / args.rate:.1%})"
        )
        print(
            f"    largest count in any one second: {busiest} by arrival (window at +{at:.2f} s),"
            f" {busiest_answered} by answer; the limit + 1% is {args.rate * 1.01:g}"
            f"   [targets >= 97%, <= +1%: {'met' if met else 'NOT met'}]"
        )
        print(f"    cpu per message: worker {cpu / n * 1000:.2f} ms, fake {fake_cpu / n * 1000:.2f} ms")
        # (c) the plain loop with the same latency
        base_b = plain_loop(fake, "133", base_n)
        note = "" if base_n == n else f" (timed on the first {base_n} of the {n})"
        print(
            f"(c) plain loop of messages.create, {args.latency_ms:g} ms latency: {base_b:.2f} msg/s{note}"
            f"   ratio (b)/(c) {end_to_end / base_b:.1f} end to end"
        )
        engine.dispose()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
