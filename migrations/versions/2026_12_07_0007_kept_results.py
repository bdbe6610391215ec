"""kept_images, tenants.result_retention_days: result images kept in the gateway's store (issue 23)

The upstream's result links expire 24 hours after a task completes; each image is copied into a store the
organisation owns and kept for the tenant's retention period.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'kept_images',
        sa.Column('task_id', sa.String(length=48), nullable=False),
        sa.Column('index', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.String(length=40), nullable=False),
        sa.Column('upstream_url', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('give_up_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('store_key', sa.Text(), nullable=True),
        sa.Column('size', sa.BigInteger(), nullable=True),
        sa.Column('content_type', sa.String(length=64), nullable=True),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('keep_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kept_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['task_id'], ['tasks.id'], name=op.f('fk_kept_images_task_id_tasks'), ondelete='CASCADE'
        ),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_kept_images_tenant_id_tenants'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('task_id', 'index', name=op.f('pk_kept_images')),
    )
    op.create_index('ix_kept_images_next_try_at', 'kept_images', ['next_try_at'], unique=False)
    op.create_index('ix_kept_images_keep_until', 'kept_images', ['keep_until'], unique=False)
    op.create_index('ix_kept_images_tenant_id_state', 'kept_images', ['tenant_id', 'state'], unique=False)
    with op.batch_alter_table('tenants') as batch:
        batch.add_column(sa.Column('result_retention_days', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants') as batch:
        batch.drop_column('result_retention_days')
    op.drop_index('ix_kept_images_tenant_id_state', table_name='kept_images')
    op.drop_index('ix_kept_images_keep_until', table_name='kept_images')
    op.drop_index('ix_kept_images_next_try_at', table_name='kept_images')
    op.drop_table('kept_images')
