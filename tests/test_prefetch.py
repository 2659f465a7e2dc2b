"""The background producer that overlaps parsing the manifest with writing the index."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from neurolens.storage.index.prefetch import prefetched


def test_items_arrive_in_order_and_are_produced_in_another_thread() -> None:
    producers: set[int] = set()

    def numbers() -> Iterator[int]:
        for i in range(500):
            producers.add(threading.get_ident())
            yield i

    assert list(prefetched(numbers(), depth=3)) == list(range(500))
    assert producers and threading.get_ident() not in producers


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("block 3 is damaged")

    got: list[int] = []
    with pytest.raises(ValueError, match="block 3 is damaged"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()
    produced: list[int] = []

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # what an exception in the consumer's loop does
    assert closed.is_set()
    assert len(produced) <= 3 + 2 + 1  # at most depth ahead, plus the one being handed over
    assert not any(t.name == "neurolens-prefetch" for t in threading.enumerate())
