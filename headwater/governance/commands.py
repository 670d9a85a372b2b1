"""The ``headwater`` subcommands of governance.

    headwater lineage DATASET [--namespace NS] [--json] [--store DIR]   # what fed DATASET, what it feeds
    headwater audit verify [--store DIR]                                # exit 0: intact; 1: names the broken entry
    headwater audit list   [--since ISO-TIME] [--event KIND] [--json] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from headwater.errors import ConfigError
from headwater.governance.lineage.graph import LineageGraph, describe
from headwater.store.audit import AuditLog
from headwater.store.layout import resolve_root

COMMANDS = ("lineage", "audit")
STORE_HELP = "the store (default: $HEADWATER_STORE, else .headwater/store)"


def add_commands(commands: Any) -> None:
    """Add ``lineage`` and ``audit`` to the ``headwater`` parser's subparsers."""
    lineage = commands.add_parser("lineage", help="what fed a dataset (upstream) and what it feeds (downstream)")
    lineage.add_argument("dataset", help="a dataset's name (a table, a topic, a path), or 'namespace/name'")
    lineage.add_argument("--namespace", default=None, help="the dataset's namespace, when its name is ambiguous")
    lineage.add_argument("--json", action="store_true", help="print the answer as JSON")
    lineage.add_argument("--store", default=None, help=STORE_HELP)
    audit = commands.add_parser("audit", help="the store's hash-chained audit log").add_subparsers(
        dest="action", required=True)
    verify = audit.add_parser("verify", help="check the hash chain; exit 1 naming the first broken entry")
    verify.add_argument("--store", default=None, help=STORE_HELP)
    listing = audit.add_parser("list", help="print the audit log's entries, oldest first")
    listing.add_argument("--store", default=None, help=STORE_HELP)
    listing.add_argument("--since", default=None, help="only entries at or after this ISO 8601 time")
    listing.add_argument("--event", default=None, help="only entries of this kind (access, erase, job_start, ...)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T08:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_command(args: argparse.Namespace) -> int:
    """Run one governance subcommand; a mistake raises a HeadwaterError (the CLI prints it and exits 2)."""
    root = resolve_root(args.store)
    if args.command == "lineage":
        graph = LineageGraph.load(root)
        answer = graph.lineage(graph.find(args.dataset, args.namespace))
        print(json.dumps(answer, indent=2) if args.json else describe(answer))
        return 0
    log = AuditLog(root)
    if args.action == "verify":
        result = log.verify()
        print(result.summary())
        return 0 if result.ok else 1
    for entry in log.entries(since=_since(args.since), event=args.event):
        if args.json:
            print(json.dumps(entry.to_json(), sort_keys=True))
        else:
            fields = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(entry.fields.items()) if v is not None)
            print(f"{entry.seq:>6} {entry.at} {entry.event:<16} {fields}")
    return 0
