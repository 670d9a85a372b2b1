"""ScheduledSource: rows on a wall-clock rate schedule, ids split over partitions, lag, resume, bad config."""

from __future__ import annotations

import time

import pytest

from headwater.errors import ConfigError
from headwater.sources import ScheduledSource


def test_the_schedule_releases_rows_phase_by_phase() -> None:
    source = ScheduledSource([(2.0, 100.0), (3.0, 10.0)], partitions=2)
    assert source.released(0) == 0 and source.released(1.0) == 100 and source.released(2.0) == 200
    assert source.released(4.0) == 220 and source.released(99.0) == 230 == source.total


def test_partitions_read_what_was_released_report_the_rest_as_lag_and_resume() -> None:
    source = ScheduledSource([(1.0, 400.0)], partitions=2, started=time.time() - 10, max_batch_rows=50)
    part = source.build_part("p1", None)
    assert part.lag().records == 200, "all released, none read"
    batch = part.next_batch()
    assert batch is not None and batch.column("id").to_pylist() == list(range(1, 100, 2))
    assert part.lag().records == 150 and part.snapshot() == 50
    resumed = source.build_part("p1", part.snapshot())
    ids = []
    while True:
        try:
            b = resumed.next_batch()
        except StopIteration:
            break
        ids += b.column("id").to_pylist() if b is not None else []
    assert ids == list(range(101, 400, 2)) and resumed.lag().records == 0


def test_nothing_before_the_start() -> None:
    part = ScheduledSource([(1.0, 100.0)], started=time.time() + 60).build_part("p0", None)
    assert part.next_batch() is None and part.lag().records == 0


@pytest.mark.parametrize("kwargs", [{"phases": []}, {"phases": [(0.0, 1.0)]}, {"phases": [(1.0, -1.0)]},
                                    {"phases": [(1.0, 1.0)], "partitions": 0}])
def test_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="ScheduledSource"):
        ScheduledSource(**kwargs)  # type: ignore[arg-type]
