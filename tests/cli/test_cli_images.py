"""`images show | retention | delete` (kept results, issue 23), in-process (CliRunner) on the test database."""

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
        "GATEWAY_RESULTS_DIR": str(tmp_path / "results"),
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_show_set_retention_and_delete(env: dict[str, str]) -> None:
    code, _, err = run(env, "tenants", "create", "team-a", "--json")
    assert code == 0, err
    code, out, err = run(env, "images", "show", "team-a", "--json")
    assert code == 0, err
    assert json.loads(out) == {"images": 0, "bytes": 0, "pending": 0, "retention_days": 30}
    code, out, err = run(env, "images", "retention", "team-a", "7", "--json")
    assert code == 0 and json.loads(out)["retention_days"] == 7, err
    code, out, _ = run(env, "images", "retention", "team-a", "default", "--json")
    assert json.loads(out)["retention_days"] == 30
    code, _, err = run(env, "images", "retention", "team-a", "soon")
    assert code == 2 and "whole number" in err
    code, out, err = run(env, "images", "delete", "team-a", "--yes", "--json")
    assert code == 0 and json.loads(out)["images"] == 0, err
    code, _, err = run(env, "images", "show", "nobody")
    assert code == 2 and "not found" in err
