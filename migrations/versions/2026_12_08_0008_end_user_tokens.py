"""End-user tokens (issue 21): who made a task, per-end-user counters and windows, per-tenant CORS, token revocation

- tasks.end_user, quota_entries.end_user: the end user whose token made a task (NULL: a tenant key).
- quota_counters.period and rate_windows.kind widen to name an end user (`user:<day>:<end user>`, `submit@<...>`).
- tenants.cors_origins: the browser origins whose pages may read the tenant's answers (NULL: the gateway's default).
- tenants.tokens_valid_after: tokens issued at or before it are refused.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('tasks', sa.Column('end_user', sa.String(length=128), nullable=True))
    op.add_column('quota_entries', sa.Column('end_user', sa.String(length=128), nullable=True))
    op.add_column('tenants', sa.Column('cors_origins', sa.JSON(), nullable=True))
    op.add_column('tenants', sa.Column('tokens_valid_after', sa.DateTime(timezone=True), nullable=True))
    # Widening a varchar is a catalog change in PostgreSQL: no table rewrite, no long lock.
    op.alter_column('quota_counters', 'period', type_=sa.String(length=160), existing_type=sa.String(length=24))
    op.alter_column('rate_windows', 'kind', type_=sa.String(length=160), existing_type=sa.String(length=16))


def downgrade() -> None:
    # Rows naming an end user do not fit the narrower columns: they go first.
    op.execute("DELETE FROM quota_counters WHERE length(period) > 24")
    op.execute("DELETE FROM rate_windows WHERE length(kind) > 16")
    op.alter_column('rate_windows', 'kind', type_=sa.String(length=16), existing_type=sa.String(length=160))
    op.alter_column('quota_counters', 'period', type_=sa.String(length=24), existing_type=sa.String(length=160))
    op.drop_column('tenants', 'tokens_valid_after')
    op.drop_column('tenants', 'cors_origins')
    op.drop_column('quota_entries', 'end_user')
    op.drop_column('tasks', 'end_user')
