"""Overlap producing a stream's next items with consuming the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_END = object()


def prefetched(items: Iterable[T], depth: int = 1) -> Generator[T, None, None]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    Worth it when both sides spend their time outside the GIL (Arrow parsing the next
    manifest block while Parquet encodes the current one). An exception in the producer
    is raised in the consumer at the same point of the stream; a consumer that stops
    early stops the producer at its next item.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # handed over, raised in the consumer
            put(_Raised(exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator's cleanup runs here, not at collection
                close()
        put(_END)

    worker = threading.Thread(target=produce, name="neurolens-prefetch", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
