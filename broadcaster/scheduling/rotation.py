"""Slogan rotation: the pick is a pure function of (pool, order, seed, occurrence index).

- ``in-order``: occurrence k gets pool[k mod n]: 1, 2, ..., n, 1, 2, ...
- ``shuffled``: each cycle of n occurrences is a permutation of the pool, seeded by the job and the
  cycle number, so no slogan repeats within a cycle; when a new cycle would start with the slogan
  that ended the previous one, its first two picks are swapped, so none repeats back to back.

Nothing is counted in memory: a catch-up after downtime or a restarted daemon sends the slogan
that was due for that occurrence, never skips one, never repeats one out of turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

IN_ORDER = "in-order"
SHUFFLED = "shuffled"


@dataclass(frozen=True)
class Pool:
    slogans: tuple[str, ...]
    order: str  # in-order | shuffled
    seed: str  # the job key: two jobs shuffle differently, one job always the same way
    source: str  # the file it came from, or "inline"

    def pick(self, index: int) -> Pick:
        n = len(self.slogans)
        if index < 0:
            raise ValueError("occurrence index must be >= 0")
        cycle, position = divmod(index, n)
        slot = position if self.order == IN_ORDER else _cycle_order(self.seed, n, cycle)[position]
        return Pick(text=self.slogans[slot], number=slot + 1, index=index, cycle=cycle + 1)


@dataclass(frozen=True)
class Pick:
    text: str
    number: int  # 1-based position of the slogan in its pool (as listed in the file)
    index: int  # 0-based index of the occurrence since the job's start
    cycle: int  # 1-based: how many times round the pool


def _permutation(seed: str, n: int, cycle: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}#{cycle}").shuffle(order)  # str seeds are hashed with SHA-512: stable
    return order


@lru_cache(maxsize=1024)
def _cycle_order(seed: str, n: int, cycle: int) -> tuple[int, ...]:
    if n <= 2:
        # Two slogans without a back-to-back repeat can only alternate; keep cycle 0's order.
        return tuple(_permutation(seed, n, 0))
    order = _permutation(seed, n, cycle)
    # With n >= 3, swapping the first two never changes a cycle's last pick, so this only needs
    # the previous cycle's raw permutation: no chain back to cycle 0.
    if cycle > 0 and order[0] == _permutation(seed, n, cycle - 1)[-1]:
        order[0], order[1] = order[1], order[0]
    return tuple(order)
