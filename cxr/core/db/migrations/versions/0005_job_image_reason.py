"""job_images.reason: why an image was skipped; jobs.kind dropped (never read)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 03:40:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_images') as batch:
        batch.add_column(sa.Column('reason', sa.Text(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('kind')


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='score'))
    with op.batch_alter_table('job_images') as batch:
        batch.drop_column('reason')
