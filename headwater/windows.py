"""Event-time window specs (what a window is; the window operators in :mod:`headwater.operators.windows` assign
rows to windows).

Times are integers in milliseconds since the epoch. A window ``[start, end)`` contains the events with
``start <= t < end``; its results carry ``window_start`` and ``window_end`` columns.

* :class:`TumblingWindow` — fixed, non-overlapping: ``start = floor(t / size) * size``.
* :class:`SlidingWindow` — ``size`` long, a new one every ``slide``: each event belongs to about
  ``size / slide`` windows.
* :class:`SessionWindow` — per key, a window that stays open while events keep arriving less than ``gap``
  apart; sessions that come within ``gap`` of each other merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from headwater.errors import ConfigError


def _millis(value: timedelta | float | int | None, name: str, **parts: float) -> int:
    if value is None:
        seconds = sum(parts.values()) if parts else None
        if not seconds:
            raise ConfigError(f"{name} needs a positive duration, e.g. {name}(seconds=10)")
        value = timedelta(seconds=seconds)
    if isinstance(value, (int, float)):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise ConfigError(f"{name}: durations are datetime.timedelta or seconds, got {value!r}")
    millis = int(value / timedelta(milliseconds=1))
    if millis <= 0:
        raise ConfigError(f"{name} needs a positive duration of at least 1 ms, got {value!r}")
    return millis


@dataclass(frozen=True, init=False)
class TumblingWindow:
    size_ms: int

    def __init__(self, size: timedelta | float | None = None, *, seconds: float = 0, minutes: float = 0,
                 milliseconds: float = 0) -> None:
        object.__setattr__(self, "size_ms", _millis(size, "TumblingWindow", s=seconds, m=minutes * 60,
                                                    ms=milliseconds / 1000))


    def __repr__(self) -> str:
        return f"TumblingWindow({self.size_ms} ms)"


@dataclass(frozen=True, init=False)
class SlidingWindow:
    size_ms: int
    slide_ms: int

    def __init__(self, size: timedelta | float, slide: timedelta | float) -> None:
        size_ms = _millis(size, "SlidingWindow size")
        slide_ms = _millis(slide, "SlidingWindow slide")
        if slide_ms > size_ms or size_ms % slide_ms:
            raise ConfigError(
                f"SlidingWindow size ({size_ms} ms) must be a multiple of its slide ({slide_ms} ms), e.g. "
                "size=10 s with slide=2 s"
            )
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "slide_ms", slide_ms)


    def __repr__(self) -> str:
        return f"SlidingWindow({self.size_ms} ms every {self.slide_ms} ms)"


@dataclass(frozen=True, init=False)
class SessionWindow:
    gap_ms: int

    def __init__(self, gap: timedelta | float | None = None, *, seconds: float = 0, minutes: float = 0) -> None:
        object.__setattr__(self, "gap_ms", _millis(gap, "SessionWindow", s=seconds, m=minutes * 60))

    def __repr__(self) -> str:
        return f"SessionWindow(gap {self.gap_ms} ms)"


Window = TumblingWindow | SlidingWindow | SessionWindow
