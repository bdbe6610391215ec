"""`serve --workers N` plumbing, in-process: the option and the settings reach uvicorn and the workers' environment.

Nothing is served here: uvicorn.run and uvicorn's worker supervisor are replaced by recorders, the migrations and the
preflight by no-ops. tests/e2e/test_serve_workers.py runs the real process group.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvicorn.supervisors
from fastapi import FastAPI
from pydantic import ValidationError
from typer.testing import CliRunner
from uvicorn.config import STARTUP_FAILURE

import app.cli.common
import app.core.db.embedded
import app.core.db.migrate
import app.main
from app.cli import cli
from app.cli.server import WORKER_APP
from app.core.config import Settings
from app.core.metrics import MULTIPROC_ENV

# What `serve` writes into os.environ for its workers: restored after each test (see `env`). The metrics directory
# too: left behind, it would point the subprocesses of later tests at a directory `serve` has removed.
WRITTEN = ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_WORKERS", "GATEWAY_DATABASE_URL", MULTIPROC_ENV)


NEVER_CONNECTED = "postgresql+asyncpg://gw@127.0.0.1:9/never"


class Recorder:
    """Stands in for uvicorn.run and for uvicorn.supervisors.Multiprocess; remembers what it was given."""

    def __init__(self) -> None:
        self.run_calls: list[tuple[Any, dict[str, Any]]] = []
        self.supervised: list[uvicorn.Config] = []
        self.environ_at_run: dict[str, str] = {}
        self.worker_exitcodes: list[int | None] = [-15, -15]  # what workers stopped by SIGTERM leave

    def run(self, app: Any, **kwargs: Any) -> None:
        self.run_calls.append((app, kwargs))

    def supervisor(self, config: uvicorn.Config, sockets: list[Any]) -> Any:
        recorder = self

        class Worker:
            def __init__(self, exitcode: int | None) -> None:
                self.exitcode = exitcode

        class Supervisor:
            processes = [Worker(code) for code in recorder.worker_exitcodes]

            def run(self) -> None:
                recorder.supervised.append(config)
                recorder.environ_at_run = dict(os.environ)

        assert sockets == ["bound-socket"]
        return Supervisor()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """A configured gateway (external upstream, real secrets, a database never connected to) for CliRunner, serving
    stubbed."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    for name in WRITTEN:  # monkeypatch restores these (absent) at the end, whatever `serve` wrote
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env

    async def no_preflight(settings: Settings) -> None:
        return None

    monkeypatch.setattr(app.main, "preflight", no_preflight)
    monkeypatch.setattr(app.core.db.migrate, "upgrade", lambda url: None)
    return {
        "GATEWAY_UPSTREAM_BASE_URL": "http://upstream.test",
        "GATEWAY_SECRET_KEY": "workers-secret-key-0123456789abcdef",
        "GATEWAY_ADMIN_TOKEN": "workers-admin-token-0123456789",
        # CliRunner restores what it sets: these come back as they were after each invoke.
        **dict.fromkeys(WRITTEN),
        "GATEWAY_DATABASE_URL": NEVER_CONNECTED,
    }


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(uvicorn, "run", rec.run)
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", rec.supervisor)
    monkeypatch.setattr(uvicorn.Config, "bind_socket", lambda self: "bound-socket")
    return rec


def serve(env: dict[str, str | None], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["serve", *args], env=env)
    return result.exit_code, result.stderr


# --- settings ----------------------------------------------------------------------------------------------------


def test_workers_and_grace_settings_default_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    defaults = Settings(_env_file=None)
    assert (defaults.workers, defaults.shutdown_grace_s) == (1, 30)
    monkeypatch.setenv("GATEWAY_WORKERS", "4")
    monkeypatch.setenv("GATEWAY_SHUTDOWN_GRACE_S", "12")
    assert (Settings(_env_file=None).workers, Settings(_env_file=None).shutdown_grace_s) == (4, 12)
    for name, value in (("GATEWAY_WORKERS", "0"), ("GATEWAY_SHUTDOWN_GRACE_S", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings(_env_file=None)
        monkeypatch.delenv(name)


# --- one process -------------------------------------------------------------------------------------------------


def test_one_worker_serves_the_app_object_in_this_process(env: dict[str, str | None], recorder: Recorder) -> None:
    code, err = serve({**env, "GATEWAY_SHUTDOWN_GRACE_S": "7"}, "--port", "9123")
    assert code == 0, err
    assert not recorder.supervised
    [(served, options)] = recorder.run_calls
    assert isinstance(served, FastAPI)
    assert options["port"] == 9123 and options["host"] == "127.0.0.1"
    assert options["timeout_graceful_shutdown"] == 7
    assert "workers" not in options


# --- several processes -------------------------------------------------------------------------------------------


def test_gateway_workers_setting_starts_the_supervisor_with_the_factory(
    env: dict[str, str | None], recorder: Recorder
) -> None:
    code, err = serve({**env, "GATEWAY_WORKERS": "3"})
    assert code == 0, err
    assert not recorder.run_calls
    [config] = recorder.supervised
    assert (config.app, config.factory, config.workers) == (WORKER_APP, True, 3)
    assert WORKER_APP == "app.main:app_from_environment"
    assert (config.host, config.port, config.timeout_graceful_shutdown) == ("127.0.0.1", 8000, 30)
    assert config.proxy_headers is True and config.server_header is False


def test_the_command_line_wins_and_reaches_the_workers_environment(
    env: dict[str, str | None], recorder: Recorder
) -> None:
    env = {**env, "GATEWAY_WORKERS": "4", "GATEWAY_HOST": "127.0.0.2", "GATEWAY_PORT": "8001"}
    code, err = serve(env, "--workers", "2", "--host", "0.0.0.0", "--port", "9124")
    assert code == 0, err
    [config] = recorder.supervised
    assert (config.workers, config.host, config.port) == (2, "0.0.0.0", 9124)
    # A spawned worker builds Settings() from the environment it inherits: the parent's, as it was at run().
    seen = recorder.environ_at_run
    assert (seen["GATEWAY_HOST"], seen["GATEWAY_PORT"], seen["GATEWAY_WORKERS"]) == ("0.0.0.0", "9124", "2")
    assert seen["GATEWAY_DATABASE_URL"] == NEVER_CONNECTED


def test_the_workers_use_the_embedded_postgresql_the_parent_runs(
    env: dict[str, str | None], recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded_url = "postgresql+asyncpg://postgres@/gateway?host=/somewhere/data/postgres"
    started: list[Path] = []
    migrated: list[str] = []

    def start(data_dir: Path, progress: Any) -> str:
        started.append(data_dir)
        return embedded_url

    monkeypatch.setattr(app.core.db.embedded, "start", start)
    monkeypatch.setattr(app.cli.common, "upgrade", migrated.append)
    code, err = serve({**env, "GATEWAY_DATABASE_URL": None}, "--workers", "2")
    assert code == 0, err
    assert started == [Path("data")] and migrated == [embedded_url]  # once, by the parent
    assert recorder.environ_at_run["GATEWAY_DATABASE_URL"] == embedded_url


def test_the_factory_builds_the_app_from_the_environment(
    env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_HOST", "0.0.0.0")
    monkeypatch.setenv("GATEWAY_PORT", "9125")
    built: list[Settings] = []
    real_create_app = app.main.create_app

    def recording_create_app(settings: Settings) -> FastAPI:
        built.append(settings)
        return real_create_app(settings)

    monkeypatch.setattr(app.main, "create_app", recording_create_app)
    assert isinstance(app.main.app_from_environment(), FastAPI)
    [settings] = built
    assert (settings.host, settings.port, settings.upstream_base_url) == ("0.0.0.0", 9125, "http://upstream.test")
    assert settings.secrets.secret_key == env["GATEWAY_SECRET_KEY"]
    assert settings.secrets.admin_token == env["GATEWAY_ADMIN_TOKEN"]


def test_a_worker_that_cannot_start_is_exit_code_2(env: dict[str, str | None], recorder: Recorder) -> None:
    recorder.worker_exitcodes = [STARTUP_FAILURE, None]
    code, err = serve(env, "--workers", "2")
    assert code == 2
    assert err.startswith("seedream-gateway: a worker process could not start"), err


def test_zero_config_refuses_several_workers_before_doing_anything(
    env: dict[str, str | None], recorder: Recorder, tmp_path: Path
) -> None:
    zero_config = {**env, "GATEWAY_UPSTREAM_BASE_URL": None, "GATEWAY_DATABASE_URL": None, "GATEWAY_ADMIN_TOKEN": None}
    zero_config |= {"GATEWAY_SECRET_KEY": None, "GATEWAY_DATA_DIR": str(tmp_path / "data")}
    code, err = serve(zero_config, "--workers", "2")
    assert code == 2
    assert err.count("\n") == 1 and "GATEWAY_UPSTREAM_BASE_URL" in err and "sandbox" in err, err
    assert not recorder.supervised and not recorder.run_calls
    assert not (tmp_path / "data").exists(), "no demo secrets, database or key made for a refused start"


def test_workers_below_one_are_a_usage_error(env: dict[str, str | None], recorder: Recorder) -> None:
    code, err = serve(env, "--workers", "0")
    assert code == 2 and "--workers" in err, err
    assert not recorder.supervised and not recorder.run_calls
