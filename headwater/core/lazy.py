"""Package attributes imported on first use (PEP 562), so that ``import headwater`` does not load every
connector's client library (confluent-kafka, SQLAlchemy, httpx): each driver and Ray worker pays the imports."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, namespace: dict[str, Any], modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``modules[name]`` on the first access to ``name``
    and keeps the value in ``namespace`` (the package's globals), so later accesses cost nothing."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
