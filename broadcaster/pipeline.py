"""A one-stage pipeline: the caller prepares items while a background thread consumes them.

Why: an import is half Python (CSV, phone numbers) and half database work, and SQLite and psycopg
release the GIL while they execute a statement. Preparing chunk k+1 while chunk k is written keeps
both cores of a small machine busy. The queue is bounded, so memory stays flat.

Errors: an exception in the consumer is raised in the caller at its next :meth:`put` (or on
leaving the ``with`` block); later items are then dropped, never consumed. If the caller fails, the
consumer finishes the item in hand (a transaction is never cut in half by this class) and drops
the rest.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class Pipeline(Generic[T]):
    def __init__(self, consume: Callable[[T], None], *, depth: int = 2, name: str = "pipeline") -> None:
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Pipeline[T]:
        self._thread.start()
        return self

    def put(self, item: T) -> None:
        """Hand an item over; blocks while ``depth`` items are waiting."""
        self._put(item)
        if self._error is not None:
            raise self._error

    def _put(self, item: Any) -> None:
        while True:
            if item is not _STOP and self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                if item is _STOP:
                    return
                raise self._error or RuntimeError("pipeline consumer is gone")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._abort:
                continue  # drain without consuming, so that the producer never blocks
            try:
                self._consume(item)
            except BaseException as exc:  # re-raised in the producer's thread
                self._error = exc

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._abort = True
        self._put(_STOP)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error
