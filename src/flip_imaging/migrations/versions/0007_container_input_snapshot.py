"""containers: the input files a container actually ran on (so a stale conversion is detected)

Revision ID: 0007_container_input_snapshot
Revises: 0005_containers
Create Date: 2026-11-26 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_container_input_snapshot'
down_revision = '0005_containers'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('containers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_snapshot', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('containers', schema=None) as batch_op:
        batch_op.drop_column('input_snapshot')
