"""The ops command line for tenants and quota, in-process (CliRunner) on the test database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_UPSTREAM_BASE_URL": "http://upstream.test",
        "GATEWAY_SECRET_KEY": "cli-secret-key-0123456789abcdef",
        "GATEWAY_ADMIN_TOKEN": "cli-admin-token-0123456789",
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_new_tenants_start_with_the_default_limits(env: dict[str, str]) -> None:
    env = {
        **env,
        "GATEWAY_DEFAULT_DAILY_IMAGES": "50",
        "GATEWAY_DEFAULT_SUBMIT_RPM": "unlimited",
        "GATEWAY_DEFAULT_MAX_IN_FLIGHT": "4",
    }
    code, out, err = run(env, "tenants", "create", "team-a", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["key"].startswith("sk-gw-") and created["tenant_id"].startswith("ten_")
    code, out, _ = run(env, "tenants", "limits", "team-a")
    assert json.loads(out) == {
        "tenant_id": created["tenant_id"],
        "daily_images": 50,
        "monthly_images": None,
        "max_in_flight": 4,
        "submit_rpm": None,
        "query_rpm": None,
    }


def test_limits_set_only_what_is_given_and_accept_unlimited(env: dict[str, str]) -> None:
    assert run(env, "tenants", "create", "team-a")[0] == 0
    code, out, _ = run(env, "tenants", "limits", "team-a", "--daily-images", "10", "--query-rpm", "30")
    assert code == 0 and json.loads(out)["daily_images"] == 10 and json.loads(out)["query_rpm"] == 30
    code, out, _ = run(env, "tenants", "limits", "team-a", "--daily-images", "unlimited")
    assert json.loads(out)["daily_images"] is None and json.loads(out)["query_rpm"] == 30
    code, _, err = run(env, "tenants", "limits", "team-a", "--daily-images", "-3")
    assert code == 2 and "non-negative integer" in err


def test_usage_and_quota_check(env: dict[str, str]) -> None:
    assert run(env, "tenants", "create", "team-a")[0] == 0
    code, out, _ = run(env, "tenants", "usage", "team-a")
    assert code == 0 and json.loads(out)["day"]["used"] == 0
    code, out, _ = run(env, "quota", "check")
    assert code == 0 and json.loads(out) == {"ok": True, "drift": []}


def test_unknown_tenant_and_duplicate_name_are_one_line_errors(env: dict[str, str]) -> None:
    code, _, err = run(env, "tenants", "usage", "nobody")
    assert code == 2 and err.strip().splitlines() == ["seedream-gateway: Tenant 'nobody' not found"]
    assert run(env, "tenants", "create", "team-a")[0] == 0
    code, _, err = run(env, "tenants", "create", "team-a")
    assert code == 2 and "already exists" in err and "Traceback" not in err


def test_a_bidirectional_override_in_a_name_is_refused(env: dict[str, str]) -> None:
    code, _, err = run(env, "tenants", "create", "acme\u202e1-nimda")
    assert code == 2 and "U+202E" in err and "Traceback" not in err
    code, out, _ = run(env, "tenants", "list", "--json")
    assert code == 0 and "nimda" not in out


def test_tasks_list_reads_the_ledger(env: dict[str, str]) -> None:
    code, out, err = run(env, "tenants", "create", "team-a", "--json")
    assert code == 0, err
    tenant_id = json.loads(out)["tenant_id"]
    code, out, err = run(env, "tasks", "list", "--tenant", tenant_id, "--status", "failed", "--json")
    assert code == 0, err
    page = json.loads(out)
    assert page["data"] == [] and page["unresolved"] == 0 and page["next_cursor"] is None
    code, out, err = run(env, "tasks", "list", "--outcome-unknown")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["ID", "TENANT", "STATUS", "N", "UNKNOWN", "ERROR", "CREATED"]
    assert "unresolved (unknown create outcome): 0 task(s)" in out
    code, _, err = run(env, "tasks", "list", "--status", "nonsense")
    assert code == 2 and "nonsense" in err


def test_tasks_list_takes_a_tenant_name_and_refuses_an_unknown_one(env: dict[str, str]) -> None:
    code, out, err = run(env, "tenants", "create", "team-a", "--json")
    assert code == 0, err
    code, out, err = run(env, "tasks", "list", "--tenant", "team-a", "--json")
    assert code == 0, err
    assert json.loads(out)["data"] == []
    code, out, err = run(env, "tasks", "list", "--tenant", "team-z")
    assert code == 2 and "Tenant 'team-z' not found" in err and out == ""
