"""predictions: shift score, its percentile and the out-of-distribution flag

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 04:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions') as batch:
        batch.add_column(sa.Column('shift_score', sa.Float(), nullable=True))
        batch.add_column(sa.Column('shift_percentile', sa.Float(), nullable=True))
        batch.add_column(sa.Column('out_of_distribution', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('predictions') as batch:
        batch.drop_column('out_of_distribution')
        batch.drop_column('shift_percentile')
        batch.drop_column('shift_score')
