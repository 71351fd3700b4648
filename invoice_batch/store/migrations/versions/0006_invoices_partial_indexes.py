"""invoices: batch_key and classified_at indexed only where set

A pending row has no batch and no classification yet, so every insert wrote two
index entries for NULL that no query reads: each query on these columns compares
them to a value (a batch key, a time range), which both stores take as implying
IS NOT NULL. Partial indexes leave the consumer's insert two entries lighter.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 11:10:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_INDEXES = (('ix_invoices_batch_key', 'batch_key'), ('ix_invoices_classified_at', 'classified_at'))


def upgrade() -> None:
    for name, column in _INDEXES:
        op.drop_index(name, table_name='invoices')
        where = sa.text(f'{column} IS NOT NULL')
        op.create_index(name, 'invoices', [column], postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    for name, column in _INDEXES:
        op.drop_index(name, table_name='invoices')
        op.create_index(name, 'invoices', [column])
