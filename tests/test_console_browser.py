"""The audit console in a real browser: Playwright driving Debian's Chromium (no browser download).

Serves the console with uvicorn on a free loopback port, then: cannot reach any page logged out; log
in; open a run; filter the message log; export; log out. Fails (never skips) without Chromium."""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from console_helpers import PASSWORDS, ConsoleWorld, console_app, console_world

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["/", "/runs/1", "/messages", "/messages/1", "/trail", "/exports", "/verify"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, ConsoleWorld]]:
    world = console_world(sqlite_url, tmp_path)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(console_app(world), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", world
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); scripts/test does"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_audit_staff_work_through_the_console_in_a_browser(served, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _world = served
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()

    for path in PAGES:  # logged out: every page lands on the login form
        page.goto(base + path)
        assert page.url.startswith(base + "/login"), path
        assert page.locator("input[name=password]").is_visible()

    page.goto(base + "/messages")
    page.fill("input[name=username]", "sam")
    page.fill("input[name=password]", PASSWORDS["sam"])
    page.click("button[type=submit]")
    assert page.url == base + "/messages"  # back where the login was asked for
    assert page.locator("#messages tr").count() == 7  # header + 6 messages

    page.click("nav >> text=Runs")
    page.click("#runs >> text=#1")
    assert page.url == base + "/runs/1"
    assert page.locator(".charts svg").count() == 3
    assert "21211" in page.locator("table.errors").inner_text()

    page.click("nav >> text=Messages")
    page.select_option("select[name=status]", "failed")
    page.fill("input[name=run]", "1")
    page.click("#message-filters button[type=submit]")
    rows = page.locator("#messages tr")
    assert rows.count() == 3
    assert "+1 50****0001" in page.locator("#messages").inner_text()
    assert "status=failed" in page.url

    page.click("nav >> text=Exports")
    page.select_option("select[name=format]", "csv")
    page.fill("#export-form input[name=run]", "1")
    with page.expect_download() as info:
        page.click("#export-form button[type=submit]")
    saved = tmp_path / "export.csv"
    info.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
    assert len(exported) == 6 and all("****" in r["phone"] for r in exported)

    page.click("nav >> text=Trail")
    assert "audit.exported" in page.locator("#trail").inner_text()

    page.click("text=Log out")
    assert page.url.startswith(base + "/login")
    for path in ("/runs/1", "/messages", "/exports"):
        page.goto(base + path)
        assert page.url.startswith(base + "/login"), path
    context.close()
