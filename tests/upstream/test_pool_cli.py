"""`seedream-gateway upstream-keys ...` in-process (CliRunner) on the test database: each command one service
call, tables for people, --json for scripts, and never a key on the command line or in the output."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.core.db.engine import create_engine, create_session_factory
from app.core.security import KeyMaterial
from app.models import AuditEvent, UpstreamKey

OLD_SECRET = "cli-secret-key-0123456789abcdef"
NEW_SECRET = "cli-new-secret-key-0123456789abc"
KEY = "sk-upstream-cli-0123456789"
OTHER = "sk-upstream-cli-other-0123"


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_UPSTREAM_BASE_URL": "http://upstream.test",
        "GATEWAY_SECRET_KEY": OLD_SECRET,
        "GATEWAY_ADMIN_TOKEN": "cli-admin-token-0123456789",
    }


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def stored(env: dict[str, str]) -> tuple[list[UpstreamKey], list[AuditEvent]]:
    async def read() -> tuple[list[UpstreamKey], list[AuditEvent]]:
        engine = create_engine(env["GATEWAY_DATABASE_URL"], pool_size=1)
        try:
            async with create_session_factory(engine)() as session:
                keys = list((await session.execute(select(UpstreamKey))).scalars())
                events = list((await session.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars())
                return keys, events
        finally:
            await engine.dispose()

    return asyncio.run(read())


def added(env: dict[str, str], name: str, secret: str, *options: str) -> dict[str, Any]:
    code, out, err = run(
        {**env, "THE_KEY": secret}, "upstream-keys", "add", name, "--key-env", "THE_KEY", "--json", *options
    )
    assert code == 0, err
    key: dict[str, Any] = json.loads(out)
    return key


def test_add_list_update_drain_retire(env: dict[str, str]) -> None:
    first = added(env, "org-1", KEY, "--weight", "3", "--max-in-flight", "10")
    assert (first["name"], first["weight"], first["max_in_flight"], first["status"]) == ("org-1", 3, 10, "active")
    code, out, err = run(env, "upstream-keys", "add", "org-2", "--json", stdin=OTHER + "\n")  # from stdin
    assert code == 0, err
    second = json.loads(out)

    code, out, _ = run(env, "upstream-keys", "list")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "status"] and len(lines) == 3
    assert first["id"] in lines[1] and "org-2" in lines[2]
    code, out, _ = run(env, "upstream-keys", "list", "--json")
    assert [k["id"] for k in json.loads(out)["data"]] == [first["id"], second["id"]]

    code, out, err = run(
        env,
        "upstream-keys",
        "update",
        first["id"],
        "--weight",
        "5",
        "--max-in-flight",
        "unlimited",
        "--disable",
        "--json",
    )
    assert code == 0, err
    updated = json.loads(out)
    assert (updated["weight"], updated["max_in_flight"], updated["status"]) == (5, None, "disabled")
    assert json.loads(run(env, "upstream-keys", "update", first["id"], "--enable", "--json")[1])["status"] == "active"
    assert json.loads(run(env, "upstream-keys", "drain", first["id"], "--json")[1])["status"] == "draining"
    code, out, _ = run(env, "upstream-keys", "retire", first["id"])
    assert code == 0 and "retired" in out

    keys, events = stored(env)
    assert {k.name for k in keys} == {"org-1", "org-2"}
    assert all(KEY not in k.secret_encrypted and OTHER not in k.secret_encrypted for k in keys)
    cli_events = [e for e in events if e.target_type == "upstream_key"]
    assert [e.action for e in cli_events] == [
        "upstream_key.create",
        "upstream_key.create",
        "upstream_key.update",
        "upstream_key.update",
        "upstream_key.drain",
        "upstream_key.retire",
    ]
    assert {e.actor for e in cli_events} == {"cli"}


def test_refusals_are_one_line_and_never_echo_a_key(env: dict[str, str]) -> None:
    added(env, "org-1", KEY)
    code, out, err = run({**env, "THE_KEY": KEY}, "upstream-keys", "add", "again", "--key-env", "THE_KEY")
    assert code == 2 and err.startswith("seedream-gateway: ") and "already in the pool" in err
    code, _, err = run(env, "upstream-keys", "add", "x", "--key-env", "NOT_SET_ANYWHERE")
    assert code == 2 and "NOT_SET_ANYWHERE" in err
    code, _, err = run({**env, "THE_KEY": "has spaces in it"}, "upstream-keys", "add", "x", "--key-env", "THE_KEY")
    assert code == 2 and "has spaces" not in err
    code, _, err = run(env, "upstream-keys", "update", "upk_unknown", "--weight", "2")
    assert code == 2 and "No upstream key" in err
    code, _, err = run(env, "upstream-keys", "update", "upk_unknown", "--weight", "0")
    assert code == 2 and err.startswith("seedream-gateway: --weight")
    for output in (out, err):
        assert KEY not in output


def test_rekey_re_encrypts_with_the_current_secret(env: dict[str, str]) -> None:
    added(env, "org-1", KEY)
    added(env, "org-2", OTHER)
    assert run(env, "tenants", "create", "team-a")[0] == 0  # its key is hashed under the old secret
    rotated = {**env, "GATEWAY_SECRET_KEY": NEW_SECRET, "GATEWAY_PREVIOUS_SECRET_KEYS": OLD_SECRET}
    code, out, err = run(rotated, "upstream-keys", "rekey", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["upstream_keys"] == 2 and report["reencrypted"] == 2 and report["already_current"] == 0
    assert report["undecryptable"] == 0 and report["tenant_keys_pending"] == 1
    assert report["secret_key_id"] == KeyMaterial(NEW_SECRET).key_id
    keys, events = stored(env)
    new = KeyMaterial(NEW_SECRET)  # the new secret alone opens them now
    assert sorted(new.decrypt(k.secret_encrypted) for k in keys) == sorted([KEY, OTHER])
    assert {k.enc_key_id for k in keys} == {new.key_id}
    assert {k.fingerprint for k in keys} == {new.fingerprint(KEY), new.fingerprint(OTHER)}
    assert [e.action for e in events if e.action == "secrets.rekey"] == ["secrets.rekey"]
    code, out, _ = run(rotated, "upstream-keys", "rekey")
    assert code == 0 and "0 re-encrypted, 2 already current" in out
    # Without the secret that made them, a key cannot be opened: reported, exit 1.
    code, out, _ = run({**env, "GATEWAY_SECRET_KEY": "yet-another-secret-0123456789abc"}, "upstream-keys", "rekey")
    assert code == 1 and "2 not decryptable" in out
