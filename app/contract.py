"""The upstream's public contract (Seedream 4.0 on ToAPIs) as pydantic models.

One place for every rule the upstream documents about a request: the gateway validates callers with it and the
sandbox upstream validates the gateway with it. Liberal in what it accepts (every documented reading), exact in
what it emits (`GenerationRequest.to_upstream()` writes the documented reading only).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
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


class TaskStatus(StrEnum):
    """A task's status as the upstream documents it: what callers see, and what the upstream's answers are read as.
    (The ledger's statuses, these and its own, are app/models/task.py's `TaskStatus`.)"""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


PublicTaskStatus = Literal[TaskStatus.QUEUED, TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.FAILED]

# Every status value the upstream has been seen to send, mapped onto the four the contract documents.
UPSTREAM_STATUS_MAP: dict[str, PublicTaskStatus] = {
    "pending": TaskStatus.QUEUED,
    "submitted": TaskStatus.QUEUED,
    "queued": TaskStatus.QUEUED,
    "in_progress": TaskStatus.IN_PROGRESS,
    "processing": TaskStatus.IN_PROGRESS,
    "running": TaskStatus.IN_PROGRESS,
    "completed": TaskStatus.COMPLETED,
    "succeeded": TaskStatus.COMPLETED,
    "success": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
    "failure": TaskStatus.FAILED,
    "error": TaskStatus.FAILED,
}


# --- text the ledger can store --------------------------------------------------------------------------------
# PostgreSQL refuses NUL in text, and no other C0 control character belongs in an id, a model name or a URL; a
# prompt may hold tabs and line breaks. Lone surrogates (a JSON `\ud800` escape) cannot be encoded as UTF-8 at all.
# Each rule is stated twice, once as the ECMA pattern of the OpenAPI document and once as the check below;
# tests/test_contract.py holds them to the same answers.
_CONTROL = re.compile(r"[\x00-\x1f\ud800-\udfff]")
_CONTROL_EXCEPT_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
NO_CONTROL_PATTERN = r"^[^\x00-\x1f]*$"
PROMPT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
# Exactly the characters str.strip() removes (str.isspace()), spelled out: ECMA's \s is a different set.
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
BLANK_PATTERN = rf"^[{WHITESPACE_CLASS}]*$"
# An http(s) URL: the scheme in any case, then something that can start an authority, and no control character.
HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x1f/?#][^\x00-\x1f]*$"
_HTTP_URL_PREFIX = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")


def text_problem(value: str, *, line_breaks: bool = False) -> str | None:
    """Why `value` cannot be stored as text (None when it can): a C0 control character or a lone surrogate."""
    found = (_CONTROL_EXCEPT_BREAKS if line_breaks else _CONTROL).search(value)
    if found is None:
        return None
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return "must be valid Unicode text (it holds a lone surrogate)"
    allowed = " other than tab, line feed and carriage return" if line_breaks else ""
    return f"must not contain control characters{allowed} (found U+{ord(char):04X})"


def is_http_url(value: str) -> bool:
    """`HTTP_URL_PATTERN`, in Python."""
    return _HTTP_URL_PREFIX.match(value) is not None and text_problem(value) is None


def _integral_float(value: Any) -> Any:
    """JSON Schema's `integer` includes 2.0: accept an integral number written with a fraction, nothing else."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# After a StrictInt's constraints (pydantic documents them only in that order): an integer as JSON Schema reads it,
# 2 and 2.0, never "2", true or 2.5.
INTEGRAL = BeforeValidator(_integral_float)


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

    max_images: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES), INTEGRAL] | None = None


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


def _cross_field_schema(schema: dict[str, Any]) -> None:
    """State the two cross-field rules of `_cross_field_rules` in the OpenAPI document, as what a body must not be.

    `size: auto` with no `image_urls`, or `n + len(image_urls) > 15` (for some count c in 1..10: at least c URLs and
    `n >= 16 - c`). JSON Schema cannot add two fields up; this union of cases is the same set of bodies.
    """
    schema["example"] = {"model": DEFAULT_MODEL, "prompt": "a lighthouse at dawn, watercolor", "size": "16:9", "n": 1}
    auto_without_urls = {
        "required": ["size"],
        "properties": {
            "size": {"const": "auto"},
            "image_urls": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
        },
    }
    too_many_images = [
        {
            "required": ["n", "image_urls"],
            "properties": {
                "n": {"minimum": MAX_IMAGES + 1 - count},
                "image_urls": {"type": "array", "minItems": count},
            },
        }
        for count in range(1, MAX_IMAGE_URLS + 1)
    ]
    schema["not"] = {"anyOf": [auto_without_urls, *too_many_images]}
    schema["description"] = (
        "Body of POST /v1/images/generations. Cross-field rules (the `not` below): `size: auto` requires "
        f"`image_urls`; `n + len(image_urls) <= {MAX_IMAGES}`."
    )


def _no_control_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NO_CONTROL_PATTERN


def _prompt_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = PROMPT_PATTERN
    schema["not"] = {"pattern": BLANK_PATTERN}
    schema["description"] = "Not blank; no control characters other than tab, line feed and carriage return."


def _http_url_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = HTTP_URL_PATTERN
    schema["description"] = "An http(s) URL (scheme in any case), without control characters."


class GenerationRequest(BaseModel):
    """Body of POST /v1/images/generations."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_cross_field_schema)

    model: Annotated[StrictStr, Field(json_schema_extra={"enum": sorted(SUPPORTED_MODELS)})] = DEFAULT_MODEL
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS, json_schema_extra=_prompt_schema)]
    size: Size = "1:1"
    n: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGES), INTEGRAL] = 1
    image_urls: (
        Annotated[
            list[Annotated[StrictStr, Field(json_schema_extra=_http_url_schema)]],
            Field(max_length=MAX_IMAGE_URLS),
        ]
        | None
    ) = None
    metadata: GenerationMetadata | None = None
    resolution: Resolution | None = Field(
        default=None,
        description="Older placement of metadata.resolution; accepted, forwarded inside metadata.",
    )
    callback_url: Annotated[StrictStr, Field(json_schema_extra=_http_url_schema)] | None = None
    client_business_id: Annotated[StrictStr, Field(max_length=255, json_schema_extra=_no_control_schema)] | None = (
        Field(default=None, description="The caller's own id, echoed back on the task; no control characters.")
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if text_problem(value) is not None:  # never echo what cannot be printed
            raise ContractError(f"Unsupported model; supported: {', '.join(sorted(SUPPORTED_MODELS))}.")
        if value not in SUPPORTED_MODELS:
            raise ContractError(f"Unsupported model '{value}'; supported: {', '.join(sorted(SUPPORTED_MODELS))}.")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, value: str) -> str:
        if not value.strip():
            raise ContractError("The 'prompt' field must not be blank.")
        problem = text_problem(value, line_breaks=True)
        if problem is not None:
            raise ContractError(f"The 'prompt' field {problem}.")
        return value

    @field_validator("image_urls")
    @classmethod
    def _public_http_urls(cls, value: list[str] | None) -> list[str] | None:
        for url in value or []:
            if not is_http_url(url):
                raise ContractError(
                    "Each image_urls entry must be an http(s) URL without control characters (base64 is not accepted)."
                )
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_http(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ContractError("callback_url must be an http(s) URL without control characters.")
        return value

    @field_validator("client_business_id")
    @classmethod
    def _storable_business_id(cls, value: str | None) -> str | None:
        problem = None if value is None else text_problem(value)
        if problem is not None:
            raise ContractError(f"client_business_id {problem}.")
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
    def max_output_images(self) -> int:
        """The images a quota must reserve for this request: `images_reserved_for` of the exact body sent."""
        return images_reserved_for(self.to_upstream())

    @property
    def _asked_for_auto(self) -> bool:
        return self.metadata is not None and self.metadata.sequential_image_generation == "auto"

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
            meta["sequential_image_generation"] = "auto"  # the documented way to ask for n images
        if meta.get("sequential_image_generation") == "auto":
            # In `auto` the upstream makes up to `max_images` images (15 without a cap) whatever `n` is. The cap
            # sent is always explicit: the caller's own when it asked for `auto` itself, else `n`; never more than
            # the contract's room. The reservation is read back from this body (`images_reserved_for`).
            asked = meta.get("sequential_image_generation_options", {}).get("max_images")
            wanted = asked if self._asked_for_auto else self.n
            cap = max(self.n, min(wanted if wanted is not None else MAX_IMAGES, _room(body)))
            meta["sequential_image_generation_options"] = {"max_images": cap}
        if meta:
            body["metadata"] = meta
        if self.client_business_id is not None:
            body["client_business_id"] = self.client_business_id
        return body


def _room(body: dict[str, Any]) -> int:
    """The most output images the contract allows beside the body's reference images."""
    return MAX_IMAGES - len(body.get("image_urls") or [])


def images_reserved_for(body: dict[str, Any]) -> int:
    """The most images the upstream can make for this exact upstream body: what a quota reserves for it.

    `n`; in `sequential_image_generation: auto`, up to `max_images` (15 when absent), bounded by the contract's room
    beside the reference images and never fewer than `n`. Read from the body that goes upstream, never from the
    caller's request, so nothing filled in afterwards can ask the upstream for more than was reserved.
    """
    n = int(body.get("n", 1))
    meta = body.get("metadata") or {}
    if meta.get("sequential_image_generation") != "auto":
        return n
    asked = (meta.get("sequential_image_generation_options") or {}).get("max_images")
    return max(n, min(asked if asked is not None else MAX_IMAGES, _room(body)))


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
    status: PublicTaskStatus
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
