"""The ops command line for tenants and keys, in-process (CliRunner) on the test database: tables for people,
`--json` for scripts, one-line errors, and an audit event with the actor "cli" for every change."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.audit.service import AuditService
from app.cli import cli
from app.cli.keys import parse_duration
from app.core.clock import utcnow
from app.core.db.engine import create_engine, create_session_factory
from app.core.security import KeyMaterial
from app.tenants.service import TenantService

SECRET = "cli-secret-key-0123456789abcdef"


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_UPSTREAM_BASE_URL": "http://upstream.test",
        "GATEWAY_SECRET_KEY": SECRET,
        "GATEWAY_ADMIN_TOKEN": "cli-admin-token-0123456789",
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def run_json(env: dict[str, str], *args: str) -> Any:
    code, out, err = run(env, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def works(env: dict[str, str], key: str) -> bool:
    """Whether the key authenticates (through the service, as the gateway would)."""

    async def check() -> bool:
        engine = create_engine(env["GATEWAY_DATABASE_URL"], pool_size=1)
        try:
            service = TenantService(create_session_factory(engine), KeyMaterial(SECRET), utcnow)
            try:
                await service.authenticate_key(f"Bearer {key}", note_use=False)
                return True
            except Exception:
                return False
        finally:
            await engine.dispose()

    return asyncio.run(check())


def audit_events(env: dict[str, str]) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        engine = create_engine(env["GATEWAY_DATABASE_URL"], pool_size=1)
        try:
            page = await AuditService(create_session_factory(engine), utcnow).list(limit=200)
            return [e.model_dump() for e in page.data]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_create_json_keeps_its_three_fields(env: dict[str, str]) -> None:
    created = run_json(env, "tenants", "create", "team-a")
    assert set(created) == {"tenant_id", "name", "key"} and created["name"] == "team-a"
    assert created["key"].startswith("sk-gw-") and works(env, created["key"])


def test_tenants_list_show_update_disable_enable_delete(env: dict[str, str]) -> None:
    a = run_json(env, "tenants", "create", "team-a")
    b = run_json(env, "tenants", "create", "team-b")
    code, out, _ = run(env, "tenants", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "NAME", "STATUS", "CREATED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [a["tenant_id"], "team-a", "active"],
        [b["tenant_id"], "team-b", "active"],
    ]
    assert lines[1].index("team-a") == lines[0].index("NAME")  # aligned columns

    page = run_json(env, "tenants", "list", "--limit", "1")
    assert [t["id"] for t in page["data"]] == [a["tenant_id"]] and page["next_cursor"] == a["tenant_id"]
    code, out, _ = run(env, "tenants", "list", "--limit", "1")
    assert f"(more: --cursor {a['tenant_id']})" in out
    rest = run_json(env, "tenants", "list", "--cursor", page["next_cursor"])
    assert [t["id"] for t in rest["data"]] == [b["tenant_id"]] and rest["next_cursor"] is None

    code, out, _ = run(env, "tenants", "show", "team-a")
    assert code == 0 and "status          active" in out and "daily_images    unlimited" in out
    assert run_json(env, "tenants", "update", "team-a", "--name", "team-a2")["name"] == "team-a2"
    assert run_json(env, "tenants", "disable", "team-a2")["status"] == "disabled"
    assert not works(env, a["key"])
    assert run_json(env, "tenants", "enable", a["tenant_id"])["status"] == "active"
    assert works(env, a["key"])

    code, _, err = run(env, "tenants", "delete", "team-b")
    assert code == 2 and "--yes" in err and works(env, b["key"])
    assert run_json(env, "tenants", "delete", "team-b", "--yes")["status"] == "deleted"
    assert not works(env, b["key"])
    code, _, err = run(env, "tenants", "show", "team-b")
    assert code == 2 and err.strip() == "seedream-gateway: Tenant 'team-b' not found"
    assert [t["name"] for t in run_json(env, "tenants", "list")["data"]] == ["team-a2"]

    actions = [(e["action"], e["actor"], e["outcome"]) for e in audit_events(env)]
    assert actions == [
        ("tenant.delete", "cli", "ok"),
        ("tenant.enable", "cli", "ok"),
        ("tenant.disable", "cli", "ok"),
        ("tenant.update", "cli", "ok"),
        ("tenant.create", "cli", "ok"),
        ("tenant.create", "cli", "ok"),
    ]


def test_keys_list_create_rotate_revoke(env: dict[str, str]) -> None:
    tenant = run_json(env, "tenants", "create", "team-a")
    code, out, err = run(env, "keys", "create", "team-a", "--name", "ci", "--scopes", "read", "--expires-in", "90d")
    assert code == 0, err
    ci_key = out.strip().splitlines()[-1].rsplit(" ", 1)[1]
    assert "API key (shown once, keep it safe): sk-gw-" in out and works(env, ci_key)
    assert "scopes        read" in out

    listed = run_json(env, "keys", "list", "team-a")["data"]
    assert [(k["name"], k["scopes"], k["status"]) for k in listed] == [
        ("", ["submit", "read"], "active"),
        ("ci", ["read"], "active"),
    ]
    assert listed[1]["expires_at"] - listed[1]["created_at"] == 90 * 86400
    assert all("key" not in k for k in listed)
    code, out, _ = run(env, "keys", "list", "team-a")
    header = out.splitlines()[0].split()
    assert header[:5] == ["ID", "PREFIX", "NAME", "SCOPES", "STATUS"] and ci_key not in out

    first = listed[0]["id"]
    rotated = run_json(env, "keys", "rotate", first, "--grace", "0")
    assert rotated["rotated_from_id"] == first and rotated["key"].startswith("sk-gw-")
    assert works(env, rotated["key"]) and not works(env, tenant["key"])
    revoked = run_json(env, "keys", "revoke", rotated["id"])
    assert revoked["status"] == "revoked" and "key" not in revoked and not works(env, rotated["key"])

    for args, message in (
        (["keys", "rotate", "key_nope"], "Key 'key_nope' not found"),
        (["keys", "rotate", rotated["id"]], "is revoked"),
        (["keys", "create", "team-a", "--scopes", "write"], "scopes must be one or more of"),
        (["keys", "create", "team-a", "--expires-in", "soon"], "--expires-in must be"),
        (["keys", "rotate", listed[1]["id"], "--grace", "31d"], "grace_seconds must be 0 to"),
        (["keys", "list", "nobody"], "Tenant 'nobody' not found"),
    ):
        code, _, err = run(env, *args)
        assert code == 2 and message in err and "Traceback" not in err, err

    events = [(e["action"], e["actor"], e["outcome"]) for e in audit_events(env)]
    assert [e for e in events if e[2] == "ok"] == [
        ("key.revoke", "cli", "ok"),
        ("key.rotate", "cli", "ok"),
        ("key.create", "cli", "ok"),
        ("tenant.create", "cli", "ok"),
    ]
    assert {e[1] for e in events} == {"cli"}
    dumped = json.dumps(audit_events(env))
    assert all(secret not in dumped for secret in (tenant["key"], ci_key, rotated["key"]))


def test_limits_are_audited(env: dict[str, str]) -> None:
    run_json(env, "tenants", "create", "team-a")
    code, out, _ = run(env, "tenants", "limits", "team-a", "--daily-images", "10")
    assert code == 0 and json.loads(out)["daily_images"] == 10
    latest = audit_events(env)[0]
    assert (latest["action"], latest["actor"], latest["detail"]) == (
        "limits.update",
        "cli",
        {"changes": {"daily_images": 10}},
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("45s", 45), ("30m", 1800), ("12h", 43200), ("90d", 7776000), (" 2D ", 172800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "--grace") == seconds
