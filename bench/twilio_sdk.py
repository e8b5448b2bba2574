"""Throughput of the Twilio adapter (the real SDK) against the fake Twilio server in its own process.

Cases: raw ``requests`` POSTs (the baseline: same pool, no SDK), the adapter with one client shared
by all threads, one client per thread, one thread, several sending processes at once, and 200 ms of
fake latency (how many requests stay in flight). Besides wall-clock msg/s (noisy on a shared
2-core machine) it prints CPU time per message of the client and of the fake, which is what decides
the capacity: the fake's msg/s per core = 1000 / its CPU ms per message.

Usage: python bench/twilio_sdk.py [--n 3000] [--threads 50] [--procs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.adapters import HTTPAdapter

from broadcaster.providers.base import Outbound
from broadcaster.providers.twilio import TwilioProvider
from broadcaster.twilio_fake import FakeTwilioHandle, spawn_fake_twilio

BODY = "【质量月】建设质量强国，共创美好生活。回TD退订"


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(label: str, n: int, threads: int, seconds: float, client_cpu: float, fake_cpu: float) -> float:
    rate = n / seconds
    print(
        f"{label:<42} {n:>6} msgs {threads:>3} thr {rate:7.0f} msg/s   cpu/msg: "
        f"client {client_cpu / n * 1000:5.2f} ms, fake {fake_cpu / n * 1000:5.2f} ms"
    )
    return rate


def run(label: str, n: int, threads: int, send: Callable[[int], None], fake: FakeTwilioHandle) -> float:
    c0, f0, t0 = cpu_seconds(), cpu_seconds(fake.pid), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(n)))
    return report(label, n, threads, time.perf_counter() - t0, cpu_seconds() - c0, cpu_seconds(fake.pid) - f0)


def provider(fake: FakeTwilioHandle) -> TwilioProvider:
    return TwilioProvider(
        fake.account_sid, fake.auth_token, from_number=fake.from_number, base_url=fake.base_url, pool_size=64
    )


def _child(fake: FakeTwilioHandle, offset: int, n: int, threads: int, out: multiprocessing.Queue) -> None:
    p = provider(fake)
    c0 = cpu_seconds()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: p.send(Outbound(i, f"+86136{offset + i:08d}", BODY)), range(n)))
    out.put(cpu_seconds() - c0)


def run_processes(fake: FakeTwilioHandle, procs: int, n: int, threads: int) -> float:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    per = n // procs
    children = [ctx.Process(target=_child, args=(fake, k * per, per, threads, out)) for k in range(procs)]
    f0, t0 = cpu_seconds(fake.pid), time.perf_counter()
    for child in children:
        child.start()
    client_cpu = sum(out.get() for _ in children)
    for child in children:
        child.join()
    label = f"adapter, {procs} sending processes"
    return report(
        label, per * procs, threads, time.perf_counter() - t0, client_cpu, cpu_seconds(fake.pid) - f0
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    n, threads = args.n, args.threads

    with spawn_fake_twilio(extra_args=["--no-progress"]) as fake:
        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_maxsize=64, max_retries=0))
        url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"

        def raw(i: int) -> None:
            form = {"To": f"+86138{i:08d}", "From": fake.from_number, "Body": BODY}
            r = session.post(url, data=form, auth=(fake.account_sid, fake.auth_token), timeout=(5, 20))
            assert r.status_code == 201, r.text

        shared = provider(fake)
        local = threading.local()

        def via_shared(i: int) -> None:
            shared.send(Outbound(i, f"+86139{i:08d}", BODY))

        def via_own(i: int) -> None:
            if not hasattr(local, "p"):
                local.p = provider(fake)
            local.p.send(Outbound(i, f"+86137{i:08d}", BODY))

        run("warm-up", 300, threads, via_shared, fake)
        base = run("baseline: raw requests POST", n, threads, raw, fake)
        shared_rate = run("adapter, one SDK client shared by threads", n, threads, via_shared, fake)
        own_rate = run("adapter, one SDK client per thread", n, threads, via_own, fake)
        run("adapter, 1 thread", min(n, 1000), 1, via_shared, fake)
        multi = run_processes(fake, args.procs, n, threads)
        print(
            f"ratio to raw requests: shared {shared_rate / base:.2f}, per-thread {own_rate / base:.2f}, "
            f"{args.procs} processes {multi / base:.2f}"
        )
        total = sum(fake.counts().values())
        assert total >= 4 * n - args.procs, total

    with spawn_fake_twilio(latency_ms=200, extra_args=["--no-progress"]) as fake:
        shared = provider(fake)
        rate = run("adapter, shared client, 200 ms latency", 1000, threads, via_shared, fake)
        print(f"requests in flight ≈ {rate * 0.2:.0f} of {threads} threads (ideal {threads / 0.2:.0f} msg/s)")
    print(f"machine load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
