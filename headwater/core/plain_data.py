"""Plain data as tagged JSON: how source positions and sink commit tokens are written into checkpoint metadata.

Checkpoint metadata must never be code (a pickle is a program), so what connectors put into a checkpoint is
restricted to *plain data*:

* ``None``, ``bool``, ``int``, ``float`` (NaN and infinities included), ``str``;
* ``list``, ``tuple``, ``dict`` (keys of any plain type), ``bytes``;
* frozen dataclasses whose class was registered with :func:`register` (fields of plain data).

:func:`encode` turns such a value into JSON-compatible objects and :func:`decode` turns them back, so that
``decode(json.loads(json.dumps(encode(v)))) == v`` with the same types (a tuple stays a tuple, ``1.0`` stays a
float; dict key order is not kept). JSON arrays, strings, numbers, ``true``/``false``/``null`` stand for themselves; every JSON *object* is
a tag with exactly one key::

    {"$tuple": [...]}            {"$bytes": "<base64>"}       {"$float": "nan" | "inf" | "-inf"}
    {"$map": {"k": v, ...}}      a dict whose keys are all strings
    {"$dict": [[k, v], ...]}     any other dict
    {"$dataclass": ["<registered name>", {"field": v, ...}]}

Invariant: decoding constructs only the classes of the registry, by the name they were registered under, from
their fields; it never imports or looks up a name read from the data. Anything else in the input is refused
with :class:`PlainDataError`.

Example::

    @plain_data.register
    @dataclass(frozen=True)
    class KafkaToken:
        transactional_id: str
        epoch: int
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar, Protocol, TypeAlias, TypeVar, overload

from headwater.errors import HeadwaterError

__all__ = ["PlainData", "PlainDataError", "decode", "encode", "register", "registered_name"]


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


#: The static type of plain data (source positions, sink commit tokens). It is looser than :func:`encode`, which
#: a type checker cannot express: any dataclass instance passes (``encode`` takes frozen registered ones), any
#: sequence or mapping passes (``encode`` takes exactly list, tuple and dict; ``Sequence``/``Mapping`` because
#: they are covariant, so a ``snapshot()`` returning ``dict[str, int]`` type-checks), and dict keys are unchecked.
PlainData: TypeAlias = None | bool | int | float | str | bytes | Sequence["PlainData"] | Mapping[Any, "PlainData"] | _Dataclass

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_TAGS = ("$tuple", "$bytes", "$float", "$map", "$dict", "$dataclass")


class PlainDataError(HeadwaterError, ValueError):
    """A value is not plain data (when encoding), or the input is not the encoding of plain data (decoding).
    ``where`` names the place inside the value (``[3].files[0]``)."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{message} (at {where})" if where else message)
        self.reason = message
        self.where = where


@overload
def register(cls: T, *, name: str | None = None) -> T: ...


@overload
def register(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...


def register(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Class decorator: allow instances of the frozen dataclass ``cls`` in checkpoint metadata.

    ``name`` (default ``module.QualifiedName``) is what the file records; keep it stable across releases, since
    a checkpoint written under one name is restored only by a class registered under that name."""

    def apply(klass: T) -> T:
        if not (dataclasses.is_dataclass(klass) and isinstance(klass, type)):
            raise TypeError(f"plain_data.register: {klass!r} is not a dataclass")
        if not klass.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # typeshed does not declare it
            raise TypeError(f"plain_data.register: dataclass {klass.__qualname__} must be frozen (@dataclass(frozen=True))")
        if any(not f.init for f in dataclasses.fields(klass)):
            raise TypeError(f"plain_data.register: every field of {klass.__qualname__} must be an __init__ field")
        key = name or f"{klass.__module__}.{klass.__qualname__}"
        previous = _REGISTRY.get(key)
        if previous is not None and previous is not klass and previous.__qualname__ != klass.__qualname__:
            raise TypeError(f"plain_data.register: name {key!r} is already registered for {previous!r}")
        _REGISTRY[key] = klass  # re-registering (a reloaded module) replaces the old class
        _NAMES[klass] = key
        return klass

    return apply(cls) if cls is not None else apply


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under, or ``None``."""
    return _NAMES.get(cls)


def _type_name(value: Any) -> str:
    klass = type(value)
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def encode(value: Any, where: str = "") -> Any:
    """``value`` as JSON-compatible objects (see the module docstring); raises :class:`PlainDataError` naming
    the place and the type of the first part that is not plain data."""
    if value is None or isinstance(value, (bool, str)):
        return value
    klass = type(value)
    if klass is int:
        return value
    if klass is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if klass is list:
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if klass is tuple:
        return {"$tuple": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if klass is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if klass is dict:
        if all(type(k) is str for k in value):
            return {"$map": {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
        return {"$dict": [[encode(k, f"{where}<key {k!r}>"), encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    name = _NAMES.get(klass)
    if name is not None:
        fields = {f.name: encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
        return {"$dataclass": [name, fields]}
    hint = ""
    if dataclasses.is_dataclass(value):
        hint = "; register the frozen dataclass with @headwater.core.plain_data.register"
    raise PlainDataError(
        f"a value of type {_type_name(value)} is not plain data (None, bool, int, float, str, bytes, list, tuple, "
        f"dict or a registered frozen dataclass){hint}", where,
    )


def decode(data: Any, where: str = "") -> PlainData:
    """The plain value that :func:`encode` turned into ``data``; raises :class:`PlainDataError` for anything
    that is not such an encoding (an unknown tag, an unregistered class, a field the class does not have)."""
    if data is None or isinstance(data, (bool, str)):
        return data
    klass = type(data)
    if klass is int:
        return data
    if klass is float:
        return data
    if klass is list:
        return [decode(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if klass is not dict:
        raise PlainDataError(f"unexpected {klass.__name__} in encoded plain data", where)
    if len(data) != 1 or next(iter(data)) not in _TAGS:
        raise PlainDataError(f"a JSON object must be one tag of {', '.join(_TAGS)}, got keys {sorted(data)[:5]}", where)
    tag, body = next(iter(data.items()))
    if tag == "$tuple":
        return tuple(decode(v, f"{where}[{i}]") for i, v in enumerate(_expect(body, list, tag, where)))
    if tag == "$bytes":
        try:
            return base64.b64decode(_expect(body, str, tag, where), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PlainDataError(f"$bytes is not valid base64 ({exc})", where) from None
    if tag == "$float":
        if body not in ("nan", "inf", "-inf"):
            raise PlainDataError(f"$float must be 'nan', 'inf' or '-inf', got {body!r}", where)
        return float(body)
    if tag == "$map":
        return {k: decode(v, f"{where}[{k!r}]") for k, v in _expect(body, dict, tag, where).items()}
    if tag == "$dict":
        out: dict[Any, Any] = {}
        for i, pair in enumerate(_expect(body, list, tag, where)):
            if type(pair) is not list or len(pair) != 2:
                raise PlainDataError("a $dict entry must be a [key, value] pair", f"{where}[{i}]")
            key = decode(pair[0], f"{where}<key {i}>")
            try:
                out[key] = decode(pair[1], f"{where}[{key!r}]")
            except TypeError:
                raise PlainDataError(f"a $dict key of type {type(key).__name__} is not hashable", where) from None
        return out
    return _decode_dataclass(_expect(body, list, tag, where), where)


def _decode_dataclass(body: list[Any], where: str) -> Any:
    if len(body) != 2 or type(body[0]) is not str or type(body[1]) is not dict:
        raise PlainDataError('$dataclass must be ["<registered name>", {fields}]', where)
    name, fields = body
    klass = _REGISTRY.get(name)
    if klass is None:
        raise PlainDataError(
            f"dataclass {name!r} is not registered in this process (import the module that registers it with "
            "@headwater.core.plain_data.register before restoring)", where,
        )
    expected = {f.name for f in dataclasses.fields(klass)}
    if set(fields) != expected:
        raise PlainDataError(
            f"dataclass {name!r} has fields {sorted(expected)}, the data has {sorted(fields)}", where
        )
    return klass(**{k: decode(v, f"{where}.{k}") for k, v in fields.items()})


def _expect(body: Any, klass: type, tag: str, where: str) -> Any:
    if type(body) is not klass:
        raise PlainDataError(f"{tag} holds a {type(body).__name__}, expected a {klass.__name__}", where)
    return body
