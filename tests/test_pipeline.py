"""The import's producer/consumer pipeline: order, errors in either thread, bounded queue."""

from __future__ import annotations

import threading

import pytest

from broadcaster.pipeline import Pipeline


def test_items_are_consumed_in_order_in_another_thread() -> None:
    seen: list[tuple[int, str]] = []
    with Pipeline(lambda item: seen.append((item, threading.current_thread().name)), name="writer") as p:
        for i in range(100):
            p.put(i)
    assert [i for i, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"writer"}


def test_a_consumer_error_reaches_the_producer_and_later_items_are_dropped() -> None:
    consumed: list[int] = []

    def consume(item: int) -> None:
        if item == 3:
            raise ValueError("disk full")
        consumed.append(item)

    with pytest.raises(ValueError, match="disk full"), Pipeline(consume, depth=1) as p:
        for i in range(1000):
            p.put(i)
    assert consumed == [0, 1, 2]


def test_a_consumer_error_on_the_last_item_is_raised_on_exit() -> None:
    def consume(item: int) -> None:
        raise RuntimeError(f"bad item {item}")

    with pytest.raises(RuntimeError, match="bad item 0"), Pipeline(consume) as p:
        p.put(0)


def test_a_producer_error_stops_the_consumer_without_consuming_the_rest() -> None:
    gate = threading.Event()
    consumed: list[int] = []

    def consume(item: int) -> None:
        gate.wait(5)
        consumed.append(item)

    with pytest.raises(KeyError), Pipeline(consume, depth=2) as p:
        p.put(0)  # taken by the consumer, which waits at the gate
        p.put(1)
        p.put(2)  # queued
        threading.Timer(0.2, gate.set).start()  # opens after the pipeline has been told to stop
        raise KeyError("interrupted")
    assert consumed == [0]  # the item in hand is finished; what was still queued is dropped
