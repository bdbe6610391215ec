"""admission refusal function (PostgreSQL)

A task's admission (its row, its quota reservation and its slot on an upstream key) is one statement on
PostgreSQL, run outside any explicit transaction (app/tasks/admission.py). When a quota counter refuses the
addition, the statement must undo what its other parts did; raising an error from inside it does that, and SQL has
no RAISE of its own, hence this function.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 13:00:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION gateway_refuse_admission(fitted text) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = 'GW001', MESSAGE = 'admission refused', DETAIL = COALESCE(fitted, '');
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP FUNCTION IF EXISTS gateway_refuse_admission(text)")
