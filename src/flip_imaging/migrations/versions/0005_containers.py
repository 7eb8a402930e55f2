"""containers: command registry, wrapper enablement, container jobs and history; the dcm2niix command

Revision ID: 0005_containers
Revises: 0001_foundation
Create Date: 2026-11-25 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_containers'
down_revision = '0001_foundation'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('container_commands',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('image', sa.String(length=255), nullable=True),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('container_commands', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_container_commands_name'), ['name'], unique=False)

    op.create_table('container_wrappers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('command_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['command_id'], ['container_commands.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('command_id', 'name')
    )
    with op.batch_alter_table('container_wrappers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_container_wrappers_command_id'), ['command_id'], unique=False)

    op.create_table('container_wrapper_projects',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('wrapper_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.String(length=255), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['wrapper_id'], ['container_wrappers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('wrapper_id', 'project_id')
    )
    op.create_table('containers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('command_id', sa.Integer(), nullable=True),
    sa.Column('wrapper_id', sa.Integer(), nullable=True),
    sa.Column('command_name', sa.String(length=255), nullable=False),
    sa.Column('wrapper_name', sa.String(length=255), nullable=False),
    sa.Column('project_id', sa.String(length=255), nullable=True),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('status_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('root_input', sa.String(length=255), nullable=False),
    sa.Column('root_uri', sa.Text(), nullable=False),
    sa.Column('scan_pk', sa.Integer(), nullable=True),
    sa.Column('conversion', sa.Boolean(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_expires', sa.DateTime(timezone=True), nullable=True),
    sa.Column('kill_requested', sa.Boolean(), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('stdout', sa.Text(), nullable=False),
    sa.Column('stderr', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['scan_pk'], ['scans.pk'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('containers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_containers_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_containers_scan_pk'), ['scan_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_containers_status'), ['status'], unique=False)

    op.create_table('container_history',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('container_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=64), nullable=False),
    sa.Column('time_recorded', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['container_id'], ['containers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('container_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_container_history_container_id'), ['container_id'], unique=False)

    _install_builtin_commands()


def _install_builtin_commands() -> None:
    """A fresh installation ships the dcm2niix command with its wrapper enabled site-wide."""
    from datetime import UTC, datetime

    from flip_imaging.containers.registry import BUILTIN_COMMANDS, builtin_command_json, validate_command

    commands = sa.table('container_commands', sa.column('id', sa.Integer), sa.column('name', sa.String),
                        sa.column('version', sa.String), sa.column('image', sa.String),
                        sa.column('definition', sa.JSON), sa.column('created_at', sa.DateTime(timezone=True)))
    wrappers = sa.table('container_wrappers', sa.column('command_id', sa.Integer), sa.column('name', sa.String),
                        sa.column('definition', sa.JSON), sa.column('enabled', sa.Boolean))
    bind = op.get_bind()
    for filename in BUILTIN_COMMANDS:
        data = builtin_command_json(filename)
        assert not validate_command(data), validate_command(data)
        definition = {k: v for k, v in data.items() if k not in ('id', 'xnat')}
        command_id = bind.execute(
            commands.insert().values(name=data['name'], version=data.get('version'), image=data.get('image'),
                                     definition=definition, created_at=datetime.now(UTC))
            .returning(commands.c.id)).scalar_one()
        for w in data.get('xnat') or []:
            bind.execute(wrappers.insert().values(command_id=command_id, name=w['name'], definition=w,
                                                  enabled=True))


def downgrade() -> None:
    op.drop_table('container_history')
    op.drop_table('containers')
    op.drop_table('container_wrapper_projects')
    op.drop_table('container_wrappers')
    op.drop_table('container_commands')
