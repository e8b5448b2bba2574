"""The fake Twilio server's own behaviours that other tests and the benchmarks rely on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from broadcaster.providers.base import Outbound, ProviderError
from broadcaster.providers.twilio import EndpointHttpClient, TwilioProvider
from broadcaster.twilio_fake import FakeTwilioHandle, run_fake_twilio, spawn_fake_twilio
from tests.twilio_helpers import recording_server

TO = "+8613800138000"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTwilioHandle]:
    with run_fake_twilio(callback_delay_ms=5, seed=7) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTwilioHandle) -> FakeTwilioHandle:
    server.reset()
    return server


def sdk(fake: FakeTwilioHandle) -> Client:
    return Client(fake.account_sid, fake.auth_token, http_client=EndpointHttpClient(fake.base_url))


def provider(fake: FakeTwilioHandle, **options: object) -> TwilioProvider:
    return TwilioProvider(
        fake.account_sid,
        fake.auth_token,
        from_number=fake.from_number,
        base_url=fake.base_url,
        **options,  # type: ignore[arg-type]
    )


def api(fake: FakeTwilioHandle) -> str:
    return f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}"


def test_wrong_credentials_get_20003_and_the_wire_format_of_twilio_errors(fake: FakeTwilioHandle) -> None:
    form = {"To": TO, "From": fake.from_number, "Body": "x"}
    response = httpx.post(f"{api(fake)}/Messages.json", data=form, auth=(fake.account_sid, "wrong"))
    assert response.status_code == 401
    body = response.json()
    assert (
        body["code"] == 20003
        and body["status"] == 401
        and set(body) == {"code", "message", "more_info", "status"}
    )
    response = httpx.post(f"{api(fake)}/Messages.json", data=form)
    assert response.status_code == 401
    assert fake.messages() == []


def test_create_fetch_and_list_through_the_sdk(fake: FakeTwilioHandle) -> None:
    client = sdk(fake)
    created = client.messages.create(to=TO, from_=fake.from_number, body="😀" * 36)
    assert created.num_segments == "2" and created.direction == "outbound-api"
    assert created.date_created is not None and created.date_sent is None and created.price is None
    fetched = client.messages(created.sid).fetch()
    assert fetched.sid == created.sid and fetched.body == "😀" * 36
    with pytest.raises(TwilioRestException) as info:
        client.messages("SM" + "0" * 32).fetch()
    assert info.value.status == 404
    client.messages.create(to="+8613800138001", from_=fake.from_number, body="b")
    assert [m.body for m in client.messages.list(to=TO)] == ["😀" * 36]
    assert len(client.messages.list(from_=fake.from_number)) == 2


def test_list_is_newest_first_paged_and_date_sent_filters_skip_unsent_messages(
    fake: FakeTwilioHandle,
) -> None:
    fake.configure(progress=False)  # messages stay queued: no date_sent
    client = sdk(fake)
    sids = [client.messages.create(to=TO, from_=fake.from_number, body=f"n{i}").sid for i in range(7)]
    listed = list(client.messages.stream(to=TO, page_size=3))
    assert [m.sid for m in listed] == sids[::-1]
    page = httpx.get(
        f"{api(fake)}/Messages.json",
        params={"To": TO, "PageSize": 3},
        auth=(fake.account_sid, fake.auth_token),
    ).json()
    assert page["next_page_uri"].startswith(f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json?")
    from datetime import UTC, datetime

    assert client.messages.list(to=TO, date_sent_after=datetime(2000, 1, 1, tzinfo=UTC)) == []


def test_magic_numbers_and_validation(fake: FakeTwilioHandle) -> None:
    client = sdk(fake)
    cases = {
        ("+15005550001", fake.from_number, "x"): 21211,
        ("+15005550004", fake.from_number, "x"): 21610,
        (TO, "+15005550008", "x"): 21611,
        (TO, "+15005550007", "x"): 21606,
        ("12", fake.from_number, "x"): 21211,
        (TO, fake.from_number, "a" * 1601): 21617,
    }
    for (to, from_, body), code in cases.items():
        with pytest.raises(TwilioRestException) as info:
            client.messages.create(to=to, from_=from_, body=body)
        assert info.value.code == code, (to, from_)
    assert fake.messages() == []


def test_faults_count_rate_and_number(fake: FakeTwilioHandle) -> None:
    p = provider(fake)
    fake.add_fault("429", count=2)
    outcomes = []
    for i in range(4):
        try:
            p.send(Outbound(i, TO, "x"))
            outcomes.append("ok")
        except ProviderError as exc:
            outcomes.append(exc.code)
    assert outcomes == ["20429", "20429", "ok", "ok"]
    fake.add_fault("error", code=30001, status=400, to="+8613800138002")
    with pytest.raises(ProviderError) as info:
        p.send(Outbound(9, "+8613800138002", "x"))
    assert info.value.code == "30001" and info.value.transient
    p.send(Outbound(9, "+8613800138003", "x"))  # other numbers unaffected
    fake.clear_faults()
    fake.add_fault("500", rate=0.5)
    failed = 0
    for i in range(40):
        try:
            p.send(Outbound(i, f"+86139000000{i:02d}", "x"))
        except ProviderError:
            failed += 1
    assert 8 <= failed <= 32
    assert fake.stats()["fault:500"] == failed
    fake.clear_faults()
    assert sum(fake.counts().values()) == 2 + 1 + 40 - failed


def test_status_callbacks_are_signed_like_twilio_and_follow_the_configuration(fake: FakeTwilioHandle) -> None:
    with recording_server() as (base_url, received):
        fake.configure(fail_numbers={"+8613800138009": "undelivered:30003"})
        p = provider(fake, webhook_base_url=base_url)
        ok = p.send(Outbound(5, TO, "x")).provider_id
        bad = p.send(Outbound(6, "+8613800138009", "x")).provider_id
        fake.wait_for_callbacks(6)
        requests = received.snapshot()
        validator = RequestValidator(fake.auth_token)
        for r in requests:
            assert validator.validate(r["url"], r["form"], r["signature"])
            assert not RequestValidator("other-token").validate(r["url"], r["form"], r["signature"])
        by_sid = {
            sid: [
                (r["form"]["MessageStatus"], r["form"].get("ErrorCode"))
                for r in requests
                if r["form"]["MessageSid"] == sid
            ]
            for sid in (ok, bad)
        }
        assert by_sid[ok] == [("queued", None), ("sent", None), ("delivered", None)]
        assert by_sid[bad] == [("queued", None), ("sent", None), ("undelivered", "30003")]
        assert {r["query"] for r in requests if r["form"]["MessageSid"] == ok} == {"m=5"}
        assert {m["sid"]: m["status"] for m in fake.messages()} == {ok: "delivered", bad: "undelivered"}
        assert fake.messages(TO)[0]["date_sent"] is not None

        fake.configure(duplicate_callbacks=True, out_of_order_callbacks=True, queued_callback=False)
        third = p.send(Outbound(7, "+8613800138007", "x")).provider_id
        fake.wait_for_callbacks(10)
        statuses = [
            r["form"]["MessageStatus"] for r in received.snapshot() if r["form"]["MessageSid"] == third
        ]
        assert statuses == ["delivered", "delivered", "sent", "sent"]
        assert fake.messages("+8613800138007")[0]["status"] == "delivered"  # the status itself moved in order


def test_default_callback_url_and_inbound_messages_are_signed(fake: FakeTwilioHandle) -> None:
    with recording_server() as (base_url, received):
        fake.configure(callback_url=f"{base_url}/default")
        provider(fake).send(Outbound(1, TO, "x"))
        fake.wait_for_callbacks(3)
        answer = fake.inbound(f"{base_url}/in?x=1", from_=TO, body="退订")
        assert answer["http_status"] == 200
        got = received.snapshot()
        assert {r["path"] for r in got} == {"/default", "/in"}
        inbound = [r for r in got if r["path"] == "/in"][0]
        assert inbound["form"]["Body"] == "退订" and inbound["form"]["From"] == TO
        assert RequestValidator(fake.auth_token).validate(
            inbound["url"], inbound["form"], inbound["signature"]
        )


def test_control_api_rejects_bad_input(fake: FakeTwilioHandle) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.add_fault("explode")
    with pytest.raises(ValueError, match="unknown config keys"):
        fake.configure(no_such_option=1)
    assert "auth_token" not in fake.configure(latency_ms=0)


def test_spawned_fake_serves_the_sdk_with_latency() -> None:
    args = ["--no-progress", "--fail-number", "+8613800138009=failed:30005", "--duplicate-callbacks"]
    with spawn_fake_twilio(latency_ms=100, extra_args=args) as fake:
        p = provider(fake)
        started = time.monotonic()
        p.send(Outbound(1, TO, "x"))
        assert time.monotonic() - started >= 0.1
        assert fake.received_count(TO) == 1 and fake.pid is not None
        config = fake.configure()
        assert config["fail_numbers"] == {"+8613800138009": "failed:30005"}
        assert config["duplicate_callbacks"] is True and config["progress"] is False


def test_fake_twilio_command_rejects_a_bad_fail_number(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("fake-twilio", "--port", "0", "--fail-number", "+8613800138009=delivered")
    assert result.code == 2 and "--fail-number" in result.err and "Traceback" not in result.err
