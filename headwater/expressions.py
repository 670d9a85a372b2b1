"""Column expressions: ``hw.col("price") * 0.908``, evaluated vectorised with ``pyarrow.compute``.

An expression is an inert tree. :meth:`Expr.evaluate` turns it into an Arrow array for one batch;
:func:`output_field` checks it against a schema at build time (by evaluating it on an empty batch of that
schema), so an unknown column or an impossible type combination fails before any data moves, naming the step.

Examples::

    hw.col("price") * 0.908
    (hw.col("category") == 10) & hw.col("price").is_between(100, 1000)
    hw.when(hw.col("price") > 1_000).then("high").otherwise("normal")
    hw.fn("utf8_upper", hw.col("channel"))          # any pyarrow.compute function by name
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import ExpressionTypeError, UnknownColumnError, unknown_column_message


def _floor_divide(left: Any, right: Any, checked: bool = True) -> Any:
    quotient = (pc.divide_checked if checked else pc.divide)(left, right)
    if pa.types.is_floating(quotient.type):
        return pc.floor(quotient)
    # Integer division in Arrow truncates towards zero; Python floors. Correct the negative, inexact cases.
    inexact = pc.not_equal(pc.multiply(quotient, right), left)
    negative = pc.less(pc.multiply(pc.sign(left), pc.sign(right)), 0)
    return pc.if_else(pc.and_(inexact, negative), pc.subtract(quotient, 1), quotient)


def _modulo(left: Any, right: Any) -> Any:
    remainder = pc.subtract(left, pc.multiply(_floor_divide(left, right, checked=False), right))
    if pa.types.is_floating(remainder.type):
        return remainder
    # x % -1 is 0 for every integer; the unchecked division above wraps for INT64_MIN // -1.
    return pc.if_else(pc.equal(right, -1), pc.multiply(left, 0), remainder)  # left * 0 keeps nulls null


# Python semantics for // and % (floor), which Arrow does not ship as kernels.
_PY_FUNCTIONS = {"floor_divide": _floor_divide, "modulo": _modulo}


class Expr(ABC):
    """Base of all expressions; combine with Python operators."""

    # -- building -------------------------------------------------------------------------------------------
    def _call(self, name: str, *others: Any) -> Call:
        return Call(name, (self, *(_wrap(o) for o in others)))

    def __add__(self, other: Any) -> Expr:
        return self._call("add_checked", other)

    def __radd__(self, other: Any) -> Expr:
        return Call("add_checked", (_wrap(other), self))

    def __sub__(self, other: Any) -> Expr:
        return self._call("subtract_checked", other)

    def __rsub__(self, other: Any) -> Expr:
        return Call("subtract_checked", (_wrap(other), self))

    def __mul__(self, other: Any) -> Expr:
        return self._call("multiply_checked", other)

    def __rmul__(self, other: Any) -> Expr:
        return Call("multiply_checked", (_wrap(other), self))

    def __truediv__(self, other: Any) -> Expr:
        return Call("divide", (Call("cast_float64", (self,)), _wrap(other)))

    def __rtruediv__(self, other: Any) -> Expr:
        return Call("divide", (Call("cast_float64", (_wrap(other),)), self))

    def __floordiv__(self, other: Any) -> Expr:
        return Call("floor_divide", (self, _wrap(other)))

    def __rfloordiv__(self, other: Any) -> Expr:
        return Call("floor_divide", (_wrap(other), self))

    def __mod__(self, other: Any) -> Expr:
        return Call("modulo", (self, _wrap(other)))

    def __rmod__(self, other: Any) -> Expr:
        return Call("modulo", (_wrap(other), self))

    def __neg__(self) -> Expr:
        return self._call("negate_checked")

    def __abs__(self) -> Expr:
        return self._call("abs_checked")

    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]  # deliberate: builds an expression
        return self._call("equal", other)

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]  # deliberate: builds an expression
        return self._call("not_equal", other)

    def __lt__(self, other: Any) -> Expr:
        return self._call("less", other)

    def __le__(self, other: Any) -> Expr:
        return self._call("less_equal", other)

    def __gt__(self, other: Any) -> Expr:
        return self._call("greater", other)

    def __ge__(self, other: Any) -> Expr:
        return self._call("greater_equal", other)

    def __and__(self, other: Any) -> Expr:
        return self._call("and_kleene", other)

    def __rand__(self, other: Any) -> Expr:
        return Call("and_kleene", (_wrap(other), self))

    def __or__(self, other: Any) -> Expr:
        return self._call("or_kleene", other)

    def __ror__(self, other: Any) -> Expr:
        return Call("or_kleene", (_wrap(other), self))

    def __invert__(self) -> Expr:
        return self._call("invert")

    def __bool__(self) -> bool:
        raise TypeError(
            "an expression has no truth value: use & | ~ instead of and/or/not, "
            "and is_between() instead of chained comparisons"
        )

    __hash__ = object.__hash__

    def is_null(self) -> Expr:
        return self._call("is_null")

    def is_not_null(self) -> Expr:
        return self._call("is_valid")

    def is_in(self, values: Sequence[Any]) -> Expr:
        return IsIn(self, tuple(values))

    def is_between(self, low: Any, high: Any) -> Expr:
        """``low <= self <= high`` (both ends inclusive)."""
        return (self >= low) & (self <= high)

    def fill_null(self, value: Any) -> Expr:
        return self._call("coalesce", value)

    def cast(self, type_: pa.DataType | str) -> Expr:
        return Cast(self, pa.type_for_alias(type_) if isinstance(type_, str) else type_)

    def round(self, ndigits: int = 0) -> Expr:
        return Round(self, ndigits)

    def alias(self, name: str) -> Alias:
        """Name the result column of this expression (for :meth:`Stream.select`)."""
        return Alias(self, name)

    # -- evaluating -----------------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        """Evaluate on ``batch``; a literal-only expression gives a scalar (broadcast by the caller)."""

    def columns(self) -> set[str]:
        """Names of the input columns this expression reads."""
        return set()

    def default_name(self) -> str:
        """The output column name when no alias is given."""
        return repr(self)


@dataclass(frozen=True, eq=False, repr=False)
class Col(Expr):
    name: str

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array:
        index = batch.schema.get_field_index(self.name)
        if index < 0:
            raise UnknownColumnError(unknown_column_message(self.name, batch.schema.names))
        return batch.column(index)

    def columns(self) -> set[str]:
        return {self.name}

    def default_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"col({self.name!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Lit(Expr):
    value: Any

    def evaluate(self, batch: pa.RecordBatch) -> pa.Scalar:
        return self.value if isinstance(self.value, pa.Scalar) else pa.scalar(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True, eq=False, repr=False)
class Call(Expr):
    function: str
    args: tuple[Expr, ...]

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        values = [a.evaluate(batch) for a in self.args]
        if self.function == "cast_float64":
            return pc.cast(values[0], pa.float64(), safe=False)  # int64 beyond 2**53 rounds, like Python
        special = _PY_FUNCTIONS.get(self.function)
        return special(*values) if special is not None else pc.call_function(self.function, values)

    def columns(self) -> set[str]:
        return set().union(*(a.columns() for a in self.args))

    def __repr__(self) -> str:
        symbol = _SYMBOLS.get(self.function)
        if symbol and len(self.args) == 2:
            return f"({self.args[0]!r} {symbol} {self.args[1]!r})"
        if self.function == "cast_float64":
            return repr(self.args[0])
        return f"{self.function}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True, eq=False, repr=False)
class IsIn(Expr):
    operand: Expr
    values: tuple[Any, ...]

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        return pc.is_in(self.operand.evaluate(batch), value_set=pa.array(self.values))

    def columns(self) -> set[str]:
        return self.operand.columns()

    def __repr__(self) -> str:
        return f"{self.operand!r}.is_in({list(self.values)!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Cast(Expr):
    operand: Expr
    to: pa.DataType

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        return pc.cast(self.operand.evaluate(batch), self.to)

    def columns(self) -> set[str]:
        return self.operand.columns()

    def default_name(self) -> str:
        return self.operand.default_name()

    def __repr__(self) -> str:
        return f"{self.operand!r}.cast({self.to})"


@dataclass(frozen=True, eq=False, repr=False)
class Round(Expr):
    operand: Expr
    ndigits: int

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        return pc.round(self.operand.evaluate(batch), ndigits=self.ndigits)

    def columns(self) -> set[str]:
        return self.operand.columns()

    def __repr__(self) -> str:
        return f"{self.operand!r}.round({self.ndigits})"


@dataclass(frozen=True, eq=False, repr=False)
class Alias(Expr):
    operand: Expr
    name: str

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        return self.operand.evaluate(batch)

    def columns(self) -> set[str]:
        return self.operand.columns()

    def default_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{self.operand!r}.alias({self.name!r})"


@dataclass(frozen=True, eq=False, repr=False)
class When(Expr):
    condition: Expr
    value: Expr
    otherwise_value: Expr

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        condition = pc.fill_null(self.condition.evaluate(batch), False)  # null conditions take "otherwise"
        return pc.if_else(condition, self.value.evaluate(batch), self.otherwise_value.evaluate(batch))

    def columns(self) -> set[str]:
        return self.condition.columns() | self.value.columns() | self.otherwise_value.columns()

    def __repr__(self) -> str:
        return f"when({self.condition!r}).then({self.value!r}).otherwise({self.otherwise_value!r})"


class _WhenBuilder:
    def __init__(self, condition: Expr, value: Expr | None = None) -> None:
        self._condition = condition
        self._value = value

    def then(self, value: Any) -> _WhenBuilder:
        return _WhenBuilder(self._condition, _wrap(value))

    def otherwise(self, value: Any) -> Expr:
        if self._value is None:
            raise TypeError("hw.when(...) needs .then(value) before .otherwise(value)")
        return When(self._condition, self._value, _wrap(value))


_SYMBOLS = {
    "add_checked": "+", "subtract_checked": "-", "multiply_checked": "*", "divide": "/",
    "floor_divide": "//", "modulo": "%", "equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=",
    "greater": ">", "greater_equal": ">=", "and_kleene": "&", "or_kleene": "|",
}




def _wrap(value: Any) -> Expr:
    return value if isinstance(value, Expr) else Lit(value)


def col(name: str) -> Col:
    """Refer to the input column ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"hw.col() takes a non-empty column name, got {name!r}")
    return Col(name)


def lit(value: Any) -> Lit:
    """A constant."""
    return Lit(value)


def when(condition: Expr) -> _WhenBuilder:
    """``hw.when(cond).then(a).otherwise(b)``: ``a`` where ``cond`` holds, else ``b`` (nulls go to ``b``)."""
    return _WhenBuilder(condition)


def fn(function: str, *args: Any) -> Expr:
    """Call any ``pyarrow.compute`` function by name, e.g. ``hw.fn("utf8_upper", hw.col("city"))``."""
    try:
        pc.get_function(function)
    except Exception as exc:
        raise ExpressionTypeError(f"unknown pyarrow.compute function {function!r}") from exc
    return Call(function, tuple(_wrap(a) for a in args))


def to_array(value: pa.Array | pa.ChunkedArray | pa.Scalar, length: int) -> pa.Array:
    """Broadcast a scalar result to ``length`` rows; flatten a chunked result into one array."""
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, length)  # vectorised broadcast, no per-row Python
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    return value


def output_field(expr: Expr, schema: pa.Schema, where: str) -> pa.Field:
    """Check ``expr`` against ``schema`` and return the field it produces.

    Raises :class:`UnknownColumnError` or :class:`ExpressionTypeError` whose message starts with ``where``
    (e.g. ``"step 'price_eur'"``) and says what to fix.
    """
    empty = schema.empty_table().to_batches()
    batch = empty[0] if empty else pa.RecordBatch.from_pylist([], schema=schema)
    try:
        result = expr.evaluate(batch)
    except UnknownColumnError as exc:
        raise UnknownColumnError(f"{where}: {exc} in expression {expr!r}") from None
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        types = ", ".join(f"{c}: {schema.field(c).type}" for c in sorted(expr.columns()) if c in schema.names)
        raise ExpressionTypeError(f"{where}: cannot evaluate {expr!r} on columns ({types}): {exc}") from None
    return pa.field(expr.default_name(), result.type)
