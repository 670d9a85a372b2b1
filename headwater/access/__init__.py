"""Access control for the Serve app: hashed API tokens mapped to roles, deny-by-default grants per table,
column and row with PII masking (``<store>/access/``), and the access audit in the store's audit log.

Layered above ``headwater.query`` (it produces the :class:`~headwater.query.TableView`s the query layer reads
through) and below ``headwater.serve``. See docs/serving.md, "Access control".
"""

from headwater.access.audit import AuditLog, read_audit
from headwater.access.control import AccessControl
from headwater.access.errors import AccessDeniedError, AuthenticationError, PolicyError
from headwater.access.policy import ADMIN, Grant, Policy, PolicyStore, Role
from headwater.access.tokens import Principal, TokenRecord, TokenStore

__all__ = ["ADMIN", "AccessControl", "AccessDeniedError", "AuditLog", "AuthenticationError", "Grant", "Policy",
           "PolicyError", "PolicyStore", "Principal", "Role", "TokenRecord", "TokenStore", "read_audit"]
