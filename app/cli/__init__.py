"""The ops command line: serve, sandbox, migrate, tenants, quota. One module per command group."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli import server
from app.cli.audit import audit
from app.cli.common import fail, set_remote
from app.cli.images import images_cli
from app.cli.keys import keys_cli
from app.cli.ops import URL_ENV, remote_from_options
from app.cli.quota import quota_cli
from app.cli.tasks import tasks_cli
from app.cli.tenants import tenants_cli
from app.cli.tokens import tokens_cli
from app.cli.upstream_keys import secrets_cli, upstream_keys_cli
from app.cli.webhooks import webhooks_cli
from app.core.errors import SettingsError

cli = typer.Typer(
    help="Seedream Gateway: a multi-tenant gateway for the Seedream 4.0 image API.",
    no_args_is_help=True,
    add_completion=False,
)
# Commands that run something on this machine: never "remote".
LOCAL_ONLY = frozenset({"serve", "sandbox", "migrate"})


@cli.callback()
def target(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar=URL_ENV,
            help="A running gateway's address (its admin API): every ops command runs there instead of on this "
            "machine's database.",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            help="The admin token for --url (default: GATEWAY_ADMIN_TOKEN, or the profile's).",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            envvar="SEEDREAM_GATEWAY_PROFILE",
            help="A [NAME] table of ~/.config/seedream-gateway/profiles.toml (mode 0600): url and admin_token.",
        ),
    ] = None,
) -> None:
    """Seedream Gateway: a multi-tenant gateway for the Seedream 4.0 image API."""
    remote = remote_from_options(url, admin_token, profile)
    if remote is not None and ctx.invoked_subcommand in LOCAL_ONLY:
        fail(f"`{ctx.invoked_subcommand}` runs on this machine: drop --url and --profile")
    set_remote(remote)


server.register(cli)
cli.command("audit")(audit)
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(quota_cli, name="quota")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(upstream_keys_cli, name="upstream-keys")
cli.add_typer(secrets_cli, name="secrets")
cli.add_typer(webhooks_cli, name="webhooks")
cli.add_typer(tasks_cli, name="tasks")
cli.add_typer(tokens_cli, name="tokens")
cli.add_typer(images_cli, name="images")


def main() -> None:
    try:
        cli()
    except SettingsError as e:
        print(f"seedream-gateway: {e}", file=sys.stderr)
        sys.exit(2)
