"""Settings from the environment, the secret rules (strict outside zero-config), and the CLI's one-line refusal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings, SettingsError, resolve_secrets

GOOD_SECRET = "k3y-Xq9vR2mT8wLp4sZ7nB1c"
GOOD_ADMIN = "adm-Hy6uJ3kD0fGq5rWe2tYx"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GATEWAY_* from the outer environment, and no `.env` from the repository (cwd is tmp_path)."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_BASE_URL", "https://api.toapis.com")
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))


# --- parsing and defaults -------------------------------------------------------------------------------


def test_upstream_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_KEYS", " sk-one, sk-two ,,sk-three,")
    keys = [key.get_secret_value() for key in Settings().upstream_keys]
    assert keys == ["sk-one", "sk-two", "sk-three"]


def test_a_single_upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_KEYS", "sk-only")
    assert [key.get_secret_value() for key in Settings().upstream_keys] == ["sk-only"]


def test_upstream_keys_default_to_none() -> None:
    assert Settings().upstream_keys == []


def test_upstream_keys_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_KEYS", "sk-very-secret-upstream")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    shown = repr(Settings())
    assert "sk-very-secret-upstream" not in shown
    assert GOOD_SECRET not in shown


def test_defaults_are_zero_config_with_the_embedded_postgres_under_data_dir() -> None:
    settings = Settings()
    assert settings.zero_config is True
    assert settings.data_dir == Path("data")
    assert settings.database_url == ""  # the commands start the embedded PostgreSQL under data/postgres
    assert settings.should_auto_migrate is True
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_a_configured_database_is_not_auto_migrated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql+asyncpg://gw@db/gw")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://gw@db/gw"
    assert settings.should_auto_migrate is False


def test_auto_migrate_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql+asyncpg://gw@db/gw")
    monkeypatch.setenv("GATEWAY_AUTO_MIGRATE", "true")
    assert Settings().should_auto_migrate is True


def test_an_upstream_url_leaves_zero_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_BASE_URL", "https://api.toapis.com")
    assert Settings().zero_config is False


def test_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GATEWAY_PORT=9123\nGATEWAY_UPSTREAM_KEYS=a,b\n")
    settings = Settings()
    assert settings.port == 9123
    assert [key.get_secret_value() for key in settings.upstream_keys] == ["a", "b"]


# --- secrets outside zero-config ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "changeme", "CHANGEME", "changeme        ", "short-but-real", "x" * 15])
def test_missing_or_placeholder_secret_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str | None
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", GOOD_ADMIN)
    if secret is not None:
        monkeypatch.setenv("GATEWAY_SECRET_KEY", secret)

    with pytest.raises(SettingsError) as info:
        resolve_secrets(Settings())

    message = str(info.value)
    assert message.startswith("GATEWAY_SECRET_KEY ")
    assert "\n" not in message
    assert "GATEWAY_ADMIN_TOKEN" not in message
    assert not (tmp_path / "data" / "demo-secrets.json").exists()


@pytest.mark.parametrize("admin", [None, "changeme", "placeholder", "admin"])
def test_missing_or_placeholder_admin_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin: str | None
) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    if admin is not None:
        monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", admin)

    with pytest.raises(SettingsError) as info:
        resolve_secrets(Settings())

    message = str(info.value)
    assert message.startswith("GATEWAY_ADMIN_TOKEN ")
    assert "\n" not in message


@pytest.mark.parametrize(
    "keys", ["sk-replace-with-your-upstream-key", "sk-real-0123456789,sk-replace-with-your-upstream-key", "changeme"]
)
def test_a_placeholder_upstream_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: str) -> None:
    """.env.example's upstream key is a placeholder, refused like the other two (it used to join the pool)."""
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", GOOD_ADMIN)
    monkeypatch.setenv("GATEWAY_UPSTREAM_KEYS", keys)

    with pytest.raises(SettingsError) as info:
        resolve_secrets(Settings())

    assert str(info.value).startswith("GATEWAY_UPSTREAM_KEYS holds a placeholder")
    assert "sk-real" not in str(info.value)


def test_the_example_files_placeholders_are_all_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """.env.example copied as it is, with an upstream URL set: refused, as the file says."""
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    (tmp_path / ".env").write_text(
        example.replace("GATEWAY_UPSTREAM_BASE_URL=\n", "GATEWAY_UPSTREAM_BASE_URL=https://x\n")
    )
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", GOOD_ADMIN)

    with pytest.raises(SettingsError, match="GATEWAY_UPSTREAM_KEYS"):
        resolve_secrets(Settings())


def test_demo_mode_drops_a_placeholder_upstream_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.upstream.feature import SANDBOX_DEMO_UPSTREAM_KEY, configured_upstream_keys

    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_UPSTREAM_KEYS", "sk-replace-with-your-upstream-key")

    assert configured_upstream_keys(Settings()) == [SANDBOX_DEMO_UPSTREAM_KEY]


def test_real_secrets_are_used_as_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    production(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", GOOD_ADMIN)

    resolved = Settings().secrets

    assert (resolved.secret_key, resolved.admin_token) == (GOOD_SECRET, GOOD_ADMIN)
    assert not (tmp_path / "data").exists()


# --- zero-config: generated once, persisted ----------------------------------------------------------------


def test_zero_config_generates_and_persists_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    old_umask = os.umask(0o022)  # a usual umask would leave a freshly written file world-readable
    try:
        first = resolve_secrets(Settings())
    finally:
        os.umask(old_umask)

    path = tmp_path / "data" / "demo-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"admin_token": first.admin_token, "secret_key": first.secret_key}
    assert len(first.secret_key) >= 16
    assert len(first.admin_token) >= 16
    assert first.secret_key != first.admin_token

    second = resolve_secrets(Settings())
    assert (second.admin_token, second.secret_key) == (first.admin_token, first.secret_key)


def test_zero_config_secrets_differ_per_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "one"))
    one = resolve_secrets(Settings())
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "two"))
    two = resolve_secrets(Settings())
    assert one.secret_key != two.secret_key
    assert one.admin_token != two.admin_token


def test_zero_config_prefers_real_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "changeme")

    resolved = resolve_secrets(Settings())

    stored = json.loads((tmp_path / "data" / "demo-secrets.json").read_text())
    assert resolved.secret_key == GOOD_SECRET
    assert resolved.admin_token == stored["admin_token"] != "changeme"


def test_settings_secrets_is_resolved_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    first = settings.secrets
    (tmp_path / "data" / "demo-secrets.json").unlink()
    assert settings.secrets is first


# --- the CLI refuses to start with a one-line reason ------------------------------------------------------


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.append(app))
    return started


def test_serve_without_secret_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_server: list[object]
) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_BASE_URL", "https://api.toapis.com")

    result = CliRunner().invoke(cli, ["serve"])

    assert result.exit_code == 2, result.output
    assert no_server == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("seedream-gateway: GATEWAY_SECRET_KEY is missing or a placeholder")
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no database, no demo secrets


def test_serve_with_placeholder_admin_token_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_server: list[object]
) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_BASE_URL", "https://api.toapis.com")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "changeme")

    result = CliRunner().invoke(cli, ["serve"])

    assert result.exit_code == 2
    assert no_server == []
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "GATEWAY_ADMIN_TOKEN" in result.stderr


def test_tenants_create_without_secret_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_BASE_URL", "https://api.toapis.com")

    result = CliRunner().invoke(cli, ["tenants", "create", "acme"])

    assert result.exit_code == 2
    assert result.stderr.strip().startswith("seedream-gateway: GATEWAY_SECRET_KEY")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_sandbox_help_names_the_port_it_binds() -> None:
    """It said GATEWAY_PORT or 8000, and bound 8100."""
    from app.cli.server import SANDBOX_DEFAULT_PORT

    result = CliRunner().invoke(cli, ["sandbox", "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    assert f"default: {SANDBOX_DEFAULT_PORT}" in result.output
    assert "GATEWAY_PORT" not in result.output


def test_an_ops_command_where_there_is_no_gateway_refuses_instead_of_making_a_ledger(tmp_path: Path) -> None:
    """Run outside the gateway's directory without settings, a command used to create a fresh demo ledger there."""
    result = CliRunner().invoke(cli, ["tenants", "list"])

    assert result.exit_code == 2
    assert result.stderr.startswith("seedream-gateway: no gateway here: GATEWAY_DATABASE_URL is not set")
    assert "--url" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no data/postgres, no demo secrets


def test_moving_from_the_demo_names_the_demos_secrets_file(tmp_path: Path) -> None:
    """The refusal said the secret key "was changed" without saying where the demo's generated one is."""
    from app.cli.server import _explained
    from app.core.errors import SecretKeyMismatch

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "demo-secrets.json").write_text(json.dumps({"admin_token": GOOD_ADMIN, "secret_key": GOOD_SECRET}))
    real = Settings(upstream_base_url="https://api.toapis.com", data_dir=data_dir)
    error = SecretKeyMismatch("Stored upstream keys cannot be decrypted with this GATEWAY_SECRET_KEY: it was changed.")

    explained = _explained(error, real, embedded_ledger=True)

    assert str(data_dir / "demo-secrets.json") in explained and "GATEWAY_PREVIOUS_SECRET_KEYS" in explained
    assert GOOD_SECRET not in explained
    assert _explained(error, real, embedded_ledger=False) == str(error)  # another database: not the demo's
    assert _explained(SettingsError("other"), real, embedded_ledger=True) == "other"
