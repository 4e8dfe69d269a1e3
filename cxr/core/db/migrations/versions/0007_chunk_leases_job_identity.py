"""chunks.lease_owner/lease_expires_at/deaths (delivery leases); jobs.active_identity (one
unfinished job per identity, enforced by a unique index); model_versions.manifest_sha256 (the
manifest digest recorded at publish)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 03:30:00.000000
"""
import hashlib
import json

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _identity(source: str, name: str, version: int, explain: str) -> str:
    # Must match cxr.core.db.jobs.job_identity (copied: a migration does not import live code).
    text = "\x1f".join([source, name, str(version), explain])
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest_digest(manifest: dict) -> str:
    # Must match modelstore.integrity.manifest_digest (copied: a migration does not import live code).
    frozen = {key: value for key, value in manifest.items() if key != 'metrics'}
    canonical = json.dumps(frozen, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('manifest_sha256', sa.String(length=64), nullable=True))
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('lease_owner', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('deaths', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('active_identity', sa.String(length=64), nullable=True))
        batch.create_unique_constraint('uq_jobs_active_identity', ['active_identity'])
    # Unfinished jobs from before: the newest of each identity holds it; older duplicates keep
    # running to their end without it (they can no longer be resumed by identity).
    jobs = sa.table(
        'jobs', sa.column('id'), sa.column('source'), sa.column('model_name'), sa.column('model_version'),
        sa.column('options', sa.JSON), sa.column('status'), sa.column('created_at'),
        sa.column('active_identity'),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(jobs.c.id, jobs.c.source, jobs.c.model_name, jobs.c.model_version, jobs.c.options)
        .where(jobs.c.status.in_(['pending', 'running']))
        .order_by(jobs.c.created_at.desc())
    ).all()
    taken = set()
    for job_id, source, name, version, options in rows:
        identity = _identity(source, name, version, (options or {}).get('explain', 'none'))
        if identity not in taken:
            taken.add(identity)
            bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(active_identity=identity))
    # Versions published before: the digest of the manifest the catalogue recorded at publish.
    versions = sa.table(
        'model_versions', sa.column('id'), sa.column('manifest', sa.JSON), sa.column('manifest_sha256')
    )
    for row_id, manifest in bind.execute(sa.select(versions.c.id, versions.c.manifest)).all():
        if isinstance(manifest, dict):
            bind.execute(
                sa.update(versions).where(versions.c.id == row_id)
                .values(manifest_sha256=_manifest_digest(manifest))
            )


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('manifest_sha256')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('uq_jobs_active_identity', type_='unique')
        batch.drop_column('active_identity')
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('deaths')
        batch.drop_column('lease_expires_at')
        batch.drop_column('lease_owner')
