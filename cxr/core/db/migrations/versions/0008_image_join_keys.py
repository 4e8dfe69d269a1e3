"""images: salted hashes of SeriesInstanceUID, SOPInstanceUID and AccessionNumber beside the
study's (the join keys back to a site's RIS/PACS); study, instance and accession hashes indexed

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('series_uid_hash', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('sop_uid_hash', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('accession_hash', sa.String(length=64), nullable=True))
        batch.create_index(batch.f('ix_images_study_uid_hash'), ['study_uid_hash'], unique=False)
        batch.create_index(batch.f('ix_images_sop_uid_hash'), ['sop_uid_hash'], unique=False)
        batch.create_index(batch.f('ix_images_accession_hash'), ['accession_hash'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.drop_index(batch.f('ix_images_accession_hash'))
        batch.drop_index(batch.f('ix_images_sop_uid_hash'))
        batch.drop_index(batch.f('ix_images_study_uid_hash'))
        batch.drop_column('accession_hash')
        batch.drop_column('sop_uid_hash')
        batch.drop_column('series_uid_hash')
