"""What to do after a provider error, and when to try again.

The adapter classifies its own errors (``ProviderError.transient``, ``accepted_maybe``, ``opt_out``);
this module only turns that classification and the attempt count into a decision, so the policy
is one pure function the tests can drive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from broadcaster.providers.base import ProviderError


class Decision(Enum):
    UNKNOWN = "unknown"  # the request may have reached the provider: reconcile, never resend blindly
    RETRY = "retry"  # surely not accepted, worth another try later
    FAIL = "fail"  # permanent, or out of attempts


def decide(exc: ProviderError, attempts: int, max_attempts: int) -> Decision:
    """``attempts`` counts the attempt that just failed (the first one is 1)."""
    if exc.accepted_maybe:
        return Decision.UNKNOWN
    if exc.transient and not exc.opt_out and attempts < max_attempts:
        return Decision.RETRY
    return Decision.FAIL


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random, capped."""

    base: float = 2.0
    cap: float = 300.0

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        step = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        return timedelta(seconds=step / 2 + rng.uniform(0, step / 2))
