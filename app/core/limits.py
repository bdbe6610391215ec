"""The five limits of a tenant, defined once (`LimitValues`): their names, their bounds, what each means.

`None` means unlimited. Everything else derives from `LimitValues`: the ops API's answers (`LimitValues`, and the
tenants' `Limits`) and its update (`LimitsUpdate`), the settings for new tenants (`GATEWAY_DEFAULT_<LIMIT>`,
`settings_fields`), the command line's options (`--daily-images`, ...: app/cli/tenants.py) and the audit detail
(`values_of`). The ORM columns (`models/tenant.py`) carry the same names; a test holds them to it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from app.contract import INTEGRAL

# Images per day/month, tasks in flight and requests per minute: far beyond any real need, and inside the 32-bit
# INTEGER columns (and counters that add `n` to them) on both databases.
MAX_LIMIT = 1_000_000_000

UNLIMITED_WORDS = frozenset({"", "none", "null", "unlimited"})

# JSON Schema's `integer` (what the document says) includes 500.0: accepted as 500; "500", true and 2.5 are not.
LimitValue = Annotated[StrictInt, Field(ge=0, le=MAX_LIMIT), INTEGRAL] | None


class LimitValues(BaseModel):
    """The five limits; `null` means unlimited."""

    # Every limit is in every answer (null included), though a field left out of an update is no limit given.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    daily_images: LimitValue = Field(None, description="Images per UTC day.")
    monthly_images: LimitValue = Field(None, description="Images per calendar month (UTC).")
    max_in_flight: LimitValue = Field(None, description="Tasks submitted and not yet finished, at once.")
    submit_rpm: LimitValue = Field(None, description="Submits (and uploads) per minute.")
    query_rpm: LimitValue = Field(None, description="Status queries per minute.")


LIMIT_NAMES: tuple[str, ...] = tuple(LimitValues.model_fields)


class LimitsUpdate(LimitValues):
    """Fields given are set (`null` = unlimited); fields omitted stay unchanged."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"daily_images": 500, "query_rpm": None}})

    def changes(self) -> dict[str, int | None]:
        """Only the limits that were given."""
        return self.model_dump(exclude_unset=True)


def values_of(row: Any) -> dict[str, int | None]:
    """The five limits of anything that has them as attributes (a tenant's row)."""
    return {name: getattr(row, name) for name in LIMIT_NAMES}


def describe(name: str) -> str:
    """What a limit counts, e.g. "Images per UTC day." for `daily_images`."""
    return LimitValues.model_fields[name].description or name


def parse_limit_word(value: Any) -> Any:
    """`unlimited` (or empty, none, null) is None; anything else is left for validation."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower() in UNLIMITED_WORDS:
            return None
        if stripped.removeprefix("-").isdigit():
            return int(stripped)  # "-1": refused for its bound, not as a word
    return value


def settings_fields(prefix: str) -> dict[str, Any]:
    """The five limits as settings fields `<prefix><name>` (for `pydantic.create_model`): same bounds, None by
    default, and a number or `unlimited` (empty, none, null) as an environment variable gives it."""
    return {
        f"{prefix}{name}": (
            Annotated[LimitValue, BeforeValidator(parse_limit_word)],
            Field(None, description=f"For new tenants: {describe(name)[0].lower()}{describe(name)[1:]}"),
        )
        for name in LIMIT_NAMES
    }
