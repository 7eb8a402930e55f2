"""events: subscriptions, deliveries and their status trails

Revision ID: 0004_events
Revises: 0001_foundation
Create Date: 2026-11-25 11:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_events'
down_revision = '0001_foundation'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('event_subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('scope_project', sa.String(length=255), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('action_key', sa.String(length=512), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('event_type', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('project_ids', sa.JSON(), nullable=False),
    sa.Column('payload_filter', sa.Text(), nullable=True),
    sa.Column('filter_nodes', sa.JSON(), nullable=False),
    sa.Column('act_as_event_user', sa.Boolean(), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('valid', sa.Boolean(), nullable=False),
    sa.Column('validation_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_subscriptions_event_type'), ['event_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_subscriptions_scope_project'), ['scope_project'], unique=False)

    op.create_table('event_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=True),
    sa.Column('subscription_json', sa.JSON(), nullable=False),
    sa.Column('project_id', sa.String(length=255), nullable=True),
    sa.Column('event_type', sa.String(length=128), nullable=False),
    sa.Column('action_user', sa.String(length=255), nullable=True),
    sa.Column('action_inputs', sa.JSON(), nullable=False),
    sa.Column('last_status', sa.String(length=40), nullable=False),
    sa.Column('finished', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['event_pk'], ['events.pk'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subscription_id'], ['event_subscriptions.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_pk', 'subscription_id', name='uq_event_delivery_once')
    )
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_deliveries_event_pk'), ['event_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_deliveries_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_deliveries_subscription_id'), ['subscription_id'], unique=False)

    op.create_table('event_delivery_statuses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=40), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['event_deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event_delivery_statuses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_delivery_statuses_delivery_id'), ['delivery_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('event_delivery_statuses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_delivery_statuses_delivery_id'))
    op.drop_table('event_delivery_statuses')
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_deliveries_subscription_id'))
        batch_op.drop_index(batch_op.f('ix_event_deliveries_project_id'))
        batch_op.drop_index(batch_op.f('ix_event_deliveries_event_pk'))
    op.drop_table('event_deliveries')
    with op.batch_alter_table('event_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_subscriptions_scope_project'))
        batch_op.drop_index(batch_op.f('ix_event_subscriptions_event_type'))
    op.drop_table('event_subscriptions')
