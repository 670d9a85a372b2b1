"""The ``headwater`` subcommands that manage tokens, roles, grants and PII columns of a store.

    headwater token create --store DIR --role ROLE [--note TEXT]   # prints the new token as its last line
    headwater token list   --store DIR
    headwater token revoke --store DIR TOKEN_ID
    headwater role create  --store DIR NAME [--description TEXT]
    headwater role delete  --store DIR NAME
    headwater role list    --store DIR
    headwater grant  --store DIR --role ROLE --table TABLE [--columns a,b | --columns '*'] [--unmask email]
                     [--row-filter '[["region", "==", "eu"]]']
    headwater revoke --store DIR --role ROLE --table TABLE
    headwater pii    --store DIR --table TABLE --columns email,ip     # '' clears
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from headwater.access.errors import PolicyError
from headwater.access.policy import ADMIN, Grant, Policy, PolicyStore, Role
from headwater.access.tokens import TokenStore
from headwater.store import Store

COMMANDS = ("token", "role", "grant", "revoke", "pii")


def _store(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--store", default=None, help="the store (default: $HEADWATER_STORE, else .headwater/store)")


def add_commands(commands: Any) -> None:
    """Add the access subcommands to the ``headwater`` parser's subparsers."""
    token = commands.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a token for a role; prints it (once) as the last line")
    _store(create)
    create.add_argument("--role", required=True)
    create.add_argument("--note", default="")
    _store(token.add_parser("list", help="list tokens (ids and roles, never the tokens)"))
    revoke = token.add_parser("revoke", help="revoke a token by id")
    _store(revoke)
    revoke.add_argument("token_id")
    role = commands.add_parser("role", help="manage roles").add_subparsers(dest="action", required=True)
    for action in ("create", "delete"):
        sub = role.add_parser(action, help=f"{action} a role")
        _store(sub)
        sub.add_argument("name")
        if action == "create":
            sub.add_argument("--description", default="")
    _store(role.add_parser("list", help="list roles and their grants"))
    grant = commands.add_parser("grant", help="grant a role (read) access to a table")
    _store(grant)
    grant.add_argument("--role", required=True)
    grant.add_argument("--table", required=True)
    grant.add_argument("--columns", default="*", help="comma-separated columns, or '*' (default) for all")
    grant.add_argument("--unmask", default="", help="comma-separated PII columns this role sees unmasked")
    grant.add_argument("--row-filter", default="[]",
                       help='JSON list of [column, op, value] the rows must match, e.g. \'[["region", "==", "eu"]]\'')
    take = commands.add_parser("revoke", help="remove a role's grant of a table")
    _store(take)
    take.add_argument("--role", required=True)
    take.add_argument("--table", required=True)
    pii = commands.add_parser("pii", help="declare a table's PII columns (masked unless a grant unmasks them)")
    _store(pii)
    pii.add_argument("--table", required=True)
    pii.add_argument("--columns", required=True, help="comma-separated columns ('' clears)")


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _require_role(policy: Policy, role: str) -> Role:
    if role == ADMIN:
        raise PolicyError("'admin' is built in: it reads everything and takes no grants")
    found = policy.roles.get(role)
    if found is None:
        raise PolicyError(f"there is no role {role!r}; create it with `headwater role create {role}`")
    return found


def run_command(args: argparse.Namespace) -> int:
    """Run one access subcommand; a mistake raises PolicyError (the CLI prints it and exits 2)."""
    store = Store(args.store)
    policies = PolicyStore(store.root)
    if args.command == "token":
        tokens = TokenStore(store.root)
        if args.action == "create":
            if not policies.get().has_role(args.role):
                raise PolicyError(f"there is no role {args.role!r}; create it with `headwater role create "
                                  f"{args.role}` (or use the built-in 'admin')")
            record, token = tokens.create(args.role, args.note)
            _audit(store, "token_create", token_id=record.id, role=record.role, note=args.note)
            print(f"token {record.id} for role {record.role!r} (shown once; store it as a secret):")
            print(token)
        elif args.action == "list":
            for record in tokens.records():
                print(f"{record.id}  {record.role:<16} {record.created_at}  {record.note}")
        elif not tokens.revoke(args.token_id):
            raise PolicyError(f"there is no token {args.token_id!r}")
        else:
            _audit(store, "token_revoke", token_id=args.token_id)
            print(f"revoked token {args.token_id}")
        return 0
    if args.command == "role" and args.action == "list":
        policy = policies.get()
        print(f"{ADMIN}: built in, reads every table unmasked")
        for name, role in sorted(policy.roles.items()):
            print(f"{name}: {role.description}")
            for table, grant in sorted(role.grants.items()):
                print(f"  {table}: {json.dumps(grant.model_dump(mode='json'))}")
        return 0

    def edit(policy: Policy) -> None:
        if args.command == "role" and args.action == "create":
            if args.name in policy.roles or args.name == ADMIN:
                raise PolicyError(f"role {args.name!r} exists")
            policy.roles[args.name] = Role(description=args.description)
        elif args.command == "role":
            _require_role(policy, args.name)
            del policy.roles[args.name]
        elif args.command == "grant":
            role = _require_role(policy, args.role)
            try:
                row_filter = json.loads(args.row_filter)
            except ValueError as exc:
                raise PolicyError(f"--row-filter is not JSON: {exc}") from None
            columns: Any = "*" if args.columns.strip() == "*" else _names(args.columns)
            role.grants[args.table] = Grant.model_validate(
                {"columns": columns, "unmask": _names(args.unmask), "row_filter": row_filter})
            if args.table in store.tables():
                _check_against_table(store, args.table, role.grants[args.table])
        elif args.command == "revoke":
            role = _require_role(policy, args.role)
            if role.grants.pop(args.table, None) is None:
                raise PolicyError(f"role {args.role!r} has no grant of {args.table!r}")
        else:
            policy.pii[args.table] = _names(args.columns)
            if not policy.pii[args.table]:
                del policy.pii[args.table]

    try:
        policies.change(edit)
    except ValueError as exc:  # pydantic's, from Grant.model_validate
        raise PolicyError(str(exc)) from None
    change = {k: v for k, v in vars(args).items() if k not in ("store", "command", "action") and v not in (None, "")}
    _audit(store, "policy_change", command=" ".join(p for p in (args.command, getattr(args, "action", None)) if p),
           **change)
    print("ok")
    return 0


def _audit(store: Store, event: str, **fields: Any) -> None:
    """Record a change to tokens or policy in the store's audit log (who: the OS user running the command)."""
    import getpass

    from headwater.store.audit import AuditLog

    AuditLog(store.root).append(event, actor=getpass.getuser(), **fields)


def _check_against_table(store: Store, table: str, grant: Grant) -> None:
    """A grant of an existing table names its columns, and its row filter fits their types."""
    from headwater.errors import ConfigError
    from headwater.store.scan import compile_filter

    meta = store.table(table)
    named = [] if grant.columns == "*" else list(grant.columns)
    unknown = [c for c in [*named, *grant.unmask] if c not in meta.schema.names]
    if unknown:
        raise PolicyError(f"table {table!r} has no column {unknown[0]!r} (columns: {', '.join(meta.schema.names)})")
    try:
        compile_filter(meta, [(c, op, v) for c, op, v in grant.row_filter], None)
    except ConfigError as exc:
        raise PolicyError(f"--row-filter: {exc}") from None
