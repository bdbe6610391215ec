"""Settings of the sandbox upstream (env prefix `SANDBOX_`), changeable at runtime via `/_control/config`."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
ResultStyle = Literal["result", "url", "images", "mixed"]
QueuedStatus = Literal["queued", "pending", "submitted"]

# Never shown by `GET /_control/config`: the accepted keys may be real upstream keys, the token is the lock itself.
SECRET_FIELDS = frozenset({"accepted_keys", "control_token"})
# Shown in their place; `PATCH /_control/config` ignores them, so a GET answer can be PATCHed back as it is.
SUMMARY_FIELDS = frozenset({"accepted_key_fingerprints", "control_token_set"})
# Set at start-up only: whoever may change config could otherwise lock everyone else out (or in).
STARTUP_ONLY_FIELDS = frozenset({"control_token"})


def key_fingerprint(key: str) -> str:
    """The first 8 hex digits of a key's SHA-256: enough to tell keys apart in stats, useless to call with."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class SandboxConfig(BaseSettings):
    """Timing, fault rates and answer shapes of the sandbox upstream."""

    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", validate_assignment=True)

    task_seconds: float = Field(default=3.0, ge=0.0, description="Time from create to a terminal status.")
    queue_seconds: float = Field(default=0.5, ge=0.0, description="Time queued before in_progress.")
    create_latency_seconds: float = Field(
        default=0.0, ge=0.0, description="Time a create call takes before it answers (the task exists from its start)."
    )
    hold: bool = Field(
        default=False,
        description="Freeze the task clock: while true no task moves on; after, tasks go on where they stood.",
    )
    fail_rate: Rate = 0.0
    rate_limit_rate: Rate = 0.0
    error_rate: Rate = 0.0
    timeout_rate: Rate = 0.0
    timeout_seconds: float = Field(default=30.0, ge=0.0)
    slow_rate: Rate = 0.0
    slow_factor: float = Field(default=5.0, ge=1.0)
    retry_after_seconds: int = Field(default=2, ge=0)
    image_long_side: int = Field(default=64, ge=8, le=4096)
    accepted_keys: SecretStr = Field(
        default=SecretStr(""), description="Comma-separated; empty accepts any non-empty key."
    )
    control_token: SecretStr = Field(
        default=SecretStr(""),
        description="Needed by /_control/* callers other than loopback; empty = loopback only.",
    )
    result_style: ResultStyle = "result"
    queued_status: QueuedStatus = "queued"
    seed: int | None = None
    public_base_url: str = Field(
        default="", description="Base of result and upload URLs (e.g. http://localhost:8100); empty = as called."
    )

    def accepted_key_set(self) -> set[str]:
        return {k.strip() for k in self.accepted_keys.get_secret_value().split(",") if k.strip()}

    def accepts_key(self, key: str) -> bool:
        """Whether a bearer key may call the sandbox."""
        allowed = self.accepted_key_set()
        return bool(key) and (not allowed or key in allowed)

    def public_view(self) -> dict[str, Any]:
        """The config as `/_control/config` shows it: secrets replaced by fingerprints and a flag."""
        view = self.model_dump(exclude=set(SECRET_FIELDS))
        view["accepted_key_fingerprints"] = sorted(key_fingerprint(k) for k in self.accepted_key_set())
        view["control_token_set"] = bool(self.control_token.get_secret_value())
        return view
