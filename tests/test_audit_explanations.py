"""Every way the dispatcher settles a message is one ``audit check`` accepts as explained: failures
without a provider code, uncertain messages given up on after reconciling, and an operator's
``runs resolve --mark-sent``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broadcaster.clock import SystemClock
from broadcaster.db import open_database
from broadcaster.dispatch import Dispatcher
from broadcaster.providers.base import ProviderError
from tests.dispatch_helpers import ScriptedProvider, make_run, messages, phone, seed_list, template_store


@pytest.fixture
def setup(workdir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(workdir / "templates"))
    store = template_store(workdir / "templates")
    engine = open_database(db_url)
    seed_list(engine, "duty", range(1, 4), SystemClock().now())
    yield engine, make_run(engine, store, SystemClock(), ["duty"])
    engine.dispose()


def check(cli, run_id: int) -> dict:  # type: ignore[no-untyped-def]
    result = cli("audit", "check", run_id, "--json")
    assert result.code == 0, result.out + result.err
    return result.json()


def dispatcher(engine: sa.Engine, provider: ScriptedProvider, **options: object) -> Dispatcher:
    return Dispatcher(engine, provider, SystemClock(), reconcile_delay=timedelta(0), **options)  # type: ignore[arg-type]


def test_failures_without_a_provider_code_get_one(setup, cli) -> None:  # type: ignore[no-untyped-def]
    engine, run_id = setup
    script = {
        phone(1): [ProviderError("cannot connect to Twilio (ConnectionError): not sent", transient=True)],
        phone(2): [ProviderError("Bad Request", http_status=400)],
    }
    dispatcher(engine, ScriptedProvider(SystemClock(), script), max_attempts=1).run_until_idle(run_id)
    by_phone = {m["phone"]: m for m in messages(engine, run_id)}
    assert (by_phone[phone(1)]["status"], by_phone[phone(1)]["error_code"]) == ("failed", "not-sent")
    assert (by_phone[phone(2)]["status"], by_phone[phone(2)]["error_code"]) == ("failed", "http-400")
    result = check(cli, run_id)
    assert result["run_status"] == "completed" and result["counts"] == {"failed": 2, "sent": 1}


def test_uncertain_message_not_found_at_the_provider_fails_with_a_code(setup, cli) -> None:  # type: ignore[no-untyped-def]
    engine, run_id = setup
    script = {phone(3): [ProviderError("read timed out", accepted_maybe=True)]}  # and it never arrived
    provider = ScriptedProvider(SystemClock(), script)
    dispatcher(engine, provider, max_attempts=1).run_until_idle(run_id)
    (lost,) = [m for m in messages(engine, run_id) if m["phone"] == phone(3)]
    assert provider.lookups and provider.sent_to(phone(3)) == 0
    assert (lost["status"], lost["error_code"]) == ("failed", "not-found")
    assert "not at the provider" in lost["error_text"]
    assert check(cli, run_id)["counts"] == {"failed": 1, "sent": 2}
    shown = cli("audit", "show", lost["id"], "--json").json()
    assert [e["to_status"] for e in shown["events"]] == ["queued", "sending", "unknown", "failed"]
    assert (
        shown["events"][-1]["source"] == "reconcile" and shown["events"][-1]["detail"]["code"] == "not-found"
    )


def test_operator_marking_uncertain_messages_sent_is_an_explanation(setup, cli) -> None:  # type: ignore[no-untyped-def]
    engine, run_id = setup
    provider = ScriptedProvider(SystemClock(), {phone(2): ["lost"]}, can_lookup=False)
    dispatcher(engine, provider).run_until_idle(run_id)
    (uncertain,) = [m for m in messages(engine, run_id) if m["status"] == "unknown"]
    assert uncertain["error_code"] == "no-answer"
    pending = check(cli, run_id)  # the run goes on: waiting for an operator is no issue yet
    assert pending["pending_total"] == 1 and pending["pending"][0]["status"] == "unknown"

    resolved = cli("--actor", "supervisor", "runs", "resolve", run_id, "--mark-sent", "--json")
    assert resolved.code == 0 and resolved.json()["messages"] == 1
    assert cli("worker", "--once").code == 0  # housekeeping completes the run
    result = check(cli, run_id)
    assert result["run_status"] == "completed" and result["counts"] == {"sent": 3}
    shown = cli("audit", "show", uncertain["id"], "--json").json()
    last = shown["events"][-1]
    assert (last["source"], last["detail"]["decision"], last["detail"]["actor"]) == (
        "operator",
        "mark-sent",
        "supervisor",
    )
    (action,) = [a for a in shown["actions"] if a["action"] == "run.resolved"]
    assert action["actor"] == "supervisor" and action["details"]["messages"] == [uncertain["id"]]


def test_sent_without_a_provider_id_or_an_operator_decision_is_still_an_issue(setup, cli) -> None:  # type: ignore[no-untyped-def]
    from broadcaster import db
    from broadcaster.models import Message

    engine, run_id = setup
    dispatcher(engine, ScriptedProvider(SystemClock())).run_until_idle(run_id)
    t = Message.__table__
    with db.writing(engine) as conn:
        conn.execute(sa.update(t).where(t.c.run_id == run_id, t.c.phone == phone(1)).values(provider_id=None))
    result = cli("audit", "check", run_id, "--json")
    assert result.code == 1
    assert [i["problem"] for i in result.json()["issues"]] == ["sent without the provider's message id"]
