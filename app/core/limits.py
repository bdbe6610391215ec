"""The five limits of a tenant, defined once: their names, their bounds, and their wire shape.

`None` means unlimited. The ORM columns (`models/tenant.py`), the settings for new tenants (`config.py`), the ops
API and the command line all take their names and bounds from here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.contract import INTEGRAL

# Images per day/month, tasks in flight and requests per minute: far beyond any real need, and inside the 32-bit
# INTEGER columns (and counters that add `n` to them) on both databases.
MAX_LIMIT = 1_000_000_000

LIMIT_NAMES: tuple[str, ...] = ("daily_images", "monthly_images", "max_in_flight", "submit_rpm", "query_rpm")
UNLIMITED_WORDS = frozenset({"", "none", "null", "unlimited"})

# JSON Schema's `integer` (what the document says) includes 500.0: accepted as 500; "500", true and 2.5 are not.
LimitValue = Annotated[StrictInt, Field(ge=0, le=MAX_LIMIT), INTEGRAL] | None


class LimitsUpdate(BaseModel):
    """Fields given are set (`null` = unlimited); fields omitted stay unchanged."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"daily_images": 500, "query_rpm": None}})

    daily_images: LimitValue = Field(None, description="Images per UTC day.")
    monthly_images: LimitValue = Field(None, description="Images per calendar month (UTC).")
    max_in_flight: LimitValue = Field(None, description="Tasks submitted and not yet finished, at once.")
    submit_rpm: LimitValue = Field(None, description="Submits (and uploads) per minute.")
    query_rpm: LimitValue = Field(None, description="Status queries per minute.")

    def changes(self) -> dict[str, int | None]:
        """Only the limits that were given."""
        return self.model_dump(exclude_unset=True)


def parse_limit_word(value: Any) -> Any:
    """`unlimited` (or empty, none, null) is None; anything else is left for validation."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower() in UNLIMITED_WORDS:
            return None
        if stripped.isdigit():
            return int(stripped)
    return value
