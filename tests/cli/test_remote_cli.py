"""The command line over a running gateway's admin API (`--url`, app/cli/ops.py): the same output as on the
gateway's own machine, from a process that has no database settings at all.

The gateway is served on a loopback socket in the test's event loop (tests/fixtures/live.py); each command runs in
a thread (it has an event loop of its own) through CliRunner, with every GATEWAY_ setting removed and the working
directory empty, or, for the last test, as a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.fixtures.gateway import ADMIN_TOKEN, SECRET_KEY, UPSTREAM_KEY, Harness, completed_task
from tests.fixtures.live import serving
from tests.support.processes import clean_env

COMMAND_TIMEOUT_S = 60.0  # a deadline for a process start on a busy machine, not an expectation


@pytest.fixture
async def base(gw: Harness) -> AsyncIterator[str]:
    async with serving(gw.app) as url:
        yield url


@pytest.fixture(autouse=True)
def no_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GATEWAY_ setting and no .env: a laptop."""
    for name in [n for n in os.environ if n.startswith(("GATEWAY_", "SEEDREAM_GATEWAY_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class Cli:
    def __init__(self, base: str, database_url: str) -> None:
        self.base = base
        self.local_env = {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_UPSTREAM_BASE_URL": "http://sandbox.test",
            "GATEWAY_UPSTREAM_KEYS": UPSTREAM_KEY,
            "GATEWAY_SECRET_KEY": SECRET_KEY,
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        }

    async def remote(self, *args: str, token: str = ADMIN_TOKEN, stdin: str | None = None) -> tuple[int, str, str]:
        return await self._run(["--url", self.base, "--admin-token", token, *args], {}, stdin)

    async def local(self, *args: str) -> tuple[int, str, str]:
        return await self._run(list(args), self.local_env, None)

    async def _run(self, args: list[str], env: dict[str, str], stdin: str | None) -> tuple[int, str, str]:
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env, input=stdin)
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def run(base: str, database_url: str) -> Cli:
    return Cli(base, database_url)


async def test_every_ops_command_answers_remotely_as_it_does_locally(gw: Harness, run: Cli, tmp_path: Path) -> None:
    code, out, err = await run.remote("tenants", "create", "team-a", "--json")
    assert code == 0, err
    tenant = json.loads(out)
    assert tenant["name"] == "team-a" and tenant["key"].startswith("sk-")
    # Reads: byte for byte what the same command prints on the gateway's machine.
    reads = [
        ("tenants", "list"),
        ("tenants", "list", "--json"),
        ("tenants", "show", "team-a"),
        ("tenants", "limits", "team-a"),
        ("keys", "list", "team-a"),
        ("upstream-keys", "list"),
        ("quota", "check"),
        ("tasks", "list", "--tenant", "team-a", "--json"),
        ("webhooks", "deliveries", "--json"),
    ]
    for args in reads:
        remote, local = await run.remote(*args), await run.local(*args)
        assert remote[0] == 0 and remote == local, (args, remote, local)

    code, out, err = await run.remote("tenants", "usage", "team-a", "--json")  # the gateway's day, not this one's
    assert code == 0 and json.loads(out)["day"]["used"] == 0, err

    # Changes, through the admin API (audited as its caller).
    code, out, err = await run.remote("keys", "create", "team-a", "--name", "ci", "--json")
    assert code == 0, err
    key = json.loads(out)
    code, out, err = await run.remote("keys", "rotate", key["id"], "--grace", "10m", "--json")
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["rotated_from_id"] == key["id"] and rotated["key"] != key["key"]
    code, out, err = await run.remote("keys", "revoke", key["id"])
    assert code == 0 and "revoked" in out, err
    code, out, err = await run.remote("tenants", "limits", "team-a", "--daily-images", "40")
    assert code == 0 and json.loads(out)["daily_images"] == 40, err
    # Kept images (the harness's gateway keeps none: its store is off, unlike this machine's settings).
    code, out, err = await run.remote("images", "show", "team-a", "--json")
    assert code == 0 and json.loads(out)["images"] == 0, err
    code, out, err = await run.remote("images", "retention", "team-a", "7", "--json")
    assert code == 0 and "retention_days" in json.loads(out), err
    code, out, err = await run.remote("images", "delete", "team-a", "--yes", "--json")
    assert code == 0 and json.loads(out)["images"] == 0, err
    code, _, err = await run.remote("tenants", "disable", "team-a")
    assert code == 0, err
    code, _, err = await run.remote("tenants", "enable", "team-a")
    assert code == 0, err
    code, out, err = await run.remote("upstream-keys", "add", "org-2", "--json", stdin="sk-upstream-second-key\n")
    assert code == 0, err
    upstream = json.loads(out)
    code, out, err = await run.remote("upstream-keys", "drain", upstream["id"], "--json")
    assert code == 0 and json.loads(out)["status"] == "draining", err

    # A task by id: its ledger row and its history.
    task_id = await completed_task(gw, tenant["key"])
    remote, local = await run.remote("tasks", "show", task_id), await run.local("tasks", "show", task_id)
    assert remote[0] == 0 and remote == local, (remote, local)
    assert "completed" in remote[1] and "webhook deliveries: none" in remote[1]
    code, out, _ = await run.remote("tasks", "show", task_id, "--json")
    assert json.loads(out)["upstream_task_id"] and json.loads(out)["deliveries"] == []

    # The audit log, filtered: every change above, made with the admin token.
    code, out, err = await run.remote("audit", "--actor", "admin-token", "--json")
    assert code == 0, err
    actions = [e["action"] for e in json.loads(out)["data"]]
    for action in ("tenant.create", "key.create", "key.rotate", "key.revoke", "limits.update", "tenant.disable"):
        assert action in actions, (action, actions)
    assert "upstream_key.drain" in actions or any(a.endswith("drain") for a in actions), actions
    code, out, _ = await run.remote("audit", "--action", "key.*", "--json")
    assert {e["action"] for e in json.loads(out)["data"]} == {"key.create", "key.rotate", "key.revoke"}
    remote, local = await run.remote("audit", "--action", "key.*"), await run.local("audit", "--action", "key.*")
    assert remote == local

    # Refusals: the service's message, one line, exit 2, the same in both modes.
    for args in (
        ("tenants", "show", "nobody"),
        ("tasks", "list", "--tenant", "nobody"),
        ("webhooks", "show", "team-a"),
    ):
        remote, local = await run.remote(*args), await run.local(*args)
        assert remote[0] == 2 and remote == local, (args, remote, local)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # the remote mode made no ledger, no secrets


async def test_a_wrong_token_or_an_unreachable_gateway_is_one_line(run: Cli) -> None:
    code, out, err = await run.remote("tenants", "list", token="not-the-admin-token-at-all")
    assert (code, out) == (2, "") and err == "seedream-gateway: Invalid admin token\n"
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--url", "http://127.0.0.1:9", "--admin-token", "x" * 20, "tenants", "list"]
    )
    assert result.exit_code == 2 and result.stderr.startswith("seedream-gateway: cannot reach the gateway at")
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["--url", run.base, "tenants", "list"])
    assert result.exit_code == 2 and "an admin token is needed" in result.stderr
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["--url", run.base, "--admin-token", "t", "serve"])
    assert result.exit_code == 2 and "runs on this machine" in result.stderr


async def test_a_profile_file_must_be_owner_only(run: Cli, tmp_path: Path) -> None:
    profiles = tmp_path.parent / f"{tmp_path.name}-profiles.toml"
    profiles.write_text(f'[prod]\nurl = "{run.base}"\nadmin_token = "{ADMIN_TOKEN}"\n')
    env = {"SEEDREAM_GATEWAY_PROFILES": str(profiles)}
    profiles.chmod(0o644)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["--profile", "prod", "tenants", "list"], env=env)
    assert result.exit_code == 2 and "chmod 600" in result.stderr
    profiles.chmod(stat.S_IRUSR | stat.S_IWUSR)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["--profile", "prod", "tenants", "list"], env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["ID", "NAME", "STATUS", "CREATED"]


async def test_a_process_without_any_database_setting_drives_the_gateway(run: Cli, tmp_path: Path) -> None:
    """A real process, with nothing of the gateway's in its environment or its working directory."""
    env = clean_env()
    env["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN  # the token, as ops would export it on a laptop

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "--url", run.base, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )

    made = await asyncio.to_thread(command, "tenants", "create", "far-away", "--json")
    assert made.returncode == 0, made.stderr
    listed = await asyncio.to_thread(command, "audit", "--action", "tenant.create")
    assert listed.returncode == 0, listed.stderr
    assert "tenant.create" in listed.stdout and json.loads(made.stdout)["tenant_id"] in listed.stdout
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
