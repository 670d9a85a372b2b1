"""Reading and writing the access files under ``<store>/access/`` (``tokens.json``, ``policy.json``).

Invariants: each file is JSON (never pickle: nothing read is executed), replaced atomically under the access
directory's lock (:func:`headwater.store.layout.table_lock` on ``<store>/access``), created with mode 0600 and
re-read by running servers when its (mtime, size) changes, so CLI changes apply without a restart.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Generic, Iterator, TypeVar

from headwater.store.layout import read_json, table_lock, write_json_atomic

ACCESS_DIR = "access"
T = TypeVar("T")


def access_dir(root: str) -> str:
    return os.path.join(root, ACCESS_DIR)


@contextmanager
def locked(root: str) -> Iterator[None]:
    directory = access_dir(root)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with table_lock(directory):
        yield


def write_private(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` atomically, readable by the owner only."""
    old = os.umask(0o077)
    try:
        write_json_atomic(path, document)
    finally:
        os.umask(old)


class Watched(Generic[T]):
    """A parsed file, parsed again only when its (mtime, size) changes; ``parse(None)`` for a missing file."""

    def __init__(self, path: str, parse: Callable[[dict[str, Any] | None], T]) -> None:
        self.path = path
        self.parse = parse
        self._stamp: tuple[int, int] | None = None
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = (-1, -1)
        with self._lock:
            if stamp != self._stamp or self._value is None:
                self._value = self.parse(read_json(self.path))
                self._stamp = stamp
            return self._value
