"""The ops command line: serve, sandbox, migrate, tenants, quota. One module per command group."""

from __future__ import annotations

import sys

import typer

from app.cli import server
from app.cli.images import images_cli
from app.cli.keys import keys_cli
from app.cli.quota import quota_cli
from app.cli.tasks import tasks_cli
from app.cli.tenants import tenants_cli
from app.cli.upstream_keys import secrets_cli, upstream_keys_cli
from app.cli.webhooks import webhooks_cli
from app.core.errors import SettingsError

cli = typer.Typer(
    help="Seedream Gateway: a multi-tenant gateway for the Seedream 4.0 image API.",
    no_args_is_help=True,
    add_completion=False,
)
server.register(cli)
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(quota_cli, name="quota")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(upstream_keys_cli, name="upstream-keys")
cli.add_typer(secrets_cli, name="secrets")
cli.add_typer(webhooks_cli, name="webhooks")
cli.add_typer(tasks_cli, name="tasks")
cli.add_typer(images_cli, name="images")


def main() -> None:
    try:
        cli()
    except SettingsError as e:
        print(f"seedream-gateway: {e}", file=sys.stderr)
        sys.exit(2)
