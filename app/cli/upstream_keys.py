"""upstream-keys list | add | update | drain | retire | rekey: the organisation's upstream key pool.

Each command is one call of the upstream key service (audited as "cli"), or given --url one call of a gateway's
admin API (app/cli/ops.py); running replicas learn of the change through the invalidation events within a
second. Tables for people, `--json` for scripts. A key is never read from the command line (it would sit in
the shell history and the process list): `add` reads it from the environment variable named by `--key-env`,
or else from stdin.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from app.cli.common import fail, jsonable
from app.cli.ops import Ops, run_ops
from app.core.clock import from_unix
from app.core.limits import parse_limit_word
from app.core.pagination import MAX_PAGE
from app.upstream.schemas import UpstreamKeyCreate, UpstreamKeyUpdate

upstream_keys_cli = typer.Typer(
    help="Manage the upstream key pool: list, add, update, drain, retire, rekey.", no_args_is_help=True
)
# `seedream-gateway secrets rekey` (registered in app/cli/__init__.py as the `secrets` group).
secrets_cli = typer.Typer(help="The gateway's own secret key: re-encrypt after a rotation.", no_args_is_help=True)

KeyIdArg = Annotated[str, typer.Argument(help="The key's id (upk_...), as `list` shows it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
COLUMNS = ("id", "name", "status", "weight", "max_in_flight", "in_flight", "cooling_until", "fingerprint", "reason")


def _validated(model: Any, values: dict[str, Any]) -> Any:
    """The options as the ops API's body (same bounds); one line naming the option when a value is wrong."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        error = e.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "value"
        if name == "key":  # never echo (any part of) a secret
            fail("the key must be 1 to 512 printable ASCII characters without spaces")
        option = "NAME" if name == "name" else f"--{name.replace('_', '-')}"
        fail(f"{option}: {str(error['msg']).removeprefix('Value error, ')}")


def _row(key: dict[str, Any]) -> list[str]:
    until = from_unix(key["cooling_until"])
    return [
        key["id"],
        key["name"],
        key["status"],
        str(key["weight"]),
        "-" if key["max_in_flight"] is None else str(key["max_in_flight"]),
        str(key["in_flight"]),
        "-" if until is None else until.strftime("%Y-%m-%d %H:%M:%SZ"),
        key["fingerprint"],
        key["status_reason"] or "",
    ]


def _table(keys: Sequence[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), *(_row(k) for k in keys)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _show(key: dict[str, Any], as_json: bool) -> None:
    typer.echo(json.dumps(key) if as_json else _table([key]))


@upstream_keys_cli.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """Every upstream key, oldest first (never the key itself)."""

    async def call(ops: Ops) -> list[dict[str, Any]]:
        cursor = None
        keys: list[dict[str, Any]] = []
        while True:
            page = await ops.list_upstream_keys(MAX_PAGE, cursor)
            keys.extend(jsonable(k) for k in page.data)
            if page.next_cursor is None:
                return keys
            cursor = page.next_cursor

    keys = run_ops(call)
    typer.echo(json.dumps({"object": "list", "data": keys}) if as_json else _table(keys))


@upstream_keys_cli.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A label for people, e.g. org-key-2.")],
    key_env: Annotated[
        str | None,
        typer.Option(help="Name of the environment variable holding the key (else the key is read from stdin)."),
    ] = None,
    weight: Annotated[int, typer.Option(help="Share of new tasks, relative to the other keys (1..1000).")] = 1,
    max_in_flight: Annotated[
        str | None, typer.Option(help="Tasks in flight on this key at most, or 'unlimited'.", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a key to the pool: stored encrypted, used by every replica within a second, never shown again."""
    secret = _read_secret(key_env)
    body = _validated(
        UpstreamKeyCreate,
        {"name": name, "key": secret, "weight": weight, "max_in_flight": parse_limit_word(max_in_flight)},
    )

    _show(jsonable(run_ops(lambda ops: ops.add_upstream_key(body))), as_json)


@upstream_keys_cli.command("update")
def update(
    key_id: KeyIdArg,
    weight: Annotated[int | None, typer.Option(help="Share of new tasks (1..1000).", show_default=False)] = None,
    max_in_flight: Annotated[
        str | None, typer.Option(help="Tasks in flight at most, or 'unlimited'.", show_default=False)
    ] = None,
    enable: Annotated[
        bool | None,
        typer.Option(
            "--enable/--disable",
            help="--enable: back in the rotation (from disabled, cooling or draining); --disable: out of it.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key's weight, cap, or whether it is enabled (options not given stay as they are)."""
    given: dict[str, Any] = {}
    if weight is not None:
        given["weight"] = weight
    if max_in_flight is not None:
        given["max_in_flight"] = parse_limit_word(max_in_flight)
    if enable is not None:
        given["enabled"] = enable
    body = _validated(UpstreamKeyUpdate, given)

    _show(jsonable(run_ops(lambda ops: ops.update_upstream_key(key_id, body))), as_json)


@upstream_keys_cli.command("drain")
def drain(key_id: KeyIdArg, as_json: JsonOpt = False) -> None:
    """No new task on the key; its open tasks finish. Retire it once `in_flight` is 0."""

    _show(jsonable(run_ops(lambda ops: ops.drain_upstream_key(key_id))), as_json)


@upstream_keys_cli.command("retire")
def retire(key_id: KeyIdArg, as_json: JsonOpt = False) -> None:
    """The key is used no more (only to poll tasks still open on it)."""

    _show(jsonable(run_ops(lambda ops: ops.retire_upstream_key(key_id))), as_json)


def rekey(as_json: JsonOpt = False) -> None:
    """Re-encrypt every upstream key with the current GATEWAY_SECRET_KEY, and count the tenant keys still hashed
    under a previous one (re-keyed on their next use). Run it after rotating the secret, with the former secret in
    GATEWAY_PREVIOUS_SECRET_KEYS; once no tenant key is pending, the former secret can go."""

    report = run_ops(lambda ops: ops.rekey())
    if as_json:
        typer.echo(json.dumps(jsonable(report)))
        return
    typer.echo(
        f"upstream keys: {report.reencrypted} re-encrypted, {report.already_current} already current"
        + (f", {report.undecryptable} not decryptable with any configured secret" if report.undecryptable else "")
        + f" (of {report.upstream_keys})\n"
        f"tenant keys still hashed under a previous secret: {report.tenant_keys_pending} "
        "(re-keyed on their next use)"
    )
    if report.undecryptable:
        raise typer.Exit(code=1)


upstream_keys_cli.command("rekey")(rekey)
secrets_cli.command("rekey")(rekey)


def _read_secret(key_env: str | None) -> str:
    if key_env is not None:
        secret = os.environ.get(key_env)
        if secret is None:
            fail(f"the environment variable {key_env} is not set")
        return secret.strip()
    if sys.stdin.isatty():
        return str(typer.prompt("Upstream key", hide_input=True)).strip()
    return sys.stdin.readline().strip()
