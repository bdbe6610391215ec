"""All settings, read once from the environment (prefix GATEWAY_) or a `.env` file."""

from __future__ import annotations

import json
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.errors import SettingsError
from app.core.files import write_private
from app.core.limits import LIMIT_NAMES, settings_fields
from app.core.net import local_host_for

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "change_me", "secret", "placeholder", "xxx", "todo"})
MIN_SECRET_CHARS = 16
DEMO_SECRETS_FILE = "demo-secrets.json"  # under data_dir: the demo mode's generated admin token and secret key
# What example files put where an upstream key goes (.env.example: sk-replace-with-your-upstream-key).
_UPSTREAM_PLACEHOLDER = re.compile(r"replace|your[-_]?(upstream[-_]?)?key|change[-_]?me|placeholder", re.IGNORECASE)
if TYPE_CHECKING:
    _NewTenantLimits = BaseSettings
else:
    # GATEWAY_DEFAULT_DAILY_IMAGES, ...: the limits a new tenant starts with (None = unlimited), one setting per limit
    # of app/core/limits.py's LimitValues, bounded as the ops API bounds it.
    _NewTenantLimits = create_model("_NewTenantLimits", __base__=BaseSettings, **settings_fields("default_"))


class Settings(_NewTenantLimits):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./data"), description="Where the embedded PostgreSQL (data_dir/postgres) and the demo secrets live."
    )
    database_url: str = Field(
        "", description="PostgreSQL URL (postgresql+asyncpg://...); empty = the embedded PostgreSQL under data_dir."
    )
    upstream_base_url: str = Field("", description="Upstream base URL (without /v1); empty = built-in sandbox.")
    upstream_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated upstream API keys, added to the pool at start."
    )
    admin_token: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    previous_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated former GATEWAY_SECRET_KEYs, still accepted after a rotation.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /admin (the ops API and the console) only on this port, apart from the tenants' "
        "(which then answer 404 there); empty = /admin on GATEWAY_PORT with the rest.",
    )
    admin_host: str = Field(
        "127.0.0.1", description="Interface of GATEWAY_ADMIN_PORT: loopback unless ops reach it over a network."
    )
    workers: int = Field(
        1, ge=1, description="Worker processes of `serve` (--workers overrides); each has its own pools and loops."
    )
    shutdown_grace_s: int = Field(
        30, ge=0, description="On SIGTERM, requests in flight get this long to finish before they are cancelled."
    )
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` (one readable line per record) or `json` (one JSON object per line)."
    )
    metrics_enabled: bool = Field(
        True, description="Prometheus metrics (/metrics and the counting behind it); false: /metrics is a 404."
    )
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token /metrics requires from non-loopback callers; empty = /metrics for loopback only.",
    )
    metrics_max_tenants: int = Field(
        100, ge=0, description="Tenants labelled by their id in metrics, per process; the others are `other`."
    )
    auto_migrate: bool | None = Field(
        None, description="Apply migrations at start; default: only for the embedded PostgreSQL."
    )
    user_agent: str = "seedream-gateway/0.1"
    upstream_timeout_s: float = 30.0
    upstream_connect_timeout_s: float = 5.0
    upstream_max_connections: int = 200
    status_refresh_interval_s: float = Field(
        1.0, description="A non-terminal task is re-fetched from the upstream at most this often."
    )
    queue_deadline_s: float = Field(
        600.0, gt=0, description="A task the upstream cannot take (429, 5xx, unreachable) waits this long at most."
    )
    task_deadline_s: float = Field(
        1800.0, gt=0, description="A task open this long gets one final upstream check, then fails and is refunded."
    )
    poll_interval_s: float = Field(
        1.0,
        ge=0,
        description="How often each process's reconciler looks for due tasks (waiting ones to send, open ones to "
        "check with the upstream, deadlines); 0 = off (tests).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest JSON request body accepted (413 above).")
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="Upload bodies (up to 10 MB each, spooled to disk) received at once per process; 429 beyond.",
    )
    events_poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often a task's event stream looks at its status (the status call)."
    )
    events_heartbeat_s: float = Field(
        15.0, gt=0, le=300, description="A `: keep-alive` comment after this long without an event on a stream."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins allowed to call the API (`*` = any), for tenants without "
        "origins of their own (ops set those per tenant); empty = none.",
    )
    page_tenant: str = Field(
        "",
        description="The tenant (id or name) whose try-it page is served at `/`, its tokens minted with its newest "
        "key that has the `mint` scope; empty = off (in the zero-config demo: the demo tenant's).",
    )
    page_images_per_day: int | None = Field(
        20, ge=0, description="Images per day of each end user of the try-it page (inside its tenant's limits)."
    )
    page_submits_per_minute: int | None = Field(
        10, ge=0, description="Submits per minute of each end user of the try-it page (inside its tenant's)."
    )
    db_pool_size: int = 20
    upstream_error_cooldown_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="How long a key cools after 3 consecutive 5xx answers (each from another task).",
    )
    redis_url: str = Field("", description="Rate windows in Redis when set; in PostgreSQL otherwise.")
    quotas_enabled: bool = Field(
        True, description="Reserve and settle images per task; off only for benchmarks and emergencies."
    )
    webhook_allow_private: bool = Field(
        False, description="Let webhooks reach loopback, private and link-local addresses (tests, closed networks)."
    )
    webhook_retry_schedule_s: Annotated[list[Annotated[float, Field(ge=0)]], NoDecode] = Field(
        default_factory=lambda: [10.0, 30.0, 120.0, 600.0, 3600.0, 21600.0, 86400.0],
        min_length=1,
        description="Comma-separated pauses (s) before each retry of a failed webhook delivery; then it is dead.",
    )
    webhook_poll_interval_s: float = Field(
        2.0, gt=0, le=60, description="How often each process looks for webhook deliveries due (retries, others')."
    )
    public_url: str = Field(
        "",
        description="The gateway's base URL as callers reach it (links to kept images it serves); "
        "empty = http://HOST:PORT.",
    )
    results_store: Literal["local", "s3", "off"] = Field(
        "local", description="Where result images are kept: `local` (RESULTS_DIR), `s3`, or `off` (not kept)."
    )
    results_dir: Path | None = Field(None, description="The local store's directory; empty = DATA_DIR/results.")
    results_s3_bucket: str = Field("", description="The S3 store's bucket (credentials: the usual AWS_* sources).")
    results_s3_prefix: str = Field("", description="Prefix of every object the gateway writes in the bucket.")
    results_s3_endpoint: str = Field("", description="An S3-compatible endpoint URL; empty = AWS's.")
    results_s3_region: str = Field("", description="The bucket's region; empty = AWS_REGION / AWS_DEFAULT_REGION.")
    results_retention_days: int = Field(
        30, ge=0, le=36500, description="Days a tenant's images are kept unless set per tenant; 0 = not kept."
    )
    results_link_ttl_s: int = Field(
        86400, ge=60, le=604800, description="How long a signed link to a kept image works (S3 allows 7 days)."
    )
    results_max_image_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest result image copied; a bigger one is lost, not kept."
    )
    results_copy_concurrency: int = Field(4, ge=1, le=64, description="Images each process copies at once.")
    results_copy_max_mib_s: float = Field(
        32.0,
        ge=0,
        description="Bytes each process copies per second at most, in MiB (copies have 24 h; the status and submit "
        "calls share the CPU); 0 = no cap.",
    )
    results_copy_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="How long a copy is leased to its process (renewed while it goes on): after a crash, another "
        "process takes it over once this has passed.",
    )
    results_poll_interval_s: float = Field(
        2.0, ge=0, description="How often each process looks for copies due and images to delete; 0 = off (tests)."
    )
    results_allow_private: bool | None = Field(
        None,
        description="Let copies fetch from loopback and private addresses; default: only in zero-config mode "
        "(the built-in sandbox), as GATEWAY_WEBHOOK_ALLOW_PRIVATE does for webhooks.",
    )
    results_webhook_hold_s: float = Field(
        30.0, ge=0, le=3600, description="A completed task's webhook waits this long at most for its kept copies."
    )

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("upstream_keys", "previous_secret_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def default_limits(self) -> dict[str, int | None]:
        """Limits a new tenant starts with (None = unlimited)."""
        return {name: getattr(self, f"default_{name}") for name in LIMIT_NAMES}

    @property
    def submit_deadline_s(self) -> float:
        """Longer than any create call can take (connect + pool wait + read, twice over)."""
        return 2 * (self.upstream_timeout_s + 2 * self.upstream_connect_timeout_s)

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL for links it hands out (GATEWAY_PUBLIC_URL, else its own address)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = local_host_for(self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def results_fetch_private(self) -> bool:
        """Whether copies may fetch from internal addresses (the zero-config sandbox is the gateway itself)."""
        return self.zero_config if self.results_allow_private is None else self.results_allow_private

    @property
    def zero_config(self) -> bool:
        """The demo mode: built-in sandbox upstream. Secrets may then be generated and kept under data_dir."""
        return not self.upstream_base_url

    @property
    def should_auto_migrate(self) -> bool:
        """Unless set: migrate the embedded PostgreSQL (no URL given), never a configured database."""
        return not self.database_url if self.auto_migrate is None else self.auto_migrate

    @cached_property
    def secrets(self) -> ResolvedSecrets:
        return resolve_secrets(self)


class ResolvedSecrets:
    """The admin token and secret key actually in force (generated and persisted in zero-config mode)."""

    def __init__(self, admin_token: str, secret_key: str) -> None:
        self.admin_token = admin_token
        self.secret_key = secret_key


def _is_placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDER_SECRETS or len(value.strip()) < MIN_SECRET_CHARS


def resolve_secrets(settings: Settings) -> ResolvedSecrets:
    """Return usable secrets or raise SettingsError with a one-line reason."""
    admin = settings.admin_token.get_secret_value()
    key = settings.secret_key.get_secret_value()
    if settings.zero_config:
        stored = _load_demo_secrets(settings.data_dir)
        admin = admin if not _is_placeholder(admin) else stored["admin_token"]
        key = key if not _is_placeholder(key) else stored["secret_key"]
        return ResolvedSecrets(admin, key)
    for name, value in (("GATEWAY_SECRET_KEY", key), ("GATEWAY_ADMIN_TOKEN", admin)):
        if _is_placeholder(value):
            raise SettingsError(
                f"{name} is missing or a placeholder (need {MIN_SECRET_CHARS}+ random characters, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
            )
    if any(is_placeholder_upstream_key(k.get_secret_value()) for k in settings.upstream_keys):
        raise SettingsError(
            "GATEWAY_UPSTREAM_KEYS holds a placeholder (as .env.example's sk-replace-with-your-upstream-key): "
            "put your upstream keys there, or leave it empty and add keys with `seedream-gateway upstream-keys add`."
        )
    return ResolvedSecrets(admin, key)


def is_placeholder_upstream_key(value: str) -> bool:
    """An upstream key that is an example's placeholder, not a key: never sent upstream, never in the pool."""
    return value.strip().lower() in PLACEHOLDER_SECRETS or _UPSTREAM_PLACEHOLDER.search(value) is not None


def _load_demo_secrets(data_dir: Path) -> dict[str, str]:
    path = data_dir / DEMO_SECRETS_FILE
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    stored = {"admin_token": "adm-" + secrets.token_urlsafe(24), "secret_key": secrets.token_urlsafe(32)}
    write_private(path, json.dumps(stored))
    return stored
