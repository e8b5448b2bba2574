"""One campaign's life through the real commands, then the audit proves every run complete.

Runs: a plain send (one number opted out by an operator, one recipient the template cannot be
rendered for); a run paused mid-way and resumed; a run cancelled mid-way; a run held back by quiet
hours and sent when they end; a run the provider partly refuses (21211, and 21610 = opted out at the
provider). Then for every run ``audit check`` passes and its counts equal ``runs`` and ``log``,
``audit verify`` passes, and ``audit show`` explains each special case.

Recipients are seeded through the package API (the importer lands separately); a provider's
refusals and a pause or cancel while messages are still queued are made through the package API
(a scripted provider), everything else through the commands an operator types.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from broadcaster import db
from broadcaster.clock import ManualClock, SystemClock
from broadcaster.db import open_database
from broadcaster.dispatch import Dispatcher
from broadcaster.models import ListMember, Recipient, RecipientList
from broadcaster.optouts import add_optout
from broadcaster.providers.base import Accepted, Outbound, ProviderError
from broadcaster.providers.log import LogProvider
from broadcaster.run_control import pause_run
from broadcaster.templating import TemplateStore
from tests.dispatch_helpers import make_run

TEMPLATE = "【质量月】{{ name }}，{{ city }}欢迎您参加{{ send_date | cn_date }}的活动。回TD退订"
OPTED_OUT = "+8613800138003"
NO_CITY = "+8613800138005"
INVALID = "+15005550001"  # the provider refuses: 21211
STOPPED = "+15005550004"  # the provider refuses: 21610, the recipient opted out there
PUBLIC = ["+8613800138001", "+8613800138002", OPTED_OUT, "+8613800138004", NO_CITY, "+8613800138006"]
REFUSALS = ["+8613800138007", INVALID, STOPPED]


class RefusingProvider(LogProvider):
    """The log provider, refusing Twilio's magic test numbers with Twilio's permanent errors."""

    REFUSED = {
        INVALID: ProviderError("The 'To' number is not a valid phone number.", code="21211", http_status=400),
        STOPPED: ProviderError(
            "Attempt to send to unsubscribed recipient", code="21610", http_status=400, opt_out=True
        ),
    }

    def send(self, message: Outbound) -> Accepted:
        if message.to in self.REFUSED:
            raise self.REFUSED[message.to]
        return super().send(message)


class PausingProvider(LogProvider):
    """The log provider; after its first message it pauses the run the way ``runs pause`` does,
    so the run stops with messages still queued."""

    def __init__(self, path: Path, engine: sa.Engine, run_id: int) -> None:
        super().__init__(path)
        self.engine, self.run_id, self.sent = engine, run_id, 0

    def send(self, message: Outbound) -> Accepted:
        accepted = super().send(message)
        self.sent += 1
        if self.sent == 1:
            pause_run(self.engine, self.run_id, clock=SystemClock(), actor="operator")
        return accepted


def seed(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    people = PUBLIC + REFUSALS
    with db.writing(engine) as conn:
        conn.execute(
            sa.insert(RecipientList.__table__),
            [
                {"id": 1, "name": "public", "created_at": now},
                {"id": 2, "name": "refusals", "created_at": now},
            ],
        )
        conn.execute(
            sa.insert(Recipient.__table__),
            [
                {
                    "id": i,
                    "phone": p,
                    "name": f"用户{i}",
                    "attributes": {} if p == NO_CITY else {"city": "北京"},
                    "created_at": now,
                    "updated_at": now,
                }
                for i, p in enumerate(people, start=1)
            ],
        )
        conn.execute(
            sa.insert(ListMember.__table__),
            [
                {"list_id": 1 if p in PUBLIC else 2, "recipient_id": i, "added_at": now}
                for i, p in enumerate(people, start=1)
            ],
        )
        add_optout(conn, OPTED_OUT, source="operator", at=now, actor="operator", reason="asked by phone")


def quiet_now() -> str:
    local = datetime.now(ZoneInfo("Asia/Shanghai"))
    return f"{local - timedelta(hours=1):%H:%M}-{local + timedelta(hours=1):%H:%M}"


def message_of(cli, run_id: int, phone: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rows = [
        json.loads(x)
        for x in cli("log", "--run", run_id, "--to", phone, "--format", "jsonl").out.splitlines()
    ]
    assert len(rows) == 1
    return rows[0]


def show(cli, message_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli("audit", "show", message_id, "--json", "--unmask")
    assert result.code == 0, result.err
    return result.json()


@pytest.fixture
def scene(workdir: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    templates = workdir / "templates"
    templates.mkdir()
    (templates / "notice.j2").write_text(TEMPLATE, encoding="utf-8")
    monkeypatch.setenv("BROADCASTER_TEMPLATES_DIR", str(templates))
    monkeypatch.setenv("BROADCASTER_RATE_LIMIT", "0")
    engine = open_database(db_url)
    seed(engine)
    yield engine, TemplateStore(templates), workdir / "var" / "log-provider.jsonl"
    engine.dispose()


def test_every_run_of_a_campaign_is_accounted_for(scene, cli) -> None:  # type: ignore[no-untyped-def]
    engine, store, sent_file = scene

    # 1. A plain send: one number opted out, one recipient without the attribute the template needs.
    plain = cli("send", "-t", "notice", "-l", "public", "--yes", "--json")
    assert plain.code == 0, plain.err
    plain_run = plain.json()["run"]
    assert plain.json()["counts"] == {"sent": 4, "suppressed": 1, "failed": 1}

    # 2. Paused mid-way (messages still queued), seen paused, a worker leaves it alone, resumed.
    paused_run = make_run(engine, store, SystemClock(), ["public"])
    Dispatcher(
        engine, PausingProvider(sent_file, engine, paused_run), SystemClock(), batch=1
    ).run_until_idle()
    shown = cli("runs", "show", paused_run, "--json").json()
    assert shown["status"] == "paused" and shown["counts"]["queued"] >= 1
    queued_while_paused = shown["counts"]["queued"]
    assert cli("worker", "--once").code == 0
    assert cli("runs", "show", paused_run, "--json").json()["counts"]["queued"] == queued_while_paused
    resumed = cli("runs", "resume", paused_run, "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["counts"] == {"sent": 4, "suppressed": 1, "failed": 1}

    # 3. Cancelled mid-way: the queued messages become cancelled; what was in flight was sent.
    cancelled_run = make_run(engine, store, SystemClock(), ["public"])
    Dispatcher(
        engine, PausingProvider(sent_file, engine, cancelled_run), SystemClock(), batch=1
    ).run_until_idle()
    cancelled = cli("runs", "cancel", cancelled_run, "--json")
    assert cancelled.code == 0, cancelled.err
    assert cancelled.json()["cancelled"] == queued_while_paused
    assert cli("worker", "--once").code == 0  # housekeeping completes the cancelled run

    # 4. Quiet hours in force now: nothing goes, every message says until when.
    quiet = cli("send", "-t", "notice", "-l", "public", "--yes", "--json", "--quiet-hours", quiet_now())
    assert quiet.code == 0, quiet.err
    quiet_run = quiet.json()["run"]
    assert quiet.json()["counts"] == {"queued": 4, "suppressed": 1, "failed": 1}
    deferred = message_of(cli, quiet_run, PUBLIC[0])
    held = [e for e in show(cli, deferred["id"])["events"] if e["source"] == "quiet-hours"]
    assert len(held) == 1 and held[0]["detail"]["reason"] == "deferred: quiet hours"
    until = datetime.fromisoformat(held[0]["detail"]["until"])
    assert until > datetime.now(UTC)
    check = cli("audit", "check", quiet_run, "--json")
    assert check.code == 0, check.out + check.err  # pending while the run goes on is no issue
    assert check.json()["pending_total"] == 4
    assert {p["next_attempt_at"] for p in check.json()["pending"]} == {until.isoformat()}

    # 5. The provider refuses two numbers for good; 21610 also opts the number out.
    refused_run = make_run(engine, store, SystemClock(), ["refusals"])
    Dispatcher(engine, RefusingProvider(sent_file), SystemClock()).run_until_idle(refused_run)

    # The quiet hours end: a dispatcher sends the held messages then.
    after = ManualClock(until + timedelta(seconds=5))
    Dispatcher(engine, LogProvider(sent_file, after), after).run_until_idle(quiet_run)

    runs = {r["id"]: r for r in map(json.loads, cli("runs", "--json").out.splitlines())}
    assert set(runs) == {plain_run, paused_run, cancelled_run, quiet_run, refused_run}
    assert {r["status"] for r in runs.values()} == {"completed", "cancelled"}
    for run_id, run in runs.items():
        result = cli("audit", "check", run_id, "--json")
        assert result.code == 0, (run_id, result.out, result.err)
        check = result.json()
        assert check["ok"] and check["issues"] == [] and check["pending_total"] == 0
        assert check["counts"] == run["counts"]
        assert check["counts_total"] == check["intended"] == run["intended"] == check["messages"]
        log = cli("log", "--run", run_id, "--format", "jsonl").out.splitlines()
        assert Counter(json.loads(line)["status"] for line in log) == Counter(run["counts"])
        audit_log = cli("audit", "log", "--run", run_id, "--json", "--limit", 1000).json()
        assert Counter(m["status"] for m in audit_log) == Counter(run["counts"])
    assert runs[cancelled_run]["status"] == "cancelled"
    assert runs[cancelled_run]["counts"] == {
        "sent": 6 - 2 - queued_while_paused,
        "suppressed": 1,
        "failed": 1,
        "cancelled": queued_while_paused,
    }
    assert runs[refused_run]["counts"] == {"sent": 1, "failed": 2}

    verified = cli("audit", "verify", "--json")
    assert verified.code == 0, verified.out + verified.err
    assert verified.json()["ok"] and verified.json()["chains"]["message_events"]["unsealed"] == 0

    # audit show explains each special case.
    suppressed = show(cli, message_of(cli, plain_run, OPTED_OUT)["id"])
    assert (
        suppressed["message"]["status"] == "suppressed" and suppressed["message"]["error_text"] == "opted out"
    )
    (optout,) = [a for a in suppressed["actions"] if a["action"] == "optout.added"]
    assert optout["details"]["source"] == "operator" and optout["actor"] == "operator" and optout["host"]

    unrendered = show(cli, message_of(cli, plain_run, NO_CITY)["id"])["message"]
    assert unrendered["status"] == "failed" and unrendered["error_code"] == "template"
    assert "city" in unrendered["error_text"]

    paused_history = show(cli, message_of(cli, paused_run, PUBLIC[-1])["id"])
    names = [a["action"] for a in paused_history["actions"]]
    assert names.index("run.paused") < names.index("run.resumed")

    cancelled_history = show(cli, message_of(cli, cancelled_run, PUBLIC[-1])["id"])
    assert cancelled_history["message"]["status"] == "cancelled"
    assert cancelled_history["events"][-1]["detail"]["reason"] == "run cancelled"
    assert "run.cancelled" in [a["action"] for a in cancelled_history["actions"]]

    went = show(cli, deferred["id"])
    assert [e["to_status"] for e in went["events"]] == ["queued", "queued", "sending", "sent"]
    assert datetime.fromisoformat(went["message"]["sent_at"]) >= until

    invalid = show(cli, message_of(cli, refused_run, INVALID)["id"])
    assert invalid["message"]["error_code"] == "21211" and "not a valid" in invalid["message"]["error_text"]
    assert invalid["events"][-1]["detail"]["code"] == "21211"

    stopped = show(cli, message_of(cli, refused_run, STOPPED)["id"])
    assert stopped["message"]["status"] == "failed" and stopped["message"]["error_code"] == "21610"
    (provider_optout,) = [a for a in stopped["actions"] if a["action"] == "optout.added"]
    assert provider_optout["details"]["source"] == "provider"
    assert provider_optout["actor"].startswith("provider:")
