"""Throughput of the Twilio adapter (real SDK) against the fake server in its own process.

Prints msg/s for: raw ``requests`` POSTs (the baseline: same pool, no SDK), the adapter with one
shared client, the adapter with one client per thread, and the shared client with 200 ms of fake
latency (how many requests it keeps in flight). Usage: python bench/twilio_sdk.py [N] [THREADS]
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.adapters import HTTPAdapter

from broadcaster.providers.base import Outbound
from broadcaster.providers.twilio import TwilioProvider
from broadcaster.twilio_fake import spawn_fake_twilio


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU time of a process (this one by default): the load of 2-core shared machines
    makes wall-clock rates noisy, CPU per message is not."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(label: str, n: int, threads: int, send, server_pid: int | None = None) -> float:  # type: ignore[no-untyped-def]
    c0, s0 = cpu_seconds(), cpu_seconds(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(n)))
    rate = n / (time.perf_counter() - start)
    client_ms = (cpu_seconds() - c0) / n * 1000
    server_ms = ((cpu_seconds(server_pid) - s0) / n * 1000) if server_pid else float("nan")
    print(
        f"{label:<40} {n:>6} msgs {threads:>3} thr {rate:7.0f} msg/s  "
        f"cpu/msg client {client_ms:5.2f} ms  fake {server_ms:5.2f} ms"
    )
    return rate


def provider(fake) -> TwilioProvider:  # type: ignore[no-untyped-def]
    return TwilioProvider(
        fake.account_sid, fake.auth_token, from_number=fake.from_number, base_url=fake.base_url, pool_size=64
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    body = "【质量月】建设质量强国，共创美好生活。回TD退订"

    with spawn_fake_twilio(extra_args=["--no-progress"]) as fake:
        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_maxsize=64, max_retries=0))
        url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"

        def raw(i: int) -> None:
            r = session.post(
                url,
                data={"To": f"+86138{i:08d}", "From": fake.from_number, "Body": body},
                auth=(fake.account_sid, fake.auth_token),
                timeout=(5, 20),
            )
            assert r.status_code == 201, r.text

        shared = provider(fake)
        local = threading.local()

        def via_shared(i: int) -> None:
            shared.send(Outbound(i, f"+86139{i:08d}", body))

        def via_own(i: int) -> None:
            if not hasattr(local, "p"):
                local.p = provider(fake)
            local.p.send(Outbound(i, f"+86137{i:08d}", body))

        run("warm-up (shared client)", 300, threads, via_shared)
        base = run("baseline: raw requests POST", n, threads, raw, fake.pid)
        rate_shared = run("adapter, one shared SDK client", n, threads, via_shared, fake.pid)
        rate_own = run("adapter, one SDK client per thread", n, threads, via_own, fake.pid)
        run("adapter, shared client, 1 thread", min(n, 1000), 1, via_shared, fake.pid)
        print(f"ratio shared/raw: {rate_shared / base:.2f}   per-thread/raw: {rate_own / base:.2f}")
        assert sum(fake.counts().values()) >= 3 * n

    with spawn_fake_twilio(latency_ms=200, extra_args=["--no-progress"]) as fake:
        shared = provider(fake)
        m = 1000
        rate = run("adapter, shared client, 200 ms latency", m, threads, via_shared, fake.pid)
        print(f"in flight ≈ {rate * 0.2:.0f} of {threads} threads (ideal {threads / 0.2:.0f} msg/s)")


if __name__ == "__main__":
    main()
