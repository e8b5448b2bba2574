"""The Twilio adapter through the real twilio SDK against the fake Twilio server on loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from broadcaster.providers import ProviderConfigError, make_provider
from broadcaster.providers.base import Accepted, AsyncSending, Outbound, Provider, ProviderError
from broadcaster.providers.twilio import TwilioProvider
from broadcaster.settings import load_settings
from broadcaster.twilio_fake import FakeTwilioHandle, run_fake_twilio

TO = "+8613800138000"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTwilioHandle]:
    with run_fake_twilio(callback_delay_ms=5) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTwilioHandle) -> FakeTwilioHandle:
    server.reset()
    return server


def make(fake: FakeTwilioHandle, **options: object) -> TwilioProvider:
    kwargs: dict[str, object] = {
        "from_number": fake.from_number,
        "base_url": fake.base_url,
        "read_timeout": 2.0,
    }
    kwargs.update(options)
    return TwilioProvider(fake.account_sid, fake.auth_token, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """``send`` (requests, thread pool) or ``send_async`` (aiohttp, the dispatcher's event loop)."""
    return request.param


def send(provider: TwilioProvider, message: Outbound, mode: str = "sync") -> Accepted:
    if mode == "sync":
        return provider.send(message)

    async def once() -> Accepted:
        try:
            return await provider.send_async(message)
        finally:
            await provider.aclose()

    return asyncio.run(once())


def refusal(provider: TwilioProvider, to: str, body: str = "hello", mode: str = "sync") -> ProviderError:
    with pytest.raises(ProviderError) as info:
        send(provider, Outbound(1, to, body), mode)
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_send_creates_one_message_and_returns_its_sid(fake: FakeTwilioHandle, mode: str) -> None:
    provider = make(fake)
    assert isinstance(provider, Provider) and isinstance(provider, AsyncSending) and provider.can_lookup
    accepted = send(provider, Outbound(7, TO, "好" * 71), mode)
    assert re.fullmatch(r"SM[0-9a-f]{32}", accepted.provider_id)
    assert accepted.status == "queued" and accepted.segments == 2
    [stored] = fake.messages(TO)
    assert stored["sid"] == accepted.provider_id
    assert stored["body"] == "好" * 71 and stored["from"] == fake.from_number
    assert stored["status_callback"] is None and stored["validity_period"] is None


def test_messaging_service_status_callback_and_validity_period_are_sent(
    fake: FakeTwilioHandle, mode: str
) -> None:
    service = "MG" + "a" * 32
    provider = make(
        fake,
        from_number=None,
        messaging_service_sid=service,
        webhook_base_url="https://hooks.example.org/",
        validity_period=3600,
    )
    accepted = send(provider, Outbound(42, TO, "hello"), mode)
    assert accepted.status == "accepted"
    [stored] = fake.messages(TO)
    assert stored["messaging_service_sid"] == service and stored["from"] is None
    assert stored["status_callback"] == "https://hooks.example.org/twilio/status?m=42"
    assert stored["validity_period"] == "3600"
    # A message's own callback and sender win over the configured ones.
    send(
        provider,
        Outbound(43, TO, "x", sender="+15005550006", status_callback="https://other.example/cb"),
        mode,
    )
    assert fake.messages(TO)[1]["status_callback"] == "https://other.example/cb"
    assert fake.messages(TO)[1]["from"] == "+15005550006"


@pytest.mark.parametrize(
    ("to", "code"),
    [
        ("+15005550001", "21211"),
        ("+15005550002", "21612"),
        ("+15005550003", "21408"),
        ("+15005550009", "21614"),
    ],
)
def test_magic_numbers_are_permanent_refusals(fake: FakeTwilioHandle, to: str, code: str, mode: str) -> None:
    error = refusal(make(fake), to, mode=mode)
    assert error.code == code and error.http_status == 400
    assert not error.transient and not error.accepted_maybe and not error.opt_out
    assert code in error.text
    assert fake.messages() == []


def test_opted_out_recipient_21610_is_an_opt_out(fake: FakeTwilioHandle, mode: str) -> None:
    error = refusal(make(fake), "+15005550004", mode=mode)
    assert (error.code, error.opt_out, error.transient, error.accepted_maybe) == ("21610", True, False, False)


def test_sender_queue_full_21611_and_throttling_429_are_transient(fake: FakeTwilioHandle, mode: str) -> None:
    error = refusal(make(fake, from_number="+15005550008"), TO, mode=mode)
    assert (error.code, error.transient, error.accepted_maybe) == ("21611", True, False)
    fake.add_fault("429", count=1)
    provider = make(fake)
    error = refusal(provider, TO, mode=mode)
    assert (error.code, error.http_status, error.transient, error.accepted_maybe) == (
        "20429",
        429,
        True,
        False,
    )
    assert fake.messages() == []
    send(provider, Outbound(1, TO, "again"), mode)  # the fault was for one request only
    assert fake.received_count(TO) == 1


def test_500_after_recording_is_accepted_maybe_and_lookup_finds_the_message(
    fake: FakeTwilioHandle, mode: str
) -> None:
    provider = make(fake)
    since = datetime.now(UTC)
    fake.add_fault("500-after", count=1)
    error = refusal(provider, TO, "质量月 500", mode=mode)
    assert error.accepted_maybe and not error.transient and error.http_status == 500
    found = provider.lookup(TO, since)
    assert [(f.to, f.body) for f in found] == [(TO, "质量月 500")]
    assert found[0].provider_id == fake.messages(TO)[0]["sid"]
    assert found[0].created_at is not None and found[0].created_at.tzinfo is not None
    assert provider.lookup("+8613800138999", since) == []


def test_500_before_recording_is_accepted_maybe_but_lookup_finds_nothing(
    fake: FakeTwilioHandle, mode: str
) -> None:
    provider = make(fake)
    since = datetime.now(UTC)
    fake.add_fault("500", count=1)
    error = refusal(provider, TO, mode=mode)
    assert error.accepted_maybe and error.http_status == 500
    assert provider.lookup(TO, since) == []


@pytest.mark.parametrize(("kind", "recorded"), [("timeout-after", 1), ("timeout", 0)])
def test_read_timeout_is_accepted_maybe(fake: FakeTwilioHandle, kind: str, recorded: int, mode: str) -> None:
    provider = make(fake, read_timeout=0.3)
    since = datetime.now(UTC)
    fake.add_fault(kind, count=1, hang_ms=1500)
    started = time.monotonic()
    error = refusal(provider, TO, mode=mode)
    assert time.monotonic() - started < 1.2  # the client gave up, the server was still hanging
    assert error.accepted_maybe and not error.transient and error.http_status is None
    assert len(provider.lookup(TO, since)) == recorded


def test_connection_refused_is_transient_and_surely_not_sent(mode: str) -> None:
    provider = TwilioProvider(
        "AC" + "1" * 32, "tok", from_number="+15005550006", base_url=f"http://127.0.0.1:{closed_port()}"
    )
    error = refusal(provider, TO, mode=mode)
    assert error.transient and not error.accepted_maybe and error.code == "not-sent"
    with pytest.raises(ProviderError) as info:
        provider.lookup(TO, datetime.now(UTC))
    assert info.value.transient


def test_connect_timeout_is_transient_and_surely_not_sent(mode: str) -> None:
    # A listener that never accepts, with a full backlog: the kernel drops further SYNs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        time.sleep(0.05)
        port = listener.getsockname()[1]
        provider = TwilioProvider(
            "AC" + "1" * 32, "tok", from_number="+1", base_url=f"http://127.0.0.1:{port}", connect_timeout=0.3
        )
        error = refusal(provider, TO, mode=mode)
        assert error.transient and not error.accepted_maybe and "Timeout" in error.text, error.text
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_auth_token_never_appears_in_errors_or_logs(
    fake: FakeTwilioHandle, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and urllib3's included
    secret = "s3cr3t-token-value-XYZ"
    basic = base64.b64encode(f"{fake.account_sid}:{secret}".encode()).decode()
    wrong = TwilioProvider(fake.account_sid, secret, from_number=fake.from_number, base_url=fake.base_url)
    errors = [refusal(wrong, TO, mode=mode)]  # 20003: the fake does not know this token
    assert errors[0].code == "20003" and not errors[0].transient
    right = TwilioProvider(
        fake.account_sid,
        fake.auth_token,
        from_number=fake.from_number,
        base_url=fake.base_url,
        read_timeout=0.3,
    )
    for kind in ("500-after", "429", "timeout-after"):
        fake.add_fault(kind, count=1, hang_ms=800)
        errors.append(refusal(right, TO, mode=mode))
    errors.append(refusal(right, "+15005550001", mode=mode))
    refused = TwilioProvider(
        fake.account_sid, secret, from_number="+1", base_url=f"http://127.0.0.1:{closed_port()}"
    )
    errors.append(refusal(refused, TO, mode=mode))
    with pytest.raises(ProviderError) as info:
        wrong.lookup(TO, datetime.now(UTC))
    errors.append(info.value)
    for token in (secret, fake.auth_token):
        for error in errors:
            assert token not in error.text and token not in str(error) and token not in repr(error.args)
            assert error.__cause__ is None and error.__suppress_context__
        assert token not in caplog.text
    assert basic not in caplog.text
    assert secret not in repr(wrong) and secret not in repr(vars(wrong))


def test_lookup_reads_all_pages_and_only_the_window(fake: FakeTwilioHandle) -> None:
    provider = make(fake, lookup_skew=timedelta(0))
    since = datetime.now(UTC) - timedelta(seconds=2)
    for i in range(105):  # more than one page of 100
        provider.send(Outbound(i, TO, f"m{i}"))
    provider.send(Outbound(999, "+8613800138001", "other"))
    found = provider.lookup(TO, since)
    assert sorted(f.body for f in found) == sorted(f"m{i}" for i in range(105))
    assert provider.lookup(TO, datetime.now(UTC) + timedelta(minutes=1)) == []


def test_shared_client_serves_many_threads_without_dropping_connections(
    fake: FakeTwilioHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3")
    fake.configure(latency_ms=50)
    provider = make(fake, pool_size=50)
    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        sids = list(
            pool.map(lambda i: provider.send(Outbound(i, f"+86139{i:08d}", "x")).provider_id, range(200))
        )
    elapsed = time.monotonic() - started
    assert len(set(sids)) == 200 and sum(fake.counts().values()) == 200
    assert elapsed < 200 * 0.05 / 5  # many requests really were in flight at once
    assert "Connection pool is full" not in caplog.text


def test_make_provider_builds_the_adapter_and_names_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "TWILIO_MESSAGING_SERVICE_SID",
    ):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("BROADCASTER_" + name, raising=False)
    monkeypatch.setenv("BROADCASTER_PROVIDER", "twilio")
    with pytest.raises(ProviderConfigError, match="TWILIO_ACCOUNT_SID"):
        make_provider(load_settings())
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "2" * 32)
    with pytest.raises(ProviderConfigError, match="TWILIO_AUTH_TOKEN"):
        make_provider(load_settings())
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    with pytest.raises(ProviderConfigError, match="TWILIO_FROM_NUMBER"):
        make_provider(load_settings())
    monkeypatch.setenv("TWILIO_FROM_NUMBER", "+15005550006")
    monkeypatch.setenv("BROADCASTER_TWILIO_READ_TIMEOUT", "3.5")
    provider = make_provider(load_settings())
    assert isinstance(provider, TwilioProvider) and provider.http.timeout == (5.0, 3.5)
    monkeypatch.setenv("BROADCASTER_TWILIO_BASE_URL", "not a url")
    with pytest.raises(ProviderConfigError, match="BROADCASTER_TWILIO_BASE_URL"):
        make_provider(load_settings())


def test_proxy_variables_are_honoured(
    fake: FakeTwilioHandle, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Read once at start-up rather than per request, but still obeyed (with NO_PROXY)."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    error = refusal(make(fake), TO, mode=mode)  # through the (dead) proxy: refused, so surely not sent
    assert error.transient and not error.accepted_maybe
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    make(fake).send(Outbound(1, TO, "direct"))
    assert fake.received_count(TO) == 1


def test_connection_dropped_after_sending_is_accepted_maybe(mode: str) -> None:
    """A server that reads the whole request, then hangs up without answering."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def drop_after_reading() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"Body=" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk

    thread = threading.Thread(target=drop_after_reading, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        provider = TwilioProvider(
            "AC" + "1" * 32, "tok", from_number="+1", base_url=f"http://127.0.0.1:{port}"
        )
        error = refusal(provider, TO, mode=mode)
        assert error.accepted_maybe and not error.transient, error.text
    finally:
        thread.join(5)
        listener.close()
