"""The upstream's public contract (Seedream 4.0 on ToAPIs) as pydantic models.

One place for every rule the upstream documents about a request: the gateway validates callers with it and the
sandbox upstream validates the gateway with it. Liberal in what it accepts (every documented reading), exact in
what it emits (`GenerationRequest.to_upstream()` writes the documented reading only).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

DEFAULT_MODEL = "doubao-seedream-4-0"
SUPPORTED_MODELS = frozenset({DEFAULT_MODEL})
MAX_PROMPT_CHARS = 1000
MAX_IMAGES = 15
MAX_IMAGE_URLS = 10

Size = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21", "auto"]
Resolution = Literal["1K", "2K", "4K"]
TaskStatus = Literal["queued", "in_progress", "completed", "failed"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed"})

# Every status value the upstream has been seen to send, mapped onto the four the contract documents.
UPSTREAM_STATUS_MAP: dict[str, TaskStatus] = {
    "pending": "queued",
    "submitted": "queued",
    "queued": "queued",
    "in_progress": "in_progress",
    "processing": "in_progress",
    "running": "in_progress",
    "completed": "completed",
    "succeeded": "completed",
    "success": "completed",
    "failed": "failed",
    "failure": "failed",
    "error": "failed",
}


class ContractError(ValueError):
    """A request breaks a documented rule; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class OptimizePromptOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    mode: Literal["standard", "fast"] = "standard"


class SequentialImageGenerationOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    max_images: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES)] | None = None


def _bare_mode_schema(schema: dict[str, Any]) -> None:
    """Document the bare-string reading that `GenerationMetadata._bare_mode_string` accepts."""
    alternatives = schema.get("anyOf")
    if isinstance(alternatives, list):
        alternatives.insert(1, {"type": "string", "enum": ["standard", "fast"]})


class GenerationMetadata(BaseModel):
    """Channel-specific options of `metadata`."""

    model_config = ConfigDict(extra="ignore")

    resolution: Resolution | None = None
    optimize_prompt_options: OptimizePromptOptions | None = Field(default=None, json_schema_extra=_bare_mode_schema)
    sequential_image_generation: Literal["disabled", "auto"] | None = None
    sequential_image_generation_options: SequentialImageGenerationOptions | None = None
    watermark: StrictBool | None = None

    @field_validator("optimize_prompt_options", mode="before")
    @classmethod
    def _bare_mode_string(cls, value: Any) -> Any:
        # The docs' own example sends the bare string "standard".
        if isinstance(value, str):
            return {"mode": value}
        return value


class GenerationRequest(BaseModel):
    """Body of POST /v1/images/generations."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "model": DEFAULT_MODEL,
                "prompt": "a lighthouse at dawn, watercolor",
                "size": "16:9",
                "n": 1,
            }
        },
    )

    model: StrictStr = DEFAULT_MODEL
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    size: Size = "1:1"
    n: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES)] = 1
    image_urls: Annotated[list[StrictStr], Field(max_length=MAX_IMAGE_URLS)] | None = None
    metadata: GenerationMetadata | None = None
    resolution: Resolution | None = Field(
        default=None,
        description="Older placement of metadata.resolution; accepted, forwarded inside metadata.",
    )
    callback_url: StrictStr | None = None
    client_business_id: Annotated[StrictStr, Field(max_length=255)] | None = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in SUPPORTED_MODELS:
            raise ContractError(f"Unsupported model '{value}'; supported: {', '.join(sorted(SUPPORTED_MODELS))}.")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ContractError("The 'prompt' field must not be blank.")
        return value

    @field_validator("image_urls")
    @classmethod
    def _public_http_urls(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            if not url.lower().startswith(("http://", "https://")) or len(url) < 12:
                raise ContractError("Each image_urls entry must be a public http(s) URL (base64 is not accepted).")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_http(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ContractError("callback_url must be an http(s) URL.")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> GenerationRequest:
        urls = self.image_urls or []
        if self.size == "auto" and not urls:
            raise ContractError("size 'auto' requires image_urls.", param="size")
        if self.n + len(urls) > MAX_IMAGES:
            raise ContractError(f"n + len(image_urls) must be at most {MAX_IMAGES}.", param="n")
        return self

    @property
    def effective_resolution(self) -> Resolution:
        if self.metadata is not None and self.metadata.resolution is not None:
            return self.metadata.resolution
        return self.resolution or "2K"

    def to_upstream(self) -> dict[str, Any]:
        """The documented reading of this request, as the gateway sends it upstream."""
        body: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "size": self.size, "n": self.n}
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        meta = self.metadata.model_dump(exclude_none=True) if self.metadata else {}
        if "resolution" not in meta and self.resolution is not None:
            meta["resolution"] = self.resolution
        if self.n > 1 and "sequential_image_generation" not in meta:
            meta["sequential_image_generation"] = "auto"
        if meta:
            body["metadata"] = meta
        if self.client_business_id is not None:
            body["client_business_id"] = self.client_business_id
        return body


class ImageRef(BaseModel):
    url: str


class TaskResult(BaseModel):
    type: Literal["image"] = "image"
    data: list[ImageRef]


class TaskError(BaseModel):
    code: str | int
    message: str


class TaskObject(BaseModel):
    """The task object of create and status answers."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "task_img_01jd3x2k8v9m",
                "object": "generation.task",
                "model": DEFAULT_MODEL,
                "status": "queued",
                "progress": 0,
                "created_at": 1703884800,
                "metadata": {},
            }
        }
    )

    id: str
    object: Literal["generation.task"] = "generation.task"
    model: str
    status: TaskStatus
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    client_business_id: str | None = None
    metadata: dict[str, Any] | None = None
    result: TaskResult | None = None
    url: str | None = Field(default=None, description="The first image's URL, on success only.")
    error: TaskError | None = None


class ErrorBody(BaseModel):
    code: str | int
    message: str
    type: str | None = None
    param: str | None = None


class ErrorEnvelope(BaseModel):
    """The error shape of every 4xx/5xx answer."""

    error: ErrorBody


class UploadData(BaseModel):
    id: str
    url: str
    mime_type: str
    size: int


class UploadResponse(BaseModel):
    """POST /v1/uploads/images answers in its own envelope, not the error envelope."""

    success: bool
    message: str = ""
    data: UploadData | None = None


UPLOAD_MIME_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def sniff_image_type(data: bytes) -> str | None:
    """An upload's image type by its magic bytes (a declared content type can be missing or wrong)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
