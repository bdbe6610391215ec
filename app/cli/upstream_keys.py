"""upstream-keys list | add | update | drain | retire: the organisation's upstream key pool."""

from __future__ import annotations

import typer

upstream_keys_cli = typer.Typer(help="Manage the upstream key pool.", no_args_is_help=True)
