"""Settings of the sandbox upstream (env prefix `SANDBOX_`), changeable at runtime via `/_control/config`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
ResultStyle = Literal["result", "url", "images", "mixed"]
QueuedStatus = Literal["queued", "pending", "submitted"]


class SandboxConfig(BaseSettings):
    """Timing, fault rates and answer shapes of the sandbox upstream."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", validate_assignment=True)

    task_seconds: float = Field(default=3.0, ge=0.0, description="Time from create to a terminal status.")
    queue_seconds: float = Field(default=0.5, ge=0.0, description="Time queued before in_progress.")
    fail_rate: Rate = 0.0
    rate_limit_rate: Rate = 0.0
    error_rate: Rate = 0.0
    timeout_rate: Rate = 0.0
    timeout_seconds: float = Field(default=30.0, ge=0.0)
    slow_rate: Rate = 0.0
    slow_factor: float = Field(default=5.0, ge=1.0)
    retry_after_seconds: int = Field(default=2, ge=0)
    image_long_side: int = Field(default=64, ge=8, le=4096)
    accepted_keys: str = Field(default="", description="Comma-separated; empty accepts any non-empty key.")
    result_style: ResultStyle = "result"
    queued_status: QueuedStatus = "queued"
    seed: int | None = None
    public_base_url: str = Field(
        default="", description="Base of result and upload URLs (e.g. http://localhost:8100); empty = as called."
    )

    def accepts_key(self, key: str) -> bool:
        """Whether a bearer key may call the sandbox."""
        allowed = {k.strip() for k in self.accepted_keys.split(",") if k.strip()}
        return bool(key) and (not allowed or key in allowed)
