"""The main job (`broadcaster demo`, what `scripts/demo` runs) in a real process, twice."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import REPO, subprocess_env


def _demo(tmp_path: Path) -> dict:
    env = subprocess_env(
        BROADCASTER_TEMPLATES_DIR=str(REPO / "templates"),
        BROADCASTER_RECIPIENTS_DIR=str(REPO / "recipients"),
        BROADCASTER_RATE_LIMIT="0",
    )
    for key in ("BROADCASTER_DATABASE_URL", "BROADCASTER_VAR_DIR", "BROADCASTER_PROVIDER"):
        env.pop(key, None)  # the embedded defaults: ./var/broadcaster.db and the log provider
    done = subprocess.run(
        [sys.executable, "-m", "broadcaster", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_demo_imports_sends_once_and_is_idempotent(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert (tmp_path / "var" / "broadcaster.db").is_file()
    assert [i["list"] for i in first["imports"]] == ["public", "bureau-contacts", "machinery"]
    public = first["imports"][0]
    assert public["imported"] > 0 and public["rejected"] > 0  # the sample shows bad rows too
    assert first["created"] is True
    assert first["counts"] == {"sent": first["intended"]}
    sent = [json.loads(line) for line in (tmp_path / "var" / "log-provider.jsonl").read_text().splitlines()]
    assert len(sent) == first["intended"] == public["imported"]
    assert max(Counter(m["to"] for m in sent).values()) == 1
    assert all(m["body"].startswith("【") for m in sent)

    second = _demo(tmp_path)
    assert second["run"] == first["run"] and second["created"] is False
    assert all(i["imported"] == 0 and i["updated"] == 0 for i in second["imports"])
    assert second["counts"] == first["counts"]
    assert len((tmp_path / "var" / "log-provider.jsonl").read_text().splitlines()) == len(sent)
