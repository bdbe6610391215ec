"""tasks.server_errors: a task's 5xx answers from the upstream

Only a task's first 5xx counts against its key's health, and the task fails after a few: one caller's failing
request once cooled every key for everyone until its queue deadline.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 04:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('server_errors', sa.Integer(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('server_errors')
