"""batches.publish_from: where on the output topic a crashed collector's records start

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 05:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch_op:
        batch_op.add_column(sa.Column('publish_from', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch_op:
        batch_op.drop_column('publish_from')
