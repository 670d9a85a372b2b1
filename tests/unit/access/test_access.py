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


def test_durable_audit_lines_from_many_threads_are_group_committed_whole(store: Store,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from headwater.access import AuditLog, read_audit
    from headwater.access import audit as audit_module

    fsyncs: list[int] = []
    real_fsync = audit_module.os.fsync
    monkeypatch.setattr(audit_module.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    log = AuditLog(store.root, sync=True)
    threads = [threading.Thread(target=lambda i=i: [log.record(actor=f"t{i}", role="admin", action="GET /x",
                                                               status=200, rows=j) for j in range(25)])
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = [r for r in read_audit(store.root) if r["event"] == "access"]
    assert sorted((r["actor"], r["rows"]) for r in records) == sorted((f"t{i}", j) for i in range(8) for j in range(25))
    assert 1 <= len(fsyncs) <= 200  # every line fsynced before record() returned, in groups


def test_a_failed_durable_append_raises_in_the_request(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater.access import AuditLog
    from headwater.access import audit as audit_module

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module.os, "fsync", broken)
    with pytest.raises(OSError, match="No space"):
        AuditLog(store.root, sync=True).record(actor=None, role=None, action="GET /x", status=200)
