"""The five limits are defined once (app/core/limits.py's LimitValues); the columns, the settings for new tenants,
the ops API's shapes and the command line's options all follow it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import Integer
from typer.main import get_command

from app.cli.tenants import tenants_cli
from app.core.config import Settings
from app.core.limits import LIMIT_NAMES, MAX_LIMIT, LimitsUpdate, LimitValues, describe
from app.models import Tenant
from app.tenants.schemas import Limits, TenantCreate, TenantOut


def test_every_limit_is_a_nullable_integer_column() -> None:
    columns = Tenant.__table__.columns
    for name in LIMIT_NAMES:
        assert isinstance(columns[name].type, Integer) and columns[name].nullable, name


def test_the_api_shapes_are_the_one_model() -> None:
    assert LIMIT_NAMES == ("daily_images", "monthly_images", "max_in_flight", "submit_rpm", "query_rpm")
    assert set(Limits.model_fields) == {*LIMIT_NAMES, "tenant_id"}
    assert set(LimitsUpdate.model_fields) == set(LIMIT_NAMES)
    assert TenantOut.model_fields["limits"].annotation is LimitValues
    assert TenantCreate.model_fields["limits"].annotation == LimitsUpdate | None
    answer = LimitValues.model_json_schema(mode="serialization")
    assert set(answer["required"]) == set(LIMIT_NAMES)  # every limit in every answer, null included
    assert "required" not in LimitsUpdate.model_json_schema()  # an update gives the limits it changes
    assert LimitsUpdate.model_validate({"query_rpm": None}).changes() == {"query_rpm": None}
    for bad in ({"daily_images": -1}, {"daily_images": MAX_LIMIT + 1}, {"daily_images": "5"}, {"other": 1}):
        with pytest.raises(ValidationError):
            LimitsUpdate.model_validate(bad)


def test_new_tenants_limits_are_one_setting_per_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LIMIT_NAMES:
        field = Settings.model_fields[f"default_{name}"]
        assert field.default is None and field.description is not None
        assert describe(name)[1:-1] in field.description
    monkeypatch.setenv("GATEWAY_DEFAULT_DAILY_IMAGES", "500")
    monkeypatch.setenv("GATEWAY_DEFAULT_QUERY_RPM", "unlimited")
    monkeypatch.setenv("GATEWAY_DEFAULT_SUBMIT_RPM", " 7 ")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.default_limits == {
        "daily_images": 500,
        "monthly_images": None,
        "max_in_flight": None,
        "submit_rpm": 7,
        "query_rpm": None,
    }
    for bad in ("-1", str(MAX_LIMIT + 1), "lots", "2.5"):
        monkeypatch.setenv("GATEWAY_DEFAULT_MAX_IN_FLIGHT", bad)
        with pytest.raises(ValidationError):
            Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_limits_command_has_one_option_per_limit() -> None:
    group = get_command(tenants_cli)
    command = group.commands["limits"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in getattr(param, "opts", []) if opt.startswith("--")}
    assert {f"--{name.replace('_', '-')}" for name in LIMIT_NAMES} <= options
    assert options - {f"--{name.replace('_', '-')}" for name in LIMIT_NAMES} <= {"--help", "--json"}
