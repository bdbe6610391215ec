"""key lifecycle

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 07:45:30.978879
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_created_at', ['created_at'], unique=False)

    op.create_table('invalidation_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invalidation_events'))
    )
    with op.batch_alter_table('invalidation_events', schema=None) as batch_op:
        batch_op.create_index('ix_invalidation_events_created_at', ['created_at'], unique=False)

    with op.batch_alter_table('tenant_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hash_key_id', sa.String(length=16), server_default=sa.text("''"), nullable=False))
        batch_op.add_column(sa.Column('name', sa.String(length=200), server_default=sa.text("''"), nullable=False))
        batch_op.add_column(sa.Column('scopes', sa.String(length=64), server_default=sa.text("'submit,read'"), nullable=False))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('rotated_from_id', sa.String(length=40), nullable=True))

    with op.batch_alter_table('upstream_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enc_key_id', sa.String(length=16), server_default=sa.text("''"), nullable=False))
        batch_op.add_column(sa.Column('weight', sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch_op.add_column(sa.Column('max_in_flight', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('in_flight', sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column('cooling_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('consecutive_errors', sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column('status_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('last_probe_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('upstream_keys', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('last_probe_at')
        batch_op.drop_column('status_reason')
        batch_op.drop_column('consecutive_errors')
        batch_op.drop_column('cooling_until')
        batch_op.drop_column('in_flight')
        batch_op.drop_column('max_in_flight')
        batch_op.drop_column('weight')
        batch_op.drop_column('enc_key_id')

    with op.batch_alter_table('tenant_keys', schema=None) as batch_op:
        batch_op.drop_column('rotated_from_id')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('scopes')
        batch_op.drop_column('name')
        batch_op.drop_column('hash_key_id')

    with op.batch_alter_table('invalidation_events', schema=None) as batch_op:
        batch_op.drop_index('ix_invalidation_events_created_at')

    op.drop_table('invalidation_events')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_created_at')

    op.drop_table('audit_events')
