"""The log provider as a participant in reconciliation: lookups by recipient and time, across
processes writing the same file, and a record torn by a crash never swallowing the next one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from broadcaster.clock import ManualClock
from broadcaster.providers.base import Outbound
from broadcaster.providers.log import LogProvider


def test_lookup_finds_what_was_recorded_since_a_time_including_other_writers(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    path = tmp_path / "sent.jsonl"
    mine, other = LogProvider(path, clock), LogProvider(path, clock)
    first = mine.send(Outbound(1, "+8613800000001", "好质量 好生活"))
    clock.advance(timedelta(minutes=5))
    assert [f.provider_id for f in mine.lookup("+8613800000001", clock.now() - timedelta(minutes=6))] == [
        first.provider_id
    ]
    assert mine.lookup("+8613800000001", clock.now()) == []
    second = other.send(Outbound(2, "+8613800000001", "质量月"))  # another process, same file
    found = mine.lookup("+8613800000001", clock.now())
    assert [(f.provider_id, f.body) for f in found] == [(second.provider_id, "质量月")]
    assert mine.lookup("+8613800000002", clock.now() - timedelta(days=1)) == []


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2011, 8, 31, 1, 0, tzinfo=UTC))
    path = tmp_path / "sent.jsonl"
    path.write_text('{"sid": "LGtorn", "to": "+8613800000001", "bo', encoding="utf-8")  # killed mid-write
    provider = LogProvider(path, clock)
    accepted = provider.send(Outbound(1, "+8613800000001", "质量月"))
    found = provider.lookup("+8613800000001", clock.now() - timedelta(hours=1))
    assert [f.provider_id for f in found] == [accepted.provider_id]
    assert path.read_text(encoding="utf-8").count("\n") == 2
