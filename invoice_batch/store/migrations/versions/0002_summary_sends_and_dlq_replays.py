"""summary_sends (one morning e-mail per day) and dlq_replays; indexes for reports and retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 08:00:00
"""

from alembic import op
import sqlalchemy as sa

from invoice_batch.store.models import UTCDateTime


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('summary_sends',
    sa.Column('local_date', sa.String(length=10), nullable=False),
    sa.Column('audience', sa.String(length=80), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=80), nullable=False),
    sa.Column('recipients', sa.Text(), nullable=False),
    sa.Column('claimed_at', UTCDateTime(), nullable=False),
    sa.Column('sent_at', UTCDateTime(), nullable=True),
    sa.Column('next_attempt_at', UTCDateTime(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('local_date', 'audience', name=op.f('pk_summary_sends'))
    )
    op.create_table('dlq_replays',
    sa.Column('source_topic', sa.String(length=255), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', sa.BigInteger(), nullable=False),
    sa.Column('dlq_topic', sa.String(length=255), nullable=False),
    sa.Column('dlq_partition', sa.Integer(), nullable=False),
    sa.Column('dlq_offset', sa.BigInteger(), nullable=False),
    sa.Column('error_code', sa.String(length=32), nullable=False),
    sa.Column('replayed_to', sa.String(length=255), nullable=False),
    sa.Column('replayed_at', UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('source_topic', 'source_partition', 'source_offset', name=op.f('pk_dlq_replays'))
    )
    # The report reads classified rows by time; retention deletes by it.
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index('ix_invoices_classified_at', ['classified_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index('ix_invoices_classified_at')
    op.drop_table('dlq_replays')
    op.drop_table('summary_sends')
