"""Dockerfile, docker-compose.yml, .env.example and deploy/ (Kubernetes, Grafana, Prometheus) against the code they
deploy, offline (no container engine, no cluster, no network).

Settings names come from `app.core.config.Settings`, commands and options from the typer app `app.cli.cli`: a renamed
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
from app.core.config import Settings, SettingsError, resolve_secrets
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
    assert not missing, f".env.example lacks {missing} (fields of app.core.config.Settings)"


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


def test_compose_serves_admin_apart_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    """/admin (the ops API and the console) on its own port, published on the host's loopback only."""
    env = environment(services["gateway"])
    admin_port = int(env["GATEWAY_ADMIN_PORT"])
    assert env["GATEWAY_ADMIN_HOST"] == "0.0.0.0", "inside the container the admin port binds every interface"
    published = {str(p).rsplit(":", 1)[-1]: str(p) for p in services["gateway"].get("ports", [])}
    assert published[str(admin_port)].startswith("127.0.0.1:"), f"the admin port is published as {published}"
    _, gateway = parse_cli(as_argv(services["gateway"]["command"]))
    assert admin_port != gateway["port"]


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


# --- Kubernetes, Grafana, Prometheus (deploy/) ------------------------------------------------------------------
# Offline: the Kubernetes JSON schemas come with the kubernetes-validate package (pinned in pyproject.toml), the app's
# routes from building it (no database, no lifespan), commands from the typer app.

DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"
DASHBOARD = DEPLOY / "grafana" / "seedream-gateway.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
README = ROOT / "README.md"
# The oldest Kubernetes the manifests must fit (the schemas kubernetes-validate bundles for it, strict: unknown
# fields are errors).
K8S_VERSION = "1.30"
SECRET_NAME = "seedream-gateway-secrets"
REQUIRED_SECRETS = {"GATEWAY_DATABASE_URL", "GATEWAY_SECRET_KEY", "GATEWAY_ADMIN_TOKEN", "GATEWAY_UPSTREAM_KEYS"}
OPTIONAL_SECRETS = {"GATEWAY_PREVIOUS_SECRET_KEYS", "GATEWAY_REDIS_URL", "GATEWAY_METRICS_TOKEN"}
# Settings a URL with a password may hide in, besides every SecretStr field.
SECRET_URL_SETTINGS = {"GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL"}
# Named by the manifests before the code has them: accepted while they do not exist yet, and then checked like every
# other name (the metrics work added GATEWAY_METRICS_TOKEN and /metrics; none pending now).
PENDING_SETTINGS: set[str] = set()
PENDING_PATHS: set[str] = set()

# The gateway's metrics (name -> labels), as the dashboard and the alerts use them; the metrics code must match.
METRICS: dict[str, set[str]] = {
    "gateway_http_requests_total": {"route", "method", "status"},
    "gateway_http_request_duration_seconds_bucket": {"route", "method", "le"},
    "gateway_upstream_calls_total": {"key_id", "operation", "outcome"},
    "gateway_upstream_call_duration_seconds_bucket": {"operation", "le"},
    "gateway_tasks_ended_total": {"tenant", "status"},
    "gateway_tasks_waiting": set(),
    "gateway_refusals_total": {"tenant", "kind"},
    "gateway_webhook_deliveries_total": {"outcome"},
    "gateway_upstream_keys": {"state"},
    "gateway_db_pool_in_use": set(),
}
# kube-state-metrics, for the readiness alerts.
EXTERNAL_METRICS: dict[str, set[str]] = {
    "kube_deployment_status_replicas_unavailable": {"deployment", "namespace"},
    "kube_deployment_status_replicas_available": {"deployment", "namespace"},
}
# Added by the scrape itself, on every series.
TARGET_LABELS = {"instance", "job", "namespace", "pod"}
EXPECTED_ALERTS = {
    "SeedreamGatewayHigh5xxRate",
    "SeedreamGatewayUpstreamKeyDisabled",
    "SeedreamGatewayNoUsableUpstreamKey",
    "SeedreamGatewayWaitingQueueGrowing",
    "SeedreamGatewayWebhookDeadLetters",
    "SeedreamGatewayReplicasNotReady",
    "SeedreamGatewayDown",
}

SETTING_REFERENCE = re.compile(r"\bGATEWAY_[A-Z0-9_]+\b")
METRIC_NAME = re.compile(r"\b((?:gateway|kube)_[a-z0-9_]+)\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) of every manifest under deploy/kubernetes/, the kustomization aside."""
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path == KUSTOMIZATION:
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for _, d in k8s_documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''} in deploy/kubernetes/, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's port number."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def env_vars(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (500m, 2, 512Mi, 1G) as a number."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def readme_anchors() -> set[str]:
    anchors, fenced = set(), False
    for line in README.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


def promql_problems(expr: str) -> list[str]:
    """Unknown metric names, and labels no metric of the expression has."""
    known = {**METRICS, **EXTERNAL_METRICS}
    names = set(METRIC_NAME.findall(expr))
    problems = [f"unknown metric {n}" for n in sorted(names - set(known))]
    if not names & set(known):
        return [*problems, f"no known metric in {expr!r}"]
    labels = set(TARGET_LABELS).union(*(known[n] for n in names if n in known))
    used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    used |= {label for selector in SELECTOR.findall(expr) for label in MATCHER.findall(selector)}
    return problems + [f"label {label!r} is on none of {sorted(names)}" for label in sorted(used - labels)]


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def served() -> Any:
    """Whether the gateway app answers GET <path> (route matching only: no database, no lifespan)."""
    from starlette.routing import Match

    from app.main import create_app

    app = create_app(
        Settings(_env_file=None, upstream_base_url="http://upstream.invalid", secret_key="s" * 32, admin_token="a" * 32)
    )

    def answers(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    return answers


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return resource("Deployment")


@pytest.fixture(scope="module")
def configmap() -> dict[str, str]:
    data: dict[str, str] = resource("ConfigMap")["data"]
    return data


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert SECRET_EXAMPLE.name not in listed, "secret.example.yaml must not be deployed by the kustomization"
    assert listed == on_disk - {SECRET_EXAMPLE.name}, f"kustomization resources {sorted(listed)} != {sorted(on_disk)}"
    images = {image["name"] for image in kustomization.get("images", [])}
    for name, doc in k8s_documents():
        if doc["kind"] in ("Deployment", "Job"):
            assert only_container(doc)["image"] in images, f"{name}: its image is not set by the kustomization"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == kustomization["namespace"], f"{name}: namespace"


@pytest.mark.parametrize(("name", "doc"), k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(map(str, e.path))
        message = f"{name}: {doc['kind']} invalid for Kubernetes {K8S_VERSION} at {where}: {e.message}"
        raise AssertionError(message) from None


def test_the_schema_check_catches_a_typo() -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(resource("Deployment")))
    only_container(broken)["readinesProbe"] = only_container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_workloads_run_real_cli_commands(dockerfile: list[tuple[str, str]]) -> None:
    from typer.testing import CliRunner

    expected = {"Deployment": ("serve",), "Job": ("migrate",)}
    for kind, want in expected.items():
        container = only_container(resource(kind))
        # Only args: the image's ENTRYPOINT (tini, PID 1) stays in front of them.
        assert "command" not in container, f"{kind}: set args, not command (tini must stay PID 1)"
        path, _ = parse_cli(container["args"])
        assert path == want, f"{kind} runs {path}, expected {want}"
    commands = {parse_cli(only_container(resource(kind))["args"])[0] for kind in expected}
    commands.add(parse_cli(exec_form(next(a for k, a in final_stage(dockerfile) if k == "CMD"), "CMD"))[0])
    for path in sorted(commands):
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, f"seedream-gateway {' '.join(path)} --help: {result.output}"


def test_ports_and_probes_line_up(deployment: dict[str, Any], served: Any, dockerfile: list[tuple[str, str]]) -> None:
    container = only_container(deployment)
    _, params = parse_cli(container["args"])
    assert params["host"] == "0.0.0.0", "serve must bind 0.0.0.0 in a pod"
    port = params["port"]
    assert container_port(container, "http") == port, f"containerPort http != serve --port {port}"
    probes = {name: container.get(name) for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert all(probes.values()), f"missing probes: {[n for n, p in probes.items() if not p]}"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name, probe in probes.items():
        assert container_port(container, probe["httpGet"]["port"]) == port, f"{name} probes another port"
        assert served(probe["httpGet"]["path"]), f"{name}: the app does not serve {probe['httpGet']['path']}"
    service = resource("Service", "seedream-gateway")
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 80 and container_port(container, service_port["targetPort"]) == port
    runtime = final_stage(dockerfile)
    exposed = {int(p.split("/")[0]) for k, a in runtime if k == "EXPOSE" for p in a.split()}
    assert port in exposed, f"the image EXPOSEs {exposed}, the pod serves {port}"
    healthcheck = next(a for k, a in runtime if k == "HEALTHCHECK")
    assert f":{port}{probes['livenessProbe']['httpGet']['path']}" in healthcheck, "HEALTHCHECK != the liveness probe"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port, "prometheus.io/port is not the gateway's port"


def test_metrics_path_is_served(deployment: dict[str, Any], served: Any) -> None:
    path = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    if not served(path) and path in PENDING_PATHS:
        pytest.skip(f"the app does not serve {path} yet (the metrics work adds it)")
    assert served(path), f"prometheus.io/path {path} is not served by the app"


def test_deploy_files_name_only_real_settings() -> None:
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted(DEPLOY.rglob("*")) if p.is_file()}
    texts["Dockerfile"] = DOCKERFILE.read_text()
    unknown = sorted(
        f"{where}: {name}"
        for where, text in texts.items()
        for name in set(SETTING_REFERENCE.findall(text))
        if name not in SETTING_NAMES and name not in PENDING_SETTINGS
    )
    assert not unknown, f"names that are no Settings field: {unknown}"
    for name in PENDING_SETTINGS - set(SETTING_NAMES):  # not a setting yet: only ever an optional secret
        assert name in OPTIONAL_SECRETS, f"{name} is not a setting yet: reference it as an optional secret only"


def test_every_secret_comes_from_the_secret(deployment: dict[str, Any], configmap: dict[str, str]) -> None:
    fields = Settings.model_fields.items()
    secret_fields = {f"{PREFIX}{name.upper()}" for name, field in fields if "SecretStr" in str(field.annotation)}
    secrets = REQUIRED_SECRETS | OPTIONAL_SECRETS
    assert secret_fields | SECRET_URL_SETTINGS <= secrets, f"not deployed as secrets: {secret_fields - secrets}"
    env = env_vars(only_container(deployment))
    for name in sorted(secrets):
        assert name in env, f"the Deployment does not set {name}"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref["name"] == SECRET_NAME and ref["key"] == name, f"{name}: expected secretKeyRef {SECRET_NAME}"
        optional = name in OPTIONAL_SECRETS
        assert bool(ref.get("optional")) == optional, f"{name}: secretKeyRef.optional should be {optional}"
    assert not secrets & set(configmap), f"secrets in the ConfigMap: {sorted(secrets & set(configmap))}"
    for workload in (deployment, resource("Job")):
        for name, var in env_vars(only_container(workload)).items():
            assert name not in secrets or "value" not in var, f"{workload['kind']}: {name} has a literal value"
    example = resource("Secret", SECRET_NAME)
    assert set(example["stringData"]) == secrets, f"secret.example.yaml keys: {sorted(example['stringData'])}"


def test_secret_example_holds_refused_placeholders(clean_env: pytest.MonkeyPatch, configmap: dict[str, str]) -> None:
    values = {k: v for k, v in resource("Secret", SECRET_NAME)["stringData"].items() if k in SETTING_NAMES}
    for name, value in {**configmap, **values}.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError):
        resolve_secrets(Settings(_env_file=None))


def test_configmap_is_valid_settings(clean_env: pytest.MonkeyPatch, configmap: dict[str, str]) -> None:
    for name, value in configmap.items():
        clean_env.setenv(name, value)
    settings = Settings(_env_file=None, secret_key="s" * 32, admin_token="a" * 32)
    assert not settings.zero_config, "GATEWAY_UPSTREAM_BASE_URL must be set: empty is the zero-config demo"
    assert settings.auto_migrate is False, "migrations run in the Job, not at pod start (replicas would race)"
    assert "GATEWAY_WORKERS" in configmap, "GATEWAY_WORKERS comes from the ConfigMap"


def test_graceful_shutdown_fits_the_grace_period(deployment: dict[str, Any], configmap: dict[str, str]) -> None:
    grace = int(configmap.get("GATEWAY_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    pre_stop = only_container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", f"preStop should pause (sleep N), got {pre_stop}"
    pause = int(pre_stop[1])
    termination = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert termination > pause + grace, f"terminationGracePeriodSeconds {termination} <= preStop {pause} + {grace}"


def test_pods_run_unprivileged(dockerfile: list[tuple[str, str]]) -> None:
    runtime = final_stage(dockerfile)
    image_user = [a for k, a in runtime if k == "USER"][-1].split(":")[0]
    assert image_user.isdigit(), f"USER {image_user}: numeric, so runAsNonRoot can check it"
    assert any(k == "RUN" and f"--uid {image_user}" in a for k, a in runtime), "USER is not the user the image adds"
    for kind in ("Deployment", "Job"):
        spec = pod_spec(resource(kind))
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == image_user, f"{kind}: pod securityContext"
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", f"{kind}: seccomp"
        assert spec["automountServiceAccountToken"] is False, f"{kind}: no API token needed"
        assert spec["enableServiceLinks"] is False, f"{kind}: service links could inject GATEWAY_PORT"
        container = only_container(resource(kind))
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and str(sc["runAsUser"]) == image_user, f"{kind}: container user"
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, kind
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), kind
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", kind
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{kind}: /tmp must be a writable emptyDir"
        resources = container["resources"]
        for what in ("cpu", "memory"):
            request, limit = resources["requests"][what], resources["limits"][what]
            assert quantity(request) <= quantity(limit), f"{kind}: {what} request {request} > limit {limit}"


def test_the_admin_surface_has_its_own_port_and_service(deployment: dict[str, Any], configmap: dict[str, str]) -> None:
    """GATEWAY_ADMIN_PORT is a port of the container, reached only by the admin Service, never the public one."""
    container = only_container(deployment)
    admin_port = int(configmap["GATEWAY_ADMIN_PORT"])
    assert configmap["GATEWAY_ADMIN_HOST"] == "0.0.0.0", "in a pod the admin port binds every interface"
    assert container_port(container, "admin") == admin_port
    admin = resource("Service", "seedream-gateway-admin")
    (port,) = admin["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == admin_port and admin["spec"]["type"] == "ClusterIP"
    assert selects(admin["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    public = resource("Service", "seedream-gateway")
    assert all(container_port(container, p["targetPort"]) != admin_port for p in public["spec"]["ports"])


def test_selectors_line_up(deployment: dict[str, Any]) -> None:
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pods)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count (apply would reset it)"
    service = resource("Service", "seedream-gateway")
    assert selects(service["spec"]["selector"], pods), "the Service does not select the gateway pods"
    pdb = resource("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pods), "the PDB does not select the gateway pods"
    job_pods = resource("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selects(service["spec"]["selector"], job_pods), "the Service would route to the Job"
    assert not selects(deployment["spec"]["selector"]["matchLabels"], job_pods), "the Deployment selects the Job"
    hpa = resource("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"] >= 1, "a drain must be able to evict a pod"


def test_migration_job_runs_before_the_rollout(deployment: dict[str, Any]) -> None:
    job = resource("Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert "pre-upgrade" in annotations["helm.sh/hook"] and "pre-install" in annotations["helm.sh/hook"]
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    container = only_container(job)
    assert container["image"] == only_container(deployment)["image"], "the Job migrates with the Deployment's image"
    # A PreSync hook runs before the sync creates the ConfigMap: the Job needs the Secret only.
    assert "envFrom" not in container, "the migration Job should not depend on the ConfigMap"
    want = env_vars(only_container(deployment))["GATEWAY_DATABASE_URL"]["valueFrom"]
    assert env_vars(container)["GATEWAY_DATABASE_URL"]["valueFrom"] == want, "the Job migrates another database"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_and_alerts_use_known_metrics_and_labels() -> None:
    exprs = {f"dashboard {p['title']!r}": t["expr"] for p in dashboard_panels() for t in p.get("targets", [])}
    exprs |= {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    problems = [f"{where}: {problem}" for where, expr in exprs.items() for problem in promql_problems(expr)]
    assert not problems, "\n".join(problems)
    shown = {name for p in dashboard_panels() for t in p.get("targets", []) for name in METRIC_NAME.findall(t["expr"])}
    assert set(METRICS) <= shown, f"metrics without a panel: {sorted(set(METRICS) - shown)}"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(gateway_http_request_total[5m]))", "unknown metric gateway_http_request_total"),
        ("sum by (tenant) (rate(gateway_http_requests_total[5m]))", "label 'tenant'"),
        ('gateway_upstream_keys{status="disabled"}', "label 'status'"),
    ],
)
def test_promql_check_rejects(expr: str, problem: str) -> None:
    assert any(problem in p for p in promql_problems(expr)), promql_problems(expr)


def test_alerts_have_a_summary_and_a_runbook_entry() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    anchors = readme_anchors()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), f"{rule['alert']} has no summary"
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("README.md#"), f"{rule['alert']}: runbook_url {url}"
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: README.md has no heading for {url}"
