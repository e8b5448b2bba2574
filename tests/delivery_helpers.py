"""Shared pieces for the end-to-end delivery tests with the real parts: ``broadcaster`` child
processes (workers, webhooks) pointed at a fake Twilio server, and what the database and the fake
say afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broadcaster import db
from broadcaster.models import MessageEvent
from broadcaster.twilio_fake import FakeTwilioHandle
from tests.conftest import subprocess_env
from tests.dispatch_helpers import messages

events_t = MessageEvent.__table__


def worker_env(url: str, tmp_path: Path, fake: FakeTwilioHandle, **extra: str) -> dict[str, str]:
    """Environment for ``broadcaster`` children sending through ``fake`` with the Twilio adapter."""
    settings = {
        "BROADCASTER_DATABASE_URL": url,
        "BROADCASTER_VAR_DIR": str(tmp_path / "var"),
        "BROADCASTER_TEMPLATES_DIR": str(tmp_path / "templates"),
        "BROADCASTER_RATE_LIMIT": "0",
        # Longer than the fake's latency: a request of a worker just killed lands before it is looked up.
        "BROADCASTER_RECONCILE_DELAY_SECONDS": "0.5",
        "BROADCASTER_BACKOFF_BASE_SECONDS": "0.05",
        "BROADCASTER_BACKOFF_MAX_SECONDS": "0.2",
        "BROADCASTER_TWILIO_READ_TIMEOUT": "0.5",
        "BROADCASTER_ACTOR": "tester",
        **fake.env(),
    }
    return subprocess_env(**{**settings, **extra})


def broadcaster(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "broadcaster", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@contextmanager
def children() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start(env, *args)`` runs ``broadcaster ARGS``; whatever still runs at the end is killed,
    so a failing test leaves no worker behind."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        proc = broadcaster(env, *args)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def wait_until(
    what: str, done: Callable[[], bool], procs: Sequence[subprocess.Popen[bytes]] = (), timeout: float = 20.0
) -> None:
    """Poll ``done`` until true; fail early if one of ``procs`` died."""
    deadline = time.monotonic() + timeout
    while not done():
        for proc in procs:
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(f"process ended early ({proc.returncode}): {err.decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def created(fake: FakeTwilioHandle) -> int:
    """How many messages the fake has accepted so far."""
    return fake.stats().get("created", 0)


def finish(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def start_webhooks(
    env: dict[str, str], start: Callable[..., subprocess.Popen[bytes]] = broadcaster
) -> tuple[subprocess.Popen[bytes], str]:
    """``broadcaster webhooks serve --port 0``; returns the process and its base URL."""
    proc = start(env, "webhooks", "serve", "--port", "0")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate()
        raise AssertionError(f"webhooks serve did not start: {err.decode()[-3000:]}")
    return proc, json.loads(line)["base_url"]


def assert_each_received_once(
    engine: sa.Engine, run_id: int, fake: FakeTwilioHandle, phones: set[str]
) -> list[dict[str, Any]]:
    """From the fake's record: every phone got exactly one message, and the database agrees."""
    received = fake.messages()
    per_phone = Counter(m["to"] for m in received)
    twice = {p: c for p, c in per_phone.items() if c > 1}
    assert not twice, f"received more than once: {twice}"
    assert set(per_phone) == phones, f"never received: {sorted(phones - set(per_phone))[:10]}"
    rows = messages(engine, run_id)
    sid_by_phone = {m["to"]: m["sid"] for m in received}
    assert Counter(m["status"] for m in rows if m["phone"] in phones)["sent"] == len(phones)
    wrong = [m["id"] for m in rows if m["phone"] in phones and m["provider_id"] != sid_by_phone[m["phone"]]]
    assert not wrong, f"provider ids disagree with the fake's sids for messages {wrong[:10]}"
    return rows


def event_counts(engine: sa.Engine, run_id: int) -> Counter[tuple[str, str | None, str]]:
    """Events of a run counted by (source, from_status, to_status)."""
    with db.reading(engine) as conn:
        rows = conn.execute(
            sa.select(events_t.c.source, events_t.c.from_status, events_t.c.to_status, sa.func.count())
            .where(events_t.c.run_id == run_id)
            .group_by(events_t.c.source, events_t.c.from_status, events_t.c.to_status)
        ).all()
    return Counter({(s, f, t): n for s, f, t, n in rows})


def reasons(engine: sa.Engine, run_id: int, source: str, to_status: str) -> Counter[str]:
    """The ``reason`` details of a run's events of one source and target state."""
    with db.reading(engine) as conn:
        details = conn.execute(
            sa.select(events_t.c.detail).where(
                events_t.c.run_id == run_id, events_t.c.source == source, events_t.c.to_status == to_status
            )
        ).scalars()
        return Counter(str((d or {}).get("reason")) for d in details)
