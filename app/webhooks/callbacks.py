"""A create request's `callback_url`: accepted only at an origin its tenant allows (`callback_origins`).

Called by the submit path (app/tasks/service.py) before anything is written; no network, no database (the tenant,
with its origins, comes from the authentication cache). The address is checked again at every delivery
(app/webhooks/sender.py), and the origins themselves were resolved and checked when ops set them.
"""

from __future__ import annotations

from app.models import Tenant
from app.tenants.errors import Forbidden
from app.webhooks.targets import TargetRefused, parse_target

NOT_ALLOWED = "callback_url_not_allowed"


def check_callback_url(tenant: Tenant, url: str | None) -> None:
    """403 `callback_url_not_allowed` (param `callback_url`) unless `url` is None or at one of the tenant's origins.

    403, not 400: the request is well formed (any http(s) URL is, as the contract documents it); what refuses it is
    the tenant's permission, as for a key without a scope."""
    if url is None:
        return
    try:
        origin = parse_target(url).origin
    except TargetRefused as e:
        raise Forbidden(f"callback_url: {e}", param="callback_url", code=NOT_ALLOWED) from None
    if origin not in (tenant.callback_origins or []):
        raise Forbidden(
            f"callback_url: the origin {origin} is not one this tenant may call back to "
            "(ops allow origins with PUT /admin/v1/tenants/{id}/webhook, callback_origins).",
            param="callback_url",
            code=NOT_ALLOWED,
        )
