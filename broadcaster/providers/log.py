"""The embedded default provider: sends nothing, appends each message as a JSON line to a file.

It can look messages up (by reading its file), so it takes part in reconciliation like a real one.
``delay`` (BROADCASTER_LOG_PROVIDER_DELAY_MS) simulates a provider's latency, half before the message
is recorded and half after, so a crash can fall on either side of "the provider has it".
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from broadcaster.clock import Clock, SystemClock
from broadcaster.providers.base import Accepted, Found, Outbound


class LogProvider:
    name = "log"
    can_lookup = True

    def __init__(self, path: Path, clock: Clock | None = None, delay: float = 0.0) -> None:
        self.path = Path(path)
        self.clock = clock or SystemClock()
        self.delay = delay
        self._lock = threading.Lock()
        self._tail_checked = False
        self._indexed_up_to = 0  # bytes of the file already indexed for lookups
        self._by_recipient: dict[str, list[Found]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: Outbound) -> Accepted:
        if self.delay:
            time.sleep(self.delay / 2)
        provider_id = "LG" + uuid.uuid4().hex
        record = {
            "sid": provider_id,
            "message_id": message.message_id,
            "to": message.to,
            "from": message.sender,
            "body": message.body,
            "at": self.clock.now().isoformat(),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            if not self._tail_checked:  # a torn last line left by a crash must not swallow this record
                self._tail_checked = True
                if fh.tell() and not self._ends_with_newline():
                    line = "\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if self.delay:
            time.sleep(self.delay / 2)
        return Accepted(provider_id=provider_id, status="sent")

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def lookup(self, to: str, since: datetime) -> list[Found]:
        """Messages to ``to`` recorded at or after ``since`` (by any process writing the file).

        The file is read incrementally: complete lines past the last read are indexed by recipient,
        so reconciling many messages after a crash does not re-read the whole file each time."""
        with self._lock:
            self._read_new_lines()
            return [f for f in self._by_recipient.get(to, []) if f.created_at and f.created_at >= since]

    def _read_new_lines(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._indexed_up_to)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for next time
        self._indexed_up_to += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write: that message was not sent
            found = Found(rec["sid"], rec["to"], rec["body"], "sent", datetime.fromisoformat(rec["at"]))
            self._by_recipient.setdefault(found.to, []).append(found)
