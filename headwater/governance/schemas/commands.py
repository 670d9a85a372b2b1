"""The ``headwater schemas`` subcommands: inspect the schema registry and set subjects' modes.

    headwater schemas list [--json]                               # subjects, modes, latest versions
    headwater schemas show SUBJECT [--version N] [--json]         # one version's fields (default: the latest)
    headwater schemas diff SUBJECT V1 V2                          # what changed, and which modes allow it
    headwater schemas mode SUBJECT [backward|forward|full|none]   # show or set a subject's mode

Every subcommand takes ``--registry URL_OR_PATH`` (default ``$HEADWATER_SCHEMA_REGISTRY``, else
``<store>/registry.db``) and ``--store DIR`` (the store whose registry is the default: ``$HEADWATER_STORE``, else
``.headwater/store``). An unknown subject or version, or a registry that does not exist, is a message and exit
code 2 (the CLI prints every :class:`~headwater.errors.HeadwaterError` so).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import pyarrow as pa

from headwater.errors import SchemaRegistryError
from headwater.governance.schemas.codec import type_name
from headwater.governance.schemas.compatibility import Compatibility, check_compatible
from headwater.governance.schemas.registry import REGISTRY_FILE, RegisteredSchema, SchemaRegistry

COMMAND = "schemas"
ENV_REGISTRY = "HEADWATER_SCHEMA_REGISTRY"


def add_commands(commands: Any) -> None:
    """Add ``headwater schemas ...`` to the ``headwater`` parser's subparsers."""
    schemas = commands.add_parser(COMMAND, help="inspect the schema registry (docs/governance.md, Schemas)")
    actions = schemas.add_subparsers(dest="action", required=True)

    def common(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--registry", default=None,
                         help="SQLAlchemy URL or SQLite path (default: $HEADWATER_SCHEMA_REGISTRY, else <store>/registry.db)")
        sub.add_argument("--store", default=None, help="the store (default: $HEADWATER_STORE, else .headwater/store)")
        return sub

    common(actions.add_parser("list", help="subjects with their modes and latest versions")).add_argument(
        "--json", action="store_true", help="print JSON")
    show = common(actions.add_parser("show", help="one version of a subject's schema (default: the latest)"))
    show.add_argument("subject")
    show.add_argument("--version", type=int, default=None)
    show.add_argument("--json", action="store_true", help="print JSON")
    diff = common(actions.add_parser("diff", help="what changed between two versions of a subject"))
    diff.add_argument("subject")
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)
    mode = common(actions.add_parser("mode", help="show or set a subject's compatibility mode"))
    mode.add_argument("subject")
    mode.add_argument("mode", nargs="?", choices=[m.value for m in Compatibility], default=None)


def _location(args: argparse.Namespace) -> str:
    if args.registry:
        return str(args.registry)
    from_env = os.environ.get(ENV_REGISTRY, "").strip()
    if from_env and from_env.lower() not in ("off", "none", "false", "no", "disabled"):
        return from_env
    from headwater.store.layout import resolve_root

    return os.path.join(resolve_root(args.store), REGISTRY_FILE)


def _open(args: argparse.Namespace, create: bool = False) -> SchemaRegistry:
    location = _location(args)
    if not create and "://" not in location and not os.path.isfile(os.path.expanduser(location)):
        raise SchemaRegistryError(f"no schema registry at {location} (no job has recorded a schema there yet); "
                                  "give --registry URL_OR_PATH or --store DIR")
    return SchemaRegistry(location)


def run_command(args: argparse.Namespace) -> int:
    """Run one ``headwater schemas`` action; errors are HeadwaterErrors for the CLI to print."""
    with _open(args, create=args.action == "mode" and args.mode is not None) as registry:
        if args.action == "list":
            _list(registry, args.json)
        elif args.action == "show":
            _show(registry, registry.get(args.subject, args.version), args.json)
        elif args.action == "diff":
            _diff(registry, args.subject, args.v1, args.v2)
        elif args.mode is None:
            registry.versions(args.subject)  # an unknown subject is an error, not "backward"
            print(registry.mode(args.subject).value)
        else:
            registry.set_mode(args.subject, args.mode)
            print(f"subject {args.subject!r}: mode {args.mode}")
    return 0


def _list(registry: SchemaRegistry, as_json: bool) -> None:
    subjects = registry.subjects()
    if as_json:
        print(json.dumps([{"subject": s, "mode": m.value, "latest_version": v} for s, m, v in subjects], indent=2))
        return
    if not subjects:
        print(f"no subjects in {registry.display_url}")
        return
    width = max(len("subject"), *(len(s) for s, _, _ in subjects))
    print(f"{'subject':<{width}}  {'mode':<8}  {'latest':>6}")
    for subject, mode, latest in subjects:
        print(f"{subject:<{width}}  {mode.value:<8}  {latest:>6}")


def _field_line(field: pa.Field) -> str:
    return f"{field.name}: {type_name(field.type)} ({'nullable' if field.nullable else 'required'})"


def _show(registry: SchemaRegistry, registered: RegisteredSchema, as_json: bool) -> None:
    mode = registry.mode(registered.subject)
    if as_json:
        print(json.dumps({**registered.to_json(), "mode": mode.value}, indent=2))
        return
    by = f" by {registered.registered_by}" if registered.registered_by else ""
    print(f"subject {registered.subject} version {registered.version} ({mode.value}); registered "
          f"{registered.registered_at.isoformat(timespec='seconds')}{by}; fingerprint {registered.fingerprint[:16]}")
    for field in registered.schema:
        print(f"  {_field_line(field)}")


def _diff(registry: SchemaRegistry, subject: str, v1: int, v2: int) -> None:
    old, new = registry.get(subject, v1).schema, registry.get(subject, v2).schema
    print(f"subject {subject}: version {v1} → {v2}")
    changed = False
    for field in new:
        index = old.get_field_index(field.name)
        if index < 0:
            print(f"  + {_field_line(field)}")
            changed = True
            continue
        before = old.field(index)
        if before.type != field.type:
            print(f"  ~ {field.name}: type {type_name(before.type)} → {type_name(field.type)}")
            changed = True
        if before.nullable != field.nullable:
            print(f"  ~ {field.name}: {'nullable' if before.nullable else 'required'} → "
                  f"{'nullable' if field.nullable else 'required'}")
            changed = True
    for field in old:
        if new.get_field_index(field.name) < 0:
            print(f"  - {_field_line(field)}")
            changed = True
    if not changed:
        print("  (no field changed)")
    for mode in (Compatibility.BACKWARD, Compatibility.FORWARD, Compatibility.FULL):
        problems = check_compatible(old, new, mode)
        verdict = "compatible" if not problems else "incompatible: " + "; ".join(p.describe() for p in problems)
        print(f"  {mode.value}: {verdict}")


__all__ = ["COMMAND", "add_commands", "run_command"]
