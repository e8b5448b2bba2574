"""The webhooks app: signed status callbacks move messages forward only; replies opt numbers out
and in; health check. Through a real uvicorn server and through the ASGI app."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock
from broadcaster.models import Action, InboundMessage, OptOut
from broadcaster.optouts import add_optout
from broadcaster.providers.base import Outbound
from broadcaster.providers.twilio import TwilioProvider
from broadcaster.serving import serve_in_thread
from broadcaster.settings import Settings
from broadcaster.status_updates import apply_status_callback
from broadcaster.twilio_fake import run_fake_twilio
from broadcaster.webhooks import WebhookConfigError, create_app
from tests.conftest import subprocess_env
from tests.twilio_helpers import events, message, seed_messages, sign

TOKEN = "webhook-test-token"
PUBLIC = "https://hooks.example.org/bc"
T0 = datetime(2011, 8, 31, 1, 0, tzinfo=UTC)


def settings(**extra: object) -> Settings:
    return Settings(twilio_auth_token=TOKEN, webhook_base_url=PUBLIC, **extra)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@contextmanager
def served(engine: sa.Engine, clock: ManualClock, **extra: object) -> Iterator[httpx.Client]:
    """The app on a real uvicorn server (loopback, free port) and an HTTP client for it."""
    with (
        serve_in_thread(create_app(settings(**extra), engine, clock)) as base_url,
        httpx.Client(base_url=base_url) as c,
    ):
        yield c


@pytest.fixture
def client(engine: sa.Engine, clock: ManualClock) -> Iterator[httpx.Client]:
    """On SQLite and on PostgreSQL (the ``engine`` fixture is parametrised)."""
    with served(engine, clock) as c:
        yield c


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[sa.Engine]:
    """SQLite only, for HTTP-level behaviour that does not depend on the database."""
    eng = db.open_database(sqlite_url)
    yield eng
    eng.dispose()


@pytest.fixture
def web(lite: sa.Engine, clock: ManualClock) -> Iterator[httpx.Client]:
    with served(lite, clock) as c:
        yield c


def callback(
    client: httpx.Client, params: dict[str, str], query: str = "", token: str = TOKEN
) -> httpx.Response:
    path = "/twilio/status" + (f"?{query}" if query else "")
    return client.post(path, data=params, headers={"X-Twilio-Signature": sign(token, PUBLIC + path, params)})


def status(sid: str, value: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": value, "AccountSid": "AC1", "To": "+8613800138000", **extra}


def sms(client: httpx.Client, body: str, sid: str, sender: str = "+8613800138000") -> httpx.Response:
    params = {"MessageSid": sid, "From": sender, "To": "+15005550006", "Body": body, "AccountSid": "AC1"}
    sig = sign(TOKEN, PUBLIC + "/twilio/inbound", params)
    return client.post("/twilio/inbound", data=params, headers={"X-Twilio-Signature": sig})


def test_signed_callbacks_move_a_message_forward_only(
    client: httpx.Client, engine: sa.Engine, clock: ManualClock
) -> None:
    [mid] = seed_messages(engine, T0, [{"provider_id": "SMa", "status": "sent"}])
    clock.advance(timedelta(seconds=5))
    assert callback(client, status("SMa", "delivered")).json()["outcome"] == "applied"
    for late in ("sent", "queued", "delivered", "undelivered"):  # stale, repeated, contradicting
        clock.advance(timedelta(seconds=1))
        response = callback(client, status("SMa", late, ErrorCode="30003"))
        assert response.status_code == 200 and response.json()["outcome"] == "unchanged"
    row = message(engine, mid)
    assert row["status"] == "delivered" and row["final_at"] == T0 + timedelta(seconds=5)
    assert row["error_code"] is None
    assert [(e["from_status"], e["to_status"], e["source"]) for e in events(engine, mid)] == [
        ("sent", "delivered", "twilio-callback")
    ]


def test_failure_callbacks_record_the_error_and_21610_records_an_opt_out(
    web: httpx.Client, lite: sa.Engine
) -> None:
    a, b = seed_messages(
        lite,
        T0,
        [
            {"provider_id": "SMa", "phone": "+8613800138001"},
            {"provider_id": "SMb", "phone": "+8613800138002"},
        ],
    )
    callback(web, status("SMa", "undelivered", ErrorCode="30003"))
    callback(web, status("SMb", "failed", ErrorCode="21610"))
    row = message(lite, a)
    assert (row["status"], row["error_code"], row["error_text"]) == (
        "undelivered",
        "30003",
        "unreachable destination handset",
    )
    assert events(lite, a)[0]["detail"] == {
        "sid": "SMa",
        "twilio_status": "undelivered",
        "error_code": "30003",
    }
    assert message(lite, b)["status"] == "failed"
    with db.reading(lite) as conn:
        opt = conn.execute(sa.select(OptOut.__table__)).mappings().one()
    assert (opt["phone"], opt["source"]) == ("+8613800138002", "provider")


def test_missing_or_wrong_signature_is_refused_and_changes_nothing(
    web: httpx.Client, lite: sa.Engine
) -> None:
    [mid] = seed_messages(lite, T0, [{"provider_id": "SMa"}])
    params = status("SMa", "delivered")
    assert web.post("/twilio/status", data=params).status_code == 403
    assert callback(web, params, token="not-the-token").status_code == 403
    internal = sign(TOKEN, f"{web.base_url}".rstrip("/") + "/twilio/status", params)  # not the public URL
    tampered = sign(TOKEN, PUBLIC + "/twilio/status", status("SMa", "sent"))  # signed other values
    for signature in (internal, tampered):
        assert (
            web.post("/twilio/status", data=params, headers={"X-Twilio-Signature": signature}).status_code
            == 403
        )
    assert sms(web, "STOP", "SMin").status_code == 200
    bad_inbound = {"MessageSid": "SMx", "From": "+8613800138009", "Body": "STOP"}
    assert (
        web.post("/twilio/inbound", data=bad_inbound, headers={"X-Twilio-Signature": "AAAA"}).status_code
        == 403
    )
    assert message(lite, mid)["status"] == "sent" and events(lite, mid) == []
    with db.reading(lite) as conn:
        assert conn.execute(sa.select(OptOut.__table__.c.phone)).scalars().all() == ["+8613800138000"]


def test_unknown_sid_is_acknowledged_and_ignored(web: httpx.Client, lite: sa.Engine) -> None:
    [mid] = seed_messages(lite, T0, [{"provider_id": "SMa"}])
    response = callback(web, status("SMnope", "delivered"))
    assert response.status_code == 200 and response.json()["outcome"] == "unknown-sid"
    assert message(lite, mid)["status"] == "sent"


def test_callback_naming_our_message_resolves_an_unanswered_send(
    client: httpx.Client, engine: sa.Engine
) -> None:
    unknown, sending, other = seed_messages(
        engine,
        T0,
        [
            {"status": "unknown", "phone": "+8613800138000"},
            {"status": "sending", "phone": "+8613800138001"},
            {"status": "sent", "provider_id": "SMfirst", "phone": "+8613800138002"},
        ],
    )
    assert callback(client, status("SMx", "queued"), query=f"m={unknown}").json()["outcome"] == "applied"
    row = message(engine, unknown)
    assert (row["status"], row["provider_id"]) == ("sent", "SMx")
    # The final callback may come before the dispatcher has committed "sent" itself.
    params = status("SMy", "delivered", To="+8613800138001")
    assert callback(client, params, query=f"m={sending}").json()["outcome"] == "applied"
    assert (message(engine, sending)["status"], message(engine, sending)["provider_id"]) == (
        "delivered",
        "SMy",
    )
    # A second provider message for one of ours is a duplicate send: recorded, nothing else changes.
    params = status("SMsecond", "delivered", To="+8613800138002")
    assert callback(client, params, query=f"m={other}").json()["outcome"] == "conflict"
    assert message(engine, other)["status"] == "sent"
    assert events(engine, other)[0]["detail"]["recorded_sid"] == "SMfirst"
    # A callback naming our message id but another number is not trusted to resolve it.
    params = status("SMz", "delivered", To="+8613800138999")
    assert callback(client, params, query=f"m={unknown}").json()["outcome"] == "unknown-sid"
    assert message(engine, unknown)["provider_id"] == "SMx"


OPT_OUT_SAMPLES = [
    "STOP",
    "退订",
    " td ",
    "Unsubscribe",
    "ｓｔｏｐ",
    "T",
    "stopall",
    "Cancel",
    "END",
    "quit",
    "REVOKE",
    "optout",
]


def test_opt_out_words_record_an_opt_out_with_source_reply(web: httpx.Client, lite: sa.Engine) -> None:
    for i, word in enumerate(OPT_OUT_SAMPLES):
        response = sms(web, word, f"SM{i}", sender=f"+86138001380{i:02d}")
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
        chinese = word.strip().upper() in ("退订", "TD", "T")
        assert ("<Message>" in response.text) == chinese, word  # Twilio confirms its own words itself
    with db.reading(lite) as conn:
        opts = conn.execute(sa.select(OptOut.__table__)).mappings().all()
        trail = conn.execute(sa.select(Action.__table__)).mappings().all()
        inbound = conn.execute(sa.select(InboundMessage.__table__)).mappings().all()
    assert sorted(o["phone"] for o in opts) == [f"+86138001380{i:02d}" for i in range(len(OPT_OUT_SAMPLES))]
    assert {o["source"] for o in opts} == {"reply"}
    assert {(a["action"], a["details"]["source"]) for a in trail} == {("optout.added", "reply")}
    assert len(trail) == len(OPT_OUT_SAMPLES)
    assert [(r["body"], r["action"], r["changed"]) for r in inbound] == [
        (w, "opt-out", True) for w in OPT_OUT_SAMPLES
    ]


def test_start_help_other_text_and_repeated_deliveries(
    client: httpx.Client, engine: sa.Engine, clock: ManualClock
) -> None:
    with db.writing(engine) as conn:
        add_optout(conn, "+8613800138000", source="operator", at=T0, actor="op")
    response = sms(client, "start", "SM1")
    assert response.status_code == 200 and "<Message>" not in response.text
    help_answer = sms(client, "HELP", "SM2")
    assert Settings().help_reply in help_answer.text
    assert "<Message>" not in sms(client, "STOP please", "SM3").text  # not the whole body: no keyword
    sms(client, "退订", "SM4")
    again = sms(client, "退订", "SM4")  # Twilio retried the same message
    assert "<Message>" in again.text
    with db.reading(engine) as conn:
        inbound = (
            conn.execute(sa.select(InboundMessage.__table__).order_by(InboundMessage.__table__.c.id))
            .mappings()
            .all()
        )
        trail = conn.execute(sa.select(Action.__table__).order_by(Action.__table__.c.id)).mappings().all()
        phones = conn.execute(sa.select(OptOut.__table__.c.phone)).scalars().all()
    assert [(r["sid"], r["action"], r["changed"]) for r in inbound] == [
        ("SM1", "opt-in", True),
        ("SM2", "help", False),
        ("SM3", "none", False),
        ("SM4", "opt-out", True),
    ]
    assert [a["action"] for a in trail] == ["optout.added", "optout.removed", "optout.added"]
    assert [a["details"]["source"] for a in trail] == ["operator", "reply", "reply"]
    assert phones == ["+8613800138000"]


def test_healthz_reports_the_database(lite: sa.Engine, clock: ManualClock) -> None:
    with served(lite, clock) as c:
        assert c.get("/healthz").json() == {"ok": True, "database": "ok"}
    dead = db.make_engine("postgresql://postgres@127.0.0.1:1/none")
    with serve_in_thread(create_app(settings(), dead, clock)) as base_url:
        response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 503 and response.json()["ok"] is False


def test_app_refuses_to_start_without_an_auth_token(lite: sa.Engine, clock: ManualClock) -> None:
    with pytest.raises(WebhookConfigError, match="TWILIO_AUTH_TOKEN"):
        create_app(Settings(twilio_auth_token=None), lite, clock)  # type: ignore[arg-type]


def test_status_update_logic_on_both_databases(engine: sa.Engine, clock: ManualClock) -> None:
    """The plain module, without HTTP (the engine fixture runs this on SQLite and PostgreSQL)."""
    [mid] = seed_messages(engine, T0, [{"provider_id": "SMa"}])
    with db.writing(engine) as conn:
        first = apply_status_callback(conn, clock, sid="SMa", status="failed", error_code="30005")
        second = apply_status_callback(conn, clock, sid="SMa", status="delivered")
        odd = apply_status_callback(conn, clock, sid="SMa", status="receiving")
    assert (first.outcome, first.from_status, first.to_status) == ("applied", "sent", "failed")
    assert (second.outcome, odd.outcome) == ("unchanged", "ignored-status")
    assert message(engine, mid)["status"] == "failed" and len(events(engine, mid)) == 1


def test_end_to_end_real_servers_sdk_fake_callbacks_webhooks(sqlite_url: str) -> None:
    """Adapter → fake Twilio → signed callbacks → webhooks on a real uvicorn server → database."""
    engine = db.open_database(sqlite_url)
    clock = ManualClock(T0)
    ids = seed_messages(
        engine,
        T0,
        [{"status": "sending", "phone": "+8613800138001"}, {"status": "sending", "phone": "+8613800138002"}],
    )
    with run_fake_twilio(callback_delay_ms=20, fail_numbers={"+8613800138002": "undelivered:30003"}) as fake:
        s = Settings(twilio_auth_token=fake.auth_token)  # type: ignore[arg-type]
        with serve_in_thread(create_app(s, engine, clock)) as hooks:
            provider = TwilioProvider(
                fake.account_sid,
                fake.auth_token,
                from_number=fake.from_number,
                base_url=fake.base_url,
                webhook_base_url=hooks,
            )
            for mid, phone in zip(ids, ("+8613800138001", "+8613800138002"), strict=True):
                provider.send(Outbound(mid, phone, "hello"))
            fake.wait_for_callbacks(6)
            assert {c["http_status"] for c in fake.callbacks()} == {200}
            assert httpx.get(f"{hooks}/healthz").status_code == 200
            unsigned = httpx.post(
                f"{hooks}/twilio/status", data={"MessageSid": "SM1", "MessageStatus": "sent"}
            )
            assert unsigned.status_code == 403
    assert [message(engine, i)["status"] for i in ids] == ["delivered", "undelivered"]
    assert [e["to_status"] for e in events(engine, ids[0])] == ["sent", "delivered"]
    engine.dispose()


def test_webhooks_serve_command_runs_and_needs_the_token(tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_DATABASE_URL", f"sqlite:///{tmp_path / 'w.db'}")
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("BROADCASTER_TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    result = cli("webhooks", "serve", "--port", "0")
    assert result.code == 1 and "TWILIO_AUTH_TOKEN" in result.err and "Traceback" not in result.err
    env = subprocess_env(BROADCASTER_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}", TWILIO_AUTH_TOKEN="tok")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster", "webhooks", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base = json.loads(proc.stdout.readline())["base_url"]
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"{base}/healthz").json()["ok"] is True
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(10) in (0, -15)  # uvicorn shuts down gracefully, then re-raises SIGTERM
