"""webhooks show | set | delete | test | deliveries | delivery | replay: one service call each.

Tables for people, `--json` for scripts; each command runs here or, given --url, over a gateway's admin API
(app/cli/ops.py), and every change is audited. The command line only
enqueues (a test event, a replay): the running servers' deliverers send, within their poll interval.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from app.cli.common import CursorOpt, PageLimitOpt, fail
from app.cli.ops import run_ops
from app.cli.tenants import print_fields, print_json, print_next, print_table, when
from app.core.pagination import DEFAULT_PAGE
from app.webhooks.schemas import DEFAULT_GRACE_S, DeliveryOut, WebhookOut, WebhookUpdate

webhooks_cli = typer.Typer(
    help="Webhooks: a tenant's endpoint, signing secret and callback origins; test events; deliveries; replay.",
    no_args_is_help=True,
)

TenantArg = Annotated[str, typer.Argument(help="Tenant id or name.")]
DeliveryArg = Annotated[str, typer.Argument(help="Delivery (event) id, evt_...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_webhook(config: WebhookOut) -> None:
    print_fields(
        [
            ("tenant", config.tenant_id),
            ("url", config.url),
            ("callback origins", ", ".join(config.callback_origins)),
            ("secret set", "yes" if config.secret_set else "no"),
            ("previous secret signs until", when(config.previous_secret_until)),
        ]
    )
    if config.secret is not None:
        typer.echo(f"signing secret (shown once, keep it safe): {config.secret}")


def _print_delivery(row: DeliveryOut) -> None:
    print_fields(
        [
            ("id", row.id),
            ("tenant", row.tenant_id),
            ("task", row.task_id),
            ("event", row.event_type),
            ("url", row.url),
            ("status", row.status),
            ("attempts", row.attempts),
            ("next attempt", when(row.next_attempt_at)),
            ("last status code", row.last_status_code),
            ("last error", row.last_error),
            ("created", when(row.created_at)),
            ("delivered", when(row.delivered_at)),
        ]
    )


def _show_webhook(config: WebhookOut, as_json: bool) -> None:
    print_json(config) if as_json else _print_webhook(config)


def _show_delivery(row: DeliveryOut, as_json: bool) -> None:
    print_json(row) if as_json else _print_delivery(row)


@webhooks_cli.command("show")
def show(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """A tenant's webhook endpoint, callback origins and whether a secret is set (never the secret)."""

    _show_webhook(run_ops(lambda ops: ops.webhook(tenant)), as_json)


@webhooks_cli.command("set")
def set_webhook(
    tenant: TenantArg,
    url: Annotated[str | None, typer.Option("--url", help="The endpoint; '' = none.", show_default=False)] = None,
    callback_origins: Annotated[
        str | None,
        typer.Option("--callback-origins", help="Comma-separated origins callback_url may use; '' = none."),
    ] = None,
    rotate_secret: Annotated[
        bool, typer.Option("--rotate-secret", help="A new signing secret; the previous one signs on for the grace.")
    ] = False,
    grace_seconds: Annotated[
        int, typer.Option("--grace-seconds", help="How long the previous secret still signs after a rotation.")
    ] = DEFAULT_GRACE_S,
    as_json: JsonOpt = False,
) -> None:
    """Set the endpoint and/or callback origins (options omitted stay unchanged); the first call makes the signing
    secret and prints it once, as does --rotate-secret."""
    values: dict[str, object] = {"rotate_secret": rotate_secret, "grace_seconds": grace_seconds}
    if url is not None:
        values["url"] = url or None
    if callback_origins is not None:
        values["callback_origins"] = [o.strip() for o in callback_origins.split(",") if o.strip()]
    try:
        update = WebhookUpdate.model_validate(values)
    except ValidationError as e:
        error = e.errors()[0]
        fail(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}")

    _show_webhook(run_ops(lambda ops: ops.configure_webhook(tenant, update)), as_json)


@webhooks_cli.command("delete")
def delete(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Forget the tenant's endpoint, signing secrets and callback origins."""

    _show_webhook(run_ops(lambda ops: ops.remove_webhook(tenant)), as_json)


@webhooks_cli.command("test")
def send_test(tenant: TenantArg, as_json: JsonOpt = False) -> None:
    """Enqueue an endpoint.test event to the tenant's endpoint (a running server sends it)."""

    _show_delivery(run_ops(lambda ops: ops.test_webhook(tenant)), as_json)


@webhooks_cli.command("deliveries")
def list_deliveries(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's (id or name).")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, delivered or dead.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's events.")] = None,
    limit: PageLimitOpt = DEFAULT_PAGE,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The delivery log, newest first."""

    page = run_ops(lambda ops: ops.deliveries(limit, cursor, tenant=tenant, status=status, task_id=task))
    if as_json:
        print_json(page)
        return
    print_table(
        ["ID", "TENANT", "EVENT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "URL"],
        [
            [
                d.id,
                d.tenant_id,
                d.event_type,
                d.status,
                d.attempts,
                d.last_status_code or d.last_error,
                when(d.next_attempt_at),
                d.url,
            ]
            for d in page.data
        ],
    )
    print_next(page.next_cursor)


@webhooks_cli.command("delivery")
def show_delivery(delivery: DeliveryArg, as_json: JsonOpt = False) -> None:
    """One delivery: attempts, last status code and error."""

    _show_delivery(run_ops(lambda ops: ops.delivery(delivery)), as_json)


@webhooks_cli.command("replay")
def replay(delivery: DeliveryArg, as_json: JsonOpt = False) -> None:
    """Send a delivery again (pending, due now, attempts from zero; the same event id)."""

    _show_delivery(run_ops(lambda ops: ops.replay(delivery)), as_json)
