"""The sink partition's lifecycle, enforced by :class:`SinkOperator`: the legal path reaches the partition in
order, every illegal step is a :class:`SinkProtocolError` that the partition never sees."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from headwater.core.operator import OperatorContext
from headwater.core.state.store import OperatorStateStore
from headwater.engine.failures import classify
from headwater.engine.sink_operator import SinkOperator, SinkPhase, TransactionState
from headwater.errors import SinkError, SinkProtocolError
from headwater.sinks.base import Sink, SinkPartition

BATCH = pa.record_batch({"v": [1, 2, 3]})


class RecordingPartition(SinkPartition):
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def write(self, batch: pa.RecordBatch) -> None:
        self.calls.append(("write", batch.num_rows))

    def prepare(self, checkpoint_id: int) -> Any:
        self.calls.append(("prepare", checkpoint_id))
        return None  # the same token every time: transactions are told apart by checkpoint id

    def commit(self, token: Any) -> None:
        self.calls.append(("commit", token))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def close(self) -> None:
        self.calls.append(("close", None))


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def build_part(self, index: int, count: int) -> SinkPartition:
        return RecordingPartition(self.calls)


class TokenPartition(RecordingPartition):
    def prepare(self, checkpoint_id: int) -> Any:
        super().prepare(checkpoint_id)
        return {"file": f"part-{checkpoint_id}"}


def opened(partition: type[RecordingPartition] = RecordingPartition) -> tuple[SinkOperator, list[tuple[str, Any]]]:
    sink = RecordingSink()
    sink.build_part = lambda index, count: partition(sink.calls)  # type: ignore[method-assign]
    operator = SinkOperator(sink)
    operator.step_id = "out"
    operator.open(OperatorContext("out", 0, 1, OperatorStateStore("out", 128, range(128))))
    return operator, sink.calls


def test_the_legal_path_reaches_the_partition_in_order() -> None:
    operator, calls = opened(TokenPartition)
    assert operator.phase is SinkPhase.WRITING
    operator.process(BATCH)
    assert operator.prepare(1) == {"file": "part-1"}
    operator.process(BATCH)
    operator.prepare(3)  # checkpoint 2 was aborted: ids increase, need not be consecutive
    assert operator.pending == [(1, {"file": "part-1"}), (3, {"file": "part-3"})]
    assert operator.state_of(1) is TransactionState.PREPARED and operator.state_of(4) is None
    assert operator.commit_through(2) == 1
    assert operator.state_of(1) is TransactionState.COMMITTED and operator.state_of(3) is TransactionState.PREPARED
    operator.commit(3)
    assert operator.pending == [] and operator.commit_through(9) == 0
    operator.close()
    assert operator.phase is SinkPhase.CLOSED
    assert calls == [("write", 3), ("prepare", 1), ("write", 3), ("prepare", 3),
                     ("commit", {"file": "part-1"}), ("commit", {"file": "part-3"}), ("close", None)]


def test_abort_after_a_prepare_keeps_the_prepared_transaction_for_recovery() -> None:
    operator, calls = opened()
    operator.process(BATCH)
    operator.prepare(1)
    operator.process(BATCH)
    operator.abort()
    operator.abort()  # idempotent: nothing more to discard, the partition is not asked again
    operator.close()
    operator.close()
    assert operator.pending == [(1, None)], "a snapshot may hold its token: the next attempt commits it"
    assert calls == [("write", 3), ("prepare", 1), ("write", 3), ("abort", None), ("close", None)]


def test_abort_and_close_of_a_partition_that_never_opened_are_harmless() -> None:
    operator = SinkOperator(RecordingSink())
    operator.abort()
    operator.close()
    assert operator.phase is SinkPhase.CLOSED


def _aborted() -> SinkOperator:
    operator, _ = opened()
    operator.process(BATCH)
    operator.prepare(1)
    operator.abort()
    return operator


def _closed() -> SinkOperator:
    operator, _ = opened()
    operator.prepare(1)
    operator.close()
    return operator


def _unopened() -> SinkOperator:
    return SinkOperator(RecordingSink())


ILLEGAL = {
    "write before open": (_unopened, lambda op: op.process(BATCH), r"write\(\) before open\(\)"),
    "prepare before open": (_unopened, lambda op: op.prepare(1), r"prepare\(1\) before open\(\)"),
    "commit before open": (_unopened, lambda op: op.commit(1), r"commit\(1\) before open\(\)"),
    "write after abort": (_aborted, lambda op: op.process(BATCH), r"write\(\) after abort\(\)"),
    "prepare after abort": (_aborted, lambda op: op.prepare(2), r"prepare\(2\) after abort\(\)"),
    "commit after abort": (_aborted, lambda op: op.commit(1), r"commit\(1\) after abort\(\)"),
    "write after close": (_closed, lambda op: op.process(BATCH), r"write\(\) after close\(\)"),
    "prepare after close": (_closed, lambda op: op.prepare(2), r"prepare\(2\) after close\(\)"),
    "commit after close": (_closed, lambda op: op.commit(1), r"commit\(1\) after close\(\)"),
    "abort after close": (_closed, lambda op: op.abort(), r"abort\(\) after close\(\)"),
}


@pytest.mark.parametrize("case", sorted(ILLEGAL))
def test_an_illegal_step_of_the_partition_is_a_sink_protocol_error(case: str) -> None:
    make, step, message = ILLEGAL[case]
    operator = make()
    calls = list(getattr(operator.partition, "calls", []))
    with pytest.raises(SinkProtocolError, match=message) as raised:
        step(operator)
    assert list(getattr(operator.partition, "calls", [])) == calls, "the partition never saw the illegal call"
    assert isinstance(raised.value, SinkError)


def test_open_twice_is_refused() -> None:
    operator, _ = opened()
    with pytest.raises(SinkProtocolError, match="opened once"):
        operator.open(OperatorContext("out", 0, 1, OperatorStateStore("out", 128, range(128))))


def test_a_commit_of_a_checkpoint_never_prepared_is_refused() -> None:
    operator, calls = opened()
    operator.prepare(1)
    with pytest.raises(SinkProtocolError, match=r"commit\(2\) of no prepared transaction.*waiting: \[1\]") as raised:
        operator.commit(2)
    assert isinstance(raised.value, SinkError) and ("commit", None) not in calls


def test_a_second_commit_of_one_transaction_is_refused() -> None:
    operator, calls = opened()
    operator.prepare(1)
    operator.commit(1)
    with pytest.raises(SinkProtocolError, match=r"commit\(1\) of no prepared transaction.*last committed: 1"):
        operator.commit(1)
    assert calls.count(("commit", None)) == 1


def test_commits_go_in_the_order_of_the_prepares() -> None:
    operator, calls = opened()
    operator.prepare(1)
    operator.prepare(2)
    with pytest.raises(SinkProtocolError, match=r"commit\(2\) before commit\(1\)"):
        operator.commit(2)
    assert operator.pending == [(1, None), (2, None)] and ("commit", None) not in calls


@pytest.mark.parametrize("again", [1, 2])
def test_prepare_ids_must_increase(again: int) -> None:
    operator, _ = opened()
    operator.prepare(2)
    with pytest.raises(SinkProtocolError, match=rf"prepare\({again}\) after prepare\(2\)"):
        operator.prepare(again)


def test_a_protocol_error_is_deterministic_and_survives_pickling() -> None:
    import pickle

    error = SinkProtocolError("sink partition: commit(1) after abort()", step_id="out", subtask=0)
    assert not classify(error).transient
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is SinkProtocolError and copy.step_id == "out" and copy.transient is False
