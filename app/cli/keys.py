"""keys list | create | rotate | revoke: tenant API keys, one service call each.

Tables for people, `--json` for scripts; a new key is printed once (it is stored only as a keyed hash). Each
command runs here or, given --url, over a gateway's admin API (app/cli/ops.py); every change is audited.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from app.cli.common import CursorOpt, PageLimitOpt, fail
from app.cli.ops import run_ops
from app.cli.tenants import (
    JsonOpt,
    TenantArg,
    print_fields,
    print_json,
    print_next,
    print_table,
    when,
)
from app.core.pagination import DEFAULT_PAGE
from app.tenants.schemas import DEFAULT_GRACE_S, DEFAULT_SCOPES, SCOPES, KeyOut, NewKeyOut

keys_cli = typer.Typer(help="Manage tenant API keys: list, create, rotate, revoke.", no_args_is_help=True)

KeyArg = Annotated[str, typer.Argument(help="The key's id (`key_...`, as `keys list` shows it), not the key.")]
_DURATION = re.compile(r"(\d{1,12})\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, option: str) -> int:
    """`3600`, `45s`, `30m`, `12h` or `90d` in seconds; one line naming the option otherwise."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        fail(f"{option} must be a number of seconds or a duration like 30m, 12h, 90d, not {value!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _print_new_key(key: NewKeyOut, as_json: bool) -> None:
    if as_json:
        print_json(key)
        return
    _print_key(key)
    typer.echo(f"API key (shown once, keep it safe): {key.key}")


def _print_key(key: KeyOut) -> None:
    print_fields(
        [
            ("id", key.id),
            ("tenant", key.tenant_id),
            ("prefix", key.prefix),
            ("name", key.name),
            ("scopes", ",".join(key.scopes)),
            ("status", key.status),
            ("created", when(key.created_at)),
            ("expires", when(key.expires_at)),
            ("revoked", when(key.revoked_at)),
            ("last used", when(key.last_used_at)),
            ("rotated from", key.rotated_from_id),
        ]
    )


@keys_cli.command("list")
def list_keys(
    tenant: TenantArg, limit: PageLimitOpt = DEFAULT_PAGE, cursor: CursorOpt = None, as_json: JsonOpt = False
) -> None:
    """List a tenant's keys (ids and prefixes, never the keys), oldest first, with their status and last use."""

    page = run_ops(lambda ops: ops.list_keys(tenant, limit, cursor))
    if as_json:
        print_json(page)
        return
    print_table(
        ["ID", "PREFIX", "NAME", "SCOPES", "STATUS", "CREATED", "EXPIRES", "LAST USED"],
        [
            [
                k.id,
                k.prefix,
                k.name,
                ",".join(k.scopes),
                k.status,
                when(k.created_at),
                when(k.expires_at),
                when(k.last_used_at),
            ]
            for k in page.data
        ],
    )
    print_next(page.next_cursor)


@keys_cli.command("create")
def create(
    tenant: TenantArg,
    name: Annotated[str, typer.Option("--name", help="A label for people (where the key is used).")] = "",
    scopes: Annotated[
        str,
        typer.Option("--scopes", help=f"Comma-separated, of: {', '.join(SCOPES)} (`mint`: end-user tokens)."),
    ] = ",".join(DEFAULT_SCOPES),
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Seconds, or a duration like 12h or 90d (default: never).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create another key for a tenant and print it (shown once)."""
    chosen = [s.strip() for s in scopes.split(",") if s.strip()]
    expires_in_s = None if expires_in is None else parse_duration(expires_in, "--expires-in")

    _print_new_key(
        run_ops(lambda ops: ops.create_key(tenant, name=name, scopes=chosen, expires_in_s=expires_in_s)), as_json
    )


@keys_cli.command("rotate")
def rotate(
    key_id: KeyArg,
    grace: Annotated[
        str, typer.Option("--grace", help="How long the old key keeps working: seconds, or e.g. 30m, 12h, 7d.")
    ] = str(DEFAULT_GRACE_S),
    as_json: JsonOpt = False,
) -> None:
    """Rotate a key: print a new one (same tenant, name, scopes) that works at once; the old one works until the
    grace period ends (0: stops now)."""
    grace_s = parse_duration(grace, "--grace")

    _print_new_key(run_ops(lambda ops: ops.rotate_key(key_id, grace_s)), as_json)


@keys_cli.command("revoke")
def revoke(key_id: KeyArg, as_json: JsonOpt = False) -> None:
    """Revoke a key: refused (401) from now on."""

    key = run_ops(lambda ops: ops.revoke_key(key_id))
    if as_json:
        print_json(key)
    else:
        _print_key(key)
