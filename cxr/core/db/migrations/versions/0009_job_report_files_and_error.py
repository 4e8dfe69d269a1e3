"""jobs.csv_uri: the per-image CSV a finished job's report task wrote (``report_uri`` holds the
HTML report's); jobs.error: why a job failed (its submission broke off)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 04:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('csv_uri', sa.Text(), nullable=True))
        batch.add_column(sa.Column('error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('error')
        batch.drop_column('csv_uri')
