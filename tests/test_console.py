"""The audit console over HTTP: login, roles, sessions that expire, CSRF, masking, exports, mounting.
(The same console in a real browser: test_console_browser.py.)"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_helpers import PHONES
from console_helpers import PASSWORDS, ConsoleWorld, console_app, console_world
from fastapi import FastAPI
from fastapi.testclient import TestClient

from broadcaster import db
from broadcaster.accounts import check_password, hash_password
from broadcaster.models import Action, ConsoleSession, ConsoleUser

PAGES = ["/", "/runs/1", "/runs/1/report.html", "/messages", "/messages/1", "/trail", "/exports", "/verify"]


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path) -> ConsoleWorld:
    return console_world(sqlite_url, tmp_path)


def login(client: TestClient, user: str, password: str | None = None, prefix: str = "") -> object:
    page = client.get(f"{prefix}/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        f"{prefix}/login",
        data={"username": user, "password": password or PASSWORDS[user], "csrf_token": token, "next": ""},
        follow_redirects=False,
    )


def csrf(client: TestClient, path: str = "/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def actions(world: ConsoleWorld, name: str) -> list[dict]:
    t = Action.__table__
    with db.reading(world.engine) as conn:
        return [
            dict(r) for r in conn.execute(sa.select(t).where(t.c.action == name).order_by(t.c.id)).mappings()
        ]


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$") and "correct" not in first
    assert check_password("correct horse", first) and not check_password("wrong horse", first)
    assert not check_password("x", "garbage")


def test_no_page_or_export_without_a_session(world: ConsoleWorld) -> None:
    client = TestClient(console_app(world))
    for path in PAGES:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next="), path
    for path in ("/exports", "/logout"):
        assert (
            client.post(path, data={"what": "messages", "format": "csv"}, follow_redirects=False).status_code
            == 303
        )
    client.cookies.set("bc_console_session", "forged-token")
    assert client.get("/messages", follow_redirects=False).status_code == 303
    login_page = client.get("/login")
    assert login_page.status_code == 200 and PHONES[1] not in login_page.text
    assert login_page.headers["content-security-policy"].startswith("default-src 'none'")
    assert login_page.headers["x-frame-options"] == "DENY"


def test_login_needs_the_right_password_and_the_form_token(world: ConsoleWorld) -> None:
    client = TestClient(console_app(world))
    assert login(client, "alice", "not-her-password").status_code == 401
    assert login(client, "mallory", "whatever-password").status_code == 401
    assert [a["details"]["user"] for a in actions(world, "console.login_failed")] == ["alice", "mallory"]
    forged = TestClient(console_app(world)).post(
        "/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": "x"}
    )
    assert forged.status_code == 403
    ok = login(client, "alice")
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert "bc_console_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    with db.reading(world.engine) as conn:
        stored = conn.execute(sa.select(ConsoleSession.__table__.c.token_sha256)).scalar_one()
    assert stored != client.cookies.get("bc_console_session")  # only the token's hash is kept
    [action] = actions(world, "console.login")
    assert action["actor"] == "alice" and action["host"] == "testclient"


def test_auditor_reads_masked_and_cannot_unmask_or_export(world: ConsoleWorld) -> None:
    client = TestClient(console_app(world))
    login(client, "alice")
    runs = client.get("/")
    assert runs.status_code == 200 and "/runs/1" in runs.text
    run = client.get("/runs/1")
    assert run.status_code == 200 and "<svg" in run.text and "21211" in run.text
    log = client.get("/messages", params={"run": "1", "status": "delivered"})
    assert log.status_code == 200 and "+86 138****8001" in log.text and PHONES[1] not in log.text
    assert "3 message(s) match" in log.text
    history = client.get("/messages/1")
    assert history.status_code == 200 and "sending" in history.text and PHONES[1] not in history.text
    assert "+86 138****8003" in client.get("/trail").text
    assert client.get("/messages", params={"unmask": "1"}).status_code == 403
    assert client.get("/exports").status_code == 403
    token = csrf(client)
    refused = client.post("/exports", data={"csrf_token": token, "what": "messages", "format": "csv"})
    assert refused.status_code == 403 and actions(world, "audit.exported") == []
    bad_filter = client.get("/messages", params={"since": "someday"})
    assert bad_filter.status_code == 400 and "since" in bad_filter.text
    assert "Both chains verify" in client.get("/verify").text


def test_supervisor_unmasks_and_exports_and_both_are_recorded(world: ConsoleWorld) -> None:
    client = TestClient(console_app(world))
    login(client, "sam")
    full = client.get("/messages", params={"phone": "8001", "unmask": "1"})
    assert full.status_code == 200 and PHONES[1] in full.text
    [unmasked] = actions(world, "audit.unmasked")
    assert unmasked["actor"] == "sam" and unmasked["details"]["filters"] == {"phone": "8001"}
    assert (
        client.post("/exports", data={"what": "messages", "format": "csv"}).status_code == 403
    )  # no CSRF token
    token = csrf(client, "/exports")
    export = client.post(
        "/exports", data={"csrf_token": token, "what": "messages", "format": "csv", "status": "failed"}
    )
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert {r["phone"] for r in rows} == {"'+1 50****0001", "'+86 138****8005"}
    [recorded] = actions(world, "audit.exported")
    assert recorded["actor"] == "sam" and recorded["details"]["via"] == "console"
    assert recorded["details"]["unmasked"] is False and recorded["details"]["rows"] == 2
    xlsx = client.post(
        "/exports", data={"csrf_token": token, "what": "trail", "format": "xlsx", "unmask": "1"}
    )
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
    assert actions(world, "audit.exported")[-1]["details"]["unmasked"] is True


def test_sessions_expire_when_idle_or_old_and_end_at_logout(world: ConsoleWorld) -> None:
    clock = world.seeded.clock
    client = TestClient(console_app(world))
    login(client, "alice")
    for _ in range(5):  # active use keeps the session past its idle timeout …
        clock.advance(timedelta(minutes=20))
        assert client.get("/trail", follow_redirects=False).status_code == 200
    clock.advance(timedelta(minutes=21))  # … up to its absolute lifetime (120 minutes)
    assert client.get("/trail", follow_redirects=False).status_code == 303

    login(client, "alice")
    clock.advance(timedelta(minutes=31))
    assert client.get("/trail", follow_redirects=False).status_code == 303

    login(client, "alice")
    assert client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    out = client.post("/logout", data={"csrf_token": csrf(client)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code == 303
    assert len(actions(world, "console.logout")) == 1


def test_console_mounts_into_another_app(world: ConsoleWorld) -> None:
    parent = FastAPI()

    @parent.get("/health")
    def health() -> dict:
        return {"ok": True}

    parent.mount("/console", console_app(world))
    client = TestClient(parent)
    assert client.get("/health").json() == {"ok": True}
    denied = client.get("/console/messages", follow_redirects=False)
    assert denied.status_code == 303 and denied.headers["location"].startswith("/console/login?next=")
    ok = login(client, "alice", prefix="/console")
    assert ok.status_code == 303 and ok.headers["location"] == "/console/"
    assert "Path=/console/" in ok.headers["set-cookie"]
    page = client.get("/console/")
    assert page.status_code == 200 and 'href="/console/runs/1"' in page.text
    assert client.get("/console/static/console.css").status_code == 200


def test_users_command_adds_lists_and_removes_accounts(workdir: Path, cli) -> None:
    added = cli("users", "add", "li.wei", "--role", "auditor", "--password-stdin", input="a-long-password\n")
    assert added.code == 0, added.err
    assert (
        cli("users", "add", "li.wei", "--role", "auditor", "--password-stdin", input="a-long-password\n").code
        == 1
    )
    short = cli("users", "add", "bo", "--role", "supervisor", "--password-stdin", input="short\n")
    assert short.code == 1 and "too short" in short.err
    assert (
        cli("users", "add", "bo", "--role", "admin", "--password-stdin", input="a-long-password\n").code == 1
    )
    assert cli("users", "add", "bo", "--role", "auditor").code == 2  # no terminal to prompt on
    [user] = cli("users", "list", "--json").json()
    assert (user["name"], user["role"], user["created_by"], user["active_sessions"]) == (
        "li.wei",
        "auditor",
        "tester",
        0,
    )
    assert cli("users", "remove", "li.wei").code == 0
    assert cli("users", "list", "--json").json() == []
    assert cli("users", "remove", "li.wei").code == 1
    trail = [a["action"] for a in cli("audit", "trail", "--json", "--action", "user.").json()]
    assert trail == ["user.removed", "user.added"]


def test_removing_a_user_ends_their_sessions(world: ConsoleWorld) -> None:
    from broadcaster.accounts import remove_user

    client = TestClient(console_app(world))
    login(client, "alice")
    assert client.get("/", follow_redirects=False).status_code == 200
    with db.writing(world.engine) as conn:
        remove_user(conn, "alice", at=world.seeded.clock.now(), actor="admin")
        assert conn.execute(sa.select(sa.func.count()).select_from(ConsoleUser.__table__)).scalar_one() == 1
    assert client.get("/", follow_redirects=False).status_code == 303
