"""A background thread that fetches into a bounded queue, for sources whose reads block (HTTP APIs, Kinesis).

Invariants: the queue never holds more than ``capacity`` items (the fetch blocks while it is full); after
:meth:`PrefetchThread.stop` nothing more is put; an exception escaping :meth:`PrefetchThread.fetch` arrives as a
:class:`FetchFailed`, the last item, for the partition to raise in ``next_batch``."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class FetchFailed:
    error: BaseException


class PrefetchThread(Generic[Item]):
    """Subclasses implement :meth:`fetch` (loop until :attr:`stopping` is set, :meth:`put` what they read)."""

    def __init__(self, name: str, capacity: int) -> None:
        self.queue: queue.Queue[Item | FetchFailed] = queue.Queue(maxsize=capacity)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def fetch(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.fetch()
        except BaseException as exc:  # noqa: BLE001 - handed to the partition, which raises it in next_batch
            self.put(FetchFailed(exc))

    def put(self, item: Item | FetchFailed) -> None:
        """Block while the queue is full; give up once stopping."""
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
