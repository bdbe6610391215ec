"""`tokens revoke TENANT` (in-process, CliRunner, on the test database): every end-user token minted until then is
refused, audited with the actor "cli"; and `keys create` gives the `mint` scope only when asked."""

from __future__ import annotations

import asyncio

from app.core.clock import utcnow
from app.core.db.engine import create_engine, create_session_factory
from app.core.errors import Unauthorized
from app.core.security import KeyMaterial
from app.tenants.schemas import TokenCreate
from app.tenants.service import TenantService
from tests.cli.test_cli_keys import SECRET, audit_events, env, run, run_json

__all__ = ["env"]  # the fixture


def _service_call(database_url: str, call: object) -> object:
    async def main() -> object:
        engine = create_engine(database_url, pool_size=1)
        try:
            service = TenantService(create_session_factory(engine), KeyMaterial(SECRET), utcnow)
            return await call(service)  # type: ignore[operator]
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_tokens_revoke_refuses_every_token_minted_until_then(env: dict[str, str]) -> None:
    created = run_json(env, "tenants", "create", "team-a")
    default = run_json(env, "keys", "create", "team-a")
    assert default["scopes"] == ["submit", "read"]
    minting = run_json(env, "keys", "create", "team-a", "--scopes", "submit,read,mint")
    assert minting["scopes"] == ["submit", "read", "mint"]

    async def mint_then_check(service: TenantService) -> str:
        minter = await service.authenticate_key(f"Bearer {minting['key']}", note_use=False)
        token = service.mint_token(minter, TokenCreate(end_user="alice")).token
        await service.authenticate_key(f"Bearer {token}")
        return token

    token = _service_call(env["GATEWAY_DATABASE_URL"], mint_then_check)

    code, out, err = run(env, "tokens", "revoke", "team-a")
    assert code == 0, err
    assert "tokens valid after" in out and created["tenant_id"] in out
    assert run_json(env, "tokens", "revoke", created["tenant_id"])["tenant_id"] == created["tenant_id"]

    async def refused(service: TenantService) -> bool:
        try:
            await service.authenticate_key(f"Bearer {token}")
        except Unauthorized:
            return True
        return False

    assert _service_call(env["GATEWAY_DATABASE_URL"], refused)
    assert [e["actor"] for e in audit_events(env) if e["action"] == "tokens.revoke"] == ["cli", "cli"]
    code, _, err = run(env, "tokens", "revoke", "nobody")
    assert code == 2 and "not found" in err
