"""dicom: SHA-256 of each de-identified instance, computed where it is written

Revision ID: 0006_dicom_instance_digest
Revises: 0003_dicom
Create Date: 2026-11-25 14:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_dicom_instance_digest'
down_revision = '0003_dicom'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.drop_column('sha256')
