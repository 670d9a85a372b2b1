"""``AccessControl``: authenticate a bearer token and turn the caller's role into table views.

Deny by default: an unknown or missing token is an :class:`AuthenticationError`; a table without a grant is an
:class:`AccessDeniedError`; only ``admin`` sees everything. The query layer receives only the views this
returns, so it can reach nothing else.
"""

from __future__ import annotations

from headwater.access.audit import AuditLog
from headwater.access.policy import PolicyStore
from headwater.access.tokens import Principal, TokenStore
from headwater.query.views import TableView
from headwater.store import Store


class AccessControl:
    def __init__(self, store: Store, *, sync_audit: bool = True) -> None:
        self.store = store
        self.tokens = TokenStore(store.root)
        self.policy = PolicyStore(store.root)
        self.audit = AuditLog(store.root, sync=sync_audit)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value (``Bearer <token>``)."""
        token = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        return self.tokens.authenticate(token)

    def views(self, principal: Principal) -> dict[str, TableView]:
        """Every table the principal may read, with its view."""
        return self.policy.get().views(principal.role, self.store.tables())

    def view(self, principal: Principal, table: str) -> TableView:
        return self.policy.get().view(principal.role, table, self.store.tables())
