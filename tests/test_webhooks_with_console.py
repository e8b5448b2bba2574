"""`webhooks serve --with-console`: webhooks and the audit console share one real process."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from tests.conftest import subprocess_env


def test_webhooks_process_also_serves_the_console_behind_login(sqlite_url: str, tmp_path) -> None:
    env = subprocess_env(
        BROADCASTER_DATABASE_URL=sqlite_url,
        BROADCASTER_VAR_DIR=str(tmp_path / "var"),
        TWILIO_AUTH_TOKEN="test-token-not-secret",
        TWILIO_ACCOUNT_SID="AC" + "0" * 32,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster", "webhooks", "serve", "--port", "0", "--with-console"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = json.loads(proc.stdout.readline())["base_url"]
        assert httpx.get(f"{base}/healthz").status_code == 200
        page = httpx.get(f"{base}/console/", follow_redirects=False)
        assert page.status_code in (302, 303, 307)
        assert "/console/login" in page.headers["location"]
        assert httpx.post(f"{base}/twilio/status", data={"MessageSid": "SMx"}).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=10)
