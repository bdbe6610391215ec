"""tokens revoke: refuse every end-user token a tenant's keys minted until now (one ops call, audited).

Runs here or, given --url, over a gateway's admin API (app/cli/ops.py).
"""

from __future__ import annotations

import typer

from app.cli.ops import run_ops
from app.cli.tenants import JsonOpt, TenantArg, print_fields, print_json, when

tokens_cli = typer.Typer(help="End-user tokens (minted with POST /v1/tokens): revoke.", no_args_is_help=True)


@tokens_cli.command("revoke")
def revoke(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Refuse every token minted for TENANT until now, on every replica within a second (tokens minted afterwards
    work). Revoking the minting key, or disabling the tenant, refuses its tokens too."""
    revoked = run_ops(lambda ops: ops.revoke_tokens(tenant))
    if as_json:
        print_json(revoked)
    else:
        print_fields([("tenant", revoked.tenant_id), ("tokens valid after", when(revoked.tokens_valid_after))])
