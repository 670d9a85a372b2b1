"""Access control: tokens are stored hashed and authenticate to their role until revoked; deny by default;
admin sees everything; grants give column, row-filter and masking views; the policy file is validated; the
CLI manages it all and prints a new token as its last line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from headwater.access import (
    ADMIN,
    AccessControl,
    AccessDeniedError,
    AuthenticationError,
    Grant,
    Policy,
    PolicyError,
    PolicyStore,
    Role,
    TokenStore,
)
from headwater.cli import main
from headwater.store import Store
from headwater.testing import commit_rows


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    commit_rows(store, "clicks", [{"user": "a", "email": "a@x", "region": "eu"}], key=["user"])
    commit_rows(store, "salaries", [{"name": "ann", "salary": 1}], key=["name"])
    return store


def test_tokens_are_stored_hashed_and_authenticate_until_revoked(store: Store) -> None:
    tokens = TokenStore(store.root)
    record, token = tokens.create("admin", "ci")
    text = Path(tokens.path).read_text()
    assert token not in text and record.sha256 in text
    assert oct(os.stat(tokens.path).st_mode & 0o777) == "0o600"
    access = AccessControl(store)
    principal = access.authenticate(f"Bearer {token}")
    assert (principal.role, principal.token_id) == ("admin", record.id)
    for header in (None, "", "Bearer", f"Basic {token}", f"Bearer {token}x", "Bearer hw_00000000_" + "a" * 43):
        with pytest.raises(AuthenticationError):
            access.authenticate(header)
    assert tokens.revoke(record.id)
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        access.authenticate(f"Bearer {token}")


def test_deny_by_default_and_admin_reads_everything(store: Store) -> None:
    access = AccessControl(store)
    PolicyStore(store.root).change(lambda p: p.roles.__setitem__("empty", Role()))
    _, empty = TokenStore(store.root).create("empty")
    _, admin = TokenStore(store.root).create(ADMIN)
    _, orphan = TokenStore(store.root).create("deleted-role")
    assert access.views(access.authenticate(f"Bearer {empty}")) == {}
    assert access.views(access.authenticate(f"Bearer {orphan}")) == {}
    with pytest.raises(AccessDeniedError):
        access.view(access.authenticate(f"Bearer {empty}"), "clicks")
    views = access.views(access.authenticate(f"Bearer {admin}"))
    assert sorted(views) == ["clicks", "salaries"]
    assert all(v.columns is None and not v.masked and not v.row_filter for v in views.values())


def test_grants_give_columns_row_filters_and_masks(store: Store) -> None:
    def edit(policy: Policy) -> None:
        policy.pii["clicks"] = ["email"]
        policy.roles["analyst"] = Role(grants={"clicks": Grant(columns=["user", "email"],
                                                               row_filter=[("region", "==", "eu")])})
        policy.roles["support"] = Role(grants={"clicks": Grant(unmask=["email"])})

    policy = PolicyStore(store.root).change(edit)
    tables = store.tables()
    analyst = policy.views("analyst", tables)
    assert list(analyst) == ["clicks"]
    view = analyst["clicks"]
    assert view.columns == ("user", "email") and view.masked == {"email"}
    assert view.row_filter == (("region", "==", "eu"),)
    support = policy.view("support", "clicks", tables)
    assert support.columns is None and not support.masked
    with pytest.raises(AccessDeniedError):
        policy.view("analyst", "salaries", tables)
    assert view.fingerprint() != support.fingerprint()


@pytest.mark.parametrize("document, message", [
    ({"format": "other"}, "format"),
    ({"format": "headwater-access", "roles": {"admin": {}}}, "built in"),
    ({"format": "headwater-access", "roles": {"r": {"grants": {"t": {"columns": "user"}}}}}, "columns"),
    ({"format": "headwater-access", "roles": {"r": {"grants": {"t": {"row_filter": [["a", "like", 1]]}}}}}, "row_filter"),
    ({"format": "headwater-access", "roles": {"r": {"grants": {"bad-name": {}}}}}, "table name"),
    ({"format": "headwater-access", "roles": {"r": {"grant": {}}}}, "Extra inputs"),
])
def test_an_invalid_policy_file_is_refused_whole(store: Store, document: dict[str, object], message: str) -> None:
    policies = PolicyStore(store.root)
    os.makedirs(os.path.dirname(policies.path), exist_ok=True)
    Path(policies.path).write_text(json.dumps(document))
    with pytest.raises(PolicyError, match=message):
        policies.get()


def test_the_cli_manages_roles_grants_pii_and_tokens(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--store", store.root]
    assert main(["role", "create", *root, "analyst", "--description", "dashboards"]) == 0
    assert main(["grant", *root, "--role", "analyst", "--table", "clicks", "--columns", "user,email",
                 "--row-filter", '[["region", "==", "eu"]]']) == 0
    assert main(["pii", *root, "--table", "clicks", "--columns", "email"]) == 0
    capsys.readouterr()
    assert main(["token", "create", *root, "--role", "analyst"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    principal = AccessControl(store).authenticate(f"Bearer {token}")
    view = AccessControl(store).view(principal, "clicks")
    assert view.columns == ("user", "email") and view.masked == {"email"}
    assert main(["token", "list", *root]) == 0
    assert principal.token_id in capsys.readouterr().out
    assert main(["role", "list", *root]) == 0
    assert "analyst" in capsys.readouterr().out
    # mistakes are refused with a message and exit 2, leaving the policy as it was
    before = Path(PolicyStore(store.root).path).read_text()
    for argv in (["grant", *root, "--role", "analyst", "--table", "clicks", "--columns", "nope"],
                 ["grant", *root, "--role", "analyst", "--table", "clicks", "--row-filter", "[[1"],
                 ["grant", *root, "--role", "analyst", "--table", "clicks", "--row-filter", '[["region", "<", 3]]'],
                 ["grant", *root, "--role", "ghost", "--table", "clicks"],
                 ["grant", *root, "--role", "admin", "--table", "clicks"],
                 ["token", "create", *root, "--role", "ghost"], ["role", "create", *root, "admin"],
                 ["revoke", *root, "--role", "analyst", "--table", "salaries"]):
        assert main(argv) == 2, argv
        assert "headwater:" in capsys.readouterr().err
    assert Path(PolicyStore(store.root).path).read_text() == before
    assert main(["revoke", *root, "--role", "analyst", "--table", "clicks"]) == 0
    with pytest.raises(AccessDeniedError):
        AccessControl(store).view(principal, "clicks")
    assert main(["token", "revoke", *root, principal.token_id]) == 0
    with pytest.raises(AuthenticationError):
        AccessControl(store).authenticate(f"Bearer {token}")


def test_the_audit_log_takes_one_line_per_record(store: Store) -> None:
    from headwater.access import AuditLog, read_audit

    log = AuditLog(store.root)
    log.record(actor="token:1", role="r", action="POST /sql", status=200, tables=["clicks"], rows=3, query="x" * 9000)
    [record] = [r for r in read_audit(store.root) if r["event"] == "access"]
    assert record["rows"] == 3 and len(record["query"]) == 4000 and record["at"]


def test_token_and_policy_changes_are_audited_without_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headwater.store import LifecyclePolicy
    from headwater.store.audit import AuditLog

    store = Store(tmp_path)
    commit_rows(store, "clicks", [{"user": "a", "email": "a@x"}], key=["user"])
    root = str(tmp_path)
    assert main(["role", "create", "--store", root, "analyst"]) == 0
    assert main(["grant", "--store", root, "--role", "analyst", "--table", "clicks", "--columns", "user"]) == 0
    assert main(["pii", "--store", root, "--table", "clicks", "--columns", "email"]) == 0
    capsys.readouterr()
    assert main(["token", "create", "--store", root, "--role", "analyst"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    token_id = token.split("_")[1]
    assert main(["token", "revoke", "--store", root, token_id]) == 0
    assert main(["revoke", "--store", root, "--role", "analyst", "--table", "clicks"]) == 0
    store.set_policy("clicks", LifecyclePolicy(warm_for=None))
    log = AuditLog(root)
    entries = log.entries()
    assert [e.event for e in entries] == ["policy_change"] * 3 + ["token_create", "token_revoke", "policy_change",
                                                                  "lifecycle_policy"]
    assert entries[1].fields["command"] == "grant" and entries[1].fields["table"] == "clicks"
    assert entries[3].fields["token_id"] == token_id and entries[3].fields["role"] == "analyst"
    assert entries[-1].fields["table"] == "clicks" and entries[-1].fields["after"]["warm_for_s"] is None
    assert set(entries[-1].fields["before"]) == {"hot_for_s", "warm_for_s", "retain_for_s"}
    assert token.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))
    assert log.verify().ok
