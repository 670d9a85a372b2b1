"""Roles and grants: ``<store>/access/policy.json``, managed with ``headwater role|grant|revoke|pii``.

Deny by default: a role reads a table only if it has a grant for it, and only the grant's columns; the
built-in role ``admin`` reads every table, every column, unmasked (it cannot be defined in the file).

Format (validated with pydantic on every load; an invalid file is refused, never half-applied)::

    {"format": "headwater-access", "format_version": 1,
     "pii": {"clicks": ["email", "ip"]},
     "roles": {
       "analyst": {"description": "dashboards",
                   "grants": {"clicks": {"columns": ["user", "ts", "amount", "email"],
                                         "unmask": [],
                                         "row_filter": [["region", "==", "eu"]]}}},
       "support": {"grants": {"clicks": {"columns": "*", "unmask": ["email"]}}}}}

* ``pii``: per table, the columns holding personal data. They read as ``"***"`` (non-null values) for every
  role whose grant does not list them in ``unmask``, and cannot be filtered, grouped or ordered on.
* ``columns``: the visible columns, or ``"*"`` for all (including columns the table gains later).
* ``row_filter``: a conjunction of ``[column, op, value]`` (ops ``== != < <= > >= in``), the store's filter
  format: data, not SQL, pushed into every tier's scan, so rows outside it are never read.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from headwater.access.errors import AccessDeniedError, PolicyError
from headwater.access.files import Watched, access_dir, locked, write_private
from headwater.query.views import TableView
from headwater.store.layout import TABLE_NAME, read_json

FORMAT = "headwater-access"
ADMIN = "admin"
ROLE_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
Scalar = str | int | float | bool | None


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: Literal["*"] | list[str] = "*"
    unmask: list[str] = Field(default_factory=list)
    row_filter: list[tuple[str, Literal["==", "!=", "<", "<=", ">", ">=", "in"], Scalar | list[Scalar]]] = Field(
        default_factory=list)

    @field_validator("columns", "unmask")
    @classmethod
    def _identifiers(cls, value: Any) -> Any:
        for name in [] if value == "*" else value:
            if not TABLE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a column name")
        return value


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    grants: dict[str, Grant] = Field(default_factory=dict)

    @field_validator("grants")
    @classmethod
    def _tables(cls, value: dict[str, Grant]) -> dict[str, Grant]:
        for name in value:
            if not TABLE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a table name")
        return value


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["headwater-access"] = "headwater-access"
    format_version: Literal[1] = 1
    pii: dict[str, list[str]] = Field(default_factory=dict)
    roles: dict[str, Role] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, Role]) -> dict[str, Role]:
        import re

        for name in value:
            if name == ADMIN:
                raise ValueError("'admin' is built in and cannot be defined")
            if not re.fullmatch(ROLE_NAME, name):
                raise ValueError(f"role name {name!r}: use letters, digits, '_', '.', '-' (a letter first)")
        return value

    def has_role(self, role: str) -> bool:
        return role == ADMIN or role in self.roles

    def views(self, role: str, tables: list[str]) -> dict[str, TableView]:
        """The views ``role`` has of the existing ``tables`` (admin: all of them, whole)."""
        if role == ADMIN:
            return {t: TableView.full(t) for t in tables}
        granted = self.roles.get(role)
        if granted is None:
            return {}
        out = {}
        for table, grant in granted.grants.items():
            if table not in tables:
                continue
            columns = None if grant.columns == "*" else tuple(grant.columns)
            masked = frozenset(c for c in self.pii.get(table, ()) if c not in grant.unmask)
            out[table] = TableView(table, columns, masked, tuple((c, op, v) for c, op, v in grant.row_filter))
        return out

    def view(self, role: str, table: str, tables: list[str]) -> TableView:
        found = self.views(role, tables).get(table)
        if found is None:
            raise AccessDeniedError(f"table {table!r} is not granted to role {role!r} (or does not exist)")
        return found


def _parse(document: dict[str, Any] | None) -> Policy:
    if document is None:
        return Policy()
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(f"access policy file is invalid: {exc}") from None


class PolicyStore:
    """``<store>/access/policy.json``: read (cached until it changes) and changed under the access lock."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(access_dir(root), "policy.json")
        self._watched = Watched(self.path, _parse)

    def get(self) -> Policy:
        return self._watched.get()

    def change(self, edit: Any) -> Policy:
        """Apply ``edit(policy) -> None`` (it mutates a copy) and save the result if it validates."""
        with locked(self.root):
            policy = _parse(read_json(self.path)).model_copy(deep=True)
            try:
                edit(policy)
                policy = Policy.model_validate(policy.model_dump())
            except ValidationError as exc:
                raise PolicyError(f"the change makes the policy invalid: {exc}") from None
            write_private(self.path, policy.model_dump(mode="json"))
            return policy
