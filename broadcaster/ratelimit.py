"""Per-sender rate limits: a token bucket keeps an even pace, a one-second window is the hard cap.

A token bucket alone lets ``burst + rate`` through in a second; with a tiny bucket it cannot take a
message that costs several segments. So the bucket (capacity 25 ms of the rate, at least one
unit: a sender that wakes up late, as threads and event loops do now and then, catches up instead
of losing the time) only paces, and a sliding one-second ledger of what was let through refuses
anything that would put more than ``rate`` units into any one-second window. A single message that
costs more than a whole second's allowance goes alone, once the window is empty.

Time is injected (``monotonic``, ``sleep`` and ``async_sleep``) so tests drive it without waiting.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

WINDOW = 1.0  # seconds
BURST_SECONDS = 0.025  # bucket capacity, in seconds of the rate
_EPSILON = 1e-9
_MIN_WAIT = 1e-6


@dataclass
class _SenderState:
    tokens: float
    updated: float
    sent: deque[tuple[float, float]] = field(default_factory=deque)  # (time, cost) within the window
    in_window: float = 0.0


class RateLimiter:
    """``rate`` units (messages or segments) per second for each sender key, shared by threads."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (no limiter at all means no limit)")
        self.rate = rate
        self._default_burst = burst is None
        self.burst = burst if burst is not None else max(1.0, rate * BURST_SECONDS)
        self.monotonic = monotonic
        self.sleep = sleep
        self.async_sleep = async_sleep
        self._senders: dict[str, _SenderState] = {}
        self._lock = threading.Lock()
        # Waiters for one key queue at a gate, so only the first in line polls the bucket: a hundred
        # requests waiting for their turn cost one wake-up per token, not a hundred.
        self._gates: dict[str, threading.Lock] = {}
        self._async_gates: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            WeakKeyDictionary()
        )

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (a shared limit divided anew); the one-second window keeps what was
        let through, so a lower rate also holds for the window already under way."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        with self._lock:
            self.rate = rate
            if self._default_burst:  # a burst given by the caller stays as given
                self.burst = max(1.0, rate * BURST_SECONDS)

    def try_take(self, key: str, cost: float) -> float:
        """Take ``cost`` units for ``key`` now and return 0, or return how long to wait (taking nothing)."""
        with self._lock:
            now = self.monotonic()
            state = self._senders.get(key)
            if state is None:
                # One unit to start with, not a full bucket: the first second is not front-loaded.
                state = self._senders[key] = _SenderState(tokens=min(self.burst, 1.0), updated=now)
            state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate)
            state.updated = now
            while state.sent and state.sent[0][0] <= now - WINDOW:
                state.in_window -= state.sent.popleft()[1]
            shortfall = min(cost, self.burst) - state.tokens
            bucket_wait = shortfall / self.rate if shortfall > _EPSILON else 0.0
            wait = max(bucket_wait, self._window_wait(state, cost, now))
            if wait > 0:
                return max(wait, _MIN_WAIT)  # float rounding must not spin on a zero-length sleep
            state.tokens -= cost  # may go below zero for a costly message: the pace then catches up
            state.sent.append((now, cost))
            state.in_window += cost
            return 0.0

    def _window_wait(self, state: _SenderState, cost: float, now: float) -> float:
        if not state.sent or state.in_window + cost <= self.rate + _EPSILON:
            return 0.0
        # Wait until enough of the oldest entries leave the window (or all, for an oversized message).
        remaining = state.in_window
        for at, spent in state.sent:
            remaining -= spent
            if remaining + cost <= self.rate + _EPSILON or remaining <= _EPSILON:
                return max(at + WINDOW - now, _MIN_WAIT)
        return _MIN_WAIT  # unreachable: the loop ends with remaining == 0

    def acquire(self, key: str, cost: float, cancel: threading.Event | None = None) -> bool:
        """Block until ``cost`` units are taken; False if ``cancel`` was set meanwhile (nothing taken)."""
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            while True:
                if cancel is not None and cancel.is_set():
                    return False
                wait = self.try_take(key, cost)
                if wait <= 0:
                    return True
                self.sleep(wait)

    async def acquire_async(self, key: str, cost: float, cancel: threading.Event | None = None) -> bool:
        """:meth:`acquire` for an event loop (waits with the injected ``async_sleep``)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            gate = self._async_gates.setdefault(loop, {}).setdefault(key, asyncio.Lock())
        async with gate:
            while True:
                if cancel is not None and cancel.is_set():
                    return False
                wait = self.try_take(key, cost)
                if wait <= 0:
                    return True
                await self.async_sleep(wait)


def default_concurrency(rate: float, latency: float = 0.2, *, event_loop: bool = False) -> int:
    """Requests in flight needed to reach ``rate`` requests/s when each takes ``latency`` s.

    Threads: 25% headroom, at most 64 (8 without a limit). The event loop keeps a request in flight
    for the cost of a task, so it takes twice the need (a provider slower than ``latency`` still
    gets the full rate; the limiter, not the pool, sets the pace), at most 256 (32 without a limit).
    """
    if event_loop:
        return 32 if rate <= 0 else max(1, min(256, math.ceil(rate * latency * 2)))
    if rate <= 0:
        return 8
    return max(1, min(64, math.ceil(rate * latency * 1.25)))
