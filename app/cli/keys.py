"""keys list | create | rotate | revoke: tenant API keys."""

from __future__ import annotations

import typer

keys_cli = typer.Typer(help="Manage tenant API keys: list, create, rotate, revoke.", no_args_is_help=True)
