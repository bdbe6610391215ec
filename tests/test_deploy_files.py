"""Dockerfile, docker-compose.yml and .env.example against the code they deploy (no container engine needed).

Settings names come from `app.config.Settings`, commands and options from the typer app `app.cli.cli`: a renamed
setting, command or option breaks these tests before it breaks a deployment.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
import typer.core
import typer.main
import yaml

from app.cli import cli
from app.config import Settings, SettingsError, resolve_secrets
from app.sandbox import SandboxConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

PREFIX = str(Settings.model_config.get("env_prefix", "")).upper()
SETTING_NAMES = {f"{PREFIX}{name.upper()}": name for name in Settings.model_fields}
PLACEHOLDER_SETTINGS = {"admin_token", "secret_key", "upstream_keys"}
GATEWAY_SERVICES = ("migrate", "sandbox", "gateway")
REQUIRED_FROM_ENV = ("GATEWAY_ADMIN_TOKEN", "GATEWAY_SECRET_KEY")
SANDBOX_PREFIX = str(SandboxConfig.model_config.get("env_prefix", "")).upper()
SANDBOX_SETTING_NAMES = {f"{SANDBOX_PREFIX}{name.upper()}" for name in SandboxConfig.model_fields}

ASSIGNMENT = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


# --- helpers -------------------------------------------------------------------------------------------------


def parse_cli(argv: Sequence[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Resolve `seedream-gateway SUB... --opts` against the real CLI without running it: (path, parsed params)."""
    assert argv and argv[0] == "seedream-gateway", f"{list(argv)}: does not run seedream-gateway"
    command = typer.main.get_command(cli)
    path: list[str] = []
    rest = list(argv[1:])
    while isinstance(command, typer.core.TyperGroup):
        where = " ".join(["seedream-gateway", *path])
        assert rest, f"{list(argv)}: no subcommand after '{where}'"
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"{list(argv)}: '{name}' is not a command of '{where}' ({sorted(command.commands)})"
        path.append(name)
        command = sub
    try:
        ctx = command.make_context(" ".join(path), rest)
    except typer.TyperException as e:  # typer's (vendored click) usage and parameter errors
        raise AssertionError(f"{list(argv)}: {e}") from e
    return tuple(path), dict(ctx.params)


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_text(check: dict[str, Any] | None) -> str:
    test = (check or {}).get("test", [])
    return test if isinstance(test, str) else " ".join(map(str, test))


def python_c_snippets(command: Sequence[str]) -> list[str]:
    return [command[i + 1] for i, part in enumerate(command[:-1]) if part == "-c"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def stage(instructions: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"] + [len(instructions)]
    for begin, end in itertools.pairwise(starts):
        if instructions[begin][1].lower().endswith(f" as {name}"):
            return instructions[begin:end]
    raise AssertionError(f"the Dockerfile has no stage named {name!r}")


def exec_form(args: str, keyword: str) -> list[str]:
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{keyword} should use the exec (JSON array) form, got {args!r}") from e
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), f"{keyword}: {args!r}"
    return parsed


def copies(instructions: list[tuple[str, str]]) -> list[tuple[list[str], str, bool]]:
    """(sources, destination, from another stage) of every COPY/ADD."""
    found = []
    for keyword, args in instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        parts = args.split()
        flags = [p for p in parts if p.startswith("--")]
        paths = [p for p in parts if not p.startswith("--")]
        found.append((paths[:-1], paths[-1], any(f.startswith("--from=") for f in flags)))
    return found


def absolute_destinations(instructions: list[tuple[str, str]]) -> dict[str, PurePosixPath]:
    """Where each context source of a stage lands, following WORKDIR."""
    workdir = PurePosixPath("/")
    landed: dict[str, PurePosixPath] = {}
    for keyword, args in instructions:
        if keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword in ("COPY", "ADD"):
            for sources, dest, from_stage in copies([(keyword, args)]):
                if from_stage:
                    continue
                target = workdir / dest
                for source in sources:
                    is_dir_target = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
                    landed[source.rstrip("/")] = target / Path(source).name if is_dir_target else target
    return landed


def env_example_lines() -> list[str]:
    return ENV_EXAMPLE.read_text().splitlines()


def env_example_assignments() -> dict[str, tuple[str, bool, int]]:
    """NAME -> (value, commented out, line index)."""
    found: dict[str, tuple[str, bool, int]] = {}
    for index, line in enumerate(env_example_lines()):
        match = ASSIGNMENT.match(line)
        if match:
            assert match.group(2) not in found, f".env.example: {match.group(2)} appears twice"
            found[match.group(2)] = (match.group(3), match.group(1) is not None, index)
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No GATEWAY_* variable from the outside and no stray .env in the working directory."""
    import os

    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# --- settings names --------------------------------------------------------------------------------------------


def test_compose_uses_only_real_settings(services: dict[str, dict[str, Any]]) -> None:
    names = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    for name, service in services.items():
        names |= {f"{name}: {key}" for key in environment(service)}
    unknown = sorted(
        n for n in names if n.split(": ")[-1].startswith(PREFIX) and n.split(": ")[-1] not in SETTING_NAMES
    )
    assert not unknown, f"docker-compose.yml names variables that are no Settings field: {unknown}"


def test_env_example_names_only_real_settings() -> None:
    unknown = sorted(n for n in env_example_assignments() if n.startswith(PREFIX) and n not in SETTING_NAMES)
    assert not unknown, f".env.example names variables that are no Settings field: {unknown}"


def test_env_example_lists_every_setting() -> None:
    missing = sorted(set(SETTING_NAMES) - set(env_example_assignments()))
    assert not missing, f".env.example lacks {missing} (fields of app.config.Settings)"


def test_env_example_explains_every_setting_and_its_default() -> None:
    lines = env_example_lines()
    for name, (_, _, index) in env_example_assignments().items():
        if not name.startswith(PREFIX):
            continue
        comment: list[str] = []
        i = index - 1
        while i >= 0 and lines[i].lstrip().startswith("#") and not ASSIGNMENT.match(lines[i]):
            comment.insert(0, lines[i])
            i -= 1
        assert comment, f".env.example: {name} has no comment line above it"
        assert "default" in " ".join(comment).lower(), f".env.example: the comment above {name} omits its default"


def test_env_example_values_parse_and_are_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)
    example = Settings(_env_file=ENV_EXAMPLE)
    for name, field in SETTING_NAMES.items():
        _, commented, _ = env_example_assignments()[name]
        if field in PLACEHOLDER_SETTINGS:
            assert not commented, f".env.example: {name} should be an active placeholder line"
            continue
        assert getattr(example, field) == getattr(defaults, field), (
            f".env.example: {name} is not the default {getattr(defaults, field)!r}"
        )
    # The commented-out examples are valid values too.
    for name, (value, commented, _) in env_example_assignments().items():
        if commented and name in SETTING_NAMES:
            clean_env.setenv(name, value)
    Settings(_env_file=None)


def test_env_example_secrets_are_refused_placeholders(clean_env: pytest.MonkeyPatch) -> None:
    example = Settings(_env_file=ENV_EXAMPLE).model_copy(update={"upstream_base_url": "https://toapis.com"})
    with pytest.raises(SettingsError, match="GATEWAY_SECRET_KEY"):
        resolve_secrets(example)
    example = example.model_copy(update={"secret_key": Settings(secret_key="k" * 32).secret_key})
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_TOKEN"):
        resolve_secrets(example)


# --- compose ---------------------------------------------------------------------------------------------------


def test_compose_commands_exist_in_the_cli(services: dict[str, dict[str, Any]]) -> None:
    expected = {"migrate": ("migrate",), "sandbox": ("sandbox",), "gateway": ("serve",)}
    for name, path in expected.items():
        assert "command" in services[name], f"compose service {name} has no command"
        found, _ = parse_cli(as_argv(services[name]["command"]))
        assert found == path, f"compose service {name} runs {found}, expected {path}"


def test_compose_ports_line_up(services: dict[str, dict[str, Any]]) -> None:
    _, sandbox = parse_cli(as_argv(services["sandbox"]["command"]))
    _, gateway = parse_cli(as_argv(services["gateway"]["command"]))
    assert sandbox["host"] == gateway["host"] == "0.0.0.0", "sandbox and gateway must bind 0.0.0.0 in a container"
    upstream = urlparse(environment(services["gateway"])["GATEWAY_UPSTREAM_BASE_URL"])
    assert (upstream.hostname, upstream.port) == ("sandbox", sandbox["port"]), (
        f"GATEWAY_UPSTREAM_BASE_URL {upstream.geturl()} is not the sandbox service's port {sandbox['port']}"
    )
    published = {str(p).rsplit(":", 1)[-1] for p in services["gateway"].get("ports", [])}
    assert str(gateway["port"]) in published, f"gateway listens on {gateway['port']}, publishes {published}"


def test_compose_environment(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["gateway"])
    db = urlparse(env["GATEWAY_DATABASE_URL"])
    assert db.scheme == "postgresql+asyncpg" and db.hostname == "postgres", f"GATEWAY_DATABASE_URL: {db.geturl()}"
    assert environment(services["migrate"])["GATEWAY_DATABASE_URL"] == env["GATEWAY_DATABASE_URL"], (
        "migrate and gateway must use the same GATEWAY_DATABASE_URL"
    )
    assert env["GATEWAY_UPSTREAM_BASE_URL"] == "http://sandbox:8100"
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    for name in REQUIRED_FROM_ENV:
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env.get(name, "")), (
            f"gateway {name} should be the required variable ${{{name}:?set it in .env}}, got {env.get(name)!r}"
        )


def test_compose_sandbox_uses_only_real_settings(services: dict[str, dict[str, Any]]) -> None:
    unknown = sorted(
        name
        for name in environment(services["sandbox"])
        if name.startswith(SANDBOX_PREFIX) and name not in SANDBOX_SETTING_NAMES
    )
    assert not unknown, f"the compose sandbox names variables that are no SandboxConfig field: {unknown}"


def test_compose_sandbox_never_gets_real_upstream_keys(services: dict[str, dict[str, Any]]) -> None:
    sandbox = environment(services["sandbox"])
    leaked = sorted(
        f"{name}={value}"
        for name, value in sandbox.items()
        if any(v.startswith("GATEWAY_") for v in INTERPOLATION.findall(value))
    )
    assert not leaked, f"the compose sandbox is handed gateway settings (maybe real upstream keys): {leaked}"
    # Its own fake key, which the compose gateway (pointed at it) sends.
    key = sandbox.get("SANDBOX_ACCEPTED_KEYS", "")
    match = re.fullmatch(r"\$\{SANDBOX_KEY:-([^}]+)\}", key)
    assert match, f"SANDBOX_ACCEPTED_KEYS should be ${{SANDBOX_KEY:-<fake default>}}, got {key!r}"
    assert "sandbox" in match.group(1) and "fake" in match.group(1), f"default {match.group(1)!r} should look fake"
    assert environment(services["gateway"]).get("GATEWAY_UPSTREAM_KEYS") == key, (
        "the compose gateway should send the sandbox's key as its upstream key"
    )
    token = sandbox.get("SANDBOX_CONTROL_TOKEN", "")
    assert re.fullmatch(r"\$\{SANDBOX_CONTROL_TOKEN(:?[-?][^}]*)?\}", token), (
        f"SANDBOX_CONTROL_TOKEN should come from the environment, got {token!r}"
    )


def test_compose_sandbox_is_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for port in services["sandbox"].get("ports", []):
        # Short syntax HOST_IP:HOST_PORT:CONTAINER_PORT (without HOST_IP: every interface), or the long syntax.
        host_ip = port.get("host_ip", "") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", f"sandbox port {port!r} is published beyond this host"


def test_compose_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}, "migrate waits for a healthy postgres"
    gateway = depends_on(services["gateway"])
    assert gateway.get("migrate") == "service_completed_successfully", f"gateway depends_on migrate: {gateway}"
    assert gateway.get("sandbox") in ("service_started", "service_healthy"), f"gateway depends_on sandbox: {gateway}"
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            if condition == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                own_check = check or dependency in GATEWAY_SERVICES  # the image's HEALTHCHECK otherwise
                assert own_check and not check.get("disable"), (
                    f"{name} waits for {dependency}, which has no healthcheck"
                )


def test_compose_backing_services(services: dict[str, dict[str, Any]]) -> None:
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert "pg_isready" in healthcheck_text(services["postgres"].get("healthcheck"))
    assert str(services["redis"]["image"]).startswith("redis:7")
    assert "redis-cli" in healthcheck_text(services["redis"].get("healthcheck"))
    for name in GATEWAY_SERVICES:
        assert services[name].get("build") in (".", {"context": "."}), f"{name} should build this repository"
    test = services["sandbox"]["healthcheck"]["test"]
    for snippet in python_c_snippets(test):
        compile(snippet, "sandbox healthcheck", "exec")


# --- Dockerfile ------------------------------------------------------------------------------------------------


def test_dockerfile_runtime_stage(dockerfile: list[tuple[str, str]], services: dict[str, dict[str, Any]]) -> None:
    runtime = final_stage(dockerfile)
    assert runtime[0][1].startswith("${PYTHON_IMAGE}") or "python:3.11" in runtime[0][1]
    assert any(k == "ARG" and "python:3.11" in a and "slim" in a for k, a in dockerfile), "base: python:3.11 slim"
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"the runtime runs as root ({users})"
    healthchecks = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1], "no HEALTHCHECK on /healthz"
    for snippet in python_c_snippets(exec_form(healthchecks[-1].split("CMD", 1)[1].strip(), "HEALTHCHECK")):
        compile(snippet, "HEALTHCHECK", "exec")
    entrypoint = [exec_form(args, "ENTRYPOINT") for keyword, args in runtime if keyword == "ENTRYPOINT"]
    assert entrypoint and "tini" in entrypoint[-1][0], "tini should be PID 1"
    cmd = [exec_form(args, "CMD") for keyword, args in runtime if keyword == "CMD"]
    assert cmd, "no CMD"
    path, params = parse_cli(cmd[-1])
    assert path == ("serve",), f"CMD runs {path}"
    exposed = {int(port.split("/")[0]) for keyword, args in runtime if keyword == "EXPOSE" for port in args.split()}
    assert params["port"] in exposed, f"CMD serves on {params['port']}, EXPOSE says {exposed}"
    _, compose_gateway = parse_cli(as_argv(services["gateway"]["command"]))
    assert compose_gateway["port"] in exposed, f"compose gateway port {compose_gateway['port']} not EXPOSEd"


def test_dockerfile_keeps_migrations_next_to_the_code(dockerfile: list[tuple[str, str]]) -> None:
    # app/db/migrate.py: ROOT = Path(app.__file__).parents[1] must hold alembic.ini and migrations/.
    landed = absolute_destinations(final_stage(dockerfile))
    assert {"app", "alembic.ini", "migrations"} <= set(landed), f"the runtime stage copies only {sorted(landed)}"
    root = landed["app"].parent
    assert landed["alembic.ini"] == root / "alembic.ini", f"alembic.ini lands at {landed['alembic.ini']}, not {root}"
    assert landed["migrations"] == root / "migrations", f"migrations/ lands at {landed['migrations']}, not {root}"
    # The editable install maps `app` to the builder's path: it must be the runtime's path too.
    builder = absolute_destinations(stage(dockerfile, "builder"))
    assert builder.get("app") == landed["app"], f"builder has app at {builder.get('app')}, runtime at {landed['app']}"
    assert any(k == "RUN" and "-e ." in a for k, a in stage(dockerfile, "builder")), "the builder installs editable"


def test_dockerfile_copies_files_that_exist_and_are_not_ignored(dockerfile: list[tuple[str, str]]) -> None:
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    for sources, _, from_stage in copies(dockerfile):
        if from_stage:
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
            hits = [p for p in ignored if not p.startswith("!") and fnmatch.fnmatch(source.rstrip("/"), p)]
            assert not hits, f"the Dockerfile copies {source}, which .dockerignore excludes ({hits})"
    for private in (".env", ".venv", "data", ".git"):
        assert any(fnmatch.fnmatch(private, p) for p in ignored), f".dockerignore should exclude {private}"


# --- the helpers can fail --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["seedream-gateway", "deploy"], "'deploy' is not a command"),
        (["seedream-gateway", "serve", "--listen", "0.0.0.0"], "--listen"),
        (["seedream-gateway", "serve", "--port", "http"], "http"),
        (["seedream-gateway", "tenants"], "no subcommand"),
        (["uvicorn", "app.main:app"], "does not run seedream-gateway"),
    ],
)
def test_parse_cli_rejects(argv: list[str], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        parse_cli(argv)


def test_parse_cli_reads_nested_commands_and_options() -> None:
    assert parse_cli(["seedream-gateway", "tenants", "create", "team-a", "--json"]) == (
        ("tenants", "create"),
        {"name": "team-a", "as_json": True},
    )
    assert parse_cli(["seedream-gateway", "serve", "--port", "9000"])[1]["port"] == 9000
