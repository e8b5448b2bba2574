"""Where the dispatcher's provider calls run: a pool of threads, or one event-loop thread.

Both take claimed messages from the dispatcher's loop thread (``submit``), run the dispatcher's
attempt for each with at most ``concurrency`` at once, in the order submitted, and on ``shutdown``
wait until every submitted attempt has finished (attempts not started by then see the dispatcher's
halt flag and hand their message back). The attempt itself reports its outcome; a sender never
touches the database.

The event-loop sender is for providers with ``send_async`` (the Twilio adapter): one thread keeps
hundreds of requests in flight at a fraction of the CPU a thread per request costs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from broadcaster.claims import Claimed


class Sender(Protocol):
    def submit(self, messages: Sequence[Claimed]) -> None: ...

    def shutdown(self) -> None: ...


class ThreadSender:
    """Attempts on a pool of ``concurrency`` threads (providers with a blocking ``send``)."""

    def __init__(self, attempt: Callable[[Claimed], None], concurrency: int) -> None:
        self._attempt = attempt
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")

    def submit(self, messages: Sequence[Claimed]) -> None:
        for msg in messages:
            self._pool.submit(self._attempt, msg)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class LoopSender:
    """Attempts as tasks of one event loop in its own thread, ``concurrency`` at a time.

    ``close`` runs on the loop after the last attempt (the provider releases its HTTP session)."""

    def __init__(
        self,
        attempt: Callable[[Claimed], Awaitable[None]],
        concurrency: int,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._attempt = attempt
        self._close = close
        self._concurrency = concurrency
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="send-loop", daemon=True)
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._slots = asyncio.Semaphore(self._concurrency)
        self._loop.call_soon(started.set)
        try:
            self._loop.run_forever()
            if self._close is not None:
                self._loop.run_until_complete(self._close())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def submit(self, messages: Sequence[Claimed]) -> None:
        self._loop.call_soon_threadsafe(self._start, list(messages))

    def _start(self, messages: list[Claimed]) -> None:
        for msg in messages:
            task = self._loop.create_task(self._one(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, msg: Claimed) -> None:
        assert self._slots is not None
        async with self._slots:  # waiters are woken first come, first served: claim order holds
            await self._attempt(msg)

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def shutdown(self) -> None:
        """Wait for every submitted attempt (submissions before this call are all started first)."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
