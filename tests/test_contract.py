"""GenerationRequest: every documented rule of the upstream contract, and the `param` the gateway reports."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.contract import GenerationRequest, images_reserved_for
from app.core.error_handlers import install_error_handlers, validation_to_error
from app.core.errors import InvalidRequest

URL = "https://img.example/ref.png"


def urls(count: int) -> list[str]:
    return [f"https://img.example/{i}.png" for i in range(count)]


def body(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a lighthouse at dawn", **fields}


def rejected(payload: Any) -> InvalidRequest:
    """Validate like FastAPI does for a JSON body, and map the failure like the gateway's handler."""
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(payload, from_attributes=True)
    # FastAPI validates the decoded body (from_attributes=True), prefixes loc with "body", drops the docs URL.
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors(include_url=False)]
    error = validation_to_error(RequestValidationError(errors))
    assert error.status_code == 400
    assert error.code == "invalid_request"
    return error


# --- prompt ---------------------------------------------------------------------------------------------


def test_prompt_is_required() -> None:
    error = rejected({"model": "doubao-seedream-4-0"})
    assert error.param == "prompt"
    assert error.message == "The 'prompt' field is required."


def test_prompt_of_1000_chars_is_accepted() -> None:
    assert GenerationRequest.model_validate(body(prompt="x" * 1000)).prompt == "x" * 1000


def test_prompt_over_1000_chars_is_rejected() -> None:
    error = rejected(body(prompt="x" * 1001))
    assert error.param == "prompt"
    assert "1000" in error.message


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_or_blank_prompt_is_rejected(prompt: str) -> None:
    assert rejected(body(prompt=prompt)).param == "prompt"


@pytest.mark.parametrize("prompt", [123, None, ["a"]])
def test_prompt_must_be_a_string(prompt: Any) -> None:
    assert rejected(body(prompt=prompt)).param == "prompt"


def test_unknown_model_is_rejected() -> None:
    error = rejected(body(model="dall-e-3"))
    assert error.param == "model"
    assert "dall-e-3" in error.message


# --- size -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21"])
def test_every_documented_aspect_ratio_is_accepted(size: str) -> None:
    assert GenerationRequest.model_validate(body(size=size)).to_upstream()["size"] == size


def test_size_defaults_to_square() -> None:
    assert GenerationRequest.model_validate(body()).to_upstream()["size"] == "1:1"


@pytest.mark.parametrize("size", ["5:4", "1024x1024", "2K", "AUTO", ""])
def test_undocumented_size_is_rejected(size: str) -> None:
    assert rejected(body(size=size)).param == "size"


def test_size_auto_without_image_urls_is_rejected_on_size() -> None:
    error = rejected(body(size="auto"))
    assert error.param == "size"
    assert "image_urls" in error.message


def test_size_auto_with_empty_image_urls_is_rejected() -> None:
    assert rejected(body(size="auto", image_urls=[])).param == "size"


def test_size_auto_with_image_urls_is_accepted() -> None:
    request = GenerationRequest.model_validate(body(size="auto", image_urls=[URL]))
    assert request.to_upstream()["size"] == "auto"
    assert request.to_upstream()["image_urls"] == [URL]


# --- n --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 15])
def test_n_within_range_is_accepted(n: int) -> None:
    assert GenerationRequest.model_validate(body(n=n)).to_upstream()["n"] == n


@pytest.mark.parametrize("n", [0, -1, 16, 100])
def test_n_out_of_range_is_rejected(n: int) -> None:
    assert rejected(body(n=n)).param == "n"


@pytest.mark.parametrize("n", ["2", True, 2.5, None, float("inf"), float("nan")])
def test_n_must_be_a_json_integer(n: Any) -> None:
    assert rejected(body(n=n)).param == "n"


def test_n_written_with_a_zero_fraction_is_an_integer() -> None:
    # JSON Schema's `integer` (what the OpenAPI document says) includes 2.0; so does the gateway.
    request = GenerationRequest.model_validate(body(n=2.0))
    assert request.n == 2 and isinstance(request.n, int)
    assert request.to_upstream()["n"] == 2
    assert rejected(body(n=16.0)).param == "n"


def test_the_image_urls_message_claims_no_check_the_gateway_does_not_make() -> None:
    """The gateway checks the form only (the upstream fetches the URLs): an internal address passes, so the message
    must not say "public"."""
    GenerationRequest.model_validate(body(image_urls=["http://10.0.0.7/ref.png"]))
    error = rejected(body(image_urls=["data:image/png;base64,AAAA"]))
    assert error.param == "image_urls"
    assert error.message.startswith("Each image_urls entry must be an http(s) URL") and "public" not in error.message


def test_n_plus_image_urls_at_most_15_is_accepted() -> None:
    request = GenerationRequest.model_validate(body(n=5, image_urls=urls(10)))
    assert request.n == 5
    assert len(request.to_upstream()["image_urls"]) == 10


@pytest.mark.parametrize(("n", "count"), [(6, 10), (15, 1), (14, 2)])
def test_n_plus_image_urls_over_15_is_rejected_on_n(n: int, count: int) -> None:
    error = rejected(body(n=n, image_urls=urls(count)))
    assert error.param == "n"
    assert "15" in error.message


# --- image_urls -----------------------------------------------------------------------------------------


def test_eleven_image_urls_are_rejected() -> None:
    assert rejected(body(image_urls=urls(11))).param == "image_urls"


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ",
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
        "ftp://img.example/ref.png",
        "file:///etc/passwd",
        "//img.example/ref.png",
        "https://",
        "",
    ],
)
def test_image_urls_must_be_http_urls(url: str) -> None:
    error = rejected(body(image_urls=[URL, url]))
    assert error.param == "image_urls"
    assert "http" in error.message


@pytest.mark.parametrize("url", ["http://img.example/a.png", "HTTPS://IMG.EXAMPLE/A.PNG"])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert GenerationRequest.model_validate(body(image_urls=[url])).image_urls == [url]


def test_image_urls_entries_must_be_strings() -> None:
    assert rejected(body(image_urls=[URL, 42])).param == "image_urls.1"


def test_image_urls_must_be_a_list() -> None:
    assert rejected(body(image_urls=URL)).param == "image_urls"


def test_callback_url_must_be_http() -> None:
    assert rejected(body(callback_url="javascript:alert(1)")).param == "callback_url"


# --- metadata -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", ["1K", "2K", "4K"])
def test_metadata_resolution_enum_is_accepted(resolution: str) -> None:
    request = GenerationRequest.model_validate(body(metadata={"resolution": resolution}))
    assert request.to_upstream()["metadata"] == {"resolution": resolution}
    assert request.effective_resolution == resolution


@pytest.mark.parametrize("resolution", ["8K", "2k", "1080p", 2])
def test_metadata_resolution_outside_enum_is_rejected(resolution: Any) -> None:
    assert rejected(body(metadata={"resolution": resolution})).param == "metadata.resolution"


def test_effective_resolution_defaults_to_2k() -> None:
    assert GenerationRequest.model_validate(body()).effective_resolution == "2K"


@pytest.mark.parametrize("watermark", [True, False])
def test_metadata_watermark_boolean_is_accepted(watermark: bool) -> None:
    request = GenerationRequest.model_validate(body(metadata={"watermark": watermark}))
    assert request.to_upstream()["metadata"] == {"watermark": watermark}


@pytest.mark.parametrize("watermark", ["true", "false", 1, 0, None])
def test_metadata_watermark_is_strictly_boolean(watermark: Any) -> None:
    if watermark is None:  # null means "not given", which is allowed
        request = GenerationRequest.model_validate(body(metadata={"watermark": None}))
        assert "metadata" not in request.to_upstream()
        return
    assert rejected(body(metadata={"watermark": watermark})).param == "metadata.watermark"


@pytest.mark.parametrize("value", ["disabled", "auto"])
def test_metadata_sequential_values_are_accepted(value: str) -> None:
    request = GenerationRequest.model_validate(body(metadata={"sequential_image_generation": value}))
    assert request.to_upstream()["metadata"]["sequential_image_generation"] == value


@pytest.mark.parametrize("value", ["manual", "AUTO", True, 1])
def test_metadata_sequential_other_values_are_rejected(value: Any) -> None:
    error = rejected(body(metadata={"sequential_image_generation": value}))
    assert error.param == "metadata.sequential_image_generation"


@pytest.mark.parametrize("max_images", [1, 15])
def test_max_images_within_range_is_accepted(max_images: int) -> None:
    meta = {"sequential_image_generation_options": {"max_images": max_images}}
    request = GenerationRequest.model_validate(body(metadata=meta))
    assert request.to_upstream()["metadata"] == meta


def test_max_images_written_with_a_zero_fraction_is_an_integer() -> None:
    meta = {"sequential_image_generation_options": {"max_images": 3.0}}
    request = GenerationRequest.model_validate(body(metadata=meta))
    assert request.to_upstream()["metadata"] == {"sequential_image_generation_options": {"max_images": 3}}


@pytest.mark.parametrize("max_images", [0, 16, "3", 3.5, True])
def test_max_images_out_of_range_or_not_integer_is_rejected(max_images: Any) -> None:
    error = rejected(body(metadata={"sequential_image_generation_options": {"max_images": max_images}}))
    assert error.param == "metadata.sequential_image_generation_options.max_images"


def test_metadata_must_be_an_object() -> None:
    assert rejected(body(metadata="2K")).param == "metadata"


# --- leniencies -----------------------------------------------------------------------------------------


def test_top_level_resolution_is_forwarded_inside_metadata() -> None:
    upstream = GenerationRequest.model_validate(body(resolution="4K")).to_upstream()
    assert upstream["metadata"] == {"resolution": "4K"}
    assert "resolution" not in upstream


def test_top_level_resolution_merges_with_other_metadata() -> None:
    upstream = GenerationRequest.model_validate(body(resolution="1K", metadata={"watermark": False})).to_upstream()
    assert upstream["metadata"] == {"resolution": "1K", "watermark": False}


def test_metadata_resolution_wins_over_top_level() -> None:
    request = GenerationRequest.model_validate(body(resolution="1K", metadata={"resolution": "4K"}))
    assert request.to_upstream()["metadata"]["resolution"] == "4K"
    assert request.effective_resolution == "4K"


def test_top_level_resolution_outside_enum_is_rejected() -> None:
    assert rejected(body(resolution="8K")).param == "resolution"


@pytest.mark.parametrize(
    ("given", "mode"),
    [("standard", "standard"), ("fast", "fast"), ({"mode": "standard"}, "standard"), ({"mode": "fast"}, "fast")],
)
def test_optimize_prompt_options_string_or_object_become_mode_object(given: Any, mode: str) -> None:
    upstream = GenerationRequest.model_validate(body(metadata={"optimize_prompt_options": given})).to_upstream()
    assert upstream["metadata"]["optimize_prompt_options"] == {"mode": mode}


@pytest.mark.parametrize("given", ["turbo", {"mode": "turbo"}, 3])
def test_optimize_prompt_options_unknown_mode_is_rejected(given: Any) -> None:
    error = rejected(body(metadata={"optimize_prompt_options": given}))
    assert error.param is not None
    assert error.param.startswith("metadata.optimize_prompt_options")


def test_n_above_one_sets_sequential_generation_auto_capped_at_n() -> None:
    upstream = GenerationRequest.model_validate(body(n=3)).to_upstream()
    assert upstream["metadata"] == {
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 3},
    }


def test_n_above_one_keeps_an_explicit_sequential_value() -> None:
    meta = {"sequential_image_generation": "disabled"}
    upstream = GenerationRequest.model_validate(body(n=3, metadata=meta)).to_upstream()
    assert upstream["metadata"]["sequential_image_generation"] == "disabled"


def test_n_of_one_sends_no_metadata() -> None:
    upstream = GenerationRequest.model_validate(body(n=1)).to_upstream()
    assert "metadata" not in upstream


def test_unknown_fields_are_ignored_and_not_forwarded() -> None:
    payload = body(seed=42, guidance_scale=7.5, metadata={"watermark": True, "style": "anime"})
    upstream = GenerationRequest.model_validate(payload).to_upstream()
    assert upstream == {
        "model": "doubao-seedream-4-0",
        "prompt": "a lighthouse at dawn",
        "size": "1:1",
        "n": 1,
        "metadata": {"watermark": True},
    }


def test_to_upstream_writes_the_documented_reading() -> None:
    payload = {
        "prompt": "two foxes",
        "size": "auto",
        "n": 2,
        "image_urls": [URL],
        "resolution": "4K",
        "metadata": {"optimize_prompt_options": "fast", "watermark": False},
        "client_business_id": "order_1",
    }
    assert GenerationRequest.model_validate(payload).to_upstream() == {
        "model": "doubao-seedream-4-0",
        "prompt": "two foxes",
        "size": "auto",
        "n": 2,
        "image_urls": [URL],
        "metadata": {
            "resolution": "4K",
            "optimize_prompt_options": {"mode": "fast"},
            "watermark": False,
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2},
        },
        "client_business_id": "order_1",
    }


# --- validation_to_error beyond params ------------------------------------------------------------------


def test_body_that_is_not_an_object_gets_a_plain_message() -> None:
    error = rejected(["prompt"])
    assert error.param is None
    assert error.message == "The request body must be a JSON object."


def test_empty_validation_error_maps_to_invalid_request() -> None:
    error = validation_to_error(RequestValidationError([]))
    assert (error.status_code, error.param) == (400, None)


# --- the helper above mimics FastAPI: the same bodies through a real app give the same params -------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "prompt"),
        (body(prompt="x" * 1001), "prompt"),
        (body(prompt="  "), "prompt"),
        (body(size="auto"), "size"),
        (body(n="2"), "n"),
        (body(n=10, image_urls=urls(6)), "n"),
        (body(image_urls=["data:image/png;base64,AAAA"]), "image_urls"),
        (body(metadata={"watermark": "yes"}), "metadata.watermark"),
    ],
)
async def test_fastapi_reports_the_same_param(payload: dict[str, Any], param: str) -> None:
    assert rejected(payload).param == param
    response = await post_to_app(json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'["prompt"]', "The request body must be a JSON object."),
        (b"42", "The request body must be a JSON object."),
        (b'{"prompt": ', "The request body is not valid JSON."),
    ],
)
async def test_fastapi_bodies_that_are_not_objects(content: bytes, message: str) -> None:
    response = await post_to_app(content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert "param" not in response.json()["error"]


async def post_to_app(**kwargs: Any) -> httpx.Response:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/images/generations")
    async def create(request: GenerationRequest) -> dict[str, Any]:
        return request.to_upstream()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        return await client.post("/v1/images/generations", **kwargs)


# --- text that cannot be stored: C0 control characters and lone surrogates ------------------------------------
# PostgreSQL refuses NUL in a text parameter (500 before this rule): the contract now refuses it, and every other C0
# control character and lone surrogate, with a 400 naming the field.

CONTROL_CHARACTERS = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f"]
LONE_SURROGATES = ["\ud800", "\udfff"]


@pytest.mark.parametrize("char", [*CONTROL_CHARACTERS, "\t", "\n", "\r", *LONE_SURROGATES])
def test_client_business_id_refuses_control_characters_and_lone_surrogates(char: str) -> None:
    error = rejected(body(client_business_id=f"order{char}7"))
    assert error.param == "client_business_id"
    assert "client_business_id" in error.message


@pytest.mark.parametrize("char", [*CONTROL_CHARACTERS, *LONE_SURROGATES])
def test_prompt_refuses_control_characters_and_lone_surrogates(char: str) -> None:
    assert rejected(body(prompt=f"a fox{char}at dawn")).param == "prompt"


def test_prompt_keeps_tabs_and_line_breaks() -> None:
    prompt = "a fox\tat dawn\r\nwatercolor\n"
    assert GenerationRequest.model_validate(body(prompt=prompt)).to_upstream()["prompt"] == prompt


@pytest.mark.parametrize("char", [*CONTROL_CHARACTERS, "\n", *LONE_SURROGATES])
def test_model_refuses_control_characters_without_echoing_them(char: str) -> None:
    error = rejected(body(model=f"doubao-seedream-4-0{char}"))
    assert error.param == "model"
    assert char not in error.message
    error.message.encode()  # printable: no lone surrogate reaches the answer


@pytest.mark.parametrize("char", [*CONTROL_CHARACTERS, "\t", "\n", *LONE_SURROGATES])
def test_image_urls_and_callback_url_refuse_control_characters(char: str) -> None:
    assert rejected(body(image_urls=[URL, f"https://img.example/a{char}.png"])).param == "image_urls"
    assert rejected(body(callback_url=f"https://hooks.example/{char}")).param == "callback_url"


@pytest.mark.parametrize("text", ["commande-été-42", "注文_7", "😀", "x" * 255, "", "a b"])
def test_printable_client_business_ids_are_kept(text: str) -> None:
    request = GenerationRequest.model_validate(body(client_business_id=text))
    assert request.to_upstream()["client_business_id"] == text


def test_absent_readings_null_and_empty_containers_are_accepted() -> None:
    request = GenerationRequest.model_validate(
        body(metadata=None, resolution=None, callback_url=None, image_urls=[], client_business_id="")
    )
    assert request.to_upstream() == {
        "model": "doubao-seedream-4-0",
        "prompt": "a lighthouse at dawn",
        "size": "1:1",
        "n": 1,
        "client_business_id": "",
    }


@pytest.mark.parametrize("url", ["", "   ", "https://", "https:///path", "mailto:a@b.c", "hooks.example/x"])
def test_callback_url_that_is_no_http_url_is_refused(url: str) -> None:
    assert rejected(body(callback_url=url)).param == "callback_url"


# --- the OpenAPI document states the same rules the validators apply -----------------------------------------

TRICKY_TEXT = [
    "",
    " ",
    "\t\n",
    "\u3000",
    "\x85",
    "\x1c",
    "\ufeff",
    "a",
    "a\n",
    "\na",
    "a\x00",
    "a\x7f",
    "é",
    "https://a",
    "HTTPS://A",
    "hTtP://x/y z",
    "https://",
    "https:///",
    "https://?q",
    "https://#f",
    "https://a\n",
    "http\u017f://a",  # LATIN SMALL LETTER LONG S: "s" only to a case-insensitive regex
    "ftp://a",
    " https://a",
    "http://\u3000",
]


def _schema_validator() -> Any:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.Draft202012Validator(GenerationRequest.model_json_schema())


def _accepted(payload: dict[str, Any]) -> bool:
    try:
        GenerationRequest.model_validate(payload)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("text", TRICKY_TEXT)
@pytest.mark.parametrize("field", ["prompt", "client_business_id", "callback_url", "image_urls", "model"])
def test_schema_and_validators_agree_on_text(field: str, text: str) -> None:
    payload = body(**{field: [text] if field == "image_urls" else text})
    assert _schema_validator().is_valid(payload) == _accepted(payload), payload


@pytest.mark.parametrize(
    "fields",
    [
        {"size": "auto"},
        {"size": "auto", "image_urls": []},
        {"size": "auto", "image_urls": None},
        {"size": "auto", "image_urls": urls(1)},
        {"n": 5, "image_urls": urls(10)},
        {"n": 6, "image_urls": urls(10)},
        {"n": 15, "image_urls": urls(1)},
        {"n": 14, "image_urls": urls(1)},
        {"n": 15, "image_urls": []},
        {"n": 15.0, "image_urls": urls(1)},
        {"n": 2.0},
        {"n": 1, "image_urls": urls(11)},
        {"n": 8, "image_urls": urls(8)},
        {"n": 7, "image_urls": urls(8)},
    ],
)
def test_schema_and_validators_agree_on_cross_field_rules(fields: dict[str, Any]) -> None:
    payload = body(**fields)
    assert _schema_validator().is_valid(payload) == _accepted(payload), payload


# --- the most images a request can produce (what a quota must reserve) ---------------------------------------


def _max_output(n: int = 1, image_urls: int = 0, **meta: Any) -> int:
    payload = body(n=n, image_urls=urls(image_urls) if image_urls else None, metadata=meta or None)
    return GenerationRequest.model_validate(payload).max_output_images


def test_max_output_images_is_n_without_sequential_generation() -> None:
    assert _max_output(n=1) == 1
    assert _max_output(n=4) == 4
    assert _max_output(n=4, sequential_image_generation="disabled") == 4
    assert (
        _max_output(n=3, sequential_image_generation="disabled", sequential_image_generation_options={"max_images": 15})
        == 3
    )


def test_max_output_images_counts_max_images_in_auto_mode_even_for_n_1() -> None:
    auto = {"sequential_image_generation": "auto"}
    assert _max_output(n=1, **auto, sequential_image_generation_options={"max_images": 15}) == 15
    assert _max_output(n=1, **auto, sequential_image_generation_options={"max_images": 4}) == 4


def test_max_output_images_in_auto_mode_defaults_to_15() -> None:
    assert _max_output(n=1, sequential_image_generation="auto") == 15
    assert _max_output(n=2, sequential_image_generation="auto", sequential_image_generation_options={}) == 15


def test_max_output_images_is_never_below_n() -> None:
    auto = {"sequential_image_generation": "auto"}
    assert _max_output(n=6, **auto, sequential_image_generation_options={"max_images": 2}) == 6
    assert _max_output(n=5, image_urls=10, **auto) == 5


def test_max_output_images_leaves_room_for_the_reference_images() -> None:
    auto = {"sequential_image_generation": "auto"}
    assert _max_output(n=1, image_urls=3, **auto) == 12
    assert _max_output(n=1, image_urls=10, **auto, sequential_image_generation_options={"max_images": 15}) == 5
    assert _max_output(n=2, image_urls=4, **auto, sequential_image_generation_options={"max_images": 9}) == 9


def test_max_output_images_ignores_the_auto_the_gateway_adds_for_n_above_1() -> None:
    request = GenerationRequest.model_validate(body(n=3))
    assert request.to_upstream()["metadata"]["sequential_image_generation_options"] == {"max_images": 3}
    assert request.max_output_images == 3


@pytest.mark.parametrize(
    ("n", "meta", "cap"),
    [
        (2, {"sequential_image_generation_options": {"max_images": 15}}, 2),  # the caller's cap without its own auto
        (2, {"sequential_image_generation_options": {}}, 2),  # auto with no cap at all once went upstream
        (1, {"sequential_image_generation": "auto"}, 15),
        (1, {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 4}}, 4),
    ],
)
def test_auto_always_goes_upstream_with_the_cap_that_was_reserved(n: int, meta: dict[str, Any], cap: int) -> None:
    request = GenerationRequest.model_validate(body(n=n, metadata=meta))
    upstream = request.to_upstream()
    assert upstream["metadata"]["sequential_image_generation"] == "auto"
    assert upstream["metadata"]["sequential_image_generation_options"] == {"max_images": cap}
    assert images_reserved_for(upstream) == request.max_output_images == cap
